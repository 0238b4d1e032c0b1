"""The web API's request and answer models (pydantic), the one source of its OpenAPI.

Every request body is checked against its model by :func:`check` before the
service looks at it; the models' JSON Schema is the ``components`` of the
OpenAPI description (:mod:`fmn.web.openapi`), so the description and the
server cannot drift.  The models say what JSON Schema can say (types,
required and unknown fields, enums, patterns, the limits of
:mod:`fmn.prefs`); the core parser then checks what it cannot (a
destination id of this user, a lone surrogate, the JSON size of a rule),
with the same rules as ``fmn prefs import``.

A refusal is :class:`~fmn.web.service.Invalid` naming the field as a path
relative to the body (``generation_rules[0].filters.severities[1]``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from fmn.prefs import (
    FIELD_PATH_PATTERN,
    MAX_DIGEST_COUNT,
    MAX_DIGEST_INTERVAL_S,
    MAX_GENERATION_RULES,
    MAX_LIST_ITEMS,
    MAX_STRING_CHARS,
    TEXT_PATTERN,
)

ARTIFACT_TYPE = Literal["rpms", "containers", "modules", "flatpaks"]
SEVERITY = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
# Not blank: at least one character that is neither space nor control.
_C = TEXT_PATTERN[3:-3]  # the character class body of "one allowed character"
NAME_PATTERN = f"^[^{_C}]*[^\\s{_C}][^{_C}]*$"
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STRING_CHARS,
                                        pattern=NAME_PATTERN)]
FieldPath = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STRING_CHARS,
                                             pattern=FIELD_PATH_PATTERN)]
Nick = Annotated[str, StringConstraints(pattern=r"^[A-Za-z\[\]\\`_^{|}][A-Za-z0-9\[\]\\`_^{|}-]"
                                                r"{0,31}$")]
EmailAddress = Annotated[str, StringConstraints(min_length=3, max_length=254,
                                                pattern=r"^[^@\s]+@[^@\s]+$")]
MatrixId = Annotated[str, StringConstraints(
    max_length=MAX_STRING_CHARS,
    pattern=r"^@[a-z0-9._=/+-]{1,255}:[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$")]
Ident = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STRING_CHARS)]



#: An optional field may be left out, not sent as null (the core parser refuses null):
#: ``field: X | Absent = None``.
Absent = SkipJsonSchema[None]
def _absent(annotation: Any) -> bool:
    """Whether a field's type is ``X | Absent`` (may be left out, not null)."""
    return "SkipJsonSchema" in repr(annotation)


TextList = Annotated[list[Text], Field(max_length=MAX_LIST_ITEMS)]


