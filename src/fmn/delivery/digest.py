"""Digests: a destination's notifications gathered in Redis and sent as one mail.

A destination with a digest setting ``{interval_s, max_count}`` (spec
section 2) gets no mail per notification: :meth:`DigestStore.add` appends
the item to the destination's list and keeps the destination in a *due*
sorted set, scored with when it must go out: its oldest item's time plus
``interval_s``, or now once ``max_count`` items wait.  :func:`flush_due`
(run by the sender's schedule, and right away when an add reaches the count)
sends every due destination's digest.

Sending is crash-safe, in three steps:

1. :meth:`~DigestStore.claim` atomically moves up to ``cap`` items (the size
   cap) from the list to the destination's *sending* batch under a new batch
   id (random: a counter in Redis, lost or evicted while the records of sent
   batches are not, would hand out a sent batch's id again, and that digest
   would be skipped as sent), and leases the destination for ``lease_s``;
2. the mail is sent inside :class:`~fmn.delivery.once.Once` keyed on that
   batch id;
3. :meth:`~DigestStore.finish` drops the batch and reschedules whatever
   arrived meanwhile (or what the cap left).

A crash before 2 leaves the batch claimed: when the lease runs out the same
batch (same id) is claimed again and sent.  A crash between 2 and 3 sends
nothing twice: the retry finds the batch id already sent and only finishes.
A batch whose send keeps failing (its server refusing for now) is tried
again at each lease for ``give_up_s`` from its first failure, about what a
single mail gets from its queue, then each of its items goes to the
dead-letter queue with the last error; an error nobody foresaw sends them
there at once, as for a single mail.
Items that arrive while a batch is out wait in the list for the next digest;
none is lost.

Every key of a store shares one hash tag (the prefix, :func:`digest_prefix`),
so the scripts, which touch a destination's lists and the due set at once,
run on a Redis cluster too (ElastiCache Serverless, cluster mode): digests
then live on one shard, which their volume (a few items per person and
interval) allows.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from fmn.delivery.base import DeadLetter, Delivery, TimeUp, from_doc, to_doc
from fmn.delivery.once import Once
from fmn.errors import PermanentError, Postponed, RetryableError

log = logging.getLogger(__name__)

#: Notifications per digest mail; more wait for the next one (sent right after).
DIGEST_CAP = 100
#: How long a claimed batch is left alone before it is claimed (and sent) again.
LEASE_S = 300
#: How long a batch that keeps failing is tried again before its items are dead-lettered
#: (a single mail: 5 receives over about an hour, then its queue's dead-letter queue).
GIVE_UP_S = 3600.0

_ADD = """
local n = redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[1])
if n >= tonumber(ARGV[5]) then
  redis.call('ZADD', KEYS[2], 'LT', ARGV[4], ARGV[1])
  return 1
end
return 0
"""

_CLAIM = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
  return {redis.call('GET', KEYS[3]), redis.call('LRANGE', KEYS[2], 0, -1),
          redis.call('LLEN', KEYS[1])}
end
local items = redis.call('LPOP', KEYS[1], ARGV[2])
if not items then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return false
end
redis.call('RPUSH', KEYS[2], unpack(items))
local id = ARGV[4]
redis.call('SET', KEYS[3], id)
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
return {id, items, redis.call('LLEN', KEYS[1])}
"""

_FINISH = """
if redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[2], KEYS[3])
local first = redis.call('LINDEX', KEYS[1], 0)
if not first then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return 1
end
local e = cjson.decode(first)
local due = e['t'] + e['interval']
if redis.call('LLEN', KEYS[1]) >= e['max'] then
  due = tonumber(ARGV[3])
end
redis.call('ZADD', KEYS[4], due, ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Claimed:
    """A digest batch being sent: its id, its items (oldest first), and how many wait after it."""

    batch_id: str
    items: list[Delivery]
    remaining: int


def digest_prefix(queue_prefix: str) -> str:
    """The digests' Redis key prefix for a stage (stages may share one Redis, as queues do):
    ``fmn:digest:{<queue prefix>}``, a hash tag that keeps a stage's digests in one slot."""
    return f"fmn:digest:{{{queue_prefix}}}"


def destination_key(item: Delivery) -> str:
    """The digest's identity: one per (user, destination)."""
    return orjson.dumps([item.user, item.destination]).decode()


