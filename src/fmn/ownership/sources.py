"""HTTP clients for dist-git (its owner map and Pagure API) and FASJSON.

Production FASJSON needs Kerberos: ``auth="gssapi"`` signs every request
with SPNEGO (requests-gssapi, the machine's keytab via ``KRB5_CLIENT_KTNAME``);
``auth="none"`` is for tests and local fixtures.  Every failure to get a
complete, well-formed answer (connection refused, a 5xx, a body cut short,
JSON that does not parse, a member list shorter than its own page count)
is a :class:`SourceError`, so the ownership reconcile changes nothing (the
account sync leaves that one account as it was).  A 404 is an
answer, not a failure: the group or account does not exist.

Before that, every GET is retried (:class:`RetryPolicy`): a 429 or a 5xx
answer and a failed connection come back after an exponential back-off, or
after the ``Retry-After`` the server asks for (capped), a bounded number of
times: one 503 among the 100,000 GETs of an account sync is no failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fmn.errors import RetryableError
from fmn.ownership.data import (
    Account,
    InvalidSource,
    Ownership,
    is_fork,
    parse_account,
    parse_members_page,
    parse_owner_map,
    project_owners,
)
from fmn.prefs import Owners

log = logging.getLogger(__name__)

OWNER_MAP_PATH = "/extras/pagure_owner_alias.json"
#: artifact type -> dist-git namespace in URLs
NAMESPACE_OF = {"rpms": "rpms", "containers": "container", "modules": "modules",
                "flatpaks": "flatpaks"}
#: the most member pages followed for one group (FASJSON's largest groups
#: have some 10,000 members; at 1,000 a page that is 10)
MAX_PAGES = 200

Progress = Callable[[int, int | None], None]


class SourceError(RetryableError):
    """An upstream did not give a complete, well-formed answer.

    ``source_down``: the source itself failed (no connection, a timeout, a 5xx or
    a 429 after the retries), not one answer of it (another 4xx, a body that is
    not what was asked for).
    """

    def __init__(self, detail: str, delay_s: float = 0.0, *, source_down: bool = False) -> None:
        super().__init__(detail, delay_s)
        self.source_down = source_down


class OutOfTime(Exception):
    """A job's time ran out before its next GET (no failure of the source)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How a GET is retried on a 429, a 5xx or a failed connection."""

    #: retries after the first attempt: a GET that hangs costs (retries + 1) times the
    #: timeout, and the hourly and daily jobs must end within their Lambda timeout
    retries: int = 2
    #: back-off before the retries (urllib3's): none before the first, then
    #: ``backoff_s * 2**n`` (2 s before the second at 1 s), at most ``backoff_max_s``
    backoff_s: float = 1.0
    backoff_max_s: float = 10.0
    #: the longest ``Retry-After`` honoured (a longer one is waited this long)
    retry_after_max_s: float = 30.0
    statuses: tuple[int, ...] = (429, 500, 502, 503, 504)

    def worst_get_s(self, timeout_s: float) -> float:
        """The longest one GET can take with these retries (each try one timeout, each
        wait the longest back-off or ``Retry-After``): how long before its deadline a
        job must start no more GETs."""
        return (self.retries + 1) * timeout_s + self.retries * max(self.backoff_max_s,
                                                                    self.retry_after_max_s)

    def urllib3(self) -> Any:
        from urllib3.util.retry import Retry

        cap = self.retry_after_max_s

        class BoundedRetry(Retry):
            def get_retry_after(self, response: Any) -> float | None:
                after = super().get_retry_after(response)
                return None if after is None else min(after, cap)

        return BoundedRetry(
            total=self.retries, connect=self.retries, read=self.retries,
            status=self.retries, other=0, allowed_methods=frozenset({"GET"}),
            status_forcelist=self.statuses, backoff_factor=self.backoff_s,
            backoff_max=self.backoff_max_s, respect_retry_after_header=True,
            raise_on_status=False)  # the last answer is returned: a SourceError names it


def make_session(auth: str = "none", retry: RetryPolicy | None = None) -> Any:
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(max_retries=(retry or RetryPolicy()).urllib3())
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = "fmn-sync (Fedora notifications)"
    session.headers["Accept"] = "application/json"
    if auth == "gssapi":
        from requests_gssapi import OPTIONAL, HTTPSPNEGOAuth

        session.auth = HTTPSPNEGOAuth(mutual_authentication=OPTIONAL)
    elif auth != "none":
        raise ValueError(f"unknown auth {auth!r}: 'gssapi' or 'none'")
    return session


@dataclass
class _Http:
    base_url: str
    session: Any
    timeout_s: float = 60.0

    def get(self, url: str, *, missing_ok: bool = False) -> Any:
        """GET ``url`` (absolute, or a path under the base) as JSON; ``None`` on a 404
        when ``missing_ok``."""
        import requests

        if not url.startswith(("http://", "https://")):
            url = self.base_url.rstrip("/") + url
        try:
            response = self.session.get(url, timeout=self.timeout_s)
            if missing_ok and response.status_code == 404:
                return None
            if response.status_code != 200:
                raise SourceError(f"GET {url}: HTTP {response.status_code}", source_down=(
                    response.status_code >= 500 or response.status_code == 429))
            content = response.content  # reads the whole body: a short one raises here
        except requests.RequestException as exc:
            raise SourceError(f"GET {url}: {type(exc).__name__}: {exc}",
                              source_down=True) from exc
        try:
            return response.json() if content else None
        except ValueError as exc:
            raise SourceError(f"GET {url}: not JSON ({len(content)} bytes; cut short?): "
                              f"{exc}") from exc


