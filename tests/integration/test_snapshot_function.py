"""The scheduled snapshot job publishes the whole database into Redis (`fmn snapshot publish`)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from services import REDIS_URL, redis_client
from shared_data import golden_prefs_doc

from fmn import db
from fmn.local.stack import load_module
from fmn.snapshot.store import RedisSnapshotStore

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_scheduled_publish_compiles_the_database_into_redis(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'prefs.sqlite'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    db.import_document(engine, json.loads(golden_prefs_doc()))
    engine.dispose()
    client = redis_client()
    prefix = f"fmn-test:{uuid.uuid4().hex}:"
    monkeypatch.setenv("FMN_DATABASE_URL", url)
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    monkeypatch.setenv("FMN_SNAPSHOT_PREFIX", prefix)
    try:
        app = load_module(ROOT / "functions" / "snapshot" / "app.py", "fmn_function_snapshot")
        users = app.publish()
        assert users > 0
        store = RedisSnapshotStore(client, prefix)
        assert store.current_id() is not None
        store.load()  # a snapshot a matcher can read
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
