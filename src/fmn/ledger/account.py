"""The ledger's accounting: every bus message id once, every notification once.

:func:`account` reads, at the end of a local run:

* the journal (:mod:`fmn.ledger.journal`): the ids published, and the
  notifications the match function produced for each record it matched;
* the dead-letter queues (each message read and made visible again, so the
  reading changes nothing): the incoming one (bus messages the match function
  gave up on; the reason from the journal's ``failed`` lines) and each
  backend's (one notification each, with its reason), and the ``matrix``
  queue, whose notifications wait for a sender that does not exist yet;
* what the receivers actually got: every mail in the mail sink's Maildir
  (``X-Fedmsg-Id`` and ``To`` of each mail, ``X-Fedmsg-Digest-Count`` of each
  digest), every event on each user's feed (Redis streams, with
  ``entries-added`` for events the feed's length cap trimmed since), and for
  IRC, whose lines carry no message id, the IRC sender's send-once records
  (``sent`` on its own line or ``summarised`` in a summary line, as the
  server took it), beside the lines the demo users logged in to the server got;
* the digests still waiting in Redis (each item with its message id).

Each published id is then **notified** (it produced notifications),
**matched nobody**, **dead-lettered** (with the reason), or **lost**; each
produced notification is **delivered**, **waiting in a digest**, **sent in a
digest** (digest mails carry counts, not ids: checked per address),
**dead-lettered** (with the reason), **waiting for a sender** (matrix), or
**lost**; a (message, destination) received more than once is a
**duplicate**.  :attr:`LedgerReport.ok` is false when anything is lost or
duplicated; :func:`format_report` prints the totals and every exception.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any

import orjson

from fmn.ledger.journal import FAILED, MATCHED, PUBLISHED, STACK, read_lines
from fmn.pipeline.queues import BACKENDS, QUEUES
from fmn.pipeline.redelivery import reason_of

_PARSER = BytesHeaderParser(policy=compat32)

#: backends whose notifications are delivered by a sender today
SENT_BACKENDS = ("email", "irc", "sse", "matrix")
#: exceptions printed in full; beyond that, counted
MAX_LISTED = 200

Ident = tuple[str, str, str, str]  # (message id, user, destination, address)


@dataclass
class BackendCount:
    produced: int = 0
    delivered: int = 0
    waiting_in_digest: int = 0
    sent_in_digest: int = 0
    dead_lettered: int = 0
    waiting_for_sender: int = 0
    lost: int = 0
    #: not received yet while its queue still holds messages (a paced IRC backlog)
    pending: int = 0
    duplicates: int = 0
    #: the feed's length cap dropped them after they arrived (counted as delivered)
    trimmed: int = 0


@dataclass
class LedgerReport:
    published: int = 0
    #: published ids that were published more than once (both buses, say)
    published_twice: int = 0
    bridged: int | None = None
    matched: int = 0
    notified: int = 0
    matched_nobody: int = 0
    dead_lettered: int = 0
    lost: int = 0
    #: published, not matched yet while the incoming queue still holds messages
    pending: int = 0
    #: matched, but no publisher journalled it (someone else published it)
    unpublished: int = 0
    backends: dict[str, BackendCount] = field(
        default_factory=lambda: {b: BackendCount() for b in BACKENDS})
    #: (kind, message id, backend or "", who, detail), kinds: lost, duplicate,
    #: dead-lettered, unexpected, pending
    exceptions: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    #: queue -> (visible, in flight) when the ledger was read
    queues: dict[str, tuple[int, int]] = field(default_factory=dict)
    irc_lines_received: int = 0
    seconds: float = 0.0

    @property
    def lost_total(self) -> int:
        return self.lost + sum(b.lost for b in self.backends.values())

    @property
    def duplicates_total(self) -> int:
        return sum(b.duplicates for b in self.backends.values()) + sum(
            1 for e in self.exceptions if e[0] == "unexpected")

    @property
    def pending_total(self) -> int:
        return self.pending + sum(b.pending for b in self.backends.values())

    @property
    def ok(self) -> bool:
        """Nothing lost and nothing duplicated (what is still queued is not lost)."""
        return self.lost_total == 0 and self.duplicates_total == 0

    @property
    def settled(self) -> bool:
        """``ok``, and nothing is still on its way."""
        return self.ok and self.pending_total == 0

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.update(ok=self.ok, settled=self.settled, lost_total=self.lost_total,
                   duplicates_total=self.duplicates_total, pending_total=self.pending_total)
        return doc

    def flag(self, kind: str, message_id: str, backend: str = "", who: str = "",
             detail: str = "") -> None:
        self.exceptions.append((kind, message_id, backend, who, detail))


@dataclass(frozen=True)
class StackInfo:
    """Where a local run keeps things (the journal's ``stack.json``)."""

    queue_prefix: str
    redis_url: str
    feed_prefix: str
    aws_endpoint_url: str | None
    aws_region: str
    maildir: str
    irc_log: str | None = None
    status_file: str | None = None

    @classmethod
    def read(cls, journal_dir: Path) -> StackInfo:
        try:
            doc = json.loads((journal_dir / STACK).read_text())
        except FileNotFoundError:
            raise RuntimeError(f"{journal_dir} holds no ledger journal of a local run "
                               "(fmn up writes one under var/stack/ledger)") from None
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in doc.items() if k in known})


