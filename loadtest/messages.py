"""The load test's messages: the shared real Fedora messages, re-keyed.

Each copy of a shared message gets a fresh id and timestamp (set when it is
published: the message's own timestamp is where its end-to-end latency
starts), and the names it is about are swapped for names of the generated
preferences' world: every package (of every artifact type) for another of
the generator's universe, drawn by a Zipf-like rank so that most messages are
about a package a handful of people follow and a few about one thousands
follow, as on Fedora's bus (a random rank, or with :data:`HEAD_SHARE` one of the
:data:`HEAD_SIZE` most followed); every user name for one of the generated users.
Names are swapped wherever they appear whole in the message's strings (a
value ``"nethack"``, a path ``rpms/nethack``, a title ``nethack-3.6-1.fc25``).
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fmn.errors import InvalidMessage
from fmn.message import ARTIFACT_TYPES

#: The share of swapped packages drawn from the most followed ones (the rest at a
#: random rank, like most packages a bus message is about)
HEAD_SHARE = 0.02
#: how many of the most followed packages make the head
HEAD_SIZE = 30


@dataclass(frozen=True)
class Template:
    bus: str  # "fedmsg" or "amqp"
    record: dict[str, Any]
    #: the names to swap: package names by artifact type, and user names
    packages: dict[str, tuple[str, ...]]
    users: tuple[str, ...]


@dataclass(frozen=True)
class Outgoing:
    """One message ready to publish."""

    bus: str
    id: str
    topic: str
    record: dict[str, Any]

    def stamp(self, now: float) -> None:
        """Set the message's own timestamp (when it is published)."""
        if self.bus == "fedmsg":
            self.record["timestamp"] = now
        else:
            headers = self.record.setdefault("headers", {})
            headers["sent-at"] = datetime.fromtimestamp(now, UTC).isoformat()


def load_templates(files: Sequence[Path]) -> list[Template]:
    """The shared messages that parse, with the names each is about."""
    from fmn.metadata import parse

    templates = []
    for path in files:
        for line in path.read_bytes().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            try:
                message = parse(record)
            except InvalidMessage:
                continue
            bus = "fedmsg" if "msg" in record else "amqp"
            packages = {kind: tuple(sorted(message.artifacts(kind))) for kind in ARTIFACT_TYPES}
            templates.append(Template(bus, record, packages, tuple(sorted(message.usernames))))
    return templates


def for_bus(templates: Sequence[Template], bus: str) -> list[Template]:
    """The templates a bus carries: fedora-messaging records alone on AMQP (a fedmsg
    envelope has no ``body``, nor the schema header the match function would read its
    metadata by: published as one, it was dead-lettered); every template on fedmsg
    (the match function reads either form from a frame)."""
    chosen = [t for t in templates if bus == "fedmsg" or t.bus == bus]
    if not chosen:
        raise ValueError(f"no shared message is of the {bus} bus's form")
    return chosen


class Rekeyer:
    """Copies of the templates with fresh ids and swapped names (module docstring)."""

    def __init__(self, templates: Sequence[Template], user_names: Sequence[str],
                 seed: int = 0) -> None:
        from fmn.generate import _universe

        self.templates = list(templates)
        self.users = list(user_names)
        self.rng = random.Random(seed)
        universe = _universe().artifacts
        self.ranked = {kind: list(universe.get(kind, ())) for kind in ARTIFACT_TYPES}

    def _package(self, kind: str) -> str:
        names = self.ranked[kind]
        if not names:
            return "unknown"
        if self.rng.random() < HEAD_SHARE:
            return names[self.rng.randrange(min(HEAD_SIZE, len(names)))]
        return names[self.rng.randrange(len(names))]

    def copy(self, k: int) -> Outgoing:
        template = self.templates[k % len(self.templates)]
        swap: dict[str, str] = {}
        for kind, names in template.packages.items():
            for name in names:
                swap.setdefault(name, self._package(kind))
        for name in template.users:
            if self.users:
                swap.setdefault(name, self.rng.choice(self.users))
        record = _swapped(template.record, swap)
        if template.bus == "fedmsg":
            mid = f"{datetime.now(UTC).year}-{uuid.UUID(int=self.rng.getrandbits(128))}"
            record["msg_id"] = mid
        else:
            mid = str(uuid.UUID(int=self.rng.getrandbits(128)))
            record["id"] = mid
        return Outgoing(template.bus, mid, str(record["topic"]), record)

    def copies(self, count: int) -> Iterator[Outgoing]:
        for k in range(count):
            yield self.copy(k)


def _swapped(value: Any, swap: dict[str, str]) -> Any:
    """``value`` (JSON data) with every whole occurrence of a key of ``swap`` replaced."""
    if not swap:
        return json.loads(json.dumps(value))
    pattern = re.compile(r"(?<![\w.+-])(" + "|".join(
        re.escape(k) for k in sorted(swap, key=len, reverse=True) if k) + r")(?![\w+])")

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return swap[v] if v in swap else pattern.sub(lambda m: swap[m.group(1)], v)
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        return v

    return walk(value)


def now() -> float:
    return time.time()
