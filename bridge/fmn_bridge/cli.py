"""``fmn bridge``: run the fedmsg and/or fedora-messaging sources into the incoming SQS queue.

``main(argv)`` parses the options, builds one :class:`SqsSink` and the chosen
sources (each on its own thread), logs a stats line periodically, and on
SIGTERM or SIGINT shuts down in the order that loses nothing: the sources
stop receiving, the sink sends everything it holds, the AMQP source
acknowledges what SQS accepted, and the connections close.  Exit status: 0
after a clean shutdown, 1 if something could not be flushed or a source
failed, 2 for bad options or configuration.  AWS settings come from
``fmn.settings.Settings`` (the environment) unless given as options.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from fmn.pipeline.queues import queue
from fmn.settings import Settings

from .sqs_sink import SpoolError, SqsSink, make_clients

log = logging.getLogger("fmn_bridge")


class Source(Protocol):
    stopped_receiving: threading.Event

    def run(self) -> None: ...
    def request_stop(self) -> None: ...
    def sink_drained(self) -> None: ...
    def stats(self) -> dict[str, int]: ...


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fmn bridge",
        description="Forward fedmsg (ZeroMQ) and fedora-messaging (AMQP) messages into the"
                    " incoming SQS queue.")
    src = p.add_argument_group("sources (at least one)")
    src.add_argument("--fedmsg", metavar="ENDPOINT", action="append", default=[],
                     help="a fedmsg endpoint to subscribe to, e.g. tcp://hub.fedoraproject.org:9940"
                          " (repeatable)")
    src.add_argument("--amqp-config", metavar="FILE",
                     help="a fedora-messaging TOML configuration (broker URL, TLS, queues,"
                          " bindings)")
    src.add_argument("--amqp-queue", metavar="NAME",
                     help="which configured queue to consume (default: consumer_config."
                          "fmn_bridge_queue, else every configured queue)")
    src.add_argument("--prefetch", type=int, help="AMQP prefetch (default: the config's qos)")
    aws = p.add_argument_group("AWS (default: from the environment, see fmn.settings)")
    aws.add_argument("--queue-prefix", help="prefix of the queue names (FMN_QUEUE_PREFIX)")
    aws.add_argument("--endpoint-url", help="AWS endpoint, e.g. a moto server (AWS_ENDPOINT_URL)")
    aws.add_argument("--region", help="AWS region (AWS_DEFAULT_REGION)")
    aws.add_argument("--claim-bucket", help="S3 bucket for oversized records (FMN_CLAIM_BUCKET)")
    tune = p.add_argument_group("tuning")
    tune.add_argument("--linger-ms", type=float, default=50.0,
                      help="longest wait for a batch of 10 to fill (default 50)")
    tune.add_argument("--buffer-items", type=int, default=10_000,
                      help="bound of the in-memory buffer; when full, fedmsg envelopes wait"
                           " in the journal on disk; AMQP takes its prefetch at most"
                           " (default 10000)")
    tune.add_argument("--backoff-max", type=float, default=10.0,
                      help="longest wait between SQS retries, seconds (default 10)")
    tune.add_argument("--stats-interval", type=float, default=60.0,
                      help="seconds between stats log lines (default 60)")
    tune.add_argument("--heartbeat-interval", type=float, default=60.0,
                      help="seconds between CloudWatch heartbeats (messages bridged, bus"
                           " connections; 0: none; default 60)")
    tune.add_argument("--spool-dir", metavar="DIR",
                      help="where fedmsg envelopes are written ahead until SQS accepts"
                           " them, and a stop leaves what it could not send, for the next "
                           "start to send first (a bridge with AMQP alone only sends what "
                           "is left there): DIR/<queue>, one bridge at a time (default: "
                           "FMN_BRIDGE_SPOOL, else var/bridge-spool)")
    tune.add_argument("--spool-wait", type=float, default=40.0, metavar="SECONDS",
                      help="how long a start waits for another bridge to let the spool "
                           "directory go, as when a restart overlaps the old bridge's "
                           "shutdown flush (default 40: longer than --shutdown-timeout's "
                           "default; 0: exit 2 at once)")
    tune.add_argument("--shutdown-timeout", type=float, default=30.0,
                      help="how long shutdown may spend flushing to SQS (default 30)")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.fedmsg and not args.amqp_config:
        log.error("nothing to bridge: give --fedmsg ENDPOINT and/or --amqp-config FILE")
        return 2
    env = Settings.from_env()
    prefix = args.queue_prefix if args.queue_prefix is not None else env.queue_prefix
    endpoint = args.endpoint_url or env.aws_endpoint_url
    region = args.region or env.aws_region
    bucket = args.claim_bucket or env.claim_bucket
    queue_name = queue("incoming").sqs_name(prefix)

    sqs, s3 = make_clients(endpoint, region)
    counter = _request_counter(prefix, sqs, s3)
    # one spool per queue: two bridges (two stages on one machine) never send each other's;
    # only fedmsg writes to it (an AMQP broker sends again what SQS has not taken), but an
    # AMQP-only bridge still sends what an earlier fedmsg bridge left there
    spool = Path(args.spool_dir or os.environ.get("FMN_BRIDGE_SPOOL") or "var/bridge-spool")
    sink = SqsSink(sqs, s3, queue_name, bucket, linger_s=args.linger_ms / 1000,
                   max_items=args.buffer_items, backoff_max_s=args.backoff_max,
                   spool_dir=spool / queue_name, write_ahead=bool(args.fedmsg),
                   spool_wait_s=max(0.0, args.spool_wait))
    try:
        sources = _sources(args, sink)
    except Exception as exc:  # noqa: BLE001 - a bad configuration: say what, exit 2
        log.error("bad source configuration: %s: %s", type(exc).__name__, exc)
        return 2

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("%s received: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    log.info("bridging into SQS queue %s (endpoint %s)", queue_name, endpoint or "AWS")
    try:
        sink.start()
    except SpoolError as exc:  # in use, or not usable: nothing has started
        log.error("%s", exc)
        return 2
    heartbeat = None
    if args.heartbeat_interval > 0:
        from .heartbeat import Heartbeat
        from .sqs_sink import make_cloudwatch

        heartbeat = Heartbeat(make_cloudwatch(endpoint, region), queue_name, sink, sources,
                              args.heartbeat_interval)
        heartbeat.start()
    threads = [threading.Thread(target=s.run, name=type(s).__name__, daemon=True)
               for s in sources]
    for t in threads:
        t.start()
    failed = False
    next_stats = time.monotonic() + args.stats_interval
    while not stop.wait(0.2):
        if not all(t.is_alive() for t in threads):
            log.error("a source stopped by itself: shutting down")
            failed = True
            break
        if not sink.alive:
            # sources would block on a full buffer forever while looking healthy
            log.error("the SQS sink stopped by itself: shutting down")
            failed = True
            break
        if time.monotonic() >= next_stats:
            next_stats += args.stats_interval
            _log_stats(sink, sources)
            if counter is not None:
                counter.write(os.environ["FMN_REQUEST_COUNTS"])

    if heartbeat is not None:
        heartbeat.stop()
    for s in sources:
        s.request_stop()
    for s in sources:
        s.stopped_receiving.wait(args.shutdown_timeout)
    flushed = sink.flush_and_stop(args.shutdown_timeout)
    for s in sources:
        s.sink_drained()
    for t in threads:
        t.join(args.shutdown_timeout)
    _log_stats(sink, sources)
    if counter is not None:
        counter.write(os.environ["FMN_REQUEST_COUNTS"])
    log.info("bridge stopped%s", "" if flushed and not failed else " WITH ERRORS")
    return 0 if flushed and not failed else 1


def _request_counter(prefix: str, *clients: Any) -> Any:
    """Local runs: count this process's AWS requests into ``FMN_REQUEST_COUNTS``."""
    if not os.environ.get("FMN_REQUEST_COUNTS"):
        return None
    from fmn.local.requests import RequestCounter

    counter = RequestCounter(prefix, role="bridge")
    for client in clients:
        counter.install(client.meta.events)
    return counter


