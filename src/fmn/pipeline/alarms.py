"""The CloudWatch alarms of the pipeline and the metric names they watch: one definition.

Derived from :mod:`fmn.pipeline.queues`, so a queue added there is watched
without another line: per queue, the age of its oldest message (the backlog
signal that does not depend on volume), its visible messages, and any
message in its dead-letter queue; per function, errors, throttles and a
duration near its timeout; and, for the bridge, silence (nothing bridged for
longer than Fedora's bus is ever quiet: a dead bridge makes every queue look
healthy), records waiting for a claim check to S3 that fails, and a lost bus
connection.

Every threshold is a field of :class:`Thresholds` with a documented default;
the CDK stacks turn each field into a CloudFormation parameter
(:attr:`Param.cfn_name`), and :meth:`AlarmDef.put_metric_alarm` turns a
definition and concrete thresholds into the keyword arguments of CloudWatch's
``PutMetricAlarm`` (the local stack creates the very same alarms through the
API where CloudFormation cannot).  Plain Python: no AWS SDK.

Metric names: the functions emit theirs with Powertools (EMF) into
:data:`NAMESPACE` (dimension ``service``); the bridge publishes
:data:`BRIDGE_MESSAGES`, :data:`BRIDGE_CONNECTED` and :data:`BRIDGE_CLAIMS_WAITING`
with PutMetricData into :data:`NAMESPACE` with the dimension ``Queue`` (the
incoming queue's name, which tells stages apart) and, for the connection, ``Bus``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from fmn.pipeline.queues import QUEUES, QueueDef

#: the namespace of every metric FMN itself publishes (Powertools and the bridge)
NAMESPACE = "FMN"

# -- what the functions emit (Powertools EMF, namespace FMN) -------------------
#: bus messages the match function matched
MESSAGES_MATCHED = "MessagesMatched"
#: notifications the match function queued for a backend: ``Notifications_<backend>``
NOTIFICATIONS_PREFIX = "Notifications_"
#: notifications a sender delivered (``Sent``), dead-lettered, or failed to send
SENT = "Sent"
DEAD_LETTERED = "DeadLettered"
RETRYABLE_FAILURES = "RetryableFailures"
PERMANENT_FAILURES = "PermanentFailures"
#: milliseconds from the bus message's own timestamp (its publisher's clock) to its
#: delivery; values more than a minute ahead or a week back are left out
BUS_TO_SEND_LATENCY = "BusToSendLatency"

# -- what the bridge publishes (PutMetricData, namespace FMN) ------------------
#: bus messages accepted by SQS since the last report (dimension ``Queue``)
BRIDGE_MESSAGES = "MessagesBridged"
#: 1 while the bridge is connected to a bus, 0 otherwise (dimensions ``Queue``, ``Bus``)
BRIDGE_CONNECTED = "BusConnected"
#: envelopes waiting because their claim check to S3 failed (the claim bucket missing
#: or not writable; dimension ``Queue``)
BRIDGE_CLAIMS_WAITING = "ClaimsWaiting"
#: the buses the bridge connects to (``Envelope.bus``)
BUSES: tuple[str, ...] = ("fedmsg", "fedora-messaging")
#: how often the bridge publishes its heartbeat, seconds
HEARTBEAT_S = 60


@dataclass(frozen=True)
class Thresholds:
    """Every alarm's threshold and period, with the defaults a deployment starts from."""

    period_s: int = 60
    evaluation_periods: int = 3
    queue_age_s: int = 900
    queue_visible: int = 5000
    dlq_visible: int = 0
    function_errors: int = 0
    function_throttles: int = 0
    duration_percent: int = 80
    bridge_silence_s: int = 600
    cache_memory_percent: int = 80


