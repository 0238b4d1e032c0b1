"""Every boto3 client of the project, built in one place.

The moto server, LocalStack and AWS differ by endpoint alone
(``AWS_ENDPOINT_URL``, unset on AWS) and region; credentials come from boto3's
ordinary chain.  What differs between the callers is how a client behaves
under trouble, so that is what :func:`client` takes as options:

* the Lambda functions and the web app keep boto3's standard retries;
* the bridge fails fast (``connect_timeout=3``, ``read_timeout=20``, two
  attempts): it does its own retrying and must not stall its bus consumer;
* the local runner's pollers need one pooled connection per concurrent
  poller and a read timeout above SQS's longest long poll (20 s).

boto3 is imported when a client is built, never at import: Chalice imports
the functions' ``app.py`` while packaging, and the core's pure parts do not
need it.
"""

from __future__ import annotations

from typing import Any

from fmn.settings import Settings

#: boto3's own default: enough for a function's sequential calls
DEFAULT_POOL = 10
#: "take it from the settings" (``None`` is a value: no endpoint, i.e. AWS itself)
_FROM_SETTINGS: Any = object()
#: read timeout above SQS's longest long poll (20 s), so a long poll is never cut
LONG_POLL_READ_TIMEOUT_S = 60


def client(service: str, settings: Settings | None = None, *,
           endpoint_url: str | None = _FROM_SETTINGS, region: str | None = None,
           max_pool_connections: int = DEFAULT_POOL,
           connect_timeout: float | None = None, read_timeout: float | None = None,
           max_attempts: int | None = None, session: Any = None) -> Any:
    """A boto3 client for ``service`` (``"sqs"``, ``"s3"``, ``"ses"``, ``"cloudwatch"`` ...).

    The endpoint and region come from ``settings`` (default: the environment's),
    unless given explicitly (``endpoint_url=None``: AWS itself).  ``None``
    options keep botocore's defaults (60 s timeouts); ``max_attempts`` counts
    the first call too (standard retry mode either way).  ``session``: a
    session of its own (:func:`new_session`) for clients of another thread
    (boto3's default session is not safe to create clients from concurrently).
    """
    import boto3
    from botocore.config import Config

    if settings is None and (endpoint_url is _FROM_SETTINGS or region is None):
        settings = Settings.from_env()
    endpoint = settings.aws_endpoint_url if endpoint_url is _FROM_SETTINGS and settings \
        else endpoint_url
    region_name = region or (settings.aws_region if settings is not None else None)
    retries: dict[str, Any] = {"mode": "standard"}
    if max_attempts is not None:
        retries["total_max_attempts"] = max_attempts
    options: dict[str, Any] = {"region_name": region_name,
                               "max_pool_connections": max_pool_connections,
                               "retries": retries}
    if connect_timeout is not None:
        options["connect_timeout"] = connect_timeout
    if read_timeout is not None:
        options["read_timeout"] = read_timeout
    factory = session if session is not None else boto3
    return factory.client(service, endpoint_url=endpoint or None, config=Config(**options))


def new_session() -> Any:
    """A boto3 session of its own, for clients built and used in another thread."""
    import boto3

    return boto3.session.Session()
