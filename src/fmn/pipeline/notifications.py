"""The notification payload: what the match function puts on a backend queue (version 1).

One SQS message carries one bus message's notifications for one backend,
with everything the sender needs to render them without another look-up
(docs/notification-payload.md)::

    {"v": 1, "backend": "email", "part": 1, "parts": 1,
     "message": {"id", "topic", "app", "agent", "summary", "url", "sent_at",
                 "severity", "usernames", "num_usernames", "packages", "num_packages"},
     "notifications": [{"user", "address", "destination", "rules"}, ...]}

:func:`pack` splits a message's notifications into as few bodies as fit
under the SQS size limit (a message followed by 10,000 users gives a handful
of SQS messages, not 10,000); :func:`unpack` reads one body back and raises
:class:`InvalidPayload` (a :class:`~fmn.errors.PermanentError`) on anything
else.  Message fields are untrusted: they travel as JSON strings (escaping
for a mail header or an IRC line is the sender's job), capped in length so a
hostile message cannot blow the size, with the code points SQS refuses
replaced by U+FFFD.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from fmn.errors import PermanentError
from fmn.matcher.base import Description, Notification
from fmn.message import ARTIFACT_TYPES, Message
from fmn.pipeline.queues import BACKENDS

PAYLOAD_VERSION = 1
#: SQS accepts 262,144 bytes per message (and per SendMessageBatch request);
#: the margin leaves room for the request's own framing.
SQS_MAX_BYTES = 256 * 1024
MAX_BODY_BYTES = 250 * 1024
#: Caps on untrusted message fields (characters, list entries).
MAX_TEXT_CHARS = 10_000
MAX_NAME_CHARS = 255
MAX_NAMES = 100
#: The message header may take at most this much of a body, however hostile
#: the message; the rest is for notifications.
MAX_HEADER_BYTES = 64 * 1024

NOTIFICATION_KEYS: tuple[str, ...] = ("user", "address", "destination", "rules")
MESSAGE_KEYS: tuple[str, ...] = ("id", "topic", "app", "agent", "summary", "url", "sent_at",
                                 "severity", "usernames", "num_usernames", "packages",
                                 "num_packages")

#: The matcher's :meth:`~fmn.matcher.base.Matcher.describe`.
Describe = Callable[[Notification], Description]

# Lone surrogates cannot be encoded as UTF-8 at all, and SQS refuses
# U+FFFE/U+FFFF (control characters are escaped by the JSON encoder).
log = logging.getLogger(__name__)
_UNSENDABLE = re.compile("[\ud800-\udfff\ufffe\uffff]")


class InvalidPayload(PermanentError):
    """An SQS body that is not a version-1 notification payload."""


class PayloadTooLarge(PermanentError):
    """One notification alone does not fit in an SQS message."""


def _text(value: Any, cap: int) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if len(text) > cap:
        text = text[:cap]
    return _UNSENDABLE.sub("\ufffd", text)


def _names(values: Iterable[str]) -> tuple[list[str], int]:
    names = sorted(set(values))
    return [n for n in (_text(v, MAX_NAME_CHARS) for v in names[:MAX_NAMES]) if n], len(names)


def message_id_text(message_id: str) -> str:
    """The message id a payload carries: the id itself, or, when it had to be cut or
    cleaned to travel (over :data:`MAX_TEXT_CHARS`, or characters SQS refuses), what
    is left and a hash of the whole, so that two ids never become one: the id is part
    of every notification's idempotency key, and a publisher chooses it."""
    text = _text(message_id, MAX_TEXT_CHARS) or ""
    if text == message_id:
        return text
    return hashed_id(text, message_id, MAX_TEXT_CHARS)


def hashed_id(kept: str, message_id: str, limit: int) -> str:
    """At most ``limit`` characters: the start of ``kept`` (what could travel of
    ``message_id``) and a hash of the whole id, so that two ids never become one."""
    whole = hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    suffix = f"\u2026#sha256:{whole}"
    return kept[:limit - len(suffix)] + suffix


