"""One load-test run: a clean stack, every message published, drained, measured, accounted for.

:func:`run_once` starts ``fmn up``'s stack under names of its own (queues,
Redis keys, a RabbitMQ queue and exchange, free ports, a fresh SQLite
preferences database), with the match function's maximum concurrency set,
counts every AWS request of the run
(:class:`fmn.local.requests.RequestCounter`, in this process, in the bridge's
and in those of the email sender and the feed function, which run in processes
of their own as Lambda functions have environments of their own), publishes the
re-keyed messages as fast as the bus takes them, samples every queue's backlog
while it drains, and stops once the match function has matched every message
and the email and feed queues are empty: "to the last email and the last feed
event"; the IRC sender, paced by the network's flood limit, is reported apart
and may still have a backlog. Then it reads the ledger, measures the emulator's
ceiling for the run's own request mix and the mail sink's for the run's own
mails, stops the stack and removes what it made.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmn.local.files import read_json
from fmn.local.requests import RequestCounter, read_counts
from fmn.pipeline.queues import QUEUES, queue
from fmn.settings import Settings
from loadtest.messages import Outgoing, Rekeyer, Template

log = logging.getLogger("loadtest")

LOCALSTACK_URL = "http://127.0.0.1:4566"
#: queues whose backlog is drawn and watched
WATCHED = tuple(q.name for q in QUEUES)
#: queues that must be empty for the run to have drained ("the last email and feed event")
DRAINED = ("incoming", "email", "sse")


@dataclass
class Options:
    messages: int = 15_000
    concurrencies: Sequence[int] = (1, 2, 4, 6, 8)
    users: int = 10_000
    bus: str = "fedmsg"
    #: "localstack" or "moto"
    aws: str = "localstack"
    #: an endpoint to use instead (tests: their moto server)
    aws_endpoint: str | None = None
    seed: int = 0
    workdir: Path = field(default_factory=lambda: Path("var/loadtest"))
    #: give up on a run that has not drained after this long
    timeout_s: float = 3600.0
    #: how long the emulator's ceiling is measured
    ceiling_s: float = 8.0
    #: seconds between samples of the queues
    sample_s: float = 0.5
    redis_url: str | None = None
    #: queues whose function runs in a process of its own (``fmn.local.worker``), as
    #: each Lambda function has environments of its own; the others share this
    #: process's interpreter
    own_process: tuple[str, ...] = ("email", "sse")
    #: how many processes the email sender runs in (where receives are long polls), as
    #: Lambda gives each concurrent invocation an environment of its own: one
    #: interpreter holds its threads to one core, and one sender was the limit (3,000
    #: messages at concurrency 2 on two cores, LocalStack without per-request metrics:
    #: 1 process 80 s, 2 processes 57 s, 3 processes 57 s, the machine then full)
    email_processes: int = 2


@dataclass
class Sample:
    t: float
    #: queue -> (visible, in flight)
    queues: dict[str, tuple[int, int]]
    matched: int
    mails: int


@dataclass
class RunData:
    """What one run measured (the report turns it into figures)."""

    concurrency: int
    messages: int
    published_at: float = 0.0
    publish_s: float = 0.0
    drained: bool = False
    drained_at: float = 0.0
    interrupted: bool = False
    samples: list[Sample] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: function -> {"invocations", "busy_s", "cpu_s", "records"}
    functions: dict[str, dict[str, float]] = field(default_factory=dict)
    irc: dict[str, int] = field(default_factory=dict)
    ledger: dict[str, Any] = field(default_factory=dict)
    ledger_text: str = ""
    ceiling: dict[str, Any] = field(default_factory=dict)
    #: the mail sink's own ceiling (:func:`loadtest.ceiling.measure_mail`)
    mail_ceiling: dict[str, Any] = field(default_factory=dict)
    #: process -> CPU seconds used while draining
    cpu_s: dict[str, float] = field(default_factory=dict)
    stages: dict[str, Any] = field(default_factory=dict)
    workdir: str = ""
    journal_write_s: float = 0.0
    #: the machine's 1-minute load average when publishing started and when it drained
    load_average: tuple[float, float] = (0.0, 0.0)
    #: seconds over which ``cpu_s`` was measured (publishing to drained, or to the stop)
    cpu_span_s: float = 0.0
    #: what makes the figures incomplete or suspect (a worker that died...)
    notes: list[str] = field(default_factory=list)


def endpoint_for(opts: Options) -> str | None:
    """The AWS endpoint: the given one, LocalStack, or None (the stack starts a moto server)."""
    if opts.aws_endpoint:
        return opts.aws_endpoint
    if opts.aws == "localstack":
        return os.environ.get("AWS_ENDPOINT_URL") or LOCALSTACK_URL
    return None


def localstack_answers(url: str = LOCALSTACK_URL) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/_localstack/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


class _Cpu:
    """CPU seconds of the processes that do the work, between two readings."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        import psutil

        #: each listed process counts its own children, but for this one, whose
        #: children (bridge, sinks, workers...) are listed on their own
        self.listed = {pid for pid in pids.values() if pid}
        self.procs: dict[str, Any] = {}
        for name, pid in pids.items():
            if pid:
                with contextlib.suppress(psutil.Error):
                    self.procs[name] = psutil.Process(pid)
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        import psutil

        out = {}
        for name, p in self.procs.items():
            try:
                t = p.cpu_times()
                out[name] = t.user + t.system
                children = p.children(recursive=True)
                if p.pid == os.getpid():  # only what no other line counts (the IRC server)
                    children = [c for c in children if not self._under_listed(c)]
                for child in children:
                    ct = child.cpu_times()
                    out[name] += ct.user + ct.system
            except psutil.Error:
                pass
        return out

    def _under_listed(self, proc: Any) -> bool:
        import psutil

        try:
            return proc.pid in self.listed or any(a.pid in self.listed for a in proc.parents()
                                                  if a.pid != os.getpid())
        except psutil.Error:
            return True

    def used(self) -> dict[str, float]:
        end = self._read()
        return {k: round(end[k] - self.start.get(k, 0.0), 2) for k in end}


