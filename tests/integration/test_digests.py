"""Digests on real Redis with a fake clock: both triggers, the size cap, and crashes.

The email sender adds each notification of a digest destination to Redis
(once, however often SQS delivers it) and sends one mail when the oldest
item is ``interval_s`` old or ``max_count`` items wait.  A crash between
sending a digest and clearing it must neither send it twice nor lose items.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from delivery_data import notification as note
from delivery_data import payload
from fakes import FakeClock

from fmn.delivery.base import Delivery, deliver_payload, deliveries
from fmn.delivery.digest import DigestStore, destination_key
from fmn.delivery.email_sender import EmailSender
from fmn.delivery.mailers import MemoryMailer
from fmn.delivery.once import PowertoolsOnce
from fmn.local.runner import LambdaContext

pytestmark = pytest.mark.integration


class Crash(BaseException):
    """A crash nothing catches (Lambda killing the process)."""


@pytest.fixture
def world(redis_any: Any) -> Iterator[SimpleNamespace]:
    """Digests and sends remembered on the single Redis and on the cluster."""
    client = redis_any
    tag = uuid.uuid4().hex[:10]
    clock = FakeClock(1_000_000.0)
    store = DigestStore(client, prefix=f"fmn-test:{tag}:digest:", cap=5, lease_s=300)
    mailer = MemoryMailer()
    sender = EmailSender(mailer, store, sender="notifications@fedoraproject.org",
                         web_url="https://notif.example",
                         unsubscribe_url=lambda u, d: f"https://notif.example/u/{u}/{d}",
                         clock=clock)
    once = PowertoolsOnce(client, 3600, name=f"fmn-test-{tag}")
    once.register_context(LambdaContext("send_email", "arn", 128, timeout_s=60))
    dead: list[tuple[Delivery, str]] = []
    yield SimpleNamespace(store=store, mailer=mailer, sender=sender, once=once, clock=clock,
                          tag=tag, dead=dead,
                          dead_letter=lambda item, reason: dead.append((item, reason)))
    # digests, sends remembered
    for pattern in (f"{store.prefix}*", f"fmn-test-{tag}*"):
        for key in client.scan_iter(pattern):
            client.delete(key)


def add(w: SimpleNamespace, n: int, digest: tuple[int, int], start: int = 0) -> None:
    """Deliver ``n`` notifications for bob's digest destination, one message each."""
    for i in range(start, start + n):
        body = payload("email", [note("bob", "bob@example.org", "d9", digest=digest)],
                       id=f"{w.tag}-{i}", summary=f"build {i} done")
        assert deliver_payload(body, "email", w.sender, w.once, w.dead_letter) == {"queued": 1}


def digest_items(w: SimpleNamespace) -> list[list[str]]:
    """The summaries in each digest mail sent so far."""
    return [[line.split("  ", 1)[1] for line in m.get_content().splitlines()
             if line.startswith("* ")] for m in w.mailer.sent]


def test_interval_trigger(world: SimpleNamespace) -> None:
    w = world
    add(w, 3, digest=(3600, 100))
    w.clock.now += 1800
    add(w, 1, digest=(3600, 100), start=3)
    assert w.sender.flush_ready(w.once, w.dead_letter)["digested"] == 0
    w.clock.now += 1799  # the oldest item is 3,599 s old
    assert w.sender.flush_due(w.once, w.dead_letter)["digested"] == 0 and w.mailer.sent == []
    w.clock.now += 1  # 3,600 s
    assert w.sender.flush_due(w.once, w.dead_letter)["digested"] == 4
    assert digest_items(w) == [[f"build {i} done" for i in range(4)]]
    assert w.mailer.sent[0]["Subject"] == "Fedora notifications: 4 new"
    assert w.sender.flush_due(w.once, w.dead_letter)["digested"] == 0  # nothing left
    dk = destination_key(deliveries(payload("email", [note("bob", destination="d9")]),
                                    "email")[0])
    assert w.store.pending(dk) == 0 and not w.store.is_due(dk, w.clock.now + 10**6)


def test_count_trigger(world: SimpleNamespace) -> None:
    w = world
    add(w, 2, digest=(86400, 3))
    assert w.sender.flush_ready(w.once, w.dead_letter)["digested"] == 0
    add(w, 1, digest=(86400, 3), start=2)  # the third: the count is reached
    assert w.sender.flush_ready(w.once, w.dead_letter)["digested"] == 3
    assert digest_items(w) == [["build 0 done", "build 1 done", "build 2 done"]]
    # the count also makes the destination due for the schedule, at once
    add(w, 3, digest=(86400, 3), start=3)
    assert w.sender.flush_due(w.once, w.dead_letter)["digested"] == 3
    assert len(w.mailer.sent) == 2


