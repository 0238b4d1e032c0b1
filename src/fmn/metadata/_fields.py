"""Field helpers shared by both buses: coercion, error accounting, derived ids.

The bus libraries return loosely typed values (lists, sets, ``""``, ``None``,
occasionally garbage).  These helpers turn them into what
:class:`fmn.message.Message` promises, and give one place to record a
property or processor method that raised: it is logged on the ``fmn.metadata``
logger and counted in :data:`property_errors`, and the field falls back to
empty.  Nothing here imports a bus library.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from fmn.errors import InvalidMessage
from fmn.message import EMPTY, SEVERITY_NAMES

log = logging.getLogger("fmn.metadata")

#: How often reading a field raised, keyed by ``(source, field)``.  ``source``
#: is the fedora-messaging schema name (``pagure.issue.assigned.added``) or the
#: fedmsg processor's ``__name__`` (``koschei``); ``field`` the property or
#: processor method (``summary``, ``packages``, ...).  Process-wide; an edge
#: may export it as a metric and ``clear()`` it.
property_errors: Counter[tuple[str, str]] = Counter()

# Derived ids are version-5 UUIDs in a namespace of our own, so that the same
# record always gets the same id and never collides with a real uuid4 id.
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:fmn:metadata:derived-message-id")


def record_error(source: str, field: str, error: BaseException) -> None:
    """Count a property / processor method that raised; log it.

    The first failure of each (source, field) is a warning, the rest debug
    lines: a schema that always raises must not flood the logs at bus rate
    (the counter keeps the number).
    """
    property_errors[(source, field)] += 1
    first = property_errors[(source, field)] == 1
    log.log(
        logging.WARNING if first else logging.DEBUG,
        "%s: reading %r raised %s: %.200s; the field is left empty"
        + (" (further ones are logged at debug level)" if first else ""),
        source,
        field,
        type(error).__name__,
        error,
    )


def names(value: Any) -> frozenset[str]:
    """A set of names from a property's list/set; non-str and empty items are dropped.

    A lone string is one name (iterating it would give its letters).  Anything
    that is not iterable raises :class:`TypeError`, which the caller records.
    """
    if not value:
        return EMPTY
    if isinstance(value, str):
        return frozenset((value,))
    return frozenset(item for item in value if isinstance(item, str) and item)


def text(value: Any) -> str | None:
    """A non-empty string, else ``None``: ``""`` and ``None`` both mean "none"."""
    return value if isinstance(value, str) and value else None


def severity(value: Any) -> int:
    """One of the four levels; :class:`ValueError` for anything else."""
    if type(value) is int and value in SEVERITY_NAMES:
        return value
    raise ValueError(f"not a severity level: {value!r}")


def message_id(value: Any, record: Mapping[str, Any], key: str) -> str:
    """The record's own id, or a deterministic one derived from its content.

    Ids must exist (notifications and deduplication key on them), but fedmsg
    envelopes often lack ``msg_id``.  The derived id is the UUID5 of the
    record's canonical JSON (sorted keys, as Python's ``json`` writes it: NaN
    stays NaN and integers past 64 bits stay exact, where orjson would write
    ``null`` and round, and two records would share an id), so replaying a
    record, as bytes or as the object they decode to, gives the same id.
    """
    if isinstance(value, str) and value:
        return value
    if value is not None:
        raise InvalidMessage("bad-field", f"{key!r} must be a non-empty string")
    import json

    try:
        text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\ud800" is valid JSON): escaped
            text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as error:  # non-JSON values
        raise InvalidMessage("bad-field", f"record is not JSON-serialisable: {error}") from error
    return str(uuid.uuid5(_ID_NAMESPACE, text))


def timestamp_to_rfc3339(value: Any) -> str | None:
    """A POSIX timestamp (fedmsg's ``timestamp``) as RFC 3339 in UTC, or ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, tz=UTC).isoformat()
    except (ValueError, OverflowError, OSError):  # NaN, inf, out of range
        return None
