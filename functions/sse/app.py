"""The live feed's writer Lambda (Chalice): the ``sse`` queue -> each user's feed in Redis.

A thin adapter: :class:`fmn.delivery.edge.SenderFunction` reads each SQS
record as a notification payload (``docs/notification-payload.md``) and
sends every item once (Powertools idempotency on Redis, keyed on message,
user, destination and address), and the send appends the item's event
(:func:`fmn.delivery.feed.event_data`) to the user's bounded stream
(:class:`fmn.delivery.feed.RedisFeed` under ``FMN_FEED_PREFIX``, default
``fmn:feed:``; ``FMN_FEED_MAXLEN`` events, none older than
``FMN_FEED_MAX_AGE_S``).  A redelivered payload therefore adds nothing twice;
Redis trouble is retryable (the record comes back), an unreadable payload
goes to ``sse-dlq`` at once.

``handle_sse(event, context)`` takes the raw Lambda SQS event (the local
runner calls it directly) and returns a partial batch response; ``reset()``
forgets the clients.  Nothing does I/O at import.  The HTTP side, which
streams the feed to browsers, is ``stream.py`` (deployed apart: Chalice
cannot stream; see README.md).
"""

from __future__ import annotations

import time
from typing import Any

from chalice.app import Chalice

from fmn.delivery.base import Delivery, Send
from fmn.delivery.edge import SenderFunction
from fmn.delivery.feed import RedisFeed, event_data
from fmn.pipeline.queues import queue
from fmn.settings import Settings

SSE = queue("sse")

# configure_logs=False: Chalice would add a plain handler to the logger Powertools uses
app = Chalice(app_name="fmn-sse", configure_logs=False)


def make_send(settings: Settings) -> Send:
    """Append one notification to its user's feed (the user's name is the address)."""
    feed = RedisFeed.from_url(settings.redis_url, settings.feed_prefix, maxlen=settings.feed_maxlen,
                              max_age_s=settings.feed_max_age_s)

    def send(item: Delivery) -> None:
        feed.append(item.user, event_data(item, received_at=time.time()))

    return send


#: An invocation starts no record or feed event this close to its deadline (more
#: than the Redis client's 5 s timeout): a batch of 100 records on a busy machine
#: ran past its timeout and came back while still being written, twice (2,455
#: duplicate feed events in a 15,000-message load test).
DEADLINE_MARGIN_S = 10.0

sender = SenderFunction("sse", make_send, service="fmn-sse",
                        deadline_margin_s=DEADLINE_MARGIN_S)
#: totals since the process started (the local stack's status display reads them)
totals = sender.totals


def reset() -> None:
    """Forget the settings, clients and send callable (tests, new settings)."""
    sender.reset()


@app.on_sqs_message(queue=SSE.sqs_name(Settings.from_env().queue_prefix),
                    batch_size=SSE.batch_size,
                    maximum_batching_window_in_seconds=SSE.batching_window_s,
                    maximum_concurrency=SSE.max_concurrency)
def handle_sse(event: Any) -> Any:
    return sender.handle(event.to_dict(), event.context)
