"""The messaging stack's template on LocalStack: its alarms fire, clear and notify.

One deployment through CloudFormation (a prefix of its own, thresholds and
periods of seconds as parameters), then, at the same time: a backlog past
the depth threshold on ``incoming`` (ALARM, then drained: OK); a message in
``email-dlq`` (its alarm fires); the bridge's silence (no heartbeat is
silence: ALARM, then a heartbeat: OK); the age of the oldest message (see
below).  An SQS queue subscribed to the alarm topic receives the
notifications.  LocalStack publishes the ``AWS/SQS`` metrics every few
seconds (``SQS_CLOUDWATCH_METRICS_REPORT_INTERVAL``), but not
``ApproximateAgeOfOldestMessage``: the test checks that, and proves the age
alarm with data it puts itself.

The shared LocalStack is at http://127.0.0.1:4566 (``FMN_LOCALSTACK_URL``);
if it does not answer, the test fails saying so (``scripts/localstack.sh``
starts one).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fmn.pipeline import alarms
from fmn.pipeline.queues import queue

pytestmark = pytest.mark.integration

ENDPOINT = os.environ.get("FMN_LOCALSTACK_URL", "http://127.0.0.1:4566")
#: how long an alarm may take to change state (period 10 s, metrics every 5 s)
STATE_TIMEOUT_S = 120
THRESHOLDS = alarms.Thresholds(period_s=10, evaluation_periods=1, queue_visible=5,
                               queue_age_s=60, dlq_visible=0, bridge_silence_s=10)


def _client(service: str) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=ENDPOINT, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


@pytest.fixture(scope="module")
def localstack() -> str:
    try:
        with urllib.request.urlopen(f"{ENDPOINT}/_localstack/health", timeout=5) as r:
            health = json.load(r)
    except OSError as exc:
        pytest.fail(f"LocalStack is not answering at {ENDPOINT} ({exc}): start it with "
                    "scripts/localstack.sh, or point FMN_LOCALSTACK_URL at one")
    missing = [s for s in ("cloudformation", "cloudwatch", "sqs", "sns", "s3")
               if health["services"].get(s) not in ("available", "running")]
    if missing:
        pytest.fail(f"LocalStack at {ENDPOINT} lacks {', '.join(missing)}: {health}")
    return ENDPOINT


@pytest.fixture(scope="module")
def deployed(localstack: str, templates: dict[str, Any]) -> Iterator[dict[str, str]]:
    """The messaging stack on LocalStack under a prefix of its own; deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    cfn, s3 = _client("cloudformation"), _client("s3")
    params = {cfn_name: str(value) for _, cfn_name, value, _ in
              alarms.threshold_parameters(THRESHOLDS)}
    template = templates["messaging"].to_json()
    used = set(template["Parameters"])
    parameters = [{"ParameterKey": k, "ParameterValue": v} for k, v in params.items() if k in used]
    parameters.append({"ParameterKey": "QueuePrefix", "ParameterValue": prefix})
    stack = f"{prefix}messaging"
    cfn.create_stack(StackName=stack, TemplateBody=json.dumps(template), Parameters=parameters)
    try:
        cfn.get_waiter("stack_create_complete").wait(
            StackName=stack, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
        outputs = {o["OutputKey"]: o["OutputValue"]
                   for o in cfn.describe_stacks(StackName=stack)["Stacks"][0]["Outputs"]}
        yield {"prefix": prefix, "stack": stack, **outputs}
    finally:
        cfn.delete_stack(StackName=stack)
        bucket = f"{prefix}claims-000000000000"
        try:  # retained by the template (a deployment keeps its claims)
            for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
            s3.delete_bucket(Bucket=bucket)
        except Exception:  # already gone  # noqa: BLE001
            pass


def _wait(what: str, check: Callable[[], bool], timeout: float = STATE_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(1)


def test_template_deploys_with_every_queue_and_alarm(deployed: dict[str, str]) -> None:
    prefix = deployed["prefix"]
    sqs, cw = _client("sqs"), _client("cloudwatch")
    names = set()
    for page in sqs.get_paginator("list_queues").paginate(QueueNamePrefix=prefix):
        names |= {url.rsplit("/", 1)[-1] for url in page.get("QueueUrls", [])}
    from fmn.pipeline.queues import QUEUES

    assert names >= {n for q in QUEUES for n in (q.sqs_name(prefix), q.dlq_name(prefix))}
    got = {a["AlarmName"] for a in cw.describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"]}
    assert got == {a.name for a in alarms.messaging_alarms(prefix)}
    # the dead-letter queue is wired with the receive count of queues.py
    url = sqs.get_queue_url(QueueName=queue("email").sqs_name(prefix))["QueueUrl"]
    policy = json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])
                        ["Attributes"]["RedrivePolicy"])
    assert policy["deadLetterTargetArn"].endswith(queue("email").dlq_name(prefix))
    assert int(policy["maxReceiveCount"]) == queue("email").max_receive_count


