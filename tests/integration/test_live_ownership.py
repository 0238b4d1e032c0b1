"""Ownership and membership messages from the bus, through the match function, live.

The real dist-git, pkgdb, noggin and FreeIPA messages of the shared data are
replayed through ``functions/match/app.py`` (Lambda-shaped SQS events, the
moto server's queues, the real Redis, a SQLite preferences database), each
followed in the same batch by a koji build of the package concerned (the
shared data's real build message, renamed: the data has no build of those
packages).  What the maintainers would notice: the build right after the
change reaches the new maintainer and no longer the removed one.  A second
warm matcher (another Lambda container, polling every 0.25 s) is timed until
it routes to the new owner too: the figure is printed, not asserted.

The shared data's pagure messages come from pagure-messages' test suite,
whose project sits in the ``fedora-infra`` namespace; ``FMN_LIVE_NAMESPACES``
takes it as dist-git's ``rpms`` here.  The fedmsg ``pagure.project.new`` of
``rpms/arachne-pnr`` is a real dist-git one and needs nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import boto3
import pytest
from lambda_events import context, sqs_event
from services import REDIS_URL, redis_client
from shared_data import MESSAGES

from fmn import db
from fmn.local.stack import load_module
from fmn.matcher import IndexedMatcher
from fmn.metadata import parse
from fmn.ownership import store as ostore
from fmn.pipeline.envelope import Envelope
from fmn.pipeline.notifications import unpack_all
from fmn.pipeline.queues import QUEUES
from fmn.snapshot import sync
from fmn.snapshot.live import LiveSnapshot
from fmn.snapshot.store import RedisSnapshotStore

pytestmark = pytest.mark.integration

APP_PATH = Path(__file__).resolve().parents[2] / "functions" / "match" / "app.py"
OWNERS = ("pingou", "newu", "dummy", "mprahl", "lmacken", "testuser", "ralph")


@cache
def lines(name: str) -> tuple[bytes, ...]:
    return tuple(line.encode() for line in (MESSAGES / name).read_text().splitlines())


FEDMSG, FM = "fedmsg.jsonl", "fedora-messaging.jsonl"


def find(file: str, topic: str, pick: int = 0) -> bytes:
    found = [r for r in lines(file) if json.loads(r)["topic"] == topic]
    return found[pick]


def build_of(package: str) -> bytes:
    """The shared data's koji build message, about ``package``."""
    doc = json.loads(find(FM, "org.fedoraproject.prod.buildsys.build.state.change"))
    doc["body"]["name"] = package
    doc["id"] = f"build-{package}-{uuid.uuid4().hex[:8]}"
    assert parse(json.dumps(doc).encode()).rpms == {package}
    return json.dumps(doc).encode()


def restamped(record: bytes, sent_at: str) -> bytes:
    """A fedora-messaging record sent again at ``sent_at`` (a new message id)."""
    doc = json.loads(record)
    doc["headers"]["sent-at"] = sent_at
    doc["id"] = str(uuid.uuid4())
    return json.dumps(doc).encode()


def prefs_doc() -> dict[str, Any]:
    return {"version": 1, "owners": {"rpms": {}, "containers": {}, "modules": {},
                                     "flatpaks": {}},
            "groups": {"developers": ["testuser", "someone"], "ambassadors": ["ralph", "x"]},
            "users": [{"name": n, "enabled": True, "destinations": [
                {"id": "feed", "protocol": "sse", "address": None, "verified": True,
                 "digest": None}],
                "rules": [{"id": "mine", "name": "My packages", "enabled": True,
                           "tracking": {"kind": "artifacts-owned", "params": {}},
                           "generation_rules": [{"filters": {"my_actions": True},
                                                 "destinations": ["feed"]}]}]}
                for n in OWNERS]}


@pytest.fixture(scope="module")
def match_app() -> ModuleType:
    return load_module(APP_PATH, "fmn_match_app_live")


