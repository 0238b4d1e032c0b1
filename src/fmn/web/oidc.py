"""Signing in with OpenID Connect: authorization code flow with PKCE (S256).

:meth:`OidcClient.begin` returns the issuer's authorization URL and a
*pending* value to keep in a short-lived signed cookie (``state``,
``nonce`` and the PKCE ``code_verifier``; :func:`seal` / :func:`unseal`,
10 minutes, itsdangerous salt ``fmn.oidc``).  :meth:`OidcClient.finish`
checks the returned ``state`` against it (constant time), redeems the code at
the token endpoint with the verifier, and checks the ID token's claims:
``iss`` is the issuer, ``aud`` holds our client id, ``exp`` is in the
future, ``nonce`` is ours.  The ID token comes straight from the token
endpoint over TLS, which OpenID Connect Core 3.1.3.7 accepts in place of
checking its signature.  The account name is the ``nickname`` (Fedora's
Ipsilon) or ``preferred_username`` claim, from the ID token or else from the
userinfo endpoint.

The discovery document (``{issuer}/.well-known/openid-configuration``) is
fetched on first use and cached.  Errors: :class:`OidcError` (a
:class:`~fmn.errors.PermanentError`: the sign-in failed, start again), or
:class:`~fmn.errors.RetryableError` when the issuer cannot be reached.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx

from fmn import auth
from fmn.errors import PermanentError, RetryableError

PENDING_MAX_AGE_S = 600
SCOPES = "openid profile email"


class OidcError(PermanentError):
    """The sign-in failed; the user should start again."""


@dataclass(frozen=True)
class Account:
    """The signed-in account: its name, and an e-mail address the issuer says it verified
    (``email_verified``; None without one: the first sign-in then sends to the live feed)."""

    name: str
    email: str | None


def _verified_email(doc: dict[str, Any], trust: bool = False) -> str | None:
    """``doc``'s ``email`` if its ``email_verified`` is true (OIDC Core 5.1), or missing
    from an issuer ``trust``ed to release only verified ones (never when it says false):
    an address the issuer did not verify may be anyone's, and the first sign-in trusts
    it as ours."""
    email = doc.get("email")
    verified = doc.get("email_verified")
    if isinstance(email, str) and email and (
            verified in (True, "true") or (trust and verified is None)):
        return email
    return None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: BASE64URL(SHA256(ASCII(code_verifier))), no padding."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def seal(value: dict[str, Any], secret: str) -> str:
    return auth.seal(value, secret, "oidc")


def unseal(token: str, secret: str, max_age_s: int = PENDING_MAX_AGE_S) -> dict[str, Any]:
    try:
        value = auth.unseal(token, secret, "oidc", max_age_s)
    except auth.InvalidToken as exc:
        raise OidcError("the sign-in took too long or did not start here; try again") from exc
    if not isinstance(value, dict):
        raise OidcError("the sign-in did not start here; try again")
    return value


def _claims(id_token: str) -> dict[str, Any]:
    parts = id_token.split(".")
    if len(parts) != 3:
        raise OidcError("the ID token is not a JWT")
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError as exc:
        raise OidcError("the ID token's payload is not JSON") from exc
    if not isinstance(payload, dict):
        raise OidcError("the ID token's payload is not an object")
    return payload


class OidcClient:
    def __init__(self, issuer: str, client_id: str, client_secret: str | None,
                 redirect_uri: str, *, http: httpx.Client | None = None,
                 clock: Callable[[], float] = time.time, trust_email: bool = False) -> None:
        self.issuer = issuer.rstrip("/")
        #: the issuer releases only verified addresses (no ``email_verified`` needed)
        self.trust_email = trust_email
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.http = http or httpx.Client(timeout=10.0)
        self.clock = clock
        self._discovery: dict[str, Any] | None = None

    def _request(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise RetryableError(f"the account system is unreachable: {exc}") from exc
        if response.status_code >= 500:
            raise RetryableError(f"the account system answered {response.status_code}")
        try:
            doc = response.json()
        except ValueError as exc:
            raise OidcError(f"{url} answered {response.status_code}, not JSON") from exc
        if response.status_code >= 400 or not isinstance(doc, dict):
            error = doc.get("error") if isinstance(doc, dict) else None
            raise OidcError(f"{url} refused: {response.status_code} {error or ''}".strip())
        return doc

    def discovery(self) -> dict[str, Any]:
        if self._discovery is None:
            doc = self._request("GET", f"{self.issuer}/.well-known/openid-configuration")
            if doc.get("issuer", "").rstrip("/") != self.issuer:
                raise OidcError(f"the discovery document names issuer {doc.get('issuer')!r}")
            for key in ("authorization_endpoint", "token_endpoint"):
                if not isinstance(doc.get(key), str):
                    raise OidcError(f"the discovery document has no {key}")
            self._discovery = doc
        return self._discovery

    def begin(self, next_path: str = "/") -> tuple[str, dict[str, Any]]:
        """(the URL to send the browser to, the pending value to seal into a cookie)."""
        pending = {"state": secrets.token_urlsafe(32), "nonce": secrets.token_urlsafe(32),
                   "verifier": secrets.token_urlsafe(64), "next": next_path}
        query = urlencode({
            "response_type": "code", "client_id": self.client_id,
            "redirect_uri": self.redirect_uri, "scope": SCOPES, "state": pending["state"],
            "nonce": pending["nonce"], "code_challenge": pkce_challenge(pending["verifier"]),
            "code_challenge_method": "S256"})
        return f"{self.discovery()['authorization_endpoint']}?{query}", pending

    def finish(self, pending: dict[str, Any], params: dict[str, str]) -> Account:
        """The account the issuer vouches for, from the callback's query ``params``."""
        if "error" in params:
            raise OidcError(f"the account system said {params['error'][:100]!r}")
        state, code = params.get("state", ""), params.get("code", "")
        if not code or not hmac.compare_digest(state.encode(),
                                               str(pending.get("state", "")).encode()):
            raise OidcError("the sign-in answer does not match the sign-in we started")
        data = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": self.redirect_uri, "code_verifier": pending["verifier"]}
        auth: tuple[str, str] | None = None
        if self.client_secret:
            auth = (self.client_id, self.client_secret)
        else:
            data["client_id"] = self.client_id
        tokens = self._request("POST", self.discovery()["token_endpoint"], data=data,
                               auth=auth, headers={"Accept": "application/json"})
        if not isinstance(tokens.get("id_token"), str):
            raise OidcError("the token endpoint gave no ID token")
        claims = self.check_claims(_claims(tokens["id_token"]), str(pending.get("nonce", "")))
        name = claims.get("nickname") or claims.get("preferred_username")
        email = _verified_email(claims, self.trust_email)
        userinfo_url = self.discovery().get("userinfo_endpoint")
        if (not name or not email) and isinstance(userinfo_url, str) \
                and isinstance(tokens.get("access_token"), str):
            info = self._request("GET", userinfo_url, headers={
                "Authorization": f"Bearer {tokens['access_token']}"})
            if info.get("sub") == claims.get("sub"):
                name = name or info.get("nickname") or info.get("preferred_username")
                email = email or _verified_email(info, self.trust_email)
        if not isinstance(name, str) or not name:
            raise OidcError("the account system did not tell us your account name")
        return Account(name=name, email=email)

    def check_claims(self, claims: dict[str, Any], nonce: str) -> dict[str, Any]:
        if str(claims.get("iss", "")).rstrip("/") != self.issuer:
            raise OidcError("the ID token is from another issuer")
        aud = claims.get("aud")
        if not (aud == self.client_id or (isinstance(aud, list) and self.client_id in aud)):
            raise OidcError("the ID token is for another client")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp < self.clock() - 60:
            raise OidcError("the ID token has expired")
        if not nonce or not hmac.compare_digest(str(claims.get("nonce", "")).encode(),
                                                nonce.encode()):
            raise OidcError("the ID token does not answer our sign-in (nonce)")
        return claims
