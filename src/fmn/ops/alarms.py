"""The CloudWatch alarms of a stage: created through the API where templates cannot, and read.

The definitions are :mod:`fmn.pipeline.alarms` (the same ones the CDK
stacks put in their templates).  :func:`ensure_alarms` creates the messaging
alarms of a stage (queues, dead-letter queues, the bridge) and their SNS
topic through ``PutMetricAlarm``, idempotently: the moto server's
CloudFormation silently skips alarms, so the local stack always creates them
this way there.  :func:`alarm_states` reads every expected alarm's state
(``OK``, ``ALARM``, ``INSUFFICIENT_DATA``, or ``MISSING`` when it does not
exist) for ``fmn status`` and ``fmn doctor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fmn.pipeline.alarms import AlarmDef, Thresholds, messaging_alarms

MISSING = "MISSING"
#: DescribeAlarms takes at most this many names per call
_DESCRIBE_MAX = 100


@dataclass(frozen=True)
class AlarmState:
    name: str
    #: ``queue``, ``dlq``, ``function`` or ``bridge``, and the subject's logical name
    kind: str
    subject: str
    #: ``OK``, ``ALARM``, ``INSUFFICIENT_DATA`` or ``MISSING``
    state: str
    reason: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind, "subject": self.subject,
                "state": self.state, "reason": self.reason}


def topic_name(prefix: str) -> str:
    """The stage's SNS topic that every alarm notifies (``fmn-prod-alarms``)."""
    return f"{prefix}alarms"


def ensure_alarms(cloudwatch: Any, sns: Any, prefix: str,
                  thresholds: Thresholds | None = None) -> tuple[list[AlarmDef], str]:
    """Create (or update) the stage's messaging alarms and their topic; (alarms, topic ARN)."""
    topic_arn: str = sns.create_topic(Name=topic_name(prefix))["TopicArn"]
    alarms = messaging_alarms(prefix)
    for alarm in alarms:
        cloudwatch.put_metric_alarm(**alarm.put_metric_alarm(thresholds, [topic_arn]))
    return alarms, topic_arn


def alarm_states(cloudwatch: Any, alarms: list[AlarmDef]) -> list[AlarmState]:
    """Every alarm of ``alarms`` with its current state, in their order."""
    found: dict[str, dict[str, Any]] = {}
    names = [a.name for a in alarms]
    for start in range(0, len(names), _DESCRIBE_MAX):
        response = cloudwatch.describe_alarms(AlarmNames=names[start:start + _DESCRIBE_MAX],
                                              AlarmTypes=["MetricAlarm"])
        found.update((a["AlarmName"], a) for a in response.get("MetricAlarms", []))
    states = []
    for alarm in alarms:
        got = found.get(alarm.name)
        states.append(AlarmState(alarm.name, alarm.kind, alarm.subject,
                                 str(got.get("StateValue", "")) if got else MISSING,
                                 str(got.get("StateReason", ""))[:300] if got else ""))
    return states
