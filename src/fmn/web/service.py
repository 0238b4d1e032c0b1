"""One signed-in user's preferences: reading and editing them, no HTTP.

:class:`PreferencesService` is what the web API's routes call.  Every method
takes the name of the signed-in user (the edge proves it from the session)
and only ever reads or writes that user's own preferences; the admin methods
take the admin's name and refuse anyone not in ``admins``.  Edits load the
user, change the value types, validate the result through
:mod:`fmn.prefs` (so a refusal names the field, e.g.
``generation_rules[0].filters.severities[1]``), save it with
:func:`fmn.db.save_user` and publish the new revision with
:func:`fmn.snapshot.sync.publish_saved`, so the next message is matched on
it.  Ids of new destinations and rules are made here; a body that carries
a field the API does not know is refused.

Errors are :class:`WebError` subclasses (all :class:`~fmn.errors.PermanentError`)
carrying an error code, an HTTP status and the field at fault:
:class:`Invalid` 400, :class:`NotSignedIn` 401, :class:`Forbidden` 403,
:class:`NotFound` 404, :class:`Conflict` 409, :class:`RateLimited` 429.
Database and Redis failures pass through untranslated (the edge answers 503),
except a failure to publish a saved change: saving recorded it as pending
(:mod:`fmn.db.pending`, in the same transaction), so it is published by the
next write that reaches the store or by the next full publish, and ``me``
reports ``publish_pending`` until then.
A change is read-modify-write of the user, saved only if the user is still
at the revision it was read at (:class:`fmn.db.StaleUser` otherwise); an
edit that lost such a race is redone from a fresh read (:func:`_redone_if_stale`),
so two concurrent edits never undo each other (an unsubscribe, an admin's
disable, a rule added in another tab).  After :data:`EDIT_ATTEMPTS` lost
races the request is refused with :class:`Conflict`, nothing saved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import random
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ParamSpec, Protocol, TypeVar

import orjson
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from fmn import db
from fmn.db import pending
from fmn.delivery.email import InvalidAddress, ascii_address, check_address
from fmn.delivery.feed import FeedStore, message_fields
from fmn.delivery.irc import irc_lower, valid_nick
from fmn.errors import FmnError, PermanentError
from fmn.message import ARTIFACT_TYPES, sent_time
from fmn.prefs import (
    MAX_DESTINATIONS,
    MAX_RULES,
    PROTOCOLS,
    Destination,
    Filters,
    GenerationRule,
    InvalidPreferences,
    Rule,
    Tracking,
    User,
    dump_destination,
    dump_rule,
    parse_destination,
    parse_rule,
)
from fmn.snapshot.store import SnapshotStore
from fmn.snapshot.sync import publish_pending, publish_saved
from fmn.web import schema

log = logging.getLogger(__name__)

MAX_PREVIEW_LIMIT = 200
MAX_FEED_LIMIT = 1000
STATS_DAYS = 7
#: The fields a client may send (everything else is refused).
RULE_FIELDS = ("name", "enabled", "tracking", "generation_rules")
RULE_PATCH_FIELDS = ("enabled", "name")
NEW_DESTINATION_FIELDS = ("protocol", "address")
DESTINATION_PATCH_FIELDS = ("digest",)
_MATRIX_ID = re.compile(r"@[a-z0-9._=/+-]{1,255}:[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?")
_ID_PART = re.compile(r" \([^()]*\)")


# --------------------------------------------------------------------------
# errors


class WebError(PermanentError):
    """A request the API refuses: ``code`` (machine tag), ``status``, ``field`` (or None)."""

    status = 400
    code = "invalid"
    #: a refusal for a while: the seconds its ``Retry-After`` header says (None: none)
    retry_after_s: int | None = None

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {detail}" if field else detail)
        self.detail = detail
        self.field = field

    def as_json(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, "field": self.field}


class Invalid(WebError):
    status, code = 400, "invalid"


class NotSignedIn(WebError):
    status, code = 401, "not-signed-in"


class Forbidden(WebError):
    status, code = 403, "forbidden"


class NotFound(WebError):
    status, code = 404, "not-found"


class Conflict(WebError):
    status, code = 409, "conflict"


class PreconditionFailed(WebError):
    """An ``If-Match`` that no longer names the current version (:func:`rule_etag`)."""

    status, code = 412, "precondition-failed"


class TooLarge(WebError):
    """A request body over the size limit (the detail names it)."""

    status, code = 413, "too-large"


class RateLimited(WebError):
    status, code = 429, "rate-limited"

    def __init__(self, detail: str, retry_after_s: int, field: str | None = None) -> None:
        super().__init__(detail, field)
        self.retry_after_s = retry_after_s


def field_path(where: str) -> str | None:
    """The JSON path of an :class:`InvalidPreferences` location, relative to the body.

    ``rule (r-1) > generation_rules[0].filters.topic`` -> ``generation_rules[0].filters.topic``
    """
    parts = [_ID_PART.sub("", p) for p in where.split(" > ")][1:]
    return ".".join(parts) or None


def _invalid(exc: InvalidPreferences) -> Invalid:
    return Invalid(exc.reason, field_path(exc.where))


def check_fields(body: Any, allowed: Sequence[str], required: Sequence[str] = (),
                 prefix: str = "") -> Mapping[str, Any]:
    """``body`` if it is an object with only ``allowed`` keys and every ``required`` one."""
    if not isinstance(body, Mapping):
        raise Invalid(f"the body must be a JSON object, not {type(body).__name__}",
                      prefix or None)
    for key in body:
        if key not in allowed:
            raise Invalid(f"unknown field (allowed: {', '.join(allowed)})", f"{prefix}{key}")
    for key in required:
        if key not in body:
            raise Invalid("missing field", f"{prefix}{key}")
    return body


# --------------------------------------------------------------------------
# ports


class Previewer(Protocol):
    """What the rule editor's preview asks: recent messages this rule would route."""

    def __call__(self, user: User, rule: Rule, limit: int,
                 budget_ms: float | None = None) -> Mapping[str, Any]:
        """What ``rule`` matched; ``budget_ms`` caps its walk of the window (None: the
        preview's own default), ``complete`` in the answer says whether it ran out."""
        ...


