"""``fmn bench bridge``: what the SQS sink costs a message, with and without its journal.

The bridge's hot path is :meth:`SqsSink.put` on the source's thread (the
envelope encoded, written ahead to the journal when a spool directory is
set, queued) and the flusher thread's batches.  This benchmark wraps every
shared Fedora message as the fedmsg source does and puts them through a sink
whose SQS answers at once from memory (no network: the sink's own cost, not
the emulator's), once with no spool directory and once writing ahead to a
journal in a temporary directory, alternating for ``--rounds`` rounds.  It
prints, for each, bus messages per second from the first put until SQS
accepted the last, this process's CPU microseconds a message, and the
journal's bytes a message; ``--json`` also writes them.  A third variant is an
SQS outage: SQS refuses every batch until all the messages are put into a
buffer of 1,000, so nearly all of them spill to the journal on disk, then it
accepts; it prints the intake rate (puts while spilling) and the drain rate
(reading them back and sending), and the CPU a message over both.  Nothing
asserts a time.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fmn.errors import FmnError
from fmn.pipeline.envelope import Envelope

from .sqs_sink import SqsSink


class _InstantSqs:
    """An SQS client whose every ``SendMessageBatch`` is accepted at once."""

    def get_queue_url(self, QueueName: str) -> dict[str, str]:  # noqa: N803 - boto3's name
        return {"QueueUrl": f"memory://{QueueName}"}

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]],  # noqa: N803
                           ) -> dict[str, Any]:
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}


class _OutageSqs(_InstantSqs):
    """SQS away until ``up`` is set, then answering at once."""

    def __init__(self) -> None:
        self.up = False

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]],  # noqa: N803
                           ) -> dict[str, Any]:
        if not self.up:
            raise ConnectionError("SQS is away")
        return super().send_message_batch(QueueUrl, Entries)


#: the buffer of the outage variant: nearly everything spills to the journal
OUTAGE_BUFFER = 1000


def _records(files: Sequence[Path]) -> list[bytes]:
    records = [line.rstrip(b"\n") for path in files for line in path.read_bytes().splitlines()
               if line.strip()]
    if not records:
        raise FmnError("no messages in " + ", ".join(map(str, files)))
    return records


def _round(records: list[bytes], messages: int, spool: Path | None) -> dict[str, float]:
    sink = SqsSink(_InstantSqs(), None, "bench", "bench", spool_dir=spool, linger_s=0.05)
    sink.start()
    journal_bytes = 0
    cpu, wall = time.process_time(), time.perf_counter()
    for n in range(messages):
        sink.put(Envelope.wrap("fedmsg", "tcp://hub:9940", records[n % len(records)], seq=n))
        if n % 1000 == 999 and spool is not None:  # before a full journal goes
            journal_bytes = max(journal_bytes, sum(p.stat().st_size
                                                   for p in spool.glob("*.jsonl")))
    while sink.stats.forwarded < messages:
        time.sleep(0.001)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert sink.flush_and_stop(10)
    return {"messages_per_s": messages / wall, "cpu_us": cpu / messages * 1e6,
            "journaled": sink.stats.journaled, "journal_peak_bytes": journal_bytes}


def _outage(records: list[bytes], messages: int, spool: Path) -> dict[str, float]:
    sink_log = logging.getLogger("fmn_bridge.sqs_sink")
    level = sink_log.level
    sink_log.setLevel(logging.ERROR)  # the outage's retries, not the caller's afterwards
    try:
        return _outage_round(records, messages, spool)
    finally:
        sink_log.setLevel(level)


def _outage_round(records: list[bytes], messages: int, spool: Path) -> dict[str, float]:
    sqs = _OutageSqs()
    sink = SqsSink(sqs, None, "bench", "bench", spool_dir=spool, linger_s=0.05,
                   max_items=OUTAGE_BUFFER, backoff_initial_s=0.01, backoff_max_s=0.01)
    sink.start()
    cpu, wall = time.process_time(), time.perf_counter()
    for n in range(messages):
        sink.put(Envelope.wrap("fedmsg", "tcp://hub:9940", records[n % len(records)], seq=n))
    intake = time.perf_counter() - wall
    sqs.up = True
    drain_from = time.perf_counter()
    while sink.stats.forwarded < messages:
        time.sleep(0.001)
    now = time.perf_counter()
    cpu = time.process_time() - cpu
    assert sink.flush_and_stop(10)
    return {"intake_per_s": messages / intake, "drain_per_s": messages / (now - drain_from),
            "cpu_us": cpu / messages * 1e6, "spilled": sink.stats.spilled}


def run(files: Sequence[Path], *, messages: int, rounds: int,
        json_path: str | None = None) -> int:
    records = _records(files)
    avg = sum(map(len, records)) / len(records)
    print(f"bridge sink: {messages:,} messages a round ({len(records)} shared records, "
          f"{avg:,.0f} bytes on average), SQS answering from memory")
    results: dict[str, list[dict[str, float]]] = {"no journal": [], "journal": []}
    with tempfile.TemporaryDirectory(prefix="fmn-bench-bridge-") as tmp:
        for r in range(rounds):
            for name, spool in (("no journal", None), ("journal", Path(tmp) / f"r{r}")):
                res = _round(records, messages, spool)
                results[name].append(res)
                print(f"  round {r + 1} {name:>10}: {res['messages_per_s']:>9,.0f} msg/s"
                      f"  {res['cpu_us']:6.1f} us CPU a message")
    for name, runs in results.items():
        rates = sorted(x["messages_per_s"] for x in runs)
        cpus = sorted(x["cpu_us"] for x in runs)
        print(f"{name:>10}: {rates[0]:,.0f} to {rates[-1]:,.0f} msg/s, "
              f"{cpus[0]:.1f} to {cpus[-1]:.1f} us CPU a message")
    print("the journal on disk stays below one segment while SQS keeps up "
          f"(peak seen {max(x['journal_peak_bytes'] for x in results['journal']):,.0f} bytes)")
    print(f"SQS away until all are put, a buffer of {OUTAGE_BUFFER:,} (the rest spills to "
          "the journal on disk):")
    outages = []
    with tempfile.TemporaryDirectory(prefix="fmn-bench-bridge-") as tmp:
        for r in range(rounds):
            res = _outage(records, messages, Path(tmp) / f"o{r}")
            outages.append(res)
            print(f"  round {r + 1}: {res['spilled']:,.0f} spilled; taken in at "
                  f"{res['intake_per_s']:,.0f} msg/s, drained at {res['drain_per_s']:,.0f} "
                  f"msg/s, {res['cpu_us']:.1f} us CPU a message")
    if json_path:
        Path(json_path).write_text(json.dumps(
            {"messages": messages, "rounds": results, "outage": outages}, indent=2) + "\n")
    return 0
