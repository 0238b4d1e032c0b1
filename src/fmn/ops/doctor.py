"""``fmn doctor``: does every part of a stage answer, and do the parts agree?

One :class:`Check` per line, each ``ok``, ``warn`` (answers, but someone
should look: dead letters, an alarm firing) or ``fail`` (does not answer, or
disagrees with its definition); the exit status is non-zero when any check
failed.  What is checked:

* **redis**: it answers (``PING``);
* **database**: it answers, its schema is at the migrations' head, and how
  many users it holds;
* **queue** (one line per queue of :mod:`fmn.pipeline.queues`): the queue and
  its dead-letter queue exist, the redrive policy points at that dead-letter
  queue with the definition's maximum receives, the visibility timeout is
  the definition's; the depth and dead letters are shown;
* **alarms**: every alarm of :func:`fmn.pipeline.alarms.messaging_alarms`
  exists; those in ``ALARM`` are named;
* **snapshot**: a current snapshot is published, and every user's revision
  in it (change log applied) is the database's: a change that never reached
  the snapshot, or a user the database no longer has, is a failure.

Each check catches its own errors, so one dependency away never hides the
others' answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from fmn.pipeline.queues import QUEUES, QueueDef
from fmn.settings import Settings

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<18} {self.detail}"

    def to_json(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status, "detail": self.detail}


def _guarded(name: str, check: Callable[[], Check]) -> Check:
    try:
        return check()
    except Exception as exc:  # each check reports its own failure, the others go on
        first = str(exc).splitlines()[0] if str(exc) else ""
        return Check(name, FAIL, f"{type(exc).__name__}: {first}"[:300])


def check_redis(settings: Settings) -> Check:
    import redis

    client = redis.Redis.from_url(settings.redis_url, socket_timeout=3,
                                  socket_connect_timeout=3)
    try:
        started = time.perf_counter()
        client.ping()
        ms = (time.perf_counter() - started) * 1000
    finally:
        client.close()
    return Check("redis", OK, f"{_safe_url(settings.redis_url)} answers ({ms:.1f} ms)")


def check_database(settings: Settings, engine: Any) -> Check:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from fmn import db

    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    heads = set(ScriptDirectory.from_config(db.alembic_config()).get_heads())
    users = len(db.user_revisions(engine))
    where = _safe_url(settings.database_url)
    if current != heads:
        return Check("database", FAIL, f"{where}: schema at {sorted(current) or 'nothing'}, "
                     f"the migrations' head is {sorted(heads)} (fmn prefs import migrates)")
    return Check("database", OK, f"{where}: schema at head, {users:,} users")


def check_queue(sqs: Any, prefix: str, queue: QueueDef) -> Check:
    name = queue.sqs_name(prefix)
    label = f"queue {queue.name}"
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        dlq_url = sqs.get_queue_url(QueueName=queue.dlq_name(prefix))["QueueUrl"]
    except sqs.exceptions.QueueDoesNotExist:
        return Check(label, FAIL, f"{name} or its dead-letter queue does not exist "
                     "(deploy the stack, or fmn up)")
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    dlq = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["All"])["Attributes"]
    problems = []
    redrive = json.loads(attrs.get("RedrivePolicy") or "{}")
    if redrive.get("deadLetterTargetArn") != dlq.get("QueueArn"):
        problems.append(f"its redrive policy does not point at {queue.dlq_name(prefix)}")
    if int(redrive.get("maxReceiveCount", -1)) != queue.max_receive_count:
        problems.append(f"max receives {redrive.get('maxReceiveCount')}, "
                        f"defined {queue.max_receive_count}")
    if int(attrs.get("VisibilityTimeout", -1)) != queue.visibility_timeout_s:
        problems.append(f"visibility timeout {attrs.get('VisibilityTimeout')} s, defined "
                        f"{queue.visibility_timeout_s} s")
    visible = int(attrs.get("ApproximateNumberOfMessages", 0))
    in_flight = int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0))
    dead = int(dlq.get("ApproximateNumberOfMessages", 0)) + \
        int(dlq.get("ApproximateNumberOfMessagesNotVisible", 0))
    counts = f"{visible} visible, {in_flight} in flight, {dead} dead letters"
    if problems:
        return Check(label, FAIL, f"{name}: " + "; ".join(problems))
    if dead:
        return Check(label, WARN, f"{name}: {counts} (fmn dlq show {queue.name})")
    return Check(label, OK, f"{name}: {counts}")


def check_alarms(cloudwatch: Any, prefix: str) -> Check:
    from fmn.ops.alarms import MISSING, alarm_states
    from fmn.pipeline.alarms import messaging_alarms

    states = alarm_states(cloudwatch, messaging_alarms(prefix))
    missing = [s.name for s in states if s.state == MISSING]
    firing = [s.name for s in states if s.state == "ALARM"]
    tally = ", ".join(f"{n} {state.lower()}" for state, n in sorted(
        _count(s.state for s in states).items()))
    if missing:
        return Check("alarms", FAIL, f"{len(missing)} of {len(states)} missing: "
                     f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if firing:
        return Check("alarms", WARN, f"{tally}; firing: {', '.join(firing)}")
    return Check("alarms", OK, f"{len(states)} alarms: {tally}")


def _count(items: Iterator[str] | Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def check_snapshot(settings: Settings, engine: Any) -> Check:
    from fmn import db
    from fmn.snapshot.live import LiveSnapshot
    from fmn.snapshot.store import RedisSnapshotStore

    store = RedisSnapshotStore.from_url(settings.redis_url, settings.snapshot_prefix)
    current = store.current_id()
    if current is None:
        return Check("snapshot", FAIL, f"no snapshot published under "
                     f"{settings.snapshot_prefix!r} (fmn snapshot publish)")
    snapshot = LiveSnapshot(store, poll_interval=0)()  # the change log applied
    revisions = db.user_revisions(engine)
    held = {name: part.rev for name, part in snapshot.users.items()}
    held.update((name, rev) for name, rev in snapshot.absent_revisions.items()
                if name not in held)
    behind = sorted(n for n, rev in revisions.items() if held.get(n, -1) < rev)
    stale = sorted(n for n in snapshot.users if n not in revisions)
    if behind or stale:
        parts = []
        if behind:
            parts.append(f"{len(behind)} users changed since ({', '.join(behind[:3])}"
                         f"{' ...' if len(behind) > 3 else ''})")
        if stale:
            parts.append(f"{len(stale)} users the database no longer has")
        return Check("snapshot", FAIL, f"{snapshot.id} disagrees with the database: "
                     + "; ".join(parts) + " (fmn snapshot publish)")
    return Check("snapshot", OK, f"{snapshot.id}: {len(snapshot.users):,} users with live "
                 f"rules, every revision the database's ({len(revisions):,} users)")


def _safe_url(url: str) -> str:
    """A URL without its password, for printing."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def check_mail_from(settings: Settings) -> Check:
    from fmn.delivery.email import check_sender

    try:
        check_sender(settings.mail_from)
    except ValueError as exc:
        return Check("mail from", FAIL, str(exc))
    return Check("mail from", OK, f"mail goes out from {settings.mail_from}")


def run_checks(settings: Settings, sqs: Any, cloudwatch: Any) -> Iterator[Check]:
    """Every check, in order, as each completes."""
    from fmn import db

    engine = db.make_engine(settings.database_url)
    try:
        yield _guarded("redis", lambda: check_redis(settings))
        yield _guarded("database", lambda: check_database(settings, engine))
        for q in QUEUES:
            yield _guarded(f"queue {q.name}", partial(check_queue, sqs, settings.queue_prefix, q))
        yield _guarded("alarms", lambda: check_alarms(cloudwatch, settings.queue_prefix))
        yield _guarded("snapshot", lambda: check_snapshot(settings, engine))
        yield _guarded("mail from", lambda: check_mail_from(settings))
    finally:
        engine.dispose()