def once_key(queue_prefix: str, backend: str, ident: Ident) -> str:
    """The Redis key of a send's idempotency record (Powertools: ``prefix#md5(key JSON)``)."""
    mid, user, dest, address = ident
    return _once_key(queue_prefix, backend, {"message": mid, "backend": backend, "user": user,
                                             "destination": dest, "address": address})


def _once_key(queue_prefix: str, backend: str, data: dict[str, str]) -> str:
    from fmn.delivery.once import sends_prefix

    digest = hashlib.md5(json.dumps(data, sort_keys=True).encode()).hexdigest()  # noqa: S324
    return f"{sends_prefix(queue_prefix, backend)}#{digest}"


# -- readers -------------------------------------------------------------------


def peek_queue(sqs: Any, url: str, hold_s: int = 60) -> list[dict[str, Any]]:
    """Every message of a queue, read and then made visible again (nothing deleted)."""
    seen: dict[str, dict[str, Any]] = {}
    handles: list[str] = []
    empty = 0
    try:
        while empty < 2:
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                      VisibilityTimeout=hold_s, WaitTimeSeconds=0,
                                      MessageAttributeNames=["All"],
                                      MessageSystemAttributeNames=["All"]).get("Messages", [])
            if not got:
                empty += 1
                continue
            empty = 0
            for m in got:
                handles.append(m["ReceiptHandle"])
                seen.setdefault(m["MessageId"], m)
    finally:
        for start in range(0, len(handles), 10):
            entries = [{"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
                       for i, h in enumerate(handles[start:start + 10])]
            # (if this fails they come back after hold_s anyway)
            with contextlib.suppress(Exception):
                sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)
    return list(seen.values())


def _payload_idents(body: str) -> tuple[str, list[Ident], str]:
    """(backend, identities, reason) of a notification payload body (version 1 or 2)."""
    doc = orjson.loads(body)
    idents = []
    for inner in doc.get("payloads") or [doc]:
        mid = str(inner.get("message", {}).get("id"))
        idents += [(mid, str(n.get("user")), str(n.get("destination")), str(n.get("address")))
                   for n in inner.get("notifications", ())]
    return str(doc.get("backend")), idents, str(doc.get("error", ""))


_WANTED = ("to", "x-fedmsg-id", "x-fedmsg-digest-count")


