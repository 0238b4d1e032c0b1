"""``scripts/localstack.sh``: one LocalStack per machine, reused, never a second one.

Run against the machine's LocalStack (which CI starts with this very
script): ``start`` finds it answering and reuses it, ``status`` tells
whether one answers, and without Python 3.13 ``install --optional`` says so
and lets ``make setup`` go on.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fmn.local.stack import free_port

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "localstack.sh"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, check=False)


def test_start_reuses_the_answering_one(localstack_endpoint: str) -> None:
    if not localstack_endpoint.endswith(":4566"):
        pytest.skip("the script serves 127.0.0.1:4566 (FMN_LOCALSTACK_PORT)")
    started = _run("start")
    assert started.returncode == 0, started.stderr
    assert "(reused)" in started.stderr
    assert _run("status").returncode == 0


def test_status_says_when_none_answers(tmp_path: Path) -> None:
    elsewhere = {"FMN_LOCALSTACK_PORT": str(free_port()),
                 "FMN_LOCALSTACK_VENV": str(tmp_path / "venv")}
    result = _run("status", env=elsewhere)
    assert result.returncode == 1 and "not answering" in result.stderr
    # make run and make test: start it only where it is installed, else the moto server
    result = _run("start", "--if-installed", env=elsewhere)
    assert result.returncode == 0 and "not installed here" in result.stderr
    assert not (tmp_path / "venv").exists()


def test_without_python_313_an_optional_install_steps_aside(tmp_path: Path) -> None:
    if Path("/usr/bin/python3.13").exists():
        pytest.skip("this machine has Debian's Python 3.13: the install would run")
    venv = tmp_path / "venv"
    result = _run("install", "--optional", env={
        "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYENV_ROOT": str(tmp_path / "none"),
        "FMN_LOCALSTACK_VENV": str(venv)})
    assert result.returncode == 0, result.stderr
    assert "no Python 3.13" in result.stderr and not venv.exists()
    insisted = _run("install", env={
        "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYENV_ROOT": str(tmp_path / "none"),
        "FMN_LOCALSTACK_VENV": str(venv)})
    assert insisted.returncode == 1 and "needs Python 3.13" in insisted.stderr
