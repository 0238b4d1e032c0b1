"""A local run's console: each function's EMF metrics go to its log file, none to stdout."""

from __future__ import annotations

import json
import types
from collections import Counter
from pathlib import Path

import pytest

from fmn.delivery.edge import LATENCY_SAMPLE, SenderFunction
from fmn.local.logs import to_file

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("sent", [1, 98, 99, 100, 101, 250, 5000])
def test_latencies_and_counts_reach_the_file_never_the_console(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], sent: int) -> None:
    module = types.ModuleType("fake_function")
    module.sender = SenderFunction("sse", lambda settings: None, service="fmn-sse")  # type: ignore[attr-defined, arg-type, return-value]
    path = to_file(module, "sse", tmp_path)

    latencies = [float(i) for i in range(sent)]
    module.sender.count(Counter(sent=sent))  # type: ignore[attr-defined]
    module.sender.record_latency(latencies)  # type: ignore[attr-defined]

    assert capsys.readouterr().out == ""
    documents = [json.loads(line) for line in path.read_text().splitlines()]
    values = [d["BusToSendLatency"] for d in documents if "BusToSendLatency" in d]
    assert len(values) == 1
    recorded = values[0] if isinstance(values[0], list) else [values[0]]
    assert len(recorded) <= LATENCY_SAMPLE
    assert max(recorded) == sent - 1 and min(recorded) == 0
