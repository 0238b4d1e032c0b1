"""One settings object, read from the environment at the edge.

Every deployable builds a :class:`Settings` with :meth:`Settings.from_env`
(or explicitly, in tests) and passes it down; nothing in the core reads the
environment by itself.  Defaults are the embedded ones: a SQLite file under
``var/`` and the local Redis.

| variable | meaning | default |
|---|---|---|
| ``FMN_DATABASE_URL`` | SQLAlchemy URL of the preferences database | ``sqlite:///var/fmn.sqlite`` |
| ``REDIS_URL`` | Redis (ElastiCache in AWS) holding the snapshot | ``redis://127.0.0.1:6379/0`` |
| ``FMN_SNAPSHOT_PREFIX`` | key prefix of the snapshot in Redis | ``fmn:snapshot:`` |
| ``FMN_SNAPSHOT_POLL_S`` | how often a matcher asks for changes | ``0.25`` |
| ``AWS_ENDPOINT_URL`` | AWS endpoint: the moto server or LocalStack locally | unset (AWS) |
| ``AWS_DEFAULT_REGION`` | AWS region | ``us-east-1`` |
| ``FMN_QUEUE_PREFIX`` | prefix of every queue name (one per stage) | ``fmn-`` |
| ``FMN_CLAIM_BUCKET`` | S3 bucket for records too large for SQS | ``fmn-claims`` |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///var/fmn.sqlite"
    redis_url: str = "redis://127.0.0.1:6379/0"
    snapshot_prefix: str = "fmn:snapshot:"
    snapshot_poll_s: float = 0.25
    aws_endpoint_url: str | None = None
    aws_region: str = "us-east-1"
    queue_prefix: str = "fmn-"
    claim_bucket: str = "fmn-claims"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        default = cls()
        return cls(
            database_url=env.get("FMN_DATABASE_URL", default.database_url),
            redis_url=env.get("REDIS_URL", default.redis_url),
            snapshot_prefix=env.get("FMN_SNAPSHOT_PREFIX", default.snapshot_prefix),
            snapshot_poll_s=float(env.get("FMN_SNAPSHOT_POLL_S", default.snapshot_poll_s)),
            aws_endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
            aws_region=env.get("AWS_DEFAULT_REGION", default.aws_region),
            queue_prefix=env.get("FMN_QUEUE_PREFIX", default.queue_prefix),
            claim_bucket=env.get("FMN_CLAIM_BUCKET", default.claim_bucket),
        )
