"""Settings of the ownership and account sync, read from the environment at the edge.

| variable | meaning | default |
|---|---|---|
| ``FMN_DISTGIT_URL`` | dist-git (owner map and Pagure API) | ``https://src.fedoraproject.org`` |
| ``FMN_FASJSON_URL`` | FASJSON (API v1 below it) | ``https://fasjson.fedoraproject.org`` |
| ``FMN_FASJSON_AUTH`` | ``gssapi`` (Kerberos, keytab ``KRB5_CLIENT_KTNAME``) or ``none`` | gssapi |
| ``FMN_SYNC_MAX_DROP`` | the share of entries a fetch may lose before it is refused | ``0.10`` |
| ``FMN_SYNC_TIMEOUT_S`` | HTTP timeout per request | ``60`` |
| ``FMN_SYNC_WORKERS`` | concurrent FASJSON requests of ``fmn sync accounts`` | ``8`` |
| ``FMN_LIVE_OWNERSHIP`` | ``0``: no live updates in the match function (nor without a DB URL) | 1 |
| ``FMN_LIVE_NAMESPACES`` | more Pagure namespaces taken as dist-git (``ns=type,...``) | none |
| ``FMN_LIVE_FASJSON`` | ``1``: fetch an account at once when the bus says it changed | ``0`` |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fmn.ownership.diff import DEFAULT_MAX_DROP


@dataclass(frozen=True)
class SyncSettings:
    distgit_url: str = "https://src.fedoraproject.org"
    fasjson_url: str = "https://fasjson.fedoraproject.org"
    fasjson_auth: str = "gssapi"
    max_drop: float = DEFAULT_MAX_DROP
    timeout_s: float = 60.0
    workers: int = 8
    live: bool = True
    live_fasjson: bool = False
    #: extra Pagure namespace -> artifact type (the shared data's pagure
    #: messages are about the ``fedora-infra`` namespace)
    live_namespaces: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SyncSettings:
        env = os.environ if environ is None else environ
        d = cls()
        return cls(
            distgit_url=env.get("FMN_DISTGIT_URL", d.distgit_url).rstrip("/"),
            fasjson_url=env.get("FMN_FASJSON_URL", d.fasjson_url).rstrip("/"),
            fasjson_auth=env.get("FMN_FASJSON_AUTH", d.fasjson_auth),
            max_drop=float(env.get("FMN_SYNC_MAX_DROP", d.max_drop)),
            timeout_s=float(env.get("FMN_SYNC_TIMEOUT_S", d.timeout_s)),
            workers=int(env.get("FMN_SYNC_WORKERS", d.workers)),
            # the match function applies bus messages only where it is given
            # the preferences database (without, the reconcile catches up)
            live=env.get("FMN_LIVE_OWNERSHIP", "1") != "0" and bool(env.get("FMN_DATABASE_URL")),
            live_fasjson=env.get("FMN_LIVE_FASJSON", "0") == "1",
            live_namespaces=tuple(
                (ns.strip(), atype.strip()) for ns, _, atype in (
                    pair.partition("=") for pair in env.get("FMN_LIVE_NAMESPACES", "").split(",")
                    if "=" in pair)),
        )

    def distgit(self) -> object:
        from fmn.ownership.sources import DistGit, make_session

        return DistGit(self.distgit_url, make_session("none"), self.timeout_s)

    def fasjson(self, retry: Any = None) -> object:
        """The FASJSON client; ``retry`` (a :class:`~fmn.ownership.sources.RetryPolicy`)
        replaces the default retries, made for a sync with time to wait."""
        from fmn.ownership.sources import FasJson, make_session

        return FasJson(self.fasjson_url, make_session(self.fasjson_auth, retry),
                       self.timeout_s)
