"""The messaging and observability template, deployed by ``fmn up`` to LocalStack.

``infra/`` synthesizes the messaging stack (queues, dead-letter queues, the
claim bucket, the alarms, their SNS topic, a dashboard) into
``infra/cdk.out/<stage>-messaging.template.json``; its ``QueuePrefix``
parameter names every resource, so one template serves every stage.  On
LocalStack ``fmn up`` deploys that very template through CloudFormation
(:func:`deploy`), so the local stack runs what production runs.  Where the
template has not been synthesized, or on the moto server (whose
CloudFormation silently skips alarms), the stack creates the same queues and
alarms through the API from the same definitions instead
(:mod:`fmn.local.aws`, :mod:`fmn.ops.alarms`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fmn.settings import Settings

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]
_DONE = ("CREATE_COMPLETE", "UPDATE_COMPLETE")
_FAILED_AT_BIRTH = ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED", "DELETE_FAILED")


class DeployFailed(RuntimeError):
    """The template did not deploy; the message says how it ended."""


def find_template(root: Path = ROOT) -> Path | None:
    """The synthesized messaging template (``make synth``), if there is one."""
    found = sorted((root / "infra" / "cdk.out").glob("*messaging.template.json"))
    return found[0] if found else None


def stack_name(prefix: str) -> str:
    """The stage's CloudFormation stack (``fmn-messaging`` for the prefix ``fmn-``)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", f"{prefix}messaging").lstrip("-0123456789") or \
        "fmn-messaging"


def _status(cloudformation: Any, name: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        stack: dict[str, Any] = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
    except ClientError as exc:
        if "does not exist" in str(exc.response.get("Error", {}).get("Message", "")):
            return None
        raise
    return stack


def clear_api_topic(sns: Any, prefix: str) -> bool:
    """Before the stack is first created: delete the stage's alarm topic that an earlier
    run made through the API (no template then), whose attributes differ from the
    template's, so that CloudFormation can create its own; True when one was deleted."""
    from fmn.ops.alarms import topic_name

    suffix = f":{topic_name(prefix)}"
    for page in sns.get_paginator("list_topics").paginate():
        for topic in page.get("Topics", []):
            if topic["TopicArn"].endswith(suffix):
                sns.delete_topic(TopicArn=topic["TopicArn"])
                return True
    return False


def _wait(cloudformation: Any, name: str, timeout_s: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout_s
    while True:
        stack = _status(cloudformation, name)
        if stack is None or not stack["StackStatus"].endswith("_IN_PROGRESS"):
            return stack
        if time.monotonic() > deadline:
            raise DeployFailed(f"stack {name} still {stack['StackStatus']} after "
                               f"{timeout_s:.0f}s")
        time.sleep(0.5)


def deploy(cloudformation: Any, template: Path, prefix: str,
           parameters: dict[str, str] | None = None, timeout_s: float = 180.0,
           sns: Any = None) -> dict[str, str]:
    """Create or update the stage's messaging stack from ``template``; its outputs.

    Idempotent: an existing stack is updated (nothing to update is fine); one
    left in a failed creation is deleted first, as CloudFormation requires.
    With ``sns``, the alarm topic an earlier run made through the API is deleted
    before the stack is first created (:func:`clear_api_topic`).
    """
    from botocore.exceptions import ClientError

    name = stack_name(prefix)
    params = [{"ParameterKey": k, "ParameterValue": v}
              for k, v in {"QueuePrefix": prefix, **(parameters or {})}.items()]
    body = template.read_text()
    current = _wait(cloudformation, name, timeout_s)
    if current is not None and current["StackStatus"] in _FAILED_AT_BIRTH:
        cloudformation.delete_stack(StackName=name)
        current = _wait(cloudformation, name, timeout_s)
    if current is None or current["StackStatus"] == "DELETE_COMPLETE":
        if sns is not None and clear_api_topic(sns, prefix):
            log.info("deleted the alarm topic an earlier run made through the API")
        cloudformation.create_stack(StackName=name, TemplateBody=body, Parameters=params)
    else:
        try:
            cloudformation.update_stack(StackName=name, TemplateBody=body, Parameters=params)
        except ClientError as exc:
            if "No updates are to be performed" not in str(exc):
                raise
    stack = _wait(cloudformation, name, timeout_s)
    if stack is None or stack["StackStatus"] not in _DONE:
        status = "gone" if stack is None else stack["StackStatus"]
        reason = "" if stack is None else stack.get("StackStatusReason", "")
        raise DeployFailed(f"stack {name} ended {status} {reason}".strip())
    log.info("stack %s: %s", name, stack["StackStatus"])
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def remove(cloudformation: Any, s3: Any, prefix: str, timeout_s: float = 120.0) -> None:
    """Delete the stage's messaging stack and the claim bucket it retains."""
    name = stack_name(prefix)
    stack = _status(cloudformation, name)
    if stack is None:
        return
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    cloudformation.delete_stack(StackName=name)
    _wait(cloudformation, name, timeout_s)
    bucket = outputs.get("ClaimBucketName")
    if bucket:  # kept by its removal policy (claims outlive a stack update)
        _empty_and_delete(s3, bucket)


def _empty_and_delete(s3: Any, bucket: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    s3.delete_bucket(Bucket=bucket)


def remove_stage(settings: Settings) -> None:
    """Delete everything of a stage on the AWS side, however it was made (this template
    or the API): its messaging stack, queues, alarms, alarm topic and claim bucket.

    For stages made for one run on an emulator the machine shares (the load test,
    the tests), which would otherwise pile up there run after run.
    """
    from fmn.aws import client
    from fmn.ops.alarms import topic_name
    from fmn.pipeline.alarms import alarm_names

    prefix = settings.queue_prefix
    s3 = client("s3", settings)
    remove(client("cloudformation", settings), s3, prefix)
    sqs = client("sqs", settings)
    for url in sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", []):
        sqs.delete_queue(QueueUrl=url)
    client("cloudwatch", settings).delete_alarms(AlarmNames=alarm_names(prefix))
    sns = client("sns", settings)
    for page in sns.get_paginator("list_topics").paginate():
        for topic in page.get("Topics", []):
            if topic["TopicArn"].endswith(f":{topic_name(prefix)}"):
                sns.delete_topic(TopicArn=topic["TopicArn"])
    with contextlib.suppress(s3.exceptions.NoSuchBucket):
        _empty_and_delete(s3, settings.claim_bucket)
