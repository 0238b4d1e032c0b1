"""``fmn loadtest`` / ``python -m loadtest``: the 2016 15,000-message test, end to end.

For each of the match function's maximum concurrencies, a clean local stack
(:mod:`loadtest.run`), every message published, drained to the last email and
feed event, the ledger read; then the report in the seed's words, per stage,
with requests, the emulator's ceiling, CPU and the bill (:mod:`loadtest.report`),
``report.json`` and the PNG plots (:mod:`loadtest.plots`) under the work
directory.  A live display shows each queue's backlog while it runs (a line
every few seconds when the output is not a terminal) on stderr, with each
run's report as it ends; stdout gets all the reports and the summary table at
the end (only the table when stdout and stderr are one place, so that
``2>&1`` prints each report once).  Ctrl-C stops the
current run cleanly (in-flight invocations finish, the stack stops, its
queues and keys are removed) and reports what was measured; a second Ctrl-C
aborts.  One load test owns its work directory at a time: a second one there
exits at once (status 2), since each run starts by emptying its directory.
With ``--lock FILE`` each run holds an exclusive lock on FILE (flock)
while it runs and lets it go between runs, so other heavy jobs sharing the
machine neither overlap a run nor wait for the whole series.  Exit status: 0
when every run's ledger is clean, 1 otherwise, 2 for bad options.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import platform
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from loadtest.run import Options, RunData, Sample, localstack_answers

log = logging.getLogger("loadtest")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fmn loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=15_000, help="bus messages (default 15000)")
    p.add_argument("--concurrency", default="1,2,4,6,8",
                   help="the match function's maximum concurrencies to try (default 1,2,4,6,8)")
    p.add_argument("--users", type=int, default=10_000, help="generated users (default 10000)")
    p.add_argument("--bus", choices=("fedmsg", "amqp"), default="fedmsg",
                   help="where the messages are published (default fedmsg)")
    p.add_argument("--aws", choices=("localstack", "moto"), default=None,
                   help="the AWS emulator (default: LocalStack where it answers, else moto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="var/loadtest", help="runs, report.json and plots")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="give up on a run not drained after this many seconds")
    p.add_argument("--ceiling-seconds", type=float, default=8.0,
                   help="how long the emulator's ceiling is measured (0: not measured)")
    p.add_argument("--lock", default=None, metavar="FILE",
                   help="hold an exclusive flock on FILE during each run, not between runs")
    p.add_argument("--in-process", action="store_true",
                   help="run the email sender and the feed function in this process "
                        "with the others (by default each has a process of its own)")
    p.add_argument("--email-processes", type=int, default=Options.email_processes,
                   metavar="N",
                   help="processes the email sender runs in, its maximum concurrency shared "
                        "among them (default %(default)s; LocalStack only: the moto server "
                        "hands one message to two receivers)")
    p.add_argument("--no-plots", action="store_true")
    return p


@contextlib.contextmanager
def held(lock: str | None, say: Any, stop: threading.Event) -> Iterator[bool]:
    """An exclusive flock on ``lock`` for the duration (nothing when ``lock`` is None);
    yields False when ``stop`` was set while waiting for it (Ctrl-C: no run).

    The wait is a blocking flock in a thread of its own, so this process queues
    for the lock like ``flock(1)`` does rather than polling behind the others;
    abandoned, that thread lets the lock go as soon as it gets it.
    """
    if lock is None:
        yield True
        return
    import fcntl

    f = open(lock, "a")  # noqa: SIM115 (closed by whoever holds the lock last)
    got = threading.Event()
    guard = threading.Lock()
    abandoned = [False]

    def take() -> None:
        fcntl.flock(f, fcntl.LOCK_EX)
        with guard:
            if abandoned[0]:
                fcntl.flock(f, fcntl.LOCK_UN)
                f.close()
                return
            got.set()

    threading.Thread(target=take, name="lock", daemon=True).start()
    if not got.wait(0.2):
        say(f"waiting for the lock on {lock} ...")
    while not got.wait(0.5):
        if stop.is_set():
            with guard:
                if not got.is_set():
                    abandoned[0] = True
            if abandoned[0]:
                yield False
                return
    try:
        yield True
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


class Display:
    """A rich live table of the current run, or a plain line every few seconds."""

    def __init__(self, total_runs: int) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, soft_wrap=True)
        self.live: Any = None
        self.total_runs = total_runs
        self.index = 0
        self.note = ""
        self._last_line = 0.0

    def __enter__(self) -> Display:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def say(self, text: str) -> None:
        from rich.markup import escape

        # the text is not markup: reports carry dead-letter reasons, which carry bus content
        self.note = text
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {escape(text)}",
                           highlight=False)

    def update(self, data: RunData, sample: Sample | None, text: str) -> None:
        if text:
            self.say(text)
        if sample is None:
            return
        elapsed = sample.t - data.published_at if data.published_at else 0.0
        if self.live is None:
            if time.monotonic() - self._last_line >= 5:
                self._last_line = time.monotonic()
                queues = " ".join(f"{q} {v[0] + v[1]}" for q, v in sample.queues.items())
                self.console.print(f"  c={data.concurrency} {elapsed:6.1f}s matched "
                                   f"{sample.matched:,}/{data.messages:,} mails "
                                   f"{sample.mails:,} | backlog {queues}", highlight=False)
            return
        from rich.table import Table

        table = Table(title=f"run {self.index}/{self.total_runs}: match concurrency "
                            f"{data.concurrency}, {elapsed:.1f}s", title_justify="left")
        table.add_column("published")
        table.add_column("matched", justify="right")
        table.add_column("mails", justify="right")
        for q in sample.queues:
            table.add_column(f"{q} backlog", justify="right")
        done = data.messages if data.publish_s else "..."
        table.add_row(f"{done}", f"{sample.matched:,}/{data.messages:,}", f"{sample.mails:,}",
                      *(f"{v[0]:,}+{v[1]:,}" for v in sample.queues.values()))
        self.live.update(table)


class _ConsoleFilter(logging.Filter):
    """The console gets the load test's own notes, the runner's, and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.name.startswith(
            ("loadtest", "fmn.local"))


