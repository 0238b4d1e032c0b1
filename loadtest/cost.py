"""What one million bus messages like the run's would cost on AWS, at list prices.

From the run's own counts: SQS requests as SQS bills them (each 64 KiB of a
payload is one request; the bridge's sends, the event source mappings'
receives and deletes, the functions' sends; the busy ones, since idle long
polls cost a fixed amount per queue and month, not per message), Lambda
invocations, and Lambda compute (the time each function spent in its handler
times the memory it is configured with in ``functions/<name>/.chalice/config.json``).
SES follows the mails, not the messages: its own line.  ElastiCache and the
database are a fixed monthly line.  Handler times are wall times on a shared
2-core machine, where each invocation is a thread waiting for its process's
interpreter lock and for a core: they overstate what Lambda would bill, so
read the compute line as an upper bound.  The lower bound takes the CPU time
the handlers' threads used instead, as Lambda would run it: a function gets
the share of a vCPU its memory buys (one vCPU at :data:`LAMBDA_MB_PER_VCPU`),
so a second of CPU lasts ``1769 / memory`` seconds below that and bills about
1.7 GB-seconds whatever the memory; it leaves out the waits for SMTP or SES,
Redis and SQS, which Lambda bills too, and this machine's cores are not
Lambda's.

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
    gb_s = sum(f["busy_s"] * memory_mb(name) / 1024 for name, f in functions.items())
    # a CPU-second at memory m (MB) lasts LAMBDA_MB_PER_VCPU / m seconds below one vCPU
    gb_s_cpu = sum(f.get("cpu_s", 0.0) * max(memory_mb(name), LAMBDA_MB_PER_VCPU) / 1024
                   for name, f in functions.items())
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
        # the same with compute from the handlers' CPU time (module docstring)
        "lambda_compute_cpu_bound": round(gb_s_cpu * scale * LAMBDA_PER_GB_S, 4),
        "sqs_and_lambda_cpu_bound": round(
            total - lines["Lambda compute"] + gb_s_cpu * scale * LAMBDA_PER_GB_S, 4),
        "dominant": max(lines, key=lambda k: lines[k]),
        "ses_per_million_messages": round(mails * scale / 1000 * SES_PER_THOUSAND, 2),
        "mails_per_message": mails / messages,
        "sqs_billed_requests_per_message": sqs_billed / messages,
        "invocations_per_message": invocations / messages,
        "gb_s_per_message": gb_s / messages,
        "cpu_gb_s_per_message": gb_s_cpu / messages,
        "memory_mb": {name: memory_mb(name) for name in functions},
        "fixed_monthly": {"ElastiCache (cache.t4g.small)": round(ELASTICACHE_MONTHLY, 2),
                          "PostgreSQL (db.t4g.micro, 20 GB)": round(DATABASE_MONTHLY, 2),
                          f"idle long polls ({len(POLLED)} queues)": round(
                              len(POLLED) * IDLE_RECEIVES_PER_QUEUE_MONTHLY / 1e6
                              * SQS_PER_MILLION, 2)},
    }