def test_redelivered_notification_is_in_the_digest_once(world: SimpleNamespace) -> None:
    w = world
    body = payload("email", [note("bob", "bob@example.org", "d9", digest=(60, 100))],
                   id=f"{w.tag}-x", summary="only once")
    for _ in range(3):
        deliver_payload(body, "email", w.sender, w.once, w.dead_letter)
    w.clock.now += 60
    assert w.sender.flush_due(w.once, w.dead_letter)["digested"] == 1
    assert digest_items(w) == [["only once"]]


def test_size_cap_splits_into_several_mails(world: SimpleNamespace) -> None:
    w = world  # cap = 5 per mail
    add(w, 12, digest=(60, 1000))
    w.clock.now += 60
    assert w.sender.flush_due(w.once, w.dead_letter)["digested"] == 12
    assert [len(d) for d in digest_items(w)] == [5, 5, 2]
    assert [m["Subject"] for m in w.mailer.sent] == [
        "Fedora notifications: 5 new (7 more)", "Fedora notifications: 5 new (2 more)",
        "Fedora notifications: 2 new"]


def test_a_digest_after_the_store_lost_its_keys_still_goes_out(world: SimpleNamespace,
                                                                redis_any: Any) -> None:
    # the records of sent batches may outlive the digest store's own keys (an eviction,
    # a restore): a batch id counted in Redis started over, the next digest took a sent
    # batch's id, and was skipped as sent
    w = world
    add(w, 3, digest=(86400, 3))
    assert w.sender.flush_ready(w.once, w.dead_letter)["digested"] == 3
    for key in redis_any.scan_iter(f"{w.store.prefix}*"):  # not the sends remembered
        redis_any.delete(key)
    add(w, 3, digest=(86400, 3), start=3)
    assert w.sender.flush_ready(w.once, w.dead_letter)["digested"] == 3
    assert digest_items(w) == [["build 0 done", "build 1 done", "build 2 done"],
                               ["build 3 done", "build 4 done", "build 5 done"]]


