"""The preview window on a real Redis stream: append, caps, incremental reload.

The same checks run against the in-memory fake, so that the fake the unit
tests use behaves like Redis.  Redis trims with ``~`` (whole stream nodes), so
the store may hold a few more entries than the cap; the index applies the
caps exactly, and that is what a preview sees.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from services import redis_client
from shared_data import golden_messages

from fmn.message import Message
from fmn.prefs import Filters, GenerationRule, Rule, Tracking
from fmn.preview import MemoryWindowStore, PreviewIndex, RedisWindowStore, record, record_many
from fmn.preview.window import WindowStore, encode
from fmn.redisconn import connect

pytestmark = pytest.mark.integration

MESSAGES = golden_messages()
EVERYTHING = Rule("r", "all", True, Tracking("topics", patterns=("*",)), (GenerationRule(
    Filters(severities=("DEBUG", "INFO", "WARNING", "ERROR"), my_actions=True), ("d",)),))
Factory = Callable[..., WindowStore]


def _numbered(n: int, start: int = 0) -> list[Message]:
    return [dataclasses.replace(MESSAGES[i % len(MESSAGES)], id=f"m{i}")
            for i in range(start, start + n)]


@pytest.fixture(params=["memory", "redis", "cluster"])
def make_store(request: pytest.FixtureRequest) -> Iterator[Factory]:
    if request.param == "memory":
        yield lambda **kw: MemoryWindowStore(**kw)
        return
    client = (redis_client() if request.param == "redis"
              else connect(request.getfixturevalue("redis_cluster_url")))
    keys: list[str] = []

    def make(**kw: object) -> WindowStore:
        keys.append(f"fmn:test:preview:{uuid.uuid4().hex}")
        return RedisWindowStore(client, key=keys[-1], **kw)  # type: ignore[arg-type]

    yield make
    for key in keys:
        client.delete(key)


def test_append_and_read_back_in_order(make_store: Factory) -> None:
    store = make_store()
    record_many(store, _numbered(30))
    record(store, _numbered(1, start=30)[0])
    got = store.read("0-0", 100)
    assert [e.meta for _, e in got] == [encode(m).meta for m in _numbered(31)]
    assert [e.body for _, e in got] == [encode(m).body for m in _numbered(31)]
    positions = [p for p, _ in got]
    assert store.read(positions[9], 5) == got[10:15]
    assert store.read(positions[-1], 5) == []


def test_the_window_is_capped_by_count(make_store: Factory) -> None:
    store = make_store(max_count=100)
    for start in range(0, 1000, 100):
        record_many(store, _numbered(100, start=start))
    held = store.read("0-0", 10_000)
    # Redis trims whole nodes (MAXLEN ~): never fewer than the cap, not many more
    assert 100 <= len(held) < 300
    assert held[-1][1].meta == encode(_numbered(1, start=999)[0]).meta
    index = PreviewIndex(max_count=100)
    index.refresh(store)
    assert index.message_ids() == [f"m{i}" for i in range(900, 1000)]


def test_the_window_is_capped_by_age(make_store: Factory) -> None:
    now = [time.time()]
    store = make_store(max_age_s=3600, clock=lambda: now[0])
    index = PreviewIndex(max_age_s=3600, clock=lambda: now[0])
    if isinstance(store, RedisWindowStore):
        # entries appended two hours ago (Redis stamps XADD * with its own clock)
        old_ms = int((now[0] - 7200) * 1000)
        for i, m in enumerate(_numbered(150)):
            store.client.xadd(store.key, {"m": encode(m).meta}, id=f"{old_ms}-{i}")
    else:
        now[0] -= 7200
        record_many(store, _numbered(150))
        now[0] += 7200
    index.refresh(store)
    assert len(index) == 0  # the index drops what is too old, whatever the store holds
    record_many(store, _numbered(20, start=150))
    held = store.read("0-0", 10_000)
    assert len(held) < 170  # MINID ~ trimmed the old entries (whole nodes of them)
    index = PreviewIndex(max_age_s=3600, clock=lambda: now[0])
    index.refresh(store)
    assert index.message_ids() == [f"m{i}" for i in range(150, 170)]


def test_incremental_reload_reads_only_new_entries(make_store: Factory) -> None:
    store = make_store(max_count=500)
    index = PreviewIndex(max_count=500)
    record_many(store, _numbered(400))
    assert index.refresh(store) == 400
    assert index.refresh(store) == 0
    record_many(store, _numbered(250, start=400))
    assert index.refresh(store) == 250
    assert index.message_ids() == [f"m{i}" for i in range(150, 650)]
    got = index.preview(EVERYTHING, "nobody", limit=3)
    assert got.count == 500
    assert [m.id for m in got.matches] == ["m649", "m648", "m647"]


def test_reading_a_large_window_goes_in_chunks(make_store: Factory) -> None:
    store = make_store()
    record_many(store, _numbered(2_500))
    index = PreviewIndex()
    from fmn.preview import window

    chunks: list[int] = []
    read = store.read

    def counting(after: str, count: int) -> list:  # type: ignore[type-arg]
        got = read(after, count)
        chunks.append(len(got))
        return got

    store.read = counting  # type: ignore[method-assign]
    index.add(window.read_all(store, chunk=1000))
    assert chunks == [1000, 1000, 500]
    assert len(index) == 2_500