class DigestStore:
    """Digest lists, batches and the due set, in Redis (module docstring)."""

    def __init__(self, redis: Any, prefix: str = "fmn:digest:", cap: int = DIGEST_CAP,
                 lease_s: float = LEASE_S, give_up_s: float = GIVE_UP_S) -> None:
        from fmn.redisconn import hash_tagged

        self.redis = redis
        #: every key under one hash tag (module docstring)
        self.prefix = hash_tagged(prefix)
        self.cap = cap
        self.lease_s = lease_s
        self.give_up_s = give_up_s
        self._add = redis.register_script(_ADD)
        self._claim = redis.register_script(_CLAIM)
        self._finish = redis.register_script(_FINISH)

    def _keys(self, dk: str) -> list[str]:
        p = self.prefix
        return [f"{p}items:{dk}", f"{p}sending:{dk}", f"{p}batch:{dk}", f"{p}due"]

    def add(self, item: Delivery, now: float) -> bool:
        """Queue ``item`` for its digest; True when the count is reached (send now)."""
        if item.digest is None:
            raise ValueError("only an item with a digest setting goes into a digest")
        dk = destination_key(item)
        entry = orjson.dumps({"t": now, "interval": item.digest.interval_s,
                              "max": item.digest.max_count, "item": to_doc(item)})
        items, _sending, _batch, due = self._keys(dk)
        try:
            return bool(self._add(keys=[items, due],
                                  args=[dk, entry, now + item.digest.interval_s, now,
                                        item.digest.max_count]))
        except Exception as exc:  # redis errors: the item stays on its queue
            raise RetryableError(f"digest store: {exc}") from exc

    def due(self, now: float, limit: int = 1000) -> list[str]:
        """Destinations whose digest (or unfinished batch) must go out by ``now``."""
        try:
            found = self.redis.zrangebyscore(f"{self.prefix}due", "-inf", now, start=0,
                                             num=limit)
        except Exception as exc:
            raise RetryableError(f"digest store: {exc}") from exc
        return [k.decode() if isinstance(k, bytes) else k for k in found]

    def claim(self, dk: str, now: float) -> Claimed | None:
        """The destination's batch to send (an unfinished one first), or None if empty."""
        keys = self._keys(dk)
        try:  # the id is used only if a new batch is made
            found = self._claim(keys=keys, args=[dk, self.cap, now + self.lease_s,
                                                 uuid.uuid4().hex])
        except Exception as exc:
            raise RetryableError(f"digest store: {exc}") from exc
        if not found:
            return None
        batch_id, entries, remaining = found
        docs = [orjson.loads(e)["item"] for e in entries]
        return Claimed(batch_id.decode() if isinstance(batch_id, bytes) else str(batch_id),
                       [from_doc(d) for d in docs], int(remaining))

    def finish(self, dk: str, batch_id: str, now: float) -> None:
        """The batch went out: drop it and schedule what waits."""
        try:
            self._finish(keys=self._keys(dk), args=[dk, batch_id, now])
        except Exception as exc:
            raise RetryableError(f"digest store: {exc}") from exc

    def _failing_key(self, dk: str) -> str:
        """The destination's batches that failed: batch id -> first failure, or give-up."""
        return f"{self.prefix}failing:{dk}"

    def failure(self, dk: str, batch_id: str) -> str | None:
        """What is known of the batch's failures: None (none), the time of its first
        (a number), or ``gave-up <reason>`` once it was given up."""
        try:
            value = self.redis.hget(self._failing_key(dk), batch_id)
        except Exception as exc:
            raise RetryableError(f"digest store: {exc}") from exc
        return None if value is None else (value.decode() if isinstance(value, bytes)
                                           else str(value))

    def failing_since(self, dk: str, batch_id: str, now: float) -> float:
        """When the batch's sending first failed (``now`` at its first failure); kept a
        while past ``give_up_s``, under the store's hash tag."""
        key = self._failing_key(dk)
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.hsetnx(key, batch_id, repr(now))
                pipe.hget(key, batch_id)
                pipe.expire(key, int(self.give_up_s + self.lease_s) + 86_400)
                _, first, _ = pipe.execute()
            return float(first)
        except Exception as exc:
            raise RetryableError(f"digest store: {exc}") from exc

    def give_up(self, dk: str, batch_id: str, reason: str) -> None:
        """Remember the batch is given up, before its items are dead-lettered: if that is
        cut short, the next lease dead-letters the rest rather than send them all."""
        try:
            self.redis.hset(self._failing_key(dk), batch_id, f"gave-up {reason}")
        except Exception as exc:
            raise RetryableError(f"digest store: {exc}") from exc

    def forget_failure(self, dk: str, batch_id: str) -> None:
        """The batch is done (sent or dead-lettered): its failures are no longer kept."""
        try:
            self.redis.hdel(self._failing_key(dk), batch_id)
        except Exception as exc:
            raise RetryableError(f"digest store: {exc}") from exc

    def is_due(self, dk: str, now: float) -> bool:
        try:
            score = self.redis.zscore(f"{self.prefix}due", dk)
        except Exception as exc:
            raise RetryableError(f"digest store: {exc}") from exc
        return score is not None and float(score) <= now

    def generation(self, new_token: str) -> str:
        """This store's generation token, set to ``new_token`` if it has none (a fresh
        or emptied Redis); see :func:`check_generation`."""
        key = f"{self.prefix}generation"
        try:
            self.redis.set(key, new_token, nx=True)
            token = self.redis.get(key)
        except Exception as exc:
            raise RetryableError(f"digest store: {exc}") from exc
        return str(token.decode() if isinstance(token, bytes) else token)

    def waiting(self) -> int:
        """Items waiting in every digest, batches being sent included."""
        try:
            dks = [k.decode() if isinstance(k, bytes) else k
                   for k in self.redis.zrange(f"{self.prefix}due", 0, -1)]
            if not dks:
                return 0
            with self.redis.pipeline(transaction=False) as pipe:
                for dk in dks:
                    pipe.llen(f"{self.prefix}items:{dk}")
                    pipe.llen(f"{self.prefix}sending:{dk}")
                return sum(int(n) for n in pipe.execute())
        except Exception as exc:
            raise RetryableError(f"digest store: {exc}") from exc

    def pending(self, dk: str) -> int:
        """Items waiting (not counting a batch being sent)."""
        return int(self.redis.llen(f"{self.prefix}items:{dk}"))


