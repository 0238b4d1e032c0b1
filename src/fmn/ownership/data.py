"""The shapes Fedora publishes ownership and accounts in, turned into plain values.

* **dist-git's owner map** (``/extras/pagure_owner_alias.json``): one object
  per namespace (``rpms``, ``container``, ``modules``, ``flatpaks``), each
  mapping an artifact name to its maintainers, users by name and groups as
  ``@group``.  The user ``orphan`` stands for "nobody" and is dropped.
* **a Pagure project** (dist-git's ``/api/0/<namespace>/<name>``, and the
  ``project`` of pagure's bus messages): ``access_users`` and
  ``access_groups`` by access level; ``owner``, ``admin``, ``commit`` and
  ``collaborator`` count as maintainers, ``ticket`` does not.
* **a FASJSON user** (``/v1/users/<name>/``: ``{"result": {...}}``):
  ``username``, ``emails``, ``ircnicks`` (``irc:/nick``, ``matrix:/nick`` or
  ``matrix://server/nick`` URIs; a bare nick is IRC), ``locked``.

Names end up in the snapshot, in mail headers and in web pages: a name that
is not a plain Fedora name is refused (:class:`InvalidSource`) or, inside a
list, skipped and counted, never stored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from fmn.delivery.text import BIDI_CONTROLS
from fmn.errors import PermanentError
from fmn.message import ARTIFACT_TYPES
from fmn.prefs import Owners

#: dist-git namespace -> artifact type
DISTGIT_NAMESPACES: dict[str, str] = {
    "rpms": "rpms", "container": "containers", "containers": "containers",
    "modules": "modules", "flatpaks": "flatpaks",
}
#: Pagure access levels that make a maintainer
MAINTAINER_ACCESS: tuple[str, ...] = ("owner", "admin", "commit", "collaborator")
#: dist-git's stand-in for "no maintainer"
ORPHAN = "orphan"
#: Where a Matrix nick without a server lives (Fedora's homeserver)
DEFAULT_MATRIX_SERVER = "fedora.im"

# Names follow the preferences' rule (spec section 2): a non-empty string of at
# most 512 characters with no control character (nothing that can end a mail
# header or an IRC line), and here no bidirectional mark, embedding, override
# or isolate nor byte-order mark either: a name learnt from the bus is shown in
# the rule editor, where "rpms/fmn\u202egpj.exe" would read as "rpms/fmnexe.jpg".
# Fedora's own names are far stricter, and the recorded messages hold OpenID
# URLs and e-mail addresses as user names.
_NOT_IN_NAME = r"\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff" \
    + "".join(map(chr, BIDI_CONTROLS))
_NAME = re.compile(rf"[^{_NOT_IN_NAME}\s][^{_NOT_IN_NAME}]{{0,511}}")
_EMAIL = re.compile(r"[^\s@<>()\[\],;:\"\\]{1,64}@[A-Za-z0-9.-]{1,255}")


class InvalidSource(PermanentError):
    """A fetched document that is not in the shape the source publishes."""


def valid_name(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidSource(f"{where}: expected an object, found {type(value).__name__}")
    return value


@dataclass
class Ownership:
    """The ownership data: artifact type -> name -> owners, and group -> members."""

    owners: dict[str, dict[str, Owners]] = field(
        default_factory=lambda: {t: {} for t in ARTIFACT_TYPES})
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: entries skipped because a name was unusable (reported, never stored)
    skipped: int = 0
    #: groups whose members were not fetched, in the order they would have been (the
    #: fetch ran out of time): their membership stays as the database has it
    not_reached: tuple[str, ...] = ()

    def artifact_count(self) -> int:
        return sum(len(v) for v in self.owners.values())

    def membership_count(self) -> int:
        return sum(len(m) for m in self.groups.values())

    def owner_groups(self) -> set[str]:
        return {g for names in self.owners.values() for o in names.values() for g in o.groups}


def _owner_names(values: Any, where: str, skipped: list[int]) -> Owners:
    if not isinstance(values, list):
        raise InvalidSource(f"{where}: expected a list of maintainers")
    users: list[str] = []
    groups: list[str] = []
    for value in values:
        if not isinstance(value, str):
            skipped[0] += 1
            continue
        if value.startswith("@"):
            name, bucket = value[1:], groups
        else:
            name, bucket = value, users
        if name == ORPHAN:
            continue
        if not valid_name(name):
            skipped[0] += 1
            continue
        if name not in bucket:
            bucket.append(name)
    return Owners(users=tuple(users), groups=tuple(groups))


def parse_owner_map(doc: Any) -> Ownership:
    """dist-git's ``pagure_owner_alias.json``, as :class:`Ownership` (no group members yet).

    Namespaces it does not know are ignored; an artifact nobody maintains
    (only ``orphan``) is kept with no owners out of the data.
    """
    top = _obj(doc, "owner map")
    out = Ownership()
    skipped = [0]
    known = 0
    for namespace, artifacts in top.items():
        atype = DISTGIT_NAMESPACES.get(namespace)
        if atype is None:
            continue
        known += 1
        for name, maintainers in _obj(artifacts, f"owner map > {namespace}").items():
            if not valid_name(name):
                skipped[0] += 1
                continue
            owners = _owner_names(maintainers, f"owner map > {namespace} > {name}", skipped)
            if owners.users or owners.groups:
                out.owners[atype][name] = owners
    if not known:
        raise InvalidSource("owner map: none of the namespaces "
                            f"{', '.join(sorted(DISTGIT_NAMESPACES))}")
    out.skipped = skipped[0]
    return out


def is_fork(project: Mapping[str, Any]) -> bool:
    """Whether a Pagure project is someone's fork: it has a ``parent``, or its
    ``fullname`` is ``forks/<user>/<namespace>/<name>``.  A fork of ``rpms/<pkg>``
    carries namespace ``rpms`` and name ``<pkg>`` like the package itself, but
    anyone may fork and give anyone access to the fork: it is not the package."""
    fullname = project.get("fullname")
    return project.get("parent") is not None or (
        isinstance(fullname, str) and fullname.startswith("forks/"))


def project_artifact(project: Any) -> tuple[str, str] | None:
    """(artifact type, name) of a dist-git project, or None if it is not one
    (a fork of one is not one either: :func:`is_fork`)."""
    if not isinstance(project, Mapping) or is_fork(project):
        return None
    atype = DISTGIT_NAMESPACES.get(project.get("namespace") or "")
    name = project.get("name")
    if atype is None or not valid_name(name):
        return None
    return atype, name


def project_owners(project: Mapping[str, Any]) -> Owners:
    """The maintainers of a Pagure project (users and groups with maintainer access)."""
    users: list[str] = []
    groups: list[str] = []
    access_users = project.get("access_users")
    access_groups = project.get("access_groups")
    for level in MAINTAINER_ACCESS:
        for bucket, access in ((users, access_users), (groups, access_groups)):
            names = access.get(level) if isinstance(access, Mapping) else None
            for name in names if isinstance(names, list) else ():
                if valid_name(name) and name != ORPHAN and name not in bucket:
                    bucket.append(name)
    return Owners(users=tuple(users), groups=tuple(groups))


# --------------------------------------------------------------------------
# accounts


@dataclass(frozen=True)
class Account:
    """A Fedora account as FASJSON describes it; ``deleted`` when FASJSON has none."""

    username: str
    emails: tuple[str, ...] = ()
    ircnicks: tuple[str, ...] = ()
    locked: bool = False
    deleted: bool = False

    @property
    def blocked(self) -> bool:
        """Whether the account may receive nothing (locked or gone)."""
        return self.locked or self.deleted

    def destinations(self) -> list[tuple[str, str]]:
        """(protocol, address) the account offers: e-mails, IRC nicks, Matrix ids."""
        out = [("email", e) for e in self.emails]
        for uri in self.ircnicks:
            found = parse_nick(uri)
            if found is not None and found not in out:
                out.append(found)
        return out

    def same_as(self, other: Account) -> bool:
        return (self.emails, self.ircnicks, self.locked, self.deleted) == (
            other.emails, other.ircnicks, other.locked, other.deleted)


_IRC_NICK = re.compile(r"[A-Za-z\[\]\\`_^{|}][A-Za-z0-9\[\]\\`_^{|}-]{0,31}")
_MATRIX_LOCAL = re.compile(r"[a-z0-9._=/+-]{1,255}", re.IGNORECASE)
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?")


def parse_nick(uri: str) -> tuple[str, str] | None:
    """``irc:/nick`` -> ("irc", nick); ``matrix:/nick`` -> ("matrix", "@nick:fedora.im");
    ``matrix://server/nick`` -> ("matrix", "@nick:server"); a bare nick is IRC."""
    scheme, sep, rest = uri.partition(":")
    if not sep:
        scheme, rest = "irc", "/" + uri
    server = ""
    if rest.startswith("//"):
        server, _, nick = rest[2:].partition("/")
    else:
        nick = rest.lstrip("/")
    if scheme == "irc":
        return ("irc", nick) if _IRC_NICK.fullmatch(nick) else None
    if scheme == "matrix":
        nick = nick.lstrip("@")
        server = server or DEFAULT_MATRIX_SERVER
        if _MATRIX_LOCAL.fullmatch(nick) and _HOST.fullmatch(server):
            return ("matrix", f"@{nick.lower()}:{server}")
    return None