#: What the notifications, the stats and the Atom feed may spend previewing all of one
#: user's enabled rules, together: each rule gets a share of what is left (at least
#: :data:`MIN_RULE_BUDGET_MS`), and once it is spent the rules left are not previewed
#: (answered ``complete: false``).  100 rules at the rule editor's 120 ms each held one
#: request for 12 s.
WINDOW_BUDGET_MS = 300.0
MIN_RULE_BUDGET_MS = 1.0


def unavailable_preview(user: User, rule: Rule, limit: int,
                        budget_ms: float | None = None) -> dict[str, Any]:
    """The stand-in while no preview engine is installed: nothing matched, said so."""
    return {"window": 0, "matched": 0, "messages": [], "took_ms": 0.0, "available": False}


def engine_previewer(engine: Engine, redis_url: str, key: str) -> Previewer:
    """:class:`fmn.preview.WindowPreview` over the Redis window, behind the port.

    The ownership a preview needs (the user's artifacts, and those of the
    groups the rule names) is read from the database per preview.
    """
    from fmn.preview import Ownership, RedisWindowStore, WindowPreview
    from fmn.preview.index import DEFAULT_BUDGET_MS

    window = WindowPreview(RedisWindowStore.from_url(redis_url, key=key))

    def run(user: User, rule: Rule, limit: int,
            budget_ms: float | None = None) -> Mapping[str, Any]:
        by_user, by_group = ownership_for(engine, user.name, rule.tracking.groups)
        # None is the rule editor's default here; to the window it would mean no bound
        result = window.preview(rule, user.name, Ownership(by_user, by_group), limit,
                                DEFAULT_BUDGET_MS if budget_ms is None else budget_ms)
        return {"window": result.window_size, "matched": result.count,
                "messages": [{"id": m.id, "topic": m.topic, "app": m.app_name,
                              "summary": m.summary, "url": m.url, "sent_at": m.sent_at,
                              "severity": m.severity} for m in result.matches],
                "took_ms": round(result.elapsed_ms, 3), "undecided": result.undecided,
                "complete": result.complete}

    return run


def ownership_for(engine: Engine, name: str, groups: Sequence[str]
                  ) -> tuple[dict[str, list[tuple[str, str]]], dict[str, list[tuple[str, str]]]]:
    """(user -> owned artifacts, group -> owned artifacts) for one user and some groups."""
    from fmn.db.models import OwnerGroupRow, OwnerUserRow

    by_user: dict[str, list[tuple[str, str]]] = {name: []}
    by_group: dict[str, list[tuple[str, str]]] = {g: [] for g in groups}
    with engine.connect() as conn:
        for t, n in conn.execute(select(OwnerUserRow.artifact_type, OwnerUserRow.artifact_name)
                                 .where(OwnerUserRow.username == name)):
            by_user[name].append((t, n))
        if groups:
            for t, n, g in conn.execute(
                    select(OwnerGroupRow.artifact_type, OwnerGroupRow.artifact_name,
                           OwnerGroupRow.group_name)
                    .where(OwnerGroupRow.group_name.in_(list(groups)))):
                by_group[g].append((t, n))
    return by_user, by_group


def _named(rule: Any) -> Any:
    """A previewed rule, named if it is not yet (the editor previews before naming)."""
    if isinstance(rule, Mapping) and isinstance(rule.get("name"), str) \
            and not rule["name"].strip():
        return {**rule, "name": "preview"}
    return rule


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"


# --------------------------------------------------------------------------
# defaults


