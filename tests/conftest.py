"""Fixtures shared by the test tiers: the AWS emulator (the moto server).

The moto server is a real HTTP server speaking the AWS APIs (SQS, S3, SES,
CloudWatch); tests reach it with boto3 exactly as the code reaches AWS, by
endpoint alone.  One server per test session, on a free port of 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

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


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A three-node Redis Cluster for this session (``redis+cluster://``), torn down after."""
    from redis_cluster import start_cluster
    from services import unavailable

    try:
        cluster = start_cluster()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        unavailable("a local Redis Cluster", exc)
        raise  # unreachable: unavailable() skips or fails
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """The test Redis, once as a single server and once as a cluster (ElastiCache's modes)."""
    if request.param == "cluster":
        url: str = request.getfixturevalue("redis_cluster_url")
        return url
    from services import REDIS_URL, redis_client

    redis_client()  # skip (locally) or fail (CI) without Redis
    return REDIS_URL


@pytest.fixture
def redis_any(redis_url: str) -> Iterator[Any]:
    """A client of :func:`redis_url`'s Redis (``redis.Redis`` or ``RedisCluster``)."""
    from fmn.redisconn import connect

    client = connect(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A Synapse homeserver for this test session (it takes seconds to start).

    Server-wide limits are generous; a test that wants ``M_LIMIT_EXCEEDED``
    lowers its own bot's limit (``LocalSynapse.override_ratelimit``).
    """
    import sys

    from services import unavailable

    from fmn.local.synapse import LocalSynapse, synapse_python

    if not synapse_python().exists():
        unavailable("Synapse", FileNotFoundError(f"{synapse_python()} (run `make synapse`)"))
    server = LocalSynapse(tmp_path_factory.mktemp("synapse"))
    server.start()
    print(f"\nSynapse started in {server.startup_s:.1f} s", file=sys.stderr)
    try:
        yield server
    finally:
        server.stop()
