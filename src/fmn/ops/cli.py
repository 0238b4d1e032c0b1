"""``fmn dlq`` and ``fmn doctor``: parse nothing, print what the ops modules answer.

Exit status: 0 when done (doctor: nothing failed), 1 when a check failed or a
move stopped midway, 2 for a queue that does not exist.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from fmn.settings import Settings


def _sqs(settings: Settings) -> Any:
    from fmn.aws import client

    return client("sqs", settings, connect_timeout=5, read_timeout=30)


def dlq(args: argparse.Namespace, settings: Settings) -> int:
    from fmn.ops import dlq as ops

    sqs = _sqs(settings)
    prefix = settings.queue_prefix
    try:
        if args.dlq_command == "list":
            found = ops.list_dlqs(sqs, prefix)
            if args.json:
                print(json.dumps([{"queue": d.queue.name, "dlq": d.name, "visible": d.visible,
                                   "in_flight": d.in_flight} for d in found], indent=2))
                return 0
            print(f"{'queue':<10} {'dead-letter queue':<32} {'messages':>8}  in flight")
            for d in found:
                print(f"{d.queue.name:<10} {d.name:<32} {d.visible:>8}  {d.in_flight}")
            return 0
        target = ops.find(sqs, prefix, args.queue)
        if args.dlq_command == "show":
            if args.limit < 1:
                print("fmn: error: --limit must be at least 1", file=sys.stderr)
                return 2
            letters = ops.peek(sqs, target, args.limit)
            if args.json:
                for letter in letters:
                    print(json.dumps(letter.to_json()))
                return 0
            print(f"{target.name}: {target.messages} messages; the first {len(letters)} "
                  "(left in the queue):")
            for letter in letters:
                who = f"  to {', '.join(letter.recipients)}" if letter.recipients else ""
                print(f"- bus message {letter.bus_message_id}  topic {letter.topic}\n"
                      f"  reason: {letter.reason}\n"
                      f"  receives: {letter.receive_count}  kind: {letter.kind}"
                      f"  SQS id: {letter.sqs_message_id}{who}")
            return 0
        return _redrive(sqs, target)
    except ops.DlqError as exc:
        print(f"fmn: error: {exc}", file=sys.stderr)
        return 2 if args.dlq_command != "redrive" else 1


def _redrive(sqs: Any, target: Any) -> int:
    from fmn.ops import dlq as ops

    source = target.source_url.rsplit("/", 1)[-1]
    print(f"moving {target.messages} messages from {target.name} back to {source} ...",
          file=sys.stderr)
    shown = [time.monotonic()]

    def progress(moved: int) -> None:
        if time.monotonic() - shown[0] >= 1.0:
            print(f"  {moved} moved", file=sys.stderr, flush=True)
            shown[0] = time.monotonic()

    try:
        result = ops.redrive(sqs, target, progress)
    except ops.DlqError as exc:
        print(f"fmn: error: {exc}", file=sys.stderr)
        return 1
    print(f"{result.moved} moved back to {source} ({result.method}); "
          f"{result.left} left in {target.name}")
    return 0


def doctor(args: argparse.Namespace, settings: Settings) -> int:
    from fmn.aws import client
    from fmn.ops.doctor import FAIL, run_checks

    failed = 0
    cloudwatch = client("cloudwatch", settings, connect_timeout=5, read_timeout=30)
    for check in run_checks(settings, _sqs(settings), cloudwatch):
        failed += check.status == FAIL
        print(json.dumps(check.to_json()) if args.json else check.line(), flush=True)
    return 1 if failed else 0
