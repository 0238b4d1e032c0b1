"""The snapshot job (Chalice): compile the whole preferences database into Redis, on a schedule.

Every edit already reaches the snapshot through its user's change log within
a second; this full publish bounds how far a missed change log entry (Redis
restarted, a failover) can drift, and compacts the log.  It runs
:func:`fmn.snapshot.sync.publish_full`, what ``fmn snapshot publish`` runs.
Nothing does I/O at import; ``publish(context)`` is the job itself.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from chalice.app import Chalice, Rate

from fmn import emf
from fmn.settings import Settings

# configure_logs=False: Chalice would add a plain handler to the logger Powertools uses
app = Chalice(app_name="fmn-snapshot", configure_logs=False)
logger = Logger(service="fmn-snapshot")
# its own metric set (Powertools' Metrics share one across every instance in a
# process: a function run beside others, as locally, flushed theirs as its own)
metrics = EphemeralMetrics(namespace="FMN", service="snapshot")
#: how often the whole snapshot is published again
EVERY_MINUTES = 15


def publish(context: Any = None) -> int:
    """Publish the full snapshot; the number of users with live rules."""
    from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

    from fmn import db
    from fmn.snapshot.store import RedisSnapshotStore
    from fmn.snapshot.sync import publish_full

    copy_config_to_registered_loggers(source_logger=logger, include={"fmn"})
    settings = Settings.from_env()
    engine = db.make_engine(settings.database_url)
    try:
        data = publish_full(engine, RedisSnapshotStore.from_url(settings.redis_url,
                                                                settings.snapshot_prefix))
    finally:
        engine.dispose()
    logger.info("snapshot published", extra={"snapshot": data.id, "users": len(data.users)})
    metrics.add_metric(name="SnapshotUsers", unit=MetricUnit.Count, value=len(data.users))
    emf.flush(metrics)
    return len(data.users)


@app.schedule(Rate(EVERY_MINUTES, unit=Rate.MINUTES))
def publish_snapshot(event: Any) -> None:
    publish(event.context)
