"""The preferences web app's core: what a signed-in user may see and change.

:mod:`fmn.web.service` edits one user's preferences in the database and
publishes every change to the snapshot (so matching sees it within a
second); :mod:`fmn.web.verify` proves a destination belongs to its user
(e-mail links, IRC and Matrix codes, rate-limited); :mod:`fmn.web.oidc`
speaks OpenID Connect (authorization code + PKCE) to the account system;
:mod:`fmn.web.schema` holds the request and answer models the API validates
with and its OpenAPI description is generated from; :mod:`fmn.web.http` is
the HTTP plumbing (cookies, sessions, CSRF, bodies, answers and errors).
None of them imports Chalice: ``webapp/app.py`` is the HTTP edge.

The web app's settings (``FMN_ENV``, ``FMN_DEV_LOGIN``, ``FMN_OIDC_*``,
``FMN_ADMINS``) are part of :class:`fmn.settings.Settings`; :func:`check`
refuses a combination unsafe to serve with.
"""

from __future__ import annotations

from fmn.errors import PermanentError
from fmn.settings import Settings

ENVIRONMENTS = ("development", "production")
DEFAULT_SECRET_KEY = Settings.secret_key


class UnsafeConfiguration(PermanentError):
    """A configuration the web app refuses to run with (e.g. the dev login in production)."""


def check(settings: Settings) -> None:
    """Refuse, with what to change, a configuration unsafe to serve with."""
    if settings.env not in ENVIRONMENTS:
        raise UnsafeConfiguration(f"FMN_ENV must be one of {', '.join(ENVIRONMENTS)}, "
                                  f"not {settings.env!r}")
    if settings.production and settings.dev_login:
        raise UnsafeConfiguration(
            "FMN_DEV_LOGIN=1 lets anyone sign in as anyone: it is refused when "
            "FMN_ENV=production. Unset FMN_DEV_LOGIN (and configure FMN_OIDC_*).")
    # Real sign-ins (OIDC) with the public development key would let anyone
    # forge anyone's session: refused whatever FMN_ENV says.
    if (settings.production or settings.oidc_issuer) \
            and (not settings.secret_key or settings.secret_key == DEFAULT_SECRET_KEY):
        raise UnsafeConfiguration("FMN_SECRET_KEY is the development key: set a secret "
                                  "of your own when FMN_ENV=production or FMN_OIDC_ISSUER "
                                  "is set.")
