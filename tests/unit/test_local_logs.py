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


def test_the_console_line_carries_nothing_a_terminal_acts_on() -> None:
    # log lines quote bus messages (ids, topics): an escape sequence in one must not
    # reach the operator's terminal, nor a carriage return overwrite the line
    import logging

    from fmn.local.logs import OneLine

    record = logging.LogRecord("fmn.x", logging.WARNING, __file__, 1,
                               "message %s is odd", ("a\x1b]0;pwned\x07b\rc\x1b[2Jd\ne",), None)
    try:
        raise ValueError("boom\x1b[31m\r\nred")
    except ValueError:
        import sys
        record.exc_info = sys.exc_info()
    line = OneLine().format(record)
    assert "\x1b" not in line and "\r" not in line and "\n" not in line
    assert line.endswith("message ab cd e is odd (ValueError: boom red)")
