"""Reaching the real services the integration tests talk to.

Locally a missing service skips its tests with the reason; in CI (``CI`` set)
it fails them, so a green CI always means the real thing was exercised.
"""

from __future__ import annotations

import os
from typing import Any

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


POSTGRES_URL = os.environ.get("FMN_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def postgres_database():  # type: ignore[no-untyped-def]
    """A fresh PostgreSQL database for a test module, dropped after it (a generator
    for a fixture to ``yield from``); its URL is what it yields."""
    import uuid

    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from fmn import db

    admin = db.make_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"fmn_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        unavailable(f"PostgreSQL at {POSTGRES_URL}", exc)
    try:
        yield admin.url.set(database=name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_schema(database):  # type: ignore[no-untyped-def]
    """An engine on a schema of its own in ``database``, migrated to head, dropped after
    (a generator for a fixture to ``yield from``)."""
    import uuid

    from sqlalchemy import text

    from fmn import db

    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = db.make_engine(database, connect_args={"options": f"-c search_path={schema}"})
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    db.upgrade(engine)
    try:
        yield engine
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def prefixed_keys(client, prefix: str):  # type: ignore[no-untyped-def]
    """The web app's verification :class:`~fmn.web.verify.RedisKeys` on ``client``, every
    key under ``prefix`` (a test's own, removed with the rest of its keys)."""
    from fmn.web.verify import RedisKeys

    class PrefixedKeys(RedisKeys):
        def __init__(self, client: Any) -> None:
            super().__init__(client)
            self.prefix = prefix

        def add(self, key: str, value: str, ttl_s: int) -> bool:
            return super().add(prefix + key, value, ttl_s)

        def put(self, key: str, value: str, ttl_s: int) -> None:
            super().put(prefix + key, value, ttl_s)

        def get(self, key: str) -> str | None:
            return super().get(prefix + key)

        def delete(self, key: str) -> None:
            super().delete(prefix + key)

        def incr(self, key: str, ttl_s: int) -> int:
            return super().incr(prefix + key, ttl_s)

        def decr(self, key: str) -> None:
            super().decr(prefix + key)

        def touch(self, key: str, ttl_s: int) -> None:
            super().touch(prefix + key, ttl_s)

    return PrefixedKeys(client)
