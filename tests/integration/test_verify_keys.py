"""The verification state port: Redis and the in-memory fake answer alike."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fakes import FakeClock
from services import prefixed_keys, redis_client

from fmn.web.verify import MemoryKeys

pytestmark = pytest.mark.integration


@pytest.fixture(params=["redis", "memory"])
def keys(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryKeys(FakeClock(1_000.0))
        return
    client = redis_client()
    prefix = f"fmn-test:{uuid.uuid4().hex[:8]}:"
    yield prefixed_keys(client, prefix)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


def test_a_count_taken_back_keeps_its_window_and_a_gone_one_stays_gone(keys: Any) -> None:
    assert keys.incr("n", 60) == 1 and keys.incr("n", 60) == 2
    keys.decr("n")
    assert keys.get("n") == "1"
    assert keys.incr("n", 60) == 2  # the window still runs from the first
    keys.decr("gone")  # no -1 left behind for ever: the next count starts at one
    assert keys.get("gone") is None and keys.incr("gone", 60) == 1


def test_the_redis_count_taken_back_keeps_its_expiry() -> None:
    client = redis_client()
    prefix = f"fmn-test:{uuid.uuid4().hex[:8]}:"
    keys = prefixed_keys(client, prefix)
    try:
        keys.incr("n", 60)
        keys.decr("n")
        assert 0 < client.ttl(f"{prefix}n") <= 60
        keys.decr("gone")
        assert client.ttl(f"{prefix}gone") == -2  # not created
    finally:
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
