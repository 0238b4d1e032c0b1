"""The SQS sink: a bounded buffer of envelopes sent with ``SendMessageBatch``.

Sources call :meth:`SqsSink.put` with an envelope and an optional ``ack``
callback; one flusher thread sends the buffer in batches of up to 10 entries
(and at most 256 KiB per call, SQS's limits), as soon as 10 are waiting or the
oldest has waited ``linger_s``.  ``ack`` is called, from the flusher thread,
only after SQS accepted that entry, so a source that acknowledges its bus
only then never loses a message.  Nothing is ever dropped: an envelope above
``MAX_INLINE_BYTES``, one holding a character SQS does not take, or one SQS
refuses as a sender fault or for its contents, goes to S3 and
the queue carries a claim; failed entries and failed calls are retried with
exponential backoff for as long as it takes.  An envelope whose claim cannot be
written (S3 away, the bucket missing, no permission: said at start, and loudly once
an episode) waits aside, in memory, tried again with backoff, while the others are
sent; what waits aside takes the buffer's room as any buffered envelope does (an AMQP
source, whose held envelopes stay unacknowledged, gets nothing more from its broker
once its prefetch of them waits).  While SQS is unreachable the buffer grows up to
its bound, and when it is full ``put`` blocks (logged loudly once per episode, when it
has blocked a second) so the sources stop reading instead of dropping.
:meth:`flush_and_stop` sends what is buffered before the process exits; what SQS
has not taken by then and no broker would send again (fedmsg's) goes to a spool
file in ``spool_dir``, which the next :meth:`start` sends ahead of everything.

A process killed outright (SIGKILL, the out-of-memory killer, a power cut of the
process's container) runs no stop, so with a ``spool_dir`` every envelope no broker
would send again is also written ahead, as :meth:`put` takes it, to a journal: a
spool file of this process (one ``write`` a line, no fsync: it outlives the process,
not the machine), beside a ``.sent`` file listing the lines SQS has accepted.  The
next start sends the lines a journal holds and its ``.sent`` does not: what SQS had
accepted is not sent twice, save the batch in flight at the kill (a duplicate the
pipeline's idempotency absorbs).  A journal is removed once SQS holds all of it and
it has reached :data:`JOURNAL_SEGMENT_LINES` lines or :data:`JOURNAL_SEGMENT_BYTES`
(a new one follows), and at a stop, which writes what is left in one spool file.

With a journal, a full buffer does not stop a source whose envelopes it journals: they
*spill*, staying on disk alone (their line's place in the journal is all memory holds),
and the flusher reads them back in order as the buffer empties.  A long SQS outage then
costs disk, not memory, and never holds fedmsg's ZeroMQ queue up, where a kill would lose
what waits (and the hub drops what no longer fits).  An envelope with an ``ack`` (AMQP:
its broker holds it) is never spilled: AMQP is bounded by its prefetch.  One
process at a time uses a spool directory (``flock`` on its ``.lock`` file, which works on
NFS too; :class:`SpoolInUse`); a directory that cannot be used at all is
:class:`SpoolUnusable`.  A sink with nothing to write ahead (``write_ahead=False``: a
bridge with AMQP sources alone, whose broker sends again what SQS has not taken) still
sends what an earlier bridge left in the directory, if no other process holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from fmn.pipeline.envelope import MAX_INLINE_BYTES, Envelope, make_claim

log = logging.getLogger(__name__)

#: SendMessageBatch limits: entries per call and total payload per call.
BATCH_MAX_ENTRIES = 10
BATCH_MAX_BYTES = 262_144
#: how long ``put`` blocks on a full buffer before the loud log line
FULL_ALARM_S = 1.0
#: a journal is replaced by a new one, and removed once SQS holds all of it, at this
#: many lines or bytes (what the disk holds while SQS keeps up)
JOURNAL_SEGMENT_LINES = 10_000
JOURNAL_SEGMENT_BYTES = 16 * 1024 * 1024

Ack = Callable[[], None]

#: A character SQS does not take in a message body (its allowed set: tab, LF, CR,
#: U+0020..U+D7FF, U+E000..U+FFFD, U+10000..U+10FFFF).  The envelope's JSON escapes
#: the C0 controls, but a record embedded as received may hold U+FFFE or U+FFFF raw
#: (valid JSON), which SQS refuses, and not always as a sender fault.
_SQS_REFUSES = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
#: Error codes of a body SQS will never take, whatever its fault flag says
_NEVER_TAKEN = ("InvalidMessageContents",)
#: S3 error codes that trying again does not mend: the claim bucket is missing or this
#: bridge may not write to it (a configuration to fix, said loudly)
_S3_PERMANENT = ("NoSuchBucket", "AccessDenied", "AllAccessDisabled", "InvalidBucketName",
                 "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccountProblem")


class SinkClosed(RuntimeError):
    """``put`` after :meth:`SqsSink.flush_and_stop` began."""


class SpoolError(RuntimeError):
    """The spool directory cannot be used: the bridge must not run without it."""


class SpoolInUse(SpoolError):
    """Another process holds the spool directory (it would send that process's
    journal while it runs, and remove it)."""


class SpoolUnusable(SpoolError):
    """The spool directory cannot be created, locked or read (permissions, a full or
    read-only disk): a bridge without it would lose what a kill interrupts."""


@dataclass
class _Item:
    envelope: Envelope
    body: str
    size: int
    ack: Ack | None
    enqueued: float
    claimed: bool = False
    #: SQS refused its body for its contents: it goes as a claim (the next try)
    to_claim: bool = False
    #: the spool file or journal that holds it (it stays there until SQS accepted it)
    spooled: Path | None = None
    #: its line in that file, counted from 0 (what the file's ``.sent`` lists)
    line: int = -1

    @property
    def needs_claim(self) -> bool:
        """Whether it still needs its claim for its size or a refusal by SQS (a
        character SQS does not take is looked for only where it is sent)."""
        return not self.claimed and (self.to_claim or self.size > MAX_INLINE_BYTES)


#: An envelope on disk alone (spilled): its journal, line number, byte offset and length
#: of the line, and when it was taken in
_Spilled = tuple[Path, int, int, int, float]


@dataclass
class SinkStats:
    received: int = 0
    forwarded: int = 0
    claimed: int = 0
    retried_entries: int = 0
    failed_calls: int = 0
    full_episodes: int = 0
    ack_errors: int = 0
    #: envelopes written to the spool at stop, and read back from it at start
    spooled: int = 0
    unspooled: int = 0
    #: envelopes written ahead to the journal; those whose write failed
    journaled: int = 0
    journal_errors: int = 0
    #: envelopes that waited on disk alone, the buffer being full (see the module docstring)
    spilled: int = 0
    #: claim checks to S3 that failed (the envelope waited aside, tried again later);
    #: those of them whose error trying again does not mend (no bucket, no permission)
    claim_errors: int = 0
    claim_errors_permanent: int = 0


class SqsSink:
    """Buffer, batch and send envelopes to one SQS queue (see the module docstring)."""

    def __init__(
        self,
        sqs: Any,
        s3: Any,
        queue_name: str,
        claim_bucket: str,
        *,
        queue_url: str | None = None,
        linger_s: float = 0.05,
        max_items: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        spool_dir: Path | None = None,
        write_ahead: bool = True,
        spool_wait_s: float = 0.0,
    ) -> None:
        self._sqs = sqs
        self._s3 = s3
        self._queue_name = queue_name
        self._queue_url = queue_url
        self._bucket = claim_bucket
        self._linger = linger_s
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._buf: deque[_Item] = deque()
        self._buf_bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        self._abort = threading.Event()
        self._full_logged = False
        self._thread: threading.Thread | None = None
        #: the batch being sent (its items are in neither the buffer nor SQS)
        self._sending: list[_Item] = []
        self._spool_dir = spool_dir
        #: whether envelopes with no ``ack`` are journaled (and the spool is needed)
        self._write_ahead = write_ahead
        #: how long a start waits for another process to let the spool directory go
        #: (a restart overlapping the old bridge's shutdown flush)
        self._spool_wait_s = spool_wait_s
        self._sent_failing = False
        self._spool_left: dict[Path, int] = {}
        self._lock_fd: int | None = None
        #: this process's journals (the last one is written to while ``_journal_fd`` is open)
        self._journals: list[Path] = []
        self._journal_fd: int | None = None
        self._journal_lines = 0
        self._journal_bytes = 0
        self._journal_failing = False
        #: envelopes on disk alone, oldest first; the journal read back from (path, fd)
        self._spilled: deque[_Spilled] = deque()
        self._spill_reader: tuple[Path, int] | None = None
        self._spill_logged = False
        self._refill_failing = False
        #: envelopes whose claim check failed, waiting aside (oldest first) so that the
        #: rest go on; tried again, all at once, from ``_claim_retry_at`` on
        self._held: list[_Item] = []
        self._held_bytes = 0
        self._claim_retry_at = 0.0
        self._claim_delay = backoff_initial_s
        self._claim_failing = False
        self._claim_error_logged = False
        self.stats = SinkStats()

    # -- the source side ------------------------------------------------------

    def start(self) -> None:
        """Start sending; with a spool directory, take it and queue what earlier runs left
        in it (:class:`SpoolInUse` when another process has it, :class:`SpoolUnusable`
        when it cannot be used; nothing is started then).  Without ``write_ahead`` the
        directory is only taken when an earlier run left something in it, and only if
        free: whoever holds it sends it."""
        if self._spool_dir is not None and not self._write_ahead:
            self._spool_dir = self._leftovers_to_send(self._spool_dir)  # taken, or None
        elif self._spool_dir is not None:
            self._lock(self._spool_dir, wait_s=self._spool_wait_s)
        if self._spool_dir is not None:
            try:
                self._unspool(self._spool_dir)
            except OSError as exc:
                self._unlock()
                error = SpoolUnusable(f"the spool directory {self._spool_dir} cannot be "
                                      f"read: {exc}")
                if self._write_ahead:
                    raise error from exc
                log.error("spool files an earlier bridge left are not sent: %s", error)
                with self._cond:  # what was queued before the error stays in its files
                    self._spilled.clear()
                    self._spool_left.clear()
                    self.stats.unspooled = 0
                self._spool_dir = None
        if (self._spool_dir is not None and not self._write_ahead
                and not self._spool_left):  # nothing in them was left to send
            self._release_leftovers()
        self._thread = threading.Thread(target=self._run, name="sqs-sink", daemon=True)
        self._thread.start()
        # its own thread: an S3 slow to answer holds no message up
        threading.Thread(target=self._check_bucket, name="sqs-sink-bucket",
                         daemon=True).start()

    def _leftovers_to_send(self, spool_dir: Path) -> Path | None:
        """With nothing to write ahead: ``spool_dir``, locked, if an earlier run left spool
        files or journals in it and no other process holds it; else None (said when there
        are): a bridge with no spool of its own never fails to start for one."""
        try:
            left = [name for name in os.listdir(spool_dir) if name.endswith(".jsonl")]
        except FileNotFoundError:
            left = []
        except OSError as exc:  # this bridge needs no spool of its own: it goes on
            log.error("spool files an earlier bridge left in %s cannot be listed (%s): "
                      "not sent", spool_dir, exc)
            left = []
        if not left:
            return None
        try:
            self._lock(spool_dir)
        except SpoolInUse:
            log.info("%d spool file(s) in %s: another bridge holds the directory and sends"
                     " them", len(left), spool_dir)
            return None
        except SpoolUnusable as exc:  # this bridge needs no spool of its own: it goes on
            log.error("%d spool file(s) an earlier bridge left are not sent: %s", len(left),
                      exc)
            return None
        log.info("%d spool file(s) an earlier bridge left in %s: sent first", len(left),
                 spool_dir)
        return spool_dir

    def _lock(self, spool_dir: Path, wait_s: float = 0.0) -> None:
        """Hold ``spool_dir/.lock`` (``flock``, released by the kernel when the process ends,
        killed or not; a regular file, as NFS locks only those), waiting up to ``wait_s``
        for another process to let it go."""
        try:
            spool_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(spool_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SpoolUnusable(f"the spool directory {spool_dir} cannot be used: {exc}"
                                ) from exc
        deadline = time.monotonic() + wait_s
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left > 0:
                    if not waited:
                        waited = True
                        log.warning("the spool directory %s is in use by another bridge: "
                                    "waiting up to %gs for it to let go", spool_dir, wait_s)
                    time.sleep(min(0.2, left))
                    continue
                os.close(fd)
                raise SpoolInUse(f"the spool directory {spool_dir} is in use by another "
                                 "bridge on the same queue"
                                 f"{f' (waited {wait_s:g}s)' if wait_s > 0 else ''}; give "
                                 "each its own --spool-dir") from None
            except OSError as exc:
                os.close(fd)
                raise SpoolUnusable(f"the spool directory {spool_dir} cannot be locked: "
                                    f"{exc}") from exc
        if waited:
            log.info("the spool directory %s is this bridge's now", spool_dir)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the kernel drops the lock (also at a kill)
            self._lock_fd = None

    # -- the spool: what a stop or a kill left unsent, sent by the next start -------

    def _unspool(self, spool_dir: Path) -> None:
        """Queue, ahead of any source, the envelopes earlier runs left: the spool files of
        their stops and the journals of processes killed outright, less the lines each
        file's ``.sent`` lists.  They are queued as spilled (on disk alone, read back as
        the buffer empties): a large spool costs no memory.  A file is removed once SQS
        accepted all of it (a crash meanwhile leaves it, with what was accepted in its
        ``.sent``, for the next start).
        A line that is no envelope is set aside in ``<file>.bad`` with an error; a file
        that cannot be read is left where it is, with an error: neither stops the rest."""
        os.listdir(spool_dir)  # Path.glob says nothing of a directory it cannot list
        for orphan in spool_dir.glob("*.jsonl.sent"):  # its file removed, then a kill
            if not orphan.with_suffix("").exists():
                orphan.unlink(missing_ok=True)
        for unfinished in spool_dir.glob("*.tmp"):
            # a stop's spool file, its writing cut short: the journals it was to replace
            # are removed only after it is whole, so they still hold its lines
            log.warning("removing %s, a spool file whose writing was cut short (the "
                        "journals it was to replace are still here)", unfinished)
            unfinished.unlink(missing_ok=True)
        for path in sorted(spool_dir.glob("*.jsonl")):
            sent = _read_sent(_sent_path(path))
            items: list[_Spilled] = []
            bad: list[tuple[int, bytes]] = []
            now = time.monotonic()
            try:
                with path.open("rb") as f:
                    offset = 0
                    for number, raw in enumerate(f):
                        line = raw[:-1] if raw.endswith(b"\n") else raw
                        if line and number not in sent:
                            try:  # the body as a JSON string: no raw line break in it
                                Envelope.decode(orjson.loads(line))
                            except Exception as exc:  # noqa: BLE001 - set aside, said
                                log.error("spool %s:%d is not an envelope (%s): set aside "
                                          "in %s.bad", path, number + 1, exc, path.name)
                                bad.append((number, line))
                            else:
                                items.append((path, number, offset, len(line), now))
                        offset += len(raw)
            except OSError as exc:
                log.error("spool %s cannot be read (%s): left as it is", path, exc)
                continue
            set_aside = True
            if bad:  # set aside once: their numbers join the sent ones
                try:
                    _append(path.with_name(path.name + ".bad"),
                            b"".join(line + b"\n" for _, line in bad))
                    _append(_sent_path(path), _numbers([n for n, _ in bad]))
                except OSError as exc:  # a full disk: send what was read all the same
                    set_aside = False
                    log.error("spool %s: setting its bad lines aside failed (%s); they "
                              "stay in it", path, exc)
            if not items:  # nothing to send: its bad lines, if any, are in the .bad file
                if set_aside:
                    _remove(path)
                continue
            with self._cond:
                self._spool_left[path] = len(items)
                self._spilled.extend(items)
                self.stats.unspooled += len(items)
                self._cond.notify_all()
            log.warning("re-sending %d envelope(s) an earlier run left unsent (%s)",
                        len(items), path)

    def _spooled_accepted(self, items: list[_Item]) -> None:
        """SQS holds these: their lines join their files' ``.sent``, and a file SQS now
        holds all of (and that no one writes to any more) is removed."""
        accepted: dict[Path, list[int]] = {}
        for item in items:
            if item.spooled is not None:
                accepted.setdefault(item.spooled, []).append(item.line)
        if not accepted:
            return
        with self._cond:
            for path, numbers in accepted.items():
                if path not in self._spool_left:  # a stop that gave up has spooled it
                    continue
                try:
                    _append(_sent_path(path), _numbers(numbers))
                except OSError as exc:  # sent again after a kill: a duplicate, not a loss
                    if not self._sent_failing:
                        self._sent_failing = True
                        log.warning("spool %s: recording %d line(s) as sent failed (%s): "
                                    "a kill would send them again (duplicates)",
                                    path, len(numbers), exc)
                else:
                    if self._sent_failing:
                        self._sent_failing = False
                        log.warning("recording lines as sent in %s works again",
                                    self._spool_dir)
                self._spool_left[path] -= len(numbers)
                if self._spool_left[path] == 0 and not self._writing(path):
                    self._done_with(path)

    def _writing(self, path: Path) -> bool:
        return self._journal_fd is not None and self._journals[-1] == path

    def _done_with(self, path: Path) -> None:
        """SQS holds every line of ``path``: it goes, and its ``.sent`` after it.  A sink
        with nothing to write ahead lets go of the directory once it has sent everything
        an earlier run left (a fedmsg bridge may then take it)."""
        del self._spool_left[path]
        if path in self._journals:
            self._journals.remove(path)
            _remove(path)
        elif _remove(path):
            log.info("spool %s sent: removed", path)
        if not self._write_ahead and not self._spool_left:
            self._release_leftovers()

    def _release_leftovers(self) -> None:
        """With nothing to write ahead: the earlier runs' files are sent; the directory is
        free again."""
        log.info("what earlier bridges left in %s is sent: the directory is free",
                 self._spool_dir)
        self._spool_dir = None
        self._unlock()

    def _journal(self, item: _Item) -> tuple[int, int]:
        """Write ``item`` ahead to this process's journal (under ``_cond``); the line's
        byte offset and length, (0, 0) when the write failed.  A failed write is logged
        (once an episode) and the item goes on without: only a kill before SQS takes it
        would lose it, and a stop spools it."""
        assert self._spool_dir is not None
        line = orjson.dumps(item.body) + b"\n"
        try:
            if self._journal_fd is not None and (
                    self._journal_lines >= JOURNAL_SEGMENT_LINES
                    or self._journal_bytes + len(line) > JOURNAL_SEGMENT_BYTES):
                self._close_journal()
            if self._journal_fd is None:
                path = _new_spool_path(self._spool_dir)
                self._journal_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                           0o644)
                self._journals.append(path)
                self._spool_left[path] = 0
                self._journal_lines = self._journal_bytes = 0
            try:
                if os.write(self._journal_fd, line) != len(line):
                    raise OSError("short write (the disk is full?)")
            except OSError:
                # the torn line cut off again: the next start would call it no envelope
                with contextlib.suppress(OSError):
                    os.ftruncate(self._journal_fd, self._journal_bytes)
                raise
        except OSError as exc:
            self.stats.journal_errors += 1
            if not self._journal_failing:
                self._journal_failing = True
                log.error("writing ahead to the journal in %s failed (%s): until it works "
                          "again, a kill of this process loses what SQS has not accepted",
                          self._spool_dir, exc)
            self._close_journal()  # a torn line ends that file; the next write starts one
            return 0, 0
        if self._journal_failing:
            self._journal_failing = False
            log.warning("writing ahead to the journal in %s works again", self._spool_dir)
        path = self._journals[-1]
        item.spooled, item.line = path, self._journal_lines
        offset = self._journal_bytes
        self._spool_left[path] += 1
        self._journal_lines += 1
        self._journal_bytes += len(line)
        self.stats.journaled += 1
        return offset, len(line)

    def _close_journal(self) -> None:
        """Stop writing to the current journal; removed now if SQS holds all of it."""
        if self._journal_fd is None:
            return
        with contextlib.suppress(OSError):
            os.close(self._journal_fd)
        self._journal_fd = None
        path = self._journals[-1]
        if self._spool_left.get(path) == 0:
            self._done_with(path)

    def _spool(self, spool_dir: Path) -> int:
        """Write, in one spool file, what SQS has not accepted and nothing else would
        send again: envelopes with no acknowledgement (fedmsg: a broker redelivers the
        others) that are in this process's journals or in no file; then remove those
        journals.  The count written."""
        with self._cond:
            self._close_journal()
            journals = set(self._journals)
            bodies = [i.body for i in (*self._sending, *self._held, *self._buf)
                      if i.ack is None and (i.spooled is None or i.spooled in journals)]
            # spilled from this process's journals: copied, line by line; those of an
            # earlier run's files stay there, where the next start finds them again
            spilled = [ref for ref in self._spilled if ref[0] in journals]
            written = len(bodies) + len(spilled)
            if written:
                spool_dir.mkdir(parents=True, exist_ok=True)
                path = _new_spool_path(spool_dir)
                _write_spool(path, bodies, spilled)  # fails (OSError): the journals stay
            self._spilled = deque(ref for ref in self._spilled if ref[0] not in journals)
            self._close_spill_reader()
            for journal in self._journals:  # what they hold that SQS has not is in ``path``
                self._spool_left.pop(journal, None)
                _remove(journal)
            self._journals.clear()
        self.stats.spooled += written
        return written

    def put(self, envelope: Envelope, ack: Ack | None = None, *,
            block: bool | Callable[[], bool] = True) -> None:
        """Queue one envelope; blocks while the buffer is full (backpressure), unless
        ``block`` is False, or a function that turns False (a source stopping: what
        it holds is in memory already, and the stop may spool it).  With a spool
        directory, an envelope with no ``ack`` is written ahead to the journal first."""
        body = envelope.encode()
        item = _Item(envelope, body, len(body.encode()), ack, time.monotonic())
        with self._cond:
            if self._closing:
                raise SinkClosed("the SQS sink is shutting down")
            if (ack is None and self._spool_dir is not None and self._write_ahead
                    and not self._journal_failing
                    and (self._spilled or self._is_full(item.size)) and self._spill(item)):
                return
            blocked_since = time.monotonic()
            while (block() if callable(block) else block) and not self._closing \
                    and self._is_full(item.size):
                # a burst fills the buffer for milliseconds, which is just
                # backpressure; a buffer full for a second means SQS is not keeping up
                if not self._full_logged and time.monotonic() - blocked_since >= FULL_ALARM_S:
                    self._full_logged = True
                    self.stats.full_episodes += 1
                    log.error(
                        "SQS sink buffer FULL (%d items, %d bytes, %d of them waiting for "
                        "their claim; bounds %d items, %d bytes): SQS is not accepting "
                        "messages fast enough or claims to S3 fail; sources are blocked"
                        " until it drains (nothing is dropped)", *self._in_memory(),
                        len(self._held), self._max_items, self._max_bytes)
                self._cond.wait(0.25)
            if self._closing:
                raise SinkClosed("the SQS sink is shutting down")
            if ack is None and self._spool_dir is not None and self._write_ahead:
                self._journal(item)
            self._buf.append(item)
            self._buf_bytes += item.size
            self.stats.received += 1
            self._cond.notify_all()

    def _spill(self, item: _Item) -> bool:
        """Journal ``item`` and keep it on disk alone, behind those spilled before it
        (under ``_cond``); False when the journal could not take it."""
        offset, length = self._journal(item)
        if not length:
            return False
        assert item.spooled is not None
        self._spilled.append((item.spooled, item.line, offset, length, item.enqueued))
        self.stats.received += 1
        self.stats.spilled += 1
        if not self._spill_logged:
            self._spill_logged = True
            log.warning("SQS sink buffer full (%d items, %d bytes, %d of them waiting for "
                        "their claim): envelopes wait in the journal in %s, on disk alone, "
                        "until SQS takes them (nothing is dropped)", *self._in_memory(),
                        len(self._held), self._spool_dir)
        self._cond.notify_all()
        return True

    def _refill(self) -> None:
        """Move spilled envelopes back into the buffer, oldest first, while there is room
        (the flusher, under ``_cond``).  A line that cannot be read back stays spilled
        (logged); a stop or the next start sends it from the journal."""
        while self._spilled and not self._is_full(self._spilled[0][3]):
            path, line, offset, length, enqueued = self._spilled[0]
            try:
                if self._spill_reader is None or self._spill_reader[0] != path:
                    self._close_spill_reader()
                    self._spill_reader = (path, os.open(path, os.O_RDONLY))
                raw = os.pread(self._spill_reader[1], length, offset)
                body = orjson.loads(raw)
                envelope = Envelope.decode(body)
            except Exception as exc:  # noqa: BLE001 - the disk; said, and tried again later
                if not self._refill_failing:  # once an episode: tried again every second
                    self._refill_failing = True
                    log.error("reading back %s:%d from the journal failed (%s: %s); it "
                              "stays there", path, line + 1, type(exc).__name__, exc)
                return
            if self._refill_failing:
                self._refill_failing = False
                log.warning("reading back from the journal works again")
            self._spilled.popleft()
            item = _Item(envelope, body, len(body.encode()), None, enqueued,
                         spooled=path, line=line)
            self._buf.append(item)
            self._buf_bytes += item.size
        if not self._spilled:
            self._close_spill_reader()
            if self._spill_logged:
                self._spill_logged = False
                log.warning("SQS sink: every envelope that waited on disk is back in the "
                            "buffer (%d spilled so far)", self.stats.spilled)

    def _close_spill_reader(self) -> None:
        if self._spill_reader is not None:
            with contextlib.suppress(OSError):
                os.close(self._spill_reader[1])
            self._spill_reader = None

    def _is_full(self, size: int) -> bool:
        """Whether an envelope of ``size`` bytes finds no room in memory (under ``_cond``).
        The envelopes waiting aside for their claim take room as the buffer's do, and so
        do those of the batch in flight that may join them (a record needing a claim it
        does not have): else each held record freed its room, ``put`` never spilled and
        ``_refill`` read spilled records back only for them to wait aside too, memory
        growing without bound while claims fail.  When they alone fill it, fedmsg's new
        envelopes spill (AMQP's never wait: its prefetch, at most the buffer's items,
        bounds them).  One envelope always fits when nothing else is in memory."""
        items, nbytes = self._in_memory()
        if not items:
            return False
        return items >= self._max_items or nbytes + size > self._max_bytes

    def _in_memory(self) -> tuple[int, int]:
        """The envelopes, and their bytes, the buffer's bounds apply to (under ``_cond``):
        the buffer, those waiting aside for their claim, and those of the batch in flight
        that may join them."""
        items = len(self._buf) + len(self._held)
        nbytes = self._buf_bytes + self._held_bytes
        for item in self._sending:
            if item.needs_claim:
                items += 1
                nbytes += item.size
        return items, nbytes

    @property
    def buffered(self) -> int:
        """Envelopes not yet accepted by SQS (in the buffer, in the batch being sent, on
        disk alone, or waiting aside for their claim)."""
        with self._cond:
            return len(self._buf) + len(self._sending) + len(self._spilled) + len(self._held)

    @property
    def claims_waiting(self) -> int:
        """Envelopes waiting aside because their claim check to S3 failed."""
        with self._cond:
            return len(self._held)

    @property
    def alive(self) -> bool:
        """Whether the flusher thread runs (a dead one would block every source)."""
        return self._thread is not None and self._thread.is_alive()

    def flush_and_stop(self, timeout: float) -> bool:
        """Refuse new envelopes, send every buffered one, stop; True when all were accepted."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._abort.set()  # stop retrying: the caller is giving up
                self._thread.join(5)
        stuck = self._thread is not None and self._thread.is_alive()
        left = self.buffered
        if not left:
            with self._cond:
                self._close_journal()  # SQS holds all of it: removed
            self._unlock()
            log.info("SQS sink flushed: everything accepted by SQS")
            return True
        with self._cond:
            items = [*self._sending, *self._held, *self._buf]
            journals = set(self._journals)
        redelivered = sum(i.ack is not None for i in items)
        # in an earlier run's spool file, which stays until SQS has it
        on_disk = sum(i.ack is None and i.spooled is not None and i.spooled not in journals
                      for i in items)
        on_disk += sum(ref[0] not in journals for ref in self._spilled)
        in_no_file = sum(i.ack is None and i.spooled is None for i in items)
        spooled = lost = 0
        if self._spool_dir is not None:
            try:
                spooled = self._spool(self._spool_dir)
            except OSError as exc:  # the journals stay: what they hold is not lost
                on_disk += sum(i.ack is None and i.spooled in journals for i in items)
                on_disk += sum(ref[0] in journals for ref in self._spilled)
                lost = in_no_file
                log.error("writing the spool in %s failed (%s): the journals stay, for the"
                          " next start", self._spool_dir, exc)
            if not stuck:  # else the kernel releases it at exit, once nothing writes here
                self._unlock()
        else:
            lost = in_no_file
        where = f" in {self._spool_dir}" if self._spool_dir is not None else ""
        log.error("SQS sink stopped with %d envelope(s) not accepted by SQS: %d written to "
                  "the spool%s now and %d in spool files already (the next start sends "
                  "them first), %d unacknowledged (their AMQP broker sends them again)%s",
                  left, spooled, where, on_disk, redelivered,
                  f"; {lost} LOST (no spool could hold them)" if lost else "")
        return False

    # -- the flusher thread ---------------------------------------------------

    def _run(self) -> None:
        try:
            self._url()  # a misnamed queue shows at start, not with the first message
        except Exception as exc:  # noqa: BLE001 - retried with the first batch
            log.warning("SQS queue %s not reachable yet (%s: %s); will retry",
                        self._queue_name, type(exc).__name__, exc)
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._deliver(batch)
                if self._abort.is_set():
                    return
        except Exception:  # pragma: no cover - a bug; say so loudly rather than hang silently
            log.exception("SQS sink flusher crashed")
            raise

    def _next_batch(self) -> list[_Item] | None:
        """Wait for a full batch or the linger deadline, or for envelopes whose claim
        failed to be due again (they go first); None when closing and empty."""
        with self._cond:
            while True:
                self._refill()
                due = bool(self._held) and time.monotonic() >= self._claim_retry_at
                if due or self._buf:
                    if (due or len(self._buf) >= BATCH_MAX_ENTRIES or self._closing
                            or time.monotonic() - self._buf[0].enqueued >= self._linger):
                        break
                    self._cond.wait(self._linger - (time.monotonic() - self._buf[0].enqueued))
                elif self._closing and ((not self._spilled and not self._held)
                                        or self._abort.is_set()):
                    return None
                elif self._held:
                    self._cond.wait(min(1.0, self._claim_retry_at - time.monotonic()))
                else:
                    self._cond.wait(1.0)
            batch: list[_Item] = []
            total = 0
            while (due and self._held or self._buf) and len(batch) < BATCH_MAX_ENTRIES:
                # a claimed envelope is tiny; an inline one is at most MAX_INLINE_BYTES
                held = due and bool(self._held)
                size = min((self._held[0] if held else self._buf[0]).size, MAX_INLINE_BYTES)
                if batch and total + size > BATCH_MAX_BYTES:
                    break
                if held:
                    item = self._held.pop(0)
                    self._held_bytes -= item.size
                else:
                    item = self._buf.popleft()
                    self._buf_bytes -= item.size
                batch.append(item)
                total += size
            self._sending = batch
            if self._full_logged and not self._is_full(0):
                self._full_logged = False
                log.warning("SQS sink buffer no longer full (%d items)", len(self._buf))
            self._cond.notify_all()
            return batch

    def _deliver(self, batch: list[_Item]) -> None:
        """Send until SQS accepted every entry of the batch (or the sink is aborted); an
        entry whose claim check failed leaves the batch, to wait aside (see ``_hold``)."""
        pending = {str(n): item for n, item in enumerate(batch)}
        delay = self._backoff_initial
        while pending and not self._abort.is_set():
            self._claim_pending(pending)
            if not pending:
                return
            try:
                url = self._url()
                resp = self._sqs.send_message_batch(QueueUrl=url, Entries=[
                    {"Id": n, "MessageBody": item.body} for n, item in pending.items()])
            except Exception as exc:  # noqa: BLE001 - any failure of the call: retry it
                self.stats.failed_calls += 1
                if self.stats.failed_calls == 1 or delay >= self._backoff_max:
                    log.warning("SQS call failed (%s: %s); %d envelope(s) waiting,"
                                " retrying in %.1fs", type(exc).__name__, exc,
                                self.buffered, delay)
                else:
                    log.info("SQS call failed again (%s); retrying in %.1fs",
                             type(exc).__name__, delay)
                if type(exc).__name__ in ("QueueDoesNotExist",) or "NonExistentQueue" in str(exc):
                    self._queue_url = None  # look the URL up again next time
                if any(code in str(exc) for code in _NEVER_TAKEN):
                    # the whole call refused for one body's contents: which one is not
                    # said, so every body of the call goes as a claim (plain ASCII)
                    for item in pending.values():
                        item.to_claim = True
                self._abort.wait(delay)
                delay = min(delay * 2, self._backoff_max)
                continue
            accepted = [pending.pop(ok["Id"]) for ok in resp.get("Successful", [])]
            self._accepted(accepted)
            failed = resp.get("Failed", [])
            fixed = 0
            for fail in failed:
                refused = pending.get(fail["Id"])
                if refused is None:
                    continue
                item = refused
                self.stats.retried_entries += 1
                log.warning("SQS refused an entry (%s: %s; sender fault: %s)",
                            fail.get("Code"), fail.get("Message"), fail.get("SenderFault"))
                never = fail.get("SenderFault") or any(
                    code in str(fail.get("Code", "")) for code in _NEVER_TAKEN)
                if never and not item.claimed:
                    # SQS will never take this body (say, characters it does not
                    # allow): the claim envelope is plain ASCII, so it always can.
                    item.to_claim = True  # claimed (or set aside) before the next try
                    fixed += 1
            if pending and fixed < len(pending):
                # a transient refusal (throttling, SQS's own fault): back off
                self._abort.wait(delay)
                delay = min(delay * 2, self._backoff_max)
            elif not pending:
                delay = self._backoff_initial

    def _accepted(self, items: list[_Item]) -> None:
        with self._cond:
            gone = {id(i) for i in items}
            self._sending = [i for i in self._sending if id(i) not in gone]
            self.stats.forwarded += len(items)
            self._cond.notify_all()
        self._spooled_accepted(items)
        for item in items:
            if item.ack is None:
                continue
            try:
                item.ack()
            except Exception:  # noqa: BLE001 - the source's problem; the message is in SQS
                self.stats.ack_errors += 1
                log.exception("acknowledging an envelope accepted by SQS failed")

    def _url(self) -> str:
        if self._queue_url is None:
            self._queue_url = str(
                self._sqs.get_queue_url(QueueName=self._queue_name)["QueueUrl"])
        return self._queue_url

    def _claim_pending(self, pending: dict[str, _Item]) -> None:
        """Claim-check the entries SQS would not take inline (too large, characters it
        does not allow, refused for their contents): the bytes as received go to S3.  An
        entry whose claim fails leaves ``pending`` and waits aside (:meth:`_hold`), and so
        do, untried, the entries after it that need a claim, and those that come while
        claims fail, until the back-off has passed: S3 would fail them alike."""
        failed: list[str] = []
        trying = not self._claim_failing or time.monotonic() >= self._claim_retry_at
        for n, item in pending.items():
            if not item.needs_claim and (item.claimed
                                              or not _SQS_REFUSES.search(item.body)):
                continue
            if trying:
                try:
                    self._claim(item)
                except Exception as exc:  # noqa: BLE001 - S3's or the network's: tried again
                    trying = False
                    self._claim_failed(exc)
                else:
                    self._claim_worked()
                    continue
            failed.append(n)
        if failed:
            self._hold([pending.pop(n) for n in failed])

    def _hold(self, items: list[_Item]) -> None:
        """Set aside envelopes whose claim check failed: they are tried again, ahead of
        the buffer, once the claim back-off has passed, and meanwhile the others are sent
        (as long as the held ones leave room in the buffer: they take it as buffered ones
        do; and an AMQP source, whose held envelopes stay unacknowledged, gets nothing more
        from its broker once its prefetch of them is held).  Nothing is lost: they count
        as buffered, a stop spools them (fedmsg) or leaves them unacknowledged (AMQP), and
        their journal lines stay until SQS has them."""
        with self._cond:
            gone = {id(i) for i in items}
            self._sending = [i for i in self._sending if id(i) not in gone]
            self._held.extend(items)
            self._held_bytes += sum(i.size for i in items)
            self._cond.notify_all()

    def _claim_failed(self, exc: Exception) -> None:
        """Count and say a failed claim check (loudly once an episode when trying again
        cannot mend it) and back the next try off."""
        self.stats.claim_errors += 1
        code = _error_code(exc)
        wait = self._claim_delay
        self._claim_retry_at = time.monotonic() + wait
        self._claim_delay = min(self._claim_delay * 2, self._backoff_max)
        if code in _S3_PERMANENT:
            self.stats.claim_errors_permanent += 1
            if not self._claim_error_logged:
                self._claim_error_logged = True
                self._claim_failing = True
                log.error("claim check to s3://%s FAILED (%s: %s): the bucket is missing or "
                          "this bridge may not write to it (FMN_CLAIM_BUCKET, s3:PutObject);"
                          " envelopes too large for SQS wait aside (%d now), tried again "
                          "every %gs at most, until it is fixed; the others are sent, but "
                          "AMQP stops once its prefetch of them waits (unacknowledged)",
                          self._bucket, type(exc).__name__, exc, self.claims_waiting + 1,
                          self._backoff_max)
                return
        if not self._claim_failing:
            self._claim_failing = True
            log.warning("claim check to s3://%s failed (%s: %s); the envelope waits aside, "
                        "tried again in %.1fs; the others are sent", self._bucket,
                        type(exc).__name__, exc, wait)
        else:
            log.info("claim check to S3 failed again (%s); tried again in %.1fs",
                     type(exc).__name__, wait)

    def _claim_worked(self) -> None:
        self._claim_delay = self._backoff_initial
        if self._claim_failing:
            self._claim_failing = self._claim_error_logged = False
            log.warning("claim checks to s3://%s work again (%d envelope(s) still waiting "
                        "aside follow)", self._bucket, self.claims_waiting)

    def _check_bucket(self) -> None:
        """Say at start, not with the first oversized record, that the claim bucket cannot
        be used.  Only said: the envelopes that need no claim are sent all the same (AMQP's
        until its prefetch of held ones is reached, see ``_hold``)."""
        try:
            self._s3.head_bucket(Bucket=self._bucket)
        except Exception as exc:  # noqa: BLE001 - said; each claim is tried (and said) anyway
            code = _error_code(exc)
            if code in ("404", "NoSuchBucket", "NotFound"):
                why = "does not exist"
            elif code in ("403", "AccessDenied", "Forbidden"):
                why = ("refuses HeadBucket: another account's bucket, or no s3:ListBucket "
                       "(claims need s3:PutObject alone, so they may work all the same)")
            else:
                why = f"cannot be checked ({type(exc).__name__}: {exc})"
            log.warning("the claim bucket s3://%s %s: an envelope too large for SQS waits "
                        "until its claim can be written, the others are sent (AMQP's until"
                        " its prefetch of them waits; check FMN_CLAIM_BUCKET or "
                        "--claim-bucket)", self._bucket, why)
        else:
            log.info("claim bucket s3://%s is there", self._bucket)

    def _claim(self, item: _Item) -> None:
        """Put the record in S3 and make the item's body a claim envelope."""
        env = item.envelope
        record = env.record if env.record is not None else item.body.encode()
        digest = hashlib.sha256(record).hexdigest()
        now = datetime.now(UTC)
        # content hash + time: the same record received twice gets two objects,
        # and a key never names two different contents
        key = f"claims/{now:%Y/%m/%d}/{digest}-{time.time_ns()}"
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=record,
                            ContentType="application/octet-stream")
        claimed = env.with_claim(make_claim(self._bucket, key, record))
        item.body = claimed.encode()
        item.claimed = True
        self.stats.claimed += 1
        log.info("record of %d bytes claim-checked to s3://%s/%s", len(record), self._bucket, key)


