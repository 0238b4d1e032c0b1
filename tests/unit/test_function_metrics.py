"""Each function's metrics are its own, also beside other functions in one process.

Powertools' ``Metrics`` share one metric set across every instance in a process: the
local runner runs several functions in one, and a sender's flush published what the
match function had counted, under the sender's name, leaving the match function an
empty set ("No application metrics to publish").
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from fmn.delivery.edge import SenderFunction
from fmn.local.stack import load_function


def _emf(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_a_function_flushes_only_its_own_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    from aws_lambda_powertools.metrics import MetricUnit

    match = load_function("match")
    irc = SenderFunction("irc", make_send=lambda settings: None)  # type: ignore[arg-type, return-value]
    match.metrics.add_metric(name="MessagesMatched", unit=MetricUnit.Count, value=3)
    irc.metrics.add_metric(name="Sent", unit=MetricUnit.Count, value=1)
    irc.metrics.flush_metrics()
    [flushed] = _emf(capsys.readouterr().out)
    assert "Sent" in flushed and "MessagesMatched" not in flushed
    assert flushed["service"] == "fmn-send-irc"

    match.metrics.flush_metrics()
    [own] = _emf(capsys.readouterr().out)
    assert own["MessagesMatched"] == [3.0]
    assert own["service"] == "match"


def test_disabled_metrics_do_not_pile_up(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """With metrics disabled (the local stack's default) a flush still forgets its values.

    Powertools keeps a disabled set: after 100 latencies ``add_metric`` printed them to
    stdout by itself, and a flush right after that warned "No application metrics to
    publish" (the intermittent warning of the local stack's end-to-end test).
    """
    import warnings

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    email = SenderFunction("email", make_send=lambda settings: None)  # type: ignore[arg-type, return-value]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(150):
            email.record_latency([12.5])
            email.count(Counter(sent=1))
    assert capsys.readouterr().out == ""
    assert not email.metrics.metric_set


def test_a_flush_publishes_then_forgets(capsys: pytest.CaptureFixture[str]) -> None:
    from aws_lambda_powertools.metrics import MetricUnit

    from fmn import emf

    irc = SenderFunction("irc", make_send=lambda settings: None)  # type: ignore[arg-type, return-value]
    irc.metrics.add_metric(name="Sent", unit=MetricUnit.Count, value=2)
    emf.flush(irc.metrics)
    [flushed] = _emf(capsys.readouterr().out)
    assert flushed["Sent"] == [2.0]
    assert not irc.metrics.metric_set


def test_a_latency_from_an_untrusted_timestamp_is_left_out() -> None:
    """The publisher's sent-at is untrusted: year 0001 gave 63,932,087,056,905 ms, which
    the flush keeps as its maximum."""
    from datetime import UTC, datetime

    from fmn.delivery.edge import _since_ms

    now = datetime(2026, 12, 5, 17, 0, 0, tzinfo=UTC)
    assert _since_ms("2026-12-05T16:59:58Z", now) == 2000.0
    assert _since_ms("2026-12-05T17:00:30+00:00", now) == 0.0  # a fast clock: no less than 0
    assert _since_ms("2026-12-01T17:00:00", now) == 4 * 24 * 3600 * 1000.0  # an outage
    for bogus in ("0001-01-01T00:00:00Z", "2999-01-01T00:00:00Z", "2026-11-01T00:00:00Z",
                  "9999-12-31T23:59:59-23:59", "not a date", None):
        assert _since_ms(bogus, now) is None, bogus