@pytest.fixture
def env(aws_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        match_app: ModuleType) -> Iterator[SimpleNamespace]:
    tag = uuid.uuid4().hex[:10]
    prefix, snap_prefix = f"fmn-o{tag}-", f"fmn-test:{tag}:"
    sqs = boto3.client("sqs")
    urls = {q.name: sqs.create_queue(QueueName=q.sqs_name(prefix))["QueueUrl"] for q in QUEUES}
    url = f"sqlite:///{tmp_path / 'prefs.sqlite'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    db.import_document(engine, prefs_doc())
    client = redis_client()
    store = RedisSnapshotStore(client, snap_prefix)
    sync.publish_full(engine, store)
    for name, value in {"REDIS_URL": REDIS_URL, "FMN_SNAPSHOT_PREFIX": snap_prefix,
                        "FMN_QUEUE_PREFIX": prefix, "FMN_DATABASE_URL": url,
                        "FMN_LIVE_NAMESPACES": "fedora-infra=rpms"}.items():
        monkeypatch.setenv(name, value)
    match_app.reset()
    yield SimpleNamespace(sqs=sqs, urls=urls, prefix=prefix, engine=engine, store=store)
    match_app.reset()
    keys = list(client.scan_iter(match=store.prefix + "*"))
    keys += list(client.scan_iter(match=f"fmn:preview:{prefix}*"))
    if keys:
        client.delete(*keys)


