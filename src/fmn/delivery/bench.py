"""``fmn bench email``: what rendering one notification mail costs, on one core.

The email sender signs one unsubscribe link and renders one mail per
notification (:func:`fmn.delivery.email.render`) and serializes it for SMTP
or SES: about half of its CPU a mail, the rest being the send-once record
on Redis and the SMTP exchange (not measured here).  This benchmark takes
the shared Fedora messages, gives each ``--fanout`` recipients (as a bus
message that touches several rules does), and renders and serializes every
mail over and over for ``--duration``
seconds, in the order the sender meets them (a message's recipients one
after another, as they sit in one payload).

It prints mails per second of CPU, CPU milliseconds per mail, and p50/p99 of
one mail's wall time; ``--json`` also writes them.  Nothing asserts a time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path

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


def run(files: Sequence[Path], fanout: int = 20, duration: float = 3.0,
        json_path: str | None = None) -> int:
    items = _deliveries(files, fanout)
    if not items:
        raise FmnError(f"no messages in {', '.join(str(f) for f in files)}")
    from fmn.auth import unsubscribe_url

    mailer = _Discard()
    web_url = "https://notifications.fedoraproject.org"
    # the signed link the sender makes for every mail (an HMAC each)
    sender = EmailSender(mailer, None, sender="notifications@fedoraproject.org",
                         web_url=web_url,
                         unsubscribe_url=lambda user, dest: unsubscribe_url(
                             web_url, user, dest, "bench-only-secret-key-0123456789"))
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
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0