def _sources(args: argparse.Namespace, sink: SqsSink) -> list[Source]:
    sources: list[Source] = []
    if args.fedmsg:
        from .fedmsg_source import FedmsgSource

        # taking in ZeroMQ's queue at a stop ends well before the sink is closed
        sources.append(FedmsgSource(args.fedmsg, sink,
                                    stop_intake_s=min(10.0, args.shutdown_timeout / 2)))
    if args.amqp_config:
        from .amqp_source import AmqpSource, load_config

        amqp = AmqpSource(load_config(args.amqp_config), sink, queue=args.amqp_queue,
                          prefetch=args.prefetch, drain_timeout_s=args.shutdown_timeout)
        if amqp.prefetch > args.buffer_items:
            # the buffer's bound would mean nothing: the AMQP source never waits for it
            raise ValueError(f"prefetch {amqp.prefetch} exceeds --buffer-items"
                             f" {args.buffer_items}")
        sources.append(amqp)
    return sources


def _log_stats(sink: SqsSink, sources: Sequence[Source]) -> None:
    st = sink.stats
    extra = " ".join(f"{k}={v}" for s in sources for k, v in s.stats().items())
    log.info("stats: received=%d forwarded=%d buffered=%d claimed=%d failed_calls=%d"
             " retried_entries=%d full_episodes=%d journaled=%d journal_errors=%d"
             " spilled=%d claim_errors=%d claim_errors_permanent=%d claims_waiting=%d %s",
             st.received, st.forwarded, sink.buffered, st.claimed, st.failed_calls,
             st.retried_entries, st.full_episodes, st.journaled, st.journal_errors,
             st.spilled, st.claim_errors, st.claim_errors_permanent, sink.claims_waiting,
             extra)


if __name__ == "__main__":
    raise SystemExit(main())