class DistGit(_Http):
    """dist-git (src.fedoraproject.org): the owner map and Pagure's project API."""

    def owner_map(self) -> Ownership:
        doc = self.get(OWNER_MAP_PATH)
        try:
            return parse_owner_map(doc)
        except InvalidSource as exc:
            raise SourceError(f"GET {OWNER_MAP_PATH}: {exc}") from exc

    def project(self, atype: str, name: str) -> Owners | None:
        """One artifact's maintainers from ``/api/0/<namespace>/<name>``; None if none."""
        doc = self.get(f"/api/0/{NAMESPACE_OF[atype]}/{quote(name, safe='')}", missing_ok=True)
        if doc is None:
            return None
        if not isinstance(doc, dict) or "access_users" not in doc:
            raise SourceError(f"dist-git project {atype}/{name}: no access_users")
        if is_fork(doc):  # a fork's maintainers are not the package's
            raise SourceError(f"dist-git project {atype}/{name}: answered with a fork "
                              f"({str(doc.get('fullname'))[:200]!r})")
        return project_owners(doc)


class FasJson(_Http):
    """FASJSON (fasjson.fedoraproject.org): group members and users, API v1."""

    page_size: int = 1000

    def group_members(self, group: str, out_of_time: Callable[[], bool] | None = None
                      ) -> tuple[str, ...] | None:
        """Every member of ``group``, following the pages; None if the group does not exist.

        ``out_of_time()`` is asked before each page: :class:`OutOfTime` when it says so.
        """
        url: str | None = (f"/v1/groups/{quote(group, safe='')}/members/"
                           f"?page_size={self.page_size}")
        members: list[str] = []
        expected: int | None = None
        pages = 0
        while url is not None:
            pages += 1
            if pages > MAX_PAGES:
                raise SourceError(f"members of {group}: more than {MAX_PAGES} pages")
            if out_of_time is not None and out_of_time():
                raise OutOfTime(f"members of {group}: out of time at page {pages}")
            doc = self.get(url, missing_ok=pages == 1)
            if doc is None:
                return None
            try:
                names, url = parse_members_page(doc, group)
            except InvalidSource as exc:
                raise SourceError(str(exc)) from exc
            if url is not None and not url.startswith(self.base_url.rstrip("/") + "/"):
                # credentials go where the pages go: never to another host
                raise SourceError(f"members of {group}: next page {url[:200]!r} is not "
                                  f"under {self.base_url}")
            page = doc.get("page") if isinstance(doc, dict) else None
            if isinstance(page, dict) and isinstance(page.get("total_results"), int):
                expected = page["total_results"]
            members.extend(names)
        if expected is not None and len(set(members)) < expected:
            # A page lost on the way: applying it would drop real members.
            raise SourceError(f"members of {group}: {len(set(members))} read, "
                              f"FASJSON counts {expected}")
        return tuple(dict.fromkeys(members))

    def user(self, name: str) -> Account:
        """The account ``name``; ``deleted`` when FASJSON has none (FASJSON also hides
        locked accounts behind a 404)."""
        doc = self.get(f"/v1/users/{quote(name, safe='')}/", missing_ok=True)
        if doc is None:
            return Account(username=name, deleted=True)
        try:
            return parse_account(doc, name)
        except InvalidSource as exc:
            raise SourceError(str(exc)) from exc


def fetch_ownership(distgit: DistGit, fasjson: FasJson | None,
                    extra_groups: Iterable[str] = (),
                    progress: Progress | None = None, *,
                    out_of_time: Callable[[], bool] | None = None,
                    start_at: str | None = None) -> Ownership:
    """The owner map, plus the members of every group that owns something (and of
    ``extra_groups``, the groups the users' rules name).

    The groups are fetched in name order, from ``start_at`` on and then from the
    first (where the last fetch ran out of time, so that no group waits for ever);
    once ``out_of_time()`` says so, no more are fetched: the rest are listed in
    ``not_reached``, for the reconcile to leave as they are.
    """
    data = distgit.owner_map()
    if fasjson is None:
        return data
    groups = sorted(data.owner_groups() | set(extra_groups))
    if start_at is not None:
        groups = [g for g in groups if g >= start_at] + [g for g in groups if g < start_at]
    for i, group in enumerate(groups):
        try:
            members = fasjson.group_members(group, out_of_time)  # (a page at a time)
        except OutOfTime:
            data.not_reached = tuple(groups[i:])
            log.warning("group members: out of time after %d of %d groups; %d left as "
                        "they were, the next run starts with %s", i, len(groups),
                        len(groups) - i, group)
            break
        if members is not None:
            data.groups[group] = members
        if progress is not None:
            progress(i + 1, len(groups))
    return data
