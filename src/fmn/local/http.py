"""Serve an ASGI app with uvicorn on a background thread (the local stack and the tests).

:func:`serve` starts uvicorn on ``host`` and ``port`` (``None``: a port the
system picks, race-free) in a daemon thread and returns once the server
accepts connections, with a :class:`ServerHandle` (``url``, ``port``,
``stop()``; also a context manager).  It raises ``RuntimeError`` if the
server does not come up (the port is taken, the app's startup fails).

Stopping: ``on_stop`` is called first, so that an app holding endless
responses (a Server-Sent Events stream) can end them; then uvicorn shuts
down, cancelling whatever still runs after ``graceful_s``.  No access log
is written: feed URLs carry their token in the query string.  uvicorn's own
log configuration is not applied (the process keeps its logging set-up).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any


class ServerHandle:
    """A running uvicorn server; see :func:`serve`."""

    def __init__(self, server: Any, thread: threading.Thread, host: str, port: int,
                 on_stop: Callable[[], None] | None) -> None:
        self.server = server
        self.thread = thread
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"
        self._on_stop = on_stop

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the server and wait for its thread (idempotent)."""
        if not self.thread.is_alive():
            return
        if self._on_stop is not None:
            self._on_stop()
        self.server.should_exit = True
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(5.0)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def serve(app: Any, *, host: str = "127.0.0.1", port: int | None = None,
          name: str = "http", on_stop: Callable[[], None] | None = None,
          graceful_s: int = 3, startup_timeout_s: float = 15.0) -> ServerHandle:
    """Run ``app`` (ASGI) until :meth:`ServerHandle.stop`; returns once it accepts connections."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port or 0, log_config=None, access_log=False,
                            lifespan="auto", timeout_graceful_shutdown=graceful_s)
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # uvicorn exits with SystemExit when it cannot start
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"{name}-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5.0)
            why = f": {failure[0]!r}" if failure else ""
            raise RuntimeError(f"the {name} server did not start on {host}:{port or 0}{why}")
        time.sleep(0.02)
    bound = port or server.servers[0].sockets[0].getsockname()[1]
    handle = ServerHandle(server, thread, host, int(bound), on_stop)
    if not _accepts(host, handle.port):
        handle.stop()
        raise RuntimeError(f"the {name} server started but {handle.url} does not answer")
    return handle
