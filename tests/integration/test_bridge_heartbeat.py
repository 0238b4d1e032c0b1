"""The bridge's heartbeat reaches CloudWatch (the moto server) with the names the alarms watch."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import boto3
import pytest

from fmn.pipeline import alarms
from fmn_bridge.heartbeat import Heartbeat

pytestmark = pytest.mark.integration


def test_heartbeat_publishes_messages_bridged_and_connection_per_bus(aws_env: str) -> None:
    cw = boto3.client("cloudwatch")
    sink: Any = SimpleNamespace(stats=SimpleNamespace(forwarded=5), claims_waiting=2)
    sources = [SimpleNamespace(bus="fedmsg", connected=True),
               SimpleNamespace(bus="fedora-messaging", connected=False)]
    beat = Heartbeat(cw, "hb-test-incoming", sink, sources, interval_s=60)
    sink.stats.forwarded = 12
    data = beat.metric_data()
    assert data[0]["MetricName"] == alarms.BRIDGE_MESSAGES and data[0]["Value"] == 7
    # envelopes waiting for a claim the bucket will not take (missing, not writable)
    assert data[1]["MetricName"] == alarms.BRIDGE_CLAIMS_WAITING and data[1]["Value"] == 2
    assert [d["Value"] for d in data[2:]] == [1, 0]
    beat.beat()
    assert beat.beats == 1
    names = {(m["MetricName"], tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"])))
             for m in cw.list_metrics(Namespace=alarms.NAMESPACE)["Metrics"]}
    assert (alarms.BRIDGE_MESSAGES, (("Queue", "hb-test-incoming"),)) in names
    assert (alarms.BRIDGE_CLAIMS_WAITING, (("Queue", "hb-test-incoming"),)) in names
    assert (alarms.BRIDGE_CONNECTED, (("Bus", "fedora-messaging"),
                                      ("Queue", "hb-test-incoming"))) in names
    # the silence alarm of queue hb-test- watches exactly this metric
    silent = alarms.bridge_alarms("hb-test-")[0].put_metric_alarm()
    assert (silent["MetricName"], tuple((d["Name"], d["Value"]) for d in silent["Dimensions"])
            ) in names
    # and the claims-waiting alarm this one
    (waiting,) = [a.put_metric_alarm() for a in alarms.bridge_alarms("hb-test-")
                  if a.metric.name == alarms.BRIDGE_CLAIMS_WAITING]
    assert (waiting["MetricName"], tuple((d["Name"], d["Value"])
                                         for d in waiting["Dimensions"])) in names


def test_a_failing_cloudwatch_never_stops_the_bridge() -> None:
    class Down:
        def put_metric_data(self, **_: Any) -> None:
            raise ConnectionError("no route")

    sink: Any = SimpleNamespace(stats=SimpleNamespace(forwarded=0), claims_waiting=0)
    beat = Heartbeat(Down(), "q", sink, [], interval_s=60)
    beat.beat()
    assert beat.beats == 0
