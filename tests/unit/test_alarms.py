"""The alarm definitions: every queue watched, thresholds as parameters, PutMetricAlarm shape."""

from __future__ import annotations

import pytest

from fmn.pipeline import alarms
from fmn.pipeline.queues import QUEUES

pytestmark = pytest.mark.unit


def test_every_queue_has_age_depth_and_dlq_alarms() -> None:
    names = {a.name for a in alarms.queue_alarms("fmn-t-")}
    for q in QUEUES:
        assert {f"fmn-t-{q.name}-age", f"fmn-t-{q.name}-depth", f"fmn-t-{q.name}-dlq"} <= names


def test_put_metric_alarm_uses_the_thresholds_given() -> None:
    t = alarms.Thresholds(period_s=10, queue_visible=7, evaluation_periods=1)
    depth = next(a for a in alarms.queue_alarms("p-") if a.name == "p-email-depth")
    kwargs = depth.put_metric_alarm(t, actions=["arn:aws:sns:us-east-1:000000000000:p-alarms"])
    assert kwargs["Threshold"] == 7.0 and kwargs["Period"] == 10
    assert kwargs["EvaluationPeriods"] == 1
    assert kwargs["Dimensions"] == [{"Name": "QueueName", "Value": "p-email"}]
    assert kwargs["AlarmActions"] == kwargs["OKActions"] == [
        "arn:aws:sns:us-east-1:000000000000:p-alarms"]
    assert kwargs["ActionsEnabled"]


def test_duration_alarm_is_a_percentage_of_the_timeout() -> None:
    (dur,) = [a for a in alarms.function_alarms("p-", {"match": 30}) if a.name.endswith("duration")]
    kwargs = dur.put_metric_alarm()
    assert "MetricName" not in kwargs
    assert kwargs["Metrics"][1]["Expression"] == "100 * m / 30000"
    assert kwargs["Threshold"] == 80.0


def test_bridge_silence_counts_missing_data_as_silence() -> None:
    silent = alarms.bridge_alarms("p-")[0]
    kwargs = silent.put_metric_alarm(alarms.Thresholds(bridge_silence_s=120))
    assert kwargs["TreatMissingData"] == "breaching"
    assert kwargs["Period"] == 120 and kwargs["Threshold"] == 1.0
    assert kwargs["ComparisonOperator"] == "LessThanThreshold"
    assert kwargs["Dimensions"] == [{"Name": "Queue", "Value": "p-incoming"}]


def test_bridge_claims_waiting_fires_on_any_record_held_for_evaluation_periods() -> None:
    """With the claim bucket broken, AMQP stops after its prefetch of oversized records
    (unacknowledged until SQS has them) while fedmsg keeps the silence alarm quiet: the
    bridge's ClaimsWaiting metric has an alarm of its own."""
    (waiting,) = [a for a in alarms.bridge_alarms("p-") if a.name == "p-bridge-claims-waiting"]
    kwargs = waiting.put_metric_alarm(alarms.Thresholds(evaluation_periods=4))
    assert kwargs["Namespace"] == alarms.NAMESPACE
    assert kwargs["MetricName"] == alarms.BRIDGE_CLAIMS_WAITING
    assert kwargs["Dimensions"] == [{"Name": "Queue", "Value": "p-incoming"}]
    assert kwargs["ComparisonOperator"] == "GreaterThanThreshold"
    assert kwargs["Threshold"] == 0.0 and kwargs["EvaluationPeriods"] == 4
    assert kwargs["Statistic"] == "Maximum" and kwargs["TreatMissingData"] == "notBreaching"
    assert "docs/operations.md#bridge-claims-waiting" in kwargs["AlarmDescription"]
    assert "p-bridge-claims-waiting" in alarms.alarm_names("p-")
    assert waiting.logical_id == "BridgeClaimsWaitingAlarm"


def test_every_threshold_is_a_documented_parameter() -> None:
    params = alarms.threshold_parameters()
    assert len({cfn for _, cfn, _, _ in params}) == len(params)
    assert all(doc and isinstance(default, int) for _, _, default, doc in params)


def test_the_api_calls_create_what_the_template_does() -> None:
    calls = alarms.put_metric_alarm_calls("p-", alarms.Thresholds(period_s=10))
    assert [c["AlarmName"] for c in calls] == alarms.alarm_names("p-")
    assert all(c["Period"] in (10, alarms.Thresholds().bridge_silence_s) for c in calls)