def parse_account(doc: Any, username: str) -> Account:
    """A FASJSON ``/v1/users/<name>/`` answer (``{"result": {...}}``)."""
    result = _obj(_obj(doc, "FASJSON user").get("result"), "FASJSON user > result")
    if result.get("username") != username:
        raise InvalidSource(f"FASJSON user: asked for {username!r}, "
                            f"got {result.get('username')!r}")
    emails = tuple(e for e in result.get("emails") or () if isinstance(e, str)
                   and _EMAIL.fullmatch(e))
    nicks = tuple(n for n in result.get("ircnicks") or () if isinstance(n, str)
                  and len(n) <= 300 and parse_nick(n) is not None)
    return Account(username=username, emails=emails, ircnicks=nicks,
                   locked=result.get("locked") is True)


def parse_members_page(doc: Any, group: str) -> tuple[list[str], str | None]:
    """One page of ``/v1/groups/<name>/members/``: the member names and the next page's URL."""
    top = _obj(doc, f"FASJSON members of {group}")
    result = top.get("result")
    if not isinstance(result, list):
        raise InvalidSource(f"FASJSON members of {group}: no result list")
    names = [m.get("username") for m in result if isinstance(m, Mapping)]
    page = top.get("page")
    next_page = page.get("next_page") if isinstance(page, Mapping) else None
    return ([n for n in names if valid_name(n)],
            next_page if isinstance(next_page, str) else None)
