"""One way to reach Redis: a single server or a cluster, and keys that stay together.

ElastiCache Serverless and cluster-mode Redis spread keys over 16,384 hash
slots and refuse any command, ``MULTI`` block or Lua script whose keys lie in
different slots (``CROSSSLOT``).  Everything that touches several keys at once
(the snapshot's blob, current id and change log; a digest's lists, batch and
due set) therefore names its keys under one *hash tag*: only the part of a key
between the first ``{`` and the next ``}`` decides its slot, so ``{fmn:snapshot:}current``
and ``{fmn:snapshot:}<id>:changes`` always share one.  :func:`hash_tagged`
makes a key prefix such a tag.

:func:`connect` builds the right client from a URL: ``redis://`` or
``rediss://`` (TLS) for one server, ``redis+cluster://`` or
``rediss+cluster://`` for a cluster (``redis.cluster.RedisCluster``, which
finds every node from the one named and follows ``MOVED`` redirections).
``FMN_REDIS_CLUSTER=1`` turns a plain ``REDIS_URL`` into the cluster form
(:func:`cluster_url`, applied by :class:`fmn.settings.Settings`).  The same
code runs on both: single-key commands, same-slot pipelines and scripts.
"""

from __future__ import annotations

from typing import Any

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def cluster_url(url: str, cluster: bool = True) -> str:
    """``url`` in its cluster form (``redis+cluster://``) when ``cluster``, else as is."""
    scheme, sep, rest = url.partition("://")
    if not cluster or not sep or scheme.lower() in CLUSTER_SCHEMES:
        return url
    if scheme.lower() not in CLUSTER_SCHEMES.values():
        raise ValueError(f"not a Redis URL: {scheme}://…")
    return f"{scheme.lower()}+cluster://{rest}"


def _plain(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{CLUSTER_SCHEMES[scheme.lower()]}://{rest}"


def connect(url: str, **options: Any) -> Any:
    """A ``redis.Redis`` or, for a cluster URL, a ``redis.cluster.RedisCluster``.

    ``options`` are the client's (``socket_timeout``, ``decode_responses``...).
    A cluster has no databases: a ``/0`` path is accepted, any other refused.
    """
    import redis
    import redis.cluster

    if not is_cluster(url):
        return redis.Redis.from_url(url, **options)
    return redis.cluster.RedisCluster.from_url(_plain(_without_db(url)), **options)


def connect_async(url: str, **options: Any) -> Any:
    """:func:`connect` for asyncio (``redis.asyncio``)."""
    import redis.asyncio
    import redis.asyncio.cluster

    if not is_cluster(url):
        return redis.asyncio.Redis.from_url(url, **options)
    return redis.asyncio.cluster.RedisCluster.from_url(_plain(_without_db(url)), **options)


def _without_db(url: str) -> str:
    base, _, query = url.partition("?")
    head, _, path = base.partition("://")
    host, slash, db = path.partition("/")
    if slash and db not in ("", "0"):
        raise ValueError(f"a Redis cluster has only database 0, not {db!r}")
    return f"{head}://{host}" + (f"?{query}" if query else "")


def hash_tagged(prefix: str) -> str:
    """``prefix`` as a hash tag, so that every key under it lands in one slot.

    A prefix holding a tag already (``fmn:digest:{fmn-}``) is kept as it is;
    any other is wrapped whole (``fmn:snapshot:`` gives ``{fmn:snapshot:}``).
    """
    start = prefix.find("{")
    if start >= 0 and prefix.find("}", start + 1) > start + 1:
        return prefix
    if not prefix:
        raise ValueError("an empty prefix cannot be a hash tag")
    return "{" + prefix + "}"


def slot(key: str | bytes) -> int:
    """The cluster hash slot of ``key`` (tags honoured), as Redis computes it."""
    from redis.crc import key_slot

    return int(key_slot(key.encode() if isinstance(key, str) else key))
