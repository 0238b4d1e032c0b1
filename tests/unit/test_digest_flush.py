"""The digest schedule goes on past one destination's failure, whatever the failure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from fmn.delivery.base import Delivery
from fmn.delivery.digest import Claimed, flush_due
from fmn.delivery.once import MemoryOnce

pytestmark = pytest.mark.unit


def item(user: str) -> Delivery:
    return Delivery(backend="email", message={"id": f"m-{user}"}, user=user,
                    address=f"{user}@example.org", destination="d1", rules=("r1",),
                    rule_names=("r1",))


class Store:
    """A digest store with three due destinations; one has an entry nobody can read."""

    def __init__(self) -> None:
        self.finished: list[str] = []

    def due(self, now: float) -> list[str]:
        return ["alice", "broken", "carol"]

    def claim(self, dk: str, now: float) -> Claimed | None:
        if dk in self.finished:
            return None
        if dk == "broken":
            raise KeyError("rules")  # what a corrupted entry gives from_doc
        return Claimed(f"{dk}-1", [item(dk)], 0)

    def finish(self, dk: str, batch_id: str, now: float) -> None:
        self.finished.append(dk)

    def is_due(self, dk: str, now: float) -> bool:
        return False

    def failure(self, dk: str, batch_id: str) -> str | None:
        return None


def test_one_unreadable_digest_does_not_stop_the_others() -> None:
    store, sent = Store(), []

    def send(items: Sequence[Delivery], more: int) -> None:
        sent.extend(i.user for i in items)

    def dead_letter(item: Delivery, reason: str) -> None:
        raise AssertionError("nothing to dead-letter")

    store_: Any = store
    assert flush_due(store_, 0.0, send, MemoryOnce(), dead_letter) == {"digested": 2}
    assert sent == ["alice", "carol"] and store.finished == ["alice", "carol"]