def _find_pid(*fragments: str) -> int | None:
    """The first process with one of ``fragments`` in one of its arguments."""
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(f in part for part in p.info["cmdline"] or () for f in fragments):
                return int(p.info["pid"])
        except psutil.Error:
            continue
    return None


def run_once(opts: Options, concurrency: int, templates: Sequence[Template],
             on_sample: Callable[[RunData, Sample | None, str], None],
             stop: threading.Event) -> RunData:
    """One run at one maximum concurrency of the match function (module docstring)."""
    import boto3

    from fmn.local.stack import LocalStack, StackOptions, free_port

    tag = uuid.uuid4().hex[:6]
    prefix = f"lt{tag}-"
    rundir = (opts.workdir / f"c{concurrency}").resolve()
    if rundir.exists():
        import shutil

        shutil.rmtree(rundir)
    rundir.mkdir(parents=True)
    data = RunData(concurrency=concurrency, messages=opts.messages, workdir=str(rundir))
    base = Settings.from_env()
    settings = dataclasses.replace(
        base, database_url=f"sqlite:///{rundir / 'prefs.sqlite'}",
        redis_url=opts.redis_url or base.redis_url,
        snapshot_prefix=f"fmn-lt:{tag}:snapshot:", aws_endpoint_url=endpoint_for(opts),
        queue_prefix=prefix, claim_bucket=f"lt-claims-{tag}",
        feed_prefix=f"fmn-lt:{tag}:feed:", feed_maxlen=1_000_000)
    counts_file = rundir / "bridge-requests.json"
    options = StackOptions(
        users=opts.users, seed=opts.seed, workdir=rundir,
        fedmsg_endpoint=f"tcp://127.0.0.1:{free_port()}",
        amqp_queue=f"fmn-lt-{tag}", amqp_exchange=f"fmn-lt-{tag}",
        # no endpoint: a moto server of the stack's own (the load test chose already)
        aws="auto" if settings.aws_endpoint_url else "moto",
        poll_wait_s=1, web=False, status_every_s=None, log_dir=rundir / "logs",
        request_counts=counts_file, max_concurrency={"incoming": concurrency},
        feed_port=free_port(), web_port=free_port(), mail_process=True,
        external=tuple(opts.own_process),
        # the moto server hands one message to two receivers: one process there
        processes={"email": opts.email_processes}
        if "email" in opts.own_process and opts.aws == "localstack" else {})
    functions = {q.name: q.function for q in QUEUES if q.function}
    counter = RequestCounter(prefix, role="instrument", functions=functions)
    counter.install_default_session()
    stack = LocalStack(settings, options)
    feeds: list[tuple[float, str]] = []

    def say(text: str) -> None:
        on_sample(data, None, text)

    try:
        stack.start(say=lambda text: say(f"c={concurrency}: {text}"))
        names = [u.name for u in stack._demo_users]
        rekeyer = Rekeyer(templates, names, seed=opts.seed + concurrency)
        outgoing = list(rekeyer.copies(opts.messages))
        say(f"c={concurrency}: publishing {len(outgoing):,} re-keyed messages on {opts.bus}")
        in_process = ", ".join(sorted({functions[q] for q in functions
                                       if q not in opts.own_process}))
        cpu = _Cpu({f"this process ({in_process}; runner, IRC server)": os.getpid(),
                    "bridge": stack.bridge_pid, "mail sink": stack.mail.pid,
                    "AWS emulator": stack.moto_pid or _find_pid(
                        "localstack.runtime.main", "localstack_runtime.py"),
                    "redis-server": _find_pid("redis-server"),
                    **{f"{functions[stack.worker_queues[w]]} (own process"
                       f"{'' if w in functions else ' ' + w.rsplit('-', 1)[1]})": p.pid
                       for w, p in stack.workers.items()}})
        publisher = threading.Thread(target=_publish, name="publisher", daemon=True,
                                     args=(stack, opts.bus, outgoing, data))
        data.published_at = time.time()
        load_start = os.getloadavg()[0]
        publisher.start()
        _watch(stack, data, opts, on_sample, stop, publisher)
        data.cpu_s = cpu.used()
        data.cpu_span_s = time.time() - data.published_at
        data.load_average = (load_start, os.getloadavg()[0])
        publisher.join(5)
        say(f"c={concurrency}: stopping the functions, reading the ledger ...")
        stack.quiesce()
        report = stack.ledger()
        from fmn.ledger import format_report
        from loadtest.analysis import read_feed_times

        feeds = read_feed_times(settings.redis_url, settings.feed_prefix)

        data.ledger = report.to_json()
        data.ledger_text = format_report(report, max_listed=30)
        runner_stats = [dataclasses.asdict(r.stats()) for r in stack.runners.values()]
        for q in stack.workers:  # stopped by quiesce: their files are written
            worker = read_json(stack.worker_file(q, "stats"))
            if isinstance(worker, dict):
                runner_stats.append(worker)
            else:
                data.notes.append(f"the {functions[stack.worker_queues[q]]} process ({q}) "
                                  "wrote no totals (killed?): its "
                                  "invocations, compute and SQS requests are missing")
        data.functions.update(function_figures(runner_stats))
        irc = getattr(stack.functions.get("send_irc"), "totals", {})
        data.irc = {k: int(v) for k, v in irc.items()}
        journal = getattr(stack.functions.get("match"), "_state", {}).get("journal")
        data.journal_write_s = float(getattr(journal, "write_s", 0.0))
        data.requests = counter.snapshot() + read_counts(counts_file) + [
            r for q in stack.workers for r in read_counts(stack.worker_file(q, "requests"))]
        if not stop.is_set() and opts.ceiling_s > 0:
            from loadtest.ceiling import measure

            say(f"c={concurrency}: measuring the emulator's ceiling for this run's "
                "request mix ...")
            data.ceiling = measure(stack.sqs, data.requests, prefix, opts.ceiling_s,
                                   threads=max(4, concurrency + 3))
            if stack.mail is not None:
                from fmn.local.mailsink import ProcessMailSink
                from loadtest.ceiling import measure_mail

                say(f"c={concurrency}: measuring the mail sink's ceiling with this run's "
                    "mails ...")
                samples = [(m.mail_from, m.rcpt_tos, m.raw) for m in stack.mail.samples(200)]
                # a sink of the same kind, fresh: the run's Maildir holds the run's mails only
                with ProcessMailSink(rundir / "ceiling-mail") as scratch:
                    data.mail_ceiling = measure_mail(
                        "127.0.0.1", scratch.port, samples, opts.ceiling_s,
                        threads=queue("email").max_concurrency)
                import shutil

                shutil.rmtree(rundir / "ceiling-mail", ignore_errors=True)
    finally:
        if boto3.DEFAULT_SESSION is not None:
            counter.uninstall(boto3.DEFAULT_SESSION.events)
        say(f"c={concurrency}: stopping the stack ...")
        stack.stop()
        # bridge counts written at its exit: the last word
        bridge_final = read_counts(counts_file)
        if bridge_final:
            data.requests = [r for r in data.requests if r["role"] != "bridge"] + bridge_final
        _clean(stack, settings, options, tag)
    from loadtest.analysis import analyse

    data.stages = analyse(rundir, data, feeds)
    (rundir / "run.json").write_text(json.dumps(dataclasses.asdict(data), default=str))
    return data


