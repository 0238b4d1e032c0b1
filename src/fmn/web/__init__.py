"""The preferences web app's core: what a signed-in user may see and change.

:mod:`fmn.web.service` edits one user's preferences in the database and
publishes every change to the snapshot (so matching sees it within a
second); :mod:`fmn.web.verify` proves a destination belongs to its user
(e-mail links, IRC and Matrix codes, rate-limited); :mod:`fmn.web.oidc`
speaks OpenID Connect (authorization code + PKCE) to the account system.
None of them imports Chalice: ``webapp/app.py`` is the HTTP edge.

:class:`WebSettings` holds what only the web app reads from the environment
(next to :class:`fmn.settings.Settings`):

| variable | meaning | default |
|---|---|---|
| ``FMN_ENV`` | ``development`` or ``production`` | ``development`` |
| ``FMN_DEV_LOGIN`` | ``1``: the password-less demo login (refused in production) | off |
| ``FMN_OIDC_ISSUER`` | OpenID Connect issuer (discovery at ``/.well-known/...``) | unset |
| ``FMN_OIDC_CLIENT_ID`` | the app's client id at the issuer | unset |
| ``FMN_OIDC_CLIENT_SECRET`` | its secret (none: a public client, PKCE only) | unset |
| ``FMN_ADMINS`` | comma-separated account names allowed the admin routes | none |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from fmn.errors import PermanentError

ENVIRONMENTS = ("development", "production")
DEFAULT_SECRET_KEY = "development-only-secret-key"


class UnsafeConfiguration(PermanentError):
    """A configuration the web app refuses to run with (e.g. the dev login in production)."""


@dataclass(frozen=True)
class WebSettings:
    env: str = "development"
    dev_login: bool = False
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    admins: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebSettings:
        env = os.environ if environ is None else environ
        return cls(
            env=env.get("FMN_ENV", "development").strip().lower() or "development",
            dev_login=env.get("FMN_DEV_LOGIN", "").strip().lower() in ("1", "true", "yes", "on"),
            oidc_issuer=(env.get("FMN_OIDC_ISSUER") or "").rstrip("/") or None,
            oidc_client_id=env.get("FMN_OIDC_CLIENT_ID") or None,
            oidc_client_secret=env.get("FMN_OIDC_CLIENT_SECRET") or None,
            admins=frozenset(a.strip() for a in env.get("FMN_ADMINS", "").split(",")
                             if a.strip()),
        )

    @property
    def production(self) -> bool:
        return self.env == "production"

    def check(self, secret_key: str) -> None:
        """Refuse, with what to change, a configuration unsafe to serve with."""
        if self.env not in ENVIRONMENTS:
            raise UnsafeConfiguration(f"FMN_ENV must be one of {', '.join(ENVIRONMENTS)}, "
                                      f"not {self.env!r}")
        if self.production and self.dev_login:
            raise UnsafeConfiguration(
                "FMN_DEV_LOGIN=1 lets anyone sign in as anyone: it is refused when "
                "FMN_ENV=production. Unset FMN_DEV_LOGIN (and configure FMN_OIDC_*).")
        # Real sign-ins (OIDC) with the public development key would let anyone
        # forge anyone's session: refused whatever FMN_ENV says.
        if (self.production or self.oidc_issuer) \
                and (not secret_key or secret_key == DEFAULT_SECRET_KEY):
            raise UnsafeConfiguration("FMN_SECRET_KEY is the development key: set a secret "
                                      "of your own when FMN_ENV=production or FMN_OIDC_ISSUER "
                                      "is set.")
