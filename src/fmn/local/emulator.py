"""Which local AWS ``fmn up`` talks to: LocalStack or the moto server.

LocalStack (``scripts/localstack.sh``, Python 3.13, its own
``.venv-localstack``) is the local AWS where it is set up: it evaluates
CloudWatch alarms, publishes ``AWS/SQS`` metrics, runs CloudFormation
templates with their alarms, moves dead letters back with
``StartMessageMoveTask``, keeps its speed at any queue depth and serves real
long polls to concurrent receivers.  The moto server is the fallback and the
fast tests' emulator.  One LocalStack serves the whole machine (two
instances interfere), so an answering one is always reused and never
stopped by ``fmn up``; stacks keep apart by resource name prefix.

:func:`choose` applies the choice ``auto`` (the default of ``fmn up``):

1. ``AWS_ENDPOINT_URL`` when it answers (whatever it is: a LocalStack is
   recognised by its health endpoint);
2. LocalStack at ``FMN_LOCALSTACK_URL`` (``http://127.0.0.1:4566``) when it
   answers, or once started when it is installed here;
3. otherwise a moto server of ``fmn up``'s own.

``localstack`` insists on LocalStack (starting it if installed, refusing with
what to run if not); ``moto`` insists on the moto server.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fmn.errors import FmnError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_LOCALSTACK_URL = "http://127.0.0.1:4566"
CHOICES = ("auto", "localstack", "moto")
LOCALSTACK = "localstack"
MOTO = "moto"


class EmulatorUnavailable(FmnError):
    """The emulator asked for cannot be had; the message says what to run."""


@dataclass(frozen=True)
class Choice:
    #: ``localstack`` or ``moto``
    kind: str
    #: the endpoint to use; ``None``: start a moto server
    endpoint: str | None


def localstack_health(url: str, timeout: float = 2.0) -> dict[str, str] | None:
    """LocalStack's services and their states, or ``None`` when no LocalStack answers."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/_localstack/health",
                                    timeout=timeout) as response:
            doc = json.load(response)
    except (OSError, urllib.error.URLError, ValueError):
        return None
    services = doc.get("services") if isinstance(doc, dict) else None
    return {str(k): str(v) for k, v in services.items()} if isinstance(services, dict) else None


def is_localstack(url: str) -> bool:
    """Whether ``url`` is an answering LocalStack with SQS up."""
    health = localstack_health(url)
    return health is not None and health.get("sqs") in ("available", "running")


def localstack_installed(root: Path = ROOT) -> bool:
    """Whether ``scripts/localstack.sh install`` completed here (its stamp file)."""
    return any((root / ".venv-localstack").glob(".installed-*"))


def start_localstack(root: Path = ROOT) -> None:
    """``scripts/localstack.sh start``: reuses one that answers, else starts and waits."""
    script = root / "scripts" / "localstack.sh"
    result = subprocess.run([str(script), "start"], cwd=root, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise EmulatorUnavailable(f"scripts/localstack.sh start failed: "
                                  f"{result.stderr.strip()[-500:]}")


def default_localstack_url() -> str:
    """Where the machine's LocalStack answers (``FMN_LOCALSTACK_URL``)."""
    return os.environ.get("FMN_LOCALSTACK_URL") or DEFAULT_LOCALSTACK_URL


def choose(wanted: str, endpoint: str | None, localstack: str | None = None,
           *, answers: Callable[[str], bool] | None = None,
           localstack_at: Callable[[str], bool] | None = None,
           start: Callable[[Path], None] | None = None, root: Path = ROOT) -> Choice:
    """The emulator for ``fmn up --aws WANTED`` given ``AWS_ENDPOINT_URL`` (see the module doc).

    ``answers(url)``: whether any AWS endpoint answers there; ``localstack_at(url)``:
    whether a LocalStack does; ``start(root)``: start the one installed under
    ``root`` (defaults: HTTP requests, ``scripts/localstack.sh start``).
    """
    if wanted not in CHOICES:
        raise ValueError(f"--aws must be one of {', '.join(CHOICES)}, not {wanted!r}")
    reachable = answers or _answers
    is_ls = localstack_at or is_localstack
    localstack_url = localstack or default_localstack_url()
    if endpoint and reachable(endpoint):
        kind = LOCALSTACK if is_ls(endpoint) else MOTO
        if wanted in ("auto", kind):
            return Choice(kind, endpoint)
    if wanted == MOTO:
        return Choice(MOTO, None)
    if is_ls(localstack_url):
        return Choice(LOCALSTACK, localstack_url)
    if localstack_installed(root):
        log.info("starting LocalStack (scripts/localstack.sh start)")
        (start or start_localstack)(root)
        if is_ls(localstack_url):
            return Choice(LOCALSTACK, localstack_url)
    if wanted == LOCALSTACK:
        raise EmulatorUnavailable(
            f"no LocalStack answers at {localstack_url} and none is installed here: "
            "run `make localstack` (needs Python 3.13), or use --aws moto")
    return Choice(MOTO, None)


def _answers(url: str) -> bool:
    """Something listens there (a TCP connection: an emulator busy loading its
    backends may take seconds to answer a first HTTP request)."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=2):
            return True
    except (OSError, ValueError):
        return False
