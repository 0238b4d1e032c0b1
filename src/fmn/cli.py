"""The ``fmn`` command line.

``fmn run``             the main job on embedded defaults, with a summary
``fmn match``           the notifications for messages and preferences (spec JSON Lines)
``fmn metadata``        the spec section 1 fields of each message
``fmn prefs generate``  a realistic Fedora-scale preferences document
``fmn prefs import``    load a preferences document into the database
``fmn prefs export``    write the database's preferences document
``fmn snapshot publish`` compile the database into a snapshot in Redis
``fmn up``              the whole pipeline on this machine (LocalStack or moto, Redis, bridge,
                        functions)
``fmn status``          the running local stack's queues and counters (``--json``)
``fmn bridge``          forward fedmsg (ZeroMQ) and fedora-messaging (AMQP) to SQS
``fmn replay``          publish recorded messages on a local fedmsg endpoint or RabbitMQ
``fmn bench match``     matcher throughput, latency, snapshot build time and memory
``fmn bench preview``   rule preview latency over a 100,000-message window
``fmn bench email``     CPU to render and serialize one notification mail
``fmn bench bridge``    the bridge's SQS sink a message, with and without its journal
``fmn feed-url``        a user's live feed address, with a signed token
``fmn sync``            ownership, groups and accounts from dist-git and FASJSON
``fmn ledger``          a local run's accounts: every message once, nothing lost or twice
``fmn loadtest``        the 2016 15,000-message test end to end (``fmn loadtest --help``)
``fmn dlq``             the dead-letter queues: ``list``, ``show QUEUE``, ``redrive QUEUE``
``fmn doctor``          check that every part of a stage answers and agrees, one line each

Errors in the input are reported on stderr with the file and line at fault;
the exit status is 0 when everything was processed, 1 when some input was
refused (the rest is still processed), 2 for a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from fmn.errors import FmnError, InvalidMessage
from fmn.gcpause import gc_paused
from fmn.message import Message
from fmn.prefs import InvalidPreferences, Preferences, dump_document, parse_document

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


def _fail(message: str) -> int:
    print(f"fmn: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def read_preferences(path: str) -> Preferences:
    """A preferences document from a file (``-`` for stdin), validated."""
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise FmnError(f"cannot read preferences {path}: {exc.strerror}") from exc
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FmnError(f"{path}: not JSON: {exc}") from exc
    try:
        with gc_paused():
            return parse_document(doc)
    except InvalidPreferences as exc:
        raise FmnError(f"{path}: invalid preferences: {exc}") from exc


def iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for every non-blank line of a JSON Lines file."""
    stream: BinaryIO
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    try:
        for lineno, line in enumerate(stream, 1):
            if line.strip():
                yield lineno, line
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _write_jsonl(out: BinaryIO, obj: Any) -> None:
    # json's own layout, sorted keys: byte for byte what the shared expected files hold
    out.write(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode())
    out.write(b"\n")


# --------------------------------------------------------------------------
# commands


