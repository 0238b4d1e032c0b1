"""A local Matrix homeserver for the tests and ``fmn up``: Synapse in a subprocess.

:class:`LocalSynapse` writes a small ``homeserver.yaml`` under its data
directory (SQLite, one client listener on 127.0.0.1 and a free port, no
federation listener and an empty federation whitelist, no presence, no
metrics, registration only by shared secret) and runs ``python -m
synapse.app.homeserver`` with the interpreter of the project's own Synapse
environment (``.venv-synapse``, made by ``make synapse``; ``FMN_SYNAPSE_PYTHON``
names another), so Synapse's pins never meet the project's.  It waits until
``/_matrix/client/versions`` answers and records how long that took
(:attr:`LocalSynapse.startup_s`: most of it is Python importing Synapse and,
on a fresh directory, creating its database schema).

Accounts are made through the shared-secret registration API
(:meth:`LocalSynapse.register`: the bot, demo users, test users); an admin may
lower or lift one account's message rate limit
(:meth:`LocalSynapse.override_ratelimit`), which is how a test gets
``M_LIMIT_EXCEEDED`` on demand while the server-wide limits stay generous.

:class:`MatrixListener` is a person reading their direct rooms: a thread on
``/sync`` that accepts every invitation and records each message it sees
(``fmn up`` writes them to ``var/stack/matrix.log``; the tests wait for them).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from fmn.local.stack import ROOT, end_process, free_port

SERVER_NAME = "fmn.localhost"


def synapse_python() -> Path:
    """The interpreter that has Synapse installed (``make synapse`` creates it)."""
    named = os.environ.get("FMN_SYNAPSE_PYTHON")
    return Path(named) if named else ROOT / ".venv-synapse" / "bin" / "python"


def _config(data: Path, port: int, server_name: str, secret: str,
            message_rate: tuple[float, int]) -> str:
    per_second, burst = message_rate
    generous = "{per_second: 1000, burst_count: 1000}"
    # Every value below is ours (paths under data/, numbers, hex secrets): no quoting needed
    return f"""\
# Written by fmn.local.synapse: a loopback homeserver for local runs and tests.
server_name: "{server_name}"
pid_file: "{data}/homeserver.pid"
public_baseurl: "http://127.0.0.1:{port}/"
listeners:
  - port: {port}
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: "{data}/homeserver.db"
log_config: "{data}/log.config"
media_store_path: "{data}/media"
signing_key_path: "{data}/signing.key"
registration_shared_secret: "{secret}"
macaroon_secret_key: "{hashlib.sha256((secret + 'macaroon').encode()).hexdigest()}"
form_secret: "{hashlib.sha256((secret + 'form').encode()).hexdigest()}"
enable_registration: false
report_stats: false
enable_metrics: false
use_presence: false
# Federation off: no federation listener, no remote server allowed, no key servers.
federation_domain_whitelist: []
trusted_key_servers: []
suppress_key_server_warning: true
allow_public_rooms_over_federation: false
# The bot's messages: limited like a real server's (tests override one account)
rc_message: {{per_second: {per_second}, burst_count: {burst}}}
rc_registration: {generous}
rc_login:
  address: {generous}
  account: {generous}
  failed_attempts: {generous}
rc_joins:
  local: {generous}
  remote: {generous}
rc_joins_per_room: {generous}
rc_invites:
  per_room: {generous}
  per_user: {generous}
  per_issuer: {generous}
rc_room_creation: {generous}
rc_3pid_validation: {generous}
"""


_LOG_CONFIG = """\
version: 1
formatters:
  plain:
    format: "%(asctime)s %(levelname)s %(name)s %(message)s"