def mail_headers(path: Path) -> dict[str, str]:
    """``To``, ``X-Fedmsg-Id`` and ``X-Fedmsg-Digest-Count`` of one mail file (the ones
    present, lower-case names), unfolded and with encoded words decoded.

    A quarter of a million mails in a load test: a parser with the default
    policy took a millisecond a mail, so this reads the header block with the
    compat32 parser, which leaves values as they are, and decodes only these.
    """
    from email.header import decode_header, make_header

    with path.open("rb") as f:
        headers = _PARSER.parse(f)
    out: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        if key in _WANTED and key not in out:
            text = "".join(str(value).replace("\r", "").split("\n"))
            if "=?" in text:
                text = str(make_header(decode_header(text)))
            out[key] = text.strip()
    return out


def read_mail(maildir: Path) -> tuple[Counter[tuple[str, str]], Counter[str], int]:
    """(mails per (message id, To), digest notifications per To, mails read)."""
    direct: Counter[tuple[str, str]] = Counter()
    digests: Counter[str] = Counter()
    if not maildir.exists():
        return direct, digests, 0
    count = 0
    for sub in ("new", "cur"):
        folder = maildir / sub
        if not folder.exists():
            continue
        for path in folder.iterdir():
            headers = mail_headers(path)
            count += 1
            to = headers.get("to", "")
            digest = headers.get("x-fedmsg-digest-count")
            if digest is not None:
                digests[to] += int(digest)
            else:
                direct[(headers.get("x-fedmsg-id", ""), to)] += 1
    return direct, digests, count


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_feeds(redis: Any, prefix: str) -> tuple[Counter[tuple[str, str]], dict[str, int]]:
    """(events per (message id, user), events trimmed per user)."""
    from fmn.delivery.feed import ENTRY_FIELD

    events: Counter[tuple[str, str]] = Counter()
    trimmed: dict[str, int] = {}
    for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        name = _decode(key)
        if redis.type(key) not in (b"stream", "stream"):
            continue
        user = name[len(prefix):]
        entries = redis.xrange(key)
        info = redis.xinfo_stream(key)
        added = int(info.get("entries-added") or info.get(b"entries-added") or len(entries))
        if added > len(entries):
            trimmed[user] = added - len(entries)
        for _id, fields in entries:
            raw = fields.get(ENTRY_FIELD.encode()) or fields.get(ENTRY_FIELD)
            try:
                mid = str(orjson.loads(raw).get("message_id"))
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                mid = "?"
            events[(mid, user)] += 1
    return events, trimmed


def read_digests(redis: Any, queue_prefix: str) -> list[Ident]:
    """The identities of every notification waiting in a digest, or in a batch being sent
    whose mail has not gone out (see :func:`read_digest_state`)."""
    return read_digest_state(redis, queue_prefix)[0]


def read_digest_state(redis: Any, queue_prefix: str) -> tuple[list[Ident], bool]:
    """(waiting, uncertain): the notifications waiting in a digest or in a batch being
    sent, and whether a batch is being sent right now (its mail may be out already).

    A batch being sent (``sending:``) whose send is remembered as done went out
    (a sender stopped between the mail and clearing the batch, which the next
    claim of it only clears): its items are not waiting.
    """
    from fmn.delivery.digest import digest_prefix

    prefix = digest_prefix(queue_prefix)
    waiting: list[Ident] = []
    uncertain = False

    def add(raws: Iterable[Any]) -> None:
        for raw in raws:
            item = orjson.loads(raw)["item"]
            waiting.append((str(item["message"]["id"]), item["user"], item["destination"],
                            item["address"]))

    for key in redis.scan_iter(match=f"{prefix}items:*", count=1000):
        add(redis.lrange(key, 0, -1))
    for key in redis.scan_iter(match=f"{prefix}sending:*", count=1000):
        dk = _decode(key)[len(f"{prefix}sending:"):]
        raws = redis.lrange(key, 0, -1)
        batch = redis.get(f"{prefix}batch:{dk}")
        outcome = None if batch is None else read_once(redis, [_once_key(
            queue_prefix, "email", {"digest": dk, "batch": _decode(batch)})])[0]
        if outcome == "inprogress":
            uncertain = True
        if outcome is None or outcome == "inprogress":
            add(raws)
    return waiting, uncertain