def check_generation(store: DigestStore, remembered: tuple[str, int] | None,
                     remember: Callable[[str, int], None]) -> int | None:
    """Whether the digest store lost its content since the last check: None if not,
    else how many items it held at that check (at least that many are lost).

    Digest items live only in Redis once their SQS record is deleted.  The store
    holds a generation token; its last value and the number of items waiting
    then are kept outside Redis (the database: ``remembered``, written through
    ``remember``).  A token other than the remembered one means Redis restarted
    empty (or was replaced): every item queued before is gone.  Nothing can
    bring them back; the caller makes it impossible to miss (an error log, the
    ``DigestStoreLost`` and ``DigestItemsLost`` metrics and their alarm).  The
    deployment requires persistence so that this never fires (docs/redis.md).
    """

    token = store.generation(uuid.uuid4().hex)
    waiting = store.waiting()
    remember(token, waiting)
    if remembered is None or token == remembered[0]:
        return None  # the same store, or the first check ever (nothing known)
    lost = remembered[1]
    log.error("the digest store (%s) restarted empty: digest items queued before now are "
              "lost, at least %d (generation %s, was %s)", store.prefix, lost, token,
              remembered[0])
    return lost


#: Sends one digest of ``items`` (``more`` wait after them); PermanentError/RetryableError.
SendDigest = Callable[[Sequence[Delivery], int], None]


def flush(store: DigestStore, dk: str, now: float, send: SendDigest, once: Once,
          dead_letter: DeadLetter, out_of_time: TimeUp | None = None) -> Counter[str]:
    """Send the destination's digest batches until none is left; notifications
    ``digested`` (sent in a digest) and ``dead-lettered``.  Once ``out_of_time``, no
    batch is claimed: the rest stays due, for the next flush."""
    counts: Counter[str] = Counter()
    while True:
        if out_of_time is not None and out_of_time():
            return counts
        claimed = store.claim(dk, now)
        if claimed is None:
            return counts

        known = store.failure(dk, claimed.batch_id)  # one read a batch
        failed = [known is not None]  # then its record is dropped once it is done

        def action(c: Claimed = claimed, known: str | None = known,
                   failed: list[bool] = failed) -> str:
            if known is not None and known.startswith("gave-up "):
                reason = known.removeprefix("gave-up ")  # its dead-lettering was cut short
            else:
                try:
                    send(c.items, c.remaining)
                    return "sent"
                except PermanentError as exc:  # the address is refused: each dead-lettered
                    reason = str(exc)
                except Postponed:  # out of time: not the batch's failure
                    raise
                except RetryableError as exc:  # for now: again at the lease, for a while
                    failed[0] = True
                    failing_s = now - store.failing_since(dk, c.batch_id, now)
                    if failing_s < store.give_up_s:
                        raise
                    reason = f"digest not sent for {failing_s:.0f}s: {exc}"
                except Exception as exc:  # nobody foresaw it: trying again cannot help
                    reason = f"{type(exc).__name__}: {exc}"
                store.give_up(dk, c.batch_id, reason[:1000])
                failed[0] = True
            for item in c.items:
                dead_letter(item, reason[:1000])
            log.warning("digest of %s dead-lettered (%d items): %s", dk[:200], len(c.items),
                        reason[:300])
            return "dead-lettered"

        outcome = once.run({"digest": dk, "batch": claimed.batch_id}, action)
        store.finish(dk, claimed.batch_id, now)
        if failed[0]:
            store.forget_failure(dk, claimed.batch_id)
        counts["digested" if outcome == "sent" else "dead-lettered"] += len(claimed.items)
        if not store.is_due(dk, now):  # what is left waits for its interval
            return counts


def flush_due(store: DigestStore, now: float, send: SendDigest, once: Once,
              dead_letter: DeadLetter, out_of_time: TimeUp | None = None
              ) -> Counter[str]:
    """Send every digest due by ``now`` (the schedule's job); what :func:`flush` counts.

    One destination failing, for whatever reason (its server away, its batch
    being sent elsewhere, an entry nobody can read), does not hold the others
    up: its claim's lease brings it back later, and it stays due (and logged)
    until it goes out.
    """
    counts: Counter[str] = Counter()
    for dk in store.due(now):
        if out_of_time is not None and out_of_time():
            break  # the rest stays due: the next run sends it
        try:
            counts += flush(store, dk, now, send, once, dead_letter, out_of_time)
        except RetryableError as exc:
            log.warning("digest of %s not sent yet: %s", dk[:200], exc)
        except Exception:  # one destination's fault, never every other digest's
            log.exception("digest of %s failed; the next run tries it again", dk[:200])
    return counts
