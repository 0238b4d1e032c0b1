"""The full reconcile: fetch, compare with the database, apply only the difference.

:func:`reconcile_ownership` (``fmn sync ownership``, the scheduled
``functions/sync``) and :func:`reconcile_accounts` (``fmn sync accounts``)
share one shape:

1. fetch everything from the source; any failure (:class:`SourceError`)
   changes nothing;
2. check that the answer is believable (:func:`~fmn.ownership.diff.implausible`:
   not empty, not a drop of more than ``max_drop`` of the entries; for owners,
   :func:`~fmn.ownership.diff.pairs_dropped`: not more than ``max_drop`` of the
   (artifact, owner) pairs lost, all of them or the users' alone);
3. compute the difference with the database and write only that;
4. publish only what changed to the snapshot's log: ownership changes as
   ownership entries, users whose account changed state through their own
   per-user entry;
5. record the attempt (``sync_state``), success or refusal, with its figures:
   ``fmn status`` and the web UI show it.

A refusal is logged, recorded and returned in the report, and the command
exits non-zero; the database and the snapshot stay as they were.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from fmn.errors import FmnError
from fmn.message import ARTIFACT_TYPES
from fmn.ownership import store as ostore
from fmn.ownership.data import Account, Ownership
from fmn.ownership.diff import (
    DEFAULT_MAX_DROP,
    OwnershipDelta,
    affected_users,
    diff_groups,
    diff_owners,
    implausible,
    owner_pairs,
    pairs_dropped,
    too_many_lost,
)
from fmn.ownership.live import applying_alone
from fmn.ownership.publish import publish_account_users, publish_delta

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]


@dataclass
class SyncReport:
    source: str
    ok: bool
    #: why nothing was changed (a failed or implausible fetch)
    reason: str | None = None
    fetched: int = 0
    artifacts_changed: int = 0
    groups_changed: int = 0
    accounts_changed: int = 0
    #: users whose view changed (gained or lost an artifact or a group, or
    #: whose account was locked, deleted or usable again)
    users_affected: int = 0
    #: entries appended to the snapshot's change log
    snapshot_changes: int = 0
    skipped: int = 0
    #: accounts that could not be fetched (after retries): left as they were
    failed: int = 0
    #: groups (ownership) or accounts not fetched because the run ran out of time: left
    #: as they were; the next run starts with ``resume_from``
    not_reached: int = 0
    resume_from: str | None = None
    #: accounts: when the pass over every account this run belongs to began (ISO, UTC);
    #: a pass that ran out of time goes on in the next run; when it finished (None:
    #: not yet)
    pass_started_at: str | None = None
    pass_finished_at: str | None = None
    #: accounts: the run stopped part way (the source failing), after applying what
    #: it had fetched (``reason`` says why)
    stopped: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        return out

    def summary(self) -> str:
        if self.stopped:
            return (f"{self.source}: {self.reason}; the {self.fetched} fetched before were "
                    f"applied ({self.accounts_changed} changed, {self.snapshot_changes} "
                    f"snapshot changes); the next run starts with {self.resume_from}")
        if not self.ok:
            return f"{self.source}: nothing changed: {self.reason}"
        what = (f"{self.artifacts_changed} artifacts, {self.groups_changed} groups"
                if self.source == "ownership" else f"{self.accounts_changed} accounts")
        return (f"{self.source}: {self.fetched} fetched, {what} changed, "
                f"{self.users_affected} users affected, {self.snapshot_changes} snapshot "
                f"changes published, in {self.seconds:.2f}s"
                + (f" ({self.skipped} unusable entries skipped)" if self.skipped else "")
                + (f" ({self.failed} accounts could not be fetched: left as they were)"
                   if self.failed else "")
                + (f" ({self.not_reached} {self._what()} not reached in time: left as they "
                   f"were, the next run starts with {self.resume_from})"
                   if self.not_reached else ""))

    def _what(self) -> str:
        return "groups" if self.source == "ownership" else "accounts"


def _refuse(engine: Engine, report: SyncReport, reason: str, started: float) -> SyncReport:
    report.ok, report.reason = False, reason
    report.seconds = time.perf_counter() - started
    log.error("%s sync refused: %s", report.source, reason)
    ostore.record_sync(engine, report.source, ok=False, error=reason, detail=report.as_dict())
    return report


def resume_point(engine: Engine, source: str) -> str | None:
    """Where the next run of ``source`` starts: the first group or account the last one
    did not reach (None: from the first)."""
    value = ostore.sync_detail(engine, source).get("resume_from")
    return value if isinstance(value, str) else None


def reconcile_ownership(engine: Engine, store: Any, fetch: Callable[[], Ownership], *,
                        max_drop: float = DEFAULT_MAX_DROP,
                        with_groups: bool = True, start_at: str | None = None) -> SyncReport:
    """Fetch the ownership data and make the database (and the snapshot) agree.

    ``with_groups``: the fetch includes group members (FASJSON); without, the
    database's membership is left as it is.  Groups the fetch ran out of time for
    (``Ownership.not_reached``) keep their members; the report's ``resume_from``
    names the first, for the next fetch to start with (``start_at``, the group this
    one started with, is kept when the run is refused).
    """
    started = time.perf_counter()
    fetched_at = datetime.now(UTC)  # what the fetch says is true as of (about) now
    if not with_groups:  # no group is fetched: where the next fetch of them starts stays
        start_at = resume_point(engine, "ownership")
    report = SyncReport(source="ownership", ok=True, resume_from=start_at)
    try:
        data = fetch()
    except FmnError as exc:
        return _refuse(engine, report, f"fetch failed: {exc}", started)
    report.fetched, report.skipped = data.artifact_count(), data.skipped
    partial = with_groups and bool(data.not_reached)
    report.not_reached = len(data.not_reached) if partial else 0
    # One writer with live updates (fmn.ownership.live.applying_alone): a live message
    # older than this fetch that passed its staleness check must not write after the
    # fetch's result, nor one written meanwhile be missing from what it is compared to.
    with applying_alone(engine) as alone:
        current = ostore.load_ownership(alone.engine)
        for group in data.not_reached:  # out of time before it: as the database has it
            if with_groups and group in current.groups:
                data.groups[group] = current.groups[group]
        reason = implausible("owner map", current.artifact_count(), data.artifact_count(), max_drop)
        for atype in ARTIFACT_TYPES:
            before, after = len(current.owners.get(atype, {})), len(data.owners.get(atype, {}))
            reason = reason or (implausible(f"owner map's {atype}", before, after, max_drop)
                                if before >= 20 else None)
        # Every package kept but its maintainers gone is no more believable than the
        # packages gone: count the (artifact, owner) pairs lost too, users on their own.
        for label, users_only in (("owner map's owners", False),
                                  ("owner map's user owners", True)):
            reason = reason or pairs_dropped(
                label, owner_pairs(current.owners, users_only=users_only),
                owner_pairs(data.owners, users_only=users_only), max_drop)
        if with_groups and current.membership_count():
            reason = reason or implausible("group membership", current.membership_count(),
                                           data.membership_count(), max_drop)
        if reason:
            return _refuse(engine, report, reason, started)
        if with_groups:  # applied: the next fetch starts with the first group not reached
            report.resume_from = data.not_reached[0] if partial else None
        delta = OwnershipDelta()
        diff_owners(current.owners, data.owners, delta)
        if with_groups:
            diff_groups(current.groups, data.groups, delta)
        report.artifacts_changed = delta.artifact_count()
        report.groups_changed = len(delta.groups)
        report.users_affected = len(affected_users(delta, current.owners, current.groups))
        if delta:
            ostore.apply_delta(alone.engine, delta)

            def publish() -> None:
                report.snapshot_changes = publish_delta(store, delta)

            alone.after_commit(publish)
        # A live message sent before the fetch began is in what it fetched: one that
        # arrives late (SQS retries, a dead-letter redrive) must not undo it.
        # (Not for the members when some groups were not reached: their live messages
        # are all that is newer than the database.)
        members = with_groups and not partial
        ostore.stamp_live(alone.engine, "reconcile", {"ownership": fetched_at, **(
            {"members": fetched_at} if members else {})})
        # What it fetched replaced what live messages had set: a stamp ahead of the
        # fetch (a publisher's clock ahead, a message applied during the fetch) would
        # leave later genuine messages stale; it cannot outlive a reconcile.
        ostore.reset_live_stamps(alone.engine, ("artifact", "member") if members
                                 else ("artifact",), fetched_at)
    report.seconds = time.perf_counter() - started
    ostore.record_sync(engine, "ownership", ok=True, error=None, detail=report.as_dict())
    log.info("%s", report.summary())
    return report


#: Accounts that could not be fetched one after another because the source failed (no
#: connection, a timeout, a 5xx or 429 after the retries: ``SourceError.source_down``),
#: after which the account sync stops (recorded as not done, and a SyncRefused metric):
#: the source is down, and each account's retries would only run the job into its
#: timeout, unrecorded.  What it fetched before is applied; the next run starts with
#: the first account of the failures.
MAX_FAILED_IN_A_ROW = 20


#: How often every account is checked: a pass over all of them begins at most this
#: often (the scheduled job runs hourly; a pass longer than one run goes on in the next)
ACCOUNT_PASS_EVERY = timedelta(hours=23)

_NOT_REACHED = object()


def _parse_time(value: Any) -> datetime | None:
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


def account_pass(engine: Engine, now: datetime | None = None) -> tuple[bool, str | None,
                                                                       str | None]:
    """Whether the scheduled account sync has work, and from where: ``(due, start_at,
    pass_started_at)``.

    Due when the last pass did not finish (it goes on from ``resume_from``, the first
    account the last run did not reach or could not fetch, in the same pass; with
    none, a new pass begins), and when the last finished pass began
    :data:`ACCOUNT_PASS_EVERY` ago.  Only a run over every account finishes a pass
    (``pass_finished_at``); a run over named accounts changes nothing of it.
    """
    now = now or datetime.now(UTC)
    detail = ostore.sync_detail(engine, "accounts")
    resume_from, began = detail.get("resume_from"), detail.get("pass_started_at")
    if resume_from:
        return True, resume_from, began
    last = _parse_time(began) if detail.get("pass_finished_at") else None
    if last is None:  # never finished (never ran, refused, or recorded before passes)
        return True, None, None
    return now - last >= ACCOUNT_PASS_EVERY, None, None


def reconcile_accounts(engine: Engine, store: Any, fetch_user: Callable[[str], Account], *,
                       names: Iterable[str] | None = None, max_drop: float = DEFAULT_MAX_DROP,
                       workers: int = 8, progress: Progress | None = None,
                       out_of_time: Callable[[], bool] | None = None,
                       start_at: str | None = None,
                       pass_started_at: str | None = None) -> SyncReport:
    """Fetch the account of every user (or of ``names``) and store what changed.

    An account that cannot be fetched (after the source's retries) is left as
    it was and counted (``failed``); the run is refused when none could be, and
    stops after :data:`MAX_FAILED_IN_A_ROW` failures in a row of the source (what it
    fetched before is applied, the run recorded as not done).  The drop check
    compares what was fetched with what the database held for those same accounts.
    A user whose account is now locked or deleted is published with nothing to
    receive; one whose account is usable again gets their rules back.

    Every user's account is fetched in name order, from ``start_at`` on (a pass that
    did not finish going on, :func:`account_pass`); once ``out_of_time()`` says so no
    more are started, what was fetched is applied, and the report's ``resume_from``
    names the first account not reached.  A run over ``names`` keeps the pass where
    it was.
    """
    started = time.perf_counter()
    report = SyncReport(source="accounts", ok=True)
    if names is None:
        wanted = sorted(ostore.user_names(engine))
        if start_at is not None:
            wanted = [n for n in wanted if n >= start_at]
        report.pass_started_at = (pass_started_at if start_at is not None and pass_started_at
                                  else datetime.now(UTC).isoformat(timespec="seconds"))
        report.resume_from = start_at  # where a refused run is retried from
    else:
        wanted = list(names)
        detail = ostore.sync_detail(engine, "accounts")
        report.resume_from = detail.get("resume_from")
        report.pass_started_at = detail.get("pass_started_at")
        report.pass_finished_at = detail.get("pass_finished_at")
    fetched: list[Account] = []
    errors: list[str] = []
    not_reached: list[str] = []

    def fetch_one(name: str) -> Account | FmnError | object:
        if out_of_time is not None and out_of_time():
            return _NOT_REACHED
        try:
            return fetch_user(name)
        except FmnError as exc:  # retried already (sources.RetryPolicy)
            return exc

    in_a_row = 0
    stopped: str | None = None
    resume_at: str | None = None
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, (name, answer) in enumerate(zip(wanted, pool.map(fetch_one, wanted),
                                               strict=True)):
            if answer is _NOT_REACHED:
                not_reached.append(name)
            elif isinstance(answer, FmnError):
                errors.append(f"{name}: {answer}")
                # only the source failing counts: an account it answers oddly for, however
                # many of them sit together, must not stop every day's sync
                in_a_row = in_a_row + 1 if getattr(answer, "source_down", False) else 0
            else:
                assert isinstance(answer, Account)
                fetched.append(answer)
                in_a_row = 0
            if progress is not None:
                progress(i + 1, len(wanted))
            if in_a_row >= MAX_FAILED_IN_A_ROW:  # the source is down, not one account
                pool.shutdown(wait=True, cancel_futures=True)
                # not done: the failures' first account and every one after it
                not_reached, resume_at = wanted[i + 1:], wanted[i - in_a_row + 1]
                stopped = (f"stopped: {in_a_row} accounts in a row could not be fetched, "
                           f"the source is failing: {errors[-1]}")
                break
    report.fetched, report.failed = len(fetched), len(errors)
    report.not_reached = len(not_reached)
    if not_reached and not stopped:
        log.warning("accounts: out of time after %d of %d; the next run starts with %s",
                    len(wanted) - len(not_reached), len(wanted), min(not_reached))
    if errors:
        # An account that could not be fetched stays as it was; the others are
        # applied (a locked account must not keep receiving because of one 503).
        log.warning("accounts: %d of %d could not be fetched, left as they were: %s",
                    len(errors), len(wanted), "; ".join(errors[:5]))
        if not fetched:
            if names is None and resume_at is not None:
                report.resume_from = resume_at
            return _refuse(engine, report, stopped or f"fetch failed: none of the "
                           f"{len(wanted)} accounts could be fetched: {errors[0]}", started)
    known = ostore.load_accounts(engine, [a.username for a in fetched])
    usable_before = sum(1 for a in fetched if not (
        known[a.username].blocked if a.username in known else False))
    usable_after = sum(1 for a in fetched if not a.blocked)
    # Every account of a whole pass locked or gone is the source answering nothing;
    # part of one (named accounts, `fmn sync accounts --user NAME` to switch a locked
    # account off now; the tail of a pass that ran out of time) may all be, as long as
    # they are few.
    whole = names is None and start_at is None and not not_reached and not stopped
    if usable_before and (whole or too_many_lost(usable_before,
                                                 usable_before - usable_after, max_drop)):
        reason = implausible("usable accounts", usable_before, usable_after, max_drop)
        if reason:
            return _refuse(engine, report, reason, started)
    if names is None:  # the pass goes on from the first account not done, or is done
        report.resume_from = resume_at or (min(not_reached) if not_reached else None)
        if report.resume_from is None:
            report.pass_finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    changed = [a for a in fetched if a.username not in known or not known[a.username].same_as(a)]
    report.accounts_changed = len(changed)
    if changed:
        _, revisions = ostore.apply_accounts(engine, changed)
        report.users_affected = len(revisions)
        report.snapshot_changes = publish_account_users(engine, store, revisions)
    report.seconds = time.perf_counter() - started
    if stopped:
        report.ok, report.reason, report.stopped = False, stopped, True
        log.error("%s", report.summary())
    else:
        log.info("%s", report.summary())
    ostore.record_sync(engine, "accounts", ok=report.ok, error=report.reason,
                       detail=report.as_dict())
    return report


def status(engine: Engine) -> dict[str, Any]:
    """The last reconcile of each kind and the last live update (``fmn status``)."""
    return ostore.sync_states(engine)


def format_status(states: dict[str, Any]) -> str:
    lines = []
    for source in ostore.SOURCES:
        s = states.get(source)
        if s is None:
            lines.append(f"{source:<10} never")
            continue
        d = s.get("detail") or {}
        if source == "live":
            what = (f"{d.get('topic')}: {d.get('artifacts', 0)} artifacts, "
                    f"{d.get('groups', 0)} groups, {d.get('users_affected', 0)} users")
        elif d.get("stopped"):
            what = (f"STOPPED: {s['error']}; {d.get('fetched', 0)} fetched before were applied "
                    f"({d.get('accounts_changed', 0)} accounts changed), the next run starts "
                    f"with {d.get('resume_from')}")
        elif s.get("error"):
            what = f"REFUSED: {s['error']}"
        else:
            what = (f"{d.get('fetched', 0)} fetched, {d.get('artifacts_changed', 0)} artifacts / "
                    f"{d.get('groups_changed', 0)} groups / {d.get('accounts_changed', 0)} "
                    f"accounts changed, {d.get('snapshot_changes', 0)} snapshot changes"
                    + (f", {d['failed']} accounts not fetched" if d.get("failed") else "")
                    + (f", {d['not_reached']} not reached in time (the next run starts with "
                       f"{d.get('resume_from')})" if d.get("not_reached") else ""))
        lines.append(f"{source:<10} last {s.get('attempted_at')}, last success "
                     f"{s.get('succeeded_at') or 'never'}: {what}")
    return "\n".join(lines)
