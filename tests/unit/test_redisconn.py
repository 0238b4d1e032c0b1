"""Reaching Redis as a single server or a cluster, and keys that share a slot."""

from __future__ import annotations

from typing import Any

import pytest

from fmn.delivery.digest import DigestStore, digest_prefix
from fmn.redisconn import cluster_url, hash_tagged, is_cluster, slot
from fmn.settings import Settings
from fmn.snapshot.store import RedisSnapshotStore

pytestmark = pytest.mark.unit


def test_the_cluster_form_of_a_url() -> None:
    assert cluster_url("redis://h:6379/0") == "redis+cluster://h:6379/0"
    assert cluster_url("rediss://h:6379") == "rediss+cluster://h:6379"
    assert cluster_url("rediss+cluster://h") == "rediss+cluster://h"
    assert cluster_url("redis://h", cluster=False) == "redis://h"
    assert is_cluster("redis+cluster://h") and not is_cluster("rediss://h")
    with pytest.raises(ValueError):
        cluster_url("http://h")


def test_the_setting_turns_redis_url_into_a_cluster_url() -> None:
    env = {"REDIS_URL": "rediss://cache.example:6379", "FMN_REDIS_CLUSTER": "1"}
    assert Settings.from_env(env).redis_url == "rediss+cluster://cache.example:6379"
    assert Settings.from_env({"REDIS_URL": "redis://h"}).redis_url == "redis://h"


def test_a_cluster_has_only_database_zero() -> None:
    from fmn.redisconn import connect

    with pytest.raises(ValueError, match="database 0"):
        connect("redis+cluster://127.0.0.1:1/3")


def test_hash_tags() -> None:
    assert hash_tagged("fmn:snapshot:") == "{fmn:snapshot:}"
    assert hash_tagged("fmn:digest:{fmn-}") == "fmn:digest:{fmn-}"
    assert hash_tagged("a{}b") == "{a{}b}"  # an empty tag is no tag
    assert slot("{x}a") == slot("{x}b") == slot("x")


class NoScripts:
    """Just enough of a client to build a store (no I/O)."""

    def register_script(self, script: str) -> Any:
        return None


def test_every_key_a_store_touches_at_once_shares_one_slot() -> None:
    snap = RedisSnapshotStore(NoScripts(), "fmn:snapshot:")
    keys = [snap._key("current"), snap._key("20261202T000000000000-abcd"),
            snap._key("20261202T000000000000-abcd", "changes"), snap._key("rebuild-lock")]
    assert len({slot(k) for k in keys}) == 1
    digests = DigestStore(NoScripts(), digest_prefix("fmn-prod-"))
    keys = digests._keys('["alice","d1"]') + digests._keys('["bob","d{2}"]')
    assert len({slot(k) for k in keys}) == 1
