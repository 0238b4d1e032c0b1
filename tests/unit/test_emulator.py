"""``fmn up --aws``: which local AWS the stack runs on (no sockets: the probes are fakes)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fmn.local.emulator import Choice, EmulatorUnavailable, choose

pytestmark = pytest.mark.unit

LS = "http://127.0.0.1:4566"
MOTO = "http://127.0.0.1:5055"


def _choose(wanted: str, endpoint: str | None, up: set[str], tmp_path: Path,
            installed: bool = False) -> tuple[Choice, list[Path]]:
    started: list[Path] = []
    if installed:
        (tmp_path / ".venv-localstack").mkdir()
        (tmp_path / ".venv-localstack" / ".installed-2026.3.0").touch()

    def start(root: Path) -> None:
        started.append(root)
        up.add(LS)

    localstack: Callable[[str], bool] = lambda url: url == LS and url in up  # noqa: E731
    chosen = choose(wanted, endpoint, LS, answers=lambda url: url in up,
                    localstack_at=localstack, start=start, root=tmp_path)
    return chosen, started


@pytest.mark.parametrize("wanted, endpoint, up, installed, expected, starts", [
    # auto: an answering AWS_ENDPOINT_URL, whatever it is
    ("auto", MOTO, {MOTO, LS}, True, Choice("moto", MOTO), False),
    ("auto", LS, {LS}, False, Choice("localstack", LS), False),
    # auto: the machine's LocalStack, reused, or started where installed
    ("auto", None, {LS}, False, Choice("localstack", LS), False),
    ("auto", MOTO, {LS}, False, Choice("localstack", LS), False),
    ("auto", None, set(), True, Choice("localstack", LS), True),
    # auto: the moto server of fmn up's own as the fallback
    ("auto", None, set(), False, Choice("moto", None), False),
    # insisting
    ("localstack", MOTO, {MOTO, LS}, False, Choice("localstack", LS), False),
    ("moto", LS, {LS}, True, Choice("moto", None), False),
    ("moto", MOTO, {MOTO}, False, Choice("moto", MOTO), False),
])
def test_choice(wanted: str, endpoint: str | None, up: set[str], installed: bool,
                expected: Choice, starts: bool, tmp_path: Path) -> None:
    chosen, started = _choose(wanted, endpoint, set(up), tmp_path, installed)
    assert chosen == expected
    assert bool(started) == starts


def test_localstack_insisted_on_but_not_there_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(EmulatorUnavailable, match="make localstack"):
        _choose("localstack", None, set(), tmp_path)
    with pytest.raises(ValueError, match="--aws"):
        choose("docker", None, LS)


@pytest.mark.parametrize("prefix, name", [("fmn-", "fmn-messaging"),
                                          ("fmn-prod-", "fmn-prod-messaging"),
                                          ("e2e1a2b3c4d-", "e2e1a2b3c4d-messaging"),
                                          ("9x_y.", "x-y-messaging")])
def test_the_messaging_stack_is_named_after_the_stage(prefix: str, name: str) -> None:
    from fmn.local.messaging import stack_name

    assert stack_name(prefix) == name


def test_the_synthesized_template_is_found_where_make_synth_writes_it(tmp_path: Path) -> None:
    from fmn.local.messaging import find_template

    assert find_template(tmp_path) is None
    (tmp_path / "infra" / "cdk.out").mkdir(parents=True)
    (tmp_path / "infra" / "cdk.out" / "fmn-dev-messaging.template.json").write_text("{}")
    assert find_template(tmp_path) == tmp_path / "infra/cdk.out/fmn-dev-messaging.template.json"