def read_mail_and_digests(redis: Any, queue_prefix: str, maildir: Path, attempts: int = 20,
                          pause_s: float = 0.1
                          ) -> tuple[tuple[Counter[tuple[str, str]], Counter[str], int],
                                     list[Ident]]:
    """The mails received (:func:`read_mail`) and the digest items waiting
    (:func:`read_digests`), read so that a digest going out meanwhile counts once.

    The senders' digest schedule runs while the ledger reads: a digest mail
    arriving after the Maildir was read, its batch cleared before the digests
    were, would be in neither (lost, to the ledger), and one read in both would
    count twice.  So the digests are read before and after the mail, again
    until they are the same both times with no batch on its way (at most
    ``attempts`` times; then the last reading).
    """
    waiting, uncertain = read_digest_state(redis, queue_prefix)
    for attempt in range(max(1, attempts)):
        mail = read_mail(maildir)
        again, uncertain_again = read_digest_state(redis, queue_prefix)
        if Counter(again) == Counter(waiting) and not (uncertain or uncertain_again):
            break
        waiting, uncertain = again, uncertain_again
        if attempt + 1 < attempts:
            time.sleep(pause_s)
    return mail, again


def read_once(redis: Any, keys: list[str]) -> list[str | None]:
    """The remembered outcome of each send-once key (``sent``, ``summarised``, ...), or None."""
    out: list[str | None] = []
    for start in range(0, len(keys), 1000):
        for raw in redis.mget(keys[start:start + 1000]):
            if raw is None:
                out.append(None)
                continue
            try:
                record = json.loads(raw)
                data = record.get("data")
                status = record.get("status")
                out.append(json.loads(data) if status == "COMPLETED" and data else
                           str(status).lower())
            except (ValueError, AttributeError):
                out.append("?")
    return out


# -- the accounting ------------------------------------------------------------


def _message_id_of(body: str) -> str | None:
    from fmn.metadata import parse
    from fmn.pipeline.envelope import Envelope

    try:
        envelope = Envelope.decode(body)
        if envelope.record is None:
            return None
    except Exception:  # an envelope that never parsed: known by its SQS id only
        return None
    try:
        return parse(envelope.record).id
    except Exception:  # no bus message: known by its own id field, as the publisher journals
        try:
            doc = json.loads(envelope.record)
        except ValueError:
            return None
        found = doc.get("msg_id") or doc.get("id") if isinstance(doc, dict) else None
        return str(found) if found else None


