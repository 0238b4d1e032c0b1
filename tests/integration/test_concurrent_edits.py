"""Concurrent edits of one user's preferences, on PostgreSQL and SQLite: none is lost.

Every edit is read-modify-write of the whole user; the save goes through only
if the user is still at the revision it read, and an edit that lost the race
is redone from a fresh read.  So twelve rules created at once are twelve
rules (or a 409 for any that could not get through: never a 201 for a rule
that is then missing), and an edit that was in flight while the person
unsubscribed, or an admin disabled them, does not quietly undo that.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from services import postgres_database, postgres_schema
from sqlalchemy import Engine

from fmn import db
from fmn.prefs import Preferences
from fmn.snapshot import compile_snapshot
from fmn.snapshot.store import MemorySnapshotStore
from fmn.web.service import Conflict, PreferencesService

pytestmark = pytest.mark.integration

RULE: dict[str, Any] = {
    "name": "Koji", "enabled": True,
    "tracking": {"kind": "topics", "params": {"patterns": ["*.buildsys.*"]}},
    "generation_rules": [{"filters": {}, "destinations": ["email"]}]}


@pytest.fixture(scope="module")
def postgres() -> Iterator[Any]:
    yield from postgres_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "postgresql":
        yield from postgres_schema(request.getfixturevalue("postgres"))
        return
    engine = db.make_engine(f"sqlite:///{tmp_path / 'edits.sqlite'}")
    db.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def service(engine: Engine) -> PreferencesService:
    store = MemorySnapshotStore()
    store.publish(compile_snapshot(Preferences()))
    svc = PreferencesService(engine, store, admins=frozenset({"root"}))
    svc.login("alice", "alice@example.org")
    return svc


def test_rules_created_at_once_are_all_kept(service: PreferencesService) -> None:
    created: list[str] = []
    refused: list[Conflict] = []
    failed: list[BaseException] = []
    start = threading.Barrier(12)

    def create(i: int) -> None:
        start.wait()
        try:
            created.append(service.create_rule("alice", {**RULE, "name": f"rule {i}"}).id)
        except Conflict as exc:
            refused.append(exc)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failed.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failed == []
    assert len(created) + len(refused) == 12 and len(created) >= 1
    stored = {r.id for r in service.rules("alice")}
    assert set(created) <= stored  # every rule answered 201 is there
    assert len(stored) == 2 + len(created)  # the two first-login rules, and no others


def test_an_edit_in_flight_does_not_undo_an_unsubscribe_or_a_disable(
        service: PreferencesService) -> None:
    load = service._load
    interleaved: list[str] = []

    def load_then_others_save(name: str) -> Any:
        found = load(name)
        if not interleaved:  # another request saves between this read and its save
            interleaved.append(name)
            service.unsubscribe("alice", "email")
            service.disable_user("root", "alice")
        return found

    service._load = load_then_others_save  # type: ignore[method-assign]
    renamed = service.patch_rule("alice", "my-packages", {"name": "Mine"})
    assert renamed.name == "Mine" and interleaved == ["alice"]
    user = service.user("alice")
    assert user.enabled is False
    assert [(d.id, d.verified) for d in user.destinations] == [("email", False)]
    assert {r.id: r.name for r in user.rules}["my-packages"] == "Mine"


def test_first_logins_at_once_make_one_account(service: PreferencesService) -> None:
    made: list[int] = []
    failed: list[BaseException] = []
    start = threading.Barrier(8)

    def login() -> None:
        start.wait()
        try:
            made.append(len(service.login("newcomer", "newcomer@example.org").rules))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failed.append(exc)

    threads = [threading.Thread(target=login) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failed == [] and made == [2] * 8
    assert [r.id for r in service.rules("newcomer")] == ["my-packages", "my-events"]


def test_an_edit_that_keeps_losing_saves_nothing_and_leaves_nothing_behind(
        service: PreferencesService, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def always_stale(*args: Any, **kwargs: Any) -> int:
        raise db.StaleUser("another request saved first")

    monkeypatch.setattr(db, "save_user", always_stale)
    with pytest.raises(Conflict):
        service.create_rule("alice", RULE)
    with pytest.raises(Conflict):  # the mark that keeps it disabled is taken back
        service.disable_rule("root", "alice", "my-packages")
    with pytest.raises(Conflict):
        service.disable_user("root", "alice")
    assert "admin root disabled" not in caplog.text  # nothing was disabled
    monkeypatch.undo()
    assert len(service.rules("alice")) == 2 and service.user("alice").enabled
    off = service.patch_rule("alice", "my-packages", {"enabled": False})
    assert service.patch_rule("alice", "my-packages", {"enabled": True}).enabled
    assert not off.enabled
    service.disable_rule("root", "alice", "my-packages")  # and when it does get through
    assert "admin root disabled rule my-packages of alice" in caplog.text
    with pytest.raises(Conflict):
        service.patch_rule("alice", "my-packages", {"enabled": True})


def test_a_disable_saved_is_kept_whatever_fails_after_or_beside_it(
        service: PreferencesService, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import OperationalError

    from fmn.db import pending

    service.login("bob", "bob@example.org")
    # the database fails right after the save committed (clearing the pending row):
    # saved is saved, so the disable stands, with its mark
    real_clear = pending.clear

    def fails(*args: Any) -> None:
        raise OperationalError("DELETE", {}, Exception("server closed the connection"))

    monkeypatch.setattr(pending, "clear", fails)
    assert service.disable_rule("root", "alice", "my-packages").enabled is False
    monkeypatch.setattr(pending, "clear", real_clear)
    with pytest.raises(Conflict):
        service.patch_rule("alice", "my-packages", {"enabled": True})
    # two admins at once: B's disable gets through while A's fails; A must not take
    # back the mark B's disable relies on
    disable_once = service._disable_rule

    def b_wins_then_a_fails(admin: str, target: str, rule_id: str) -> Any:
        disable_once("root", target, rule_id)  # B, to completion
        raise Conflict("A lost every race")

    monkeypatch.setattr(service, "_disable_rule", b_wins_then_a_fails)
    with pytest.raises(Conflict):
        service.disable_rule("root", "bob", "my-events")
    monkeypatch.undo()
    assert {r.id: r.enabled for r in service.rules("bob")}["my-events"] is False
    with pytest.raises(Conflict):  # the mark is there: bob cannot turn it back on
        service.patch_rule("bob", "my-events", {"enabled": True})