class Model(BaseModel):
    """A request body: exact (unknown fields refused), strict types (no coercion); a field
    that may be left out (``X | Absent = None``) is not null either."""

    model_config = ConfigDict(extra="forbid", strict=True, regex_engine="python-re",
                              frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _absent_is_not_null(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for name, info in cls.model_fields.items():
                key = info.alias or name
                if key in data and data[key] is None and _absent(info.annotation):
                    raise PydanticCustomError("not_null", "may be left out, not null",
                                              {"field": key})
        return data


class Answer(BaseModel):
    """An answer's shape (documentation and tests: the server builds plain dicts)."""

    model_config = ConfigDict(extra="allow", regex_engine="python-re")


# --------------------------------------------------------------------------
# destinations


class Digest(Model):
    """Gather notifications and send them together: every ``interval_s`` seconds, or
    at ``max_count`` notifications, whichever comes first."""

    interval_s: Annotated[int, Field(ge=1, le=MAX_DIGEST_INTERVAL_S)]
    max_count: Annotated[int, Field(ge=1, le=MAX_DIGEST_COUNT)]


class NewEmail(Model):
    protocol: Literal["email"]
    address: EmailAddress


class NewIrc(Model):
    protocol: Literal["irc"]
    #: an IRC nick on the configured network
    address: Nick


class NewMatrix(Model):
    protocol: Literal["matrix"]
    #: a Matrix user id, ``@name:server``
    address: MatrixId


class NewFeed(Model):
    """The user's own live feed: no address."""

    protocol: Literal["sse"]
    address: None = None


NewDestination = Annotated[NewEmail | NewIrc | NewMatrix | NewFeed,
                           Field(discriminator="protocol")]


class DestinationPatch(Model):
    digest: Digest | None = None


class Code(Model):
    code: Annotated[str, StringConstraints(pattern=r"^[0-9]{6}$")]


class Destination(Answer):
    id: str
    protocol: Literal["email", "irc", "matrix", "sse"]
    address: str | None
    verified: bool
    digest: Digest | None


class CreatedDestination(Destination):
    #: what was sent to prove the address: a link (e-mail), a code (IRC, Matrix), or
    #: nothing (``verified``: the live feed)
    verification: Literal["link", "code", "verified"]


class Verification(Answer):
    verification: Literal["link", "code", "verified"]


# --------------------------------------------------------------------------
# rules


class NoParams(Model):
    pass


class OwnedTracking(Model):
    """Artifacts the user owns, or events the user took part in: no parameters."""

    kind: Literal["artifacts-owned", "related-events"]
    params: NoParams = NoParams()


class GroupParams(Model):
    groups: Annotated[list[Text], Field(min_length=1, max_length=MAX_LIST_ITEMS)]


class GroupTracking(Model):
    kind: Literal["artifacts-group-owned"]
    params: GroupParams


class Artifact(Model):
    type: ARTIFACT_TYPE
    name: Text


class ArtifactParams(Model):
    artifacts: Annotated[list[Artifact], Field(min_length=1, max_length=MAX_LIST_ITEMS)]


class ArtifactTracking(Model):
    kind: Literal["artifacts-followed"]
    params: ArtifactParams


class UserParams(Model):
    usernames: Annotated[list[Text], Field(min_length=1, max_length=MAX_LIST_ITEMS)]


class UserTracking(Model):
    kind: Literal["users-followed"]
    params: UserParams


class TopicParams(Model):
    #: topic globs (``*`` any run of characters, ``?`` one)
    patterns: Annotated[list[Text], Field(min_length=1, max_length=MAX_LIST_ITEMS)]


class TopicTracking(Model):
    kind: Literal["topics"]
    params: TopicParams


Tracking = Annotated[OwnedTracking | GroupTracking | ArtifactTracking | UserTracking
                     | TopicTracking, Field(discriminator="kind")]


class Filters(Model):
    """Every filter present must pass (spec: rules.md section 3)."""

    applications: TextList | Absent = None
    excluded_applications: TextList | Absent = None
    severities: Annotated[list[SEVERITY], Field(max_length=MAX_LIST_ITEMS)] | Absent = None
    topic: Text | Absent = None
    my_actions: bool | Absent = None
    #: dotted path in the message body -> the JSON values it may have
    fields: Annotated[dict[FieldPath, Annotated[list[Any], Field(max_length=MAX_LIST_ITEMS)]],
                      Field(max_length=MAX_LIST_ITEMS)] | Absent = None


class GenerationRule(Model):
    filters: Filters
    #: ids of the user's own destinations
    destinations: Annotated[list[Ident], Field(max_length=MAX_LIST_ITEMS)]


class NewRule(Model):
    """A rule as a client writes it (the server chooses its id)."""

    name: Text
    enabled: bool
    tracking: Tracking
    generation_rules: Annotated[list[GenerationRule],
                                Field(min_length=1, max_length=MAX_GENERATION_RULES)]


class RuleReplacement(NewRule):
    #: may be sent back unchanged (the path's id)
    id: Ident | Absent = None
    #: may be sent back as it was read: then, as with If-Match, the rule is replaced only
    #: if nobody changed it since
    etag: Annotated[str, StringConstraints(max_length=64)] | Absent = None


class RulePatch(Model):
    enabled: bool | Absent = None
    name: Text | Absent = None
    #: the version the change was made from (as If-Match): 412 if it is not the current one
    etag: Annotated[str, StringConstraints(max_length=64)] | Absent = None


class Rule(Answer):
    id: str
    name: str
    enabled: bool
    tracking: dict[str, Any]
    generation_rules: list[dict[str, Any]]
    #: the rule's version: send it back as ``If-Match: "<etag>"`` when replacing the rule
    etag: str


class PreviewRule(NewRule):
    """A rule being edited: it may have no name yet."""

    name: Annotated[str, StringConstraints(max_length=MAX_STRING_CHARS,
                                           pattern=TEXT_PATTERN)]


class PreviewRequest(Model):
    rule: PreviewRule
    limit: Annotated[int, Field(ge=1, le=200)] = 50


# --------------------------------------------------------------------------
# sign-in, unsubscribe


class DevLogin(Model):
    user: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
    #: the form's CSRF token (JSON clients send the X-CSRF-Token header instead)
    csrf: Annotated[str, StringConstraints(max_length=128)] | Absent = None


class ConfirmAddress(Model):
    """The form of the e-mail verification page: its one button."""

    model_config = ConfigDict(extra="allow", strict=True)
    confirm: Literal["yes"]


class OneClick(Model):
    """RFC 8058's one-click unsubscribe body."""

    model_config = ConfigDict(extra="allow", strict=True)
    List_Unsubscribe: Literal["One-Click"] = Field(alias="List-Unsubscribe")


# --------------------------------------------------------------------------
# query parameters (all optional; a number is digits only)


class ArtifactsQuery(Model):
    #: a case-insensitive name prefix
    q: Annotated[str, StringConstraints(max_length=255, pattern=TEXT_PATTERN)] = ""
    type: ARTIFACT_TYPE | Absent = None
    limit: Annotated[int, Field(ge=1, le=100)] = 20


class NotificationsQuery(Model):
    limit: Annotated[int, Field(ge=1, le=1000)] = 50


class OidcCallbackQuery(Model):
    model_config = ConfigDict(extra="allow", strict=True)
    code: Annotated[str, StringConstraints(max_length=4096)] | Absent = None
    state: Annotated[str, StringConstraints(max_length=4096)] | Absent = None
    error: Annotated[str, StringConstraints(max_length=4096)] | Absent = None


def query(model: type[Model], params: Mapping[str, str] | None) -> Any:
    """The query parameters ``model`` declares, validated (unknown ones are ignored)."""
    from fmn.web.service import Invalid

    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if params is None or name not in params:
            continue
        value: Any = params[name]
        if info.annotation is int:
            if not (value.isascii() and value.isdigit()) or len(value) > 9:
                raise Invalid("must be a positive integer", name)
            value = int(value)
        values[name] = value
    return check(model, values)


# --------------------------------------------------------------------------
# answers


class Error(Answer):
    model_config = ConfigDict(extra="forbid")
    #: invalid, not-signed-in, forbidden, not-found, conflict, precondition-failed,
    #: rate-limited, verification-failed, too-large, method-not-allowed, unsupported-media-type,
    #: unavailable, misconfigured, internal
    error: str
    detail: str
    #: a path relative to the request body, a header, a query parameter, or null
    field: str | None


class Me(Answer):
    name: str
    email: str | None
    is_admin: bool
    enabled: bool
    #: the signed link of the user's live feed (null: no feed endpoint configured)
    feed_url: str | None = None
    #: a saved change not yet in the snapshot (it is retried; matching lags until then)
    publish_pending: bool = False
    #: the Fedora account is locked or deleted: nothing is sent to it
    account_blocked: bool = False


class ArtifactAnswer(Answer):
    type: str
    name: str


class OwnedArtifact(Answer):
    type: str
    name: str


class GroupOwnership(Answer):
    name: str
    artifacts: list[OwnedArtifact]


class OwnershipRefreshed(Answer):
    reconcile: str | None
    live: str | None
    accounts: str | None


class AccountDestination(Answer):
    protocol: str
    address: str


class Account(Answer):
    locked: bool
    deleted: bool
    destinations: list[AccountDestination]


class Ownership(Answer):
    direct: list[OwnedArtifact]
    groups: list[GroupOwnership]
    refreshed: OwnershipRefreshed
    account: Account | None


class AtomUrl(Answer):
    url: str


class Message(Answer):
    id: str
    topic: str
    app: str | None
    summary: str
    url: str | None
    sent_at: str | None
    severity: str | None


class Preview(Answer):
    window: int
    matched: int
    messages: list[Message]
    took_ms: float
    #: False when the search stopped at its time limit: ``matched`` and ``messages``
    #: then cover the newest of the messages the rule selects
    complete: bool = True


class Notification(Answer):
    message_id: str | None = None
    topic: str | None = None
    summary: str | None = None


class Stats(Answer):
    days: int
    rules: dict[str, int]
    source: Literal["window", "feed"]
    #: false when the window was too large to count every rule in the time a request
    #: may take: the counts then cover the newest messages (lower bounds)
    complete: bool


class UserState(Answer):
    name: str
    enabled: bool


# --------------------------------------------------------------------------
# checking


def check(model: Any, body: Any) -> Any:
    """``body`` validated by ``model`` (a model class or an annotated union), as the
    model instance; :class:`~fmn.web.service.Invalid` naming the first field at fault."""
    from pydantic import TypeAdapter

    from fmn.web.service import Invalid

    if not isinstance(body, Mapping):
        raise Invalid(f"the body must be a JSON object, not {_json_type(body)}")
    try:
        return TypeAdapter(model).validate_python(body, strict=True)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = tuple(first["loc"])
        named = first["type"] in ("missing", "extra_forbidden")
        if first["type"] == "not_null":
            loc, named = (*loc, str(first["ctx"]["field"])), True
        if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc, named = (*loc, str(first["ctx"]["discriminator"]).strip("'")), True
        field = _path(body, loc, named)
        raise Invalid(_reason(first), field) from None
    except RecursionError:
        raise Invalid("the body is nested too deeply") from None


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _path(body: Any, loc: tuple[int | str, ...], named_last: bool) -> str | None:
    """The JSON path of an error location: the union tags pydantic puts in it dropped
    (``named_last``: the last part is a field's name even if the body lacks it)."""
    out = ""
    here = body
    for i, part in enumerate(loc):
        if isinstance(here, list) and isinstance(part, int):
            out += f"[{part}]"
            here = here[part] if 0 <= part < len(here) else None
        elif isinstance(part, str) and ((named_last and i == len(loc) - 1) or (
                isinstance(here, Mapping) and part in here)) and part != "[key]":
            # a key of the body, or a missing or unknown one (last); else a union's tag
            if not _PLAIN_KEY.fullmatch(part):
                out += f"[{ascii(part)}]"
            else:
                out += f".{part}" if out else part
            here = here.get(part) if isinstance(here, Mapping) else None
    return out or None


def _reason(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "missing field"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "union_tag_invalid":
        return f"must be one of {ctx.get('expected_tags', '')}"
    if kind == "union_tag_not_found":
        return f"{ctx.get('discriminator', 'a tag')} is missing"
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == FIELD_PATH_PATTERN:
            return ("must be a dotted path such as 'update.status' (at most 32 parts of 256 "
                    "characters, no control characters)")
        if ctx.get("pattern") == NAME_PATTERN:
            return ("must be printable text, not blank (no control characters, U+2028/U+2029, "
                    "U+FFFE/U+FFFF)")
        return f"does not have the expected form ({ctx.get('pattern')})"
    if kind in ("too_long", "string_too_long"):
        limit = ctx.get("max_length")
        unit = "characters per string" if kind == "string_too_long" else "items"
        return f"is too long: the limit is {limit} {unit}"
    return str(error.get("msg", "is not valid"))
