"""Do a send once per key, across redeliveries and crashes: the idempotency port.

SQS delivers at least once and a function can die after sending but before
its message is deleted.  :class:`Once` runs an action at most once per key
and remembers its (JSON-able) result for ``ttl_s``:

* a second call with the same key returns the remembered result without
  running the action (a redelivery sends nothing);
* an action that raises is forgotten, so the next delivery runs it again
  (a crash *before* the send still sends);
* a call while another holds the key waits a little for its result, then
  raises :class:`~fmn.errors.RetryableError` (the message comes back later),
  as does an unreachable store.

:class:`PowertoolsOnce` is the real adapter: Powertools idempotency on Redis
(ElastiCache in AWS).  While an action runs its key is marked in progress
until the Lambda invocation's own deadline (:meth:`PowertoolsOnce.register_context`),
so the in-progress mark of a crashed invocation does not block the retry.
:class:`MemoryOnce` is the in-memory fake for unit tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from fmn.errors import RetryableError


def sends_prefix(queue_prefix: str, backend: str) -> str:
    """The key prefix of a stage's remembered sends for one backend (Powertools stores
    each as ``<prefix>#<hash>``)."""
    return f"{queue_prefix}{backend}"


class Once(Protocol):
    def run(self, key: Mapping[str, str], action: Callable[[], Any]) -> Any:
        """The action's result, running it only if ``key`` has no result yet."""
        ...


class MemoryOnce:
    """In-memory :class:`Once` (no expiry, no deadlines): for tests."""

    def __init__(self) -> None:
        self.results: dict[tuple[tuple[str, str], ...], Any] = {}
        self._running: set[tuple[tuple[str, str], ...]] = set()
        self._lock = threading.Lock()

    def run(self, key: Mapping[str, str], action: Callable[[], Any]) -> Any:
        k = tuple(sorted(key.items()))
        with self._lock:
            if k in self.results:
                return self.results[k]
            if k in self._running:
                raise RetryableError(f"already in progress: {dict(key)}")
            self._running.add(k)
        try:
            result = action()
        finally:
            with self._lock:
                self._running.discard(k)
        with self._lock:
            self.results[k] = result
        return result


class PowertoolsOnce:
    """:class:`Once` on Powertools idempotency with its Redis persistence layer."""

    def __init__(self, redis_client: Any, ttl_s: int, name: str = "fmn-send") -> None:
        from aws_lambda_powertools.utilities.idempotency import (
            IdempotencyConfig,
            idempotent_function,
        )
        from aws_lambda_powertools.utilities.idempotency.persistence.redis import (
            RedisCachePersistenceLayer,
        )

        self.config = IdempotencyConfig(expires_after_seconds=ttl_s)
        self.persistence = RedisCachePersistenceLayer(client=redis_client)

        @idempotent_function(  # type: ignore[untyped-decorator]
            data_keyword_argument="key", persistence_store=self.persistence,
            config=self.config, key_prefix=name)
        def _run(*, key: dict[str, str], action: Callable[[], Any]) -> Any:
            return action()

        self._run = _run
        #: pauses before asking again when another invocation holds the key
        self.in_progress_waits_s: tuple[float, ...] = (0.05, 0.2, 0.5, 1.0)

    def register_context(self, context: Any) -> None:
        """The current invocation's Lambda context (its deadline bounds an in-progress mark)."""
        self.config.register_lambda_context(context)

    def run(self, key: Mapping[str, str], action: Callable[[], Any]) -> Any:
        from aws_lambda_powertools.utilities.idempotency.exceptions import (
            IdempotencyAlreadyInProgressError,
            IdempotencyPersistenceLayerError,
        )

        # The same notification often arrives twice at once (a message seen on
        # both buses): the other send usually finishes within milliseconds, so
        # wait for its result a little rather than fail the whole record back
        # to the queue for a visibility timeout.
        for wait in (*self.in_progress_waits_s, None):
            try:
                return self._run(key=dict(key), action=action)
            except IdempotencyAlreadyInProgressError as exc:
                if wait is None:
                    raise RetryableError(f"send already in progress elsewhere: {dict(key)}") \
                        from exc
                time.sleep(wait)
            except IdempotencyPersistenceLayerError as exc:
                raise RetryableError(f"idempotency store unavailable: {exc}") from exc
        raise AssertionError("unreachable")
