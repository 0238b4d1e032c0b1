"""How the local stack shares a function out among its child processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fmn.local.stack import LocalStack, StackOptions
from fmn.settings import Settings


def _started(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, long_polling: bool,
             **options: Any) -> tuple[int, list[tuple[str, str, int | None, bool]]]:
    stack = LocalStack(Settings(), StackOptions(workdir=tmp_path, **options))
    monkeypatch.setattr(LocalStack, "long_polling", property(lambda self: long_polling))
    calls: list[tuple[str, str, int | None, bool]] = []

    def start_worker(queue_name: str, name: str | None = None,
                     max_concurrency: int | None = None, schedule: bool = True) -> None:
        calls.append((queue_name, name or queue_name, max_concurrency, schedule))

    monkeypatch.setattr(stack, "start_worker", start_worker)
    return stack.start_workers("email"), calls


def test_the_queues_concurrency_is_shared_and_one_runs_the_schedule(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    n, calls = _started(monkeypatch, tmp_path, True, processes={"email": 3})
    assert n == 3
    # the email queue's maximum concurrency is 10: 4 + 3 + 3, the first schedules
    assert calls == [("email", "email", 4, True), ("email", "email-2", 3, False),
                     ("email", "email-3", 3, False)]
    n, calls = _started(monkeypatch, tmp_path, True, processes={"email": 2},
                        max_concurrency={"email": 1})
    assert calls == [("email", "email", 1, True), ("email", "email-2", 1, False)]


def test_one_process_without_long_polls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    n, calls = _started(monkeypatch, tmp_path, False, processes={"email": 2})
    assert n == 1 and calls == [("email", "email", None, True)]
    assert "one message to two receivers" in caplog.text
    n, calls = _started(monkeypatch, tmp_path, True)  # not asked: one, as before
    assert n == 1 and calls == [("email", "email", None, True)]