def account(journal_dir: str | Path, *, sqs: Any = None, redis: Any = None,
            bridged: int | None = None) -> LedgerReport:
    """The ledger of the local run whose journal is ``journal_dir`` (module docstring)."""
    import boto3
    import redis as redis_lib


    started = time.perf_counter()
    journal_dir = Path(journal_dir)
    info = StackInfo.read(journal_dir)
    if sqs is None:
        import os

        local = {"aws_access_key_id": "local", "aws_secret_access_key": "local"} \
            if info.aws_endpoint_url and not os.environ.get("AWS_ACCESS_KEY_ID") else {}
        sqs = boto3.client("sqs", endpoint_url=info.aws_endpoint_url,
                           region_name=info.aws_region, **local)
    if redis is None:
        redis = redis_lib.Redis.from_url(info.redis_url)
    report = LedgerReport(bridged=bridged)
    if report.bridged is None and info.status_file:
        try:
            status = json.loads(Path(info.status_file).read_text())
            report.bridged = int(status["counters"]["bridged"])
        except (OSError, ValueError, KeyError):
            pass

    urls: dict[str, tuple[str, str]] = {}
    for q in QUEUES:
        try:
            url = sqs.get_queue_url(QueueName=q.sqs_name(info.queue_prefix))["QueueUrl"]
            dlq = sqs.get_queue_url(QueueName=q.dlq_name(info.queue_prefix))["QueueUrl"]
        except Exception as exc:  # botocore: the queue is gone, the emulator is away
            raise RuntimeError(f"cannot read the run's queue {q.sqs_name(info.queue_prefix)} "
                               f"at {info.aws_endpoint_url or 'AWS'} ({exc}); the ledger "
                               "reads a run that is still up") from exc
        urls[q.name] = (url, dlq)
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        report.queues[q.name] = (int(attrs["ApproximateNumberOfMessages"]),
                                 int(attrs["ApproximateNumberOfMessagesNotVisible"]))

    # -- bus messages --
    published: Counter[str] = Counter(str(d["id"]) for d in read_lines(journal_dir / PUBLISHED))
    produced: dict[str, dict[str, set[tuple[str, str, str, int]]]] = {}
    for doc in read_lines(journal_dir / MATCHED):
        per = produced.setdefault(str(doc["id"]), {})
        for backend, recipients in doc.get("n", {}).items():
            per.setdefault(backend, set()).update(tuple(r) for r in recipients)
    reasons = {str(d["sqs"]): str(d.get("reason", "")) for d in read_lines(journal_dir / FAILED)}
    dead_messages: dict[str, str] = {}
    for m in peek_queue(sqs, urls["incoming"][1]):
        mid = _message_id_of(m["Body"]) or f"sqs:{m['MessageId']}"
        dead_messages[mid] = reasons.get(m["MessageId"]) or reason_of(m) or \
            "no reason journalled"

    report.published = len(published)
    report.published_twice = sum(1 for c in published.values() if c > 1)
    report.matched = len(produced)
    pending_incoming = sum(report.queues["incoming"]) > 0
    for mid in sorted(set(published) | set(produced) | set(dead_messages)):
        if mid in produced:
            if any(produced[mid].values()):
                report.notified += 1
            else:
                report.matched_nobody += 1
            if published and mid not in published:
                report.unpublished += 1
                report.flag("unexpected", mid, "", "", "matched but never journalled as "
                            "published")
        elif mid in dead_messages:
            report.dead_lettered += 1
            report.flag("dead-lettered", mid, "incoming", "", dead_messages[mid])
        else:
            if pending_incoming:
                report.pending += 1
            else:
                report.lost += 1
            report.flag("pending" if pending_incoming else "lost", mid, "", "",
                        "published, never matched nor dead-lettered"
                        + (" (the incoming queue is not empty yet)" if pending_incoming else ""))

    # -- notifications --
    expected: dict[str, dict[Ident, int]] = {b: {} for b in BACKENDS}
    for mid, per in produced.items():
        for backend, recipients in per.items():
            for user, dest, address, digest in recipients:
                expected.setdefault(backend, {})[(mid, user, dest, address)] = digest
    for backend, items in expected.items():
        report.backends.setdefault(backend, BackendCount()).produced = len(items)

    dead: dict[str, dict[Ident, str]] = {b: {} for b in BACKENDS}
    for backend in BACKENDS:
        for m in peek_queue(sqs, urls[backend][1]):
            try:
                _b, idents, reason = _payload_idents(m["Body"])
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                report.flag("dead-lettered", f"sqs:{m['MessageId']}", backend, "",
                            "an unreadable payload")
                continue
            # a whole record a sender dead-lettered (unreadable, postponed too long) says
            # why in its error attribute; one SQS moved carries no reason at all
            for ident in idents:
                dead[backend][ident] = reason or reason_of(m) or \
                    "moved after the queue's maximum receives"

    waiting_sender: dict[str, set[Ident]] = {b: set() for b in BACKENDS}
    for q in QUEUES:
        if q.function is None and q.name in BACKENDS:
            for m in peek_queue(sqs, urls[q.name][0]):
                try:
                    _b, idents, _r = _payload_idents(m["Body"])
                except (orjson.JSONDecodeError, AttributeError, TypeError):
                    continue
                waiting_sender[q.name].update(idents)

    def settle(backend: str, ident: Ident, count: BackendCount) -> None:
        """A notification no receiver got: dead-lettered, waiting for a sender, or lost."""
        if ident in dead[backend]:
            count.dead_lettered += 1
            report.flag("dead-lettered", ident[0], backend, f"{ident[1]} {ident[3]}",
                        dead[backend][ident])
        elif ident in waiting_sender[backend]:
            count.waiting_for_sender += 1
        else:
            pending = sum(report.queues.get(backend, (0, 0))) > 0
            if pending:
                count.pending += 1
            else:
                count.lost += 1
            report.flag("pending" if pending else "lost", ident[0], backend,
                        f"{ident[1]} {ident[3]}", "not received"
                        + (" (its queue is not empty yet)" if pending else ""))

    # email: direct mails by (message id, To); digests by To
    (mails, digest_mails, _n), waiting_list = read_mail_and_digests(
        redis, info.queue_prefix, Path(info.maildir))
    email = report.backends["email"]
    direct_expected: Counter[tuple[str, str]] = Counter()
    digest_expected: dict[str, list[Ident]] = defaultdict(list)
    for ident, digest in expected.get("email", {}).items():
        if digest:
            digest_expected[ident[3]].append(ident)
        else:
            direct_expected[(ident[0], ident[3])] += 1
    remaining = Counter(mails)
    for ident, digest in expected.get("email", {}).items():
        if digest:
            continue
        key = (ident[0], ident[3])
        if remaining[key] > 0:
            remaining[key] -= 1
            email.delivered += 1
        else:
            settle("email", ident, email)
    for (mid, to), extra in remaining.items():
        if extra <= 0:
            continue
        if mid not in produced and pending_incoming:
            continue  # delivered before its record's journal line was read: in flight
        if (mid, to) in direct_expected:
            email.duplicates += extra
            report.flag("duplicate", mid, "email", to, f"{extra} more mail(s) than notifications")
        else:
            report.flag("unexpected", mid, "email", to, f"{extra} mail(s) nobody was notified of")
    waiting = set(waiting_list)
    for address, idents in sorted(digest_expected.items()):
        unsettled = 0
        for ident in idents:
            if ident in waiting:
                email.waiting_in_digest += 1
            elif ident in dead["email"]:
                settle("email", ident, email)
            else:
                unsettled += 1
        got = digest_mails.pop(address, 0)
        email.sent_in_digest += min(got, unsettled)
        if got > unsettled:
            email.duplicates += got - unsettled
            report.flag("duplicate", "", "email", address,
                        f"digests carried {got} notifications, {unsettled} were due")
        elif got < unsettled:
            pending = sum(report.queues.get("email", (0, 0))) > 0
            if pending:
                email.pending += unsettled - got
            else:
                email.lost += unsettled - got
            report.flag("pending" if pending else "lost", "", "email", address,
                        f"digests carried {got} notifications, {unsettled} were due"
                        + (" (the email queue is not empty yet)" if pending else ""))
    for address, got in digest_mails.items():
        report.flag("unexpected", "", "email", address, f"digests with {got} notifications "
                    "for an address with no digest notification")

    # the live feed: events per (message id, user)
    from fmn.delivery.feed import feed_message_id

    events, trimmed = read_feeds(redis, info.feed_prefix)
    sse = report.backends["sse"]
    remaining = Counter(events)
    for ident in expected.get("sse", {}):
        key = (feed_message_id(ident[0]) or "", ident[1])  # as the event carries it
        if remaining[key] > 0:
            remaining[key] -= 1
            sse.delivered += 1
        elif trimmed.get(ident[1], 0) > 0:
            trimmed[ident[1]] -= 1
            sse.delivered += 1
            sse.trimmed += 1
        else:
            settle("sse", ident, sse)
    for (mid, user), extra in remaining.items():
        if extra > 0 and mid not in produced and pending_incoming:
            continue  # delivered before its record's journal line was read: in flight
        if extra > 0 and mid not in produced:
            report.flag("unexpected", mid, "sse", user, f"{extra} feed event(s) nobody was "
                        "notified of")
        elif extra > 0:
            sse.duplicates += extra
            report.flag("duplicate", mid, "sse", user, f"{extra} more feed event(s) than "
                        "notifications")

    # IRC and Matrix: the senders' send-once records (IRC lines carry no message id)
    for backend in ("irc", "matrix"):
        count = report.backends[backend]
        idents = list(expected.get(backend, {}))
        outcomes = read_once(redis, [once_key(info.queue_prefix, backend, i) for i in idents])
        for ident, outcome in zip(idents, outcomes, strict=True):
            if outcome in ("sent", "summarised"):
                count.delivered += 1
            else:
                settle(backend, ident, count)
    if info.irc_log:
        with contextlib.suppress(FileNotFoundError):
            report.irc_lines_received = Path(info.irc_log).read_text(
                errors="replace").count(" <- ")

    # a backend with no sender: waiting on its queue, dead-lettered, or lost
    for backend in BACKENDS:
        if backend in SENT_BACKENDS:
            continue
        count = report.backends[backend]
        for ident in expected.get(backend, {}):
            settle(backend, ident, count)

    report.seconds = time.perf_counter() - started
    return report


