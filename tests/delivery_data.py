"""Payloads for the sender tests: built with the real packer from real-looking messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

HOSTILE_SUMMARY = ("evil\r\nBcc: victim@example.org\r\n\r\n<script>alert(1)</script>"
                   "\x1b[31mred\x1b[0m\x1b]8;;http://evil.example/\x07click\x1b]8;;\x07"
                   "\u202eexe.pdf\x00\x07" + "x" * 10_000)


def message(**over: Any) -> dict[str, Any]:
    doc = {"id": "2024-0001", "topic": "org.fedoraproject.prod.buildsys.build.state.change",
           "app": "koji", "agent": "alice",
           "summary": "alice's kernel-6.1-1.fc40 completed",
           "url": "https://koji.fedoraproject.org/koji/buildinfo?buildID=1",
           "sent_at": "2024-01-01T12:30:00+00:00", "severity": "INFO",
           "usernames": ["alice"], "num_usernames": 1,
           "packages": [f"pkg{i:02d}" for i in range(12)], "num_packages": 12}
    doc.update(over)
    return doc


def notification(user: str = "bob", address: str = "bob@example.org",
                 destination: str = "d1", rules: tuple[str, ...] = ("r1",),
                 names: tuple[str, ...] | None = ("My packages",),
                 digest: tuple[int, int] | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"user": user, "address": address, "destination": destination,
                            "rules": list(rules)}
    if names is not None:
        item["rule_names"] = list(names)
    if digest is not None:
        item["digest"] = {"interval_s": digest[0], "max_count": digest[1]}
    return item


def payload(backend: str, notifications: list[dict[str, Any]], **message_over: Any) -> str:
    return orjson.dumps({"v": 1, "backend": backend, "part": 1, "parts": 1,
                         "message": message(**message_over),
                         "notifications": notifications}).decode()


def irc_body(message_id: str, nicks: Sequence[str], summary: str = "a build completed") -> str:
    """One ``irc`` payload: one bus message, one notification per nick."""
    return payload("irc", [notification(n.lower(), n, f"d-{n}", names=("My builds",))
                           for n in nicks],
                   id=message_id, summary=f"{summary} ({message_id})",
                   url=f"https://koji.test/{message_id}", packages=["kernel"], num_packages=1,
                   sent_at="2024-01-01T00:00:00+00:00")
