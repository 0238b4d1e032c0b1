"""``fmn up``: the whole pipeline on one machine, on embedded defaults.

What it starts, in order (each reused when it already answers):

1. AWS (``--aws``, :mod:`fmn.local.emulator`): ``AWS_ENDPOINT_URL`` if it
   answers, else LocalStack where it is set up (``scripts/localstack.sh``),
   else a moto server on 127.0.0.1 (SQS, S3, SES, CloudWatch);
2. Redis: ``REDIS_URL`` if it answers, otherwise ``redis-server`` (installed
   by ``scripts/system-deps.sh``) on a port of its own, keeping nothing on disk;
3. where notifications go: an aiosmtpd mail sink (each mail also in the
   Maildir ``var/stack/mail/``), a miniircd IRC server, the live feed
   endpoint (``functions/sse/stream.py``, port 8001 if free), and a Matrix
   homeserver (Synapse, data in ``var/synapse/``, port 8008 if free) with the
   sender's bot (:mod:`fmn.local.matrix`);
4. the preferences database (``FMN_DATABASE_URL``, SQLite by default), seeded
   with generated demo users, and its snapshot published to Redis;
5. the queues and dead-letter queues of :mod:`fmn.pipeline.queues`, the
   claim-check bucket and the alarms of :mod:`fmn.pipeline.alarms` with their
   SNS topic: on LocalStack the messaging stack's synthesized template through
   CloudFormation (:mod:`fmn.local.messaging`), otherwise through the API from
   the same definitions;
6. the bridge, as its own process, subscribed to a local fedmsg endpoint and
   to a RabbitMQ queue bound to every topic of ``amq.topic``;
7. every function under the local runner (match, send_email, send_irc, sse),
   the email sender's digest schedule (every few seconds instead of every
   minute), up to 50 demo users logged in to the IRC server (what they
   receive goes to ``var/stack/irc.log``) and 10 on Matrix
   (``var/stack/matrix.log``).

While it runs it writes ``var/stack/status.json`` every second (what
``fmn status --json`` prints) and shows the queues and what was delivered.
``fmn feed-url USER`` prints a demo user's live feed address.  Stopping it
(SIGINT/SIGTERM) closes the feed, stops the bridge, lets in-flight
invocations finish, then stops what it started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from fmn.local.files import write_json
from fmn.pipeline.alarms import Param, Thresholds
from fmn.pipeline.queues import BACKENDS, QUEUES, queue
from fmn.settings import Settings

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_AWS_PORT = 5055
DEFAULT_REDIS_PORT = 6390
DEFAULT_FEDMSG_ENDPOINT = "tcp://127.0.0.1:9940"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_MATRIX_PORT = 8008
STATUS_FILE = "status.json"
#: the settings a running stack shares through its status file (no secrets)
LOCAL_SETTINGS = ("aws_endpoint_url", "aws_region", "queue_prefix", "claim_bucket",
                  "redis_url", "snapshot_prefix", "database_url")
#: a local bus is quiet but for replays: the bridge beats every few seconds and its silence
#: alarm watches a minute (AWS: a beat a minute, ten minutes), so that ``fmn status``
#: shows it OK while messages flow and ALARM a minute after they stop, not ALARM at start
LOCAL_HEARTBEAT_S = 10
LOCAL_THRESHOLDS = Thresholds(bridge_silence_s=60)
_FORWARDED = re.compile(rb"forwarded=(\d+)")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def end_process(process: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    """SIGTERM ``process`` and wait; SIGKILL it if it has not ended within ``timeout``."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def _wait_for(what: str, check: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s")


def load_function(name: str) -> ModuleType:
    """A function's Chalice ``app.py``, imported from ``functions/<name>/``."""
    return load_module(ROOT / "functions" / name / "app.py", f"fmn_function_{name}")