def test_alarms_fire_clear_and_notify(deployed: dict[str, str]) -> None:
    prefix, topic = deployed["prefix"], deployed["AlarmTopicArn"]
    sqs, cw, sns = _client("sqs"), _client("cloudwatch"), _client("sns")

    # the operator's pager: an SQS queue subscribed to the alarm topic
    inbox = sqs.create_queue(QueueName=f"{prefix}alarm-inbox")["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=inbox_arn,
                  Attributes={"RawMessageDelivery": "false"})
    try:
        _alarms_fire_clear_and_notify(prefix, sqs, cw, inbox)
    finally:
        sqs.delete_queue(QueueUrl=inbox)


def _alarms_fire_clear_and_notify(prefix: str, sqs: Any, cw: Any, inbox: str) -> None:
    incoming, email = queue("incoming"), queue("email")
    depth, age = f"{incoming.sqs_name(prefix)}-depth", f"{email.sqs_name(prefix)}-age"
    dlq_alarm, silent = email.dlq_name(prefix), f"{prefix}bridge-silent"

    def state(name: str) -> str:
        found = cw.describe_alarms(AlarmNames=[name])["MetricAlarms"]
        return str(found[0]["StateValue"]) if found else "MISSING"

    # a backlog past the depth threshold (5), and one dead letter
    url = sqs.get_queue_url(QueueName=incoming.sqs_name(prefix))["QueueUrl"]
    for start in range(0, 20, 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "MessageBody": f"backlog {i}"} for i in range(start, start + 10)])
    dlq_url = sqs.get_queue_url(QueueName=email.dlq_name(prefix))["QueueUrl"]
    sqs.send_message(QueueUrl=dlq_url, MessageBody="a payload that failed 5 times")

    # the age: LocalStack does not publish ApproximateAgeOfOldestMessage, so the
    # test puts the datapoints a backlog of 10 minutes would produce
    cw.put_metric_data(Namespace="AWS/SQS", MetricData=[{
        "MetricName": "ApproximateAgeOfOldestMessage", "Value": 600, "Unit": "Seconds",
        "Dimensions": [{"Name": "QueueName", "Value": email.sqs_name(prefix)}]}])

    _wait(f"{depth} in ALARM after 20 messages", lambda: state(depth) == "ALARM")
    _wait(f"{dlq_alarm} in ALARM after a dead letter", lambda: state(dlq_alarm) == "ALARM")
    _wait(f"{age} in ALARM at an age of 600 s", lambda: state(age) == "ALARM")
    # no heartbeat from a bridge is silence
    _wait(f"{silent} in ALARM without heartbeat", lambda: state(silent) == "ALARM")

    # drain: the depth alarm clears; a heartbeat clears the silence; a young queue the age
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            break
        sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])

    def heartbeat() -> bool:
        cw.put_metric_data(Namespace=alarms.NAMESPACE, MetricData=[{
            "MetricName": alarms.BRIDGE_MESSAGES, "Value": 42, "Unit": "Count",
            "Dimensions": [{"Name": "Queue", "Value": incoming.sqs_name(prefix)}]}])
        cw.put_metric_data(Namespace="AWS/SQS", MetricData=[{
            "MetricName": "ApproximateAgeOfOldestMessage", "Value": 1, "Unit": "Seconds",
            "Dimensions": [{"Name": "QueueName", "Value": email.sqs_name(prefix)}]}])
        return state(silent) == "OK" and state(age) == "OK" and state(depth) == "OK"

    _wait(f"{depth}, {age} and {silent} back to OK", heartbeat)

    # the notifications reached the subscribed queue
    seen: dict[str, set[str]] = {}

    def notified() -> bool:
        for m in sqs.receive_message(QueueUrl=inbox, MaxNumberOfMessages=10,
                                     WaitTimeSeconds=1).get("Messages", []):
            body = json.loads(json.loads(m["Body"])["Message"])
            seen.setdefault(body["AlarmName"], set()).add(body["NewStateValue"])
        return {"ALARM", "OK"} <= seen.get(depth, set()) and "ALARM" in seen.get(dlq_alarm, set())

    _wait(f"notifications of {depth} and {dlq_alarm} on the subscribed queue", notified, 30)


