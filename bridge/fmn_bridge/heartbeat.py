"""The bridge's heartbeat: CloudWatch metrics saying it is alive, connected and forwarding.

A dead bridge makes every queue look healthy, so every ``interval_s`` (60 s)
the bridge publishes, with PutMetricData into namespace ``FMN``
(:mod:`fmn.pipeline.alarms` names them and alarms on them):
``MessagesBridged`` (dimension ``Queue``: messages SQS accepted since the
last beat; the silence alarm fires when it stays below 1, or is missing, for
longer than Fedora's bus is ever quiet) and ``BusConnected`` (dimensions
``Queue`` and ``Bus``: 1 while the source is connected, else 0) and
``ClaimsWaiting`` (dimension ``Queue``: envelopes waiting because their claim
check to S3 failed, a claim bucket missing or not writable).  It runs in
its own thread; a CloudWatch failure is logged and never stops the bridge.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from fmn.pipeline.alarms import (
    BRIDGE_CLAIMS_WAITING,
    BRIDGE_CONNECTED,
    BRIDGE_MESSAGES,
    NAMESPACE,
)

from .sqs_sink import SqsSink

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, cloudwatch: Any, queue_name: str, sink: SqsSink,
                 sources: Sequence[Any], interval_s: float = 60.0) -> None:
        self._cw, self._queue, self._sink, self._sources = cloudwatch, queue_name, sink, sources
        self.interval_s = interval_s
        self._last = sink.stats.forwarded
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="Heartbeat", daemon=True)
        self.beats = 0

    def metric_data(self) -> list[dict[str, Any]]:
        """The datapoints of one beat (and the count taken)."""
        forwarded = self._sink.stats.forwarded
        bridged, self._last = forwarded - self._last, forwarded
        queue_dim = {"Name": "Queue", "Value": self._queue}
        data: list[dict[str, Any]] = [
            {"MetricName": BRIDGE_MESSAGES, "Value": bridged, "Unit": "Count",
             "Dimensions": [queue_dim]},
            {"MetricName": BRIDGE_CLAIMS_WAITING, "Value": self._sink.claims_waiting,
             "Unit": "Count", "Dimensions": [queue_dim]}]
        for source in self._sources:
            connected = bool(getattr(source, "connected", False))
            data.append({"MetricName": BRIDGE_CONNECTED, "Value": 1 if connected else 0,
                         "Unit": "Count",
                         "Dimensions": [queue_dim, {"Name": "Bus", "Value": source.bus}]})
        return data

    def beat(self) -> None:
        data = self.metric_data()
        try:
            self._cw.put_metric_data(Namespace=NAMESPACE, MetricData=data)
            self.beats += 1
        except Exception as exc:  # noqa: BLE001 - botocore errors: the next beat tries again
            log.warning("heartbeat not published: %s: %s", type(exc).__name__, exc)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()
