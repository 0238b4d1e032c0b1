"""The IRC sender Lambda (Chalice): the ``irc`` queue -> PRIVMSGs on one flood-limited connection.

A thin adapter: :class:`fmn.delivery.edge.SenderFunction` does the batch
processing, dead letters and metrics; :class:`fmn.delivery.irc.IrcNotifier`
renders and summarises; :class:`fmn.delivery.irc_client.IrcClientLink` holds
the connection.  Each invocation first plans the **whole batch** (every
record's notifications, per nick: a few on their own, the rest one summary
line), then delivers record by record, each item once (the module docstring
of :mod:`fmn.delivery.irc` says how summaries stay idempotent).  The
connection, the token bucket and the per-nick memory of recent lines live in
the function's lazy state, so a warm container keeps them; the function must
run with concurrency 1 (one connection, one flood budget).  Nothing does I/O
at import.  ``handle_irc(event, context)`` also takes the raw Lambda SQS
event (the local runner calls it so); ``reset()`` hangs up and forgets the
state (tests, new settings).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from chalice.app import Chalice

from fmn.delivery.edge import SenderFunction
from fmn.delivery.irc import IrcNotifier, TokenBucket
from fmn.delivery.irc_client import IrcClientLink
from fmn.pipeline.queues import queue
from fmn.settings import Settings

IRC = queue("irc")

# configure_logs=False: Chalice would add a plain handler to the logger Powertools uses
app = Chalice(app_name="fmn-send-irc", configure_logs=False)
# The links this process opened, so reset() can hang them up.
_links: list[IrcClientLink] = []


def make_send(settings: Settings) -> IrcNotifier:
    link = IrcClientLink.from_url(settings.irc_url,
                                  TokenBucket(settings.irc_burst, settings.irc_rate))
    _links.append(link)
    return IrcNotifier(link, settings.web_url)


function = SenderFunction("irc", make_send)
#: totals since the process started (the local stack's status display reads them)
totals = function.totals


def reset() -> None:
    """Hang up and forget the settings, clients and connection."""
    function.reset()
    while _links:
        _links.pop().close()


def process(event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
    response: PartialItemFailureResponse = function.handle_planned(event, context)
    return response


# Concurrency 1 is the function's reserved concurrency (.chalice/config.json):
# an event source mapping's maximum concurrency cannot go below 2.
@app.on_sqs_message(queue=IRC.sqs_name(Settings.from_env().queue_prefix),
                    batch_size=IRC.batch_size,
                    maximum_batching_window_in_seconds=IRC.batching_window_s)
def handle_irc(event: Any) -> PartialItemFailureResponse:
    return process(event.to_dict(), event.context)
