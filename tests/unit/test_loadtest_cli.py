"""The load test's console: each run's report reaches a reader once, and at least once;
a second load test in the same work directory is refused."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.cli import same_destination

ROOT = Path(__file__).resolve().parents[2]  # where the loadtest package is


def test_one_open_file_is_one_destination(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    with path.open("w") as out, open(os.dup(out.fileno()), "w") as err:
        err.write("progress, then a run's report\n")
        assert same_destination(out, err)  # 2>&1: one offset


def test_a_file_opened_twice_is_one_destination_only_when_appending(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    with path.open("w") as out, path.open("a") as err:  # > f 2>> f
        err.write("progress, then a run's report\n")
        # stdout would write from offset 0, over the report: it must carry its own copy
        assert not same_destination(out, err)
    with path.open("a") as out, path.open("a") as err:  # >> f 2>> f
        err.write("more\n")
        assert same_destination(out, err)


def test_separate_files_and_unreal_streams_are_not(tmp_path: Path) -> None:
    with (tmp_path / "a").open("w") as a, (tmp_path / "b").open("w") as b:
        assert not same_destination(a, b)
        assert not same_destination(a, io.StringIO())  # captured: never skip the reports
    closed = (tmp_path / "c").open("w")
    closed.close()
    assert not same_destination(closed, sys.__stderr__)


def test_every_redirection_keeps_the_report_exactly_where_a_reader_looks(
        tmp_path: Path) -> None:
    """A child prints a report on stderr, then the table on stdout, with the reports
    again when ``same_destination`` says stdout does not have them."""
    child = ("import sys\nfrom loadtest.cli import same_destination\n"
             "print('start', file=sys.stderr)\nprint('REPORT', file=sys.stderr)\n"
             "if not same_destination(sys.stdout, sys.stderr):\n    print('REPORT')\n"
             "print('SUMMARY TABLE, longer than what stderr wrote')\n")
    for shell, expected in (("> f 2>&1", 1), ("> f 2>> f", 1), (">> f 2>> f", 1)):
        f = tmp_path / "f"
        f.write_text("")
        subprocess.run(f"{sys.executable} -c \"$CHILD\" {shell}", shell=True, check=True,
                       cwd=tmp_path, env={**os.environ, "CHILD": child,
                                          "PYTHONPATH": str(ROOT)})
        text = f.read_text()
        assert text.count("REPORT") == expected and "SUMMARY TABLE" in text, (shell, text)


def test_a_note_is_printed_as_it_is_not_read_as_markup() -> None:
    # a ledger line carries dead-letter reasons, hence bus content: "[/x]" raised
    # MarkupError and ended the run at its report, "[bold]" restyled the console
    from rich.console import Console

    from loadtest.cli import Display

    display = Display(1)
    out = io.StringIO()
    display.console = Console(file=out, width=200, color_system=None)
    display.say("reason: [/x] and [bold]not bold[/bold] from a message")
    assert "reason: [/x] and [bold]not bold[/bold] from a message" in out.getvalue()


def test_a_second_load_test_in_the_same_workdir_exits_and_touches_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from loadtest.cli import main, workdir_owned

    run_dir = tmp_path / "c1"
    run_dir.mkdir()
    (run_dir / "run.json").write_text("{}")
    with workdir_owned(tmp_path) as other:
        assert other is None
        # a second one: refused at once, the first one's run directory left alone
        assert main(["--workdir", str(tmp_path), "--aws", "moto", "--messages", "1",
                     "--concurrency", "1"]) == 2
        assert (run_dir / "run.json").exists()
        err = capsys.readouterr().err
        assert f"another load test (pid {os.getpid()}) is using {tmp_path}" in err
        assert "--workdir" in err
    with workdir_owned(tmp_path) as other:  # let go when the first one ends
        assert other is None


def test_the_work_directorys_own_lock_is_refused_as_lock_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from loadtest.cli import main

    assert main(["--workdir", str(tmp_path), "--aws", "moto", "--messages", "1",
                 "--concurrency", "1", "--lock", str(tmp_path / ".lock")]) == 2
    assert "give another file" in capsys.readouterr().err


def test_no_email_process_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from loadtest.cli import main

    assert main(["--workdir", str(tmp_path), "--aws", "moto", "--messages", "1",
                 "--concurrency", "1", "--email-processes", "0"]) == 2
    assert "--email-processes" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing started
