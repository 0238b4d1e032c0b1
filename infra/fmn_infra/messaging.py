"""The messaging and observability stack: queues, DLQs, claim bucket, alarms, topic, dashboard.

Owns what holds messages in flight and what watches them; runs no code, so
LocalStack's CloudFormation deploys this very template.  The queue prefix
and every alarm threshold are CloudFormation parameters (defaults from
:class:`fmn.pipeline.alarms.Thresholds`), so one template serves every stage
and a test can deploy it with thresholds of seconds.
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from fmn.pipeline import alarms
from fmn.pipeline.queues import DLQ_RETENTION_S, QUEUES, queue
from fmn_infra.alarming import AlarmFactory

#: a dead letter waits this long for an operator (SQS's longest: 14 days); the send-once
#: window is derived from it (fmn.pipeline.queues.idempotency_window_s)
DLQ_RETENTION = cdk.Duration.seconds(DLQ_RETENTION_S)
#: claims outlive every message that can name them (the DLQs' retention)
CLAIM_EXPIRY = cdk.Duration.days(15)


def claim_bucket_name(prefix: str) -> str:
    """Bucket names are global: the account id keeps the stage's one unique."""
    return f"{prefix}claims-{cdk.Aws.ACCOUNT_ID}"


def topic_name(prefix: str) -> str:
    return f"{prefix}alarms"


class MessagingStack(cdk.Stack):
    """Queues with their DLQs and alarms, the claim bucket, the alarm topic, a dashboard."""

    def __init__(self, scope: Construct, construct_id: str, *, prefix: str = "fmn-",
                 thresholds: alarms.Thresholds | None = None, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.prefix_param = cdk.CfnParameter(
            self, "QueuePrefix", type="String", default=prefix,
            allowed_pattern="[a-z0-9-]{1,40}",
            description="prefix of every queue, topic and alarm name (one per stage): "
                        "FMN_QUEUE_PREFIX of the functions and the bridge")
        p = self.prefix_param.value_as_string
        self.alarm_factory = AlarmFactory(self, thresholds)
        email = cdk.CfnParameter(self, "AlarmEmail", type="String", default="",
                                 description="an address the alarms are mailed to (empty: none;"
                                             " subscribe a pager to the topic instead)")

        self.topic = sns.Topic(self, "AlarmTopic", topic_name=topic_name(p),
                               display_name="FMN alarms")
        has_email = cdk.CfnCondition(self, "HasAlarmEmail", expression=cdk.Fn.condition_not(
            cdk.Fn.condition_equals(email.value_as_string, "")))
        sub = sns.CfnSubscription(self, "AlarmEmailSubscription", protocol="email",
                                  topic_arn=self.topic.topic_arn,
                                  endpoint=email.value_as_string)
        sub.cfn_options.condition = has_email

        self.queues: dict[str, sqs.Queue] = {}
        self.dlqs: dict[str, sqs.Queue] = {}
        for q in QUEUES:
            dlq = sqs.Queue(self, f"{q.name}-dlq", queue_name=q.dlq_name(p),
                            retention_period=DLQ_RETENTION,
                            encryption=sqs.QueueEncryption.SQS_MANAGED,
                            enforce_ssl=True)
            self.dlqs[q.name] = dlq
            self.queues[q.name] = sqs.Queue(
                self, q.name, queue_name=q.sqs_name(p),
                visibility_timeout=cdk.Duration.seconds(q.visibility_timeout_s),
                retention_period=cdk.Duration.seconds(q.retention_s),
                encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True,
                dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=q.max_receive_count,
                                                      queue=dlq))

        self.claims = s3.Bucket(
            self, "ClaimBucket", bucket_name=claim_bucket_name(p),
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED, enforce_ssl=True,
            lifecycle_rules=[s3.LifecycleRule(id="expire-claims", expiration=CLAIM_EXPIRY,
                                              abort_incomplete_multipart_upload_after=
                                              cdk.Duration.days(1))],
            removal_policy=cdk.RemovalPolicy.RETAIN)

        for definition in alarms.messaging_alarms(p):
            self.alarm_factory.add(definition, [self.topic.topic_arn])
        self._dashboard(p)

        cdk.CfnOutput(self, "AlarmTopicArn", value=self.topic.topic_arn)
        cdk.CfnOutput(self, "ClaimBucketName", value=self.claims.bucket_name)
        for name, q in self.queues.items():
            cdk.CfnOutput(self, f"{name}QueueUrl", value=q.queue_url)

    def _dashboard(self, p: str) -> None:
        period = cdk.Duration.minutes(1)

        def sqs_metric(name: str, queue: str, stat: str = "Maximum") -> cw.Metric:
            return cw.Metric(namespace="AWS/SQS", metric_name=name, statistic=stat,
                             dimensions_map={"QueueName": queue}, period=period,
                             label=queue)

        widgets: list[cw.IWidget] = [
            cw.GraphWidget(title="Messages waiting", width=12, left=[
                sqs_metric("ApproximateNumberOfMessagesVisible", q.sqs_name(p)) for q in QUEUES]),
            cw.GraphWidget(title="Age of the oldest message (s)", width=12, left=[
                sqs_metric("ApproximateAgeOfOldestMessage", q.sqs_name(p)) for q in QUEUES]),
            cw.GraphWidget(title="Dead letters", width=12, left=[
                sqs_metric("ApproximateNumberOfMessagesVisible", q.dlq_name(p)) for q in QUEUES]),
            cw.GraphWidget(title="Bus messages bridged", width=12, left=[
                cw.Metric(namespace=alarms.NAMESPACE, metric_name=alarms.BRIDGE_MESSAGES,
                          dimensions_map={"Queue": queue("incoming").sqs_name(p)}, statistic="Sum",
                          period=period)]),
        ]
        cw.Dashboard(self, "Dashboard", dashboard_name=f"{p}pipeline",
                     widgets=[widgets[i:i + 2] for i in range(0, len(widgets), 2)])