def load_module(path: Path, name: str) -> ModuleType:
    """A module from a file of a deployable's folder (not a package of this one)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class StackOptions:
    users: int = 2000
    seed: int = 0
    workdir: Path = field(default_factory=lambda: Path("var/stack"))
    aws_port: int = DEFAULT_AWS_PORT
    redis_port: int = DEFAULT_REDIS_PORT
    fedmsg_endpoint: str = DEFAULT_FEDMSG_ENDPOINT
    amqp_url: str = DEFAULT_AMQP_URL
    #: the RabbitMQ queue the bridge consumes (bound to every topic of amqp_exchange)
    amqp_queue: str = "fmn-local-bridge"
    #: the topic exchange publishers use (another than amq.topic keeps a run apart from
    #: other runs on the same broker; it is declared if missing)
    amqp_exchange: str = "amq.topic"
    #: the local AWS: ``auto``, ``localstack`` or ``moto`` (:mod:`fmn.local.emulator`)
    aws: str = "auto"
    #: the runner's wait between receives where the emulator has no real long polls
    #: (the moto server; LocalStack long-polls ``long_poll_s``)
    poll_wait_s: int = 2
    #: how often scheduled functions run (the digest flush: every minute on AWS)
    schedule_s: float = 5.0
    #: the live feed endpoint's port (another is chosen when it is taken)
    feed_port: int = 8001
    #: the web UI's port (another is chosen when it is taken)
    web_port: int = 8000
    #: start a Matrix homeserver (Synapse) for the Matrix sender, or use ``synapse``
    #: (a running fmn.local.synapse.LocalSynapse); demo people reading their rooms.
    #: Without it (the default but for ``fmn up``) the Matrix sender does not run and
    #: the ``matrix`` queue only fills.
    matrix: bool = False
    synapse: Any = None
    matrix_people: int = 10
    #: queues whose function runs in a child process (``fmn.local.worker``) that a
    #: fault test can kill (``LocalStack.kill_worker``); the others run in-process
    external: tuple[str, ...] = ()
    #: queue -> how many child processes run its function (external queues; 1 by
    #: default): Lambda runs each concurrent invocation in an environment, and an
    #: interpreter, of its own. The queue's maximum concurrency is shared among them,
    #: and the first alone runs the schedule. Only where receives are real long polls
    #: (LocalStack): the moto server hands one message to two receivers.
    processes: dict[str, int] = field(default_factory=dict)
    #: every queue's visibility timeout and its function's timeout, scaled down
    #: for fault tests (None: the definitions' own)
    visibility_s: int | None = None
    #: start the web UI (the load test does without)
    web: bool = True
    #: queue -> the most concurrent invocations of its function (the queue's own by default)
    max_concurrency: dict[str, int] = field(default_factory=dict)
    #: seconds between writes of status.json (None: not written)
    status_every_s: float | None = 1.0
    #: each function's JSON logs and EMF lines go to DIR/<function>.log (None: the console)
    log_dir: Path | None = None
    #: the bridge counts its AWS requests into this file (FMN_REQUEST_COUNTS)
    request_counts: Path | None = None
    #: real long polls of this many seconds where the emulator has them (LocalStack,
    #: like SQS); the moto server gets short receives taking turns instead
    long_poll_s: int = 10
    #: the mail sink in a process of its own, keeping no mail in memory (the load test)
    mail_process: bool = False


class LocalStack:
    def __init__(self, settings: Settings, options: StackOptions) -> None:
        self.settings = settings
        self.options = options
        self.workdir = options.workdir
        self.env: dict[str, str] = {}
        self.urls: dict[str, Any] = {}
        self.runners: dict[str, Any] = {}
        self.functions: dict[str, ModuleType] = {}
        #: worker name (the queue's, ``<queue>-2``... for further processes) -> process
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        #: worker name -> its queue
        self.worker_queues: dict[str, str] = {}
        self._moto: subprocess.Popen[bytes] | None = None
        self._redis: subprocess.Popen[bytes] | None = None
        self._bridge: subprocess.Popen[bytes] | None = None
        self._bridged = 0
        self.mail: Any = None
        self.ircd: Any = None
        self.feed: Any = None
        self.web: Any = None
        self.web_port = 0
        self.irc_listeners: list[Any] = []
        self.matrix: Any = None
        self._matrix_people: list[str] = []
        self._demo_users: tuple[Any, ...] = ()
        #: the demo users the replay notifies, the suggested one first (fmn.local.demo)
        self.demo_ranking: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._saved_env: dict[str, str | None] = {}
        self._stopping = threading.Event()
        self.sqs: Any = None
        self._journal: Any = None
        self.cloudwatch: Any = None
        #: the stage's alarms (fmn.pipeline.alarms), created with the queues
        self.alarms: list[Any] = []
        #: ``localstack`` or ``moto``: which emulator the stack runs on
        self.emulator = ""

    # -- the ledger ------------------------------------------------------------

    @property
    def ledger_dir(self) -> Path:
        """The ledger's journal of this stack (``fmn ledger --workdir``)."""
        return self.workdir / "ledger"

    @property
    def journal(self) -> Any:
        """The :class:`fmn.ledger.Journal` publishers write the ids they publish to."""
        if self._journal is None:
            from fmn.ledger import Journal

            self._journal = Journal(self.ledger_dir)
        return self._journal

    def _start_journal(self) -> None:
        """A fresh journal, as the queues start empty: the ledger accounts for this run."""
        from fmn.ledger.journal import FAILED, MATCHED, PUBLISHED

        for name in (PUBLISHED, MATCHED, FAILED):
            (self.ledger_dir / name).unlink(missing_ok=True)
        self.journal.write_stack({
            "queue_prefix": self.settings.queue_prefix, "redis_url": self.settings.redis_url,
            "feed_prefix": self.settings.feed_prefix,
            "aws_endpoint_url": self.settings.aws_endpoint_url,
            "aws_region": self.settings.aws_region,
            "maildir": str((self.workdir / "mail").resolve()),
            "irc_log": str((self.workdir / "irc.log").resolve()),
            "status_file": str((self.workdir / STATUS_FILE).resolve())})

    def ledger(self) -> Any:
        """The :class:`fmn.ledger.LedgerReport` of this stack's run so far."""
        from fmn.ledger import account

        return account(self.ledger_dir, sqs=self.sqs, bridged=self._bridged)

    # -- start -----------------------------------------------------------------

    def start(self, say: Any = print) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The functions' metrics are JSON lines meant for CloudWatch.
        self.env.setdefault("POWERTOOLS_METRICS_DISABLED",
                            os.environ.get("POWERTOOLS_METRICS_DISABLED", "true"))
        say(f"1/7 AWS: {self._start_aws()}")
        say(f"2/7 Redis: {self._start_redis()}")
        self.settings = dataclasses.replace(
            self.settings, aws_endpoint_url=self.env["AWS_ENDPOINT_URL"],
            redis_url=self.env["REDIS_URL"])
        # The functions (in this process) and the bridge (its own) read their
        # settings from the environment, as on AWS: export this stack's.
        self.env.update(
            FMN_LEDGER_DIR=str(self.ledger_dir),
            FMN_DATABASE_URL=self.settings.database_url,
            FMN_SNAPSHOT_PREFIX=self.settings.snapshot_prefix,
            FMN_SNAPSHOT_POLL_S=str(self.settings.snapshot_poll_s),
            AWS_DEFAULT_REGION=self.settings.aws_region,
            FMN_QUEUE_PREFIX=self.settings.queue_prefix,
            FMN_CLAIM_BUCKET=self.settings.claim_bucket)
        if self.settings.retry_delay_s is not None:  # fault tests scale the back-off down
            self.env["FMN_RETRY_DELAY_S"] = str(self.settings.retry_delay_s)
        self._saved_env = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        say(f"3/7 delivery: {self._start_delivery()}")
        self._saved_env.update({k: os.environ.get(k) for k in self.env
                                if k not in self._saved_env})
        os.environ.update(self.env)
        say(f"4/7 preferences: {self._seed_preferences()}")
        deployed = self._deploy_messaging()
        say(f"5/7 queues: {self._make_queues()}; alarms: {self._make_alarms(deployed)}")
        say(f"6/7 bridge: {self._start_bridge()}")
        say(f"7/7 functions: {self._start_functions()}; {self._watch_irc()}"
            + (f"; {self.matrix.watch(self._matrix_people)}" if self.matrix else "")
            + (f"; their logs and metrics in {self.options.log_dir}/<function>.log"
               if self.options.log_dir is not None else ""))
        if self.options.web:
            say(f"web UI: {self._start_web()}")
        self._quiet()
        if self.options.status_every_s is not None:
            writer = threading.Thread(target=self._write_status, name="status", daemon=True)
            writer.start()
            self._threads.append(writer)

    def _quiet(self) -> None:
        # The functions' INFO lines (structured
        # JSON meant for CloudWatch), would drown the status display; -v and
        # POWERTOOLS_LOG_LEVEL=INFO bring them back.
        if not log.isEnabledFor(logging.INFO):
            for name in ("fmn", "fmn-match", "fmn-send-email", "fmn-send-irc", "fmn-sse",
                         "fmn-send-matrix"):
                logging.getLogger(name).setLevel(logging.WARNING)

    @property
    def long_polling(self) -> bool:
        """Whether the emulator long-polls and never hands one message to two receivers
        (LocalStack does, as SQS; the moto server does neither)."""
        from fmn.local.emulator import LOCALSTACK

        return self.emulator == LOCALSTACK

    def _start_aws(self) -> str:
        from fmn.local.emulator import LOCALSTACK, choose

        chosen = choose(self.options.aws, self.settings.aws_endpoint_url)
        self.emulator = chosen.kind
        if chosen.endpoint is not None:
            self.env["AWS_ENDPOINT_URL"] = chosen.endpoint
            if chosen.kind == LOCALSTACK:  # any key will do; never real credentials
                self.env.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
                return (f"LocalStack at {chosen.endpoint} (shared; this stack's resources "
                        f"are named {self.settings.queue_prefix}*)")
            if not os.environ.get("AWS_ACCESS_KEY_ID"):  # an emulator takes any
                self.env.update(AWS_ACCESS_KEY_ID="local", AWS_SECRET_ACCESS_KEY="local")
            return f"using {chosen.endpoint}"
        port: int = self.options.aws_port \
            if not _port_open("127.0.0.1", self.options.aws_port) else free_port()
        # Its own process: in this one it would share the GIL with the functions.
        self._moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=(self.workdir / "moto.log").open("ab"))
        _wait_for("the moto server", lambda: _port_open("127.0.0.1", port))
        endpoint = f"http://127.0.0.1:{port}"
        self.env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="local",
                        AWS_SECRET_ACCESS_KEY="local")
        return f"moto server at {endpoint} (SQS, S3, SES, CloudWatch)"

    def _start_redis(self) -> str:
        import redis

        from fmn.redisconn import connect

        try:
            connect(self.settings.redis_url, socket_timeout=1).ping()
            self.env["REDIS_URL"] = self.settings.redis_url
            return f"using {self.settings.redis_url}"
        except redis.RedisError:
            pass
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("no Redis answers at REDIS_URL and redis-server is not "
                               "installed (scripts/system-deps.sh installs it)")
        port = self.options.redis_port if not _port_open("127.0.0.1", self.options.redis_port) \
            else free_port()
        self._redis = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        _wait_for("redis-server", lambda: _port_open("127.0.0.1", port))
        self.env["REDIS_URL"] = url
        return f"started redis-server at {url}"

    def _start_delivery(self) -> str:
        """Where the senders deliver: a mail sink, an IRC server, the live feed endpoint."""
        from fmn.local.http import serve
        from fmn.local.ircd import LocalIrcd
        from fmn.local.mailsink import MailSink, ProcessMailSink

        self.mail = (ProcessMailSink(self.workdir / "mail") if self.options.mail_process
                     else MailSink(maildir=self.workdir / "mail")).start()
        self.ircd = LocalIrcd(log_file=self.workdir / "ircd.log").start()
        # the web UI's address goes into every mail and IRC line: known before they start
        self.web_port = self.options.web_port \
            if not _port_open("127.0.0.1", self.options.web_port) else free_port()
        self.settings = dataclasses.replace(self.settings,
                                            web_url=f"http://127.0.0.1:{self.web_port}")
        self.env.update(FMN_MAIL_TRANSPORT="smtp", FMN_SMTP_URL=self.mail.url,
                        FMN_IRC_URL=self.ircd.url_for("fmn"), FMN_WEB_URL=self.settings.web_url,
                        FMN_FEED_PREFIX=self.settings.feed_prefix)
        stream = load_module(ROOT / "functions" / "sse" / "stream.py", "fmn_function_sse_stream")
        feed_app = stream.create_app(self.settings)
        port = self.options.feed_port if not _port_open("127.0.0.1", self.options.feed_port) \
            else None
        self.feed = serve(feed_app, port=port, name="feed", on_stop=feed_app.state.close_streams)
        self.settings = dataclasses.replace(self.settings, feed_url=self.feed.url)
        self.env["FMN_FEED_URL"] = self.feed.url
        matrix = ""
        if self.options.matrix:
            from fmn.local.matrix import LocalMatrix

            self.matrix = LocalMatrix(self.workdir.parent / "synapse", self.workdir,
                                      self.options.synapse)
            matrix = f", Matrix: {self.matrix.start()}"
            self.env.update(self.matrix.env())
        return (f"mail sink {self.mail.url} (Maildir {self.workdir / 'mail'}), IRC server "
                f"{self.ircd.url}, live feed {self.feed.url}/feed{matrix}")

    def _start_web(self) -> str:
        """The preferences web UI and API, with the development login (demo users)."""
        webapp = load_module(ROOT / "webapp" / "app.py", "fmn_webapp")
        self.web = webapp.serve_local(
            dataclasses.replace(self.settings, dev_login=True, admins=frozenset({"admin"})),
            self.web_port, demo_users=[u.name for u in self.demo_ranking[:20]])
        suggested = f"; try {self.demo_user}" if self.demo_user else ""
        return f"{self.web.url}/ (development login: any demo user{suggested})"

    def demo_hint(self) -> str:
        """Where to watch a demo user's notifications arrive."""
        from fmn.auth import feed_url

        user = self.demo_user
        lines = [f"mail: {self.workdir / 'mail'}/new/   IRC: {self.workdir / 'irc.log'}"
                 + (f"   Matrix: {self.workdir / 'matrix.log'}" if self.matrix else "")]
        if user is not None and self.feed is not None:
            top = self.demo_ranking[0] if self.demo_ranking else None
            expect = f" ({top.feed} notifications on it from the replay)" \
                if top is not None and top.feed else ""
            lines.append(f"live feed of demo user {user}{expect}: curl -N "
                         f"'{feed_url(self.feed.url, user, self.settings.secret_key)}'"
                         "  (fmn feed-url USER for another)")
        return "\n".join(lines)

    def _watch_irc(self, limit: int = 50) -> str:
        """Log some demo users in to IRC, so their notifications land (``irc.log``)."""
        from fmn.local.ircd import IrcListener

        nicks = sorted({d.address for u in self._demo_users if u.enabled
                        for d in u.destinations
                        if d.protocol == "irc" and d.verified and d.address})[:limit]
        for nick in nicks:
            try:
                self.irc_listeners.append(IrcListener(self.ircd.port, nick,
                                                      log=self.workdir / "irc.log"))
            except (OSError, TimeoutError) as exc:
                log.warning("demo IRC user %s not logged in: %s", nick, exc)
        return f"{len(self.irc_listeners)} demo users on IRC (lines in {self.workdir}/irc.log)"

    def _seed_preferences(self) -> str:
        from fmn import db
        from fmn.generate import generate_preferences
        from fmn.snapshot.store import RedisSnapshotStore
        from fmn.snapshot.sync import publish_full

        url = self.settings.database_url
        engine = db.make_engine(url)
        db.upgrade(engine)
        prefs = generate_preferences(self.options.users, self.options.seed)
        if self.matrix is not None:
            from fmn.local.matrix import localize, people_of

            prefs = localize(prefs, self.matrix.server_name, self.options.matrix_people)
            self._matrix_people = people_of(prefs)
        self._demo_users = prefs.users
        db.import_preferences(engine, prefs)
        store = RedisSnapshotStore.from_url(self.settings.redis_url,
                                            self.settings.snapshot_prefix)
        data = publish_full(engine, store)
        self.demo_ranking = self._rank_demo_users(prefs, data)
        return (f"{self.options.users:,} demo users in {url}; snapshot {data.id} "
                f"({len(data.users):,} users with live rules)")

    def _rank_demo_users(self, prefs: Any, data: Any) -> list[Any]:
        """The demo users ranked by what the replay will notify them of."""
        from fmn.bench import default_message_files
        from fmn.local.demo import rank_demo_users, read_messages
        from fmn.snapshot import Snapshot

        try:
            files = default_message_files()
        except FileNotFoundError as exc:
            log.warning("demo users not ranked: %s", exc)
            return []
        return rank_demo_users(prefs, Snapshot.from_data(data), read_messages(files))

    @property
    def demo_user(self) -> str | None:
        """The suggested demo user: the one the replay notifies most (on the live feed)."""
        if self.demo_ranking:
            return str(self.demo_ranking[0].name)
        return next((u.name for u in self._demo_users if u.enabled and any(
            d.protocol == "sse" and d.verified for d in u.destinations)), None)

    def _make_queues(self) -> str:
        from fmn.local.aws import clients, ensure_queues

        aws = clients(self.settings)
        self.sqs = aws.sqs
        self.urls = ensure_queues(aws.sqs, self.settings.queue_prefix, self.queues())
        for urls in self.urls.values():  # counters start at zero
            for url in (urls.url, urls.dlq_url):
                aws.sqs.purge_queue(QueueUrl=url)
        self._clear_stage_state()
        self._start_journal()
        with contextlib.suppress(aws.s3.exceptions.BucketAlreadyOwnedByYou):
            aws.s3.create_bucket(Bucket=self.settings.claim_bucket)
        return f"{len(self.urls)} queues with dead-letter queues, bucket " \
               f"{self.settings.claim_bucket}"

    def _deploy_messaging(self) -> str | None:
        """On LocalStack, the messaging stack's synthesized template through CloudFormation
        (queues, DLQs, claim bucket, alarms, topic, dashboard); the stack's name, or None
        where it is not (no template: ``make synth``; the moto server skips alarms)."""
        from fmn.aws import client
        from fmn.local import messaging

        template = messaging.find_template()
        if self.emulator != "localstack" or template is None:
            return None
        prefix = self.settings.queue_prefix
        try:
            outputs = messaging.deploy(
                client("cloudformation", self.settings), template, prefix,
                {Param("bridge_silence_s").cfn_name: str(LOCAL_THRESHOLDS.bridge_silence_s)},
                sns=client("sns", self.settings))
        except Exception as exc:  # the same resources then come from the API
            log.warning("messaging template %s not deployed (%s): creating the queues and "
                        "alarms through the API", template.name, exc)
            return None
        bucket = outputs.get("ClaimBucketName")
        if bucket:  # the template names it after the account: the functions must know it
            self.settings = dataclasses.replace(self.settings, claim_bucket=bucket)
            self.env["FMN_CLAIM_BUCKET"] = bucket
            os.environ["FMN_CLAIM_BUCKET"] = bucket
        return messaging.stack_name(prefix)

    def _make_alarms(self, deployed: str | None = None) -> str:
        """The stage's messaging alarms (queue age and depth, dead letters, the bridge)
        and their SNS topic, from the same definitions as the deployment's template."""
        from fmn.aws import client
        from fmn.ops.alarms import ensure_alarms
        from fmn.pipeline.alarms import messaging_alarms

        self.cloudwatch = client("cloudwatch", self.settings)
        if deployed is not None:
            self.alarms = messaging_alarms(self.settings.queue_prefix)
            return (f"{len(self.alarms)} from the messaging template (CloudFormation stack "
                    f"{deployed}), evaluated by LocalStack")
        self.alarms, topic = ensure_alarms(self.cloudwatch, client("sns", self.settings),
                                           self.settings.queue_prefix, LOCAL_THRESHOLDS)
        evaluated = "evaluated by LocalStack; no messaging template deployed (make synth " \
            "writes it)" if self.emulator == "localstack" else \
            "stored, never evaluated by the moto server"
        return f"{len(self.alarms)} created through the API ({evaluated}), notifying {topic}"

    def _clear_stage_state(self) -> None:
        """Start from a clean Redis for this stage, as from empty queues: the senders
        remember every send for days (no duplicate after a redelivery), so a second
        run's replay of the same messages would otherwise send nothing."""
        from fmn.delivery.digest import digest_prefix
        from fmn.delivery.once import sends_prefix
        from fmn.preview.window import window_key
        from fmn.redisconn import connect

        prefix = self.settings.queue_prefix
        patterns = [f"{sends_prefix(prefix, backend)}#*" for backend in BACKENDS]
        patterns += [f"{digest_prefix(prefix)}*", f"{window_key(prefix)}*",
                     f"{self.settings.feed_prefix}*"]
        client = connect(self.settings.redis_url)
        try:
            for pattern in patterns:
                batch = []
                for key in client.scan_iter(match=pattern, count=1000):
                    batch.append(key)
                    if len(batch) >= 1000:
                        client.delete(*batch)
                        batch = []
                if batch:
                    client.delete(*batch)
        finally:
            client.close()

    def _bridge_config(self) -> Path:
        path = self.workdir / "bridge.toml"
        queue = self.options.amqp_queue
        path.write_text(f"""\
# fedora-messaging configuration of the local bridge (written by fmn up)
amqp_url = "{self.options.amqp_url}"
passive_declares = false

[client_properties]
app = "fmn local bridge"

[qos]
prefetch_size = 0
prefetch_count = 50

[queues."{queue}"]
durable = true
auto_delete = false
exclusive = false
arguments = {{}}

[[bindings]]
queue = "{queue}"
exchange = "{self.options.amqp_exchange}"
routing_keys = ["#"]

[consumer_config]
fmn_bridge_queue = "{queue}"
""")
        return path

    def _purge_amqp_queue(self) -> None:
        """Start from an empty bus queue, as the SQS queues do: the counters
        count this stack's messages, not what an earlier run left behind.

        The queue is bound here, not only by the bridge once it is connected:
        as Fedora's broker keeps the bridge's queue bound, whatever is
        published from now on waits in it (RabbitMQ drops what a topic
        exchange routes nowhere, and the bridge takes a moment to start)."""
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(self.options.amqp_url))
        try:
            channel = conn.channel()
            if not self.options.amqp_exchange.startswith("amq."):
                channel.exchange_declare(self.options.amqp_exchange, "topic", durable=True)
            channel.queue_declare(self.options.amqp_queue, durable=True)
            channel.queue_bind(self.options.amqp_queue, self.options.amqp_exchange,
                               routing_key="#")
            channel.queue_purge(self.options.amqp_queue)
        finally:
            conn.close()

    def restart_bridge(self) -> None:
        """SIGKILL the bridge and start it again on the same bus queue (nothing purged)."""
        if self._bridge is not None:
            self._bridge.kill()
            self._bridge.wait(timeout=10)
        self._start_bridge(purge=False)

    def _start_bridge(self, purge: bool = True) -> str:
        if purge:  # as the queues were: what an earlier stack's bridge left is not sent
            self._purge_amqp_queue()
            shutil.rmtree(self.workdir / "bridge-spool", ignore_errors=True)
        config = self._bridge_config()
        env = {**os.environ, **self.env}
        if self.options.request_counts is not None:
            env["FMN_REQUEST_COUNTS"] = str(self.options.request_counts)
        self._bridge = subprocess.Popen(
            [sys.executable, "-m", "fmn_bridge.cli", "--fedmsg", self.options.fedmsg_endpoint,
             "--amqp-config", str(config), "--stats-interval", "1",
             "--heartbeat-interval", str(LOCAL_HEARTBEAT_S),
             # the stack's own: not left behind in the shared var/bridge-spool
             "--spool-dir", str(self.workdir / "bridge-spool")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        reader = threading.Thread(target=self._read_bridge, name="bridge-log", daemon=True)
        reader.start()
        self._threads.append(reader)
        return (f"pid {self._bridge.pid}, fedmsg {self.options.fedmsg_endpoint}, "
                f"AMQP queue {self.options.amqp_queue} on {self.options.amqp_exchange}")

    @property
    def bridge_pid(self) -> int | None:
        return self._bridge.pid if self._bridge is not None else None

    @property
    def moto_pid(self) -> int | None:
        return self._moto.pid if self._moto is not None else None

    @property
    def bridged(self) -> int:
        """Bus messages the bridge has received so far (its latest stats line)."""
        return self._bridged

    def _read_bridge(self) -> None:
        assert self._bridge is not None and self._bridge.stderr is not None
        with (self.workdir / "bridge.log").open("ab") as out:
            for line in self._bridge.stderr:
                out.write(line)
                out.flush()
                found = _FORWARDED.search(line)
                if found:
                    self._bridged = int(found.group(1))

    def _start_functions(self) -> str:
        from fmn.local.runner import EventSourceMapping

        started = []
        for q in self.queues():
            if q.function is None or not (ROOT / "functions" / q.function / "app.py").exists():
                continue
            if q.name == "matrix" and self.matrix is None:
                continue  # no homeserver: the queue keeps them
            if q.name in self.options.external:
                n = self.start_workers(q.name)
                started.append(f"{q.function} ({'own process' if n == 1 else f'{n} processes'})"
                               f" <- {q.sqs_name(self.settings.queue_prefix)}")
                continue
            if q.function not in self.functions:
                self.functions[q.function] = load_function(q.function)
                if self.options.log_dir is not None:
                    from fmn.local.logs import to_file

                    to_file(self.functions[q.function], q.function, self.options.log_dir)
            module = self.functions[q.function]
            handler = getattr(module, "handler", None) or getattr(module, f"handle_{q.name}")
            if q.name in self.options.max_concurrency:
                q = dataclasses.replace(q, max_concurrency=self.options.max_concurrency[q.name])
            long_poll = self.long_polling
            runner = EventSourceMapping(self.sqs, q, self.urls[q.name], handler,
                                        function_name=q.function,
                                        poll_wait_s=self.options.long_poll_s if long_poll
                                        else self.options.poll_wait_s,
                                        serialize_receives=not long_poll)
            runner.start()
            self.runners[q.name] = runner
            started.append(f"{q.function} <- {q.sqs_name(self.settings.queue_prefix)}")
        if "send_email" in self.functions:
            ticker = threading.Thread(target=self._schedule, name="schedule", daemon=True)
            ticker.start()
            self._threads.append(ticker)
        return ", ".join(started) or "none"

    def queues(self) -> list[Any]:
        """The queue definitions this stack runs (visibility scaled when asked)."""
        if self.options.visibility_s is None:
            return list(QUEUES)
        return [dataclasses.replace(q, visibility_timeout_s=self.options.visibility_s)
                for q in QUEUES]

    def start_workers(self, queue_name: str) -> int:
        """Run the function of ``queue_name`` in its child processes (``processes``,
        where receives are long polls); how many were started."""
        q = queue(queue_name)
        n = max(1, self.options.processes.get(queue_name, 1))
        if n > 1 and not self.long_polling:
            log.warning("the %s function runs in one process, not %d: this emulator hands "
                        "one message to two receivers", q.function, n)
            n = 1
        total = self.options.max_concurrency.get(queue_name, q.max_concurrency)
        for i in range(n):
            share = total // n + (1 if i < total % n else 0)  # the queue's, shared out
            self.start_worker(queue_name, queue_name if i == 0 else f"{queue_name}-{i + 1}",
                              max_concurrency=max(1, share) if n > 1 else None,
                              schedule=i == 0)
        return n

    def start_worker(self, queue_name: str, name: str | None = None,
                     max_concurrency: int | None = None, schedule: bool = True) -> None:
        """Run the function of ``queue_name`` under its own runner in a child process
        (the worker ``name``, the queue's by default)."""
        name = name or queue_name
        poll_wait_s = self.options.long_poll_s if self.long_polling else self.options.poll_wait_s
        args = [sys.executable, "-m", "fmn.local.worker", queue_name,
                "--poll-wait-s", str(poll_wait_s), "--schedule-s", str(self.options.schedule_s)]
        if self.options.visibility_s is not None:
            args += ["--visibility-s", str(self.options.visibility_s)]
        if max_concurrency is None:
            max_concurrency = self.options.max_concurrency.get(queue_name)
        if max_concurrency is not None:
            args += ["--max-concurrency", str(max_concurrency)]
        if not schedule:
            args.append("--no-schedule")
        if self.long_polling:
            args.append("--long-poll")
        if self.options.log_dir is not None:
            args += ["--log-dir", str(self.options.log_dir)]
        args += ["--stats", str(self.worker_file(name, "stats")),
                 "--request-counts", str(self.worker_file(name, "requests"))]
        with (self.workdir / f"worker-{name}.log").open("ab") as log_file:
            self.workers[name] = subprocess.Popen(
                args, env={**os.environ, **self.env}, stdout=log_file, stderr=log_file)
        self.worker_queues[name] = queue_name

    def worker_file(self, name: str, kind: str) -> Path:
        """What the worker ``name`` writes when it stops (``stats``: its runner's
        totals; ``requests``: its AWS request counts), as JSON."""
        return self.workdir / f"worker-{name}-{kind}.json"

    def stop_workers(self) -> None:
        """SIGTERM every function's child process and wait: in-flight invocations
        finish and each writes its :meth:`worker_file` files (a digest flush may take
        its whole deadline, the email queue's visibility timeout, then the runner its
        own, so the wait is longer than both)."""
        timeout = max(q.visibility_timeout_s for q in self.queues()) + 90
        for worker in self.workers.values():  # all at once: each winds down meanwhile
            if worker.poll() is None:
                worker.terminate()
        deadline = time.monotonic() + timeout
        for name, worker in self.workers.items():
            try:
                worker.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # its stacks to its log, then it is killed
                log.warning("the %s worker did not stop within %ds: killed (its threads' "
                            "stacks are in %s)", name, timeout,
                            self.workdir / f"worker-{name}.log")
                worker.send_signal(signal.SIGUSR1)
                time.sleep(1.0)
                end_process(worker, 10)

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker ``name`` (its queue's first, by the queue's name): what it
        was doing is cut short."""
        worker = self.workers.pop(name)
        self.worker_queues.pop(name, None)
        worker.kill()
        worker.wait(timeout=10)

    def _schedule(self) -> None:
        """The functions' schedules: the email sender's digest flush (every minute on
        AWS, every few seconds here)."""
        from fmn.local.runner import scheduled_context

        flush = self.functions["send_email"].flush_digests_now
        timeout = next(q.visibility_timeout_s for q in self.queues() if q.name == "email")
        while not self._stopping.wait(self.options.schedule_s):
            try:  # each run with its own deadline, as on AWS
                flush(scheduled_context("send_email-flush_digests", timeout))
            except Exception as exc:  # a failed run is retried at the next tick
                log.warning("digest flush failed: %s", exc)

    # -- status ----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        queues: dict[str, Any] = {}
        dead: dict[str, int] = {}
        for q in QUEUES:
            urls = self.urls[q.name]
            main = self._attributes(urls.url)
            dlq = self._attributes(urls.dlq_url)
            runner = self.runners.get(q.name)
            stats = runner.stats() if runner is not None else None
            queues[q.name] = {
                "visible": main[0], "in_flight": main[1], "dlq": max(-1, dlq[0] + dlq[1]),
                "concurrency": stats.concurrency if stats else 0,
                "messages_per_s": round(stats.messages_per_s, 1) if stats else 0.0,
            }
            dead[q.name] = max(-1, dlq[0] + dlq[1])
        totals: Any = getattr(self.functions.get("match"), "totals", {})
        delivered = {b: 0 for b in BACKENDS}
        offline = 0
        for q in QUEUES:
            sent: Any = getattr(self.functions.get(q.function or ""), "totals", None)
            if sent is not None and q.name in BACKENDS:
                # an IRC line may carry several notifications ("12 more ..."), a
                # digest mail many
                delivered[q.name] = sum(int(sent.get(k, 0))
                                        for k in ("sent", "summarised", "digested"))
                offline += int(sent.get("offline", 0))
        return {
            "aws": self.emulator,
            # what `fmn dlq` and `fmn doctor` from another shell need to find this stage
            "settings": {k: getattr(self.settings, k) for k in LOCAL_SETTINGS},
            "alarms": self._alarm_states(),
            "demo_user": self.demo_user,
            "feed_url": self.feed.url if self.feed is not None else None,
            "web_url": self.web.url if self.web is not None else None,
            "queues": queues,
            "counters": {
                "bridged": self._bridged,
                "matched": int(totals.get("MessagesMatched", 0)),
                "notifications": {b: int(totals.get(f"Notifications_{b}", 0))
                                  for b in BACKENDS},
                "delivered": delivered,
                "mail_received": self.mail.count if self.mail is not None else 0,
                "irc_offline": offline,
                "irc_lines_received": sum(len(w.got) for w in self.irc_listeners),
                "matrix_received": self.matrix.received() if self.matrix else 0,
                "dead_lettered": dead,
            },
        }

    def _alarm_states(self) -> list[dict[str, str]]:
        from fmn.ops.alarms import alarm_states

        if self.cloudwatch is None or not self.alarms:
            return []
        try:
            return [s.to_json() for s in alarm_states(self.cloudwatch, self.alarms)]
        except Exception as exc:  # a status reading must never stop the stack
            log.warning("cannot read the alarms: %s", exc)
            return [{"name": a.name, "kind": a.kind, "subject": a.subject, "state": "UNKNOWN",
                     "reason": str(exc)[:200]} for a in self.alarms]

    def _attributes(self, url: str) -> tuple[int, int]:
        """(visible, in flight); (-1, -1) when the queue cannot be read (gone, emulator busy)."""
        try:
            attrs = self.sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                              "ApproximateNumberOfMessagesNotVisible"]
            )["Attributes"]
        except Exception as exc:  # a status reading must never stop the stack
            log.warning("cannot read queue %s: %s", url.rsplit("/", 1)[-1], exc)
            return (-1, -1)
        return (int(attrs["ApproximateNumberOfMessages"]),
                int(attrs["ApproximateNumberOfMessagesNotVisible"]))

    def _write_status(self) -> None:
        path = self.workdir / STATUS_FILE
        while not self._stopping.wait(1.0):
            try:
                doc = {"updated_at": time.time(), **self.status()}
            except Exception as exc:  # a status reading must not kill the stack
                log.warning("status not updated: %s", exc)
                continue
            write_json(path, doc, indent=1)

    # -- stop ------------------------------------------------------------------

    def quiesce(self) -> None:
        """Stop every function (their runners and the digest schedule) and let what they
        have in flight finish, leaving the queues, sinks and Redis as they are: a still
        state for the ledger, which otherwise races a digest being sent while it reads
        (the digest's items gone from Redis, its mail not yet in the Maildir it read)."""
        self._stopping.set()
        stoppers = [threading.Thread(target=runner.stop, kwargs={"timeout": 60},
                                     name=f"stop-{name}")
                    for name, runner in self.runners.items()]
        stoppers.append(threading.Thread(target=self.stop_workers, name="stop-workers"))
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        for t in self._threads:
            if t.name == "schedule":
                t.join(60)

    def stop(self) -> None:
        self._stopping.set()
        if self.web is not None:
            self.web.stop()
        if self.feed is not None:  # open streams would hold the shutdown up
            self.feed.stop()
        end_process(self._bridge, 30)
        self.stop_workers()
        # together: on LocalStack each idle poller may be in a long poll
        stoppers = [threading.Thread(target=runner.stop, kwargs={"timeout": 60},
                                     name=f"stop-{name}")
                    for name, runner in self.runners.items()]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        if "send_irc" in self.functions:
            self.functions["send_irc"].reset()  # hangs up its connection
        for listener in self.irc_listeners:
            listener.close()
        if "send_matrix" in self.functions:
            self.functions["send_matrix"].reset()  # closes the bot's session
        if self.matrix is not None:
            self.matrix.stop()
        if self.ircd is not None:
            self.ircd.stop()
        if self.mail is not None:
            self.mail.stop()
        end_process(self._redis)
        end_process(self._moto)
        (self.workdir / STATUS_FILE).unlink(missing_ok=True)
        for key, value in self._saved_env.items():  # as it was before start()
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


#: how an alarm state reads in the status table
_STATE = {"OK": "ok", "ALARM": "ALARM", "INSUFFICIENT_DATA": "no data", "MISSING": "missing"}


def _alarm_cell(alarms: list[dict[str, str]], kind: str, subject: str, suffix: str = "") -> str:
    for a in alarms:
        if a.get("kind") == kind and a.get("subject") == subject \
                and a.get("name", "").endswith(suffix):
            return _STATE.get(a.get("state", ""), a.get("state", "?").lower())
    return "-"


def format_status(doc: dict[str, Any]) -> str:
    alarms: list[dict[str, str]] = doc.get("alarms") or []
    header = f"{'queue':<10} {'visible':>8} {'in flight':>9} {'DLQ':>5} {'conc.':>5} {'msg/s':>8}"
    if alarms:
        header += f"   alarms: {'age':<8} {'depth':<8} {'DLQ':<8}"
    lines = [header]
    for name, q in doc["queues"].items():
        line = (f"{name:<10} {q['visible']:>8} {q['in_flight']:>9} {q['dlq']:>5} "
                f"{q['concurrency']:>5} {q.get('messages_per_s', 0):>8}")
        if alarms:
            line += (f"           {_alarm_cell(alarms, 'queue', name, '-age'):<8} "
                     f"{_alarm_cell(alarms, 'queue', name, '-depth'):<8} "
                     f"{_alarm_cell(alarms, 'dlq', name):<8}")
        lines.append(line.rstrip())
    others = [a for a in alarms if a.get("kind") not in ("queue", "dlq")]
    if others:
        lines.append("alarms: " + ", ".join(
            f"{a['name']} {_STATE.get(a['state'], a['state'].lower())}" for a in others))
    c = doc["counters"]
    notes = ", ".join(f"{b} {n}" for b, n in c["notifications"].items())
    lines.append(f"bridged {c['bridged']}, matched {c['matched']}, notifications: {notes}")
    sent = ", ".join(f"{b} {n}" for b, n in c.get("delivered", {}).items())
    lines.append(f"delivered: {sent}; mail in the sink {c.get('mail_received', 0)}, IRC lines "
                 f"to demo users {c.get('irc_lines_received', 0)} (offline nicks "
                 f"{c.get('irc_offline', 0)}), Matrix notices to demo users "
                 f"{c.get('matrix_received', 0)}")
    return "\n".join(lines)


def read_status(workdir: Path, max_age_s: float = 5.0) -> dict[str, Any]:
    path = workdir / STATUS_FILE
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise RuntimeError("no local stack is running here (start one with: fmn up)") from None
    age = time.time() - float(doc.get("updated_at", 0))
    if age > max_age_s:
        raise RuntimeError(f"the local stack's status is {age:.0f}s old: is fmn up still "
                           "running?")
    doc.pop("updated_at", None)
    return doc


def replay_shared(stack: LocalStack, say: Any = print) -> None:
    """Replay the shared messages: fedmsg envelopes via fedmsg, the rest via AMQP."""
    from fmn.bench import default_message_files
    from fmn.local import replay

    fedmsg_file, fm_file = default_message_files()
    say(f"replaying {fedmsg_file} on {stack.options.fedmsg_endpoint} ...")
    replay.replay_fedmsg(fedmsg_file, stack.options.fedmsg_endpoint, None,
                         journal=stack.journal)
    say(f"replaying {fm_file} to RabbitMQ ...")
    replay.replay_amqp(fm_file, stack.options.amqp_url, None, stack.options.amqp_exchange,
                       journal=stack.journal)


def run_up(settings: Settings, options: StackOptions, replay: bool) -> int:
    stack = LocalStack(settings, options)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        stack.start()
        if replay:
            replay_shared(stack)
        print("fmn up: running; Ctrl-C stops it.  `fmn status --json` from another shell.")
        print(stack.demo_hint())
        while not stopping.wait(2.0):
            try:
                print(format_status(stack.status()), flush=True)
                print(flush=True)
            except Exception as exc:  # the display must not stop the stack
                log.warning("status not available: %s", exc)
    finally:
        print("fmn up: stopping ...", flush=True)
        stack.stop()
    return 0
