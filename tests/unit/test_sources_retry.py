"""The sources' GETs are retried on a 429, a 5xx or a failed connection, a bounded
number of times, honouring (capped) ``Retry-After``: against a local HTTP server,
with no back-off so that nothing sleeps."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fmn.ownership.sources import FasJson, RetryPolicy, SourceError, make_session

pytestmark = pytest.mark.unit

NO_WAIT = RetryPolicy(backoff_s=0, retry_after_max_s=0)


class Server:
    def __init__(self) -> None:
        #: the statuses answered before the account, in order
        self.failures: list[tuple[int, dict[str, str]]] = []
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.hits += 1
                if server.failures:
                    status, headers = server.failures.pop(0)
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                body = json.dumps({"result": {"username": "alice", "emails": ["a@b.org"],
                                              "ircnicks": [], "locked": False}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    thread = threading.Thread(target=s.httpd.serve_forever, daemon=True)
    thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_a_failing_answer_is_retried_until_it_comes(server: Server) -> None:
    server.failures = [(503, {}), (429, {"Retry-After": "3600"})]
    fasjson = FasJson(server.url, make_session("none", NO_WAIT), 5)
    started = time.monotonic()
    assert fasjson.user("alice").emails == ("a@b.org",)
    assert server.hits == 3  # the default: two retries
    assert time.monotonic() - started < 5  # the hour asked for is capped (here at 0)


def test_retries_are_bounded(server: Server) -> None:
    server.failures = [(503, {})] * 10
    fasjson = FasJson(server.url, make_session("none", RetryPolicy(retries=2, backoff_s=0)), 5)
    with pytest.raises(SourceError, match="HTTP 503") as down:
        fasjson.user("alice")
    assert server.hits == 3 and down.value.source_down
    # one odd answer is not the source failing (the account sync goes on past it)
    server.failures, server.hits = [(403, {})], 0
    with pytest.raises(SourceError, match="HTTP 403") as odd:
        fasjson.user("alice")
    assert not odd.value.source_down and server.hits == 1
    # a 404 is an answer, not retried
    server.failures, server.hits = [(404, {})], 0
    assert fasjson.user("alice").deleted and server.hits == 1


def test_a_refused_connection_is_retried(server: Server) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fasjson = FasJson(f"http://127.0.0.1:{port}", make_session("none", NO_WAIT), 5)
    with pytest.raises(SourceError, match="ConnectionError"):
        fasjson.user("alice")


def test_retry_after_is_honoured_up_to_a_cap() -> None:
    retry = RetryPolicy(retry_after_max_s=60).urllib3()

    class Response:
        headers = {"Retry-After": "3600"}

    assert retry.get_retry_after(Response()) == 60
    Response.headers = {"Retry-After": "7"}
    assert retry.get_retry_after(Response()) == 7
    assert retry.new().get_retry_after(Response()) == 7  # kept across attempts