def default_user(name: str, email: str | None) -> User:
    """A first login's preferences: "My packages" and "My events" on the account's address.

    The account's e-mail comes from the account system, which said it verified it
    (the OIDC claim ``email_verified``: :class:`fmn.web.oidc.Account`), so it counts
    as verified.  Without one, the rules go to the user's live feed instead.
    """
    dest: Destination | None = None
    if email:
        try:
            dest = Destination("email", "email", check_address(email), True)
        except InvalidAddress:
            log.warning("account %s has an unusable e-mail address; using the feed", name)
    if dest is None:
        dest = Destination("feed", "sse", None, True)
    return User(name=name, enabled=True, destinations=(dest,), rules=(
        Rule("my-packages", "My packages", True, Tracking("artifacts-owned"),
             (GenerationRule(Filters(), (dest.id,)),)),
        Rule("my-events", "My events", True, Tracking("related-events"),
             (GenerationRule(Filters(my_actions=False), (dest.id,)),)),
    ))


def check_destination_address(protocol: str, address: Any, field: str = "address") -> str | None:
    """The address, normalised, if it suits the protocol; :class:`Invalid` otherwise."""
    if protocol == "sse":
        if address is not None:
            raise Invalid("a live feed (sse) has no address: leave it out", field)
        return None
    if not isinstance(address, str) or not address.strip():
        raise Invalid(f"a {protocol} destination needs an address", field)
    text: str = address.strip()
    if protocol == "email":
        try:
            return check_address(text)
        except InvalidAddress:
            raise Invalid("not a plain e-mail address (local@domain)", field) from None
    if protocol == "irc":
        if not valid_nick(text):
            raise Invalid("not an IRC nick (letters, digits and []\\`_^{|}-, at most 32)", field)
        return text
    if not _MATRIX_ID.fullmatch(text):
        raise Invalid("not a Matrix user id (@name:server)", field)
    return text


# --------------------------------------------------------------------------
# the service


def address_key(protocol: str, address: str | None) -> str:
    """The form of ``address`` under which two spellings of it are one: IRC nicks
    case-folded as IRC does (rfc1459: ``victim[`` is ``VICTIM{``); an e-mail address
    with its domain as mail is sent to it (IDNA: ``ｅxample.org``, in full-width
    letters, is ``example.org``), lower-cased; others lower-cased."""
    if protocol == "irc":
        return irc_lower(address or "")
    if protocol == "email" and address:
        # a domain IDNA refuses is no address mail goes to (check_address refuses it)
        with contextlib.suppress(UnicodeError):
            address = ascii_address(address)
    return (address or "").lower()


