"""``fmn doctor`` and the alarms the local stack creates, against real services.

A stage is set up as ``fmn up`` sets it up (SQLite preferences, a snapshot in
the real Redis, the pipeline's queues and messaging alarms on the emulator),
under names of its own.  The doctor then says ``ok`` on every line and exits
0; each way of breaking the stage (a queue drifting from its definition, a
dead letter, a missing alarm, a preference change that never reached the
snapshot, Redis away) turns exactly its own line to ``warn`` or ``fail``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from services import REDIS_URL, redis_client

from fmn import db
from fmn.aws import client
from fmn.cli import main
from fmn.generate import generate_preferences
from fmn.local.aws import ensure_queues
from fmn.ops.alarms import MISSING, alarm_states, ensure_alarms
from fmn.pipeline.alarms import messaging_alarms
from fmn.pipeline.queues import QUEUES
from fmn.settings import Settings
from fmn.snapshot.store import RedisSnapshotStore
from fmn.snapshot.sync import publish_full

pytestmark = pytest.mark.integration


@pytest.fixture
def stage(any_aws_env: str, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    tag = uuid4().hex[:8]
    settings = replace(Settings.from_env(), database_url=f"sqlite:///{tmp_path / 'p.sqlite'}",
                       redis_url=REDIS_URL, snapshot_prefix=f"fmn-test:{tag}:snapshot:",
                       queue_prefix=f"doc{tag}-")
    for var, value in (("FMN_DATABASE_URL", settings.database_url), ("REDIS_URL", REDIS_URL),
                       ("FMN_SNAPSHOT_PREFIX", settings.snapshot_prefix),
                       ("FMN_QUEUE_PREFIX", settings.queue_prefix)):
        monkeypatch.setenv(var, value)
    redis = redis_client()
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    db.import_preferences(engine, generate_preferences(40, 2))
    publish_full(engine, RedisSnapshotStore(redis, settings.snapshot_prefix))
    engine.dispose()
    sqs, cloudwatch = client("sqs", settings), client("cloudwatch", settings)
    ensure_queues(sqs, settings.queue_prefix)
    ensure_alarms(cloudwatch, client("sns", settings), settings.queue_prefix)
    try:
        yield settings
    finally:
        names = [a.name for a in messaging_alarms(settings.queue_prefix)]
        cloudwatch.delete_alarms(AlarmNames=names)
        for url in sqs.list_queues(QueueNamePrefix=settings.queue_prefix).get("QueueUrls", []):
            sqs.delete_queue(QueueUrl=url)
        keys = list(redis.scan_iter(match=f"fmn-test:{tag}:*"))
        if keys:
            redis.delete(*keys)


def _doctor(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, dict[str, str]]]:
    status = main(["doctor", "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return status, {c["check"]: c for c in lines}


def test_a_healthy_stage_then_each_fault_on_its_own_line(
        stage: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    status, checks = _doctor(capsys)
    assert list(checks) == ["redis", "database", *(f"queue {q.name}" for q in QUEUES),
                            "alarms", "snapshot", "mail from"]
    assert {c["status"] for c in checks.values()} == {"ok"}, checks
    assert status == 0
    assert "40 users" in checks["database"]["detail"]
    _the_alarms_are_the_definitions(stage)

    sqs = client("sqs", stage)
    email = sqs.get_queue_url(QueueName=f"{stage.queue_prefix}email")["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=email, Attributes={"VisibilityTimeout": "7"})
    dlq = sqs.get_queue_url(QueueName=f"{stage.queue_prefix}sse-dlq")["QueueUrl"]
    sqs.send_message(QueueUrl=dlq, MessageBody="{}")
    client("cloudwatch", stage).delete_alarms(AlarmNames=[f"{stage.queue_prefix}irc-age"])
    engine = db.make_engine(stage.database_url)
    user = db.load_preferences(engine).users[0]
    db.save_user(engine, replace(user, enabled=not user.enabled))  # not published
    engine.dispose()

    status, checks = _doctor(capsys)
    assert status == 1
    bad = {name: c["status"] for name, c in checks.items() if c["status"] != "ok"}
    assert bad == {"queue email": "fail", "queue sse": "warn", "alarms": "fail",
                   "snapshot": "fail"}, checks
    assert "visibility timeout 7 s" in checks["queue email"]["detail"]
    assert "1 dead letters" in checks["queue sse"]["detail"]
    assert f"{stage.queue_prefix}irc-age" in checks["alarms"]["detail"]
    assert user.name in checks["snapshot"]["detail"]


def test_a_sender_address_the_senders_refuse_fails_its_line(
        stage: Settings, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FMN_MAIL_FROM", "Fedora Notifications")  # no address
    status, checks = _doctor(capsys)
    assert status == 1
    assert {n for n, c in checks.items() if c["status"] != "ok"} == {"mail from"}
    assert "FMN_MAIL_FROM must be one e-mail address" in checks["mail from"]["detail"]


def test_redis_away_fails_its_lines_and_the_rest_answer(
        stage: Settings, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    status, checks = _doctor(capsys)
    assert status == 1
    assert checks["redis"]["status"] == checks["snapshot"]["status"] == "fail"
    assert checks["database"]["status"] == checks["queue incoming"]["status"] == "ok"


def _the_alarms_are_the_definitions(stage: Settings) -> None:
    cloudwatch = client("cloudwatch", stage)
    expected = messaging_alarms(stage.queue_prefix)
    states = alarm_states(cloudwatch, expected)
    assert [s.name for s in states] == [a.name for a in expected]
    assert MISSING not in {s.state for s in states}
    described: dict[str, Any] = {a["AlarmName"]: a for a in cloudwatch.describe_alarms(
        AlarmNames=[a.name for a in expected][:100])["MetricAlarms"]}
    age = described[f"{stage.queue_prefix}incoming-age"]
    assert (age["MetricName"], age["Namespace"]) == ("ApproximateAgeOfOldestMessage", "AWS/SQS")
    assert age["Dimensions"] == [{"Name": "QueueName", "Value": f"{stage.queue_prefix}incoming"}]
    assert age["AlarmActions"] and age["AlarmActions"][0].endswith(f"{stage.queue_prefix}alarms")
