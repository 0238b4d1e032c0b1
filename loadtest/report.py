"""The load test's report: the seed's words, per stage figures, requests, ceiling, CPU, bill.

:func:`summarise` turns one :class:`~loadtest.run.RunData` into the figures
the report prints and the JSON keeps; :func:`format_run` prints one run as
the 2016 write-up did (``Lasted for``, ``Maxed at``, ``Avg processing``)
followed by the stages, the requests, the emulator's ceiling, the CPU and the
bill; :func:`format_summary` compares the runs with the 2016 figures.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from loadtest.ceiling import BILLED_ROLES
from loadtest.cost import bill

#: The seed's figures (2016, 15,000 messages): workers -> (lasted s, maxed at, msg/s);
#: 1 is the original architecture (one consumer).
SEED_2016: dict[int, tuple[float, int, float]] = {
    1: (9 * 3600 + 5 * 60 + 23.3, 14995, 0.458672376874),
    2: (4 * 3600 + 32 * 60 + 48.9, 13470, 0.824487297215),
    4: (3 * 3600 + 18 * 60 + 10.0, 13447, 1.1342276217),
    6: (3 * 3600 + 6 * 60 + 2.9, 13392, 1.20500359971),
    8: (3 * 3600 + 14 * 60 + 11.7, 13351, 1.15160928467),
}


def summarise(data: Any) -> dict[str, Any]:
    n = max(1, data.messages)
    st = data.stages
    sqs = [r for r in data.requests if r["api"].startswith("sqs.")]
    busy = [r for r in sqs if r["role"] in BILLED_ROLES and not r["idle"]]
    idle = [r for r in sqs if r["idle"]]
    overhead = [r for r in sqs if r["role"] not in BILLED_ROLES and not r["idle"]]
    by_stage: dict[str, int] = defaultdict(int)
    by_api: dict[str, int] = defaultdict(int)
    for r in busy:
        by_stage[r["stage"]] += r["calls"]
        by_api[r["api"]] += r["calls"]
    drain_s = max(1e-9, st.get("lasted_s", 0.0))
    busy_calls = sum(r["calls"] for r in busy)
    pipeline_rps = busy_calls / drain_s
    ceiling = data.ceiling.get("requests_per_s", 0.0)
    per_message = busy_calls / n
    invocations = sum(f["invocations"] for f in data.functions.values())
    mails = st.get("mails", 0) + st.get("digest_mails", 0)
    mails_direct = st.get("mails", 0)
    mail_ceiling = getattr(data, "mail_ceiling", {}).get("mails_per_s", 0.0)
    return {
        "concurrency": data.concurrency,
        "messages": data.messages,
        "drained": data.drained,
        "lasted_s": st.get("lasted_s", 0.0),
        "maxed_at": st.get("maxed_at", 0),
        "avg_processing": st.get("avg_processing", 0.0),
        "stages": st.get("stages", []),
        "sqs_requests_per_message": per_message,
        "sqs_billed_per_message": sum(r["billed"] for r in busy) / n,
        "sqs_requests_by_stage_per_message": {k: v / n for k, v in sorted(
            by_stage.items(), key=lambda kv: -kv[1])},
        "sqs_requests_by_api": dict(by_api),
        "idle_requests": sum(r["calls"] for r in idle),
        "local_overhead_requests": sum(r["calls"] for r in overhead),
        "invocations_per_message": invocations / n,
        "functions": data.functions,
        "pipeline_requests_per_s": pipeline_rps,
        "emulator_ceiling_requests_per_s": ceiling,
        "fraction_of_ceiling": pipeline_rps / ceiling if ceiling else 0.0,
        "ceiling_messages_per_s": ceiling / per_message if per_message else 0.0,
        "mails_per_s": mails_direct / drain_s,
        "mail_ceiling_per_s": mail_ceiling,
        "mail_ceiling_threads": getattr(data, "mail_ceiling", {}).get("threads", 0),
        "fraction_of_mail_ceiling": (mails_direct / drain_s) / mail_ceiling
        if mail_ceiling else 0.0,
        "cpu_s": data.cpu_s,
        # over the time it was measured (to the drain, or to the stop when it did not)
        "cpu_share": {k: v / max(1e-9, getattr(data, "cpu_span_s", 0.0) or drain_s)
                      for k, v in data.cpu_s.items()},
        "notes": list(getattr(data, "notes", [])),
        "irc": data.irc,
        "ledger_ok": bool(data.ledger.get("ok")),
        "ledger": data.ledger,
        "cost": bill(n, data.requests, data.functions, mails),
        "journal_write_s": data.journal_write_s,
        "load_average": list(getattr(data, "load_average", (0.0, 0.0))),
        "publish_s": data.publish_s,
    }


def _dollars(value: float | None) -> str:
    """A bill figure for the summary: ``-`` where the run could not price it."""
    return "-" if value is None else f"{value:.3f}"


def _cpu_estimate(c: dict[str, Any]) -> str:
    if c.get("sqs_and_lambda_cpu_estimate") is None:
        return ("no CPU-time estimate (a function's handler CPU time was not recorded; "
                "its compute above is its wall time, not stretched to Lambda's CPU share)")
    return (f"${c['sqs_and_lambda_cpu_estimate']:.2f} with compute from the handlers' "
            f"CPU time alone (${c['lambda_compute_cpu_estimate']:.3f}; an estimate, "
            f"roughly a floor: no waiting for mail, Redis or SQS)")


def _td(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds, 6)))


def format_run(s: dict[str, Any], aws: str) -> str:
    out = [f"Test c={s['concurrency']} - match concurrency {s['concurrency']} - "
           f"{s['messages']:,} messages - {aws}"
           + ("" if s["drained"] else "  (NOT DRAINED: figures are partial)"),
           f"  Lasted for {_td(s['lasted_s'])}",
           f"  Maxed at:  {s['maxed_at']}",
           f"  Avg processing: {s['avg_processing']:.3f} msg/s"]
    out.append(f"  {'stage':<46} {'count':>8} {'per s':>8} {'p50 s':>8} {'p95 s':>8} "
               f"{'p99 s':>8}")
    for g in s["stages"]:
        out.append(f"  {g['stage']:<46} {g['count']:>8,} {g['per_s']:>8.1f} {g['p50']:>8.2f} "
                   f"{g['p95']:>8.2f} {g['p99']:>8.2f}")
    irc = s["irc"]
    out.append(f"  IRC (paced by the flood limit, not waited for): "
               f"{irc.get('sent', 0):,} sent on their own line, {irc.get('summarised', 0):,} "
               f"in {irc.get('summary-lines', 0):,} summary lines, "
               f"{irc.get('offline', 0):,} lines to nicks not online")
    out.append(f"  SQS requests per bus message: {s['sqs_requests_per_message']:.3f} "
               f"(billed as {s['sqs_billed_per_message']:.3f} with 64 KiB chunks); idle "
               f"receives {s['idle_requests']:,}, local scaler and instrument reads "
               f"{s['local_overhead_requests']:,} (not counted)")
    for stage, per in list(s["sqs_requests_by_stage_per_message"].items())[:8]:
        out.append(f"    {per:6.3f}  {stage}")
    out.append(f"  function invocations per bus message: {s['invocations_per_message']:.3f} ("
               + ", ".join(f"{k} {v['invocations']:,}" for k, v in s["functions"].items())
               + ")")
    if s["emulator_ceiling_requests_per_s"]:
        out.append(f"  emulator ceiling for this request mix: "
                   f"{s['emulator_ceiling_requests_per_s']:,.0f} requests/s "
                   f"(= {s['ceiling_messages_per_s']:,.0f} bus messages/s); the pipeline used "
                   f"{s['pipeline_requests_per_s']:,.0f} requests/s = "
                   f"{100 * s['fraction_of_ceiling']:.0f} % of it")
    if s.get("mail_ceiling_per_s"):
        out.append(f"  mail sink ceiling (the run's mails again over "
                   f"{s.get('mail_ceiling_threads', 0)} kept SMTP connections): "
                   f"{s['mail_ceiling_per_s']:,.0f} mails/s; the pipeline delivered "
                   f"{s['mails_per_s']:,.0f} mails/s = "
                   f"{100 * s['fraction_of_mail_ceiling']:.0f} % of it")
    out.append("  CPU while draining (share of one core): " + ", ".join(
        f"{k} {100 * v:.0f} %" for k, v in s["cpu_share"].items())
        + "; machine load average {:.1f} at the start, {:.1f} when drained".format(
            *s.get("load_average", (0.0, 0.0))))
    c = s["cost"]
    if c:
        lines = ", ".join(f"{k} ${v:.3f}" for k, v in c["per_million_messages"].items())
        out.append(f"  per million bus messages on AWS (list prices {c['prices_as_of']}): "
                   f"{lines} = ${c['sqs_and_lambda']:.2f} for SQS+Lambda, mostly "
                   f"{c['dominant']} (a ceiling: handler wall time, its CPU time at "
                   f"Lambda's CPU share); " + _cpu_estimate(c)
                   + f"; SES ${c['ses_per_million_messages']:,.2f} "
                   f"({c['mails_per_message']:.1f} mails per message); fixed per month: "
                   + ", ".join(f"{k} ${v:.2f}" for k, v in c["fixed_monthly"].items()))
    for note in s.get("notes", []):
        out.append(f"  NOTE: {note}")
    led = s["ledger"]
    out.append(f"  ledger: {'OK' if s['ledger_ok'] else 'FAILED'}: published "
               f"{led.get('published', 0):,}, matched {led.get('matched', 0):,}, dead-lettered "
               f"{led.get('dead_lettered', 0):,}, lost {led.get('lost_total', 0):,}, "
               f"duplicates {led.get('duplicates_total', 0):,}, still queued "
               f"{led.get('pending_total', 0):,}")
    return "\n".join(out)


def format_summary(runs: Sequence[dict[str, Any]]) -> str:
    out = ["", f"{'concurrency':>11} {'lasted':>16} {'maxed at':>9} {'msg/s':>9} "
           f"{'SQS req/msg':>11} {'% ceiling':>9} {'$/M (max)':>10} {'$/M (CPU)':>9} "
           f"{'ledger':>7} "
           f"{'2016 msg/s':>10} {'load avg':>9}"]
    for s in runs:
        seed = SEED_2016.get(s["concurrency"])
        # a stopped run's rate is no rate
        lasted = _td(s["lasted_s"]) if s["drained"] else "not drained"
        rate = f"{s['avg_processing']:.2f}" if s["drained"] else "-"
        # not measured (--ceiling-seconds 0) is no fraction either
        share = f"{100 * s['fraction_of_ceiling']:.0f}%" \
            if s.get("emulator_ceiling_requests_per_s") else "-"
        out.append(f"{s['concurrency']:>11} {lasted:>16} {s['maxed_at']:>9} "
                   f"{rate:>9} {s['sqs_requests_per_message']:>11.3f} "
                   f"{share:>9} "
                   f"{_dollars(s['cost'].get('sqs_and_lambda')):>10} "
                   f"{_dollars(s['cost'].get('sqs_and_lambda_cpu_estimate')):>9} "
                   f"{'OK' if s['ledger_ok'] else 'FAILED':>7} "
                   f"{(f'{seed[2]:.2f}' if seed else '-'):>10} "
                   f"{'{:.1f}-{:.1f}'.format(*s.get('load_average', (0.0, 0.0))):>9}")
    drained = [s for s in runs if s["drained"]]  # a stopped run's rate is no rate
    if runs and not drained:
        out.append("best: none, no run drained")
    if drained:
        best = max(drained, key=lambda s: s["avg_processing"])
        out.append(f"best: concurrency {best['concurrency']}, {best['avg_processing']:.1f} "
                   f"msg/s, {best['avg_processing'] / SEED_2016[6][2]:,.0f}x the 2016 best "
                   f"(1.2 msg/s, 6 workers)")
    return "\n".join(out)
