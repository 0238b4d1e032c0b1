"""The load test's CPU line: each process's work counted once, under its own name."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loadtest.report import format_run, summarise
from loadtest.run import RunData, _Cpu

pytestmark = pytest.mark.unit

#: burn ``s`` CPU-seconds, say so, then stay alive (a reaped child's time is gone)
BUSY = ("import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"
        "print('done', flush=True)\ntime.sleep(60)\n")


def _busy(seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", BUSY.format(s=seconds)],
                            stdout=subprocess.PIPE)


def test_children_are_counted_once() -> None:
    import os

    listed, unlisted = _busy(0.5), _busy(0.5)
    try:
        cpu = _Cpu({"this process": os.getpid(), "mail sink": listed.pid})
        for child in (listed, unlisted):
            assert child.stdout is not None and child.stdout.readline() == b"done\n"
        used = cpu.used()
    finally:
        for child in (listed, unlisted):
            child.kill()
            child.wait()
    assert 0.3 < used["mail sink"] < 0.8
    # this process counts the unlisted child (its own work is next to nothing) and
    # not the listed one, which the old line counted twice
    assert 0.3 < used["this process"] < 0.8


def test_a_note_on_a_run_is_printed_with_its_report() -> None:
    data = RunData(concurrency=1, messages=10)
    data.notes.append("the send_email process wrote no totals (killed?)")
    text = format_run(summarise(data), "moto")
    assert "NOTE: the send_email process wrote no totals" in text


def test_a_run_that_did_not_drain_is_no_candidate_for_the_best() -> None:
    from loadtest.report import format_summary

    def run(concurrency: int, rate: float, drained: bool) -> dict[str, object]:
        return {"concurrency": concurrency, "lasted_s": 100.0, "maxed_at": 10,
                "avg_processing": rate, "sqs_requests_per_message": 0.5,
                "fraction_of_ceiling": 0.1, "cost": {"sqs_and_lambda": 3.0},
                "ledger_ok": True, "load_average": (1.0, 2.0), "drained": drained}

    text = format_summary([run(1, 18.5, True), run(4, 20.4, False)])
    assert "best: concurrency 1, 18.5 msg/s" in text
    assert text.splitlines()[3].split()[:5] == ["4", "not", "drained", "10", "-"]
    assert "best: none, no run drained" in format_summary([run(4, 20.4, False)])
