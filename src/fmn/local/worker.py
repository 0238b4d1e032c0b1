"""One function under its own local runner, in a child process (``python -m fmn.local.worker``).

The local stack runs its functions as threads of one process unless asked
to run some in child processes (``StackOptions.external``): a fault test does
so that it can kill one with SIGKILL mid-batch, as Lambda's execution
environment can die, and start it again; the load test runs the email sender
and the feed function in their own, as each Lambda function has environments
of its own (in one interpreter, their many short waits on Redis and SMTP queue
behind the match function's CPU-bound threads for the interpreter lock).  A
worker reads the stack's settings from the environment (what ``LocalStack``
exports), polls the function's queue as Lambda's event source mapping does,
runs the email sender's digest schedule when it is the email sender (unless
``--no-schedule``: another process of it runs it), and stops
cleanly on SIGTERM: in-flight invocations finish, then it writes its runner's
totals (``--stats``) and AWS request counts (``--request-counts``) for whoever
started it.  SIGTERM and SIGINT are waited for (``sigtimedwait``), not
handled: a Python handler runs between two bytecodes of the main thread,
and one that sets a ``threading.Event`` while that thread holds the event's
own lock (waking from its wait) never returns.  SIGUSR1 writes every
thread's stack to the worker's log, so a stop that hangs can be read.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import logging
import os
import signal
from pathlib import Path
from typing import Any

from fmn.local.aws import clients
from fmn.local.files import write_json
from fmn.local.runner import EventSourceMapping, scheduled_context
from fmn.local.stack import load_function
from fmn.pipeline.queues import queue
from fmn.settings import Settings

log = logging.getLogger("fmn.local.worker")

#: what stops a worker (module docstring)
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fmn.local.worker", description=__doc__)
    parser.add_argument("queue", help="the queue whose function to run (incoming, email, ...)")
    parser.add_argument("--poll-wait-s", type=int, default=2)
    parser.add_argument("--schedule-s", type=float, default=5.0)
    parser.add_argument("--visibility-s", type=int, default=None)
    parser.add_argument("--max-concurrency", type=int, default=None,
                        help="the most concurrent invocations (default: the queue's own)")
    parser.add_argument("--long-poll", action="store_true",
                        help="concurrent real long polls (LocalStack, SQS), not receives "
                             "taking turns (the moto server)")
    parser.add_argument("--no-schedule", action="store_true",
                        help="not the function's schedule (the email sender's digest flush): "
                             "another process of the same function runs it")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="the function's JSON logs and EMF lines to DIR/<function>.log")
    parser.add_argument("--stats", type=Path, default=None,
                        help="write the runner's totals here (JSON) when stopped")
    parser.add_argument("--request-counts", type=Path, default=None,
                        help="count this process's AWS requests into this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    # blocked before any thread starts (threads inherit the mask): a stop signal waits
    # for the main loop's sigtimedwait, whichever thread it was sent to
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    settings = Settings.from_env()
    q = queue(args.queue)
    if args.visibility_s is not None:
        q = dataclasses.replace(q, visibility_timeout_s=args.visibility_s)
    if args.max_concurrency is not None:
        q = dataclasses.replace(q, max_concurrency=args.max_concurrency)
    if q.function is None:
        parser.error(f"nothing consumes the {q.name} queue")
    counter = None
    if args.request_counts is not None:  # before any client exists: they copy the hooks
        from fmn.local.requests import RequestCounter
        from fmn.pipeline.queues import QUEUES

        counter = RequestCounter(settings.queue_prefix, role="instrument",
                                 functions={d.name: d.function for d in QUEUES if d.function})
        counter.install_default_session()
    sqs = clients(settings).sqs
    name = q.sqs_name(settings.queue_prefix)
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    dlq = sqs.get_queue_url(QueueName=q.dlq_name(settings.queue_prefix))["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]
    from fmn.local.aws import QueueUrls

    urls = QueueUrls(url=url, arn=arn["QueueArn"], dlq_url=dlq, dlq_arn=dlq_arn["QueueArn"])
    module: Any = load_function(q.function)
    if args.log_dir is not None:
        from fmn.local.logs import to_file

        to_file(module, q.function, args.log_dir)
    handler = getattr(module, "handler", None) or getattr(module, f"handle_{q.name}")
    runner = EventSourceMapping(sqs, q, urls, handler, function_name=q.function,
                                poll_wait_s=args.poll_wait_s,
                                serialize_receives=not args.long_poll)
    runner.start()
    flush = None if args.no_schedule else getattr(module, "flush_digests_now", None)
    parent = os.getppid()
    while signal.sigtimedwait(STOP_SIGNALS, args.schedule_s) is None:
        if os.getppid() != parent:  # whoever started it is gone without stopping it
            log.warning("the parent process ended: stopping")
            break
        if flush is not None:
            try:  # each run with its own deadline, as on AWS
                flush(scheduled_context(f"{q.function}-flush_digests", q.visibility_timeout_s))
            except Exception as exc:  # a failed run is retried at the next tick
                log.warning("digest flush failed: %s", exc)
    runner.stop(timeout=60)
    if args.stats is not None:
        write_json(args.stats, {**dataclasses.asdict(runner.stats()),
                                "totals": dict(getattr(module, "totals", {}))})
    if counter is not None:
        counter.write(args.request_counts)
    if hasattr(module, "reset"):
        module.reset()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
