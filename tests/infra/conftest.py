"""The CDK app, synthesized once per test session (it runs Node.js: ~10 s or more).

Template tests and the LocalStack deployment test share the stacks built
here, in-process, with ``aws_cdk.assertions.Template``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

INFRA = Path(__file__).resolve().parents[2] / "infra"


@pytest.fixture(scope="session")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    if str(INFRA) not in sys.path:
        sys.path.insert(0, str(INFRA))
    import aws_cdk as cdk
    from fmn_infra.app import build

    app = cdk.App(outdir=str(tmp_path_factory.mktemp("cdk.out")))
    built: dict[str, Any] = build(app, stage="test", lean_packages=True)
    return built


@pytest.fixture(scope="session")
def templates(stacks: dict[str, Any]) -> dict[str, Any]:
    """``aws_cdk.assertions.Template`` per stack (``messaging``, ``compute``)."""
    from aws_cdk.assertions import Template

    return {name: Template.from_stack(stack) for name, stack in stacks.items()}
