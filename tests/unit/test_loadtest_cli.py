"""The load test's console: each run's report reaches a reader once."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from loadtest.cli import same_destination


def test_streams_on_one_file_are_one_destination(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    with path.open("w") as out, open(out.fileno(), "w", closefd=False) as err:
        assert same_destination(out, err)  # 2>&1 (the same open file)
        with path.open("a") as again:
            assert same_destination(out, again)  # > out.log 2>> out.log


def test_separate_files_and_unreal_streams_are_not(tmp_path: Path) -> None:
    with (tmp_path / "a").open("w") as a, (tmp_path / "b").open("w") as b:
        assert not same_destination(a, b)
        assert not same_destination(a, io.StringIO())  # captured: never skip the reports
    closed = (tmp_path / "c").open("w")
    closed.close()
    assert not same_destination(closed, sys.__stderr__)
