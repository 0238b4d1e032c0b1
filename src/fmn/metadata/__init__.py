"""Turn a bus record into a :class:`fmn.message.Message` (spec sections 1 and 4).

:func:`parse` takes one record, a JSON line (``bytes`` or ``str``) or an
already decoded mapping, tells the two wire forms apart (a fedmsg envelope
has ``msg``, a fedora-messaging record has ``body``) and hands it to
:mod:`fmn.metadata.fedmsg_meta` or :mod:`fmn.metadata.fedora_messaging_meta`.
Bad input raises :class:`fmn.errors.InvalidMessage`, never anything else; a
schema property or processor method that raises only empties its field,
and is logged on ``fmn.metadata`` and counted in :data:`property_errors`.
The bus libraries are imported on first use (or by :func:`warm_up`), not at
import.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from typing import Any

import orjson

import fmn.message
from fmn.errors import InvalidMessage
from fmn.message import Message, too_many_containers
from fmn.metadata import fedmsg_meta, fedora_messaging_meta
from fmn.metadata._fields import property_errors
from fmn.metadata.fedmsg_meta import FEDMSG_CONFIG, NetworkDisabled, set_account_map

__all__ = [
    "FEDMSG_CONFIG",
    "InvalidMessage",
    "NetworkDisabled",
    "decode",
    "parse",
    "property_errors",
    "set_account_map",
    "warm_up",
]

Record = bytes | bytearray | memoryview | str | Mapping[str, Any]


def decode(record: Record) -> Mapping[str, Any]:
    """The record as a JSON object; :class:`InvalidMessage` if it is not one."""
    if isinstance(record, Mapping):
        return record
    if not isinstance(record, bytes | bytearray | memoryview | str):
        raise InvalidMessage(
            "not-an-object", f"expected bytes, str or a mapping, not {type(record).__name__}"
        )
    containers = too_many_containers(record)
    if containers is not None:  # read, it would take gigabytes: fmn.message says why
        raise InvalidMessage("too-complex", f"{containers:,} JSON objects and arrays at "
                                            f"most, over the {fmn.message.MAX_JSON_CONTAINERS:,} a "
                                            f"message may hold")
    try:
        data = orjson.loads(record)
    except orjson.JSONDecodeError as error:  # also invalid UTF-8 and lone surrogates
        # What Python's json reads is valid on Fedora's buses (NaN, Infinity)
        data = _lenient(record, error)
    else:
        # orjson reads integers past 64 bits as floats: Python's json, exactly
        long = _LONG_TEXT.search(record) if isinstance(record, str) else \
            _LONG_BYTES.search(record)
        if long:
            with contextlib.suppress(InvalidMessage):  # too deep for it: orjson's reading
                data = _lenient(record, ValueError("not JSON"))
    if not isinstance(data, dict):
        raise InvalidMessage("not-an-object", f"expected a JSON object, not {type(data).__name__}")
    return data


#: maybe an integer past 64 bits (maybe just digits in a string): orjson reads
#: -2**63 to 2**64 - 1 exactly, which is at most 19 digits below zero, 20 above
_LONG_BYTES = re.compile(rb"-[0-9]{19}|[0-9]{20}")
_LONG_TEXT = re.compile(r"-[0-9]{19}|[0-9]{20}")


def _lenient(record: bytes | bytearray | memoryview | str, error: Exception) -> Any:
    """The record as Python's ``json`` reads it, or InvalidMessage with orjson's reason."""
    import json

    try:
        text = bytes(record).decode("utf-8") if not isinstance(record, str) else record
        text.encode("utf-8")  # a str holding a lone surrogate is no UTF-8 text
        return json.loads(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise InvalidMessage("not-json", str(error)) from error


#: The longest topic a message may have: AMQP's limit on a routing key (255 bytes of
#: a short string), which no fedora-messaging topic can exceed; fedmsg topics are far
#: shorter.  Every topic rule's pattern runs over the whole topic, and the topic is a
#: cache key: a topic of megabytes cost seconds and hundreds of megabytes a message.
MAX_TOPIC_LENGTH = 255


def parse(record: Record) -> Message:
    """The :class:`~fmn.message.Message` of one fedmsg envelope or fedora-messaging record."""
    data = decode(record)
    topic = data.get("topic")
    if not isinstance(topic, str) or not topic:
        raise InvalidMessage(
            "missing-topic", f"'topic' must be a non-empty string, not {type(topic).__name__}"
        )
    if len(topic) > MAX_TOPIC_LENGTH:
        raise InvalidMessage(
            "topic-too-long",
            f"'topic' has {len(topic):,} characters, more than the {MAX_TOPIC_LENGTH} a bus "
            f"topic can have: {topic[:80]!r}...",
        )
    is_fedmsg = "msg" in data
    if "body" in data:
        if not is_fedmsg:
            return fedora_messaging_meta.from_record(data)
    elif is_fedmsg:
        return fedmsg_meta.from_envelope(data)
    raise InvalidMessage(
        "unknown-format",
        "expected a fedmsg envelope (with 'msg') or a fedora-messaging record (with 'body'), "
        f"got keys {sorted(map(str, data))[:10]}",
    )


def warm_up() -> None:
    """Load both buses' libraries, registries and processors now (cold-start work)."""
    fedmsg_meta.warm_up()
    fedora_messaging_meta.warm_up()
