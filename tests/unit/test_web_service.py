"""The web app's core on SQLite and in-memory fakes: preferences edits, verification, sign-in.

What a user would notice: refusals name the field at fault, nobody reaches
another user's data, a change reaches the snapshot store, verification links
and codes work once and only for their address, and nobody can make the
service spam an address.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import FakeClock
from sqlalchemy import Engine

from fmn import db
from fmn.delivery.irc_client import MemoryIrcLink
from fmn.delivery.mailers import MemoryMailer
from fmn.prefs import Preferences
from fmn.settings import Settings
from fmn.snapshot import compile_snapshot
from fmn.snapshot.store import MemorySnapshotStore
from fmn.web import UnsafeConfiguration, check
from fmn.web.oidc import OidcClient, OidcError, pkce_challenge
from fmn.web.service import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    PreferencesService,
    RateLimited,
    field_path,
)
from fmn.web.verify import (
    IrcCodeChannel,
    Limits,
    MemoryKeys,
    RecordingChannel,
    VerificationFailed,
    Verifier,
)

pytestmark = pytest.mark.unit

TOPIC_RULE: dict[str, Any] = {
    "name": "Koji", "enabled": True,
    "tracking": {"kind": "topics", "params": {"patterns": ["*.buildsys.*"]}},
    "generation_rules": [{"filters": {"severities": ["INFO"]}, "destinations": ["email"]}]}


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'web.sqlite'}")
    db.upgrade(engine)
    return engine


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


class RecordingStore(MemorySnapshotStore):
    def __init__(self) -> None:
        super().__init__()
        self.publish(compile_snapshot(Preferences()))
        self.published: list[tuple[str, Any]] = []

    def publish_user(self, user: str, entry: Any) -> None:
        super().publish_user(user, entry)
        self.published.append((user, entry))


@pytest.fixture
def store() -> RecordingStore:
    return RecordingStore()


@pytest.fixture
def service(engine: Engine, store: RecordingStore, clock: FakeClock) -> PreferencesService:
    svc = PreferencesService(engine, store, admins=frozenset({"root"}), clock=clock)
    svc.login("alice", "alice@example.org")
    svc.login("bob", "bob@example.org")
    return svc


class World:
    def __init__(self, service: PreferencesService, clock: FakeClock) -> None:
        self.mailer = MemoryMailer()
        self.irc = MemoryIrcLink()
        self.matrix = RecordingChannel("matrix")
        self.keys = MemoryKeys(clock)
        self.verifier = Verifier(service, self.keys, "s3cret", web_url="https://fmn.test",
                                 mailer=self.mailer, mail_from="fmn@example.org",
                                 channels={"irc": IrcCodeChannel(self.irc),
                                           "matrix": self.matrix},
                                 limits=Limits(per_user=5, per_address=2,
                                               per_address_all=3), clock=clock)

    def link(self) -> str:
        body = self.mailer.sent[-1].get_content()
        return next(w for w in body.split() if "/verify/email/" in w)

    def code(self, nick: str) -> str:
        line = self.irc.lines_to(nick)[-1]
        return next(w for w in line.split() if w.isdigit() and len(w) == 6)


@pytest.fixture
def world(service: PreferencesService, clock: FakeClock) -> World:
    return World(service, clock)


# -- preferences -----------------------------------------------------------


def test_first_login_gets_two_rules_on_the_verified_account_address(
        service: PreferencesService, store: RecordingStore) -> None:
    user = service.user("alice")
    assert [(d.protocol, d.address, d.verified) for d in user.destinations] == [
        ("email", "alice@example.org", True)]
    by_name = {r.name: r for r in user.rules}
    assert set(by_name) == {"My packages", "My events"}
    assert by_name["My packages"].tracking.kind == "artifacts-owned"
    assert by_name["My events"].tracking.kind == "related-events"
    assert by_name["My events"].generation_rules[0].filters.my_actions is False
    assert all(r.enabled for r in user.rules)
    assert service.login("alice", "other@example.org") == user  # a second login changes nothing
    assert [name for name, _ in store.published] == ["alice", "bob"]
    assert len(store.published[0][1]["rules"]) == 2  # the matcher sees both rules


def test_a_rule_gets_a_server_id_and_reaches_the_snapshot_store(
        service: PreferencesService, store: RecordingStore) -> None:
    store.published.clear()
    rule = service.create_rule("alice", TOPIC_RULE)
    assert rule.id.startswith("r-") and [n for n, _ in store.published] == ["alice"]
    assert len(store.published[0][1]["rules"]) == 3
    assert service.rule("alice", rule.id) == rule


@pytest.mark.parametrize(("body", "field"), [
    ({**TOPIC_RULE, "colour": "red"}, "colour"),
    ({**TOPIC_RULE, "id": "mine"}, "id"),
    ({k: v for k, v in TOPIC_RULE.items() if k != "name"}, "name"),
    ({**TOPIC_RULE, "tracking": {"kind": "topics", "params": {"patterns": []}}},
     "tracking.params.patterns"),
    ({**TOPIC_RULE, "generation_rules": [{"filters": {"severities": ["LOUD"]},
                                          "destinations": ["email"]}]},
     "generation_rules[0].filters.severities[0]"),
    ({**TOPIC_RULE, "generation_rules": [{"filters": {"bogus": 1}, "destinations": []}]},
     "generation_rules[0].filters.bogus"),
    ({**TOPIC_RULE, "generation_rules": [{"filters": {}, "destinations": ["nope"]}]},
     "generation_rules[0].destinations[0]"),
    ({**TOPIC_RULE, "enabled": "yes"}, "enabled"),
])
def test_invalid_rules_are_refused_naming_the_field(service: PreferencesService,
                                                    body: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as info:
        service.create_rule("alice", body)
    assert info.value.field == field
    assert len(service.rules("alice")) == 2  # nothing written


def test_field_paths_drop_the_ids() -> None:
    assert field_path("rule (r-1) > generation_rules[0].filters.topic") == \
        "generation_rules[0].filters.topic"
    assert field_path("rule (r-1)") is None


def test_nobody_reaches_another_users_rules_or_destinations(service: PreferencesService) -> None:
    bobs = service.create_rule("bob", TOPIC_RULE)
    with pytest.raises(NotFound):
        service.rule("alice", bobs.id)
    with pytest.raises(NotFound):
        service.patch_rule("alice", bobs.id, {"enabled": False})
    with pytest.raises(NotFound):
        service.delete_rule("alice", bobs.id)
    with pytest.raises(NotFound):
        service.replace_rule("alice", bobs.id, TOPIC_RULE)
    assert service.rule("bob", bobs.id).enabled
    # a rule may only name its owner's destinations
    dest = service.add_destination("bob", {"protocol": "irc", "address": "bobby"})
    body = {**TOPIC_RULE, "generation_rules": [{"filters": {}, "destinations": [dest.id]}]}
    with pytest.raises(Invalid) as info:
        service.create_rule("alice", body)
    assert info.value.field == "generation_rules[0].destinations[0]"
    with pytest.raises(NotFound):
        service.patch_destination("alice", dest.id, {"digest": None})


def test_patch_and_replace(service: PreferencesService) -> None:
    rule = service.create_rule("alice", TOPIC_RULE)
    assert service.patch_rule("alice", rule.id, {"enabled": False}).enabled is False
    with pytest.raises(Invalid) as info:
        service.patch_rule("alice", rule.id, {"tracking": {}})
    assert info.value.field == "tracking"
    new = service.replace_rule("alice", rule.id, {**TOPIC_RULE, "name": "Renamed"})
    assert new.id == rule.id and new.name == "Renamed"


@pytest.mark.parametrize(("body", "field"), [
    ({"protocol": "fax", "address": "1"}, "protocol"),
    ({"protocol": "email", "address": "not an address"}, "address"),
    ({"protocol": "irc", "address": "bad nick!"}, "address"),
    ({"protocol": "matrix", "address": "alice"}, "address"),
    ({"protocol": "sse", "address": "x"}, "address"),
    ({"protocol": "email", "address": "a@b.org", "verified": True}, "verified"),
])
def test_invalid_destinations_are_refused(service: PreferencesService, body: dict[str, Any],
                                          field: str) -> None:
    with pytest.raises(Invalid) as info:
        service.add_destination("alice", body)
    assert info.value.field == field


def test_destinations_start_unverified_and_cannot_be_deleted_while_used(
        service: PreferencesService) -> None:
    dest = service.add_destination("alice", {"protocol": "irc", "address": "alice"})
    assert dest.verified is False
    with pytest.raises(Conflict):
        service.add_destination("alice", {"protocol": "irc", "address": "ALICE"})
    # the rules that still use it, by the names the UI shows (their ids meant nothing)
    with pytest.raises(Conflict, match="^rules 'My packages', 'My events' still send to "
                                       "this destination; change them first$"):
        service.delete_destination("alice", "email")
    with pytest.raises(Invalid) as info:
        service.patch_destination("alice", dest.id, {"digest": {"interval_s": 3600,
                                                                "max_count": 0}})
    assert info.value.field == "digest.max_count"
    assert service.patch_destination("alice", dest.id, {"digest": {
        "interval_s": 3600, "max_count": 10}}).digest is not None
    service.delete_destination("alice", dest.id)
    assert [d.id for d in service.destinations("alice")] == ["email"]


def test_only_an_email_the_account_lists_is_verified_at_once(
        service: PreferencesService, engine: Engine) -> None:
    from fmn.ownership.data import Account
    from fmn.ownership.store import apply_accounts

    # FAS verified mallory's e-mail; her IRC and Matrix nicks are free text she typed
    service.login("mallory", "mallory@example.org")
    apply_accounts(engine, [Account("mallory", emails=("m2@example.org",),
                                    ircnicks=("irc:/victim", "matrix:/victim"))])
    assert service.add_destination("mallory", {"protocol": "email",
                                               "address": "M2@example.org"}).verified
    irc = service.add_destination("mallory", {"protocol": "irc", "address": "victim"})
    matrix = service.add_destination("mallory", {"protocol": "matrix",
                                                 "address": "@victim:fedora.im"})
    assert irc.verified is False and matrix.verified is False


def test_admins_disable_users_and_rules_others_cannot(service: PreferencesService) -> None:
    rule = service.create_rule("bob", TOPIC_RULE)
    with pytest.raises(Forbidden):
        service.disable_user("alice", "bob")
    with pytest.raises(Forbidden):
        service.disable_rule("alice", "bob", rule.id)
    assert service.disable_rule("root", "bob", rule.id).enabled is False
    assert service.disable_user("root", "bob").enabled is False
    assert service.me("bob")["enabled"] is False
    with pytest.raises(NotFound):
        service.disable_user("root", "nobody")


def test_a_disabled_user_or_locked_account_reaches_no_one_new(
        service: PreferencesService, world: World) -> None:
    """An existing session of a user an admin disabled, or whose Fedora account is locked,
    cannot add destinations nor make the service send verifications to third parties; it
    may still read, and switch things off."""
    from fmn.ownership.data import Account
    from fmn.ownership.store import apply_accounts

    pending = {name: service.add_destination(name, {"protocol": "irc",
                                                    "address": f"{name}nick"})
               for name in ("alice", "bob")}
    service.disable_user("root", "alice")
    apply_accounts(service.engine, [Account("bob", locked=True)])
    for name, why in (("alice", "disabled"), ("bob", "locked")):
        before = service.destinations(name)
        with pytest.raises(Forbidden) as info:
            world.verifier.add(name, {"protocol": "email", "address": f"x-{name}@example.net"})
        assert why in info.value.detail and info.value.as_json()["error"] == "forbidden"
        with pytest.raises(Forbidden):
            world.verifier.add(name, {"protocol": "irc", "address": f"stranger{name}"})
        with pytest.raises(Forbidden):
            service.add_destination(name, {"protocol": "sse"})
        with pytest.raises(Forbidden):  # a resend
            world.verifier.start(name, pending[name].id)
        assert service.destinations(name) == before
        # switching off still works
        service.patch_destination(name, "email", {"digest": None})
        service.patch_rule(name, "my-events", {"enabled": False})
        service.delete_destination(name, pending[name].id)
    assert world.mailer.sent == [] and world.irc.lines_to("strangeralice") == []
    assert world.irc.lines_to("alicenick") == world.irc.lines_to("bobnick") == []


def test_a_rule_an_admin_disabled_cannot_be_enabled_again_by_its_owner(
        service: PreferencesService) -> None:
    rule = service.create_rule("bob", TOPIC_RULE)
    mine = service.create_rule("bob", TOPIC_RULE)
    service.disable_rule("root", "bob", rule.id)
    with pytest.raises(Conflict) as info:
        service.patch_rule("bob", rule.id, {"enabled": True})
    assert info.value.field == "enabled" and "administrator" in info.value.detail
    with pytest.raises(Conflict):
        service.replace_rule("bob", rule.id, {**TOPIC_RULE, "enabled": True})
    assert service.rule("bob", rule.id).enabled is False
    # other edits stay the owner's, and so do their other rules
    assert service.patch_rule("bob", rule.id, {"name": "Renamed"}).name == "Renamed"
    service.patch_rule("bob", mine.id, {"enabled": False})
    assert service.patch_rule("bob", mine.id, {"enabled": True}).enabled
    service.delete_rule("bob", rule.id)
    assert rule.id not in {r.id for r in service.rules("bob")}


def test_a_rule_deleted_is_answered_deleted_even_if_its_admin_mark_stays(
        service: PreferencesService, engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """The admin-disable mark goes in a transaction of its own, after the rule's deletion
    was saved and published: its failure answered 503 for a rule already gone."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    rule = service.create_rule("bob", TOPIC_RULE)
    service.disable_rule("root", "bob", rule.id)

    def refuse(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("DELETE FROM admin_disabled_rules"):
            raise OperationalError(statement, {}, Exception("the database went away"))

    event.listen(engine, "before_cursor_execute", refuse)
    try:
        service.delete_rule("bob", rule.id)
    finally:
        event.remove(engine, "before_cursor_execute", refuse)
    assert rule.id not in {r.id for r in service.rules("bob")}
    assert "admin-disable mark" in caplog.text


# -- verification ------------------------------------------------------------


def test_a_bad_sender_address_refuses_mail_verification_alone(
        service: PreferencesService, world: World, clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    # FMN_MAIL_FROM is checked at start; the web app keeps working, minus e-mail
    from fmn.errors import NotSent

    with caplog.at_level("ERROR", logger="fmn.web.verify"):
        verifier = Verifier(service, world.keys, "s3cret", web_url="https://fmn.test",
                            mailer=world.mailer, mail_from="Fedora Notifications",
                            channels={"irc": IrcCodeChannel(world.irc)}, clock=clock)
    assert "FMN_MAIL_FROM must be one e-mail address" in caplog.text
    mail = service.add_destination("alice", {"protocol": "email", "address": "a2@example.org"})
    with pytest.raises(NotSent, match="FMN_MAIL_FROM"):
        verifier.start("alice", mail.id)
    assert world.mailer.sent == []
    irc = service.add_destination("alice", {"protocol": "irc", "address": "alice_"})
    assert verifier.start("alice", irc.id) == "code"


def test_an_imported_unverified_live_feed_is_verified_on_asking(
        service: PreferencesService, world: World, engine: Engine) -> None:
    """A live feed imported unverified (the spec allows it) made the resend fail (500, an
    assert on its address): it is the user's own feed, there is nothing to prove."""
    from fmn.prefs import Destination, User

    db.save_user(engine, User("ivy", True, (Destination("f1", "sse", None, False),)))
    assert world.verifier.start("ivy", "f1") == "verified"
    assert service.destination("ivy", "f1").verified
    assert world.mailer.sent == [] and world.matrix.sent == []


def test_an_email_link_verifies_once(service: PreferencesService, world: World) -> None:
    dest = service.add_destination("alice", {"protocol": "email", "address": "a2@example.org"})
    assert world.verifier.start("alice", dest.id) == "link"
    assert world.mailer.sent[-1]["To"] == "a2@example.org"
    token = world.link().rsplit("/", 1)[1]
    # looking at the link (the page it opens, a link scanner) changes nothing
    for _ in range(3):
        assert world.verifier.check_email(token) == ("alice", dest)
    assert not service.destination("alice", dest.id).verified
    user, verified = world.verifier.confirm_email(token)
    assert (user, verified.verified) == ("alice", True)
    assert service.destination("alice", dest.id).verified
    with pytest.raises(VerificationFailed) as info:
        world.verifier.check_email(token)
    assert info.value.reason == "used"


def test_the_link_to_an_idn_address_goes_to_its_ascii_domain(
        service: PreferencesService, world: World) -> None:
    """Set as a string, ``bücher.example`` went out as an RFC 2047 encoded word inside
    the address (``ana@=?utf-8?q?b=C3=BCcher?=.example``): the link reached nobody."""
    from email.utils import getaddresses

    from fmn.delivery.email import POLICY

    dest = service.add_destination("alice", {"protocol": "email",
                                             "address": "ana@bücher.example"})
    assert world.verifier.start("alice", dest.id) == "link"
    wire = world.mailer.sent[-1].as_bytes(policy=POLICY)
    to = next(line for line in wire.split(b"\r\n") if line.startswith(b"To:"))
    assert to == b"To: ana@xn--bcher-kva.example" and b"=?" not in to
    assert getaddresses([to.decode()[3:]]) == [("", "ana@xn--bcher-kva.example")]


def test_a_used_email_link_is_refused(service: PreferencesService, world: World) -> None:
    dest = service.add_destination("alice", {"protocol": "email", "address": "a2@example.org"})
    world.verifier.start("alice", dest.id)
    token = world.link().rsplit("/", 1)[1]
    world.verifier.confirm_email(token)
    with pytest.raises(VerificationFailed) as info:
        world.verifier.confirm_email(token)
    assert info.value.reason == "used"


def test_links_and_codes_sent_before_an_unsubscribe_turn_nothing_back_on(
        service: PreferencesService, world: World, clock: FakeClock) -> None:
    # a second link still in the mailbox re-verified the address within its 24 h,
    # undoing the one-click unsubscribe of a mail sent since
    dest = service.add_destination("alice", {"protocol": "email", "address": "a2@example.org"})
    world.verifier.start("alice", dest.id)
    first = world.link().rsplit("/", 1)[1]
    clock.now += 60
    world.verifier.start("alice", dest.id)
    second = world.link().rsplit("/", 1)[1]
    world.verifier.confirm_email(first)
    irc = service.add_destination("alice", {"protocol": "irc", "address": "alice_"})
    world.verifier.start("alice", irc.id)
    code = world.code("alice_")
    clock.now += 60
    for d in (dest, irc):
        world.verifier.revoke("alice", d.id)
    revoked_at = clock.now
    service.unsubscribe("alice", dest.id)
    for attempt in (world.verifier.check_email, world.verifier.confirm_email):
        with pytest.raises(VerificationFailed) as info:
            attempt(second)
        assert info.value.reason == "revoked"
    with pytest.raises(VerificationFailed) as info:
        world.verifier.confirm_code("alice", irc.id, {"code": code})
    assert info.value.reason == "no-code"
    assert not service.destination("alice", dest.id).verified
    assert not service.destination("alice", irc.id).verified
    clock.now += 3600  # one asked for afterwards works (past the hour's limit on sends)
    world.verifier.start("alice", dest.id)
    assert world.verifier.confirm_email(world.link().rsplit("/", 1)[1])[1].verified
    # the revocation outlives every link it covers (their times are whole seconds), then goes
    clock.now = revoked_at + 24 * 3600 + 1
    assert world.keys.get("fmn:verify:revoked:alice:" + dest.id) is not None
    clock.now = revoked_at + 24 * 3600 + 3601
    assert world.keys.get("fmn:verify:revoked:alice:" + dest.id) is None


def test_a_link_from_before_links_carried_their_time_is_refused_once_revoked(
        service: PreferencesService, world: World, clock: FakeClock) -> None:
    from fmn.auth import seal

    dest = service.add_destination("alice", {"protocol": "email", "address": "a2@example.org"})
    old = seal({"u": "alice", "d": dest.id, "a": "a2@example.org", "j": "old-link"}, "s3cret",
               "verify-email", clock=clock)
    assert world.verifier.check_email(old) == ("alice", dest)  # good while nothing revoked
    clock.now += 60
    world.verifier.revoke("alice", dest.id)
    with pytest.raises(VerificationFailed) as info:
        world.verifier.confirm_email(old)
    assert info.value.reason == "revoked"
    # and a link sent in the same instant as the revocation is refused with it
    world.verifier.start("alice", dest.id)
    with pytest.raises(VerificationFailed) as info:
        world.verifier.confirm_email(world.link().rsplit("/", 1)[1])
    assert info.value.reason == "revoked"


def test_a_link_for_a_deleted_destination_is_refused(service: PreferencesService,
                                                     world: World) -> None:
    dest = service.add_destination("alice", {"protocol": "email", "address": "a2@example.org"})
    world.verifier.start("alice", dest.id)
    token = world.link().rsplit("/", 1)[1]
    service.delete_destination("alice", dest.id)
    with pytest.raises(VerificationFailed) as info:
        world.verifier.confirm_email(token)
    assert info.value.reason == "gone"


def test_a_replayed_link_is_refused_as_used(service: PreferencesService, world: World) -> None:
    dest = service.add_destination("alice", {"protocol": "email", "address": "a2@example.org"})
    world.verifier.start("alice", dest.id)
    token = world.link().rsplit("/", 1)[1]
    # the token's id was recorded by someone else's click (e.g. a race)
    world.keys.add("fmn:verify:used:" + _payload(token)["j"], "x", 60)
    with pytest.raises(VerificationFailed) as info:
        world.verifier.confirm_email(token)
    assert info.value.reason == "used"
    assert not service.destination("alice", dest.id).verified


def _payload(token: str) -> Any:
    from fmn.auth import unseal

    return unseal(token, "s3cret", "verify-email", 3600, clock=lambda: 1_700_000_000.0)


def test_expired_and_forged_links_are_refused(service: PreferencesService, world: World,
                                              clock: FakeClock) -> None:
    dest = service.add_destination("alice", {"protocol": "email", "address": "a2@example.org"})
    world.verifier.start("alice", dest.id)
    token = world.link().rsplit("/", 1)[1]
    for forged in (token[:-2] + ("AA" if not token.endswith("AA") else "BB"), "garbage",
                   token.replace(token.split(".")[0], base64.urlsafe_b64encode(
                       json.dumps({"u": "bob", "d": "email", "a": "bob@example.org",
                                   "j": "x"}).encode()).decode().rstrip("="))):
        with pytest.raises(VerificationFailed) as info:
            world.verifier.confirm_email(forged)
        assert info.value.reason == "forged"
    clock.now += 24 * 3600 + 1
    with pytest.raises(VerificationFailed) as info:
        world.verifier.confirm_email(token)
    assert info.value.reason == "expired"
    assert not service.destination("alice", dest.id).verified


def test_an_irc_code_verifies(service: PreferencesService, world: World) -> None:
    dest = service.add_destination("alice", {"protocol": "irc", "address": "alice_"})
    assert world.verifier.start("alice", dest.id) == "code"
    with pytest.raises(Invalid) as info:  # not six digits: refused by the body's schema
        world.verifier.confirm_code("alice", dest.id, {"code": "12345"})
    assert info.value.field == "code"
    code = world.code("alice_")
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    with pytest.raises(VerificationFailed) as info:
        world.verifier.confirm_code("alice", dest.id, {"code": wrong})
    assert info.value.reason == "wrong-code"
    # bob cannot type alice's code for her destination
    with pytest.raises(NotFound):
        world.verifier.confirm_code("bob", dest.id, {"code": code})
    assert world.verifier.confirm_code("alice", dest.id, {"code": code}).verified


def test_a_code_whose_destination_could_not_be_verified_works_again(
        service: PreferencesService, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The code was deleted before the save: a failed save cost a resend."""
    from fmn.errors import RetryableError

    dest = service.add_destination("alice", {"protocol": "irc", "address": "alice_"})
    world.verifier.start("alice", dest.id)
    code = world.code("alice_")
    mark = service.mark_verified

    def database_away(*args: Any) -> Any:
        raise RetryableError("the database is away")

    monkeypatch.setattr(service, "mark_verified", database_away)
    with pytest.raises(RetryableError):
        world.verifier.confirm_code("alice", dest.id, {"code": code})
    monkeypatch.setattr(service, "mark_verified", mark)
    assert world.verifier.confirm_code("alice", dest.id, {"code": code}).verified


def test_an_irc_code_expires(service: PreferencesService, world: World,
                             clock: FakeClock) -> None:
    dest = service.add_destination("alice", {"protocol": "irc", "address": "alice_"})
    world.verifier.start("alice", dest.id)
    clock.now += 601
    with pytest.raises(VerificationFailed) as info:
        world.verifier.confirm_code("alice", dest.id, {"code": world.code("alice_")})
    assert info.value.reason == "no-code"


def test_too_many_wrong_codes_destroy_the_code(service: PreferencesService,
                                               world: World) -> None:
    dest = service.add_destination("alice", {"protocol": "irc", "address": "alice_"})
    world.verifier.start("alice", dest.id)
    code = world.code("alice_")
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for _ in range(5):
        with pytest.raises(VerificationFailed):
            world.verifier.confirm_code("alice", dest.id, {"code": wrong})
    with pytest.raises(VerificationFailed) as info:
        world.verifier.confirm_code("alice", dest.id, {"code": code})
    assert info.value.reason == "too-many-attempts" and info.value.status == 429
    # a 429 says when to come back, as every other one does: the code's lifetime
    from fmn.web.http import error

    assert error(info.value).headers["Retry-After"] == "600"
    with pytest.raises(VerificationFailed) as info:
        world.verifier.confirm_code("alice", dest.id, {"code": code})
    assert info.value.reason == "no-code"


def test_matrix_codes_are_recorded_for_lack_of_a_sender(service: PreferencesService,
                                                        world: World) -> None:
    dest = service.add_destination("alice", {"protocol": "matrix",
                                             "address": "@alice:fedora.im"})
    world.verifier.start("alice", dest.id)
    address, text = world.matrix.sent[-1]
    code = next(w for w in text.split() if w.isdigit() and len(w) == 6)
    assert address == "@alice:fedora.im"
    assert world.verifier.confirm_code("alice", dest.id, {"code": code}).verified


def test_verification_sends_are_rate_limited_per_address_and_per_user(
        service: PreferencesService, world: World, clock: FakeClock) -> None:
    a = service.add_destination("alice", {"protocol": "irc", "address": "victim"})
    b = service.add_destination("bob", {"protocol": "irc", "address": "victim"})
    world.verifier.start("alice", a.id)
    world.verifier.start("alice", a.id)
    with pytest.raises(RateLimited):  # a third from alice to the same nick
        world.verifier.start("alice", a.id)
    world.verifier.start("bob", b.id)
    service.login("carol", "carol@example.org")
    c = service.add_destination("carol", {"protocol": "irc", "address": "victim"})
    with pytest.raises(RateLimited):  # a fourth to the nick, whoever asks
        world.verifier.start("carol", c.id)
    assert len(world.irc.lines_to("victim")) == 3
    nicks = [service.add_destination("alice", {"protocol": "irc", "address": f"n{i}"})
             for i in range(5)]
    sent = 0
    with pytest.raises(RateLimited):
        for d in nicks:
            world.verifier.start("alice", d.id)
            sent += 1
    assert sent == 3  # alice had used 2 of her 5 already (the refused one counts nothing)
    clock.now += 3601
    world.verifier.start("alice", a.id)  # an hour later the window has passed


def test_sub_addresses_count_as_their_mailbox(service: PreferencesService,
                                              world: World) -> None:
    """victim+1@, victim+2@... reach victim@'s mailbox: its limits count them as one."""
    sent = []
    with pytest.raises(RateLimited):
        for i in range(4):
            world.verifier.add("alice", {"protocol": "email",
                                         "address": f"Victim+{i}@example.org"})
            sent.append(i)
    assert sent == [0, 1]  # alice's 2 an hour to one address
    service.login("carol", "carol@example.org")
    world.verifier.add("bob", {"protocol": "email", "address": "victim+b@example.org"})
    with pytest.raises(RateLimited):  # the address's 3 an hour, whoever asks
        world.verifier.add("carol", {"protocol": "email", "address": "victim@example.org"})
    assert len(world.mailer.sent) == 3
    # another mailbox is not held up: the tag comes off the local part only
    world.verifier.add("carol", {"protocol": "email", "address": "victim@example.net"})
    assert len(world.mailer.sent) == 4


def test_gmail_spellings_with_dots_count_as_their_mailbox() -> None:
    from fmn.web.verify import mailbox_key

    same = {mailbox_key("email", a) for a in (
        "victim@gmail.com", "v.ictim@gmail.com", "Vi.c.tim+x@GMAIL.com", "victim@googlemail.com")}
    assert same == {"victim@gmail.com"}
    # elsewhere a dot makes another mailbox
    assert mailbox_key("email", "v.ictim@example.org") == "v.ictim@example.org"


def test_one_account_cannot_use_up_a_strangers_verifications(
        service: PreferencesService, world: World) -> None:
    # the address's limit counted every account's requests together: bob adding
    # alice's own nick and asking twice left alice none of her two for the hour
    m = service.add_destination("bob", {"protocol": "irc", "address": "alice"})
    for _ in range(2):
        world.verifier.start("bob", m.id)
    with pytest.raises(RateLimited):
        world.verifier.start("bob", m.id)
    mine = service.add_destination("alice", {"protocol": "irc", "address": "alice"})
    world.verifier.start("alice", mine.id)
    assert world.verifier.confirm_code("alice", mine.id, {"code": world.code("alice")}).verified
    assert len(world.irc.lines_to("alice")) == 3  # the limit over all accounts


def test_a_refused_request_uses_up_none_of_the_askers_tries(
        service: PreferencesService, world: World) -> None:
    # three other accounts fill the nick's overall limit; alice, retrying for her own
    # nick meanwhile, used up her own hour too: every refusal had counted
    for user in ("bob", "carol", "dave"):
        service.login(user, f"{user}@example.org")
        d = service.add_destination(user, {"protocol": "irc", "address": "alice"})
        world.verifier.start(user, d.id)
    mine = service.add_destination("alice", {"protocol": "irc", "address": "alice"})
    for _ in range(5):
        with pytest.raises(RateLimited, match="this address was sent too many"):
            world.verifier.start("alice", mine.id)
    others = [service.add_destination("alice", {"protocol": "irc", "address": f"n{i}"})
              for i in range(5)]
    for d in others:  # all five of her tries are still hers
        world.verifier.start("alice", d.id)
    with pytest.raises(RateLimited, match="you have asked for too many verification messages;"):
        world.verifier.start("alice", others[0].id)


def test_a_destination_whose_verification_cannot_go_out_is_not_kept(
        service: PreferencesService, world: World) -> None:
    from fmn.errors import RetryableError

    world.mailer.fail = RetryableError("the mail relay is away")
    with pytest.raises(RetryableError):
        world.verifier.add("alice", {"protocol": "email", "address": "a2@example.org"})
    world.irc.down = True
    with pytest.raises(RetryableError):
        world.verifier.add("alice", {"protocol": "irc", "address": "alice"})
    assert [d.id for d in service.destinations("alice")] == ["email"]
    # so the same request, made again once the relay is back, adds it
    world.mailer.fail = None
    dest, sent = world.verifier.add("alice", {"protocol": "email", "address": "a2@example.org"})
    assert sent == "link" and world.mailer.sent[-1]["To"] == "a2@example.org"


def test_a_verification_that_could_not_go_out_uses_up_no_try(
        service: PreferencesService, world: World) -> None:
    # an hour of a mail relay outage used to spend the person's tries (5 an hour here) and
    # the address's (2): once it was back, the request was refused as too many
    from fmn.errors import NotSent, RetryableError

    world.mailer.fail = NotSent("the mail relay cannot be reached")
    for _ in range(6):
        with pytest.raises(NotSent):
            world.verifier.add("alice", {"protocol": "email", "address": "a5@example.org"})
    world.mailer.fail = None
    dest, sent = world.verifier.add("alice", {"protocol": "email", "address": "a5@example.org"})
    assert sent == "link"
    assert world.verifier.start("alice", dest.id) == "link"  # the address's second
    with pytest.raises(RateLimited):  # and what went out still counts
        world.verifier.start("alice", dest.id)
    # a send that may have gone (a relay that hung up after the message) counts: a slow
    # relay must not lift the per-address limit
    world.mailer.fail = RetryableError("the relay hung up after the message")
    for _ in range(2):
        with pytest.raises(RetryableError):
            world.verifier.add("alice", {"protocol": "email", "address": "a6@example.org"})
    with pytest.raises(RateLimited):
        world.verifier.add("alice", {"protocol": "email", "address": "a6@example.org"})


def test_irc_nicks_are_one_nick_under_irc_case_folding(
        service: PreferencesService, world: World) -> None:
    # rfc1459: [ ] \\ ~ are the upper case of { } | ^
    a = service.add_destination("alice", {"protocol": "irc", "address": "victim["})
    with pytest.raises(Conflict):
        service.add_destination("alice", {"protocol": "irc", "address": "VICTIM{"})
    b = service.add_destination("bob", {"protocol": "irc", "address": "victim{"})
    service.login("carol", "carol@example.org")
    c = service.add_destination("carol", {"protocol": "irc", "address": "Victim["})
    world.verifier.start("alice", a.id)
    world.verifier.start("bob", b.id)
    world.verifier.start("carol", c.id)
    with pytest.raises(RateLimited):  # a fourth message to the same nick, however spelt
        world.verifier.start("alice", a.id)


def test_an_atom_feed_address_lives_while_it_is_read(clock: FakeClock) -> None:
    from fmn.web.atom import KEY_TTL_S, AtomFeeds, FeedNotFound

    class CountingKeys(MemoryKeys):
        touched = 0

        def touch(self, key: str, ttl_s: int) -> None:
            self.touched += 1
            super().touch(key, ttl_s)

    keys = CountingKeys(clock)
    feeds = AtomFeeds(keys, "s3cret", "https://fmn.test")
    token = feeds.url("alice").rsplit("/", 1)[1]
    keys.touched = 0  # giving the address out keeps it too
    for _day in range(800):  # a feed reader polling every hour for more than two years
        for _hour in range(24):
            assert feeds.user_of(token) == "alice"
            clock.now += 3600
    assert keys.touched == 800  # once a day, not on every read
    # a token is still refused once nobody read it for the key's lifetime
    clock.now += KEY_TTL_S + 1
    with pytest.raises(FeedNotFound):
        feeds.user_of(token)
    # and a revocation is never undone by a read that raced it
    token = feeds.url("alice").rsplit("/", 1)[1]
    feeds.revoke("alice")
    clock.now += 2 * 24 * 3600
    with pytest.raises(FeedNotFound):
        feeds.user_of(token)


def test_an_address_given_out_as_its_key_expires_still_works(clock: FakeClock) -> None:
    """Kept by its expiry alone, a key that lapsed between the read and the keeping was
    not there any more: the address given out answered 404 at once."""
    from fmn.web.atom import KEY_TTL_S, AtomFeeds

    lapse = {"armed": False}

    class LapsingKeys(MemoryKeys):
        def get(self, key: str) -> str | None:
            value = super().get(key)
            if lapse["armed"]:
                lapse["armed"] = False
                clock.now += KEY_TTL_S + 1  # the year runs out right after the read
            return value

    feeds = AtomFeeds(LapsingKeys(clock), "s3cret", "https://fmn.test")
    feeds.url("alice")
    lapse["armed"] = True
    token = feeds.url("alice").rsplit("/", 1)[1]
    assert feeds.user_of(token) == "alice"


def test_a_revocation_is_not_undone_by_an_address_asked_for_meanwhile(
        clock: FakeClock) -> None:
    """Asking for the address read the key and wrote it back: a revocation in between
    was undone, the leaked address worked again and the new one answered 404."""
    from fmn.web.atom import AtomFeeds, FeedNotFound

    race = {"armed": False, "revoked": ""}

    class RacingKeys(MemoryKeys):
        def get(self, key: str) -> str | None:
            value = super().get(key)
            if race["armed"]:  # the revocation runs right after this read
                race["armed"] = False
                race["revoked"] = feeds.revoke("alice")
            return value

    keys = RacingKeys(clock)
    feeds = AtomFeeds(keys, "s3cret", "https://fmn.test")
    leaked = feeds.url("alice").rsplit("/", 1)[1]
    race["armed"] = True
    feeds.url("alice")  # another tab asks for the address as the revocation runs
    with pytest.raises(FeedNotFound):
        feeds.user_of(leaked)
    assert feeds.user_of(race["revoked"].rsplit("/", 1)[1]) == "alice"


# -- configuration and sign-in ---------------------------------------------


def test_the_dev_login_is_refused_in_production() -> None:
    web = Settings.from_env({"FMN_ENV": "production", "FMN_DEV_LOGIN": "1",
                             "FMN_SECRET_KEY": "a-real-secret"})
    with pytest.raises(UnsafeConfiguration, match="FMN_DEV_LOGIN"):
        check(web)
    with pytest.raises(UnsafeConfiguration, match="FMN_SECRET_KEY"):
        check(Settings(env="production"))
    check(Settings(env="development", dev_login=True))
    assert Settings.from_env({"FMN_ADMINS": "a, b,,"}).admins == {"a", "b"}


def _jwt(claims: dict[str, Any]) -> str:
    def enc(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
    return f"{enc({'alg': 'RS256'})}.{enc(claims)}.sig"


def test_oidc_code_flow_with_pkce(clock: FakeClock) -> None:
    issuer = "https://id.example.org"
    seen: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(200, json={
                "issuer": issuer, "authorization_endpoint": f"{issuer}/auth",
                "token_endpoint": f"{issuer}/token"})
        form = dict(httpx.QueryParams(request.content.decode()))
        seen.update(form)
        return httpx.Response(200, json={"id_token": _jwt({
            "iss": issuer, "aud": "fmn", "exp": clock() + 60, "nonce": seen["nonce"],
            "sub": "1", "nickname": "alice", "email": "alice@example.org",
            "email_verified": True})})

    client = OidcClient(issuer, "fmn", None, "https://fmn.test/oidc/callback",
                        http=httpx.Client(transport=httpx.MockTransport(handler)), clock=clock)
    url, pending = client.begin()
    query = dict(httpx.URL(url).params)
    assert query["code_challenge"] == pkce_challenge(pending["verifier"])
    assert query["code_challenge_method"] == "S256" and query["state"] == pending["state"]
    seen["nonce"] = pending["nonce"]
    with pytest.raises(OidcError):
        client.finish(pending, {"state": "forged", "code": "c"})
    account = client.finish(pending, {"state": pending["state"], "code": "c"})
    assert (account.name, account.email) == ("alice", "alice@example.org")
    assert seen["code_verifier"] == pending["verifier"] and seen["client_id"] == "fmn"
    seen["nonce"] = "another"
    with pytest.raises(OidcError, match="nonce"):
        client.finish(pending, {"state": pending["state"], "code": "c"})


@pytest.mark.parametrize(("token", "userinfo", "expected", "trust"), [
    ({"email": "someone@example.org", "email_verified": False}, None, None, False),
    ({"email": "someone@example.org"}, None, None, False),  # not said verified: not trusted
    ({"email": "someone@example.org", "email_verified": False},
     {"email": "other@example.org"}, None, False),
    ({"email": "someone@example.org", "email_verified": False},
     {"email": "other@example.org", "email_verified": True}, "other@example.org", False),
    ({"email": "someone@example.org", "email_verified": True}, None, "someone@example.org", False),
    # an issuer trusted to release only verified addresses (FMN_OIDC_TRUST_EMAIL)
    ({"email": "someone@example.org"}, None, "someone@example.org", True),
    ({"email": None}, None, None, True),
    ({"email": "someone@example.org", "email_verified": False}, None, None, True),
])
def test_only_an_email_the_issuer_verified_becomes_a_verified_destination(
        engine: Engine, store: RecordingStore, clock: FakeClock, token: dict[str, Any],
        userinfo: dict[str, Any] | None, expected: str | None, trust: bool) -> None:
    """An ID token's e-mail without ``email_verified`` may be anyone's: the first sign-in
    must not make it a verified destination (the live feed stands in, as without one)."""
    issuer = "https://id.example.org"
    nonce: dict[str, str] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(200, json={
                "issuer": issuer, "authorization_endpoint": f"{issuer}/auth",
                "token_endpoint": f"{issuer}/token",
                **({"userinfo_endpoint": f"{issuer}/userinfo"} if userinfo else {})})
        if request.url.path == "/userinfo":
            return httpx.Response(200, json={"sub": "1", **(userinfo or {})})
        return httpx.Response(200, json={"access_token": "t", "id_token": _jwt({
            "iss": issuer, "aud": "fmn", "exp": clock() + 60, "nonce": nonce["n"],
            "sub": "1", "nickname": "newbie", **token})})

    client = OidcClient(issuer, "fmn", None, "https://fmn.test/oidc/callback",
                        http=httpx.Client(transport=httpx.MockTransport(handler)), clock=clock,
                        trust_email=trust)
    _url, pending = client.begin()
    nonce["n"] = pending["nonce"]
    account = client.finish(pending, {"state": pending["state"], "code": "c"})
    assert account.email == expected
    user = PreferencesService(engine, store, clock=clock).login(account.name, account.email)
    if expected is None:
        assert [(d.protocol, d.verified) for d in user.destinations] == [("sse", True)]
    else:
        assert [(d.address, d.verified) for d in user.destinations] == [(expected, True)]


def test_recent_notifications_are_the_newest_whatever_offset_their_time_has(
        engine: Engine, store: RecordingStore, clock: FakeClock) -> None:
    # sorted as text, 12:30+02:00 (10:30 UTC) came before 11:00 UTC, and the newest was cut
    def preview(user: Any, rule: Any, limit: int, budget_ms: float | None = None
                ) -> dict[str, Any]:
        return {"window": 2, "matched": 2, "complete": True, "messages": [
            {"id": m, "topic": "t", "app": None, "summary": m, "url": None, "sent_at": at,
             "severity": "INFO"} for m, at in (("older", "2026-12-04T12:30:00+02:00"),
                                                ("newer", "2026-12-04T11:00:00+00:00"))]}

    clock.now = datetime(2026, 12, 5, tzinfo=UTC).timestamp()
    service = PreferencesService(engine, store, previewer=preview, clock=clock)
    service.login("alice", "alice@example.org")
    assert [n["message_id"] for n in service.notifications("alice", 1)] == ["newer"]
    assert [n["message_id"] for n in service.notifications("alice", 2)] == ["newer", "older"]


def test_window_messages_in_the_recent_list_are_cleaned_and_never_pinned_on_top(
        engine: Engine, store: RecordingStore, clock: FakeClock) -> None:
    """A window match carries the publisher's words: its summary and link are cleaned as
    the live feed's are, a sent-at ahead of our clock is not believed (9999-12-31 put
    it on top of every list and of the Atom feed), and a long id is the feed's hashed
    one, so a message both delivered live and in the window is one item."""
    from fmn.delivery.feed import MemoryFeed, encode_event, feed_message_id

    long_id = "2026-" + "x" * 300
    clock.now = datetime(2026, 12, 5, 19, tzinfo=UTC).timestamp()

    def preview(user: Any, rule: Any, limit: int, budget_ms: float | None = None
                ) -> dict[str, Any]:
        return {"window": 3, "matched": 3, "complete": True, "messages": [
            {"id": "evil", "topic": "t", "app": "x", "severity": "INFO",
             "summary": "\u202eFAKE\u202c on top", "url": "javascript:alert(1)",
             "sent_at": "9999-12-31T23:59:59+00:00"},
            {"id": "real", "topic": "t", "app": "y", "severity": "INFO", "summary": "real",
             "url": "https://src.fedoraproject.org/", "sent_at": "2026-12-05T18:00:00+00:00"},
            {"id": long_id, "topic": "t", "app": "z", "severity": "INFO", "summary": "both",
             "url": None, "sent_at": "2026-12-05T17:00:00+00:00"},
            {"id": "garbled", "topic": "t", "app": "z", "severity": "INFO",
             "summary": "garbled", "url": None, "sent_at": "\u202e" + "9" * 5000}]}

    feed = MemoryFeed()
    feed.append("alice", encode_event({
        "v": 1, "message_id": feed_message_id(long_id), "summary": "both", "rules": [],
        "received_at": "2026-12-05T17:00:01.000+00:00"}))
    service = PreferencesService(engine, store, previewer=preview, clock=clock, feed=feed)
    service.login("alice", "alice@example.org")
    items = service.notifications("alice", 10)
    assert [i["summary"] for i in items][:2] == ["real", "both"]
    assert {i["summary"] for i in items[2:]} == {"FAKE on top", "garbled"}
    evil = next(i for i in items if i["message_id"] == "evil")
    assert evil["url"] is None and evil["received_at"] is None
    # a receipt time is always ours: UTC, to the millisecond; none for what is no time
    assert items[0]["received_at"] == "2026-12-05T18:00:00.000+00:00"
    assert items[0]["url"] == "https://src.fedoraproject.org/"
    garbled = next(i for i in items if i["message_id"] == "garbled")
    assert garbled["received_at"] is None and len(garbled["sent_at"]) <= 64


def test_all_rules_together_share_one_window_budget(
        engine: Engine, store: RecordingStore, clock: FakeClock) -> None:
    # up to 100 rules at the rule editor's budget each held one request for 12 s
    from fmn.web.service import MIN_RULE_BUDGET_MS, WINDOW_BUDGET_MS

    asked: list[float] = []

    def slow_preview(user: Any, rule: Any, limit: int, budget_ms: float | None = None
                     ) -> dict[str, Any]:
        assert budget_ms is not None
        asked.append(budget_ms)
        clock.now += (budget_ms + 20) / 1000  # the walk, and a rule's set-up besides
        return {"window": 100_000, "matched": 3, "complete": False, "messages": [
            {"id": f"m-{rule.id}", "topic": "t", "app": None, "summary": "s", "url": None,
             "sent_at": "2026-12-04T00:00:00+00:00", "severity": "INFO"}]}

    service = PreferencesService(engine, store, previewer=slow_preview, clock=clock)
    service.login("alice", "alice@example.org")
    for i in range(40):
        service.create_rule("alice", {**TOPIC_RULE, "name": f"rule {i}"})
    stats = service.stats("alice")
    assert stats["complete"] is False and stats["source"] == "window"
    assert 1 < len(asked) < 42 and all(b >= MIN_RULE_BUDGET_MS for b in asked)
    assert sum(asked) <= WINDOW_BUDGET_MS + MIN_RULE_BUDGET_MS * len(asked)
    counted = [n for n in stats["rules"].values() if n]
    assert len(counted) == len(asked) and set(counted) == {3}  # the others: not reached
    asked.clear()
    found, complete = service.recent_notifications("alice", 1000)
    assert 1 < len(found) == len(asked) and complete is False


def test_stats_are_complete_when_the_window_answers_in_time(
        engine: Engine, store: RecordingStore, clock: FakeClock) -> None:
    def quick_preview(user: Any, rule: Any, limit: int, budget_ms: float | None = None
                      ) -> dict[str, Any]:
        return {"window": 10, "matched": 1, "complete": True, "messages": []}

    service = PreferencesService(engine, store, previewer=quick_preview, clock=clock)
    service.login("alice", "alice@example.org")
    assert service.stats("alice") == {"days": 7, "rules": {"my-packages": 1, "my-events": 1},
                                      "source": "window", "complete": True}
    assert service.recent_notifications("alice")[1] is True


def test_an_email_domain_in_look_alike_letters_is_the_same_address(
        service: PreferencesService, world: World) -> None:
    # full-width letters go to the ASCII domain (IDNA): the same mailbox, so the same
    # address to the per-address limit and to the duplicate check
    spellings = ["victim@example.org", "victim@\uff45xample.org", "Victim@example.org",
                 "VICTIM@ex\uff41mple.org"]
    for user, address in zip(["alice", "bob", "carol", "root"], spellings, strict=True):
        service.login(user, f"{user}@example.net")
        if address is spellings[-1]:
            with pytest.raises(RateLimited):  # a fourth message to that mailbox
                world.verifier.add(user, {"protocol": "email", "address": address})
        else:
            world.verifier.add(user, {"protocol": "email", "address": address})
    assert [str(m["To"]) for m in world.mailer.sent] == ["victim@example.org"] * 2 + \
        ["Victim@example.org"]
    with pytest.raises(Conflict):  # one person, the same mailbox twice
        service.add_destination("alice", {"protocol": "email",
                                          "address": "victim@\uff45xample.org"})


def test_an_address_that_refuses_its_verification_is_not_kept(
        service: PreferencesService, world: World, caplog: pytest.LogCaptureFixture) -> None:
    # a homeserver that will not invite that user: a 400 on the address, not a 500
    # that kept the destination (and made the retry a 409)
    from fmn.errors import PermanentError

    class Refusing(RecordingChannel):
        def send_code(self, address: str, text: str) -> None:
            raise PermanentError("creating a room: M_FORBIDDEN Your account is suspended: "
                                 "log in again at https://phish.example")

    world.verifier.channels["matrix"] = Refusing("matrix")
    with pytest.raises(Invalid) as refused, caplog.at_level("WARNING", "fmn.web.verify"):
        world.verifier.add("alice", {"protocol": "matrix", "address": "@nobody:example.org"})
    assert refused.value.field == "address"
    # the homeserver's own words are the operator's to read, not the person's: another
    # homeserver's text shown in our page as our answer would be theirs to phish with
    assert refused.value.detail == ("the verification cannot be delivered to this address: "
                                    "the Matrix homeserver refused it")
    assert "phish.example" in caplog.text and "M_FORBIDDEN" in caplog.text
    assert [d.id for d in service.destinations("alice")] == ["email"]


def test_a_link_whose_destination_could_not_be_verified_works_again(
        service: PreferencesService, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from fmn.errors import RetryableError

    dest, _ = world.verifier.add("alice", {"protocol": "email", "address": "a2@example.org"})
    token = world.link().rsplit("/", 1)[1]
    mark = service.mark_verified

    def database_away(*args: Any) -> Any:
        raise RetryableError("the database is away")

    monkeypatch.setattr(service, "mark_verified", database_away)
    with pytest.raises(RetryableError):
        world.verifier.confirm_email(token)
    monkeypatch.setattr(service, "mark_verified", mark)
    user, verified = world.verifier.confirm_email(token)  # not "used already"
    assert (user, verified.id, verified.verified) == ("alice", dest.id, True)
    with pytest.raises(VerificationFailed) as again:
        world.verifier.confirm_email(token)
    assert again.value.reason == "used"


def test_a_patch_without_digest_leaves_the_digest_alone(service: PreferencesService) -> None:
    digest = {"interval_s": 3600, "max_count": 20}
    set_ = service.patch_destination("alice", "email", {"digest": digest})
    assert set_.digest is not None and set_.digest.interval_s == 3600
    assert service.patch_destination("alice", "email", {}).digest == set_.digest
    assert service.patch_destination("alice", "email", {"digest": None}).digest is None


def test_a_failed_take_back_does_not_hide_why_adding_failed(
        service: PreferencesService, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from fmn.errors import RetryableError

    world.mailer.fail = RetryableError("the mail relay is away")

    def cannot_delete(*args: Any) -> None:
        raise Conflict("another tab made a rule send to it")

    monkeypatch.setattr(service, "delete_destination", cannot_delete)
    with pytest.raises(RetryableError, match="relay"):  # not the take-back's Conflict
        world.verifier.add("alice", {"protocol": "email", "address": "a2@example.org"})


def test_an_atom_feed_takes_its_times_from_receipt_not_from_the_publisher() -> None:
    """A window message whose sent-at is not believed has no receipt time: the
    publisher's 9999-12-31 must not become the feed's or the entry's time."""
    from fmn.web.atom import render

    doc = render("alice", [
        {"message_id": "real", "summary": "real", "sent_at": "2026-12-05T18:00:00+00:00",
         "received_at": "2026-12-05T18:00:01.000+00:00"},
        {"message_id": "evil", "summary": "evil", "sent_at": "9999-12-31T23:59:59+00:00",
         "received_at": None}], "https://notif.example/atom/x", "https://notif.example")
    assert b"9999" not in doc
    assert b"<updated>2026-12-05T18:00:01" in doc
