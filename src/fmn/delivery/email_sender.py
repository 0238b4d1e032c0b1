"""The email sender's core: mail per notification, or into the destination's digest.

:class:`EmailSender` is the ``send`` of :func:`fmn.delivery.base.deliver_payload`
for the ``email`` backend.  An item whose destination has no digest setting
is rendered (:func:`fmn.delivery.email.render`) and handed to the
:class:`~fmn.delivery.mailers.Mailer`; one with a digest setting is added to
its digest (:class:`~fmn.delivery.digest.DigestStore`) instead, and when that
reaches ``max_count`` it is remembered for :meth:`EmailSender.flush_ready`,
which the handler calls once the payload's items are all through (a digest
is sent outside the item's send-once, so a failed digest never re-adds the
item).  :meth:`EmailSender.flush_due` is the schedule's job.

A digest goes out hours after its items were queued: by then the person may
have unsubscribed, deleted the destination or changed its address.  With a
``subscribed`` check (:func:`fmn.db.pending.destination_live` on the database,
in the Lambda), each item is checked when its digest is sent and dropped,
counted in :attr:`EmailSender.dropped`, if its destination no longer wants it.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from email.message import EmailMessage

from fmn.delivery.base import DeadLetter, Delivery, TimeUp
from fmn.delivery.digest import DigestStore, destination_key, flush, flush_due
from fmn.delivery.email import check_sender, render, render_digest
from fmn.delivery.mailers import Mailer
from fmn.delivery.once import Once

log = logging.getLogger(__name__)

#: Builds the one-click unsubscribe URL of a (user, destination).
UnsubscribeUrl = Callable[[str, str], str]
#: Whether an item's destination still wants mail (verified, same address, user enabled):
#: a function of the item's user, destination and address alone (a digest asks once each).
Subscribed = Callable[[Delivery], bool]


class EmailSender:
    def __init__(self, mailer: Mailer, digests: DigestStore | None, *, sender: str,
                 web_url: str, unsubscribe_url: UnsubscribeUrl,
                 clock: Callable[[], float] = time.time,
                 subscribed: Subscribed | None = None) -> None:
        self.mailer = mailer
        self.subscribed = subscribed
        #: digest items not sent because their destination was unsubscribed meanwhile
        self.dropped = 0
        self.digests = digests
        self.sender = check_sender(sender)
        self.web_url = web_url
        self.unsubscribe_url = unsubscribe_url
        self.clock = clock
        # the mail domain names the list: List-Id and Message-IDs (the address's domain,
        # not the text after the last "@": "Name <a@example.org>" ends in ">")
        address = email.utils.parseaddr(sender)[1]
        self.list_id = "notifications." + (address.rpartition("@")[2] or "localhost")
        self._ready: set[str] = set()

    def render(self, item: Delivery) -> EmailMessage:
        return render(item, sender=self.sender, web_url=self.web_url, list_id=self.list_id,
                      unsubscribe_url=self.unsubscribe_url(item.user, item.destination))

    def __call__(self, item: Delivery) -> str | None:
        """Send one item, or add it to its digest (``"queued"``)."""
        if item.digest is not None and self.digests is not None:
            if self.digests.add(item, self.clock()):
                self._ready.add(destination_key(item))
            return "queued"
        self.mailer.send(self.render(item))
        return None

    def send_digest(self, items: Sequence[Delivery], more: int) -> None:
        if self.subscribed is not None:
            # a digest's items nearly always share one destination and address: ask the
            # database once for each that occurs, not once an item
            live: dict[tuple[str, str, str], bool] = {}
            wanted = []
            for item in items:
                where = (item.user, item.destination, item.address)
                if where not in live:
                    live[where] = self.subscribed(item)
                if live[where]:
                    wanted.append(item)
            if len(wanted) < len(items):
                self.dropped += len(items) - len(wanted)
                log.info("digest of %s: %d items dropped, destination unsubscribed",
                         items[0].user, len(items) - len(wanted))
            items = wanted
            if not items:
                return
        first = items[0]
        self.mailer.send(render_digest(
            items, sender=self.sender, web_url=self.web_url, list_id=self.list_id,
            unsubscribe_url=self.unsubscribe_url(first.user, first.destination), more=more))

    def flush_ready(self, once: Once, dead_letter: DeadLetter,
                    out_of_time: TimeUp | None = None) -> Counter[str]:
        """Send the digests that reached their count; notifications ``digested`` and
        ``dead-lettered``.  Once ``out_of_time`` it starts no digest: what is left is
        due, and the next flush (this one's next call, or the schedule's) sends it."""
        counts: Counter[str] = Counter()
        if self.digests is None:
            return counts
        while out_of_time is None or not out_of_time():
            try:  # shared by the local runner's threads: another may take the last one
                dk = self._ready.pop()
            except KeyError:
                return counts
            counts += flush(self.digests, dk, self.clock(), self.send_digest, once,
                            dead_letter, out_of_time)
        return counts

    def flush_due(self, once: Once, dead_letter: DeadLetter,
                  out_of_time: TimeUp | None = None) -> Counter[str]:
        """Send every digest that is due (interval passed, count reached, or a batch
        left unfinished), none once ``out_of_time``; notifications ``digested`` and
        ``dead-lettered``."""
        if self.digests is None:
            return Counter()
        return flush_due(self.digests, self.clock(), self.send_digest, once, dead_letter,
                         out_of_time)
