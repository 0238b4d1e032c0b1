"""A digest asks whether its destination still wants mail once per address, not per item."""

from __future__ import annotations

from fmn.delivery.base import Delivery
from fmn.delivery.email_sender import EmailSender
from fmn.delivery.mailers import MemoryMailer


def _item(i: int, address: str) -> Delivery:
    return Delivery(backend="email", message={"id": f"m-{i}", "summary": f"build {i} done",
                                              "topic": "org.fedoraproject.prod.buildsys.build"},
                    user="bob", address=address, destination="d9", rules=("r1",),
                    rule_names=("My builds",))


def test_each_address_of_a_digest_is_asked_once_and_only_live_ones_go_out() -> None:
    asked: list[tuple[str, str, str]] = []

    def subscribed(item: Delivery) -> bool:
        asked.append((item.user, item.destination, item.address))
        return item.address == "bob@new.example"  # he changed his address meanwhile

    mailer = MemoryMailer()
    sender = EmailSender(mailer, None, sender="notifications@fedoraproject.org",
                         web_url="https://notif.example",
                         unsubscribe_url=lambda u, d: f"https://notif.example/u/{u}/{d}",
                         subscribed=subscribed)
    items = [_item(i, "bob@old.example") for i in range(30)] \
        + [_item(i, "bob@new.example") for i in range(30, 40)]
    sender.send_digest(items, more=0)

    assert sorted(asked) == [("bob", "d9", "bob@new.example"), ("bob", "d9", "bob@old.example")]
    assert sender.dropped == 30
    (mail,) = mailer.sent
    assert mail["To"] == "bob@new.example" and mail["X-Fedmsg-Digest-Count"] == "10"