def message_info(message: Message) -> dict[str, Any]:
    """The message header of a payload: what a sender renders, capped."""
    usernames, num_usernames = _names(message.usernames)
    packages, num_packages = _names(
        name for kind in ARTIFACT_TYPES for name in message.artifacts(kind))
    return {
        "id": message_id_text(message.id),
        "topic": _text(message.topic, MAX_TEXT_CHARS),
        "app": _text(message.app_name, MAX_NAME_CHARS),
        "agent": _text(message.agent_name, MAX_NAME_CHARS),
        "summary": _text(message.summary, MAX_TEXT_CHARS),
        "url": _text(message.url, MAX_TEXT_CHARS),
        "sent_at": _text(message.sent_at, MAX_NAME_CHARS),
        "severity": message.severity_name,
        "usernames": usernames,
        "num_usernames": num_usernames,
        "packages": packages,
        "num_packages": num_packages,
    }


def _encode_header(info: dict[str, Any]) -> bytes:
    """The header as JSON, shrunk until it fits :data:`MAX_HEADER_BYTES`."""
    encoded = orjson.dumps(info)
    # Only a hostile message gets here (10,000 control characters escape to
    # 60 KB): drop list entries first, then shorten the free texts.
    while len(encoded) > MAX_HEADER_BYTES:
        lists = [k for k in ("usernames", "packages") if len(info[k]) > 1]
        texts = [k for k in ("summary", "url", "topic", "id")
                 if info[k] is not None and len(info[k]) > 100]
        if lists:
            for k in lists:
                info[k] = info[k][: len(info[k]) // 2]
        elif texts:
            for k in texts:
                # the id keeps a hash of what it was: cut, two ids could become one,
                # and the second message's notifications be taken for duplicates
                info[k] = (hashed_id(info[k], info[k], len(info[k]) // 2) if k == "id"
                           else info[k][: len(info[k]) // 2])
        else:  # cannot happen with the caps above; refuse rather than loop
            raise PayloadTooLarge(f"message header of {len(encoded)} bytes")
        encoded = orjson.dumps(info)
    return encoded


#: Longest routing field a notification may carry (preferences allow 512).
MAX_ROUTING_CHARS = 1024
#: All rule names of one notification together, in characters.  Names are what a
#: sender shows, not routing: past this each is shortened to its share.  100 rules
#: named with 512 four-byte characters each made one notification 205 KB, more than
#: an SQS message holds beside a large message header, and refused the whole message
#: for every recipient.
MAX_RULE_NAMES_CHARS = 8_000


def fit_rule_names(names: Sequence[str]) -> list[str]:
    """``names``, each cut to an equal share (with "…") when together they are longer
    than :data:`MAX_RULE_NAMES_CHARS`."""
    if sum(map(len, names)) <= MAX_RULE_NAMES_CHARS:
        return list(names)
    each = max(8, MAX_RULE_NAMES_CHARS // len(names))
    return [n if len(n) <= each else n[:each - 1] + "\u2026" for n in names]


def _encode_notification(n: Notification, describe: Describe | None = None) -> bytes | None:
    """The JSON of one notification, or None (logged) when SQS could not carry it.

    Routing fields are never altered (a changed address is a wrong address);
    preferences refuse such values, so this only guards against a writer bug:
    one bad notification must not sink the other recipients of its message.
    """
    fields = (n.user, n.address, n.destination, *n.rules)
    if any(len(f) > MAX_ROUTING_CHARS or _UNSENDABLE.search(f) for f in fields):
        log.error("dropped a notification SQS cannot carry: user %.80r, destination %.80r",
                  n.user, n.destination)
        return None
    item: dict[str, Any] = {"user": n.user, "address": n.address,
                            "destination": n.destination, "rules": n.rules}
    if describe is not None:
        names, digest = describe(n)
        item["rule_names"] = fit_rule_names(names)
        if digest is not None:
            item["digest"] = {"interval_s": digest[0], "max_count": digest[1]}
    return orjson.dumps(item)


def pack(message: Message, notifications: Sequence[Notification], backend: str,
         max_bytes: int = MAX_BODY_BYTES, max_notifications: int | None = None,
         describe: Describe | None = None) -> list[str]:
    """SQS bodies carrying ``notifications``: :func:`pack_counted`'s bodies."""
    return [body for body, _ in pack_counted(message, notifications, backend, max_bytes,
                                             max_notifications, describe)]


def pack_counted(message: Message, notifications: Sequence[Notification], backend: str,
                 max_bytes: int = MAX_BODY_BYTES, max_notifications: int | None = None,
                 describe: Describe | None = None) -> list[tuple[str, int]]:
    """SQS bodies carrying ``notifications`` (all of ``backend``) of ``message``.

    As few bodies as fit under ``max_bytes`` (UTF-8 bytes), each holding at
    most ``max_notifications`` when given; the notifications keep their
    order.  No notifications: no bodies.  With ``describe`` (the matcher's),
    each notification also carries its rules' names and its destination's
    digest setting.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")
    if not notifications:
        return []
    header = _encode_header(message_info(message))
    # The parts counter is written last; reserve room for the widest one.
    fixed = len(_frame(backend, 999_999, 999_999, header, b""))
    budget = max_bytes - fixed
    chunks: list[list[bytes]] = []
    chunk: list[bytes] = []
    used = 0
    for n in notifications:
        item = _encode_notification(n, describe)
        if item is None:
            continue
        size = len(item) + (1 if chunk else 0)  # the comma
        if chunk and (used + size > budget
                      or (max_notifications is not None and len(chunk) >= max_notifications)):
            chunks.append(chunk)
            chunk, used, size = [], 0, len(item)
        if size > budget:
            raise PayloadTooLarge(f"a notification of {len(item)} bytes for {n.user!r}")
        chunk.append(item)
        used += size
    chunks.append(chunk)
    total = len(chunks)
    return [(_frame(backend, i, total, header, b",".join(c)).decode(), len(c))
            for i, c in enumerate(chunks, 1)]


def _frame(backend: str, part: int, parts: int, header: bytes, items: bytes) -> bytes:
    return b"".join((b'{"v":%d,"backend":' % PAYLOAD_VERSION, orjson.dumps(backend),
                     b',"part":%d,"parts":%d,"message":' % (part, parts), header,
                     b',"notifications":[', items, b"]}"))


#: A body carrying several bus messages' payloads for one backend (see :func:`combine`).
BATCH_VERSION = 2


def combine(parts: Sequence[tuple[str, int]], backend: str, max_bytes: int = MAX_BODY_BYTES,
            max_notifications: int | None = None) -> list[tuple[str, list[int]]]:
    """Version-1 bodies gathered into as few version-2 bodies as fit.

    ``parts`` are ``(version-1 body, its notification count)``; each result is
    ``(body, positions of the parts it carries)``.  A body holds at most
    ``max_bytes`` and, with ``max_notifications``, at most that many
    notifications (a part alone over either limit travels alone, as it is).
    Nothing is re-encoded: the parts are joined as they are, in order.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")
    head = b'{"v":%d,"backend":' % BATCH_VERSION + orjson.dumps(backend) + b',"payloads":['
    out: list[tuple[str, list[int]]] = []
    chunk: list[int] = []
    size = count = 0
    encoded = [body.encode() for body, _ in parts]

    def flush() -> None:
        if len(chunk) == 1:  # one part: no need to wrap it
            out.append((parts[chunk[0]][0], list(chunk)))
        elif chunk:
            out.append(((head + b",".join(encoded[i] for i in chunk) + b"]}").decode(),
                        list(chunk)))

    for i, (_body, n) in enumerate(parts):
        extra = len(encoded[i]) + 1
        if chunk and (len(head) + 2 + size + extra > max_bytes
                      or (max_notifications is not None and count + n > max_notifications)):
            flush()
            chunk, size, count = [], 0, 0
        chunk.append(i)
        size += extra
        count += n
    flush()
    return out


def unpack_all(body: str | bytes, backend: str | None = None
               ) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """``[(message info, notifications), ...]`` of a version-1 or version-2 body."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidPayload(f"payload is not JSON: {exc}") from exc
    if isinstance(doc, dict) and doc.get("v") == BATCH_VERSION:
        if doc.get("backend") not in BACKENDS:
            raise InvalidPayload(f"unknown backend {doc.get('backend')!r}")
        if backend is not None and doc["backend"] != backend:
            raise InvalidPayload(f"payload for {doc['backend']!r} on the {backend!r} queue")
        payloads = doc.get("payloads")
        if not isinstance(payloads, list) or not payloads:
            raise InvalidPayload("payloads must be a non-empty list")
        out = []
        for inner in payloads:
            if not isinstance(inner, dict) or inner.get("backend") != doc["backend"]:
                raise InvalidPayload("each payload must be a version-1 payload of the backend")
            out.append(_checked(inner, backend))
        return out
    return [_checked(doc, backend)]


def unpack(body: str | bytes, backend: str | None = None
           ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(message info, notifications)`` of one version-1 payload body.

    The message info has the keys of :data:`MESSAGE_KEYS`; each notification
    ``user``, ``address``, ``destination`` (strings) and ``rules`` (a list of
    rule ids).  With ``backend``, a payload meant for another backend is
    refused too.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidPayload(f"payload is not JSON: {exc}") from exc
    return _checked(doc, backend)


def _checked(doc: Any, backend: str | None
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if not isinstance(doc, dict) or doc.get("v") != PAYLOAD_VERSION:
        raise InvalidPayload(f"not a version-{PAYLOAD_VERSION} notification payload")
    if doc.get("backend") not in BACKENDS:
        raise InvalidPayload(f"unknown backend {doc.get('backend')!r}")
    if backend is not None and doc["backend"] != backend:
        raise InvalidPayload(f"payload for {doc['backend']!r} on the {backend!r} queue")
    info = doc.get("message")
    if not isinstance(info, dict) or not all(k in info for k in MESSAGE_KEYS):
        raise InvalidPayload("message must be an object with " + ", ".join(MESSAGE_KEYS))
    if not isinstance(info["id"], str) or not isinstance(info["topic"], str):
        raise InvalidPayload("message id and topic must be strings")
    if not _str_list(info["usernames"]) or not _str_list(info["packages"]):
        raise InvalidPayload("message usernames and packages must be lists of strings")
    if not all(info[k] is None or isinstance(info[k], str) for k in _TEXT_KEYS):
        raise InvalidPayload("message " + ", ".join(_TEXT_KEYS) + " must be strings or null")
    if not all(_count(info[k]) for k in _COUNT_KEYS):
        raise InvalidPayload("message " + " and ".join(_COUNT_KEYS) + " must be counts")
    # What the senders read, and nothing else: a sender writes the message again (a dead
    # letter, a digest item), which any other value, however nested, could keep it from
    info = {k: info[k] for k in MESSAGE_KEYS}
    items = doc.get("notifications")
    if not isinstance(items, list):
        raise InvalidPayload("notifications must be a list")
    for item in items:
        if not _valid_notification(item):
            raise InvalidPayload(f"bad notification {str(item)[:200]!r}")
    return info, items


#: the message fields that are a string or null, and those that are a count
_TEXT_KEYS = ("app", "agent", "summary", "url", "sent_at", "severity")
_COUNT_KEYS = ("num_usernames", "num_packages")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _valid_notification(item: Any) -> bool:
    return (isinstance(item, Mapping)
            and all(isinstance(item.get(k), str) for k in NOTIFICATION_KEYS[:3])
            and _str_list(item.get("rules")))