def function_figures(runner_stats: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each function's invocations, handler wall time (``busy_s``), records and, when its
    runner measured it, handler CPU time (``cpu_s``): a CPU time not recorded is left out,
    not 0, so the bill says it does not know rather than pricing it as free.  A function
    run by several processes (several runners) adds up."""
    figures: dict[str, dict[str, float]] = {}
    unknown_cpu: set[str] = set()
    for st in runner_stats:
        f = figures.setdefault(st["function"], {"invocations": 0, "busy_s": 0.0, "records": 0})
        f["invocations"] += st["invocations"]
        f["busy_s"] += st["busy_s"]
        f["records"] += st["records_ok"] + st["records_failed"]
        if st.get("cpu_s") is None:
            unknown_cpu.add(st["function"])
        else:
            f["cpu_s"] = f.get("cpu_s", 0.0) + st["cpu_s"]
    for name in unknown_cpu:  # part of it unmeasured: the whole is not known
        figures[name].pop("cpu_s", None)
    return figures


def _stamped(outgoing: list[Outgoing], journal: Any, bus: str
             ) -> Generator[Outgoing, None, None]:
    """Each message stamped with the time it goes out, then, once the caller has
    published it, journalled at that same time, 200 to a journal write (the time of
    the write was up to 1.5 s late on AMQP, with its confirmed publishes, which put
    the bridge's median latency below zero).  Close it to journal the last ones."""
    chunk: list[tuple[str, float]] = []
    try:
        for o in outgoing:
            now = time.time()
            o.stamp(now)
            yield o
            chunk.append((o.id, now))
            if len(chunk) >= 200:
                journal.published_at(chunk, bus)
                chunk = []
    finally:
        if chunk:
            journal.published_at(chunk, bus)


def _publish(stack: Any, bus: str, outgoing: list[Outgoing], data: RunData) -> None:
    """Every message on the bus, as fast as it takes them, each stamped and journalled."""
    started = time.perf_counter()
    if bus == "fedmsg":
        from fmn.local.replay import bind_publisher

        sock = bind_publisher(stack.options.fedmsg_endpoint)
        try:
            with contextlib.closing(_stamped(outgoing, stack.journal, bus)) as stamped:
                for o in stamped:
                    sock.send_multipart([o.topic.encode(), json.dumps(o.record).encode()])
            data.publish_s = time.perf_counter() - started
            # Closing the socket drops what is still queued for a subscriber that has
            # not read it yet (15,000 messages went out in 3 s, the bridge took about
            # a thousand a second, and lost the last 3,000 when the socket closed):
            # keep it open until the bridge has them all.
            _wait_bridged(stack, len(outgoing))
        finally:
            sock.close()
    else:
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(stack.options.amqp_url))
        channel = conn.channel()
        channel.confirm_delivery()
        try:
            with contextlib.closing(_stamped(outgoing, stack.journal, bus)) as stamped:
                for o in stamped:
                    r = o.record
                    channel.basic_publish(
                        stack.options.amqp_exchange, o.topic,
                        json.dumps(r.get("body")).encode(),
                        pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                             headers=r.get("headers") or {}, message_id=o.id))
        finally:
            conn.close()
    data.publish_s = data.publish_s or time.perf_counter() - started


