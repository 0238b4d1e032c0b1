"""The load test's bill: a compute ceiling from wall and CPU time, and a CPU-time estimate."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest import cost, report

pytestmark = pytest.mark.unit


def test_the_ceiling_stretches_cpu_time_to_lambdas_share_and_adds_the_waits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    memory = {"send_email": 256, "big": 3538}
    monkeypatch.setattr(cost, "memory_mb", lambda name: memory[name])
    functions = {"send_email": {"invocations": 10, "busy_s": 40.0, "cpu_s": 2.0},
                 "big": {"invocations": 10, "busy_s": 1.0, "cpu_s": 1.0}}
    bill = cost.bill(1_000_000, [], functions, mails=0)
    # 256 MB has 256/1769 of a vCPU: 2 CPU-s last 2 * 1769/256 s there, plus the 38 s
    # spent off the CPU; above one vCPU a single-threaded CPU-second is one second
    ceiling_gb_s = (38.0 + 2.0 * 1769 / 256) * 256 / 1024 + 1.0 * 3538 / 1024
    assert bill["per_million_messages"]["Lambda compute"] == pytest.approx(
        ceiling_gb_s * cost.LAMBDA_PER_GB_S, abs=1e-4)
    cpu_gb_s = 2.0 * 1769 / 1024 + 1.0 * 3538 / 1024
    assert bill["lambda_compute_cpu_estimate"] == pytest.approx(
        cpu_gb_s * cost.LAMBDA_PER_GB_S, abs=1e-4)
    requests = bill["per_million_messages"]["Lambda requests"]
    assert bill["sqs_and_lambda_cpu_estimate"] == pytest.approx(
        requests + cpu_gb_s * cost.LAMBDA_PER_GB_S, abs=1e-3)
    assert bill["sqs_and_lambda_cpu_estimate"] < bill["sqs_and_lambda"]


def test_a_cpu_bound_handler_below_one_vcpu_costs_more_than_its_wall_time_here(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Wall time here is no ceiling: this machine's core is faster than a 256 MB share."""
    monkeypatch.setattr(cost, "memory_mb", lambda name: 256)
    bill = cost.bill(1, [], {"sse": {"invocations": 1, "busy_s": 1.0, "cpu_s": 0.9}},
                     mails=0)
    wall_only = 1e6 * 256 / 1024 * cost.LAMBDA_PER_GB_S
    assert bill["per_million_messages"]["Lambda compute"] > 5 * wall_only
    assert bill["lambda_compute_cpu_estimate"] <= bill["per_million_messages"]["Lambda compute"]


def test_runs_recorded_without_cpu_times_bill_wall_time_and_no_estimate(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cost, "memory_mb", lambda name: 256)
    bill = cost.bill(100, [], {"match": {"invocations": 1, "busy_s": 1.0}}, mails=0)
    assert bill["lambda_compute_cpu_estimate"] is None
    assert bill["sqs_and_lambda_cpu_estimate"] is None
    assert bill["per_million_messages"]["Lambda compute"] == pytest.approx(
        1e4 * 256 / 1024 * cost.LAMBDA_PER_GB_S, abs=1e-4)


def _summary(cost_doc: dict[str, Any]) -> dict[str, Any]:
    return {"concurrency": 1, "lasted_s": 10.0, "drained": True, "maxed_at": 5,
            "avg_processing": 10.0, "sqs_requests_per_message": 0.5,
            "fraction_of_ceiling": 0.1, "emulator_ceiling_requests_per_s": 100.0,
            "cost": cost_doc, "ledger_ok": True, "load_average": [0.1, 0.2]}


def test_the_summary_prints_a_dash_where_a_run_has_no_figure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cost, "memory_mb", lambda name: 256)
    old = cost.bill(100, [], {"match": {"invocations": 1, "busy_s": 1.0}}, mails=0)
    row_old = report.format_summary([_summary(old)]).splitlines()[2]
    new = cost.bill(100, [], {"match": {"invocations": 1, "busy_s": 1.0, "cpu_s": 0.5}},
                    mails=0)
    row_new = report.format_summary([_summary(new)]).splitlines()[2]
    none = report.format_summary([_summary({})]).splitlines()[2]
    assert " - " in row_old and f"{old['sqs_and_lambda']:.3f}" in row_old
    assert " - " not in row_new.split("OK")[0]
    assert f"{new['sqs_and_lambda_cpu_estimate']:.3f}" in row_new
    assert "0.000" not in none and none.split().count("-") >= 2


def test_a_ceiling_not_measured_is_a_dash_not_zero_percent() -> None:
    measured = report.format_summary([_summary({})]).splitlines()[2]
    unmeasured = report.format_summary([{**_summary({}), "fraction_of_ceiling": 0.0,
                                         "emulator_ceiling_requests_per_s": 0.0}])
    assert "10%" in measured.split()
    assert "0%" not in unmeasured.splitlines()[2].split()
    assert unmeasured.splitlines()[2].split()[5] == "-"


def test_a_cpu_time_the_runner_did_not_record_is_unknown_not_free(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from loadtest.run import function_figures

    monkeypatch.setattr(cost, "memory_mb", lambda name: 256)
    stats = [{"function": "match", "invocations": 3, "busy_s": 2.0, "records_ok": 30,
              "records_failed": 0, "cpu_s": 1.0},
             {"function": "send_email", "invocations": 5, "busy_s": 4.0, "records_ok": 50,
              "records_failed": 1}]  # an older worker's totals: no cpu_s
    figures = function_figures(stats)
    assert figures["match"]["cpu_s"] == 1.0 and figures["send_email"]["records"] == 51
    assert "cpu_s" not in figures["send_email"]
    bill = cost.bill(100, [], figures, mails=0)
    assert bill["lambda_compute_cpu_estimate"] is None  # "-", not $0.000


def test_a_function_run_by_several_processes_adds_up() -> None:
    from loadtest.run import function_figures

    email = {"function": "send_email", "invocations": 5, "busy_s": 4.0, "records_ok": 50,
             "records_failed": 1, "cpu_s": 1.5}
    figures = function_figures([email, {**email, "invocations": 3, "cpu_s": 0.5}])
    assert figures["send_email"] == {"invocations": 8, "busy_s": 8.0, "records": 102,
                                     "cpu_s": 2.0}
    # one of them without a CPU time: the whole is not known
    assert "cpu_s" not in function_figures([email, {**email, "cpu_s": None}])["send_email"]
