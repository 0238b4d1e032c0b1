"""Faults under load: the whole local stack, a fault injected mid-stream, then the ledger.

:class:`ChaosRun` starts ``fmn up``'s stack on a private moto server and a
private ``redis-server`` (so taking Redis away disturbs nobody else), with
time scaled down (:data:`VISIBILITY_S` for every queue's visibility timeout
and function timeout, :data:`RETRY_DELAY_S` for the first back-off, and
:data:`SCALE` for the fault's own durations: "five minutes" of outage is
``300 / SCALE`` seconds here), publishes re-keyed real Fedora messages on
the bus while the fault happens, waits for the pipeline to drain, and reads
the ledger (:mod:`fmn.ledger`).  :class:`Row` is one line of the table that
``make chaos`` prints.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from services import rabbitmq_connection
from shared_data import MESSAGES

from fmn.ledger import LedgerReport, account, format_report
from fmn.local import replay
from fmn.local.redis_server import RedisServer
from fmn.local.stack import LocalStack, StackOptions, free_port
from fmn.settings import Settings

#: bus messages per fault: a few hundred in ``make test``, thousands in ``make chaos``
MESSAGES_PER_FAULT = int(os.environ.get("FMN_CHAOS_MESSAGES", "200"))
#: real durations are divided by this (five minutes of outage: 300 / SCALE seconds)
SCALE = float(os.environ.get("FMN_CHAOS_SCALE", "10"))
VISIBILITY_S = 60
RETRY_DELAY_S = 4
USERS, SEED = 300, 4
RESULTS = Path("var") / "chaos.json"


@dataclass
class Row:
    fault: str
    messages_in: int
    delivered: int
    in_digests: int
    filtered: int
    dead_lettered: int
    duplicates: int
    lost: int
    note: str = ""

    @classmethod
    def from_ledger(cls, fault: str, ledger: LedgerReport, note: str = "") -> Row:
        backends = ledger.backends.values()
        return cls(fault=fault, messages_in=ledger.published,
                   delivered=sum(b.delivered for b in backends),
                   in_digests=sum(b.waiting_in_digest + b.sent_in_digest for b in backends),
                   filtered=ledger.matched_nobody,
                   dead_lettered=ledger.dead_lettered + sum(b.dead_lettered for b in backends),
                   duplicates=ledger.duplicates_total, lost=ledger.lost_total, note=note)


def record_row(row: Row) -> None:
    """Add ``row`` to this session's table (``var/chaos.json``, printed at the end)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    rows = [r for r in rows if r["fault"] != row.fault] + [asdict(row)]
    RESULTS.write_text(json.dumps(rows, indent=1))


