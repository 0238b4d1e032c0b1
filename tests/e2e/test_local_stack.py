"""The whole local stack, end to end: bus -> bridge -> SQS -> match -> senders -> people.

``fmn up``'s stack is started in-process on the real services (the moto
server, and LocalStack too: the test runs on each; Redis, RabbitMQ) and every
shared Fedora message is replayed through fedmsg (a ZeroMQ publisher, as
fedmsg's hubs publish), and every fedora-messaging record through RabbitMQ as
well.  (A fedmsg envelope has no
AMQP form: fedora-messaging messages are schema-typed bodies with headers, so
the fedmsg file goes through fedmsg only.)  The notifications found on the
backend queues must be exactly what the matcher gives for the same
preferences and messages, counted: every message bridged once per bus it was
sent on, no dead letters, and every notification delivered exactly once
however many buses carried its message: each mail in the local mail sink
once (or waiting in its digest), each feed event on its user's feed once,
each IRC notification sent, summarised or found offline once, and lines
arriving at the demo users logged in to the local IRC server; each Matrix
notification sent or summarised once, and notices arriving in the direct
rooms of the demo people on the local Synapse.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from local_stack import run_local_stack
from services import redis_client
from shared_data import MESSAGES

from fmn.delivery.digest import DigestStore, digest_prefix
from fmn.delivery.feed import RedisFeed
from fmn.generate import generate_preferences
from fmn.ledger import format_report
from fmn.local import replay
from fmn.local.emulator import is_localstack
from fmn.local.matrix import localize
from fmn.local.stack import LocalStack, format_status
from fmn.local.synapse import LocalSynapse
from fmn.matcher import IndexedMatcher
from fmn.metadata import parse
from fmn.pipeline.alarms import alarm_names
from fmn.pipeline.queues import BACKENDS
from fmn.snapshot import build_snapshot

pytestmark = pytest.mark.e2e

USERS, SEED = 300, 4


@pytest.fixture
def stack(any_aws_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
          synapse: LocalSynapse) -> Iterator[LocalStack]:
    # The expected notifications come from a fixed snapshot: the ownership
    # messages of the data must not change it on the way (matching in
    # parallel, the outcome would depend on timing).  Live ownership has its
    # own test (tests/integration/test_live_ownership.py).
    monkeypatch.setenv("FMN_LIVE_OWNERSHIP", "0")
    for local in run_local_stack(any_aws_env, tmp_path, "e2e", USERS, SEED, synapse):
        assert (tmp_path / "prefs.sqlite").exists() and "incoming" in local.urls
        assert local.urls["incoming"].url.endswith(f"{local.settings.queue_prefix}incoming")
        yield local


def test_every_shared_message_flows_through_the_stack(stack: LocalStack,
                                                    tmp_path: Path) -> None:
    fedmsg_file, fm_file = MESSAGES / "fedmsg.jsonl", MESSAGES / "fedora-messaging.jsonl"
    fedmsg_lines = [ln for ln in fedmsg_file.read_bytes().splitlines() if ln.strip()]
    fm_lines = [ln for ln in fm_file.read_bytes().splitlines() if ln.strip()]
    both = tmp_path / "both.jsonl"
    both.write_bytes(b"\n".join(fedmsg_lines + fm_lines) + b"\n")
    lines = fedmsg_lines + fm_lines + fm_lines  # fedora-messaging records: both buses
    replay.replay_fedmsg(both, stack.options.fedmsg_endpoint, None, journal=stack.journal)
    replay.replay_amqp(fm_file, stack.options.amqp_url, None, journal=stack.journal,
                       exchange=stack.options.amqp_exchange)

    senders = ("incoming", "email", "irc", "sse", "matrix")
    deadline = time.monotonic() + 900  # a shared, busy machine drains slowly
    status = stack.status()
    while time.monotonic() < deadline:
        status = stack.status()
        if status["counters"]["matched"] >= len(lines) and all(
                status["queues"][q]["visible"] == status["queues"][q]["in_flight"] == 0
                for q in senders):
            break
        time.sleep(0.5)
    # the ledger: every published id accounted for once, every notification
    # delivered, in a digest or waiting for a sender, nothing twice
    ledger = stack.ledger()
    assert ledger.settled, format_report(ledger)
    counters = status["counters"]
    # at least once: a broker connection reset under load redelivers what the bridge
    # had not acknowledged yet (the ledger above shows none of it was delivered twice)
    assert counters["bridged"] >= len(lines), "every message reached the incoming queue"
    assert counters["matched"] >= len(lines), f"on {stack.emulator}"
    assert all(q["dlq"] == 0 for q in status["queues"].values()), status
    assert all(status["queues"][q]["visible"] == 0 for q in senders), status

    prefs = localize(generate_preferences(USERS, SEED), stack.matrix.server_name,
                     stack.options.matrix_people)
    matcher = IndexedMatcher(build_snapshot(prefs))
    expected: Counter[tuple[Any, ...]] = Counter()
    digested: set[tuple[str, str, str]] = set()
    direct_mail: set[tuple[str, str, str, str]] = set()
    irc_sends: set[tuple[str, str, str]] = set()
    matrix_sends: set[tuple[str, str, str]] = set()
    for line in lines:
        for n in matcher.match(parse(line)):
            expected[(n.message_id, n.user, n.protocol, n.address, n.rules)] += 1
            if n.protocol == "irc":
                irc_sends.add((n.message_id, n.user, n.destination))
            if n.protocol == "matrix":
                matrix_sends.add((n.message_id, n.user, n.destination))
            if n.protocol != "email":
                continue
            if matcher.describe(n)[1] is not None:
                digested.add((n.message_id, n.user, n.destination))
            else:
                direct_mail.add((n.message_id, n.user, n.destination, n.address))
    assert expected, "the demo preferences must route some of the shared messages"
    # a record redelivered (at least once) is matched again: the counters may exceed
    # the expected notifications; the ledger's distinct ones must not (below)
    assert all(counters["notifications"][b] >= sum(c for k, c in expected.items()
                                                  if k[2] == b) for b in BACKENDS)
    # one delivery per (message, user, address), however many buses carried it
    once = {b: {(k[0], k[1], k[3]) for k in expected if k[2] == b} for b in BACKENDS}

    # email: every non-digest notification in the mail sink exactly once
    mails = Counter((r.message["X-Fedmsg-Id"], r.rcpt_tos[0]) for r in stack.mail.messages
                    if r.message["X-Fedmsg-Id"])
    assert mails == Counter((m, a) for m, _, _, a in direct_mail)
    # digest notifications: in a digest mail already, or waiting for their interval
    in_digests = sum(int(r.message["X-Fedmsg-Digest-Count"]) for r in stack.mail.messages
                     if r.message["X-Fedmsg-Digest-Count"])
    store = DigestStore(redis_client(), digest_prefix(stack.settings.queue_prefix))
    waiting = sum(store.pending(orjson.dumps([u, d]).decode())
                  for u, d in {(u, d) for _, u, d in digested})
    assert in_digests + waiting == len(digested)

    # live feed: each notification once on its user's feed
    feed = RedisFeed(redis_client(), stack.settings.feed_prefix)
    users = {u for _, u, _ in once["sse"]}
    on_feeds = Counter((json.loads(e.data)["message_id"], u)
                       for u in users for e in feed.latest(u, 1000))
    assert on_feeds == Counter({(m, u) for m, u, _ in once["sse"]})

    # IRC: each notification sent once, alone or in a summary line ("offline"
    # counts the lines the server could not relay: nobody had that nick); the
    # demo users logged in to the local IRC server got lines
    irc = stack.functions["send_irc"].totals
    assert irc["sent"] + irc["summarised"] == len(irc_sends), dict(irc)
    assert irc["offline"] > 0 and irc["dead-lettered"] == 0
    watched = {w.nick for w in stack.irc_listeners}
    for listener in stack.irc_listeners:
        if any(a == listener.nick for _, _, a in once["irc"]):
            assert listener.got, f"{listener.nick} got no line"
    assert watched and counters["irc_lines_received"] > 0
    assert (stack.workdir / "irc.log").read_text().count(" <- ") == \
        counters["irc_lines_received"]

    ids = Counter(parse(line).id for line in lines)
    assert ledger.published == ledger.matched == len(ids)
    assert ledger.published_twice == sum(1 for n in ids.values() if n > 1)
    assert ledger.bridged is not None and ledger.bridged >= len(lines)
    assert ledger.notified + ledger.matched_nobody == len(ids)
    assert ledger.dead_lettered == ledger.lost == 0
    for backend in BACKENDS:
        b = ledger.backends[backend]
        assert b.produced == len(once[backend]), backend
        assert b.produced == (b.delivered + b.sent_in_digest + b.waiting_in_digest
                              + b.waiting_for_sender), backend
    assert ledger.backends["email"].sent_in_digest + \
        ledger.backends["email"].waiting_in_digest == len(digested)

    # Matrix: each notification sent once, alone or in a summary notice, into the
    # direct room of a demo person on the local Synapse, who reads it there
    matrix = stack.functions["send_matrix"].totals
    assert matrix_sends, "the demo preferences must route some messages to Matrix"
    assert matrix["sent"] + matrix["summarised"] == len(matrix_sends), dict(matrix)
    assert matrix["dead-lettered"] == 0
    notices = matrix["sent"] + matrix["summary-notices"]
    deadline = time.monotonic() + 60
    while stack.status()["counters"]["matrix_received"] < notices \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stack.status()["counters"]["matrix_received"] == notices
    for person in stack.matrix.listeners:
        wanted = sum(1 for _, _, a in once["matrix"] if a == person.user_id)
        assert bool(person.got) == bool(wanted), person.user_id
        assert all(m.sender == stack.matrix.bot.user_id and m.content["msgtype"] == "m.notice"
                   for m in person.got)
    assert (stack.workdir / "matrix.log").read_text().count(" <- ") == notices

    # the demo user fmn up suggests got notifications from the replay, on the
    # live feed too, and is the development login's default
    demo = stack.demo_user
    assert demo is not None and feed.latest(demo, 1000), "the suggested demo user got nothing"
    assert stack.status()["demo_user"] == demo
    options = re.findall(r"<option>([^<]*)</option>", httpx.get(f"{stack.web.url}/dev/login").text)
    assert options[0] == demo

    # fmn status: every alarm of the stage next to the queues
    status = stack.status()
    assert [a["name"] for a in status["alarms"]] == alarm_names(stack.settings.queue_prefix)
    assert all(a["state"] in ("OK", "INSUFFICIENT_DATA", "ALARM") for a in status["alarms"])
    assert status["aws"] == ("localstack" if is_localstack(stack.settings.aws_endpoint_url or "")
                             else "moto")
    table = format_status(status)
    assert "alarms:" in table.splitlines()[0] and "bridge-silent" in table
