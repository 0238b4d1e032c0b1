"""``fmn sync``: the ownership and account reconcile from the command line.

``fmn sync ownership [--from FILE]``  dist-git's owner map (or a file in its shape) and
                                      FASJSON's group members -> the database -> the snapshot
``fmn sync accounts [--user NAME]``   every user's Fedora account (FASJSON)
``fmn sync owner-map``                a generated Fedora-sized owner map (``--day`` applies a
                                      day of changes), for benchmarks

Exit status: 0 applied (or nothing to change), 1 refused (the fetch failed or
looked wrong: nothing changed), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import orjson

from fmn.errors import FmnError

EXIT_OK, EXIT_REFUSED = 0, 1


def _engine_and_store(args: argparse.Namespace) -> tuple[Any, Any]:
    from fmn import db
    from fmn.settings import Settings
    from fmn.snapshot.store import RedisSnapshotStore

    settings = Settings.from_env()
    engine = db.make_engine(args.database or settings.database_url)
    store = None
    if not args.no_publish:
        store = RedisSnapshotStore.from_url(args.redis or settings.redis_url,
                                            settings.snapshot_prefix)
        if store.current_id() is None:
            print("fmn sync: no snapshot in Redis yet: the database is updated, the next "
                  "`fmn snapshot publish` carries it", file=sys.stderr)
            store = None
    return engine, store


class _Progress:
    """A rich progress bar on stderr (nothing when stderr is not a terminal)."""

    def __init__(self, label: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.progress = Progress("[progress.description]{task.description}", BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 transient=True, disable=not sys.stderr.isatty())
        self.task = self.progress.add_task(label, total=None)

    def __enter__(self) -> _Progress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, done: int, total: int | None) -> None:
        self.progress.update(self.task, completed=done, total=total)


def _report(args: argparse.Namespace, report: Any) -> int:
    print(report.summary(), file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    return EXIT_OK if report.ok else EXIT_REFUSED


def cmd_sync_ownership(args: argparse.Namespace) -> int:
    from fmn.ownership.data import Ownership, parse_owner_map
    from fmn.ownership.reconcile import reconcile_ownership
    from fmn.ownership.settings import SyncSettings
    from fmn.ownership.sources import DistGit, FasJson, SourceError, fetch_ownership, make_session

    s = SyncSettings.from_env()
    max_drop = s.max_drop if args.max_drop is None else args.max_drop
    engine, store = _engine_and_store(args)

    if args.from_file:
        def fetch() -> Ownership:
            try:
                raw = Path(args.from_file).read_bytes()
                return parse_owner_map(orjson.loads(raw))
            except (OSError, orjson.JSONDecodeError) as exc:
                raise SourceError(f"{args.from_file}: {exc}") from exc
        report = reconcile_ownership(engine, store, fetch, max_drop=max_drop, with_groups=False)
        return _report(args, report)

    from fmn.ownership.store import tracked_groups

    distgit = DistGit(s.distgit_url, make_session("none"), s.timeout_s)
    fasjson = None if args.no_groups else FasJson(s.fasjson_url, make_session(s.fasjson_auth),
                                                  s.timeout_s)
    rule_groups = tracked_groups(engine)
    with _Progress("group members") as progress:
        report = reconcile_ownership(
            engine, store, lambda: fetch_ownership(distgit, fasjson, rule_groups, progress),
            max_drop=max_drop, with_groups=fasjson is not None)
    return _report(args, report)


def cmd_sync_accounts(args: argparse.Namespace) -> int:
    from fmn.ownership.reconcile import reconcile_accounts
    from fmn.ownership.settings import SyncSettings
    from fmn.ownership.sources import FasJson, make_session

    s = SyncSettings.from_env()
    engine, store = _engine_and_store(args)
    fasjson = FasJson(s.fasjson_url, make_session(s.fasjson_auth), s.timeout_s)
    with _Progress("accounts") as progress:
        report = reconcile_accounts(
            engine, store, fasjson.user, names=args.user or None,
            max_drop=s.max_drop if args.max_drop is None else args.max_drop,
            workers=s.workers, progress=progress)
    return _report(args, report)


def cmd_sync_owner_map(args: argparse.Namespace) -> int:
    from fmn.ownership.generate import day_of_changes, owner_map

    doc: dict[str, Any] = owner_map(args.users, args.seed)
    for day in range(args.days):
        doc = day_of_changes(doc, seed=args.seed * 1000 + day)
    sys.stdout.buffer.write(orjson.dumps(doc))
    sys.stdout.buffer.write(b"\n")
    return EXIT_OK


def add_parsers(sub: Any) -> None:
    sync = sub.add_parser("sync", help="ownership, groups and accounts from Fedora's sources")
    ssub = sync.add_subparsers(dest="sync_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--database", help="database URL (default: FMN_DATABASE_URL)")
        p.add_argument("--redis", help="Redis URL of the snapshot (default: REDIS_URL)")
        p.add_argument("--no-publish", action="store_true",
                       help="update the database only, not the snapshot")
        p.add_argument("--max-drop", type=float,
                       help="refuse a fetch that lost more than this share of the entries "
                            "(default: FMN_SYNC_MAX_DROP, 0.10)")
        p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = ssub.add_parser("ownership", help="reconcile package ownership and group members")
    common(p)
    p.add_argument("--from", dest="from_file", metavar="FILE",
                   help="an owner map in pagure_owner_alias.json's shape instead of dist-git "
                        "(group members are left alone)")
    p.add_argument("--no-groups", action="store_true",
                   help="do not fetch group members from FASJSON")
    p.set_defaults(func=cmd_sync_ownership)

    p = ssub.add_parser("accounts", help="reconcile the users' Fedora accounts (FASJSON)")
    common(p)
    p.add_argument("--user", action="append", help="only this user (repeatable)")
    p.set_defaults(func=cmd_sync_accounts)

    p = ssub.add_parser("owner-map", help="write a generated Fedora-sized owner map")
    p.add_argument("--users", type=int, default=10_000,
                   help="generated users the owners are drawn from (as fmn prefs generate)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--days", type=int, default=0,
                   help="apply this many realistic days of changes")
    p.set_defaults(func=cmd_sync_owner_map)


def status_text(database_url: str) -> str | None:
    """The sync lines of ``fmn status``; None when the database cannot say."""
    from sqlalchemy.engine import make_url

    from fmn import db
    from fmn.ownership.reconcile import format_status, status

    try:
        url = make_url(database_url)
        if url.get_backend_name() == "sqlite" and not Path(url.database or "").exists():
            return None  # asking would create an empty database file
        return format_status(status(db.make_engine(database_url)))
    except (FmnError, Exception):  # no database yet, not migrated: nothing to show
        return None


__all__ = ["add_parsers", "status_text"]
