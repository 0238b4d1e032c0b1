"""One settings object, read from the environment at the edge.

Every deployable builds a :class:`Settings` with :meth:`Settings.from_env`
(or explicitly, in tests) and passes it down; nothing in the core reads the
environment by itself.  Defaults are the embedded ones: a SQLite file under
``var/`` and the local Redis.

| variable | meaning | default |
|---|---|---|
| ``FMN_DATABASE_URL`` | SQLAlchemy URL of the preferences database | ``sqlite:///var/fmn.sqlite`` |
| ``REDIS_URL`` | Redis (ElastiCache in AWS) holding the snapshot | ``redis://127.0.0.1:6379/0`` |
| ``FMN_REDIS_CLUSTER`` | ``1``: Redis is a cluster (``redis+cluster://``) | off |
| ``FMN_SNAPSHOT_PREFIX`` | key prefix of the snapshot in Redis | ``fmn:snapshot:`` |
| ``FMN_SNAPSHOT_POLL_S`` | how often a matcher asks for changes | ``0.25`` |
| ``AWS_ENDPOINT_URL`` | AWS endpoint: the moto server or LocalStack locally | unset (AWS) |
| ``AWS_DEFAULT_REGION`` | AWS region | ``us-east-1`` |
| ``FMN_QUEUE_PREFIX`` | prefix of every queue name (one per stage) | ``fmn-`` |
| ``FMN_CLAIM_BUCKET`` | S3 bucket for records too large for SQS | ``fmn-claims`` |
| ``FMN_WEB_URL`` | the web UI's public URL (links in notifications) | ``http://127.0.0.1:8000`` |
| ``FMN_SECRET_KEY`` | signs feed tokens, sessions, unsubscribe links | a development key |
| ``FMN_MAIL_TRANSPORT`` | ``smtp`` or ``ses`` | ``smtp`` |
| ``FMN_SMTP_URL`` | mail server, see below | ``smtp://127.0.0.1:2525`` |
| ``FMN_MAIL_FROM`` | the notifications' sender | ``notifications@fedoraproject.org`` |
| ``FMN_IRC_URL`` | IRC network, see below | ``irc://fmn@127.0.0.1:6667`` |
| ``FMN_IRC_BURST`` | flood limit: lines sent at once | ``5`` |
| ``FMN_IRC_RATE`` | flood limit: lines per second after the burst | ``2`` |
| ``FMN_MATRIX_URL`` | the Matrix homeserver the bot uses | ``http://127.0.0.1:8008`` |
| ``FMN_MATRIX_TOKEN`` | the bot's access token (a secret) | unset |
| ``FMN_MATRIX_PER_USER`` | notices of their own per person and minute; then a summary | ``10`` |
| ``FMN_FEED_URL`` | the live feed endpoint's public URL (the web UI links to it) | unset |
| ``FMN_FEED_PREFIX`` | key prefix of the users' live feeds in Redis | ``fmn:feed:`` |
| ``FMN_FEED_MAXLEN`` | events kept on each user's live feed | ``1000`` |
| ``FMN_FEED_MAX_AGE_S`` | age of the oldest event kept on a feed | ``604800`` (7 days) |
| ``FMN_RETRY_DELAY_S`` | a failed record's first retry delay (doubling) | its queue's visibility |
| ``FMN_IDEMPOTENCY_TTL_S`` | how long a send is remembered (redrives too) | ``1987200`` (23 days) |
| ``FMN_LEDGER_DIR`` | local runs: the journal of ``fmn ledger`` | unset |
| ``FMN_ENV`` | ``development`` or ``production`` (stricter web app) | ``development`` |
| ``FMN_DEV_LOGIN`` | ``1``: the web app's password-less demo login (refused in production) | off |
| ``FMN_OIDC_ISSUER`` | OpenID Connect issuer of the web app's sign-in | unset |
| ``FMN_OIDC_CLIENT_ID`` | the web app's client id at the issuer | unset |
| ``FMN_OIDC_CLIENT_SECRET`` | its secret (none: a public client, PKCE only) | unset |
| ``FMN_ADMINS`` | comma-separated account names allowed the admin routes | none |

``FMN_SMTP_URL`` is ``smtp://[user:password@]host:port`` (``smtps://`` for
TLS from the start, ``?starttls=1`` to upgrade).  ``FMN_IRC_URL`` is
``irc://nick[:password]@host:port`` (``ircs://`` for TLS; a password means
SASL PLAIN).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from fmn.pipeline.queues import idempotency_window_s
from fmn.redisconn import cluster_url

_TRUE = ("1", "true", "yes", "on")


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
    web_url: str = "http://127.0.0.1:8000"
    secret_key: str = "development-only-secret-key"
    mail_transport: str = "smtp"
    smtp_url: str = "smtp://127.0.0.1:2525"
    mail_from: str = "notifications@fedoraproject.org"
    irc_url: str = "irc://fmn@127.0.0.1:6667"
    irc_burst: int = 5
    irc_rate: float = 2.0
    matrix_url: str = "http://127.0.0.1:8008"
    matrix_token: str | None = None
    matrix_per_user: int = 10
    feed_url: str | None = None
    feed_prefix: str = "fmn:feed:"
    feed_maxlen: int = 1000
    feed_max_age_s: int = 7 * 24 * 3600
    #: as long as SQS may keep a record carrying the send: queue and dead-letter
    #: retention, and a redrive (fmn.pipeline.queues.idempotency_window_s)
    idempotency_ttl_s: int = field(default_factory=idempotency_window_s)
    #: a failed record's first retry delay, doubling with each receive
    #: (fmn.pipeline.redelivery); None: the queue's visibility timeout
    retry_delay_s: float | None = None
    #: local runs only: the ledger's journal directory (``fmn ledger``)
    ledger_dir: str | None = None

    def first_retry_delay_s(self, sqs_name: str) -> float:
        """The first retry delay of the queue named ``sqs_name`` (this stage's)."""
        from fmn.pipeline.queues import QUEUES

        if self.retry_delay_s is not None:
            return self.retry_delay_s
        for q in QUEUES:
            if sqs_name == q.sqs_name(self.queue_prefix):
                return float(q.visibility_timeout_s)
        return 60.0

    # the web app: environment, sign-in, admins
    env: str = "development"
    dev_login: bool = False
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    #: the issuer's ``email`` is verified even without ``email_verified`` (FMN_OIDC_TRUST_EMAIL)
    oidc_trust_email: bool = False
    admins: frozenset[str] = field(default_factory=frozenset)

    @property
    def production(self) -> bool:
        return self.env == "production"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        if environ is None:  # deployed: secrets from Secrets Manager join the environment
            from fmn.secrets import load_secrets

            load_secrets()
        env = os.environ if environ is None else environ
        default = cls()
        return cls(
            database_url=env.get("FMN_DATABASE_URL", default.database_url),
            redis_url=cluster_url(env.get("REDIS_URL", default.redis_url),
                                  env.get("FMN_REDIS_CLUSTER", "").lower() in ("1", "true", "yes")),
            snapshot_prefix=env.get("FMN_SNAPSHOT_PREFIX", default.snapshot_prefix),
            snapshot_poll_s=float(env.get("FMN_SNAPSHOT_POLL_S", default.snapshot_poll_s)),
            aws_endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
            aws_region=env.get("AWS_DEFAULT_REGION", default.aws_region),
            queue_prefix=env.get("FMN_QUEUE_PREFIX", default.queue_prefix),
            claim_bucket=env.get("FMN_CLAIM_BUCKET", default.claim_bucket),
            web_url=env.get("FMN_WEB_URL", default.web_url).rstrip("/"),
            secret_key=env.get("FMN_SECRET_KEY", default.secret_key),
            mail_transport=env.get("FMN_MAIL_TRANSPORT", default.mail_transport),
            smtp_url=env.get("FMN_SMTP_URL", default.smtp_url),
            mail_from=env.get("FMN_MAIL_FROM", default.mail_from),
            irc_url=env.get("FMN_IRC_URL", default.irc_url),
            irc_burst=int(env.get("FMN_IRC_BURST", default.irc_burst)),
            irc_rate=float(env.get("FMN_IRC_RATE", default.irc_rate)),
            matrix_url=env.get("FMN_MATRIX_URL", default.matrix_url).rstrip("/"),
            matrix_token=env.get("FMN_MATRIX_TOKEN") or None,
            matrix_per_user=int(env.get("FMN_MATRIX_PER_USER", default.matrix_per_user)),
            feed_url=env.get("FMN_FEED_URL") or None,
            feed_prefix=env.get("FMN_FEED_PREFIX", default.feed_prefix),
            feed_maxlen=int(env.get("FMN_FEED_MAXLEN", default.feed_maxlen)),
            feed_max_age_s=int(env.get("FMN_FEED_MAX_AGE_S", default.feed_max_age_s)),
            idempotency_ttl_s=int(env.get("FMN_IDEMPOTENCY_TTL_S", default.idempotency_ttl_s)),
            retry_delay_s=float(env["FMN_RETRY_DELAY_S"]) if env.get("FMN_RETRY_DELAY_S")
            else None,
            ledger_dir=env.get("FMN_LEDGER_DIR") or None,
            env=env.get("FMN_ENV", default.env).strip().lower() or default.env,
            dev_login=env.get("FMN_DEV_LOGIN", "").strip().lower() in _TRUE,
            oidc_issuer=(env.get("FMN_OIDC_ISSUER") or "").rstrip("/") or None,
            oidc_client_id=env.get("FMN_OIDC_CLIENT_ID") or None,
            oidc_client_secret=env.get("FMN_OIDC_CLIENT_SECRET") or None,
            oidc_trust_email=env.get("FMN_OIDC_TRUST_EMAIL", "").strip().lower() in _TRUE,
            admins=frozenset(a.strip() for a in env.get("FMN_ADMINS", "").split(",")
                             if a.strip()),
        )
