"""A short load test through the whole local stack: the counts add up, not the timings.

A few hundred re-keyed messages at one concurrency, on the test session's
moto server (any emulator does: counts do not depend on its speed): every
message published is matched, the ledger accounts for every notification
with none lost or duplicated, the report's figures are there and consistent,
and the run leaves nothing of its own behind (queues, alarms, topic, bucket, keys).
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from services import redis_client

pytestmark = pytest.mark.e2e

USERS = 500


# AMQP carries the fedora-messaging messages alone (a fedmsg envelope published there
# had no body and was dead-lettered, and that run never drained); fewer, to keep it short
# On LocalStack (real long polls) the email sender runs in two processes sharing its queue.
@pytest.mark.parametrize(("bus", "messages", "aws"), [
    ("fedmsg", 200, "moto"), ("amqp", 100, "moto"), ("fedmsg", 200, "localstack")])
def test_a_short_load_test_accounts_for_every_message(
        request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        bus: str, messages: int, aws: str) -> None:
    from loadtest.cli import run
    from loadtest.run import Options

    aws_env: str = request.getfixturevalue("aws_env" if aws == "moto" else "localstack_env")
    redis_client()
    opts = Options(messages=messages, concurrencies=(1,), users=USERS, aws=aws,
                   aws_endpoint=aws_env, workdir=tmp_path, timeout_s=600, ceiling_s=1.0,
                   seed=3, bus=bus, email_processes=2)
    plots = bus == "fedmsg" and aws == "moto"
    status = run(opts, plots=plots)
    out = capsys.readouterr().out
    assert status == 0, out
    for words in ("Lasted for", "Maxed at:", "Avg processing:", "SQS requests per bus message",
                  "emulator ceiling", "mail sink ceiling", "per million bus messages"):
        assert words in out

    report = json.loads((tmp_path / "report.json").read_text())
    (run_, ) = report["runs"]
    assert run_["drained"]
    ledger = run_["ledger"]
    assert ledger["ok"] and ledger["published"] == ledger["matched"] == messages
    assert ledger["lost_total"] == ledger["duplicates_total"] == 0
    stages = {s["stage"]: s for s in run_["stages"]}
    assert stages["bus -> incoming queue"]["count"] == messages
    # a message reaches the queue after it was published (SQS stamps in milliseconds):
    # publish times journalled per batch, late, made the median negative on AMQP
    assert stages["bus -> incoming queue"]["p50"] >= -0.002
    assert stages["match (incoming -> backend queues)"]["count"] == messages
    email = ledger["backends"]["email"]
    # every direct mail in the sink was timed once, as the ledger counted them delivered
    assert stages["email queue -> mail"]["count"] == email["delivered"] > 0
    assert stages["sse queue -> feed event"]["count"] == ledger["backends"]["sse"]["delivered"]
    assert 0 < run_["sqs_requests_per_message"] < 3
    assert run_["invocations_per_message"] > 0
    # the email sender ran in a process of its own and reported its totals and requests
    assert run_["functions"]["send_email"]["records"] > 0
    assert run_["cpu_s"]["send_email (own process)"] > 0
    # the emulator's process is found, whichever command line started it
    assert "AWS emulator" in run_["cpu_s"]
    if aws == "localstack":  # and a second one, whose totals and requests add up with it
        assert run_["cpu_s"]["send_email (own process 2)"] > 0
        assert (tmp_path / "c1" / "worker-email-2-stats.json").exists()
    else:
        assert "send_email (own process 2)" not in run_["cpu_s"]
    assert run_["sqs_requests_by_stage_per_message"]["send_email event source -> email"] > 0
    # the sink's ceiling is measured on a sink of its own: the run's mails stay the run's
    assert run_["mail_ceiling_per_s"] > 0
    assert not (tmp_path / "c1" / "ceiling-mail").exists()
    for png in ("throughput.png", "backlog-c1.png", "latency.png") if plots else ():
        assert (tmp_path / png).stat().st_size > 1000

    prefix = json.loads((tmp_path / "c1" / "ledger" / "stack.json").read_text())["queue_prefix"]
    sqs = boto3.client("sqs", endpoint_url=aws_env)
    assert not sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls"), "queues left behind"
    # nothing of the run's stays on an emulator the machine shares
    alarms = boto3.client("cloudwatch", endpoint_url=aws_env).describe_alarms(
        AlarmNamePrefix=prefix)["MetricAlarms"]
    assert not alarms, "alarms left behind"
    topics = boto3.client("sns", endpoint_url=aws_env).list_topics()["Topics"]
    assert not [t for t in topics if f":{prefix}" in t["TopicArn"]], "alarm topic left behind"
    buckets = boto3.client("s3", endpoint_url=aws_env).list_buckets()["Buckets"]
    assert not [b for b in buckets if b["Name"] == f"lt-claims-{prefix[2:-1]}"], \
        "claim bucket left behind"
    assert not list(redis_client().scan_iter(match=f"{prefix}*")), "Redis keys left behind"