handlers:
  file:
    class: logging.FileHandler
    filename: "{log}"
    formatter: plain
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
"""


@dataclass(frozen=True)
class Account:
    user_id: str
    access_token: str
    password: str


class LocalSynapse:
    """Synapse on 127.0.0.1 with its data (SQLite, keys, media, log) in ``data_dir``.

    ``message_rate`` is the server-wide ``rc_message`` (messages a second, burst).
    """

    def __init__(self, data_dir: Path, port: int | None = None,
                 server_name: str = SERVER_NAME,
                 message_rate: tuple[float, int] = (50.0, 200)) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.server_name = server_name
        self.message_rate = message_rate
        self.startup_s: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "homeserver.yaml"

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    # -- configuration -----------------------------------------------------

    def _secret(self) -> str:
        """The shared registration secret, made once per data directory."""
        path = self.data_dir / "registration.secret"
        if not path.exists():
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip()

    def write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = self.data_dir / "signing.key"
        if not key.exists():
            # Synapse's key file format: algorithm, version, unpadded base64 of the seed
            seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
            key.write_text(f"ed25519 a_{secrets.token_hex(2)} {seed}\n")
            key.chmod(0o600)
        (self.data_dir / "log.config").write_text(
            _LOG_CONFIG.format(log=self.data_dir / "homeserver.log"))
        self.config_path.write_text(_config(self.data_dir, self.port, self.server_name,
                                            self._secret(), self.message_rate))
        return self.config_path

    # -- the process -------------------------------------------------------

    def command(self) -> list[str]:
        return [str(synapse_python()), "-m", "synapse.app.homeserver",
                "--config-path", str(self.config_path)]

    def start(self, timeout: float = 300.0) -> LocalSynapse:
        if self.running:
            return self
        python = synapse_python()
        if not python.exists():
            raise RuntimeError(f"no Synapse environment at {python}: run `make synapse` "
                               f"(or set FMN_SYNAPSE_PYTHON)")
        self.write_config()
        began = time.monotonic()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (open while it runs)
        self._process = subprocess.Popen(self.command(), cwd=self.data_dir,
                                         stdin=subprocess.DEVNULL, stdout=self._stderr,
                                         stderr=subprocess.STDOUT)
        deadline = began + timeout
        while not self._answers():
            code = self._process.poll()
            if code is not None:
                self._stderr.seek(0)
                err = self._stderr.read()[-1500:].decode(errors="replace")
                self.stop()
                raise RuntimeError(f"Synapse exited with {code}: {err.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Synapse did not answer on {self.url} within {timeout:.0f}s")
            time.sleep(0.1)
        self.startup_s = time.monotonic() - began
        return self

    def _answers(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.url}/_matrix/client/versions", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        end_process(process, timeout)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> LocalSynapse:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- accounts ------------------------------------------------------------

    def register(self, localpart: str, password: str | None = None,
                 admin: bool = False) -> Account:
        """A new account by shared secret, or a fresh login to an existing one."""
        import httpx

        password = password or hashlib.sha256(
            (self._secret() + "password" + localpart).encode()).hexdigest()
        url = f"{self.url}/_synapse/admin/v1/register"
        nonce = httpx.get(url, timeout=30).json()["nonce"]
        mac = hmac.new(self._secret().encode(), digestmod=hashlib.sha1)
        mac.update("\0".join([nonce, localpart, password,
                              "admin" if admin else "notadmin"]).encode())
        answer = httpx.post(url, timeout=30, json={
            "nonce": nonce, "username": localpart, "password": password, "admin": admin,
            "mac": mac.hexdigest()})
        if answer.status_code == 400 and answer.json().get("errcode") == "M_USER_IN_USE":
            return self.login(localpart, password)
        answer.raise_for_status()
        doc = answer.json()
        return Account(doc["user_id"], doc["access_token"], password)

    def login(self, localpart: str, password: str) -> Account:
        import httpx

        answer = httpx.post(f"{self.url}/_matrix/client/v3/login", timeout=30, json={
            "type": "m.login.password", "password": password,
            "identifier": {"type": "m.id.user", "user": localpart}})
        answer.raise_for_status()
        doc = answer.json()
        return Account(doc["user_id"], doc["access_token"], password)

    def override_ratelimit(self, admin: Account, user_id: str, per_second: float,
                           burst: int) -> None:
        """Give ``user_id`` its own message rate limit (0, 0: none at all)."""
        import httpx

        answer = httpx.post(
            f"{self.url}/_synapse/admin/v1/users/{user_id}/override_ratelimit", timeout=30,
            headers={"Authorization": f"Bearer {admin.access_token}"},
            json={"messages_per_second": per_second, "burst_count": burst})
        answer.raise_for_status()


# --------------------------------------------------------------------------
# a person reading their rooms


@dataclass(frozen=True)
class Received:
    room_id: str
    sender: str
    event_id: str
    content: dict[str, Any]

    @property
    def body(self) -> str:
        return str(self.content.get("body", ""))


class MatrixListener:
    """A Matrix user that accepts every invitation and records the messages in its rooms.

    ``leave(room_id)`` leaves a room (a person closing a direct chat).
    """

    def __init__(self, homeserver: str, account: Account, log: Path | None = None) -> None:
        import httpx

        self.account = account
        self.log = log
        self.client = httpx.Client(base_url=homeserver, timeout=40, headers={
            "Authorization": f"Bearer {account.access_token}"})
        self.got: list[Received] = []
        self.invites: list[str] = []
        self.errors: list[str] = []
        self._since: str | None = None
        #: what a room held before this person started reading is not counted (an
        #: account reused by a later stack on the same homeserver sees it again)
        self._started_ms = int(time.time() * 1000)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"matrix-{account.user_id}")
        self._thread.start()

    @property
    def user_id(self) -> str:
        return self.account.user_id

    def _run(self) -> None:
        import httpx

        while not self._stop.is_set():
            params: dict[str, Any] = {"timeout": 1000}
            if self._since:
                params["since"] = self._since
            try:
                answer = self.client.get("/_matrix/client/v3/sync", params=params)
                answer.raise_for_status()
                self._handle(answer.json())
            except (httpx.HTTPError, ValueError) as exc:
                if self._stop.is_set():
                    return
                self.errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.5)

    def _handle(self, doc: dict[str, Any]) -> None:
        self._since = doc.get("next_batch", self._since)
        rooms = doc.get("rooms", {})
        for room_id in rooms.get("invite", {}):
            with self._lock:
                self.invites.append(room_id)
            with contextlib.suppress(Exception):
                self.client.post(f"/_matrix/client/v3/rooms/{room_id}/join", json={})
        for room_id, room in rooms.get("join", {}).items():
            for event in room.get("timeline", {}).get("events", ()):
                if event.get("type") != "m.room.message" or \
                        event.get("sender") == self.user_id or \
                        event.get("origin_server_ts", self._started_ms) < self._started_ms:
                    continue
                got = Received(room_id, event["sender"], event["event_id"],
                               event.get("content", {}))
                with self._lock:
                    self.got.append(got)
                if self.log is not None:
                    with self.log.open("a", encoding="utf-8") as out:
                        out.write(f"{self.user_id} <- {got.sender}: {got.body}\n")
        self._synced.set()

    def messages(self, room_id: str | None = None) -> list[Received]:
        with self._lock:
            return [m for m in self.got if room_id is None or m.room_id == room_id]

    def wait_for(self, count: int, timeout: float = 30.0,
                 room_id: str | None = None) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.messages(room_id)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        got = self.messages(room_id)
        if len(got) < count:
            raise TimeoutError(f"{self.user_id} got {len(got)} of {count} messages "
                               f"(errors: {self.errors[-3:]})")
        return got

    def joined_rooms(self) -> list[str]:
        answer = self.client.get("/_matrix/client/v3/joined_rooms")
        answer.raise_for_status()
        return list(answer.json()["joined_rooms"])

    def leave(self, room_id: str) -> None:
        self.client.post(f"/_matrix/client/v3/rooms/{room_id}/leave",
                         json={}).raise_for_status()

    def history(self, room_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """The room's messages from the server, oldest first (not what sync saw)."""
        answer = self.client.get(f"/_matrix/client/v3/rooms/{room_id}/messages",
                                 params={"dir": "b", "limit": limit})
        answer.raise_for_status()
        events = [e for e in answer.json()["chunk"] if e.get("type") == "m.room.message"]
        return list(reversed(events))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()