class MessageReader:
    """The messages of a JSON Lines file; a line that is no bus message is
    reported on stderr with its line number, counted, and skipped."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.refused = 0

    def __iter__(self) -> Iterator[Message]:
        from fmn.metadata import parse

        for lineno, line in iter_lines(self.path):
            try:
                yield parse(line)
            except InvalidMessage as exc:
                self.refused += 1
                print(f"{self.path}:{lineno}: refused: {exc}", file=sys.stderr)


def cmd_match(args: argparse.Namespace) -> int:
    from fmn.matcher import make_matcher

    matcher = make_matcher(args.engine, read_preferences(args.prefs))
    out = sys.stdout.buffer
    messages = MessageReader(args.messages)
    for message in messages:
        for notification in matcher.match(message):
            _write_jsonl(out, notification.to_json())
    out.flush()
    return EXIT_PARTIAL if messages.refused else EXIT_OK


def cmd_metadata(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    messages = MessageReader(args.messages)
    for message in messages:
        _write_jsonl(out, message.metadata())
    out.flush()
    return EXIT_PARTIAL if messages.refused else EXIT_OK


def cmd_prefs_generate(args: argparse.Namespace) -> int:
    from fmn.generate import generate_preferences

    if args.users < 1:
        return _fail("--users must be at least 1")
    prefs = generate_preferences(args.users, args.seed)
    with gc_paused():
        doc = dump_document(prefs)
    sys.stdout.buffer.write(orjson.dumps(doc))
    sys.stdout.buffer.write(b"\n")
    return EXIT_OK


def _database_url(args: argparse.Namespace) -> str:
    from fmn.settings import Settings

    return str(args.database or Settings.from_env().database_url)


def cmd_prefs_import(args: argparse.Namespace) -> int:
    from fmn import db

    prefs = read_preferences(args.file)
    url = _database_url(args)
    engine = db.make_engine(url)
    db.upgrade(engine)
    db.import_preferences(engine, prefs)  # validated above; no second parse
    print(f"imported {len(prefs.users)} users into {engine.url!r}", file=sys.stderr)
    return EXIT_OK


def cmd_prefs_export(args: argparse.Namespace) -> int:
    from fmn import db

    engine = db.make_engine(_database_url(args))
    sys.stdout.buffer.write(orjson.dumps(db.export_document(engine), option=orjson.OPT_INDENT_2))
    sys.stdout.buffer.write(b"\n")
    return EXIT_OK


def cmd_snapshot_publish(args: argparse.Namespace) -> int:
    from fmn import db
    from fmn.settings import Settings
    from fmn.snapshot.store import RedisSnapshotStore
    from fmn.snapshot.sync import publish_full

    settings = Settings.from_env()
    engine = db.make_engine(args.database or settings.database_url)
    store = RedisSnapshotStore.from_url(args.redis or settings.redis_url,
                                        settings.snapshot_prefix)
    data = publish_full(engine, store)
    print(f"published snapshot {data.id} ({len(data.users)} users with live rules)",
          file=sys.stderr)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from fmn.run import run

    return run(users=args.users, seed=args.seed, messages=args.messages, out_path=args.out)


def run_bridge(argv: Sequence[str]) -> int:
    """``fmn bridge ...``: the bridge has its own options (``fmn bridge --help``)."""
    try:
        from fmn_bridge.cli import main as bridge_main
    except ImportError as exc:  # the bridge is its own deployable
        return _fail(f"the bridge is not installed here ({exc}); pip install -e .")
    result: int = bridge_main(list(argv))
    return result


def run_loadtest(argv: Sequence[str]) -> int:
    """``fmn loadtest ...``: the load test has its own options (``fmn loadtest --help``)."""
    try:
        from loadtest.cli import main as loadtest_main
    except ImportError as exc:  # installed without the repository's loadtest/
        return _fail(f"the load test is not installed here ({exc}); pip install -e .")
    result: int = loadtest_main(list(argv))
    return result


def cmd_up(args: argparse.Namespace) -> int:
    from fmn.local.stack import StackOptions, run_up
    from fmn.settings import Settings

    options = StackOptions(users=args.users, seed=args.seed, workdir=Path(args.workdir),
                           log_dir=Path(args.workdir) / "logs", matrix=True,
                           aws=args.aws)
    return run_up(Settings.from_env(), options, replay=args.replay)


def cmd_status(args: argparse.Namespace) -> int:
    from fmn.local.stack import format_status, read_status
    from fmn.ownership.cli import status_text
    from fmn.ownership.reconcile import status as sync_status
    from fmn.settings import Settings

    sync = status_text(Settings.from_env().database_url)
    try:
        doc = read_status(Path(args.workdir))
    except RuntimeError as exc:
        if sync is not None and not args.json:
            print(sync)
        return _fail(str(exc))
    if args.json and sync is not None:
        from fmn import db

        doc["sync"] = sync_status(db.make_engine(Settings.from_env().database_url))
    print(json.dumps(doc, indent=2) if args.json else format_status(doc)
          + (f"\n{sync}" if sync else ""))
    return EXIT_OK


def _ops_settings(args: argparse.Namespace) -> Any:
    """The environment's settings; without AWS_ENDPOINT_URL, those of the local stack
    running here (``fmn up``), if one is."""
    import dataclasses
    import os

    from fmn.local.stack import LOCAL_SETTINGS, read_status
    from fmn.settings import Settings

    settings = Settings.from_env()
    if settings.aws_endpoint_url is not None:
        return settings
    try:
        shared = read_status(Path(args.workdir)).get("settings") or {}
    except RuntimeError:
        return settings  # AWS itself
    print(f"fmn: the local stack's AWS at {shared.get('aws_endpoint_url')} "
          f"(queues {shared.get('queue_prefix')}*)", file=sys.stderr)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # emulators take any
        os.environ.setdefault(key, "test")
    return dataclasses.replace(settings, **{k: v for k, v in shared.items()
                                            if k in LOCAL_SETTINGS})


def cmd_dlq(args: argparse.Namespace) -> int:
    from fmn.ops.cli import dlq

    return dlq(args, _ops_settings(args))


def cmd_doctor(args: argparse.Namespace) -> int:
    from fmn.ops.cli import doctor

    return doctor(args, _ops_settings(args))


def cmd_feed_url(args: argparse.Namespace) -> int:
    from fmn.auth import feed_url
    from fmn.local.stack import read_status
    from fmn.settings import Settings

    base = args.url
    if base is None:
        try:
            base = read_status(Path(args.workdir)).get("feed_url")
        except RuntimeError as exc:
            return _fail(f"{exc}; or give the endpoint with --url")
    if not base:
        return _fail("the local stack runs no feed endpoint; give one with --url")
    try:
        print(feed_url(base, args.user, Settings.from_env().secret_key))
    except ValueError as exc:
        return _fail(str(exc))
    return EXIT_OK


def cmd_ledger(args: argparse.Namespace) -> int:
    from fmn.ledger import account, format_report

    try:
        report = account(Path(args.workdir) / "ledger")
    except RuntimeError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(format_report(report))
    return EXIT_OK if report.ok else EXIT_PARTIAL


def cmd_replay(args: argparse.Namespace) -> int:
    from fmn.local import replay

    path = Path(args.file)
    if args.rate is not None and args.rate <= 0:
        return _fail("--rate must be a positive number of messages per second")
    journal = None
    try:  # a local stack runs here: journal what is published, for its ledger
        from fmn.ledger import Journal
        from fmn.local.stack import read_status

        read_status(Path(args.workdir))
        journal = Journal(Path(args.workdir) / "ledger")
    except RuntimeError:
        pass
    if args.to == "fedmsg":
        replay.replay_fedmsg(path, args.endpoint or replay.DEFAULT_FEDMSG_ENDPOINT, args.rate,
                             journal=journal)
    else:
        replay.replay_amqp(path, args.endpoint or replay.DEFAULT_AMQP_URL, args.rate,
                           journal=journal)
    return EXIT_OK


def cmd_bench_stack(args: argparse.Namespace) -> int:
    from fmn.local.bench_stack import run

    if args.messages < 1 or args.users < 1:
        return _fail("--messages and --users must be at least 1")
    return run(messages=args.messages, users=args.users, json_path=args.json)


def cmd_bench_preview(args: argparse.Namespace) -> int:
    from fmn.preview.bench import main as bench_preview

    result: int = bench_preview(args)
    return result


def cmd_bench_email(args: argparse.Namespace) -> int:
    from fmn.bench import default_message_files
    from fmn.delivery.bench import run

    if args.fanout < 1 or not 0 < args.duration < math.inf:
        return _fail("--fanout must be at least 1 and --duration a number of seconds above 0")
    files = [Path(m) for m in args.messages] if args.messages else default_message_files()
    if args.send:
        from fmn.delivery.bench import run_send
        from fmn.settings import Settings

        return run_send(files, Settings.from_env().redis_url, fanout=args.fanout,
                        duration=args.duration, json_path=args.json)
    return run(files, fanout=args.fanout, duration=args.duration, json_path=args.json)


def cmd_bench_bridge(args: argparse.Namespace) -> int:
    from fmn.bench import default_message_files
    from fmn_bridge.bench import run

    if args.messages < 1 or args.rounds < 1:
        return _fail("--messages and --rounds must be at least 1")
    files = [Path(m) for m in args.files] if args.files else default_message_files()
    return run(files, messages=args.messages, rounds=args.rounds, json_path=args.json)


def cmd_bench_match(args: argparse.Namespace) -> int:
    from fmn.bench import run_match_benchmark

    try:
        users = [int(u) for u in str(args.users).split(",")]
    except ValueError:
        return _fail(f"--users takes user counts such as 10000 or 10000,100000, not "
                     f"{args.users!r}")
    if any(u < 1 for u in users):
        return _fail("--users counts must be at least 1")
    return run_match_benchmark(users=users, seed=args.seed, messages=args.messages,
                               duration=args.duration, naive_messages=args.naive_messages,
                               json_path=args.json)


# --------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    from fmn.matcher import ENGINES

    parser = argparse.ArgumentParser(prog="fmn", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("match", help="print the notifications for messages and preferences")
    p.add_argument("--prefs", required=True, help="preferences document (JSON), - for stdin")
    p.add_argument("--messages", required=True, help="messages (JSON Lines), - for stdin")
    p.add_argument("--engine", choices=ENGINES, default="indexed")
    p.set_defaults(func=cmd_match)

    p = sub.add_parser("run", help="the main job on embedded defaults, with a summary")
    p.add_argument("--users", type=int, default=10_000, help="generated users (default 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--messages", action="append",
                   help="messages JSON Lines (repeatable; default: the shared data)")
    p.add_argument("--out", default="var/notifications.jsonl",
                   help="where to write the notifications")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("metadata", help="print the spec section 1 fields of each message")
    p.add_argument("--messages", required=True, help="messages (JSON Lines), - for stdin")
    p.set_defaults(func=cmd_metadata)

    prefs = sub.add_parser("prefs", help="preferences documents and the database")
    psub = prefs.add_subparsers(dest="prefs_command", required=True, metavar="ACTION")
    p = psub.add_parser("generate", help="write a realistic generated preferences document")
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_prefs_generate)
    p = psub.add_parser("import", help="replace the database's preferences with a document")
    p.add_argument("file", help="preferences document (JSON), - for stdin")
    p.add_argument("--database", help="SQLAlchemy URL (default: FMN_DATABASE_URL or SQLite)")
    p.set_defaults(func=cmd_prefs_import)
    p = psub.add_parser("export", help="write the database's preferences document")
    p.add_argument("--database", help="SQLAlchemy URL (default: FMN_DATABASE_URL or SQLite)")
    p.set_defaults(func=cmd_prefs_export)

    snap = sub.add_parser("snapshot", help="the preferences snapshot in Redis")
    ssub = snap.add_subparsers(dest="snapshot_command", required=True, metavar="ACTION")
    p = ssub.add_parser("publish", help="compile the database into a new current snapshot")
    p.add_argument("--database", help="SQLAlchemy URL (default: FMN_DATABASE_URL or SQLite)")
    p.add_argument("--redis", help="Redis URL (default: REDIS_URL)")
    p.set_defaults(func=cmd_snapshot_publish)

    p = sub.add_parser("up", help="the whole pipeline on this machine, on embedded defaults")
    p.add_argument("--users", type=int, default=2000, help="generated demo users (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replay", action="store_true",
                   help="replay the shared Fedora messages once the stack is up")
    p.add_argument("--workdir", default="var/stack", help="status file, bridge config and log")
    p.add_argument("--aws", choices=("auto", "localstack", "moto"), default="auto",
                   help="the local AWS: LocalStack (alarms evaluated, CloudFormation) or the "
                        "moto server; auto: AWS_ENDPOINT_URL if it answers, else LocalStack "
                        "where set up (scripts/localstack.sh), else moto")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("status", help="the running local stack's queues and counters")
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    p.add_argument("--workdir", default="var/stack")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("feed-url", help="a user's live feed address with a signed token "
                                        "(curl -N it, or open it with EventSource)")
    p.add_argument("user")
    p.add_argument("--url", help="the feed endpoint (default: the running local stack's)")
    p.add_argument("--workdir", default="var/stack")
    p.set_defaults(func=cmd_feed_url)

    p = sub.add_parser("ledger", help="a local run's accounts: every bus message once, every "
                                      "notification delivered, waiting or dead-lettered, none "
                                      "twice (exit 1 if anything is lost or duplicated)")
    p.add_argument("--workdir", default="var/stack",
                   help="the run's directory (its journal is WORKDIR/ledger)")
    p.add_argument("--json", action="store_true", help="the whole report as JSON")
    p.set_defaults(func=cmd_ledger)

    # (parsed by the load test itself: see main)
    sub.add_parser("loadtest", help="the 2016 15,000-message test end to end, with the report, "
                                    "plots and the bill (fmn loadtest --help)")

    dlq = sub.add_parser("dlq", help="the dead-letter queues: list, show, redrive")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    p = dsub.add_parser("list", help="every queue's dead-letter queue and its messages")
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    p.add_argument("--workdir", default="var/stack")
    p.set_defaults(func=cmd_dlq)
    p = dsub.add_parser("show", help="dead letters, readable (they stay in the queue)")
    p.add_argument("queue", help="a queue's name (incoming, email, ...; prefixed or -dlq too)")
    p.add_argument("--limit", type=int, default=10, help="at most this many (default 10)")
    p.add_argument("--json", action="store_true", help="JSON Lines, one per dead letter")
    p.add_argument("--workdir", default="var/stack")
    p.set_defaults(func=cmd_dlq)
    p = dsub.add_parser("redrive", help="move a dead-letter queue's messages back to its queue")
    p.add_argument("queue", help="a queue's name (incoming, email, ...; prefixed or -dlq too)")
    p.add_argument("--workdir", default="var/stack")
    p.set_defaults(func=cmd_dlq)

    p = sub.add_parser("doctor", help="check that Redis, the database, the queues, the alarms "
                                      "and the snapshot answer and agree (one line each)")
    p.add_argument("--json", action="store_true", help="JSON Lines, one per check")
    p.add_argument("--workdir", default="var/stack")
    p.set_defaults(func=cmd_doctor)

    # (parsed by the bridge itself: see main)
    sub.add_parser("bridge", help="forward bus messages to the incoming SQS queue "
                                  "(fmn bridge --help)")

    p = sub.add_parser("replay", help="publish recorded messages on a local bus for the bridge")
    p.add_argument("file", help="messages (JSON Lines)")
    p.add_argument("--to", choices=("fedmsg", "amqp"), default="fedmsg")
    p.add_argument("--rate", type=float, help="messages per second (default: as fast as possible)")
    p.add_argument("--endpoint", help="ZeroMQ endpoint to bind (fedmsg) or AMQP URL (amqp)")
    p.add_argument("--workdir", default="var/stack",
                   help="a running fmn up's directory: its ledger journals what is published")
    p.set_defaults(func=cmd_replay)

    from fmn.ownership.cli import add_parsers as add_sync_parsers

    add_sync_parsers(sub)

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    p = bsub.add_parser("match", help="matcher speed, snapshot build time and memory")
    p.add_argument("--users", default="10000",
                   help="generated users; a comma list compares sizes (e.g. 10000,100000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--messages", action="append",
                   help="messages JSON Lines (repeatable; default: the shared data)")
    p.add_argument("--duration", type=float, default=3.0,
                   help="seconds spent on each timed loop (default 3)")
    p.add_argument("--naive-messages", type=int, default=60,
                   help="messages the naive engine is timed on (default 60)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_bench_match)
    p = bsub.add_parser("stack", help="end-to-end throughput of the local stack, and the "
                                      "moto server's own ceiling")
    p.add_argument("--messages", type=int, default=15_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_bench_stack)
    p = bsub.add_parser("email", help="CPU to render and serialize one notification mail")
    p.add_argument("--fanout", type=int, default=20,
                   help="recipients of each message, one after another (default 20)")
    p.add_argument("--duration", type=float, default=5.0,
                   help="seconds of rendering timed (default 5)")
    p.add_argument("--send", action="store_true",
                   help="the whole send: the send-once record on Redis (FMN_REDIS_URL) "
                        "and SMTP to a local mail sink")
    p.add_argument("--messages", action="append",
                   help="messages JSON Lines (repeatable; default: the shared data)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_bench_email)
    p = bsub.add_parser("bridge", help="the bridge's SQS sink a message, with and without "
                                       "its write-ahead journal")
    p.add_argument("--messages", type=int, default=100_000, help="messages a round")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each (default 3)")
    p.add_argument("--files", action="append", metavar="JSONL",
                   help="messages JSON Lines (repeatable; default: the shared data)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_bench_bridge)
    p = bsub.add_parser("preview", help="rule preview latency over a 100,000-message window")
    p.add_argument("--window", type=int, default=100_000, help="messages in the window")
    p.add_argument("--users", type=int, default=10_000,
                   help="generated users whose rules are previewed")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rules", type=int, default=3000, help="rules previewed")
    p.add_argument("--batch", type=int, default=100, help="messages per record batch")
    p.add_argument("--redis", help="Redis URL: build the window in Redis (default: in memory)")
    p.add_argument("--messages", action="append",
                   help="messages JSON Lines (repeatable; default: the shared data)")
    p.add_argument("--check-rules", type=int, default=300,
                   help="rules checked against the naive matcher")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_bench_preview)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bridge"]:
        return run_bridge(argv[1:])
    if argv[:1] == ["loadtest"]:
        return run_loadtest(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result: int = args.func(args)
        return result
    except FmnError as exc:
        return _fail(str(exc))
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:  # a file that is not there, a directory, no permission
        return _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
    except Exception as exc:
        message = _dependency_error(exc)
        if message is None:
            raise
        return _fail(message)


def _dependency_error(exc: Exception) -> str | None:
    """What a database or Redis failure means to the person at the terminal.

    Translated here, at the edge; anything else is a bug and keeps its traceback.
    """
    import redis
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    if isinstance(exc, NoSuchModuleError | ArgumentError):
        return f"not a usable database URL: {exc}"
    if isinstance(exc, SQLAlchemyError):
        first = str(exc).splitlines()[0]
        return (f"database error: {first} (is the database there and migrated? "
                "`fmn prefs import` creates it)")
    if isinstance(exc, redis.RedisError):
        return f"Redis error: {exc} (is REDIS_URL right and Redis running?)"
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # no AWS SDK in this deployable
        return None
    if isinstance(exc, BotoCoreError | ClientError):
        return (f"AWS error: {exc} (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION and the credentials "
                "name the stage? a local stack: is fmn up running here?)")
    return None


if __name__ == "__main__":
    raise SystemExit(main())