def _error_code(exc: Exception) -> str:
    """A botocore error's code ("NoSuchBucket"; "404" for a HEAD); "" for another error."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))


_spool_files = itertools.count()


def _new_spool_path(spool_dir: Path) -> Path:
    """A name for a new spool file or journal: in the order written (the order the next
    start reads them), and never one this process already used, even within a
    microsecond (a stop's spool file must not replace the journal it empties)."""
    return spool_dir / (f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{os.getpid()}-"
                        f"{next(_spool_files):06d}.jsonl")


def _sent_path(path: Path) -> Path:
    return path.with_name(path.name + ".sent")


def _read_sent(path: Path) -> set[int]:
    """The line numbers a ``.sent`` file lists.  Each ends with a line break: a record a
    crash or a full disk cut short is cut off the file here, before anything appends to
    it (``"1"`` then ``"20\n"`` would read as line 120, never sent)."""
    try:
        text = path.read_bytes()
        if text and not text.endswith(b"\n"):
            text = text[:text.rfind(b"\n") + 1]
            os.truncate(path, len(text))
    except FileNotFoundError:
        return set()
    except OSError as exc:  # sent again: duplicates, not a loss
        log.error("%s cannot be read or repaired (%s): its lines are sent again", path, exc)
        path.unlink(missing_ok=True)
        return set()
    return {int(n) for n in text.split(b"\n")[:-1] if n.isdigit()}


def _numbers(numbers: list[int]) -> bytes:
    return "".join(f"{n}\n" for n in numbers).encode()


def _append(path: Path, data: bytes) -> None:
    """Append ``data`` whole or not at all (a short write is cut off again)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            if os.write(fd, data) != len(data):
                raise OSError(f"short write to {path} (the disk is full?)")
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def _remove(path: Path) -> bool:
    """A spool file or journal, then its ``.sent`` (a kill between leaves the ``.sent``
    alone, which the next start removes: removing it first would leave the file whole,
    its lines all sent again).  False, with an error, when the file cannot be removed (a
    directory that turned read-only): it stays, and the next start sends again what its
    ``.sent`` does not list (duplicates, not a loss); nothing here stops the sink."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.error("%s cannot be removed (%s): the next start sends again what it holds "
                  "and its .sent does not list", path, exc)
        return False
    with contextlib.suppress(OSError):  # an orphan .sent is removed by the next start
        _sent_path(path).unlink(missing_ok=True)
    return True


