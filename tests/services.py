"""Reaching the real services the integration tests talk to.

Locally a missing service skips its tests with the reason; in CI (``CI`` set)
it fails them, so a green CI always means the real thing was exercised.
"""

from __future__ import annotations

import os

import pytest

REDIS_URL = os.environ.get("FMN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unavailable(what: str, exc: BaseException) -> None:
    reason = f"{what} is not reachable: {type(exc).__name__}: {exc}"
    if os.environ.get("CI"):
        pytest.fail(reason + " (CI must start it: scripts/services.sh)")
    pytest.skip(reason)


def redis_client():  # type: ignore[no-untyped-def]
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {REDIS_URL}", exc)
    return client


AMQP_URL = os.environ.get("FMN_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def rabbitmq_connection():  # type: ignore[no-untyped-def]
    """A pika BlockingConnection to the test RabbitMQ (skip locally, fail in CI)."""
    import pika
    import pika.exceptions

    try:
        return pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    except pika.exceptions.AMQPError as exc:
        unavailable(f"RabbitMQ at {AMQP_URL}", exc)