def _logging(display: Display) -> None:
    from fmn.local.logs import OneLine

    class ToDisplay(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            display.console.print(self.format(record), highlight=False, markup=False)

    handler = ToDisplay(logging.WARNING)
    handler.setFormatter(OneLine())
    handler.addFilter(_ConsoleFilter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("loadtest").setLevel(logging.INFO)


def same_destination(out: Any, err: Any) -> bool:
    """Whether what ``err`` already shows is in ``out``'s destination too, in order:
    each run's report goes to the console (stderr) as it ends and, all together, to
    stdout at the end, which is once too many when both are one place (``2>&1``, a
    terminal).  One file opened twice (``> f 2> f``) is not one place: stdout writes
    from its own offset, over what stderr wrote, unless it appends (``>> f 2>> f``)."""
    import fcntl

    try:
        out.flush()
        err.flush()
        fo, fe = out.fileno(), err.fileno()
        a, b = os.fstat(fo), os.fstat(fe)
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
            return False
        if not stat.S_ISREG(a.st_mode):  # a terminal, a pipe: no offsets
            return True
        if fcntl.fcntl(fo, fcntl.F_GETFL) & os.O_APPEND:
            return True
        # one open file (2>&1) shares its offset; stderr has written, stdout not yet
        return os.lseek(fo, 0, os.SEEK_CUR) == os.lseek(fe, 0, os.SEEK_CUR)
    except (AttributeError, OSError, ValueError):  # not a real file (captured, closed)
        return False


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        concurrencies = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    except ValueError:
        print(f"fmn loadtest: --concurrency takes numbers such as 1,2,4, not "
              f"{args.concurrency!r}", file=sys.stderr)
        return 2
    if args.messages < 1 or args.users < 1 or not concurrencies or min(concurrencies) < 1 \
            or args.email_processes < 1:
        print("fmn loadtest: --messages, --users, --email-processes and each concurrency "
              "must be at least 1",
              file=sys.stderr)
        return 2
    aws = args.aws or ("localstack" if localstack_answers() else "moto")
    if aws == "localstack" and not localstack_answers(
            os.environ.get("AWS_ENDPOINT_URL") or "http://127.0.0.1:4566"):
        print("fmn loadtest: LocalStack does not answer at http://127.0.0.1:4566 "
              "(start it, or use --aws moto)", file=sys.stderr)
        return 2
    opts = Options(messages=args.messages, concurrencies=concurrencies, users=args.users,
                   bus=args.bus, aws=aws, seed=args.seed, workdir=Path(args.workdir),
                   timeout_s=args.timeout, ceiling_s=args.ceiling_seconds,
                   own_process=() if args.in_process else Options.own_process,
                   email_processes=args.email_processes)
    if args.lock and Path(args.lock).resolve() == (opts.workdir / ".lock").resolve():
        print(f"fmn loadtest: --lock {args.lock} is the work directory's own lock, which "
              f"this load test holds throughout: give another file", file=sys.stderr)
        return 2
    with workdir_owned(opts.workdir) as other:
        if other is not None:
            print(f"fmn loadtest: another load test ({other}) is using {opts.workdir}: each "
                  f"run starts by emptying its directory there. Wait for it, or give this "
                  f"one a --workdir of its own", file=sys.stderr)
            return 2
        return run(opts, plots=not args.no_plots, lock=args.lock)


@contextlib.contextmanager
def workdir_owned(workdir: Path) -> Iterator[str | None]:
    """Own ``workdir`` for the duration: an exclusive flock on ``workdir/.lock``,
    taken without waiting.  Yields None when owned, else who owns it ("pid N"):
    a second load test there would empty the first one's run directory under it."""
    import fcntl

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / ".lock"
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            yield f"pid {f.read().strip() or '?'}"
            return
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield None
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)


def run(opts: Options, plots: bool = True, lock: str | None = None) -> int:
    """Every run of ``opts``, then the report; the exit status."""
    from fmn.bench import default_message_files
    from loadtest import report as rep
    from loadtest.messages import for_bus, load_templates

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        log.warning("stopping: the current run ends cleanly (Ctrl-C again to abort)")

    main = threading.current_thread() is threading.main_thread()
    # SIGTERM (a killed terminal, a CI timeout) stops as cleanly as Ctrl-C
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} \
        if main else {}
    opts.workdir.mkdir(parents=True, exist_ok=True)
    machine = f"{os.cpu_count()} cores, {platform.python_implementation()} " \
              f"{platform.python_version()}"
    runs: list[RunData] = []
    summaries: list[dict[str, Any]] = []
    started = time.time()
    try:
        with Display(len(opts.concurrencies)) as display:
            _logging(display)
            display.say(f"fmn loadtest: {opts.messages:,} messages, {opts.users:,} users, "
                        f"bus {opts.bus}, AWS {opts.aws}, match concurrency "
                        f"{', '.join(map(str, opts.concurrencies))}; {machine}; load average "
                        f"{os.getloadavg()[0]:.1f} at the start")
            templates = for_bus(load_templates(list(default_message_files())), opts.bus)
            from loadtest.run import run_once

            for i, c in enumerate(opts.concurrencies, 1):
                if stop.is_set():
                    break
                display.index = i
                with held(lock, display.say, stop) as got:
                    if not got:
                        break
                    data = run_once(opts, c, templates, display.update, stop)
                runs.append(data)
                summary = rep.summarise(data)
                summaries.append(summary)
                display.say("\n" + rep.format_run(summary, opts.aws))
                if not summary["ledger_ok"]:
                    display.say(data.ledger_text)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not same_destination(sys.stdout, sys.stderr):  # else they are on it already
        print("\n\n".join(rep.format_run(s, opts.aws) for s in summaries))
    print(rep.format_summary(summaries))
    doc = {"options": {k: (str(v) if isinstance(v, Path) else v)
                       for k, v in dataclasses.asdict(opts).items()},
           "machine": machine, "started_at": started, "load_average_at_start":
           os.getloadavg(), "interrupted": stop.is_set(), "runs": summaries,
           "prices_as_of": summaries[0]["cost"].get("prices_as_of") if summaries else None}
    report_path = opts.workdir / "report.json"
    report_path.write_text(json.dumps(doc, indent=1, default=str))
    written = [report_path]
    if plots and runs:
        from loadtest import plots as pl

        written.append(pl.throughput(summaries, opts.workdir / "throughput.png", machine))
        for data in runs:
            written.append(pl.backlog(data, opts.workdir / f"backlog-c{data.concurrency}.png"))
        written.append(pl.latency(summaries, runs, opts.workdir / "latency.png"))
    print("written: " + ", ".join(str(p) for p in written))
    ok = bool(summaries) and all(s["ledger_ok"] for s in summaries)
    return 0 if ok and not stop.is_set() else 1
