"""``fmn run``: the main job on embedded defaults, end to end on one machine.

Until the bus bridge and the Lambda pipeline exist, this is what `make run`
shows: a generated Fedora-scale preferences set goes into the preferences
database (SQLite by default), is compiled into a snapshot published to Redis
(an in-process store when no Redis answers), and the indexed matcher, reading
that snapshot as a warm Lambda would, decides the notifications for every
shared Fedora message.  It prints a summary and writes the notifications to
``var/notifications.jsonl``.
"""

from __future__ import annotations

import collections
import json
import sys
import time
from pathlib import Path
from typing import Any

from fmn.settings import Settings


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _store(settings: Settings) -> tuple[Any, str]:
    from fmn.snapshot.store import MemorySnapshotStore, RedisSnapshotStore

    try:
        store = RedisSnapshotStore.from_url(settings.redis_url, settings.snapshot_prefix)
        store.client.ping()
        return store, f"Redis at {settings.redis_url}"
    except Exception as exc:  # any connection problem: fall back, say so
        _say(f"  no Redis at {settings.redis_url} ({type(exc).__name__}); "
             "using an in-process snapshot store")
        return MemorySnapshotStore(), "in-process store"


def run(users: int, seed: int, messages: list[str] | None, out_path: str,
        settings: Settings | None = None) -> int:
    from fmn import db
    from fmn.bench import default_message_files
    from fmn.errors import InvalidMessage
    from fmn.generate import generate_preferences
    from fmn.matcher import IndexedMatcher
    from fmn.metadata import parse, warm_up
    from fmn.snapshot.live import LiveSnapshot
    from fmn.snapshot.sync import publish_full

    settings = settings or Settings.from_env()
    started = time.perf_counter()

    _say(f"1/4 generating preferences for {users:,} users (seed {seed}) ...")
    prefs = generate_preferences(users, seed)
    _say(f"2/4 importing them into {settings.database_url} ...")
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    t0 = time.perf_counter()
    db.import_preferences(engine, prefs)
    _say(f"    imported in {time.perf_counter() - t0:.1f}s")

    store, where = _store(settings)
    _say(f"3/4 compiling the snapshot into the {where} ...")
    t0 = time.perf_counter()
    data = publish_full(engine, store)
    _say(f"    snapshot {data.id}: {len(data.users):,} users with live rules, "
         f"{time.perf_counter() - t0:.1f}s")
    live = LiveSnapshot(store, poll_interval=settings.snapshot_poll_s)
    matcher = IndexedMatcher(live)
    matcher.snapshot  # load it now, not inside the timed loop  # noqa: B018
    warm_up()

    files = [Path(m) for m in messages] if messages else default_message_files()
    _say(f"4/4 matching {', '.join(str(f) for f in files)} ...")
    by_protocol: collections.Counter[str] = collections.Counter()
    by_user: collections.Counter[str] = collections.Counter()
    per_message: list[tuple[int, str]] = []
    parsed = refused = total = 0
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(out_path, "w") as out:
        for f in files:
            for lineno, line in enumerate(f.read_bytes().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    message = parse(line)
                except InvalidMessage as exc:
                    refused += 1
                    _say(f"    {f}:{lineno}: refused: {exc}")
                    continue
                parsed += 1
                found = matcher.match(message)
                total += len(found)
                per_message.append((len(found), message.topic))
                for n in found:
                    by_protocol[n.protocol] += 1
                    by_user[n.user] += 1
                    out.write(json.dumps(n.to_json(), sort_keys=True) + "\n")
    elapsed = time.perf_counter() - t0

    print(f"\nfmn run: {parsed:,} messages matched against {users:,} users "
          f"({refused} refused) in {elapsed:.2f}s, metadata extraction included")
    print("  (one cold pass: every topic and schema seen for the first time; "
          "steady-state figures: make bench)")
    print(f"  {total:,} notifications -> {out_path}")
    print("  by protocol: " + ", ".join(f"{p} {c:,}" for p, c in sorted(by_protocol.items())))
    print("  most notified users: " + ", ".join(f"{u} ({c})" for u, c in by_user.most_common(5)))
    per_message.sort(reverse=True)
    print("  messages with most recipients: " + ", ".join(
        f"{topic} ({count})" for count, topic in per_message[:3]))
    print(f"  total time {time.perf_counter() - started:.1f}s")
    return 1 if refused else 0