def test_localstack_publishes_no_message_age(deployed: dict[str, str]) -> None:
    """Why the age alarm is proven with put datapoints: LocalStack never publishes the age.

    If this starts failing, LocalStack publishes it now: the test above
    can then rely on a real backlog's age.
    """
    cw = _client("cloudwatch")
    published = cw.list_metrics(Namespace="AWS/SQS", MetricName="ApproximateAgeOfOldestMessage",
                                Dimensions=[{"Name": "QueueName",
                                             "Value": queue("incoming").sqs_name(
                                                 deployed["prefix"])}])["Metrics"]
    assert published == []


def test_the_template_deploys_over_a_stage_an_earlier_run_made_through_the_api(
        localstack: str, template_files: dict[str, Any]) -> None:
    """``fmn up`` without a template creates the topic and alarms through the API; a later
    ``fmn up`` with one (``make run`` writes it) must still deploy it: the API-made topic
    has other attributes than the template's, and CloudFormation refused to create it."""
    from fmn.local import messaging
    from fmn.ops.alarms import ensure_alarms

    prefix = f"t{uuid.uuid4().hex[:8]}-"
    cfn, s3, sns = _client("cloudformation"), _client("s3"), _client("sns")
    ensure_alarms(_client("cloudwatch"), sns, prefix)
    try:
        outputs = messaging.deploy(cfn, template_files["messaging"], prefix, sns=sns)
        status = cfn.describe_stacks(StackName=messaging.stack_name(prefix))["Stacks"][0]
        assert status["StackStatus"] == "CREATE_COMPLETE"
        assert outputs["AlarmTopicArn"].endswith(f":{prefix}alarms")
    finally:
        messaging.remove(cfn, s3, prefix)
        cw = _client("cloudwatch")
        cw.delete_alarms(AlarmNames=[a.name for a in alarms.messaging_alarms(prefix)])
        for topic in sns.list_topics()["Topics"]:
            if topic["TopicArn"].endswith(f":{prefix}alarms"):
                sns.delete_topic(TopicArn=topic["TopicArn"])


def test_the_emulator_publishes_queue_depth_but_not_per_request_metrics(localstack: str) -> None:
    """``scripts/localstack_runtime.py`` turns off SQS's per-request metrics (two or three
    internal PutMetricData calls for each SQS call: most of the emulator's CPU under load)
    and keeps the depth metrics the alarms watch."""
    sqs, cw = _client("sqs"), _client("cloudwatch")
    name = f"t{uuid.uuid4().hex[:8]}-metrics"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    try:
        sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "MessageBody": "x"} for i in range(3)])
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1)["Messages"]
        sqs.delete_message(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
        sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)
        names: set[str] = set()
        deadline = time.monotonic() + 30  # depth metrics every 5 s
        while "ApproximateNumberOfMessagesVisible" not in names and time.monotonic() < deadline:
            time.sleep(1)
            names = {m["MetricName"] for m in cw.list_metrics(
                Namespace="AWS/SQS", Dimensions=[{"Name": "QueueName", "Value": name}])["Metrics"]}
        assert "ApproximateNumberOfMessagesVisible" in names, names
        per_request = names & {"NumberOfMessagesSent", "SentMessageSize",
                               "NumberOfMessagesReceived", "NumberOfEmptyReceives",
                               "NumberOfMessagesDeleted"}
        assert not per_request, (
            f"{per_request}: was LocalStack started by scripts/localstack.sh "
            "(scripts/localstack_runtime.py)?")
    finally:
        sqs.delete_queue(QueueUrl=url)