def run_batch(match_app: ModuleType, env: SimpleNamespace, records: list[bytes]
              ) -> dict[str, set[str]]:
    """One invocation; message id -> users notified on the live feed queue."""
    bodies = [Envelope.wrap("fedora-messaging" if b'"body"' in r else "fedmsg",
                            "tcp://hub.test:9940", r).encode() for r in records]
    response = match_app.handle_incoming(sqs_event(bodies, f"{env.prefix}incoming"),
                                         context("fmn-match", memory_mb=1024))
    assert response["batchItemFailures"] == []
    routed: dict[str, set[str]] = {}
    while True:
        got = env.sqs.receive_message(QueueUrl=env.urls["sse"], MaxNumberOfMessages=10,
                                      WaitTimeSeconds=0).get("Messages", [])
        if not got:
            return routed
        env.sqs.delete_message_batch(QueueUrl=env.urls["sse"], Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
        for m in got:
            for info, items in unpack_all(m["Body"], backend="sse"):
                routed.setdefault(info["id"], set()).update(n["user"] for n in items)


def then_build(match_app: ModuleType, env: SimpleNamespace, change: bytes,
               package: str) -> set[str]:
    """Replay ``change`` and a build of ``package`` in one batch; who got the build."""
    build = build_of(package)
    routed = run_batch(match_app, env, [change, build])
    return routed.get(json.loads(build)["id"], set())


def test_ownership_messages_reroute_the_next_build(match_app: ModuleType,
                                                   env: SimpleNamespace) -> None:
    new = find(FM, "org.fedoraproject.prod.pagure.project.new")
    access = find(FM, "org.fedoraproject.prod.pagure.project.user.access.updated")
    removed = find(FM, "org.fedoraproject.prod.pagure.project.user.removed", 1)
    deleted = find(FM, "org.fedoraproject.prod.pagure.project.deleted")
    assert json.loads(removed)["body"]["removed_user"] == "newu"

    # a second warm matcher, as another Lambda container holds it
    other = IndexedMatcher(LiveSnapshot(env.store, poll_interval=0.25))
    build = parse(build_of("fedocal-messages"))
    assert other.match(build) == []

    assert then_build(match_app, env, new, "fedocal-messages") == {"pingou"}
    published = time.perf_counter()
    assert then_build(match_app, env, access, "fedocal-messages") == {"pingou", "newu"}
    live = ostore.sync_states(env.engine)["live"]["detail"]
    while {n.user for n in other.match(build)} != {"pingou", "newu"}:
        time.sleep(0.005)
    seen = time.perf_counter() - published
    print(f"\nlive update: applied and in the snapshot in {live['seconds'] * 1000:.1f} ms "
          f"(the same function's next message sees it); another warm matcher "
          f"(0.25 s poll) routed to the new owner {seen * 1000:.0f} ms after the batch "
          "began, SQS calls included")

    assert then_build(match_app, env, removed, "fedocal-messages") == {"pingou"}
    # the shared data's deletion was sent (16:20) before the removal (18:20): arriving
    # after it, it is stale and changes nothing; sent after it, it applies
    assert then_build(match_app, env, deleted, "fedocal-messages") == {"pingou"}
    later = restamped(deleted, "2024-01-02T18:30:00+00:00")
    assert then_build(match_app, env, later, "fedocal-messages") == set()
    owners = ostore.owners_of(env.engine, [("rpms", "fedocal-messages")])
    assert owners == {}

    # real dist-git (rpms namespace) and pkgdb messages
    dist_git_new = find(FEDMSG, "org.fedoraproject.prod.pagure.project.new")
    assert then_build(match_app, env, dist_git_new, "arachne-pnr") == {"mprahl"}
    pkgdb_new = find(FEDMSG, "org.fedoraproject.stg.pkgdb.package.new")
    assert then_build(match_app, env, pkgdb_new, "php-zmq") == {"lmacken"}
    # acl.user.remove on EPEL and F18 branches only: rawhide's maintainers stay
    acl_remove = find(FEDMSG, "org.fedoraproject.stg.pkgdb.acl.user.remove")
    assert then_build(match_app, env, acl_remove, "php-zmq") == {"lmacken"}
    assert match_app.totals["OwnershipUpdates"] >= 5


def test_membership_messages_update_groups(match_app: ModuleType, env: SimpleNamespace) -> None:
    removed = find(FM, "org.fedoraproject.prod.fas.group.member.removed")
    sponsored = find(FM, "org.fedoraproject.prod.fas.group.member.sponsor")
    ipa_add = find(FM, "org.fedoraproject.prod.ipa.group_add_member.v1")
    old_remove = find(FEDMSG, "org.fedoraproject.stg.fas.group.member.remove")
    run_batch(match_app, env, [removed])
    assert "testuser" not in ostore.members_of(env.engine, ["developers"])["developers"]
    # the sponsoring was sent (10:30) before the removal (10:40): arriving after it,
    # it does not bring testuser back; the others are about other members
    run_batch(match_app, env, [sponsored, ipa_add, old_remove])
    members = ostore.members_of(env.engine, ["developers", "ambassadors"])
    assert set(members["developers"]) == {"someone", "testing"}
    run_batch(match_app, env, [restamped(sponsored, "2024-01-02T11:00:00+00:00")])
    members = ostore.members_of(env.engine, ["developers", "ambassadors"])
    assert set(members["developers"]) == {"testuser", "someone", "testing"}
    assert set(members["ambassadors"]) == {"x"}
    # the snapshot the matcher holds has the same membership
    snapshot = match_app._get("live")()
    assert set(snapshot.groups["developers"]) == {"testuser", "someone", "testing"}
    assert set(snapshot.groups["ambassadors"]) == {"x"}


def test_other_messages_never_touch_the_database(match_app: ModuleType,
                                                 env: SimpleNamespace) -> None:
    builds = [build_of("chromium") for _ in range(3)]
    run_batch(match_app, env, builds + list(lines(FM)[:40]))
    assert "live" not in ostore.sync_states(env.engine)
    assert "updater" not in match_app._state


def test_an_ownership_change_waits_until_its_own_notifications_went_out(
        match_app: ModuleType, env: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """pkgdb's "php-zmq is new, lmacken its point of contact" goes to php-zmq's owner
    (ralph).  SQS refuses its payloads: the record comes back with the ownership
    unchanged, and is matched again on the owners it was first matched on, not on
    those a first attempt would have written (ralph and lmacken)."""
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

    from fmn.errors import RetryableError
    from fmn.ownership.diff import OwnershipDelta
    from fmn.ownership.publish import publish_delta
    from fmn.prefs import Owners

    key = ("rpms", "php-zmq")
    delta = OwnershipDelta()
    delta.owners["rpms"]["php-zmq"] = Owners(users=("ralph",))
    ostore.apply_delta(env.engine, delta)
    publish_delta(env.store, delta)
    match_app._get("live").refresh_now()
    change = find(FEDMSG, "org.fedoraproject.stg.pkgdb.package.new")

    real_send = match_app.send
    monkeypatch.setattr(match_app, "send", lambda backend, entries: {
        owner for owners, _ in entries for owner in owners})  # nothing accepted
    body = Envelope.wrap("fedmsg", "tcp://hub.test:9940", change).encode()
    with pytest.raises((BatchProcessingError, RetryableError)):  # its only record failed
        match_app.handle_incoming(sqs_event([body], f"{env.prefix}incoming"),
                                  context("fmn-match", memory_mb=1024))
    assert ostore.owners_of(env.engine, [key])[key].users == ("ralph",)

    monkeypatch.setattr(match_app, "send", real_send)
    routed = run_batch(match_app, env, [change])  # the record comes back
    assert [users for users in routed.values()] == [{"ralph"}]
    assert set(ostore.owners_of(env.engine, [key])[key].users) == {"ralph", "lmacken"}
