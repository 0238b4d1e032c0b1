"""The normalised bus message (spec section 1).

Whatever bus a message came from, it is reduced once to a :class:`Message`:
the fields the matcher and the senders need, and the raw body for the
``fields`` filter.  Building one from a wire record is the job of
:mod:`fmn.metadata`; this module holds only the frozen value type, so that
the matcher can be imported and tested without any bus library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: Artifact types, in the order the spec lists them.  Each is also the name of
#: the :class:`Message` attribute holding that type's artifact names.
ARTIFACT_TYPES: tuple[str, ...] = ("rpms", "containers", "modules", "flatpaks")

#: Severity names and their numeric levels (Python logging's).
SEVERITIES: dict[str, int] = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}
SEVERITY_NAMES: dict[int, str] = {v: k for k, v in SEVERITIES.items()}

EMPTY: frozenset[str] = frozenset()


#: JSON objects and arrays a bus record may hold before nothing reads it as JSON.
#: Parsed, each costs 60 bytes of memory or more: a 32 MiB record of ``{},{},...``
#: took 1.8 GB in the bridge and more than the match function's 1 GB, where real
#: Fedora messages hold a few hundred.  Such a record is forwarded as it is and
#: dead-lettered by the match function (``too-complex``).
MAX_JSON_CONTAINERS = 1_000_000


def sent_time(sent_at: object) -> datetime | None:
    """A message's RFC 3339 ``sent_at`` as an aware datetime (UTC when it names no zone),
    or None when it does not say, or not readably.  The publisher wrote it: untrusted."""
    if not sent_at:
        return None
    try:
        when = datetime.fromisoformat(str(sent_at))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def sent_time_utc(sent_at: object) -> datetime | None:
    """:func:`sent_time` in UTC (RFC 3339 and RFC 5322 writers want no offset with
    seconds), or None also when its offset takes it beyond the calendar (year 1 or
    9999)."""
    when = sent_time(sent_at)
    try:
        return when.astimezone(UTC) if when is not None else None
    except OverflowError:
        return None


def too_many_containers(raw: bytes | bytearray | memoryview | str) -> int | None:
    """How many ``{`` and ``[`` ``raw`` holds (an upper bound on its JSON objects and
    arrays: brackets inside strings count too), when over :data:`MAX_JSON_CONTAINERS`;
    else None.  Counting is a scan at C speed, no parse."""
    if isinstance(raw, memoryview):
        raw = raw.tobytes()
    count = raw.count("{") + raw.count("[") if isinstance(raw, str) \
        else raw.count(b"{") + raw.count(b"[")
    return count if count > MAX_JSON_CONTAINERS else None


@dataclass(frozen=True, slots=True)
class Message:
    """One bus message, as the matcher sees it."""

    id: str
    topic: str
    app_name: str | None = None
    agent_name: str | None = None
    usernames: frozenset[str] = EMPTY
    groups: frozenset[str] = EMPTY
    rpms: frozenset[str] = EMPTY
    containers: frozenset[str] = EMPTY
    modules: frozenset[str] = EMPTY
    flatpaks: frozenset[str] = EMPTY
    severity: int = 20
    summary: str | None = None
    url: str | None = None
    sent_at: str | None = None
    #: The message body: the fedmsg envelope's ``msg``, or the
    #: fedora-messaging ``body``.  Read by the ``fields`` filter only.
    body: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def artifacts(self, artifact_type: str) -> frozenset[str]:
        """The names of this message's artifacts of one type."""
        value: frozenset[str] = getattr(self, artifact_type)
        return value

    @property
    def severity_name(self) -> str:
        return SEVERITY_NAMES.get(self.severity, "INFO")

    def metadata(self) -> dict[str, Any]:
        """The spec section 1 fields as JSON-ready values (sets sorted)."""
        return {
            "id": self.id,
            "topic": self.topic,
            "app_name": self.app_name,
            "agent_name": self.agent_name,
            "usernames": sorted(self.usernames),
            "groups": sorted(self.groups),
            "rpms": sorted(self.rpms),
            "containers": sorted(self.containers),
            "modules": sorted(self.modules),
            "flatpaks": sorted(self.flatpaks),
            "severity": self.severity,
            "summary": self.summary,
            "url": self.url,
            "sent_at": self.sent_at,
        }

    @staticmethod
    def _names(values: Any) -> frozenset[str]:
        return frozenset(v for v in values or () if isinstance(v, str))

    @classmethod
    def from_metadata(cls, data: Mapping[str, Any],
                      body: Mapping[str, Any] | None = None) -> Message:
        """Rebuild a message from :meth:`metadata` output (or the golden ``metadata.jsonl``)."""
        return cls(
            id=str(data["id"]),
            topic=str(data["topic"]),
            app_name=data.get("app_name"),
            agent_name=data.get("agent_name"),
            usernames=cls._names(data.get("usernames")),
            groups=cls._names(data.get("groups")),
            rpms=cls._names(data.get("rpms")),
            containers=cls._names(data.get("containers")),
            modules=cls._names(data.get("modules")),
            flatpaks=cls._names(data.get("flatpaks")),
            severity=int(data.get("severity", 20)),
            summary=data.get("summary"),
            url=data.get("url"),
            sent_at=data.get("sent_at"),
            body=body if body is not None else {},
        )