#: the CloudFormation parameter and the meaning of each threshold
THRESHOLD_DOCS: dict[str, tuple[str, str]] = {
    "period_s": ("AlarmPeriod",
                 "CloudWatch period of the alarms, seconds (10, 20, 30 or a multiple of 60)"),
    "evaluation_periods": ("EvaluationPeriods",
                           "consecutive breaching periods before a depth, error, throttle, "
                           "duration, connection or claims-waiting alarm fires"),
    "queue_age_s": ("QueueAgeSeconds",
                    "alarm when a queue's oldest message is older than this: the pipeline "
                    "is behind, whatever the volume"),
    "queue_visible": ("QueueVisibleMessages",
                      "alarm when more messages than this wait on a queue for "
                      "EvaluationPeriods periods (a 15,000-message burst drains in minutes)"),
    "dlq_visible": ("DlqVisibleMessages",
                    "alarm when a dead-letter queue holds more messages than this "
                    "(0: any message)"),
    "function_errors": ("FunctionErrors",
                        "alarm when a function fails more invocations than this per period "
                        "for EvaluationPeriods periods (batch item failures are not errors)"),
    "function_throttles": ("FunctionThrottles",
                           "alarm when a function is throttled more than this per period "
                           "for EvaluationPeriods periods"),
    "duration_percent": ("DurationPercent",
                         "alarm when a function's longest invocation takes more than this "
                         "percentage of its timeout"),
    "bridge_silence_s": ("BridgeSilenceSeconds",
                         "alarm when the bridge has bridged nothing for this long (Fedora's "
                         "bus is never that quiet); 10, 20, 30 or a multiple of 60"),
    "cache_memory_percent": ("CacheMemoryPercent",
                             "alarm when a cache node uses more than this percentage of its "
                             "memory (it never evicts: when full, it refuses writes)"),
}
assert set(THRESHOLD_DOCS) == {f.name for f in fields(Thresholds)}
#: the smallest value each threshold may take (the others: 0)
THRESHOLD_MINIMUM: dict[str, int] = {"period_s": 10, "evaluation_periods": 1,
                                     "duration_percent": 1, "bridge_silence_s": 10}


@dataclass(frozen=True)
class Param:
    """A reference to one threshold: a CloudFormation parameter in the templates."""

    key: str

    @property
    def cfn_name(self) -> str:
        return THRESHOLD_DOCS[self.key][0]

    @property
    def doc(self) -> str:
        return THRESHOLD_DOCS[self.key][1]

    @property
    def minimum(self) -> int:
        return THRESHOLD_MINIMUM.get(self.key, 0)

    def value(self, thresholds: Thresholds) -> int:
        v: int = getattr(thresholds, self.key)
        return v


PERIOD = Param("period_s")
EVALUATION_PERIODS = Param("evaluation_periods")


@dataclass(frozen=True)
class Metric:
    namespace: str
    name: str
    dimensions: tuple[tuple[str, str], ...]
    statistic: str

    def dimension_list(self) -> list[dict[str, str]]:
        return [{"Name": k, "Value": v} for k, v in self.dimensions]


@dataclass(frozen=True)
class AlarmDef:
    """One alarm, independent of how it is created (template or API)."""

    #: the alarm's name: the stage's prefix, the subject, the kind (``fmn-prod-email-age``)
    name: str
    #: what it means, for the person it wakes (the runbook: docs/operations.md)
    description: str
    #: ``queue``, ``dlq``, ``function`` or ``bridge``, and the subject's logical name
    kind: str
    subject: str
    metric: Metric
    comparison: str
    #: a threshold's parameter, or a constant
    threshold: Param | int
    period: Param | int = PERIOD
    evaluation_periods: Param | int = 1
    treat_missing_data: str = "notBreaching"
    #: a metric math expression over the metric (id ``m``), or ``None``
    expression: str | None = None

    @property
    def logical_id(self) -> str:
        """A template's resource name: ``QueueEmailAgeAlarm`` (no prefix: one per stack).

        The check is the name's last word (``age``, ``depth``, ``errors``...).
        """
        check = self.name.rsplit("-", 1)[-1]
        words = f"{self.kind} {self.subject} {check}".replace("_", " ").replace("-", " ")
        return "".join(w.capitalize() for w in words.split()) + "Alarm"

    def properties(self, value: Callable[[Param | int], Any],
                   actions: Sequence[Any] = ()) -> dict[str, Any]:
        """The alarm's CloudFormation properties, which are PutMetricAlarm's arguments.

        ``value`` gives each threshold's value: a number for the API, a
        parameter reference for a template.  ``actions`` (an SNS topic's
        ARN) are the alarm and OK actions.
        """
        props: dict[str, Any] = {
            "AlarmName": self.name,
            "AlarmDescription": self.description,
            "ComparisonOperator": self.comparison,
            "Threshold": value(self.threshold),
            "EvaluationPeriods": value(self.evaluation_periods),
            "TreatMissingData": self.treat_missing_data,
            "ActionsEnabled": bool(actions),
            "AlarmActions": list(actions),
            "OKActions": list(actions),
        }
        period = value(self.period)
        if self.expression is None:
            props.update(Namespace=self.metric.namespace, MetricName=self.metric.name,
                         Dimensions=self.metric.dimension_list(),
                         Statistic=self.metric.statistic, Period=period)
        else:
            props["Metrics"] = [
                {"Id": "m", "ReturnData": False,
                 "MetricStat": {"Metric": {"Namespace": self.metric.namespace,
                                           "MetricName": self.metric.name,
                                           "Dimensions": self.metric.dimension_list()},
                                "Period": period, "Stat": self.metric.statistic}},
                {"Id": "e", "Expression": self.expression, "Label": self.name,
                 "ReturnData": True},
            ]
        return props

    def put_metric_alarm(self, thresholds: Thresholds | None = None,
                         actions: Sequence[str] = ()) -> dict[str, Any]:
        """The keyword arguments of CloudWatch ``put_metric_alarm`` for these thresholds."""
        t = thresholds or Thresholds()
        kwargs = self.properties(lambda v: _resolve(v, t), actions)
        kwargs["Threshold"] = float(kwargs["Threshold"])
        return kwargs


