"""A local IRC server for the tests and ``fmn up``: miniircd in a subprocess.

:class:`LocalIrcd` starts ``python -m miniircd`` (the ``miniircd`` package,
a small real IRC server) on 127.0.0.1 and a free port, optionally with TLS
from a PEM certificate and key, and waits until the port answers.
:attr:`LocalIrcd.url` is what ``FMN_IRC_URL`` takes.  :meth:`LocalIrcd.stop`
ends the process; :meth:`LocalIrcd.start` may start it again on the same
port (a restart, as a network's server would).  miniircd has no SASL and no
flood limit of its own; it relays each PRIVMSG to the nick at once, so the
timing a client sees is the sender's.  It refuses to run as root unless told
``--setuid root``, which is passed when we are root (CI, containers).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from fmn.local.stack import end_process, free_port


class LocalIrcd:
    def __init__(self, port: int | None = None, host: str = "127.0.0.1",
                 cert_file: Path | None = None, key_file: Path | None = None,
                 log_file: Path | None = None) -> None:
        if (cert_file is None) != (key_file is None):
            raise ValueError("TLS needs both a certificate and a key file")
        self.host = host
        self.port = port or free_port()
        self.cert_file = cert_file
        self.key_file = key_file
        self.log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def tls(self) -> bool:
        return self.cert_file is not None

    def url_for(self, nick: str = "fmn") -> str:
        """``FMN_IRC_URL`` for a client logging in as ``nick``."""
        return f"{'ircs' if self.tls else 'irc'}://{nick}@{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return self.url_for()

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "miniircd", "--listen", self.host,
               "--ports", str(self.port)]
        if self.cert_file is not None and self.key_file is not None:
            cmd += ["--ssl-cert-file", str(self.cert_file), "--ssl-key-file", str(self.key_file)]
        if self.log_file is not None:
            cmd += ["--log-file", str(self.log_file), "--verbose"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd += ["--setuid", "root"]
        return cmd

    def start(self, timeout: float = 10.0) -> LocalIrcd:
        if self.running:
            return self
        # A file, not a pipe: nobody reads it while the server runs, and a full
        # pipe would stop the server.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (open while it runs)
        self._process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=self._stderr)
        deadline = time.monotonic() + timeout
        while not self._answers():
            code = self._process.poll()
            if code is not None:
                self._stderr.seek(0)
                err = self._stderr.read()[-500:].decode(errors="replace")
                self.stop()
                raise RuntimeError(f"miniircd exited with {code}: {err.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"miniircd did not listen on {self.host}:{self.port} "
                                   f"within {timeout:.0f}s")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def stop(self, timeout: float = 5.0) -> None:
        """End the server (its clients see the connection close)."""
        process, self._process = self._process, None
        end_process(process, timeout)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> LocalIrcd:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class IrcListener:
    """A raw IRC client logged in as ``nick``: records each PRIVMSG it gets, and when.

    ``fmn up`` logs some demo users in with it, so that their notifications
    land somewhere (``log``: a file each line is appended to); the tests use
    it to see what the server relayed, and when.
    """

    def __init__(self, port: int, nick: str, log: Path | None = None) -> None:
        self.nick = nick
        self.log = log
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        #: (arrival, sender prefix, text)
        self.got: list[tuple[float, str, str]] = []
        self.errors: list[str] = []
        self._welcome = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self.sock.sendall(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n".encode())
        if not self._welcome.wait(5):
            self.close()
            raise TimeoutError(f"{nick} was not welcomed by the IRC server")

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:  # idle (the timeout is for connecting): keep listening
                continue
            except OSError:
                return
            if not data:
                return
            now = time.monotonic()
            *lines, buffer = (buffer + data).split(b"\r\n")
            for raw in lines:
                if len(raw) + 2 > 512:
                    self.errors.append(f"a line of {len(raw) + 2} bytes")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    self.errors.append(f"not UTF-8: {raw!r}")
                    continue
                parts = line.split(" ", 3)
                if line.startswith("PING"):
                    self.sock.sendall(b"PONG" + raw[4:] + b"\r\n")
                elif len(parts) > 1 and parts[1] == "001":
                    self._welcome.set()
                elif len(parts) == 4 and parts[1] == "PRIVMSG":
                    self.got.append((now, parts[0][1:], parts[3][1:]))
                    if self.log is not None:
                        with self.log.open("a", encoding="utf-8") as out:
                            out.write(f"{self.nick} <- {parts[0][1:]}: {parts[3][1:]}\n")

    def texts(self) -> list[str]:
        return [text for _, _, text in self.got]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.got) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        if len(self.got) < count:
            raise TimeoutError(f"{self.nick} got {len(self.got)} of {count} lines")
        return self.texts()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"QUIT :bye\r\n")
        self.sock.close()
