"""The email sender Lambda (Chalice): the ``email`` queue -> mail via SMTP or SES, with digests.

A thin adapter: :class:`fmn.delivery.edge.SenderFunction` reads each SQS
record's payload and sends every notification once (Powertools idempotency
on Redis) through :class:`fmn.delivery.email_sender.EmailSender`, which mails
it or adds it to its destination's digest.  Digests that reach their count go
out at the end of the record; ``flush_digests`` (every minute) sends the
ones whose interval has passed.  Nothing is built at import.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from chalice.app import Chalice, Rate

from fmn.delivery.base import DeadLetter, Delivery, Send, deliver_payload
from fmn.delivery.edge import SenderFunction, Watched
from fmn.delivery.email_sender import EmailSender
from fmn.delivery.once import Once
from fmn.errors import RetryableError
from fmn.pipeline.queues import queue
from fmn.settings import Settings

EMAIL = queue("email")

app = Chalice(app_name="fmn-send-email", configure_logs=False)


def make_send(settings: Settings) -> Send:
    from fmn.auth import unsubscribe_url
    from fmn.delivery.digest import DigestStore, digest_prefix
    from fmn.delivery.mailers import make_mailer
    from fmn.redisconn import connect

    client = connect(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    # digest keys per stage, as the queues: stages may share one Redis
    digests = DigestStore(client, digest_prefix(settings.queue_prefix))
    return EmailSender(
        make_mailer(settings), digests, sender=settings.mail_from, web_url=settings.web_url,
        unsubscribe_url=lambda user, dest: unsubscribe_url(settings.web_url, user, dest,
                                                           settings.secret_key),
        subscribed=database_subscriptions(settings.database_url))


def database_subscriptions(url: str) -> Callable[[Delivery], bool]:
    """Whether an item's destination still wants mail, asked of the preferences database
    (built on first use; a database failure is retryable: the digest waits)."""
    from sqlalchemy.exc import SQLAlchemyError

    from fmn.db.pending import destination_live

    def subscribed(item: Delivery) -> bool:
        try:
            return destination_live(_engine(url), item.user, item.destination, item.address)
        except SQLAlchemyError as exc:
            raise RetryableError(f"preferences database: {exc}") from exc

    return subscribed


_engines: dict[str, Any] = {}


def _engine(url: str) -> Any:
    if url not in _engines:
        from fmn import db

        _engines[url] = db.make_engine(url)
    return _engines[url]


def digests_lost(settings: Settings, store: Any) -> int | None:
    """None, or how many queued digest items Redis lost (at least) since the last check
    (the generation marker, remembered in the database:
    :func:`fmn.delivery.digest.check_generation`)."""
    from sqlalchemy.exc import SQLAlchemyError

    from fmn.db import pending
    from fmn.delivery.digest import check_generation

    engine = _engine(settings.database_url)
    name = f"digests:{store.prefix}"
    try:
        return check_generation(store, pending.marker(engine, name),
                                lambda token, items: pending.set_marker(engine, name, token,
                                                                        items))
    except SQLAlchemyError as exc:
        raise RetryableError(f"preferences database: {exc}") from exc


#: An invocation starts no mail this close to its deadline: more than the SMTP
#: client's timeout (20 s), so a last send that hangs still ends in time.
DEADLINE_MARGIN_S = 25.0

function = SenderFunction("email", make_send, deadline_margin_s=DEADLINE_MARGIN_S)
#: totals since the process started (the local stack's status display reads them)
totals = function.totals
reset = function.reset


def deliver(body: str, send: Send, once: Once, dead_letter: DeadLetter) -> Counter[str]:
    counts = deliver_payload(body, "email", send, once, dead_letter)
    try:  # ``send`` may be the deadline's watch around the sender: ask the sender itself
        sender = cast(EmailSender, function.get("send"))
        # the digests that reached their count, while the invocation has time for them
        out_of_time = send.out_of_time if isinstance(send, Watched) else None
        counts.update(sender.flush_ready(once, dead_letter, out_of_time))
    except RetryableError as exc:  # the schedule sends it later; the items are safe
        function.logger.warning("digest not sent yet", extra={"error": str(exc)[:300]})
    return counts


@app.on_sqs_message(queue=EMAIL.sqs_name(Settings.from_env().queue_prefix),
                    batch_size=EMAIL.batch_size,
                    maximum_batching_window_in_seconds=EMAIL.batching_window_s,
                    maximum_concurrency=EMAIL.max_concurrency)
def handle_email(event: Any) -> Any:
    return function.handle(event.to_dict(), event.context, deliver=deliver)


def flush_digests_now(context: Any = None) -> int:
    """Send every due digest; notifications sent (the schedule, and the local stack)."""
    function.begin(context)
    sender = cast(EmailSender, function.get("send"))
    if sender.digests is not None:
        try:
            lost = digests_lost(function.settings, sender.digests)
            if lost is not None:  # metrics DigestStoreLost, DigestItemsLost
                function.count(Counter({"digest-store-lost": 1, "digest-items-lost": lost}))
        except RetryableError as exc:
            function.logger.warning("digest store generation not checked",
                                    extra={"error": str(exc)[:300]})
    counts = sender.flush_due(function.once, function.dead_letter,
                              function.out_of_time(context))
    function.count(counts)
    return counts["digested"]


@app.schedule(Rate(1, unit=Rate.MINUTES))
def flush_digests(event: Any) -> None:
    flush_digests_now(event.context)
