"""From a run's records to its figures: per stage count, throughput, p50/p95/p99, end to end.

Times come from where each event actually happened:

* **published**: the publisher's journal (the message's own timestamp is set
  to it when it is published);
* **in the incoming queue**: SQS's ``SentTimestamp`` of the record, which the
  match function journals with what it produced;
* **matched**: the match function's journal, once SQS accepted its payloads;
* **delivered**: the mail sink's receipt (the Maildir file name carries the
  time the sink wrote it) and the feed's own event id (Redis stream ids are the
  append time in milliseconds).  Digest mails are counted, not timed: they
  wait for their interval by design.

Stages: ``bus -> incoming queue`` (the bridge), ``match`` (incoming queue ->
payloads on the backend queues), ``email queue -> mail`` and ``sse queue ->
feed`` (matched -> delivered), and ``end to end`` (published -> delivered).
Throughput of a stage: its events over the span from the run's first
publish to the stage's last event.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fmn.ledger.account import mail_headers
from fmn.ledger.journal import MATCHED, PUBLISHED, read_lines

_MAILDIR_TIME = re.compile(r"^(\d+)\.M(\d+)P")


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1]}


def _stage(name: str, done: Sequence[float], latencies: Sequence[float],
           start: float) -> dict[str, Any]:
    last = max(done) if done else start
    span = max(last - start, 1e-9)
    return {"stage": name, "count": len(done), "last_s": round(last - start, 3),
            "per_s": len(done) / span if done else 0.0,
            **{k: round(v, 4) for k, v in percentiles(latencies).items()}}


def read_mails(maildir: Path) -> tuple[list[tuple[float, str, str]], int, int]:
    """(receipt time, message id, To) of each direct mail; digest mails; digest items."""
    mails: list[tuple[float, str, str]] = []
    digests = items = 0
    for sub in ("new", "cur"):
        folder = maildir / sub
        if not folder.exists():
            continue
        for path in folder.iterdir():
            found = _MAILDIR_TIME.match(path.name)
            t = int(found.group(1)) + int(found.group(2)) / 1e6 if found else path.stat().st_mtime
            headers = mail_headers(path)
            count = headers.get("x-fedmsg-digest-count")
            if count is not None:
                digests += 1
                items += int(count)
                continue
            mails.append((t, headers.get("x-fedmsg-id", ""), headers.get("to", "")))
    return mails, digests, items


def read_feed_times(redis_url: str, prefix: str) -> list[tuple[float, str]]:
    """(append time, message id) of every feed event."""
    import orjson
    import redis

    from fmn.delivery.feed import ENTRY_FIELD

    client = redis.Redis.from_url(redis_url)
    out: list[tuple[float, str]] = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        if client.type(key) != b"stream":
            continue
        entries: Any = client.xrange(key)
        for entry_id, fields in entries:
            ms = int(entry_id.split(b"-")[0])
            try:
                mid = str(orjson.loads(fields[ENTRY_FIELD.encode()]).get("message_id"))
            except (KeyError, orjson.JSONDecodeError, AttributeError):
                continue
            out.append((ms / 1000, mid))
    return out


def analyse(rundir: Path, data: Any, feeds: list[tuple[float, str]]) -> dict[str, Any]:
    """The run's stages (module docstring), and the seed's three figures."""
    journal = rundir / "ledger"
    published: dict[str, float] = {}
    for doc in read_lines(journal / PUBLISHED):
        published.setdefault(str(doc["id"]), float(doc["t"]))
    queued: dict[str, float] = {}
    matched: dict[str, float] = {}
    for doc in read_lines(journal / MATCHED):
        mid = str(doc["id"])
        if mid not in matched:
            matched[mid] = float(doc["t"])
            if doc.get("q"):
                queued[mid] = float(doc["q"]) / 1000
    start = min(published.values()) if published else data.published_at
    mails, digest_mails, digest_items = read_mails(rundir / "mail")
    bridge = [queued[m] - published[m] for m in queued if m in published]
    match = [matched[m] - queued[m] for m in matched if m in queued]
    email = [t - matched[m] for t, m, _ in mails if m in matched]
    sse = [t - matched[m] for t, m in feeds if m in matched]
    e2e = [t - published[m] for t, m, _ in mails if m in published] + \
        [t - published[m] for t, m in feeds if m in published]
    delivered = [t for t, _, _ in mails] + [t for t, _ in feeds]
    stages = [
        _stage("bus -> incoming queue", list(queued.values()), bridge, start),
        _stage("match (incoming -> backend queues)", list(matched.values()), match, start),
        _stage("email queue -> mail", [t for t, _, _ in mails], email, start),
        _stage("sse queue -> feed event", [t for t, _ in feeds], sse, start),
        _stage("end to end (message timestamp -> delivered)", delivered, e2e, start),
    ]
    ends = [max(delivered, default=start), max(matched.values(), default=start)]
    lasted = max(ends) - start if published else 0.0
    peak = max((sum(max(0, v) for v in s.queues.get("incoming", (0, 0)))
                for s in data.samples), default=0)
    ordered = sorted(e2e)
    quantiles = [round(ordered[min(len(ordered) - 1, int(i / 200 * len(ordered)))], 3)
                 for i in range(201)] if ordered else []
    return {
        "stages": stages,
        "e2e_quantiles": quantiles,
        "lasted_s": lasted,
        "maxed_at": peak,
        "avg_processing": len(published) / lasted if lasted else 0.0,
        "published": len(published),
        "matched": len(matched),
        "mails": len(mails),
        "digest_mails": digest_mails,
        "digest_items": digest_items,
        "feed_events": len(feeds),
        "last_mail_s": max((t for t, _, _ in mails), default=start) - start,
        "last_feed_s": max((t for t, _ in feeds), default=start) - start,
    }
