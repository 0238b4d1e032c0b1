"""The sync Lambda (Chalice): the scheduled full reconcile of ownership and accounts.

Every hour it reconciles package ownership (dist-git's owner map) and the
members of the groups that own packages or that rules name (FASJSON); once a
day, every user's Fedora account (FASJSON: e-mails and nicks offered as
destinations, locked or deleted accounts switched off), in as many hourly
runs as it takes.  No run starts a GET it could not finish before the
function's timeout, with the write after it: what was not reached stays as
it was and the next run starts with it (``resume_from`` in ``fmn status``).  Each run fetches,
compares with the database, writes only the difference and publishes only
that to the snapshot's change log (:mod:`fmn.ownership.reconcile`); a fetch
that fails or looks wrong changes nothing, is logged, counted
(``SyncRefused``) and recorded for ``fmn status``.  The live updates from the
bus, between two runs, happen in the match function.

Production FASJSON needs Kerberos: give the function a keytab
(``KRB5_CLIENT_KTNAME``, from a secret) and ``FMN_FASJSON_AUTH=gssapi``.
Nothing does I/O at import.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from chalice.app import Chalice, Cron

from fmn import emf
from fmn.ownership.reconcile import SyncReport
from fmn.settings import Settings

app = Chalice(app_name="fmn-sync", configure_logs=False)
logger = Logger(service="fmn-sync")
# its own metric set (Powertools' Metrics share one across every instance in a
# process: a function run beside others, as locally, flushed theirs as its own)
metrics = EphemeralMetrics(namespace="FMN", service="sync")
_state: dict[str, Any] = {}


def reset() -> None:
    _state.clear()


def _deps() -> dict[str, Any]:
    if not _state:
        from fmn import db
        from fmn.ownership.settings import SyncSettings
        from fmn.snapshot.store import RedisSnapshotStore

        copy_config_to_registered_loggers(source_logger=logger, include={"fmn"})
        s = Settings.from_env()
        _state.update(sync=SyncSettings.from_env(), engine=db.make_engine(s.database_url),
                      store=RedisSnapshotStore.from_url(s.redis_url, s.snapshot_prefix))
    return _state


def _done(report: SyncReport) -> dict[str, Any]:
    logger.info(report.summary(), extra={"report": report.as_dict()})
    metrics.add_metric(name="SyncRefused" if not report.ok else "SyncApplied",
                       unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="SnapshotChanges", unit=MetricUnit.Count,
                       value=report.snapshot_changes)
    emf.flush(metrics)
    return report.as_dict()


#: what a run keeps back after its last GET: comparing, writing the difference,
#: publishing it and recording the run (seconds)
WRITE_RESERVE_S = 60.0


def _out_of_time(context: Any) -> Any:
    """When to start no more GETs: the longest one GET can take (retries included) and
    the write after it before the function's timeout (None outside Lambda)."""
    from fmn.delivery.base import time_up
    from fmn.ownership.sources import RetryPolicy

    return time_up(context, RetryPolicy().worst_get_s(_deps()["sync"].timeout_s)
                   + WRITE_RESERVE_S)


def sync_ownership_now(context: Any = None) -> dict[str, Any]:
    from fmn.ownership.reconcile import reconcile_ownership, resume_point
    from fmn.ownership.sources import fetch_ownership
    from fmn.ownership.store import tracked_groups

    d = _deps()
    s = d["sync"]
    distgit, fasjson = s.distgit(), s.fasjson()
    groups = tracked_groups(d["engine"])
    out_of_time, start_at = _out_of_time(context), resume_point(d["engine"], "ownership")
    return _done(reconcile_ownership(
        d["engine"], d["store"], lambda: fetch_ownership(
            distgit, fasjson, groups, out_of_time=out_of_time, start_at=start_at),
        max_drop=s.max_drop, start_at=start_at))


def sync_accounts_now(context: Any = None) -> dict[str, Any] | None:
    """One run of the account sync: a new pass over every account once a day, the rest
    of one that ran out of time, a retry of one refused; None when none is due."""
    from fmn.ownership.reconcile import account_pass, reconcile_accounts

    d = _deps()
    s = d["sync"]
    due, start_at, began = account_pass(d["engine"])
    if not due:
        logger.info("accounts: no pass due (one a day; the last finished)")
        return None
    return _done(reconcile_accounts(d["engine"], d["store"], s.fasjson().user,
                                    max_drop=s.max_drop, workers=s.workers,
                                    out_of_time=_out_of_time(context), start_at=start_at,
                                    pass_started_at=began))


# Both hourly, half an hour apart (the function runs one at a time).  A pass over
# every account begins once a day and may take several runs (100,000 accounts at
# FASJSON's pace need more than one 15-minute run).
@app.schedule(Cron(0, "*", "*", "*", "?", "*"))
def sync_ownership(event: Any) -> None:
    sync_ownership_now(getattr(event, "context", None))


@app.schedule(Cron(30, "*", "*", "*", "?", "*"))
def sync_accounts(event: Any) -> None:
    sync_accounts_now(getattr(event, "context", None))
