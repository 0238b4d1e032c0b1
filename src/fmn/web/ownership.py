"""What the signed-in user owns, for the "My packages" editor, and what their account offers.

:func:`my_ownership` answers ``GET /api/v1/ownership``: the artifacts the
user owns directly, those of each group they are a member of, when the
ownership data was last refreshed (full reconcile and live update), and the
destinations their Fedora account offers (FASJSON's e-mails, IRC and Matrix
nicks).  Only the e-mail addresses count as verified when added (FAS
verified them); the IRC and Matrix nicks are free text the account's owner
typed, so anyone could list someone else's: those still need their code.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from fmn.ownership import store as ostore


def my_ownership(engine: Engine, name: str) -> dict[str, Any]:
    owned = ostore.owned_by(engine, name)
    states = ostore.sync_states(engine)
    account = ostore.account_of(engine, name)

    def when(source: str) -> str | None:
        value: str | None = states.get(source, {}).get("succeeded_at")
        return value

    return {
        "direct": owned["direct"],
        "groups": owned["groups"],
        "refreshed": {"reconcile": when("ownership"), "live": when("live"),
                      "accounts": when("accounts")},
        "account": None if account is None else {
            "locked": account.locked, "deleted": account.deleted,
            "destinations": [{"protocol": p, "address": a}
                             for p, a in account.destinations()]},
    }


def offered_by_account(engine: Engine, name: str, protocol: str, address: str | None) -> bool:
    """Whether FAS lists ``address`` for the account.

    Proof of ownership only for ``email`` (FAS verified the address): the
    caller must not treat an IRC or Matrix nick found here as verified.
    """
    if address is None:
        return False
    account = ostore.account_of(engine, name)
    if account is None or account.blocked:
        return False
    wanted = (protocol, address.lower())
    return any((p, a.lower()) == wanted for p, a in account.destinations())
