"""The scheduled sync Lambda (functions/sync/app.py) against the local dist-git and FASJSON.

Its settings come from the environment, as on AWS; the schedules are wired
by Chalice; one run reconciles ownership, the other accounts.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from services import REDIS_URL, redis_client
from upstreams import FASJSON_BASE, Upstreams, fasjson_user

from fmn import db
from fmn.local.http import serve
from fmn.local.stack import load_module
from fmn.ownership import store as ostore
from fmn.snapshot import sync
from fmn.snapshot.store import RedisSnapshotStore

pytestmark = pytest.mark.integration

APP_PATH = Path(__file__).resolve().parents[2] / "functions" / "sync" / "app.py"


@pytest.fixture
def sync_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    up = Upstreams(owner_map={"rpms": {"kernel": ["alice", "@kernel-maint"]}},
                   groups={"kernel-maint": ["alice", "bob"]},
                   users={"alice": fasjson_user("alice", ["alice@example.org"], [])})
    url = f"sqlite:///{tmp_path / 'prefs.sqlite'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    db.import_document(engine, {"version": 1, "groups": {}, "owners": {
        "rpms": {}, "containers": {}, "modules": {}, "flatpaks": {}}, "users": [
        {"name": "alice", "enabled": True, "destinations": [], "rules": []}]})
    prefix = f"fmn-test:{uuid.uuid4().hex}:"
    client = redis_client()
    store = RedisSnapshotStore(client, prefix)
    sync.publish_full(engine, store)
    app = load_module(APP_PATH, "fmn_sync_app")
    with serve(up.app(), name="upstreams") as server:
        for name, value in {"FMN_DATABASE_URL": url, "REDIS_URL": REDIS_URL,
                            "FMN_SNAPSHOT_PREFIX": prefix, "FMN_DISTGIT_URL": server.url,
                            "FMN_FASJSON_URL": server.url + FASJSON_BASE,
                            "FMN_FASJSON_AUTH": "none",
                            "POWERTOOLS_METRICS_DISABLED": "true"}.items():
            monkeypatch.setenv(name, value)
        app.reset()
        app.engine_for_test = engine  # type: ignore[attr-defined]
        yield app
        app.reset()
    keys = list(client.scan_iter(match=store.prefix + "*"))
    if keys:
        client.delete(*keys)


def test_the_schedules_and_one_run_of_each(sync_app: ModuleType) -> None:
    schedules = {s.name: s.schedule_expression.to_string() for s in sync_app.app.event_sources}
    assert schedules == {"sync_ownership": "cron(0 * * * ? *)",
                         "sync_accounts": "cron(30 * * * ? *)"}
    report = sync_app.sync_ownership_now()
    assert report["ok"] and report["artifacts_changed"] == 1 and report["groups_changed"] == 1
    report = sync_app.sync_accounts_now()
    assert report["ok"] and report["accounts_changed"] == 1
    assert sync_app.sync_accounts_now() is None  # one pass a day
    engine = sync_app.engine_for_test
    assert ostore.members_of(engine, ["kernel-maint"]) == {"kernel-maint": ("alice", "bob")}
    assert ostore.account_of(engine, "alice") is not None


class LambdaContext:
    """Lambda's context as the function sees it: 15 minutes at the start, then
    ``later_s`` at every later look."""

    def __init__(self, later_s: float) -> None:
        self.looks, self.later_s = 0, later_s

    def get_remaining_time_in_millis(self) -> int:
        self.looks += 1
        return 900_000 if self.looks == 1 else int(self.later_s * 1000)


def test_a_run_near_its_timeout_starts_no_get_it_could_not_finish(
        sync_app: ModuleType) -> None:
    # 250 s left: less than three tries of a 60 s GET, two waits and the write
    report = sync_app.sync_ownership_now(LambdaContext(later_s=250))
    assert report["ok"] and report["artifacts_changed"] == 1
    assert report["not_reached"] == 1 and report["resume_from"] == "kernel-maint"
    engine = sync_app.engine_for_test
    assert ostore.members_of(engine, ["kernel-maint"]) == {}
    report = sync_app.sync_ownership_now(LambdaContext(later_s=400))  # time enough
    assert report["ok"] and report["groups_changed"] == 1 and report["resume_from"] is None

    report = sync_app.sync_accounts_now(LambdaContext(later_s=250))
    assert report["ok"] and report["fetched"] == 0 and report["resume_from"] == "alice"
    assert "resume_from" in ostore.sync_states(engine)["accounts"]["detail"]
    report = sync_app.sync_accounts_now(LambdaContext(later_s=400))  # the same pass, on
    assert report["ok"] and report["accounts_changed"] == 1 and report["resume_from"] is None
    assert sync_app.sync_accounts_now(LambdaContext(later_s=400)) is None
