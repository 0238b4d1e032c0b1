"""Metadata of a fedora-messaging record, from the installed schema packages.

:func:`from_record` takes one decoded record (``{"topic", "headers", "id",
"body", ...}``, what ``fedora-messaging record`` writes) and returns a
:class:`fmn.message.Message`.  The schema class is the one
``fedora_messaging.message.get_class`` picks from the
``fedora_messaging_schema`` header (an unknown or missing schema gives the
base ``Message`` class); its properties give the fields.  The instance is
built the way ``fedora_messaging.message.get_message`` builds a received
message (AMQP properties from the record, severity from the header) but is
not validated.  A property that raises leaves its field empty and is recorded
(:func:`fmn.metadata._fields.record_error`).  Raises
:class:`fmn.errors.InvalidMessage` for records of the wrong shape.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from fmn.errors import InvalidMessage
from fmn.message import SEVERITY_NAMES
from fmn.message import Message as FmnMessage
from fmn.metadata import _fields

if TYPE_CHECKING:
    from fedora_messaging.message import Message as SchemaMessage

#: Where each :class:`fmn.message.Message` field comes from: (field, schema
#: property, coercion).  ``rpms`` is the schema's ``packages`` (spec section 1).
_PROPERTIES: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("app_name", "app_name", _fields.text),
    ("agent_name", "agent_name", _fields.text),
    ("usernames", "usernames", _fields.names),
    ("groups", "groups", _fields.names),
    ("rpms", "packages", _fields.names),
    ("containers", "containers", _fields.names),
    ("modules", "modules", _fields.names),
    ("flatpaks", "flatpaks", _fields.names),
    ("severity", "severity", _fields.severity),
    ("summary", "summary", _fields.text),
    ("url", "url", _fields.text),
)
_BASE_SCHEMA = "base.message"


# Cached because get_class logs a warning on every call for an unknown schema,
# and loads the entry-point registry on the first.  Bounded: names come from
# the wire.  The import is deferred because fedora_messaging pulls in pika and
# jsonschema, which the matcher and the CLI's other commands never need.
_registry_lock = threading.Lock()


#: Longer schema names are no registered schema's (entry-point names of a few dozen
#: characters), and are not cache keys: 1,024 of megabytes each would be gigabytes.
MAX_SCHEMA_NAME_LENGTH = 255


@functools.lru_cache(maxsize=1024)
def schema_class(schema_name: str | None) -> type[SchemaMessage]:
    """The registered class for a schema name; the base ``Message`` when unknown."""
    from fedora_messaging import message

    if schema_name is None:
        return message.Message
    # get_class loads the schema registry on first use; a second thread must
    # not look up (and cache for good) a class in a half-loaded registry.
    with _registry_lock:
        return message.get_class(schema_name)


@functools.cache
def _properties_type() -> Any:
    import pika

    return pika.BasicProperties


def warm_up() -> None:
    """Import the libraries and load the schema registry before the first message."""
    schema_class(_BASE_SCHEMA)
    _properties_type()


def from_record(record: Mapping[str, Any]) -> FmnMessage:
    """The :class:`~fmn.message.Message` of one decoded fedora-messaging record.

    ``record["topic"]`` must be a non-empty string (:func:`fmn.metadata.parse`
    checks it before calling here).
    """
    topic: str = record["topic"]
    body = record.get("body")
    if not isinstance(body, Mapping):
        raise InvalidMessage("bad-field", f"'body' must be an object, not {type(body).__name__}")
    headers = record.get("headers")
    if headers is None:
        headers = {}
    elif not isinstance(headers, Mapping):
        raise InvalidMessage(
            "bad-field", f"'headers' must be an object, not {type(headers).__name__}"
        )
    msg_id = _fields.message_id(record.get("id"), record, "id")

    schema_name = headers.get("fedora_messaging_schema")
    if not isinstance(schema_name, str) or len(schema_name) > MAX_SCHEMA_NAME_LENGTH:
        schema_name = None  # no schema registers such a name: the base class, uncached
    cls = schema_class(schema_name)
    source = schema_name or _BASE_SCHEMA
    header_severity = headers.get("fedora_messaging_severity")
    if type(header_severity) is not int or header_severity not in SEVERITY_NAMES:
        header_severity = None  # then the class keeps its own severity
    # Passing the properties skips Message._build_properties, which would
    # evaluate every list property a second time (for filter headers), draw a
    # uuid4 and read the clock; a consumer gets its message the same way.
    properties = _properties_type()(headers=dict(headers), message_id=msg_id)
    try:
        instance = cls(
            body=body,
            topic=topic,
            properties=properties,
            severity=header_severity,
        )
    except Exception as error:  # a schema class whose constructor chokes on this body
        _fields.record_error(source, "__init__", error)
        instance = schema_class(None)(body=body, topic=topic, properties=properties)

    values: dict[str, Any] = {}  # a field left out keeps the Message default (empty)
    for field, prop, coerce in _PROPERTIES:
        try:
            values[field] = coerce(getattr(instance, prop))
        except Exception as error:  # schema code is third-party: any error, same fallback
            _fields.record_error(source, prop, error)

    sent_at = headers.get("sent-at")
    return FmnMessage(
        id=msg_id,
        topic=topic,
        sent_at=sent_at if isinstance(sent_at, str) and sent_at else None,
        body=body,
        **values,
    )