def test_crash_between_sending_and_clearing(world: SimpleNamespace,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    w = world
    add(w, 3, digest=(60, 100))
    w.clock.now += 60

    def crash(*args: object) -> None:
        raise Crash

    with monkeypatch.context() as patch, pytest.raises(Crash):
        patch.setattr(w.store, "finish", crash)
        w.sender.flush_due(w.once, w.dead_letter)
    assert len(w.mailer.sent) == 1  # the digest went out, but was not cleared
    add(w, 2, digest=(60, 100), start=3)  # arriving meanwhile
    assert w.sender.flush_due(w.once, w.dead_letter)["digested"] == 0  # the batch is leased
    w.clock.now += 300  # the lease runs out: the batch is taken up again
    assert w.sender.flush_due(w.once, w.dead_letter)["digested"] == 5
    # the crashed batch was not sent again; the two newer items went in a new digest
    assert digest_items(w) == [["build 0 done", "build 1 done", "build 2 done"],
                               ["build 3 done", "build 4 done"]]


def test_crash_before_sending(world: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    w = world
    add(w, 2, digest=(60, 100))
    w.clock.now += 60

    def crash(msg: object) -> None:
        raise Crash

    # The send is marked in progress until the invocation's deadline (here:
    # already passed), then the crash leaves the batch claimed and unsent.
    w.once.register_context(LambdaContext("f", "arn", 128, timeout_s=0.0))
    with monkeypatch.context() as patch, pytest.raises(Crash):
        patch.setattr(w.mailer, "send", crash)
        w.sender.flush_due(w.once, w.dead_letter)
    assert w.mailer.sent == []
    w.clock.now += 300  # the lease runs out: the same batch is claimed and sent
    assert w.sender.flush_due(w.once, w.dead_letter)["digested"] == 2
    assert w.sender.flush_due(w.once, w.dead_letter)["digested"] == 0
    assert digest_items(w) == [["build 0 done", "build 1 done"]]


def test_a_scheduled_flush_crashed_mid_send_goes_out_after_its_deadline(
        world: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each scheduled run has a deadline of its own (``scheduled_context``, as on AWS):
    without one, a run killed mid-send left its batch marked in progress for the whole
    idempotency window, and the digest never went out."""
    import time

    from fmn.local.runner import scheduled_context

    w = world
    add(w, 2, digest=(60, 100))
    w.clock.now += 60

    def crash(msg: object) -> None:
        raise Crash

    w.once.register_context(scheduled_context("send_email-flush_digests", 0.2))
    with monkeypatch.context() as patch, pytest.raises(Crash):
        patch.setattr(w.mailer, "send", crash)
        w.sender.flush_due(w.once, w.dead_letter)
    time.sleep(0.3)  # that run's deadline passes
    w.clock.now += 300  # and the lease
    w.once.register_context(scheduled_context("send_email-flush_digests", 60))
    assert w.sender.flush_due(w.once, w.dead_letter)["digested"] == 2
    assert digest_items(w) == [["build 0 done", "build 1 done"]]

    # the same crash in a run with no deadline: the batch stays in progress
    no_deadline = PowertoolsOnce(w.store.redis, 3600, name=f"fmn-test-{w.tag}-none")
    add(w, 1, digest=(60, 100), start=2)
    w.clock.now += 60
    with pytest.warns(UserWarning, match="remaining time"):  # Powertools says so too
        with monkeypatch.context() as patch, pytest.raises(Crash):
            patch.setattr(w.mailer, "send", crash)
            w.sender.flush_due(no_deadline, w.dead_letter)
        w.clock.now += 300
        assert w.sender.flush_due(no_deadline, w.dead_letter) == {}  # "in progress elsewhere"


def test_refused_digest_address_dead_letters_every_item(world: SimpleNamespace) -> None:
    w = world
    for i in range(2):
        body = payload("email", [note("bob", "bob@bad-.example", "d9", digest=(60, 100))],
                       id=f"{w.tag}-{i}")
        deliver_payload(body, "email", w.sender, w.once, w.dead_letter)
    w.clock.now += 60
    # dead-lettered, not sent: the DeadLettered metric, not Digested
    assert w.sender.flush_due(w.once, w.dead_letter) == {"dead-lettered": 2}
    assert w.mailer.sent == [] and len(w.dead) == 2


def test_one_failing_digest_does_not_hold_the_others_up(world: SimpleNamespace,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from fmn.errors import RetryableError

    w = world
    for user in ("bob", "carol"):
        body = payload("email", [note(user, f"{user}@example.org", "d9", digest=(60, 100))],
                       id=f"{w.tag}-{user}")
        deliver_payload(body, "email", w.sender, w.once, w.dead_letter)
    w.clock.now += 60
    real = w.mailer.send

    def send(msg: object) -> None:
        if "bob@" in str(msg["To"]):  # type: ignore[index]
            raise RetryableError("bob's server is away")
        real(msg)  # type: ignore[arg-type]

    monkeypatch.setattr(w.mailer, "send", send)
    assert w.sender.flush_due(w.once, w.dead_letter)["digested"] == 1
    assert [str(m["To"]) for m in w.mailer.sent] == ["carol@example.org"]
    monkeypatch.undo()
    w.clock.now += 300  # bob's claim's lease runs out
    assert w.sender.flush_due(w.once, w.dead_letter)["digested"] == 1
    assert sorted(str(m["To"]) for m in w.mailer.sent) == ["bob@example.org",
                                                           "carol@example.org"]


@pytest.mark.parametrize("failure", ["deferred", "unforeseen"])
def test_a_digest_that_keeps_failing_ends_in_the_dead_letter_queue(
        world: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    """Its batch stayed claimed and came back at every lease, forever, with everything
    for the destination piling up behind it in Redis; a single mail goes to its queue's
    dead-letter queue after about an hour, or at once for an error nobody foresaw."""
    from fmn.delivery.mailers import RecipientDeferred

    w = world
    add(w, 2, (60, 100))
    w.clock.now += 60

    def send(msg: object) -> None:
        if failure == "deferred":
            raise RecipientDeferred("SMTP recipient refused: 452 4.2.2 mailbox full")
        raise KeyError("a case nobody foresaw")

    monkeypatch.setattr(w.mailer, "send", send)
    if failure == "unforeseen":  # at once
        assert w.sender.flush_due(w.once, w.dead_letter) == {"dead-lettered": 2}
        assert len(w.dead) == 2 and "KeyError" in w.dead[0][1]
        return
    for _ in range(12):  # an hour of leases: tried again each time
        assert w.sender.flush_due(w.once, w.dead_letter)["digested"] == 0
        assert w.dead == []
        w.clock.now += 300
    assert w.sender.flush_due(w.once, w.dead_letter) == {"dead-lettered": 2}  # given up
    assert [i.message_id for i, _ in w.dead] == [f"{w.tag}-0", f"{w.tag}-1"]
    assert all("digest not sent for 3600s" in r and "452" in r for _, r in w.dead)
    monkeypatch.undo()
    add(w, 1, (60, 100), start=2)  # what comes after goes out as usual
    w.clock.now += 60
    assert w.sender.flush_due(w.once, w.dead_letter)["digested"] == 1
    assert digest_items(w) == [["build 2 done"]]


def test_items_of_a_destination_unsubscribed_meanwhile_do_not_go_out(
        world: SimpleNamespace, tmp_path: Any) -> None:
    """bob unsubscribes (one-click) while three items wait in his digest: the digest,
    checked against the preferences database when it is due, sends nothing."""
    from fmn import db
    from fmn.db.pending import destination_live
    from fmn.prefs import Destination, Digest, User
    from fmn.snapshot.store import MemorySnapshotStore
    from fmn.web.service import PreferencesService

    w = world
    engine = db.make_engine(f"sqlite:///{tmp_path / 'prefs.sqlite'}")
    db.upgrade(engine)
    db.save_user(engine, User("bob", True, (Destination(
        "d9", "email", "bob@example.org", True, Digest(3600, 100)),)))
    w.sender.subscribed = lambda item: destination_live(engine, item.user, item.destination,
                                                        item.address)
    add(w, 3, digest=(3600, 100))
    PreferencesService(engine, MemorySnapshotStore()).unsubscribe("bob", "d9")
    w.clock.now += 3600
    w.sender.flush_due(w.once, w.dead_letter)
    assert w.mailer.sent == [] and w.sender.dropped == 3
    assert w.dead == []  # not an error: nothing to send any more

    # verified again: what arrives from now on goes out
    db.save_user(engine, User("bob", True, (Destination(
        "d9", "email", "bob@example.org", True, Digest(3600, 100)),)))
    add(w, 2, digest=(3600, 100), start=10)
    w.clock.now += 3600
    assert w.sender.flush_due(w.once, w.dead_letter)["digested"] == 2
    assert digest_items(w) == [["build 10 done", "build 11 done"]]


def test_a_redis_restarted_empty_cannot_lose_digests_unnoticed(world: SimpleNamespace,
                                                               tmp_path: Any) -> None:
    """Digest items live only in Redis: if Redis comes back empty, the next check says
    so (the sender turns it into an error log and the DigestStoreLost metric)."""
    from fmn import db
    from fmn.db import pending
    from fmn.delivery.digest import check_generation

    w = world
    engine = db.make_engine(f"sqlite:///{tmp_path / 'prefs.sqlite'}")
    db.upgrade(engine)

    def check() -> int | None:
        return check_generation(w.store, pending.marker(engine, "digests"),
                                lambda token, n: pending.set_marker(engine, "digests", token, n))

    assert check() is None  # the first check: nothing known, nothing lost
    add(w, 3, digest=(3600, 100))
    assert check() is None
    for key in list(w.store.redis.scan_iter(f"{w.store.prefix}*")):
        w.store.redis.delete(key)  # a restart without persistence
    assert check() == 3  # loudly, once, with what was waiting
    assert check() is None


def test_a_digest_given_up_is_never_sent_after_some_of_it_was_dead_lettered(
        world: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dead-letter queue refusing an item part-way through a give-up: the next lease
    sent the whole batch, the items already dead-lettered included."""
    from fmn.delivery.mailers import RecipientDeferred
    from fmn.errors import RetryableError

    w = world
    add(w, 3, (60, 100))
    w.clock.now += 60
    real_send = w.mailer.send

    def away(msg: object) -> None:
        raise RecipientDeferred("SMTP recipient refused: 452 4.2.2 mailbox full")

    monkeypatch.setattr(w.mailer, "send", away)
    assert w.sender.flush_due(w.once, w.dead_letter) == {}  # the first failure
    w.clock.now += 3600
    refuse = [True]

    def dead_letter(item: Any, reason: str) -> None:
        if len(w.dead) == 1 and refuse[0]:
            refuse[0] = False
            raise RetryableError("dead-letter queue refused an item")
        w.dead.append((item, reason))

    w.sender.flush_due(w.once, dead_letter)
    assert [i.message_id for i, _ in w.dead] == [f"{w.tag}-0"]
    monkeypatch.setattr(w.mailer, "send", real_send)  # the server is back
    w.clock.now += 300  # the lease
    assert w.sender.flush_due(w.once, dead_letter) == {"dead-lettered": 3}
    assert w.mailer.sent == []  # given up: not sent, its rest dead-lettered
    assert sorted(i.message_id for i, _ in w.dead) == [
        f"{w.tag}-0", f"{w.tag}-0", f"{w.tag}-1", f"{w.tag}-2"]  # at least once each
    assert all("452" in r for _, r in w.dead)
    # and nothing of the batch's failures is kept once it is done
    assert not w.store.redis.exists(f"{w.store.prefix}failing:{destination_key(w.dead[0][0])}")