def _resolve(value: Param | int, t: Thresholds) -> int:
    return value.value(t) if isinstance(value, Param) else value


GT = "GreaterThanThreshold"
LT = "LessThanThreshold"
SQS = "AWS/SQS"
LAMBDA = "AWS/Lambda"


def queue_alarms(prefix: str, queues: Iterable[QueueDef] = QUEUES) -> list[AlarmDef]:
    """Per queue: age of the oldest message, visible messages, anything in its DLQ."""
    alarms: list[AlarmDef] = []
    for q in queues:
        name, dlq = q.sqs_name(prefix), q.dlq_name(prefix)
        dims = (("QueueName", name),)
        alarms += [
            AlarmDef(f"{name}-age",
                     f"The oldest message on {name} is older than QueueAgeSeconds: "
                     f"{q.function or 'its consumer'} is behind or stopped. "
                     "Runbook: docs/operations.md#queue-age",
                     "queue", q.name,
                     Metric(SQS, "ApproximateAgeOfOldestMessage", dims, "Maximum"),
                     GT, Param("queue_age_s")),
            AlarmDef(f"{name}-depth",
                     f"More than QueueVisibleMessages messages wait on {name}. "
                     "Runbook: docs/operations.md#queue-depth",
                     "queue", q.name,
                     Metric(SQS, "ApproximateNumberOfMessagesVisible", dims, "Maximum"),
                     GT, Param("queue_visible"), evaluation_periods=EVALUATION_PERIODS),
            AlarmDef(f"{dlq}",
                     f"Messages are in the dead-letter queue {dlq}: they failed "
                     f"{q.max_receive_count} times or could not be sent. "
                     "Runbook: docs/operations.md#dead-letter-queue",
                     "dlq", q.name,
                     Metric(SQS, "ApproximateNumberOfMessagesVisible",
                            (("QueueName", dlq),), "Maximum"),
                     GT, Param("dlq_visible")),
        ]
    return alarms


def function_name(prefix: str, function: str) -> str:
    """The deployed name of a function (``fmn-prod-match``): alarms find it by name."""
    return f"{prefix}{function}"


def function_alarms(prefix: str, timeouts_s: Mapping[str, int]) -> list[AlarmDef]:
    """Per function (logical name -> its timeout): errors, throttles, duration near timeout."""
    alarms: list[AlarmDef] = []
    for function, timeout_s in sorted(timeouts_s.items()):
        fn = function_name(prefix, function)
        dims = (("FunctionName", fn),)
        alarms += [
            AlarmDef(f"{fn}-errors",
                     f"Invocations of {fn} fail (whole batches come back). "
                     "Runbook: docs/operations.md#function-errors",
                     "function", function, Metric(LAMBDA, "Errors", dims, "Sum"),
                     GT, Param("function_errors"), evaluation_periods=EVALUATION_PERIODS),
            AlarmDef(f"{fn}-throttles",
                     f"Invocations of {fn} are throttled: the account's or the function's "
                     "concurrency is exhausted. Runbook: docs/operations.md#function-throttles",
                     "function", function, Metric(LAMBDA, "Throttles", dims, "Sum"),
                     GT, Param("function_throttles"), evaluation_periods=EVALUATION_PERIODS),
            AlarmDef(f"{fn}-duration",
                     f"The longest invocation of {fn} takes more than DurationPercent of its "
                     f"{timeout_s} s timeout. Runbook: docs/operations.md#function-duration",
                     "function", function, Metric(LAMBDA, "Duration", dims, "Maximum"),
                     GT, Param("duration_percent"), evaluation_periods=EVALUATION_PERIODS,
                     expression=f"100 * m / {timeout_s * 1000}"),
        ]
    return alarms


