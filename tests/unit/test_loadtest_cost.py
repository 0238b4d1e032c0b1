"""The load test's bill: compute by handler wall time (upper bound) and by CPU time (lower)."""

from __future__ import annotations

import pytest

from loadtest import cost

pytestmark = pytest.mark.unit


def test_compute_is_billed_from_wall_time_and_bounded_below_by_cpu_time_at_lambdas_share(
        monkeypatch: pytest.MonkeyPatch) -> None:
    memory = {"send_email": 256, "big": 3538}
    monkeypatch.setattr(cost, "memory_mb", lambda name: memory[name])
    functions = {"send_email": {"invocations": 10, "busy_s": 40.0, "cpu_s": 2.0},
                 "big": {"invocations": 10, "busy_s": 1.0, "cpu_s": 1.0}}
    bill = cost.bill(1_000_000, [], functions, mails=0)
    wall_gb_s = 40.0 * 256 / 1024 + 1.0 * 3538 / 1024
    assert bill["per_million_messages"]["Lambda compute"] == pytest.approx(
        wall_gb_s * cost.LAMBDA_PER_GB_S, abs=1e-4)
    # 256 MB has 256/1769 of a vCPU: 2 CPU-s last 2 * 1769/256 s at 0.25 GB; at twice
    # one vCPU's memory a single-threaded handler's CPU-second is one second
    cpu_gb_s = 2.0 * 1769 / 1024 + 1.0 * 3538 / 1024
    assert bill["lambda_compute_cpu_bound"] == pytest.approx(
        cpu_gb_s * cost.LAMBDA_PER_GB_S, abs=1e-4)
    requests = bill["per_million_messages"]["Lambda requests"]
    assert bill["sqs_and_lambda_cpu_bound"] == pytest.approx(
        requests + cpu_gb_s * cost.LAMBDA_PER_GB_S, abs=1e-3)
    assert bill["sqs_and_lambda_cpu_bound"] < bill["sqs_and_lambda"]


def test_runs_recorded_before_cpu_time_was_counted_bill_no_lower_bound_compute(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cost, "memory_mb", lambda name: 256)
    bill = cost.bill(100, [], {"match": {"invocations": 1, "busy_s": 1.0}}, mails=0)
    assert bill["lambda_compute_cpu_bound"] == 0
