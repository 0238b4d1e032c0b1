"""A function's child process (``fmn.local.worker``) stops on SIGTERM, whenever it comes.

It waits for the signal (``sigtimedwait``) instead of setting a
``threading.Event`` from a Python handler, which runs between two bytecodes
of the main thread and can wait forever for a lock that thread holds (the
event's own, as the thread wakes from its wait: python/cpython#126434).  Here
the schedule ticks every 0.1 ms, so the main thread is busy around its wait,
and SIGTERM comes at random moments: every worker stops, with its totals
written.  SIGUSR1 writes the worker's stacks to its log and changes nothing
else: what the local stack sends before killing a worker that did not stop.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from services import redis_client

from fmn.pipeline.queues import queue

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (Linux: /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def _start(tmp_path: Path, prefix: str, n: int) -> tuple[subprocess.Popen[bytes], Path, Path]:
    stats, log = tmp_path / f"stats-{n}.json", tmp_path / f"worker-{n}.log"
    env = {**os.environ, "FMN_QUEUE_PREFIX": prefix, "POWERTOOLS_METRICS_DISABLED": "true"}
    with log.open("ab") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "fmn.local.worker", "sse", "--poll-wait-s", "1",
             "--schedule-s", "0.0001", "--stats", str(stats)],
            cwd=ROOT, env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 30
    while not _catches(worker.pid, signal.SIGUSR1):  # registered before it polls
        assert worker.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the worker never came up"
        time.sleep(0.05)
    return worker, stats, log


def test_sigterm_stops_the_worker_at_any_moment(aws_env: str, tmp_path: Path) -> None:
    redis_client()
    sqs: Any = boto3.client("sqs", region_name="us-east-1")
    prefix = f"fmn-w{uuid.uuid4().hex[:6]}-"
    sse = queue("sse")
    urls = [sqs.create_queue(QueueName=name)["QueueUrl"]
            for name in (sse.sqs_name(prefix), sse.dlq_name(prefix))]
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(4):
            worker, stats, log = _start(tmp_path, prefix, n)
            workers.append(worker)
            if n == 0:  # SIGUSR1: every thread's stack to the log, and it goes on
                worker.send_signal(signal.SIGUSR1)
                deadline = time.monotonic() + 10
                while "Current thread" not in log.read_text():
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.05)
                assert worker.poll() is None
            time.sleep(random.uniform(1.0, 2.0))  # polling, the schedule spinning
            worker.send_signal(signal.SIGTERM)
            try:
                assert worker.wait(30) == 0, log.read_text()
            except subprocess.TimeoutExpired:
                worker.send_signal(signal.SIGUSR1)
                time.sleep(1)
                pytest.fail(f"worker {n} did not stop on SIGTERM:\n{log.read_text()}")
            assert json.loads(stats.read_text())["function"] == "sse"
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for url in urls:
            sqs.delete_queue(QueueUrl=url)


def test_a_worker_that_does_not_stop_leaves_its_stacks_and_is_killed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    from fmn.local.stack import LocalStack

    log = tmp_path / "worker-email.log"
    stuck = ("import faulthandler, signal, time\n"
             "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
             "faulthandler.register(signal.SIGUSR1, all_threads=True)\n"
             "print('up', flush=True)\n"
             "def stuck_in_a_flush():\n"
             "    time.sleep(3600)\n"
             "stuck_in_a_flush()\n")
    with log.open("ab") as out:
        worker = subprocess.Popen([sys.executable, "-c", stuck], stdout=out, stderr=out)
    deadline = time.monotonic() + 10
    while "up" not in log.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # a stop timeout of one second: visibility timeouts of -89 s
    stack = SimpleNamespace(workers={"email": worker}, workdir=tmp_path,
                            queues=lambda: [SimpleNamespace(visibility_timeout_s=-89)])
    with caplog.at_level("WARNING", logger="fmn.local.stack"):
        LocalStack.stop_workers(stack)  # type: ignore[arg-type]
    assert worker.poll() == -signal.SIGKILL
    assert "stuck_in_a_flush" in log.read_text()
    assert f"the email worker did not stop within 1s: killed (its threads' stacks are in " \
           f"{log})" in caplog.text