def _wait_bridged(stack: Any, count: int, stall_s: float = 30.0) -> None:
    """Until the bridge has received ``count`` messages, or received nothing for ``stall_s``."""
    last, since = -1, time.monotonic()
    while stack.bridged < count:
        if stack.bridged != last:
            last, since = stack.bridged, time.monotonic()
        elif time.monotonic() - since > stall_s:
            log.warning("the bridge received %d of %d messages and nothing for %.0fs",
                        last, count, stall_s)
            return
        time.sleep(0.2)


def _watch(stack: Any, data: RunData, opts: Options,
           on_sample: Callable[[RunData, Sample | None, str], None], stop: threading.Event,
           publisher: threading.Thread) -> None:
    """Sample the queues until drained (or stopped, or out of time)."""
    deadline = time.monotonic() + opts.timeout_s
    calm = 0
    while not stop.wait(opts.sample_s):
        queues = {}
        for name in WATCHED:
            try:
                attrs = stack.sqs.get_queue_attributes(
                    QueueUrl=stack.urls[name].url,
                    AttributeNames=["ApproximateNumberOfMessages",
                                    "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
                queues[name] = (int(attrs["ApproximateNumberOfMessages"]),
                                int(attrs["ApproximateNumberOfMessagesNotVisible"]))
            except Exception as exc:  # a busy emulator: the next sample will do
                log.warning("cannot read queue %s: %s", name, exc)
                queues[name] = (-1, -1)
        totals = getattr(stack.functions.get("match"), "totals", {})
        matched = int(totals.get("MessagesMatched", 0))
        mails = stack.mail.count if stack.mail is not None else 0
        sample = Sample(time.time(), queues, matched, mails)
        data.samples.append(sample)
        on_sample(data, sample, "")
        empty = all(queues[q] == (0, 0) for q in DRAINED)
        if not publisher.is_alive() and matched >= data.messages and empty:
            calm += 1
            if calm >= 2:
                data.drained, data.drained_at = True, sample.t
                return
        else:
            calm = 0
        if time.monotonic() > deadline:
            log.warning("not drained after %.0fs: giving up on this run", opts.timeout_s)
            return
        dead = [q for q, w in stack.workers.items() if w.poll() is not None]
        if dead:  # nothing would drain its queue: no use waiting for the timeout
            for q in dead:
                data.notes.append(f"the {q} function's process ended by itself (exit status "
                                  f"{stack.workers[q].returncode}; its log: worker-{q}.log)")
            log.error("%s", "; ".join(data.notes))
            return
    data.interrupted = True


def _clean(stack: Any, settings: Settings, options: Any, tag: str) -> None:
    """Remove the run's AWS side (queues, alarms, their topic, the claim bucket), Redis
    keys and RabbitMQ queue and exchange."""
    import redis

    from fmn.local.messaging import remove_stage

    try:
        remove_stage(settings)
    except Exception as exc:  # a moto server ended with the stack: nothing left to remove
        log.debug("AWS side of the run not removed: %s", exc)
    from fmn.delivery.digest import digest_prefix
    from fmn.preview.window import window_key

    try:
        client = redis.Redis.from_url(settings.redis_url)
        for pattern in (f"fmn-lt:{tag}:*", f"{{fmn-lt:{tag}:*",
                        f"{digest_prefix(settings.queue_prefix)}*",
                        f"{settings.queue_prefix}*", f"{window_key(settings.queue_prefix)}*"):
            batch = list(client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(batch), 1000):
                client.delete(*batch[start:start + 1000])
    except redis.RedisError as exc:
        log.warning("Redis keys of the run not removed: %s", exc)
    try:
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(options.amqp_url))
        channel = conn.channel()
        channel.queue_delete(options.amqp_queue)
        channel.exchange_delete(options.amqp_exchange)
        conn.close()
    except Exception as exc:  # the broker away: the queue holds nothing of ours
        log.warning("RabbitMQ queue of the run not removed: %s", exc)
