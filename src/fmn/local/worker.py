"""One function under its own local runner, in a child process (``python -m fmn.local.worker``).

``fmn up`` runs every function in its own process; a fault test
asks for some in child processes (``StackOptions.external``) so that it can
kill one with SIGKILL mid-batch, as Lambda's execution environment can die,
and start it again.  It reads the stack's settings from the environment
(what ``LocalStack`` exports), polls the function's queue as Lambda's event
source mapping does, runs the email sender's digest schedule when it is the
email sender, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import threading
from typing import Any

from fmn.local.aws import clients
from fmn.local.runner import EventSourceMapping, scheduled_context
from fmn.local.stack import load_function
from fmn.pipeline.queues import queue
from fmn.settings import Settings

log = logging.getLogger("fmn.local.worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fmn.local.worker", description=__doc__)
    parser.add_argument("queue", help="the queue whose function to run (incoming, email, ...)")
    parser.add_argument("--poll-wait-s", type=int, default=2)
    parser.add_argument("--schedule-s", type=float, default=5.0)
    parser.add_argument("--visibility-s", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    settings = Settings.from_env()
    q = queue(args.queue)
    if args.visibility_s is not None:
        q = dataclasses.replace(q, visibility_timeout_s=args.visibility_s)
    if q.function is None:
        parser.error(f"nothing consumes the {q.name} queue")
    sqs = clients(settings).sqs
    name = q.sqs_name(settings.queue_prefix)
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    dlq = sqs.get_queue_url(QueueName=q.dlq_name(settings.queue_prefix))["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]
    from fmn.local.aws import QueueUrls

    urls = QueueUrls(url=url, arn=arn["QueueArn"], dlq_url=dlq, dlq_arn=dlq_arn["QueueArn"])
    module: Any = load_function(q.function)
    handler = getattr(module, "handler", None) or getattr(module, f"handle_{q.name}")
    runner = EventSourceMapping(sqs, q, urls, handler, function_name=q.function,
                                poll_wait_s=args.poll_wait_s, serialize_receives=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    runner.start()
    flush = getattr(module, "flush_digests_now", None)
    while not stopping.wait(args.schedule_s):
        if flush is not None:
            try:  # each run with its own deadline, as on AWS
                flush(scheduled_context(f"{q.function}-flush_digests", q.visibility_timeout_s))
            except Exception as exc:  # a failed run is retried at the next tick
                log.warning("digest flush failed: %s", exc)
    runner.stop(timeout=60)
    if hasattr(module, "reset"):
        module.reset()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
