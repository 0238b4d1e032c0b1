"""The Matrix sender Lambda (Chalice): the ``matrix`` queue -> notices in each person's direct room.

A thin adapter: :class:`fmn.delivery.edge.SenderFunction` does the batch
processing, dead letters and metrics; :class:`fmn.delivery.matrix.MatrixNotifier`
renders, keeps each person's room (remembered in Redis) and waits out the
homeserver's rate limits; :class:`fmn.delivery.matrix_client.NioLink` is the
bot's session (matrix-nio).  Each invocation first plans the **whole batch**
(per person: a few notices of their own, the rest one summary notice), then
delivers record by record, each item once.  The function runs with
concurrency 1: one bot, one rate limit, each room in order.  Nothing does
I/O at import.  ``handle_matrix(event, context)`` also takes the raw Lambda
SQS event (the local runner calls it so); ``reset()`` closes the session and
forgets the state (tests, new settings).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from chalice.app import Chalice

from fmn.delivery.edge import SenderFunction
from fmn.delivery.matrix import MatrixNotifier
from fmn.delivery.matrix_client import NioLink, make_notifier
from fmn.pipeline.queues import queue
from fmn.settings import Settings

MATRIX = queue("matrix")

# configure_logs=False: Chalice would add a plain handler to the logger Powertools uses
app = Chalice(app_name="fmn-send-matrix", configure_logs=False)
# The sessions this process opened, so reset() can close them.
_links: list[NioLink] = []


def make_send(settings: Settings) -> MatrixNotifier:
    notifier = make_notifier(settings)
    assert isinstance(notifier.link, NioLink)
    _links.append(notifier.link)
    return notifier


function = SenderFunction("matrix", make_send)
#: totals since the process started (the local stack's status display reads them)
totals = function.totals


def reset() -> None:
    """Close the session and forget the settings and clients."""
    function.reset()
    while _links:
        _links.pop().close()


def process(event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
    response: PartialItemFailureResponse = function.handle_planned(event, context)
    return response


# Concurrency 1 is the function's reserved concurrency (.chalice/config.json).
@app.on_sqs_message(queue=MATRIX.sqs_name(Settings.from_env().queue_prefix),
                    batch_size=MATRIX.batch_size,
                    maximum_batching_window_in_seconds=MATRIX.batching_window_s)
def handle_matrix(event: Any) -> PartialItemFailureResponse:
    return process(event.to_dict(), event.context)
