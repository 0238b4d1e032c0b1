"""The bus envelope: what the bridge puts on the incoming SQS queue (version 1).

One SQS message carries one bus message, as received, with where and when it
came from.  The body is JSON (docs/envelope.md)::

    {"v": 1, "bus": "fedmsg" | "fedora-messaging", "source": "tcp://hub:9940",
     "received_at": "2026-11-27T20:00:00.123456+00:00", "seq": 1234,
     "record": {...}}

``record`` is the bus record itself: the fedmsg envelope (``topic``, ``msg``,
``msg_id``, ``i``, ...) or the fedora-messaging record (``topic``,
``headers``, ``id``, ``body``, ``queue``), as JSON.  A record that is not
JSON is kept verbatim as ``record_text`` (or ``record_b64`` when it is not
even UTF-8); the match function then dead-letters it: nothing is dropped on
the way.  A record too large for one SQS message
goes to S3 and the envelope carries ``claim`` (bucket, key, size, SHA-256)
instead: the claim-check pattern.  ``seq`` is fedmsg's per-publisher sequence
number ``i`` where there is one.

Records are carried **unchanged**: what the bus sent is JSON as Python's
``json`` reads it (``NaN``, ``Infinity``, integers beyond 64 bits all
occur in valid Fedora messages), which strict parsers refuse or round.
So the envelope embeds the record's bytes as they are, and
:meth:`Envelope.decode` hands back exactly those bytes (it never parses and
re-encodes the record: :func:`_top_level` reads the envelope with the
standard library's scanner and slices the record out).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from fmn.errors import PermanentError
from fmn.message import too_many_containers

ENVELOPE_VERSION = 1
BUSES: tuple[str, ...] = ("fedmsg", "fedora-messaging")
#: SQS accepts 262,144 bytes per message; above this an envelope's record
#: goes to S3 (the margin covers the envelope's own fields and attributes).
MAX_INLINE_BYTES = 240 * 1024


class InvalidEnvelope(PermanentError):
    """An SQS body that is not a version-1 bus envelope."""


@dataclass(frozen=True)
class Claim:
    """Where a record too large for SQS was put."""

    bucket: str
    key: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "key": self.key, "size": self.size,
                "sha256": self.sha256}


@dataclass(frozen=True)
class Envelope:
    bus: str
    source: str
    received_at: str
    #: the record as received (JSON bytes or not); None when it is in S3
    record: bytes | None
    claim: Claim | None = None
    seq: int | None = None

    @classmethod
    def wrap(cls, bus: str, source: str, record: bytes, seq: int | None = None,
             received_at: datetime | None = None) -> Envelope:
        if bus not in BUSES:
            raise ValueError(f"unknown bus {bus!r}")
        when = (received_at or datetime.now(UTC)).isoformat()
        if not _is_seq(seq):  # a bus's number, not ours to trust: JSON writes no bigger
            seq = None
        return cls(bus=bus, source=source, received_at=when, record=record, seq=seq)

    def with_claim(self, claim: Claim) -> Envelope:
        return Envelope(self.bus, self.source, self.received_at, None, claim, self.seq)

    def encode(self) -> str:
        """The SQS message body."""
        doc: dict[str, Any] = {"v": ENVELOPE_VERSION, "bus": self.bus, "source": self.source,
                               "received_at": self.received_at}
        if self.seq is not None:
            doc["seq"] = self.seq
        if self.claim is not None:
            doc["claim"] = self.claim.to_json()
        elif self.record is not None:
            if _embeddable(self.record):
                doc["record"] = orjson.Fragment(self.record)  # embedded as received
            else:
                try:
                    doc["record_text"] = self.record.decode("utf-8")
                except UnicodeDecodeError:  # kept byte for byte all the same
                    doc["record_b64"] = base64.b64encode(self.record).decode()
        return orjson.dumps(doc).decode()

    @classmethod
    def decode(cls, body: str | bytes) -> Envelope:
        try:
            text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else str(body)
            fields = _top_level(text)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise InvalidEnvelope(f"SQS body is not a JSON object: {exc}") from exc
        doc = {key: value for key, (value, _span) in fields.items()}
        if type(doc.get("v")) is not int or doc.get("v") != ENVELOPE_VERSION:
            raise InvalidEnvelope(f"not a version-{ENVELOPE_VERSION} bus envelope")
        if doc.get("bus") not in BUSES:
            raise InvalidEnvelope(f"unknown bus {str(doc.get('bus'))[:100]!r}")
        claim = None
        record: bytes | None = None
        if "claim" in doc:
            c = doc["claim"]
            try:
                claim = Claim(str(c["bucket"]), str(c["key"]), int(c["size"]), str(c["sha256"]))
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                raise InvalidEnvelope(f"bad claim: {exc}") from exc
        elif "record" in doc:
            start, end = fields["record"][1]
            try:
                record = text[start:end].encode("utf-8")  # exactly as embedded
            except UnicodeEncodeError as exc:
                raise InvalidEnvelope(f"record is not UTF-8: {exc}") from exc
        elif "record_text" in doc:
            try:
                record = str(doc["record_text"]).encode()
            except UnicodeEncodeError as exc:  # a lone surrogate, escaped
                raise InvalidEnvelope(f"bad record_text: {exc}") from exc
        elif "record_b64" in doc:
            try:
                record = base64.b64decode(str(doc["record_b64"]), validate=True)
            except ValueError as exc:
                raise InvalidEnvelope(f"bad record_b64: {exc}") from exc
        else:
            raise InvalidEnvelope("envelope has neither record nor claim")
        seq = doc.get("seq")
        return cls(bus=doc["bus"], source=str(doc.get("source", "")),
                   received_at=str(doc.get("received_at", "")), record=record, claim=claim,
                   seq=seq if _is_seq(seq) else None)

    def encoded_size(self) -> int:
        return len(self.encode().encode())


def _is_seq(value: object) -> bool:
    """A sequence number the envelope can carry: an integer orjson writes (64 bits)."""
    return isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**64


#: The standard library's decoder: NaN, Infinity and integers of any size, as Fedora sends.
_DECODER = json.JSONDecoder()
_WS = re.compile(r"[ \t\n\r]*")


def loads(raw: bytes | str) -> Any:
    """JSON as Python's ``json`` reads it (orjson first, for speed); ValueError if it is not.

    Values orjson cannot represent exactly (integers beyond 64 bits) come back
    as floats from the fast path: use it to look, never to re-encode.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def _embeddable(raw: bytes) -> bool:
    """Whether ``raw`` can sit in the envelope as it is and be sliced out unchanged:
    JSON in UTF-8 without a byte-order mark or surrounding whitespace (which the
    slice would lose).  Python's ``json`` reads UTF-16 and UTF-32 bytes too, which
    would be no text inside a UTF-8 document: those go as ``record_b64``."""
    if not raw or raw[:1] in _EDGES or raw[-1:] in _EDGES or raw.startswith(_BOM):
        return False
    if too_many_containers(raw) is not None:  # not read: it would take gigabytes
        return False
    try:
        orjson.loads(raw)  # strict JSON in valid UTF-8: the common case, fast
    except orjson.JSONDecodeError:
        try:  # what Python's json reads from UTF-8 text (NaN, Infinity...)
            json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            return False
    if raw.count(b"[") + raw.count(b"{") > _DEEP:
        try:  # nested deeper than the standard library's scanner, which reads the
            # envelope, may go (orjson goes to 1024): carried as record_text
            _DECODER.decode(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            return False
    return True


#: what may not start or end an embedded record: JSON's whitespace (and a BOM)
_EDGES = frozenset((b" ", b"\t", b"\n", b"\r"))
_BOM = b"\xef\xbb\xbf"
#: more brackets than this and the record's nesting is checked against Python's own
_DEEP = 400


def _top_level(text: str) -> dict[str, tuple[Any, tuple[int, int]]]:
    """A JSON object's members: key -> (value, (start, end) of its text in ``text``)."""
    pos = _WS.match(text, 0).end()  # type: ignore[union-attr]
    if text[pos:pos + 1] != "{":
        raise ValueError("not a JSON object")
    pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
    members: dict[str, tuple[Any, tuple[int, int]]] = {}
    if text[pos:pos + 1] == "}":
        pos += 1
    else:
        while True:
            if text[pos:pos + 1] != '"':
                raise ValueError(f"expected a key at {pos}")
            key, pos = _DECODER.raw_decode(text, pos)
            pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
            if text[pos:pos + 1] != ":":
                raise ValueError(f"expected ':' at {pos}")
            pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
            value, end = _DECODER.raw_decode(text, pos)
            members[key] = (value, (pos, end))
            pos = _WS.match(text, end).end()  # type: ignore[union-attr]
            separator = text[pos:pos + 1]
            pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
            if separator == "}":
                break
            if separator != ",":
                raise ValueError(f"expected ',' or '}}' at {pos}")
    if _WS.match(text, pos).end() != len(text):  # type: ignore[union-attr]
        raise ValueError("extra data after the object")
    return members


def make_claim(bucket: str, key: str, record: bytes) -> Claim:
    return Claim(bucket=bucket, key=key, size=len(record),
                 sha256=hashlib.sha256(record).hexdigest())