def rekeyed(path: Path, count: int, tag: str, key: str) -> list[dict[str, Any]]:
    """``count`` records of a shared file, cycled, each with a fresh id under ``key``."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = []
    for i in range(count):
        record = dict(records[i % len(records)])
        record[key] = f"chaos-{tag}-{i}"
        out.append(record)
    return out


class ChaosRun:
    """One fault's stack (see the module docstring)."""

    def __init__(self, tmp_path: Path, name: str, external: tuple[str, ...] = (),
                 visibility_s: int = VISIBILITY_S) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.name = name
        self.tmp_path = tmp_path
        self.redis = RedisServer(tmp_path / "redis").start()
        settings = Settings(database_url=f"sqlite:///{tmp_path / 'prefs.sqlite'}",
                            redis_url=self.redis.url, snapshot_prefix="fmn:snapshot:",
                            aws_endpoint_url=None, queue_prefix=f"chaos{self.tag}-",
                            claim_bucket=f"chaos-{self.tag}", snapshot_poll_s=0.25,
                            retry_delay_s=RETRY_DELAY_S)
        self.options = StackOptions(
            users=USERS, seed=SEED, workdir=tmp_path / "stack", aws_port=free_port(),
            fedmsg_endpoint=f"tcp://127.0.0.1:{free_port()}", amqp_queue=f"fmn-chaos-{self.tag}",
            amqp_exchange=f"fmn-chaos-{self.tag}",
            poll_wait_s=1, schedule_s=2.0, web_port=free_port(), feed_port=free_port(),
            external=external, visibility_s=visibility_s, aws="moto")
        self.stack = LocalStack(settings, self.options)
        self._threads: list[threading.Thread] = []
        self.image: RedisServer | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> ChaosRun:
        try:
            self.stack.start(say=lambda *_: None)
        except BaseException:
            self.redis.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for thread in self._threads:
            thread.join(60)
        try:
            self.stack.stop()
        finally:
            self.redis.stop()
            self.stop_image()
            rabbit = rabbitmq_connection()
            channel = rabbit.channel()
            channel.queue_delete(self.options.amqp_queue)
            channel.exchange_delete(self.options.amqp_exchange)
            rabbit.close()

    # -- traffic -------------------------------------------------------------------------

    def publish_fedmsg(self, count: int = MESSAGES_PER_FAULT, rate: float | None = None,
                       background: bool = True, extra: tuple[dict[str, Any], ...] = (),
                       part: str = "") -> None:
        """``count`` re-keyed fedmsg envelopes (then ``extra``) on the stack's fedmsg endpoint
        (a later ``part``: fresh ids again; parts must not overlap, each binds the endpoint)."""
        path = self.tmp_path / f"fedmsg{part}.jsonl"
        records = rekeyed(MESSAGES / "fedmsg.jsonl", count, self.tag + part,
                          "msg_id") + list(extra)
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        self._run(lambda: replay.replay_fedmsg(path, self.options.fedmsg_endpoint, rate,
                                               journal=self.stack.journal), background)

    def publish_amqp(self, count: int = MESSAGES_PER_FAULT, rate: float | None = None,
                     background: bool = True) -> None:
        """``count`` re-keyed fedora-messaging records through RabbitMQ."""
        path = self.tmp_path / "amqp.jsonl"
        records = rekeyed(MESSAGES / "fedora-messaging.jsonl", count, self.tag, "id")
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        self._run(lambda: replay.replay_amqp(path, self.options.amqp_url, rate,
                                             exchange=self.options.amqp_exchange,
                                             journal=self.stack.journal), background)

    def _run(self, work: Callable[[], Any], background: bool) -> None:
        if not background:
            work()
            return
        thread = threading.Thread(target=work, name="publisher", daemon=True)
        thread.start()
        self._threads.append(thread)

    def join_publishers(self, timeout: float = 600) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def published(self) -> int:
        return sum(1 for _ in self._lines("published.jsonl"))

    def matched(self) -> int:
        return sum(1 for _ in self._lines("matched.jsonl"))

    def _lines(self, name: str) -> Iterator[str]:
        path = self.stack.ledger_dir / name
        if path.exists():
            yield from (line for line in path.read_text().splitlines() if line.strip())

    # -- observing -----------------------------------------------------------------------

    def wait_until(self, what: str, condition: Callable[[], bool], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {what} did not happen within {timeout:.0f}s:"
                                     f" {self.stack.status()['queues']}")
            time.sleep(0.2)

    def in_flight(self, queue: str) -> int:
        visible, hidden = self.stack._attributes(self.stack.urls[queue].url)
        return hidden

    def drained(self, queues: tuple[str, ...] = ("incoming", "email", "irc", "sse")) -> bool:
        if any(thread.is_alive() for thread in self._threads):
            return False
        return all(sum(self.stack._attributes(self.stack.urls[q].url)) == 0 for q in queues)

    def settle(self, timeout: float = 600, redis: Any = None) -> LedgerReport:
        """Wait until every queue is empty twice in a row, then read the ledger (through
        ``redis``, a :class:`AcrossRestart`, when Redis was emptied on the way)."""
        def quiet() -> bool:
            if not self.drained():
                return False
            time.sleep(2 * self.options.schedule_s)  # a digest flush, stragglers
            return self.drained()

        self.wait_until("draining", quiet, timeout)
        ledger = account(self.stack.ledger_dir, sqs=self.stack.sqs, redis=redis,
                         bridged=self.stack._bridged)
        (self.tmp_path / "ledger.txt").write_text(format_report(ledger))
        return ledger

    # -- faults --------------------------------------------------------------------------

    def aws_unreachable(self, seconds: float) -> None:
        """Freeze the moto server (SIGSTOP) for ``seconds``: every AWS call hangs, as
        behind a network partition, and nothing it holds is lost."""
        pid = self.stack.moto_pid
        assert pid is not None, "the chaos stack runs its own moto server"
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    def restart_redis_empty(self) -> Any:
        """Restart Redis empty, as ElastiCache without persistence after a failure.

        Writes are paused first (``CLIENT PAUSE WRITE``) and the server's content
        copied to an RDB file, which a second, private ``redis-server`` then
        serves: the *image* of what the receivers had got before (feed events,
        remembered sends) and of the digest items that the restart loses.  The
        server is then killed and started again, empty, on the same port.
        Returns the image's client (stop it with :meth:`stop_image`).
        """
        import redis as redis_lib

        client = redis_lib.Redis.from_url(self.redis.url)
        image_dir = self.tmp_path / "redis-image"
        image_dir.mkdir(parents=True, exist_ok=True)
        client.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        subprocess.run([shutil.which("redis-cli") or "redis-cli", "-p", str(self.redis.port),
                        "--rdb", str(image_dir / "dump.rdb")], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        client.close()
        (self.redis.workdir / "dump.rdb").unlink(missing_ok=True)
        self.redis.restart()  # nothing on disk to load: empty (then the pipeline writes)
        self.image = RedisServer(image_dir).start()
        return redis_lib.Redis.from_url(self.image.url)

    def stop_image(self) -> None:
        if self.image is not None:
            self.image.stop()
            self.image = None


class AcrossRestart:
    """The ledger's Redis across a restart that emptied it (:meth:`ChaosRun.restart_redis_empty`).

    What the receivers got is read from both servers: feed events appended
    before (the image) and after, sends remembered before or after.  Digests
    are read from the restarted server only: the items the image holds are
    the ones the restart lost (unless they were queued again or sent since),
    and the ledger must count them.
    """

    def __init__(self, now: Any, before: Any, digest_prefix: str) -> None:
        self.now, self.before, self.digest_prefix = now, before, digest_prefix

    def _both(self) -> tuple[Any, Any]:
        return self.now, self.before

    def scan_iter(self, match: str, count: int = 1000) -> Iterator[Any]:
        if match.startswith(self.digest_prefix):
            yield from self.now.scan_iter(match=match, count=count)
            return
        seen = set()
        for client in self._both():
            for key in client.scan_iter(match=match, count=count):
                if key not in seen:
                    seen.add(key)
                    yield key

    def type(self, key: Any) -> Any:
        found = self.now.type(key)
        return found if found not in (b"none", "none") else self.before.type(key)

    def xrange(self, key: Any) -> list[Any]:
        return [entry for client in (self.before, self.now) for entry in client.xrange(key)]

    def xinfo_stream(self, key: Any) -> dict[str, int]:
        import redis as redis_lib

        added = 0
        for client in self._both():
            try:
                info = client.xinfo_stream(key)
            except redis_lib.ResponseError:  # not on this one
                continue
            added += int(info.get("entries-added") or info.get(b"entries-added")
                         or info.get("length") or 0)
        return {"entries-added": added}

    def lrange(self, key: Any, start: int, end: int) -> list[Any]:
        return list(self.now.lrange(key, start, end))

    def mget(self, keys: list[Any]) -> list[Any]:
        return [n if n is not None else b for n, b in
                zip(self.now.mget(keys), self.before.mget(keys), strict=True)]