#: Times an edit is tried against concurrent edits of the same user before a 409.
EDIT_ATTEMPTS = 8

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _redone_if_stale(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """Run an edit again, from a fresh read, when another request saved the same user
    first (:class:`fmn.db.StaleUser`); :class:`Conflict` after :data:`EDIT_ATTEMPTS`."""

    @functools.wraps(method)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        for attempt in range(EDIT_ATTEMPTS):
            try:
                return method(*args, **kwargs)
            except db.StaleUser:
                time.sleep(random.uniform(0, 0.005 * (attempt + 1)))  # let the winner finish
        raise Conflict("your preferences were being changed by other requests at the "
                       "same time; nothing was saved: try again")

    return run


class PreferencesService:
    def __init__(self, engine: Engine, store: SnapshotStore, *,
                 admins: frozenset[str] = frozenset(), feed: FeedStore | None = None,
                 previewer: Previewer = unavailable_preview,
                 make_id: Callable[[str], str] = new_id,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.store = store
        self.admins = admins
        self.feed = feed
        self.previewer = previewer
        self.make_id = make_id
        self.clock = clock

    # -- users ---------------------------------------------------------------

    @_redone_if_stale
    def login(self, name: str, email: str | None) -> User:
        """The user ``name``, created with the first-login defaults if new."""
        user = db.load_user(self.engine, name)
        if user is None:
            user = default_user(name, email)
            self._save(user, db.NEW_USER)
            log.info("first login of %s: default rules created", name)
        return user

    def user(self, name: str) -> User:
        return self._load(name)[0]

    def _load(self, name: str) -> tuple[User, int]:
        """The user and their revision, for an edit to save against (:meth:`_save`)."""
        found = db.load_user_revision(self.engine, name)
        if found is None:
            raise NotSignedIn("no such account; sign in again")
        return found

    def is_admin(self, name: str) -> bool:
        return name in self.admins

    def stopped(self, name: str) -> str | None:
        """Why nothing is sent to ``name`` (an admin disabled the user, or their Fedora
        account is locked or deleted: the snapshot routes nothing to them), or None."""
        from fmn.ownership.store import is_blocked

        if not self.user(name).enabled:
            return "an administrator disabled this account"
        if is_blocked(self.engine, name):
            return "the Fedora account is locked or deleted"
        return None

    def check_may_reach_others(self, name: str) -> None:
        """:class:`Forbidden` while nothing is sent to ``name`` (:meth:`stopped`): such a
        user's session may still read and switch things off, but not add a destination
        nor make the service send a verification to an address (a stranger's, maybe)."""
        why = self.stopped(name)
        if why is not None:
            raise Forbidden(f"{why}: destinations cannot be added nor verifications sent")

    def me(self, name: str) -> dict[str, Any]:
        user = self.user(name)
        email = next((d.address for d in user.destinations
                      if d.protocol == "email" and d.verified), None)
        from fmn.ownership.store import is_blocked

        return {"name": user.name, "email": email, "is_admin": self.is_admin(name),
                "enabled": user.enabled,
                # the Fedora account locked or deleted: nothing is sent (publish_saved)
                "account_blocked": is_blocked(self.engine, name),
                # a saved change not yet in the snapshot (the store was away)
                "publish_pending": pending.is_pending(self.engine, name)}

    def _save(self, user: User, read_at: int) -> User:
        """Save an edit of the user as read at revision ``read_at`` (StaleUser if they
        changed since: the edit is redone, :func:`_redone_if_stale`) and publish it."""
        try:
            revision = db.save_user(self.engine, user, read_at)
        except InvalidPreferences as exc:
            raise _invalid(exc) from exc
        try:
            publish_saved(self.engine, self.store, user, revision)
            pending.clear(self.engine, [(user.name, revision)])
            # The store answers again: publish what earlier failures left behind.
            publish_pending(self.engine, self.store)
        except (FmnError, SQLAlchemyError) as exc:
            # Saved is saved: failing the request now would make the client
            # repeat it.  The pending row saving wrote keeps the change due:
            # the next write or full publish carries it (the database failing
            # right after the save, in clearing that row, leaves it due too).
            log.error("saved %s at revision %d but could not publish it (pending): %s",
                      user.name, revision, exc)
        return user

    def _fresh_id(self, prefix: str, taken: set[str]) -> str:
        while True:
            candidate = self.make_id(prefix)
            if candidate not in taken:
                return candidate

    # -- destinations -------------------------------------------------------

    def destinations(self, name: str) -> tuple[Destination, ...]:
        return self.user(name).destinations

    def destination(self, name: str, dest_id: str) -> Destination:
        dest = self.user(name).destination(dest_id)
        if dest is None:
            raise NotFound(f"you have no destination {dest_id!r}")
        return dest

    @_redone_if_stale
    def add_destination(self, name: str, body: Any) -> Destination:
        """A new, unverified destination (``sse``, the user's own feed, needs no proof)."""
        schema.check(schema.NewDestination, body)
        b = check_fields(body, NEW_DESTINATION_FIELDS, ("protocol",))
        protocol = b["protocol"]
        if protocol not in PROTOCOLS:
            raise Invalid(f"must be one of {', '.join(PROTOCOLS)}", "protocol")
        address = check_destination_address(protocol, b.get("address"))
        self.check_may_reach_others(name)
        user, read_at = self._load(name)
        if len(user.destinations) >= MAX_DESTINATIONS:
            raise Conflict(f"you have {MAX_DESTINATIONS} destinations already; delete one first")
        for d in user.destinations:
            same = address_key(protocol, d.address) == address_key(protocol, address)
            if d.protocol == protocol and same:
                raise Conflict(f"you have this destination already ({d.id})", "address")
        from fmn.web.ownership import offered_by_account

        # The user's own feed needs no proof, nor an e-mail address FAS verified as
        # theirs.  IRC and Matrix nicks in the account are free text its owner
        # typed (FAS proves nothing about them): they still need the code.
        verified = protocol == "sse" or (
            protocol == "email" and offered_by_account(self.engine, name, protocol, address))
        dest = Destination(self._fresh_id("d-", {d.id for d in user.destinations}),
                           protocol, address, verified=verified)
        self._save(dataclasses.replace(user, destinations=(*user.destinations, dest)), read_at)
        return dest

    @_redone_if_stale
    def patch_destination(self, name: str, dest_id: str, body: Any) -> Destination:
        schema.check(schema.DestinationPatch, body)
        b = check_fields(body, DESTINATION_PATCH_FIELDS)
        user, read_at = self._load(name)
        dest = user.destination(dest_id)
        if dest is None:
            raise NotFound(f"you have no destination {dest_id!r}")
        doc = dump_destination(dest)
        if "digest" in b:  # null turns digests off; left out, they stay as they are
            doc["digest"] = b["digest"]
        try:
            new = parse_destination(doc, "destination")
        except InvalidPreferences as exc:
            raise _invalid(exc) from exc
        self._replace_destination(user, new, read_at)
        return new

    def _replace_destination(self, user: User, new: Destination, read_at: int) -> None:
        self._save(dataclasses.replace(user, destinations=tuple(
            new if d.id == new.id else d for d in user.destinations)), read_at)

    @_redone_if_stale
    def delete_destination(self, name: str, dest_id: str) -> None:
        user, read_at = self._load(name)
        if user.destination(dest_id) is None:
            raise NotFound(f"you have no destination {dest_id!r}")
        names = [r.name or r.id for r in user.rules
                 if any(dest_id in g.destinations for g in r.generation_rules)]
        if names:  # by the names people see in the UI
            listed = ", ".join(repr(n) for n in names)
            raise Conflict(f"rules {listed} still send to this destination; change them first"
                           if len(names) > 1 else
                           f"rule {listed} still sends to this destination; change it first")
        self._save(dataclasses.replace(user, destinations=tuple(
            d for d in user.destinations if d.id != dest_id)), read_at)

    @_redone_if_stale
    def mark_verified(self, name: str, dest_id: str, address: str | None) -> Destination:
        """Verify a destination, if it still has the address that was proven."""
        user, read_at = self._load(name)
        dest = user.destination(dest_id)
        if dest is None or dest.address != address:
            raise NotFound("this destination was deleted or changed since")
        if dest.verified:
            return dest
        new = dataclasses.replace(dest, verified=True)
        self._replace_destination(user, new, read_at)
        return new

    @_redone_if_stale
    def unsubscribe(self, name: str, dest_id: str) -> Destination | None:
        """One-click unsubscribe (RFC 8058): the destination receives nothing until it
        is verified again.  ``None`` when it is gone already (the link stays harmless)."""
        try:
            user, read_at = self._load(name)
        except WebError:  # the account is gone: nothing to stop
            return None
        dest = user.destination(dest_id)
        if dest is None:
            return None
        if not dest.verified:
            return dest
        new = dataclasses.replace(dest, verified=False)
        self._replace_destination(user, new, read_at)
        return new

    # -- rules ----------------------------------------------------------------

    def rules(self, name: str) -> tuple[Rule, ...]:
        return self.user(name).rules

    def rule(self, name: str, rule_id: str) -> Rule:
        return _own_rule(self.user(name), rule_id)

    def _parse_rule(self, user: User, body: Any, rule_id: str) -> Rule:
        b = check_fields(body, ("id", "etag", *RULE_FIELDS), RULE_FIELDS)
        if "id" in b and b["id"] != rule_id:
            raise Invalid("rule ids are chosen by the server: leave it out", "id")
        # the etag is the precondition (replace_rule), not a part of the rule
        doc = {k: v for k, v in b.items() if k != "etag"}
        try:
            return parse_rule({**doc, "id": rule_id}, "rule", {d.id for d in user.destinations})
        except InvalidPreferences as exc:
            raise _invalid(exc) from exc

    @_redone_if_stale
    def create_rule(self, name: str, body: Any) -> Rule:
        user, read_at = self._load(name)
        if isinstance(body, Mapping) and "id" in body:
            raise Invalid("rule ids are chosen by the server: leave it out", "id")
        schema.check(schema.NewRule, body)
        if len(user.rules) >= MAX_RULES:
            raise Conflict(f"you have {MAX_RULES} rules already; delete one first")
        rule = self._parse_rule(user, body, self._fresh_id("r-", {r.id for r in user.rules}))
        self._save(dataclasses.replace(user, rules=(*user.rules, rule)), read_at)
        return rule

    @_redone_if_stale
    def replace_rule(self, name: str, rule_id: str, body: Any,
                     if_match: str | None = None) -> Rule:
        """Replace the rule; with ``if_match`` (an ``If-Match`` header) or an ``etag`` in the
        body, only if it still is the version that names (an editor open elsewhere must
        not undo a change made meanwhile: a rename, a disable)."""
        user, read_at = self._load(name)
        current = _own_rule(user, rule_id)
        schema.check(schema.RuleReplacement, body)  # a body refused is a 400 whatever else
        _check_version(current, body, if_match)
        rule = self._parse_rule(user, body, rule_id)
        return self._put_own_rule(user, rule, read_at)

    def _put_rule(self, user: User, rule: Rule, read_at: int) -> Rule:
        self._save(dataclasses.replace(user, rules=tuple(
            rule if r.id == rule.id else r for r in user.rules)), read_at)
        return rule

    def _put_own_rule(self, user: User, rule: Rule, read_at: int) -> Rule:
        """Save the owner's edit of a rule; an admin-disabled rule stays disabled."""
        if rule.enabled and self._admin_disabled(user.name, rule.id):
            raise Conflict("an administrator disabled this rule: it cannot be enabled again "
                           "(you may still edit or delete it)", "enabled")
        return self._put_rule(user, rule, read_at)

    def _admin_disabled(self, name: str, rule_id: str) -> bool:
        from fmn.db.models import AdminDisabledRuleRow as Row

        with self.engine.connect() as conn:
            return conn.execute(select(Row.rule_id).where(
                Row.user_name == name, Row.rule_id == rule_id)).first() is not None

    @_redone_if_stale
    def patch_rule(self, name: str, rule_id: str, body: Any,
                   if_match: str | None = None) -> Rule:
        """Enable, disable or rename; with ``if_match`` or an ``etag`` in the body, only the
        version that names (as :meth:`replace_rule`)."""
        schema.check(schema.RulePatch, body)
        b = check_fields(body, (*RULE_PATCH_FIELDS, "etag"))
        user, read_at = self._load(name)
        current = _own_rule(user, rule_id)
        _check_version(current, b, if_match)
        doc = {**dump_rule(current), **b}  # _parse_rule leaves the etag out
        return self._put_own_rule(user, self._parse_rule(user, doc, rule_id), read_at)

    @_redone_if_stale
    def delete_rule(self, name: str, rule_id: str) -> None:
        from sqlalchemy import delete

        from fmn.db.models import AdminDisabledRuleRow as Row

        user, read_at = self._load(name)
        _own_rule(user, rule_id)
        self._save(dataclasses.replace(user, rules=tuple(r for r in user.rules
                                                         if r.id != rule_id)), read_at)
        try:  # the rule is gone: a failure now must not answer as if it were not
            with self.engine.begin() as conn:
                conn.execute(delete(Row).where(Row.user_name == name, Row.rule_id == rule_id))
        except SQLAlchemyError as exc:  # a mark left names no rule (new ids are random)
            log.error("deleted rule %s of %s but not its admin-disable mark: %s",
                      rule_id, name, exc)

    def preview(self, name: str, body: Any) -> Mapping[str, Any]:
        if isinstance(body, Mapping) and isinstance(body.get("rule"), Mapping) \
                and "id" in body["rule"]:
            raise Invalid("a previewed rule has no id: leave it out", "rule.id")
        schema.check(schema.PreviewRequest, body)
        b = check_fields(body, ("rule", "limit"), ("rule",))
        limit = b.get("limit", 50)
        if isinstance(limit, bool) or not isinstance(limit, int) \
                or not 0 < limit <= MAX_PREVIEW_LIMIT:
            raise Invalid(f"must be an integer from 1 to {MAX_PREVIEW_LIMIT}", "limit")
        user = self.user(name)
        if isinstance(b["rule"], Mapping) and "id" in b["rule"]:
            raise Invalid("a previewed rule has no id: leave it out", "rule.id")
        try:
            rule = self._parse_rule(user, _named(b["rule"]), "preview")
        except Invalid as exc:
            raise Invalid(exc.detail, f"rule.{exc.field}" if exc.field else "rule") from exc
        return self.previewer(user, rule, limit)

    # -- what happened ------------------------------------------------------

    def _feed_events(self, name: str, limit: int) -> list[dict[str, Any]]:
        """The user's latest live-feed events, oldest first, each with its feed ``id``."""
        if self.feed is None:
            return []
        out = []
        for event in self.feed.latest(name, limit):
            try:
                doc = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(doc, dict):
                out.append({"id": event.id, **doc})
        return out

    def _window_matches(self, user: User, limit: int) -> tuple[bool, dict[str, Any]]:
        """What each enabled rule matched in the preview window (the last 7 days or
        100,000 messages, whatever the destination): ``(window has messages, rule id ->
        preview answer)``, all within :data:`WINDOW_BUDGET_MS` (an answer that ran out
        of its share says ``complete: false`` and covers the newest messages, or none)."""
        answers: dict[str, Any] = {}
        seen = False
        enabled = [r for r in user.rules if r.enabled]
        deadline = self.clock() + WINDOW_BUDGET_MS / 1000
        for i, rule in enumerate(enabled):
            left_ms = (deadline - self.clock()) * 1000
            if left_ms <= 0:  # a rule's set-up alone (its candidates) takes time too
                answers[rule.id] = {"window": 0, "matched": 0, "messages": [],
                                    "complete": False}
                continue
            share = max(MIN_RULE_BUDGET_MS, left_ms / (len(enabled) - i))
            answer = self.previewer(user, rule, limit, budget_ms=share)
            if answer.get("available") is False:
                return False, {}
            seen = seen or bool(answer.get("window"))
            answers[rule.id] = answer
        return seen, answers

    def notifications(self, name: str, limit: int = 50) -> list[dict[str, Any]]:
        """The user's recent notifications, newest first: what their enabled rules matched
        among the recent bus messages (whatever the channel), and their live feed's events.
        """
        return self.recent_notifications(name, limit)[0]

    def delivered_notifications(self, name: str, limit: int = 50) -> list[dict[str, Any]]:
        """:meth:`notifications` as a delivery channel (the Atom feed) hands them out:
        none while nothing is sent to the user (:meth:`stopped`)."""
        if self.stopped(name) is not None:
            return []
        return self.notifications(name, limit)

    def recent_notifications(self, name: str, limit: int = 50
                             ) -> tuple[list[dict[str, Any]], bool]:
        """:meth:`notifications`, and whether every rule's search of the window finished
        within the time all of them share (False: some matches may be missing)."""
        if not 0 < limit <= MAX_FEED_LIMIT:
            raise Invalid(f"must be an integer from 1 to {MAX_FEED_LIMIT}", "limit")
        user = self.user(name)
        events = self._feed_events(name, limit)
        by_message = {str(e.get("message_id")): e for e in events}
        _seen, answers = self._window_matches(user, limit)
        names = {r.id: r.name for r in user.rules}
        now = self.clock()
        for rule_id, answer in answers.items():
            for m in answer.get("messages", ()):
                # the window's messages are the publisher's words, cleaned as the live
                # feed's are, under the id the feed gives them (one item for both)
                shown = message_fields(m)
                key = str(shown["message_id"])
                item = by_message.get(key)
                if item is None:
                    shown.pop("agent")
                    item = by_message[key] = {
                        **shown, "rules": [], "rule_names": [],
                        # received when sent, as far as the window knows, written by us;
                        # a time ahead of ours is not believed (a publisher's 9999-12-31
                        # would pin the message on top of every list), nor one that does
                        # not read as a time: unknown, listed last
                        "received_at": _window_received(m.get("sent_at"), now)}
                if rule_id not in item.setdefault("rules", []):
                    item["rules"] = [*item["rules"], rule_id]
                    item["rule_names"] = [*item.get("rule_names", []), names[rule_id]]
        # by the time received, whatever offset it is written in (as text, a match's
        # time two hours east sorted ahead of newer events, and the newest were cut)
        found = sorted(by_message.values(), key=_received, reverse=True)
        return found[:limit], _complete(answers)

    def stats(self, name: str) -> dict[str, Any]:
        """Notifications per rule over the last :data:`STATS_DAYS` days: what each enabled
        rule matched in the preview window, or, without one, on the live feed."""
        user = self.user(name)
        counts = {r.id: 0 for r in user.rules}
        seen, answers = self._window_matches(user, 1)
        if seen:
            counts.update({rule_id: int(a.get("matched", 0)) for rule_id, a in answers.items()})
            return {"days": STATS_DAYS, "rules": counts, "source": "window",
                    "complete": _complete(answers)}
        since = self.clock() - STATS_DAYS * 24 * 3600
        for event in self._feed_events(name, MAX_FEED_LIMIT):
            at = _received(event)
            if not at or at < since:  # unreadable, or before the period
                continue
            for rule_id in event.get("rules") or ():
                if rule_id in counts:
                    counts[rule_id] += 1
        return {"days": STATS_DAYS, "rules": counts, "source": "feed", "complete": True}

    # -- catalogue ----------------------------------------------------------

    def artifacts(self, q: str, artifact_type: str | None, limit: int) -> list[dict[str, str]]:
        """Artifacts of the ownership data whose name starts with ``q`` (case-insensitive)."""
        from fmn.db.models import OwnedArtifactRow

        if artifact_type is not None and artifact_type not in ARTIFACT_TYPES:
            raise Invalid(f"must be one of {', '.join(ARTIFACT_TYPES)}", "type")
        if not 0 < limit <= 100:
            raise Invalid("must be an integer from 1 to 100", "limit")
        if len(q) > 255 or any(ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in q):
            raise Invalid("must be at most 255 printable characters", "q")
        escaped = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = (select(OwnedArtifactRow.artifact_type, OwnedArtifactRow.name)
                 .where(OwnedArtifactRow.name.ilike(f"{escaped}%", escape="\\"))
                 .order_by(OwnedArtifactRow.name, OwnedArtifactRow.artifact_type).limit(limit))
        if artifact_type is not None:
            query = query.where(OwnedArtifactRow.artifact_type == artifact_type)
        with self.engine.connect() as conn:
            return [{"type": t, "name": n} for t, n in conn.execute(query)]

    # -- admin --------------------------------------------------------------

    def _admin(self, admin: str, target: str) -> tuple[User, int]:
        if not self.is_admin(admin):
            raise Forbidden("admins only")
        found = db.load_user_revision(self.engine, target)
        if found is None:
            raise NotFound(f"no user {target!r}")
        return found

    def disable_user(self, admin: str, target: str) -> User:
        user = self._disable_user(admin, target)
        log.warning("admin %s disabled user %s", admin, target)
        return user

    @_redone_if_stale
    def _disable_user(self, admin: str, target: str) -> User:
        user, read_at = self._admin(admin, target)
        return self._save(dataclasses.replace(user, enabled=False), read_at)

    def disable_rule(self, admin: str, target: str, rule_id: str) -> Rule:
        """Disable one of ``target``'s rules for good: its owner cannot enable it again
        (they may edit or delete it).

        The mark that keeps it disabled is written first, so the owner cannot enable
        the rule between the two writes, and again after the save (another admin's
        failed disable may have taken it back meanwhile).  If the rule cannot be saved
        (another request kept winning, the database away), the mark is taken back
        unless the rule is disabled all the same (another admin's disable got through).
        """
        from datetime import UTC

        from sqlalchemy import delete, insert

        from fmn.db.models import AdminDisabledRuleRow as Row

        user, _ = self._admin(admin, target)
        if not any(r.id == rule_id for r in user.rules):
            raise NotFound(f"{target} has no rule {rule_id!r}")
        where = (Row.user_name == target, Row.rule_id == rule_id)

        def mark() -> None:
            try:
                with self.engine.begin() as conn:
                    if conn.execute(select(Row.rule_id).where(*where)).first() is None:
                        conn.execute(insert(Row).values(user_name=target, rule_id=rule_id,
                                                        admin=admin, since=datetime.now(UTC)))
            except IntegrityError:  # another admin's request marked it just now
                pass

        mark()
        try:
            rule = self._disable_rule(admin, target, rule_id)
        except BaseException:
            try:
                now = db.load_user(self.engine, target)
                still = now is not None and any(r.id == rule_id and not r.enabled
                                                for r in now.rules)
                if not still:
                    with self.engine.begin() as conn:
                        conn.execute(delete(Row).where(*where))
            except Exception:  # the answer stays the first failure's
                log.exception("could not take back the disable mark of %s's rule %s",
                              target, rule_id)
            raise
        mark()
        log.warning("admin %s disabled rule %s of %s", admin, rule_id, target)
        return rule

    @_redone_if_stale
    def _disable_rule(self, admin: str, target: str, rule_id: str) -> Rule:
        user, read_at = self._admin(admin, target)
        rule = _own_rule(user, rule_id, f"{target} has")  # NotFound: deleted meanwhile
        return self._put_rule(user, dataclasses.replace(rule, enabled=False), read_at)


_applications: list[str] = []


def rule_etag(rule: Rule) -> str:
    """The rule's version as the API shows it (its ``etag``; ``If-Match`` on PUT, PATCH)."""
    return hashlib.sha256(orjson.dumps(dump_rule(rule), option=orjson.OPT_SORT_KEYS)
                          ).hexdigest()[:24]


def rule_answer(rule: Rule) -> dict[str, Any]:
    """A rule as the API answers it: its document and its ``etag``."""
    return {**dump_rule(rule), "etag": rule_etag(rule)}


def _check_version(current: Rule, body: Mapping[str, Any], if_match: str | None) -> None:
    """PreconditionFailed unless ``if_match`` (a header), or else the body's ``etag`` (the
    rule sent back as it was read), names ``current``'s version; nothing named: no check."""
    if if_match is None and isinstance(body.get("etag"), str):
        if_match = f'"{body["etag"]}"'
    if if_match is not None and not _matches(if_match, rule_etag(current)):
        raise PreconditionFailed("this rule was changed elsewhere (another tab or device) "
                                 "since it was opened: nothing was saved; open it again "
                                 "to see the change")


def _matches(if_match: str, etag: str) -> bool:
    """Whether an ``If-Match`` header (``*``, or quoted tags, comma-separated) names ``etag``."""
    tags = [t.strip().removeprefix("W/").strip('"') for t in if_match.split(",")]
    return "*" in tags or etag in tags


def _own_rule(user: User, rule_id: str, who: str = "you have") -> Rule:
    """``user``'s rule ``rule_id``; NotFound ("<who> no rule ...") if they have none."""
    for r in user.rules:
        if r.id == rule_id:
            return r
    raise NotFound(f"{who} no rule {rule_id!r}")


def known_applications() -> list[str]:
    """Application names a rule may filter on: installed message schemas and fedmsg processors.

    Computed once per process (building the fedmsg processors takes a second).
    """
    if not _applications:
        from importlib.metadata import entry_points

        names: set[str] = set()
        for ep in entry_points(group="fedora.messages"):
            dist = ep.dist.name if ep.dist is not None else ""
            name = re.sub(r"[-_](messages|messaging|schemas?|fedmsg-plugin-schemas)$", "",
                          dist.lower())
            if name and name not in ("fedora-messaging", "fedora_messaging"):
                names.add(name.replace("_", "-"))
        try:
            from fmn.metadata.fedmsg_meta import _meta

            for processor in _meta().processors:
                label = getattr(processor, "__name__", None)
                if isinstance(label, str) and label:
                    names.add(label.lower())
        except Exception as exc:  # a broken processor set must not break the API
            log.warning("fedmsg processors unavailable: %s", exc)
        _applications.extend(sorted(names))
    return list(_applications)


#: how far ahead of this clock a window message's sent-at may be and still be believed
MAX_AHEAD_S = 300


def _window_received(sent_at: Any, now: float) -> str | None:
    """A window message's receipt time, as ours (UTC, milliseconds), from its sent-at;
    None when that is no time or more than :data:`MAX_AHEAD_S` ahead of ``now``."""
    when = sent_time(sent_at)
    if when is None or not 0 < when.timestamp() <= now + MAX_AHEAD_S:
        return None
    return when.astimezone(UTC).isoformat(timespec="milliseconds")


def _received(event: Mapping[str, Any]) -> float:
    """When a notification of the recent list was received (0 when unreadable)."""
    when = sent_time(event.get("received_at"))
    return 0.0 if when is None else when.timestamp()


def _complete(answers: Mapping[str, Any]) -> bool:
    """Whether every rule's preview answer covered the whole window."""
    return all(a.get("complete", True) for a in answers.values())
