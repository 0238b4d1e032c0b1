"""Count every AWS request a local run makes, by API and by stage (botocore's event hooks).

:class:`RequestCounter` registers on ``before-parameter-build`` (the API parameters)
and ``after-call`` (and
``after-call-error``) of a boto3 session's or a client's event system, so
clients created *after* :meth:`RequestCounter.install` count (botocore copies
a session's handlers into each new client).  Each call is filed under a
:class:`Call` key:

* ``role``: who made it, from the calling thread's name (the local runner
  names its threads ``esm-<queue>-<n>`` and ``esm-<queue>-scaler``):
  ``esm`` (the event source mapping receiving and deleting on its own queue,
  which Lambda does and SQS bills), ``function`` (the handler's own calls,
  e.g. the match function sending to the backend queues), ``scaler`` (the
  runner's reading of the backlog, which Lambda does inside AWS, unbilled),
  or the role given to :meth:`install` (``bridge``, ``instrument``);
* ``stage``: the function (or the role) and the queue, e.g.
  ``match -> email``;
* ``api``: ``sqs.SendMessageBatch``...;
* ``idle``: a ``ReceiveMessage`` that returned nothing.

It also adds up what SQS bills: every 64 KiB of a request's or a receive's
payload is one request.  :meth:`snapshot` returns JSON-able totals;
:meth:`write` puts them in a file (the bridge, a process of its own, writes
its counts there when ``FMN_REQUEST_COUNTS`` names a file).
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

from fmn.local.files import read_json, write_json

#: SQS bills each 64 KiB chunk of a payload as one request.
SQS_CHUNK = 64 * 1024
_ESM_THREAD = re.compile(r"^esm-(?P<queue>[a-z]+)-(?P<index>\d+|scaler)$")
_ESM_APIS = frozenset({"ReceiveMessage", "DeleteMessageBatch", "DeleteMessage",
                       "ChangeMessageVisibility", "ChangeMessageVisibilityBatch"})


class Call(NamedTuple):
    role: str
    stage: str
    api: str
    idle: bool


class RequestCounter:
    def __init__(self, queue_prefix: str = "", role: str = "instrument",
                 functions: dict[str, str] | None = None) -> None:
        #: the stage's queue prefix, stripped from queue names
        self.queue_prefix = queue_prefix
        self.role = role
        #: queue -> the function it feeds (``incoming`` -> ``match``)
        self.functions = functions or {}
        self.calls: Counter[Call] = Counter()
        #: requests as SQS bills them (64 KiB chunks)
        self.billed: Counter[Call] = Counter()
        #: entries sent or deleted, messages received
        self.items: Counter[Call] = Counter()
        #: payload bytes sent or received
        self.bytes: Counter[Call] = Counter()
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()

    # -- installing ------------------------------------------------------------

    def install(self, events: Any) -> RequestCounter:
        """Count calls made through ``events`` (a session's or a client's ``meta.events``)."""
        events.register("before-parameter-build", self._before,
                        unique_id=f"fmn-count-b-{id(self)}")
        events.register("after-call", self._after, unique_id=f"fmn-count-a-{id(self)}")
        events.register("after-call-error", self._error, unique_id=f"fmn-count-e-{id(self)}")
        return self

    def install_default_session(self) -> RequestCounter:
        """Count every client boto3.client() creates from now on, in this process."""
        import boto3

        if boto3.DEFAULT_SESSION is None:
            boto3.setup_default_session()
        assert boto3.DEFAULT_SESSION is not None
        return self.install(boto3.DEFAULT_SESSION.events)

    def uninstall(self, events: Any) -> None:
        for kind, handler, tag in (("before-parameter-build", self._before, "b"),
                                   ("after-call", self._after, "a"),
                                   ("after-call-error", self._error, "e")):
            events.unregister(kind, handler, unique_id=f"fmn-count-{tag}-{id(self)}")

    # -- the hooks -------------------------------------------------------------

    def _queue(self, url: str) -> str:
        name = url.rsplit("/", 1)[-1]
        if self.queue_prefix and name.startswith(self.queue_prefix):
            name = name[len(self.queue_prefix):]
        return name

    def _before(self, model: Any = None, params: Any = None, context: Any = None,
                **_: Any) -> None:
        if context is None or not isinstance(params, dict):
            return
        queue = self._queue(str(params.get("QueueUrl", "")))
        size = 0
        if "Entries" in params:
            size = sum(len(str(e.get("MessageBody", "")).encode()) for e in params["Entries"]
                       if isinstance(e, dict))
        elif "MessageBody" in params:
            size = len(str(params["MessageBody"]).encode())
        context["fmn_queue"] = queue
        context["fmn_bytes"] = size
        entries = params.get("Entries")
        context["fmn_items"] = len(entries) if isinstance(entries, list) else \
            int("MessageBody" in params or "ReceiptHandle" in params)

    def _key(self, model: Any, context: Any, idle: bool) -> Call:
        service = model.service_model.service_name if model is not None else "?"
        api = model.name if model is not None else "?"
        queue = (context or {}).get("fmn_queue", "")
        thread = threading.current_thread().name
        found = _ESM_THREAD.match(thread)
        if found is None:
            role, who = self.role, self.role
        elif found.group("index") == "scaler":
            role, who = "scaler", "scaler"
        else:
            own = found.group("queue")
            who = self.functions.get(own, own)
            role = "esm" if api in _ESM_APIS and queue == own else "function"
            if role == "esm":
                who = f"{who} event source"
        stage = f"{who} -> {queue}" if queue else who
        return Call(role, stage, f"{service}.{api}", idle)

    def _after(self, model: Any = None, parsed: Any = None, context: Any = None,
               **_: Any) -> None:
        idle = False
        size = int((context or {}).get("fmn_bytes", 0))
        items = int((context or {}).get("fmn_items", 0))
        if model is not None and model.name == "ReceiveMessage" and isinstance(parsed, dict):
            messages = parsed.get("Messages") or []
            idle = not messages
            size = sum(len(str(m.get("Body", "")).encode()) for m in messages)
            items = len(messages)
        key = self._key(model, context, idle)
        chunks = max(1, math.ceil(size / SQS_CHUNK)) if key.api.startswith("sqs.") else 1
        with self._lock:
            self.calls[key] += 1
            self.billed[key] += chunks
            self.items[key] += items
            self.bytes[key] += size

    def _error(self, model: Any = None, context: Any = None, exception: Any = None,
               **_: Any) -> None:
        key = self._key(model, context, False)
        with self._lock:
            self.calls[key] += 1
            self.billed[key] += 1
            self.errors[key.api] += 1

    # -- reading ---------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"role": k.role, "stage": k.stage, "api": k.api, "idle": k.idle,
                     "calls": n, "billed": self.billed[k], "items": self.items[k],
                     "bytes": self.bytes[k]} for k, n in self.calls.items()]

    def total(self, api_prefix: str = "", *, idle: bool | None = None,
              roles: tuple[str, ...] | None = None) -> int:
        with self._lock:
            return sum(n for k, n in self.calls.items() if k.api.startswith(api_prefix)
                       and (idle is None or k.idle == idle)
                       and (roles is None or k.role in roles))

    def write(self, path: str | Path) -> None:
        write_json(path, self.snapshot())


def read_counts(path: str | Path) -> list[dict[str, Any]]:
    """What :meth:`RequestCounter.write` wrote (none if nothing was written)."""
    doc = read_json(path)
    return doc if isinstance(doc, list) else []
