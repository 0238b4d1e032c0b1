"""The ledger's journal: what was published and what the match function produced, on disk.

A local run (``fmn up``, the load test, a test's stack) keeps one journal
directory (``FMN_LEDGER_DIR``; ``fmn up`` uses ``var/stack/ledger``).  Three
append-only JSON Lines files, each line one fact:

* ``published.jsonl``: ``{"id", "bus", "t"}``, one line per message a
  publisher put on a bus (the replay, the load test), ``t`` the wall clock;
* ``matched.jsonl``: ``{"id", "sqs", "q", "t", "n"}``, one line per record
  the match function matched and whose payloads SQS accepted: the bus message
  id, the SQS message id, when the record entered the incoming queue (``q``,
  ms, SQS's ``SentTimestamp``), when it was matched (``t``) and ``n``: per
  backend, the notifications produced as ``[user, destination, address,
  digest]`` (``digest`` 1 when the destination gathers a digest);
* ``failed.jsonl``: ``{"sqs", "kind", "reason", "t"}``, one line per record
  the match function failed (it comes back, or goes to the dead-letter queue).

Files, not Redis: the journal must outlive a Redis restarted empty and
processes killed mid-batch.  Each call appends its lines with one
``write`` on a file opened ``O_APPEND``, so writers in several threads or
processes never interleave within a line.  Writing is the hot path's only
cost (one write per invocation, a few microseconds per notification); the
reading is :mod:`fmn.ledger.account`'s.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

PUBLISHED = "published.jsonl"
MATCHED = "matched.jsonl"
FAILED = "failed.jsonl"
#: the stack's settings, so ``fmn ledger`` finds its queues, Redis keys and sinks
STACK = "stack.json"

#: one produced notification: (user, destination, address, digest 0/1)
Recipient = tuple[str, str, str, int]


class Journal:
    """Appends facts to a journal directory (module docstring)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        #: seconds spent writing, and lines written (the hot path's cost)
        self.write_s = 0.0
        self.lines = 0

    def _append(self, name: str, docs: Iterable[Mapping[str, Any]]) -> None:
        started = time.perf_counter()
        data = b"".join(orjson.dumps(d) + b"\n" for d in docs)
        if not data:
            return
        with self._lock:
            fd = self._fds.get(name)
            if fd is None:
                fd = os.open(self.directory / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                             0o644)
                self._fds[name] = fd
            os.write(fd, data)
            self.lines += data.count(b"\n")
            self.write_s += time.perf_counter() - started

    def published(self, ids: Iterable[str], bus: str, at: float | None = None) -> None:
        t = time.time() if at is None else at
        self.published_at(((i, t) for i in ids), bus)

    def published_at(self, entries: Iterable[tuple[str, float]], bus: str) -> None:
        """Messages published, each with its own time (journalled in batches, later)."""
        self._append(PUBLISHED, ({"id": i, "bus": bus, "t": t} for i, t in entries))

    def matched(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """``{"id", "sqs", "q", "n"}`` per record (``t`` is added: now)."""
        now = time.time()
        self._append(MATCHED, ({**e, "t": now} for e in entries))

    def failed(self, sqs_id: str, kind: str, reason: str) -> None:
        self._append(FAILED, [{"sqs": sqs_id, "kind": kind, "reason": reason[:500],
                               "t": time.time()}])

    def write_stack(self, doc: Mapping[str, Any]) -> None:
        tmp = self.directory / (STACK + ".tmp")
        tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        tmp.replace(self.directory / STACK)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON lines of a journal file (none if it does not exist; a torn last line skipped)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a writer killed mid-line: that fact was never complete
        if isinstance(doc, dict):
            yield doc
