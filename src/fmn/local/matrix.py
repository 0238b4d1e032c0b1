"""Matrix in ``fmn up``: the local Synapse, the bot, and demo users reading their rooms.

:func:`localize` gives the generated demo users' Matrix destinations to
accounts on the local homeserver: the first ``people`` verified ones (in user
order) become ``@<localpart>:<server>`` and get accounts there; the others
are left unverified (a destination typed in but never confirmed), since
their people have no account to invite.  The e2e test applies the same
function to know what to expect.

:class:`LocalMatrix` starts (or adopts) the homeserver, registers the bot
and the demo people, and keeps a :class:`~fmn.local.synapse.MatrixListener`
for each, writing what they receive to ``matrix.log``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from pathlib import Path
from typing import Any

from fmn.prefs import Preferences

log = logging.getLogger(__name__)

_LOCALPART = re.compile(r"[^a-z0-9._=\-/]")


def localpart(address: str) -> str:
    """The local account name for a demo address (``@Alice:fedora.im`` -> ``alice``)."""
    return _LOCALPART.sub("", address.split(":", 1)[0].lstrip("@").lower())[:60] or "user"


def localize(prefs: Preferences, server_name: str, people: int) -> Preferences:
    """``prefs`` with Matrix destinations on ``server_name`` (module docstring)."""
    users = []
    given: set[str] = set()
    for user in prefs.users:
        dests = []
        for d in user.destinations:
            if d.protocol == "matrix" and d.address:
                local = f"@{localpart(d.address)}:{server_name}"
                if d.verified and len(given) < people and user.enabled \
                        and local not in given:
                    given.add(local)
                    d = dataclasses.replace(d, address=local)
                else:
                    d = dataclasses.replace(d, address=local, verified=False)
            dests.append(d)
        users.append(dataclasses.replace(user, destinations=tuple(dests)))
    return dataclasses.replace(prefs, users=tuple(users))


def people_of(prefs: Preferences) -> list[str]:
    """The verified Matrix addresses of ``prefs`` (after :func:`localize`)."""
    return sorted({d.address for u in prefs.users for d in u.destinations
                   if d.protocol == "matrix" and d.verified and d.address})


class LocalMatrix:
    """The homeserver of a local stack, its bot and its demo people."""

    def __init__(self, data_dir: Path, workdir: Path, server: Any = None) -> None:
        from fmn.local.stack import DEFAULT_MATRIX_PORT, _port_open, free_port
        from fmn.local.synapse import LocalSynapse

        self.workdir = workdir
        self.adopted = server is not None
        port = DEFAULT_MATRIX_PORT if not _port_open("127.0.0.1", DEFAULT_MATRIX_PORT) \
            else free_port()
        self.server = server or LocalSynapse(data_dir, port=port)
        self.bot: Any = None
        self.listeners: list[Any] = []

    @property
    def server_name(self) -> str:
        return str(self.server.server_name)

    def start(self) -> str:
        began = time.monotonic()
        if not self.adopted:
            self.server.start()
        self.bot = self.server.register("fmn", admin=True)
        # The bot speaks for every notification of the stage: no per-account limit
        # (the server-wide one still holds the others)
        self.server.override_ratelimit(self.bot, self.bot.user_id, 0, 0)
        took = time.monotonic() - began
        return (f"Synapse {self.server.url} ({'running' if self.adopted else 'started'} in "
                f"{took:.1f} s), bot {self.bot.user_id}")

    def env(self) -> dict[str, str]:
        return {"FMN_MATRIX_URL": self.server.url, "FMN_MATRIX_TOKEN": self.bot.access_token}

    def watch(self, addresses: list[str]) -> str:
        from fmn.local.synapse import MatrixListener

        for address in addresses:
            try:
                account = self.server.register(localpart(address))
                self.listeners.append(MatrixListener(self.server.url, account,
                                                     log=self.workdir / "matrix.log"))
            except Exception as exc:  # one demo person missing is no reason to stop
                log.warning("demo Matrix user %s not registered: %s", address, exc)
        return f"{len(self.listeners)} demo users on Matrix (in {self.workdir}/matrix.log)"

    def received(self) -> int:
        return sum(len(w.got) for w in self.listeners)

    def stop(self) -> None:
        for listener in self.listeners:
            listener.close()
        if not self.adopted:
            self.server.stop()
