"""Publishing a function's metrics: each flush leaves the metric set empty.

Powertools' ``flush_metrics`` prints the set as one EMF line and clears it, but
when ``POWERTOOLS_METRICS_DISABLED`` is set (the local stack's default) it does
neither: the values pile up across invocations until one metric holds 100,
when ``add_metric`` prints them to stdout by itself (past a local run's log
file) and clears them, so a flush right after finds the set empty and warns
"No application metrics to publish".  :func:`flush` publishes as Powertools
does, or not at all when disabled, and always forgets what was published.
"""

from __future__ import annotations

from typing import Any


def flush(metrics: Any) -> None:
    """Publish ``metrics``' set (unless disabled) and empty it."""
    metrics.flush_metrics()
    metrics.clear_metrics()