def _write_spool(path: Path, bodies: list[str], spilled: Sequence[_Spilled] = ()) -> None:
    """Write (or replace) a spool file whole: a crash leaves the old one or the new one.
    ``bodies``, then the lines of ``spilled`` copied from their journals."""
    tmp = path.with_suffix(".tmp")
    reader: tuple[Path, int] | None = None  # one journal open at a time: refs come in order
    try:
        with tmp.open("wb") as f:
            for body in bodies:  # a JSON string a line: a record may hold line breaks
                f.write(orjson.dumps(body) + b"\n")
            for source, _, offset, length, _ in spilled:
                if reader is None or reader[0] != source:
                    if reader is not None:
                        fd, reader = reader[1], None  # closed once, even if the open fails
                        os.close(fd)
                    reader = (source, os.open(source, os.O_RDONLY))
                line = os.pread(reader[1], length, offset)
                if len(line) != length:
                    raise OSError(f"{source}: a line spilled there is cut short")
                f.write(line if line.endswith(b"\n") else line + b"\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if reader is not None:
            os.close(reader[1])
    # the rename itself on disk before the journals it replaces are removed (where the
    # file system can say so: not every one syncs a directory)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def make_clients(endpoint_url: str | None, region: str) -> tuple[Any, Any]:
    """boto3 SQS and S3 clients that fail fast: the sink does the retrying."""
    from fmn.aws import client, new_session

    options: dict[str, Any] = {"endpoint_url": endpoint_url, "region": region,
                               "connect_timeout": 3, "read_timeout": 20, "max_attempts": 2,
                               "session": new_session()}
    return client("sqs", **options), client("s3", **options)


def make_cloudwatch(endpoint_url: str | None, region: str) -> Any:
    """A boto3 CloudWatch client for the heartbeat: short timeouts, few retries."""
    from fmn.aws import client, new_session

    return client("cloudwatch", endpoint_url=endpoint_url, region=region, connect_timeout=3,
                  read_timeout=10, max_attempts=2, session=new_session())