def bridge_alarms(prefix: str, buses: Iterable[str] = BUSES) -> list[AlarmDef]:
    """The bridge: silence (nothing bridged; no data counts), envelopes waiting for a claim
    check to S3 that fails, and a lost connection per bus."""
    incoming = next(q for q in QUEUES if q.name == "incoming").sqs_name(prefix)
    queue_dim = ("Queue", incoming)
    alarms = [
        AlarmDef(f"{prefix}bridge-silent",
                 "The bridge has put nothing on the incoming queue for BridgeSilenceSeconds: "
                 "it is dead or cut off from the bus (the queues then look healthy). "
                 "Runbook: docs/operations.md#bridge-silent",
                 "bridge", "bridge",
                 Metric(NAMESPACE, BRIDGE_MESSAGES, (queue_dim,), "Sum"),
                 # less than one message in a period as long as the silence
                 LT, 1, period=Param("bridge_silence_s"), treat_missing_data="breaching"),
        # the claim bucket missing or not writable: the records too large for SQS wait
        # in the bridge, and AMQP stops altogether once its prefetch of them waits (they
        # stay unacknowledged until SQS has them), which no silence alarm sees while
        # fedmsg flows
        AlarmDef(f"{prefix}bridge-claims-waiting",
                 "Records too large for SQS have waited in the bridge for EvaluationPeriods"
                 " periods: their claim check to S3 fails (the claim bucket is missing or "
                 "the bridge may not s3:PutObject to it). AMQP stops once its prefetch of "
                 "them waits; fedmsg's wait in the journal on disk. "
                 "Runbook: docs/operations.md#bridge-claims-waiting",
                 "bridge", "claims",
                 Metric(NAMESPACE, BRIDGE_CLAIMS_WAITING, (queue_dim,), "Maximum"),
                 GT, 0, evaluation_periods=EVALUATION_PERIODS),
    ]
    for bus in buses:
        alarms.append(AlarmDef(
            f"{prefix}bridge-{bus}-disconnected",
            f"The bridge has been disconnected from {bus} for EvaluationPeriods periods. "
            "Runbook: docs/operations.md#bridge-disconnected",
            "bridge", bus,
            Metric(NAMESPACE, BRIDGE_CONNECTED, (queue_dim, ("Bus", bus)), "Minimum"),
            LT, 1, evaluation_periods=EVALUATION_PERIODS))
    return alarms




def cache_alarms(replication_group: str, nodes: int) -> list[AlarmDef]:
    """Per cache node (``<group>-001``...): memory used, before it refuses writes."""
    alarms: list[AlarmDef] = []
    for i in range(1, nodes + 1):
        node = f"{replication_group}-{i:03d}"
        alarms.append(AlarmDef(
            f"{node}-memory",
            f"The cache node {node} uses more than CacheMemoryPercent of its memory; with "
            "noeviction a full cache refuses writes. Runbook: docs/operations.md#cache-memory",
            "cache", f"node-{i}",
            Metric("AWS/ElastiCache", "DatabaseMemoryUsagePercentage",
                   (("CacheClusterId", node),), "Maximum"),
            GT, Param("cache_memory_percent"), evaluation_periods=EVALUATION_PERIODS))
    return alarms


def messaging_alarms(prefix: str, buses: Iterable[str] = BUSES) -> list[AlarmDef]:
    """What the messaging stack (and the local stack) creates: queues, DLQs, the bridge."""
    return queue_alarms(prefix) + bridge_alarms(prefix, buses)


def alarm_names(prefix: str) -> list[str]:
    return [a.name for a in messaging_alarms(prefix)]


def threshold_parameters(thresholds: Thresholds | None = None) -> list[tuple[str, str, int, str]]:
    """``(field, CloudFormation parameter, default, meaning)`` for every threshold."""
    t = thresholds or Thresholds()
    return [(f.name, THRESHOLD_DOCS[f.name][0], getattr(t, f.name), THRESHOLD_DOCS[f.name][1])
            for f in fields(Thresholds)]


def put_metric_alarm_calls(prefix: str, thresholds: Thresholds | None = None,
                           actions: Sequence[str] = ()) -> list[dict[str, Any]]:
    """PutMetricAlarm's arguments for every alarm of the messaging stack, for one stage.

    Where CloudFormation cannot create alarms (the moto server), creating
    these through the API gives the same alarms as the template:
    ``for kwargs in put_metric_alarm_calls(prefix): cloudwatch.put_metric_alarm(**kwargs)``.
    """
    return [a.put_metric_alarm(thresholds, actions) for a in messaging_alarms(prefix)]
