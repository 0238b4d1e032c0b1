"""Metadata of a fedmsg envelope, from ``fedmsg.meta`` and its Fedora processors.

:func:`from_envelope` takes one decoded envelope (``{"topic", "msg",
"msg_id", "timestamp", ...}``) and returns a :class:`fmn.message.Message`, as
spec section 1 says: the ``fedmsg_meta_fedora_infrastructure`` processor for
the topic gives usernames, packages, subtitle (our ``summary``) and link
(``url``); ``app_name`` is its ``__name__``; severity is INFO; the agent is the
processor's own ``agent`` where it has one, else the only username, else
``None`` (never ``msg2agent``'s random ``set.pop()``).  A processor method that
raises leaves its field empty and is recorded.  The processors are built once,
lazily, with Fedora production's topic configuration.

Nothing leaves the machine: fasshim's account lookups are answered from a
local map (:func:`set_account_map`; empty by default, so nicks and e-mails
stay as they are), and the ``requests`` module the processors would use for
HTTP (taskotron asks bodhi for an update's packages) is replaced, in those
processor modules only, by a stub that raises :class:`NetworkDisabled`.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from fmn.errors import InvalidMessage
from fmn.message import EMPTY
from fmn.message import Message as FmnMessage
from fmn.metadata import _fields

T = TypeVar("T")

#: The fedmsg configuration the processors see: Fedora production's topic
#: prefix, and no ``fasjson`` / ``fas_credentials`` so that fasshim never
#: looks accounts up over the network.
FEDMSG_CONFIG: Mapping[str, Any] = MappingProxyType(
    {
        "topic_prefix": "org.fedoraproject",
        "topic_prefix_re": r"^org\.fedoraproject\.(dev|stg|prod)",
    }
)


class NetworkDisabled(RuntimeError):
    """A fedmsg.meta processor tried to use the network, which is not allowed here."""


class _AccountMap(dict[str, str]):
    """fasshim's nick/e-mail -> username cache that always counts as built.

    fasshim rebuilds its cache (over the network, or with a warning when it
    has no credentials) on every lookup while the cache is falsy; this one is
    truthy even when empty.
    """

    def __bool__(self) -> bool:
        return True


class _OfflineRequests:
    """Stands in for ``requests`` inside the processor modules."""

    def __init__(self, requests: Any) -> None:
        # Kept so that ``except requests.exceptions.X`` clauses still resolve.
        self.exceptions = requests.exceptions

    def __getattr__(self, name: str) -> Any:
        raise NetworkDisabled(f"requests.{name}: fedmsg.meta may not use the network here")


def set_account_map(mapping: Mapping[str, str]) -> None:
    """Tell fasshim which FAS username an IRC nick or e-mail address belongs to.

    Processors turn nicks and e-mails into usernames through this map; a name
    not in it stays as it is.  Production can feed it from the account data it
    already imports; tests install the fedmsg_meta test suite's stub.
    """
    from fedmsg_meta_fedora_infrastructure import fasshim

    fasshim._fas_cache = _AccountMap(mapping)


# Matching may run in several threads (the local Lambda runner): the
# processors are built once, under a lock, before any lookup can see a
# half-built list (and cache its answer for good).
_build_lock = threading.Lock()
_built: list[Any] = []


def _meta() -> Any:
    """``fedmsg.meta``, with the processors built and cut off from the network."""
    if not _built:
        with _build_lock:
            if not _built:
                _built.append(_build())
    return _built[0]


def _build() -> Any:
    import fedmsg.config
    import fedmsg.meta
    import requests
    from fedmsg_meta_fedora_infrastructure import fasshim

    if not isinstance(fasshim._fas_cache, _AccountMap):
        set_account_map(fasshim._fas_cache)
    # The mailman processor's module calls fedmsg.config.load_config() at
    # import.  Unseeded, that executes every fedmsg config file it finds
    # (/etc/fedmsg.d, ~/.fedmsg.d, ./fedmsg.d) and fails without 'endpoints',
    # so the processor is silently skipped.  A seeded cache is returned as is.
    if not getattr(fedmsg.config, "__cache"):
        setattr(fedmsg.config, "__cache", dict(FEDMSG_CONFIG))
    fedmsg.meta.make_processors(**FEDMSG_CONFIG)
    offline = _OfflineRequests(requests)
    for processor in fedmsg.meta.processors:
        module: Any = sys.modules[type(processor).__module__]
        if getattr(module, "requests", None) is requests:
            module.requests = offline
    return fedmsg.meta


# BaseProcessor.handle_msg (overridden by no processor) reads only the topic,
# so the processor is a function of the topic: the regex scan over ~56
# processors runs once per distinct topic.
@functools.lru_cache(maxsize=4096)
def processor_for(topic: str) -> Any:
    """The fedmsg.meta processor that handles a topic (the default one if none does)."""
    return _meta().msg2processor({"topic": topic}, **FEDMSG_CONFIG)


def warm_up() -> None:
    """Import fedmsg.meta and build the processors before the first message."""
    _meta()


def _call(
    processor: Any,
    method: str,
    envelope: Mapping[str, Any],
    config: Mapping[str, Any],
    coerce: Callable[[Any], T],
    default: T,
) -> T:
    try:
        return coerce(getattr(processor, method)(envelope, **config))
    except Exception as error:  # processor code is third-party: any error, same fallback
        _fields.record_error(processor.__name__, method, error)
        return default


def from_envelope(
    envelope: Mapping[str, Any], *, config: Mapping[str, Any] | None = None
) -> FmnMessage:
    """The :class:`~fmn.message.Message` of one decoded fedmsg envelope.

    ``envelope["topic"]`` must be a non-empty string (:func:`fmn.metadata.parse`
    checks it before calling here).

    ``config`` replaces :data:`FEDMSG_CONFIG` for the processor methods (not
    for choosing the processor); the fedmsg_meta tests use it for settings
    such as pkgdb's ``namespace``.
    """
    topic: str = envelope["topic"]
    body = envelope.get("msg")
    if not isinstance(body, Mapping):
        raise InvalidMessage("bad-field", f"'msg' must be an object, not {type(body).__name__}")
    msg_id = _fields.message_id(envelope.get("msg_id"), envelope, "msg_id")
    if config is None:
        config = FEDMSG_CONFIG

    processor = processor_for(topic)
    usernames = _call(processor, "usernames", envelope, config, _fields.names, EMPTY)
    if processor.agent is NotImplemented:
        agent = next(iter(usernames)) if len(usernames) == 1 else None
    else:
        agent = _call(processor, "agent", envelope, config, _fields.text, None)
    return FmnMessage(
        id=msg_id,
        topic=topic,
        app_name=processor.__name__,
        agent_name=agent,
        usernames=usernames,
        rpms=_call(processor, "packages", envelope, config, _fields.names, EMPTY),
        severity=20,
        summary=_call(processor, "subtitle", envelope, config, _fields.text, None),
        url=_call(processor, "link", envelope, config, _fields.text, None),
        sent_at=_fields.timestamp_to_rfc3339(envelope.get("timestamp")),
        body=body,
    )
