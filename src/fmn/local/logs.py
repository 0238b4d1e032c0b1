"""A local run's console stays readable: each function's JSON logs and EMF metrics go to a file.

On AWS a function's stdout is its CloudWatch log stream: Powertools writes a
JSON line per log record there, and an EMF line per metrics flush.  Locally
the functions share one process and one terminal, so :func:`to_file` points
one function's Powertools loggers at ``<dir>/<function>.log`` and makes its
metrics flushes append their EMF document to the same file, whatever
``POWERTOOLS_METRICS_DISABLED`` says.  :class:`OneLine` is the console's
formatter: one line per record, the exception's type and message without its
traceback (the traceback is in the function's file).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import ModuleType
from typing import IO, Any

from fmn.delivery.text import clean


def _powertools(module: ModuleType) -> tuple[list[Any], list[Any]]:
    from aws_lambda_powertools import Logger, Metrics
    from aws_lambda_powertools.metrics import EphemeralMetrics

    loggers: list[Any] = []
    metrics: list[Any] = []
    for value in list(vars(module).values()):
        candidates = [value, *vars(value).values()] if hasattr(value, "__dict__") \
            and not isinstance(value, type | ModuleType) else [value]
        for obj in candidates:
            if isinstance(obj, Logger) and obj not in loggers:
                loggers.append(obj)
            elif isinstance(obj, Metrics | EphemeralMetrics) and obj not in metrics:
                metrics.append(obj)
    return loggers, metrics


def to_file(module: ModuleType, function: str, directory: Path) -> Path:
    """Send ``module``'s Powertools logs and EMF lines to ``directory/<function>.log``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{function}.log"
    out: IO[str] = path.open("a", buffering=1, encoding="utf-8")
    loggers, metrics = _powertools(module)
    for logger in loggers:
        handler = logger.registered_handler
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(out)
    for m in metrics:
        def flush(raise_on_empty_metrics: bool = False, m: Any = m) -> None:
            if m.metric_set:
                out.write(json.dumps(m.serialize_metric_set()) + "\n")
            m.clear_metrics()

        m.flush_metrics = flush
    return path


class OneLine(logging.Formatter):
    """``HH:MM:SS level name: message (ExcType: message)``, never a traceback."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        note = ""
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            note = f" ({type(exc).__name__}: {str(exc)[:200]})"
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            text = super().format(record) + note
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        # one line, and nothing a terminal would act on: log lines quote bus messages
        return clean(text)[:400]
