"""Fixtures shared by the test tiers: the AWS emulator (the moto server).

The moto server is a real HTTP server speaking the AWS APIs (SQS, S3, SES,
CloudWatch); tests reach it with boto3 exactly as the code reaches AWS, by
endpoint alone.  One server per test session, on a free port of 127.0.0.1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from fmn.local.stack import free_port


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The URL of a moto server running for this test session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3 at the moto server with dummy credentials; returns the endpoint."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    assert os.environ["AWS_ENDPOINT_URL"] == moto_endpoint
    return moto_endpoint


LOCALSTACK_URL = os.environ.get("FMN_LOCALSTACK_URL", "http://127.0.0.1:4566")


@pytest.fixture(scope="session")
def localstack_endpoint() -> str:
    """The machine's LocalStack (``scripts/localstack.sh start``), shared by every test
    and worker: resources keep apart by name prefix.  Skipped locally when it does not
    answer, failed in CI."""
    from services import unavailable

    from fmn.local.emulator import is_localstack

    if not is_localstack(LOCALSTACK_URL):
        unavailable(f"LocalStack at {LOCALSTACK_URL}",
                    RuntimeError("no answer (scripts/localstack.sh start)"))
    return LOCALSTACK_URL


@pytest.fixture
def localstack_env(localstack_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3 at LocalStack (any credentials will do); returns the endpoint."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", localstack_endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return localstack_endpoint


@pytest.fixture(params=["moto", "localstack"])
def any_aws_env(request: pytest.FixtureRequest) -> str:
    """The test runs twice: on the moto server and on LocalStack (its endpoint)."""
    name = "aws_env" if request.param == "moto" else "localstack_env"
    endpoint: str = request.getfixturevalue(name)
    return endpoint