def _lines(rows: Iterable[tuple[str, ...]]) -> Iterator[str]:
    rows = list(rows)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        yield "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                        enumerate(zip(r, widths, strict=True)))


def format_report(report: LedgerReport, max_listed: int = MAX_LISTED) -> str:
    out = ["ledger: bus messages"]
    out.append(f"  published {report.published:,} ids"
               + (f" ({report.published_twice:,} on both buses)" if report.published_twice
                  else "")
               + (f", bridged {report.bridged:,} records" if report.bridged is not None else "")
               + f", matched {report.matched:,}: notified {report.notified:,}, matched nobody "
               f"{report.matched_nobody:,}; dead-lettered {report.dead_lettered:,}; "
               f"lost {report.lost:,}"
               + (f"; not matched yet {report.pending:,}" if report.pending else ""))
    out.append("ledger: notifications")
    rows = [("backend", "produced", "delivered", "in digest mails", "waiting in digests",
             "dead-lettered", "no sender yet", "still queued", "lost", "duplicates")]
    for name, b in report.backends.items():
        rows.append((name, f"{b.produced:,}", f"{b.delivered:,}", f"{b.sent_in_digest:,}",
                     f"{b.waiting_in_digest:,}", f"{b.dead_lettered:,}",
                     f"{b.waiting_for_sender:,}", f"{b.pending:,}", f"{b.lost:,}",
                     f"{b.duplicates:,}"))
    out += ["  " + line for line in _lines(rows)]
    trimmed = report.backends["sse"].trimmed
    if trimmed:
        out.append(f"  (the feeds' length cap trimmed {trimmed:,} delivered events since)")
    if report.irc_lines_received:
        out.append(f"  IRC lines the demo users logged in to the server received: "
                   f"{report.irc_lines_received:,}")
    busy = {q: v for q, v in report.queues.items() if sum(v)}
    if busy:
        out.append("  not drained yet: " + ", ".join(f"{q} {v[0]} visible + {v[1]} in flight"
                                                    for q, v in busy.items()))
    if report.exceptions:
        order = {"lost": 0, "duplicate": 1, "unexpected": 2, "dead-lettered": 3, "pending": 4}
        listed = sorted(report.exceptions, key=lambda e: order.get(e[0], 5))
        out.append(f"ledger: {len(report.exceptions):,} exceptions")
        for kind, mid, backend, who, detail in listed[:max_listed]:
            out.append(f"  {kind:<13} {backend or '-':<8} {mid[:60] or '-':<60} "
                       f"{who[:40] or '-':<40} {detail[:200]}")
        if len(report.exceptions) > max_listed:
            out.append(f"  ... and {len(report.exceptions) - max_listed:,} more "
                       "(--json has them all)")
    verdict = "OK: nothing lost, nothing twice" if report.ok else \
        f"FAILED: {report.lost_total:,} lost, {report.duplicates_total:,} duplicated"
    if report.pending_total:
        verdict += f"; {report.pending_total:,} still on their queues"
    out.append(f"ledger: {verdict} ({report.seconds:.1f}s to read)")
    return "\n".join(out)
