"""What one million bus messages like the run's would cost on AWS, at list prices.

From the run's own counts: SQS requests as SQS bills them (each 64 KiB of a
payload is one request; the bridge's sends, the event source mappings'
receives and deletes, the functions' sends; the busy ones, since idle long
polls cost a fixed amount per queue and month, not per message), Lambda
invocations, and Lambda compute (the time each function spent in its handler
times the memory it is configured with in ``functions/<name>/.chalice/config.json``).
SES follows the mails, not the messages: its own line.  ElastiCache and the
database are a fixed monthly line.

Compute comes two ways, from each function's handler wall time and the CPU
time its handler threads used (``thread_time``), at the memory ``m`` it is
configured with.  Lambda gives a function the share of a vCPU its memory buys
(one vCPU at :data:`LAMBDA_MB_PER_VCPU` MB), so below that a CPU-second lasts
``1769 / m`` seconds there.

- **The billed line** (and ``sqs_and_lambda``) is a ceiling: the handler's
  time off the CPU (waiting for SMTP, Redis, SQS, and here also for the
  interpreter lock and a core, which Lambda would not make it wait for) plus
  its CPU time stretched to Lambda's share: ``(wall - cpu + cpu * max(1,
  1769 / m)) * m / 1024`` GB-seconds.  A ceiling for *this machine's*
  waits only: the mail goes to a local sink and SQS and Redis answer on
  loopback, where in AWS each mail is an SES call over the network (its wait
  and its TLS work are not in the run), and a handler's own threads' CPU
  (the Matrix client's) counts unstretched.  A run recorded without CPU
  times bills the wall time alone, which understates it below one vCPU.
- **The CPU estimate** (``*_cpu_estimate``) prices only the CPU time at that
  share, ``cpu * max(m, 1769) / 1024`` GB-seconds: roughly a floor, not a
  strict one.  It leaves out the waits Lambda bills too, while the CPU time it
  counts is inflated a little by contention and the garbage collector on this
  2-core machine, whose cores are not Lambda's; and it misses threads a
  handler starts of its own (the Matrix client's event-loop thread).  ``None``
  when the run did not record CPU times.

The prices are us-east-1 list prices as published by AWS, as of
:data:`PRICES_AS_OF` (not re-checked from this machine, which has no network):
check them before quoting.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fmn.pipeline.queues import QUEUES

PRICES_AS_OF = "2025-01"
#: SQS standard queues, per million requests (after the first million a month)
SQS_PER_MILLION = 0.40
#: Lambda, per million invocations
LAMBDA_PER_MILLION = 0.20
#: Lambda compute, per GB-second (x86)
LAMBDA_PER_GB_S = 0.0000166667
#: the memory at which a function has the equivalent of one vCPU (AWS Lambda's docs);
#: below it, its CPU share is proportional to its memory
LAMBDA_MB_PER_VCPU = 1769
#: SES, per 1,000 mails sent
SES_PER_THOUSAND = 0.10
#: ElastiCache cache.t4g.small ($0.032 an hour), one node, a month of 730 hours
ELASTICACHE_MONTHLY = 0.032 * 730
#: RDS PostgreSQL db.t4g.micro ($0.016 an hour) with 20 GB gp2 ($0.115 per GB-month)
DATABASE_MONTHLY = 0.016 * 730 + 20 * 0.115
#: an idle queue's pollers on AWS: 5 long polls of 20 s, around the clock
IDLE_RECEIVES_PER_QUEUE_MONTHLY = 5 * 3 * 60 * 24 * 30

ROOT = Path(__file__).resolve().parents[1]
#: the queues a function long-polls (each idle poll is a request, busy or not)
POLLED = tuple(q.name for q in QUEUES if q.function)
BILLED_ROLES = ("bridge", "esm", "function")


def memory_mb(function: str) -> int:
    try:
        doc = json.loads((ROOT / "functions" / function / ".chalice" / "config.json").read_text())
        return int(doc.get("lambda_memory_size", 128))
    except (OSError, ValueError):
        return 128


def compute_gb_s(functions: Mapping[str, Mapping[str, float]]) -> tuple[float, float | None]:
    """GB-seconds of Lambda compute: the billed ceiling and the CPU estimate (module docstring).

    The estimate is ``None`` unless every function's CPU time was recorded.
    """
    ceiling = 0.0
    estimate: float | None = 0.0
    for name, f in functions.items():
        mb = memory_mb(name)
        wall = f["busy_s"]
        cpu = f.get("cpu_s")
        if cpu is None:
            ceiling += wall * mb / 1024
            estimate = None
            continue
        ceiling += (max(0.0, wall - cpu) + cpu * max(1.0, LAMBDA_MB_PER_VCPU / mb)) * mb / 1024
        if estimate is not None:
            estimate += cpu * max(mb, LAMBDA_MB_PER_VCPU) / 1024
    return ceiling, estimate


def bill(messages: int, requests: Sequence[Mapping[str, Any]],
         functions: Mapping[str, Mapping[str, float]], mails: int) -> dict[str, Any]:
    """Dollars per million bus messages, by line, and what dominates."""
    if messages <= 0:
        return {}
    scale = 1_000_000 / messages
    sqs_billed = sum(r["billed"] for r in requests
                     if r["api"].startswith("sqs.") and r["role"] in BILLED_ROLES
                     and not r["idle"])
    invocations = sum(f["invocations"] for f in functions.values())
    gb_s, gb_s_cpu = compute_gb_s(functions)
    lines = {
        "SQS requests": sqs_billed * scale / 1e6 * SQS_PER_MILLION,
        "Lambda requests": invocations * scale / 1e6 * LAMBDA_PER_MILLION,
        "Lambda compute": gb_s * scale * LAMBDA_PER_GB_S,
    }
    total = sum(lines.values())
    return {
        "prices_as_of": PRICES_AS_OF,
        "per_million_messages": {k: round(v, 4) for k, v in lines.items()},
        "sqs_and_lambda": round(total, 4),
        # the same with compute from the handlers' CPU time alone (module docstring)
        "lambda_compute_cpu_estimate": None if gb_s_cpu is None
        else round(gb_s_cpu * scale * LAMBDA_PER_GB_S, 4),
        "sqs_and_lambda_cpu_estimate": None if gb_s_cpu is None else round(
            total - lines["Lambda compute"] + gb_s_cpu * scale * LAMBDA_PER_GB_S, 4),
        "dominant": max(lines, key=lambda k: lines[k]),
        "ses_per_million_messages": round(mails * scale / 1000 * SES_PER_THOUSAND, 2),
        "mails_per_message": mails / messages,
        "sqs_billed_requests_per_message": sqs_billed / messages,
        "invocations_per_message": invocations / messages,
        "gb_s_per_message": gb_s / messages,
        "cpu_gb_s_per_message": None if gb_s_cpu is None else gb_s_cpu / messages,
        "memory_mb": {name: memory_mb(name) for name in functions},
        "fixed_monthly": {"ElastiCache (cache.t4g.small)": round(ELASTICACHE_MONTHLY, 2),
                          "PostgreSQL (db.t4g.micro, 20 GB)": round(DATABASE_MONTHLY, 2),
                          f"idle long polls ({len(POLLED)} queues)": round(
                              len(POLLED) * IDLE_RECEIVES_PER_QUEUE_MONTHLY / 1e6
                              * SQS_PER_MILLION, 2)},
    }
