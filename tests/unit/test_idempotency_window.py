"""A dead letter re-driven at any time while SQS holds it sends nothing twice.

The senders remember each send for ``Settings.idempotency_ttl_s``; a record
carrying that send can exist for the dead-letter queue's retention (from its
first enqueue) and then, re-driven, a whole queue retention again; a
postponed one goes round for up to a day first, may wait a queue retention,
and is then put on the dead-letter queue afresh.
"""

from __future__ import annotations

import pytest

from fmn.local.aws import DLQ_RETENTION_S as DEPLOYED_DLQ_RETENTION_S
from fmn.pipeline.queues import DLQ_RETENTION_S, QUEUES, idempotency_window_s
from fmn.pipeline.redelivery import MAX_POSTPONED_S
from fmn.settings import Settings

pytestmark = pytest.mark.unit


def test_sends_are_remembered_as_long_as_a_redriven_record_can_carry_them() -> None:
    ttl = Settings().idempotency_ttl_s
    for q in QUEUES:
        assert ttl >= MAX_POSTPONED_S + q.retention_s + DLQ_RETENTION_S + q.retention_s, q.name
    assert ttl == 23 * 24 * 3600  # what the READMEs and docs say


def test_the_window_follows_the_queue_definitions() -> None:
    assert DEPLOYED_DLQ_RETENTION_S == DLQ_RETENTION_S
    assert Settings.from_env({}).idempotency_ttl_s == idempotency_window_s()
    assert Settings.from_env({"FMN_IDEMPOTENCY_TTL_S": "60"}).idempotency_ttl_s == 60
    # dead letters outlive the records of every source queue
    assert all(q.retention_s <= DLQ_RETENTION_S for q in QUEUES)


@pytest.mark.parametrize("function", ["send_email", "send_irc", "send_matrix", "sse"])
def test_every_deployed_sender_remembers_its_sends_for_the_whole_window(function: str) -> None:
    # each sender's .chalice/config.json once set FMN_IDEMPOTENCY_TTL_S to 4 days, and
    # Chalice merges a stage's variables into the top level's: on AWS a redrive after
    # four days sent everything again
    from pathlib import Path

    from chalice.cli.factory import CLIFactory

    project = Path(__file__).resolve().parents[2] / "functions" / function
    for stage in ("dev", "prod"):
        config = CLIFactory(str(project)).create_config_obj(stage)
        env = config.environment_variables
        assert Settings.from_env(env).idempotency_ttl_s >= idempotency_window_s(), (stage, env)
