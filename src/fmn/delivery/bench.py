"""``fmn bench email``: what rendering one notification mail costs, on one core.

The email sender signs one unsubscribe link and renders one mail per
notification (:func:`fmn.delivery.email.render`) and serializes it for SMTP
or SES: about half of its CPU a mail, the rest being the send-once record
on Redis and the SMTP exchange (``--send`` adds them).  This benchmark takes
the shared Fedora messages, gives each ``--fanout`` recipients (as a bus
message that touches several rules does), and renders and serializes every
mail over and over for ``--duration``
seconds, in the order the sender meets them (a message's recipients one
after another, as they sit in one payload).

It prints mails per second of CPU, CPU milliseconds per mail, and p50/p99 of
one mail's wall time; ``--json`` also writes them.  Nothing asserts a time.

``--send`` measures the sender's whole path instead (:func:`run_send`): each
mail goes once through :func:`fmn.delivery.base.deliver_one` with the
send-once record on Redis (Powertools idempotency, as in the Lambda) and over
SMTP to the local mail sink in a process of its own, one connection, as one
invocation sends a payload.  It prints the sender's CPU a mail, the wall time
a mail, and the sink's CPU a mail (which the load test's machine pays too).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from fmn.delivery.base import Delivery
from fmn.delivery.email_sender import EmailSender
from fmn.errors import FmnError, InvalidMessage


def _deliveries(files: Sequence[Path], fanout: int) -> list[Delivery]:
    from fmn.metadata import parse
    from fmn.pipeline.notifications import message_info

    items = []
    for path in files:
        with path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    info = message_info(parse(json.loads(line)))
                except (ValueError, InvalidMessage) as exc:
                    raise FmnError(f"{path}:{number}: not a bus message: {exc}") from exc
                for n in range(fanout):
                    items.append(Delivery(
                        backend="email", message=info, user=f"user{n}",
                        address=f"user{n}@example.org", destination=f"dest-{n}",
                        rules=(f"rule-{n}",), rule_names=(f"My packages ({n})",)))
    return items


class _Discard:
    """A mailer that serializes the mail as SMTP would send it, and drops it."""

    def __init__(self) -> None:
        self.sent_bytes = 0

    def send(self, msg: EmailMessage) -> None:
        self.sent_bytes += len(msg.as_bytes())


WEB_URL = "https://notifications.fedoraproject.org"


def _sender(mailer: Any) -> EmailSender:
    from fmn.auth import unsubscribe_url

    # the signed link the sender makes for every mail (an HMAC each)
    return EmailSender(mailer, None, sender="notifications@fedoraproject.org",
                       web_url=WEB_URL,
                       unsubscribe_url=lambda user, dest: unsubscribe_url(
                           WEB_URL, user, dest, "bench-only-secret-key-0123456789"))


def _items(files: Sequence[Path], fanout: int) -> list[Delivery]:
    items = _deliveries(files, fanout)
    if not items:
        raise FmnError(f"no messages in {', '.join(str(f) for f in files)}")
    return items


def _write_json(json_path: str | None, result: dict[str, Any]) -> None:
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")


def run(files: Sequence[Path], fanout: int = 20, duration: float = 3.0,
        json_path: str | None = None) -> int:
    items = _items(files, fanout)
    mailer = _Discard()
    sender = _sender(mailer)
    warm_up = items[:200]
    for item in warm_up:  # imports, first-use caches
        sender(item)
    walls: list[int] = []
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    deadline = wall_start + duration
    while time.perf_counter() < deadline:
        for item in items:
            t0 = time.perf_counter_ns()
            sender(item)
            walls.append(time.perf_counter_ns() - t0)
            if len(walls) % 256 == 0 and time.perf_counter() >= deadline:
                break
    cpu_s = time.process_time() - cpu_start
    walls.sort()
    mails = len(walls)
    result = {
        "messages": len(items) // fanout, "fanout": fanout, "mails": mails,
        "cpu_s": round(cpu_s, 3),
        "mails_per_cpu_s": round(mails / cpu_s, 1) if cpu_s else None,
        "cpu_ms_per_mail": round(1000 * cpu_s / mails, 3) if mails else None,
        "p50_ms": round(walls[mails // 2] / 1e6, 3) if mails else None,
        "p99_ms": round(walls[min(mails - 1, mails * 99 // 100)] / 1e6, 3) if mails else None,
        "bytes_per_mail": round(mailer.sent_bytes / (mails + len(warm_up))) if mails else None,
    }
    print(f"email render + serialize: {len(items) // fanout} messages x {fanout} recipients")
    print(f"  {mails:,} mails in {cpu_s:.2f} s CPU: {result['mails_per_cpu_s']:,} mails/s, "
          f"{result['cpu_ms_per_mail']} ms CPU per mail")
    print(f"  one mail: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms; "
          f"{result['bytes_per_mail']:,} bytes")
    _write_json(json_path, result)
    return 0


class _Context:
    """A Lambda context far from its deadline (in-progress marks expire with it)."""

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 15 * 60 * 1000


def run_send(files: Sequence[Path], redis_url: str, fanout: int = 20, duration: float = 3.0,
             json_path: str | None = None) -> int:
    """The whole per-mail path (module docstring): send-once on Redis, SMTP to a sink."""
    import tempfile
    import uuid

    import psutil

    from fmn.delivery.base import deliver_one
    from fmn.delivery.mailers import SmtpMailer
    from fmn.delivery.once import PowertoolsOnce
    from fmn.local.mailsink import ProcessMailSink
    from fmn.redisconn import connect

    items = _items(files, fanout)
    client = connect(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except Exception as exc:  # redis errors: say where it looked
        raise FmnError(f"--send needs Redis at {redis_url} (FMN_REDIS_URL): {exc}") from exc
    prefix = f"fmn-bench-email-{uuid.uuid4().hex[:12]}"
    once = PowertoolsOnce(client, ttl_s=600, name=prefix)
    once.register_context(_Context())
    refused: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fmn-bench-email-") as tmp, \
            ProcessMailSink(Path(tmp) / "mail") as sink:
        mailer = SmtpMailer(sink.url)
        sender = _sender(mailer)
        sink_process = psutil.Process(sink.pid)
        passes = 0

        def fresh(item: Delivery) -> Delivery:
            # a new bus message id each pass: every send is a first send
            return replace(item, message={**item.message, "id": f"{item.message_id}.{passes}"})

        for item in items[:200]:  # imports, first-use caches, the connection
            deliver_one(fresh(item), sender, once, lambda i, why: refused.append(why))
        walls: list[int] = []
        sink_cpu = sum(sink_process.cpu_times()[:2])
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        deadline = wall_start + duration
        while time.perf_counter() < deadline:
            passes += 1
            for item in items:
                item = fresh(item)
                t0 = time.perf_counter_ns()
                deliver_one(item, sender, once, lambda i, why: refused.append(why))
                walls.append(time.perf_counter_ns() - t0)
                if len(walls) % 256 == 0 and time.perf_counter() >= deadline:
                    break
        wall_s = time.perf_counter() - wall_start
        cpu_s = time.process_time() - cpu_start
        sink_cpu = sum(sink_process.cpu_times()[:2]) - sink_cpu
        mailer.close()
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)
    if refused:
        raise FmnError(f"{len(refused)} mails refused, first: {refused[0]}")
    walls.sort()
    mails = len(walls)
    result = {
        "mode": "send", "messages": len(items) // fanout, "fanout": fanout, "mails": mails,
        "cpu_s": round(cpu_s, 3), "wall_s": round(wall_s, 3),
        "cpu_ms_per_mail": round(1000 * cpu_s / mails, 3),
        "wall_ms_per_mail": round(1000 * wall_s / mails, 3),
        "sink_cpu_ms_per_mail": round(1000 * sink_cpu / mails, 3),
        "p50_ms": round(walls[mails // 2] / 1e6, 3),
        "p99_ms": round(walls[min(mails - 1, mails * 99 // 100)] / 1e6, 3),
    }
    print(f"email send (send-once on Redis, SMTP to a local sink): "
          f"{len(items) // fanout} messages x {fanout} recipients")
    print(f"  {mails:,} mails in {wall_s:.2f} s: {result['cpu_ms_per_mail']} ms CPU a mail in "
          f"the sender, {result['wall_ms_per_mail']} ms wall; the sink "
          f"{result['sink_cpu_ms_per_mail']} ms CPU a mail")
    print(f"  one mail: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms")
    _write_json(json_path, result)
    return 0

