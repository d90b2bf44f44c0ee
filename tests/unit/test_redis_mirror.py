"""redis_mirror.py against a real redis-server: incremental updates, the rebuild after Redis
lost its data, single entries lost (deleted, changed, evicted under maxmemory) and written
again, withdrawn entries, expiry at each entry's end, and errors that name no password."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from signing_key_operator.core.revocations import RedisLayout, RevocationDocument, SubjectEntry
from signing_key_operator.controller.redis_mirror import RedisMirror, RedisUnavailable

LAYOUT = RedisLayout.for_policy("auth", "api")
SOON = int(time.time()) + 3600


def document(jtis: dict[str, int], subjects: dict[str, SubjectEntry] | None = None) -> RevocationDocument:
    return RevocationDocument(jti=jtis, sub=subjects or {})


async def test_entries_expire_at_their_end_and_one_new_entry_costs_one_write(redis_server):
    mirror, store = RedisMirror(), redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        first = document({"a": SOON, "b": SOON + 10}, {"alice": SubjectEntry(SOON - 3600, SOON + 60)})
        assert await mirror.mirror("uid", redis_server.url, None, LAYOUT, first) == 3 + 1
        assert store.expiretime(LAYOUT.jti_key("b")) == SOON + 10
        assert store.get(LAYOUT.subject_key("alice")) == str(SOON - 3600)
        assert store.expiretime(LAYOUT.subject_key("alice")) == SOON + 60
        assert await mirror.mirror("uid", redis_server.url, None, LAYOUT, first) == 0  # unchanged: reads only
        second = document({**first.jti, "c": SOON}, dict(first.sub))
        assert await mirror.mirror("uid", redis_server.url, None, LAYOUT, second) == 1 + 1  # c, then the digest
        withdrawn = document({"a": SOON, "c": SOON}, dict(first.sub))
        await mirror.mirror("uid", redis_server.url, None, LAYOUT, withdrawn)
        assert not store.exists(LAYOUT.jti_key("b")) and store.exists(LAYOUT.jti_key("c"))
    finally:
        await mirror.close()


async def test_a_redis_that_lost_its_data_is_rebuilt_and_stale_keys_removed(redis_server):
    mirror, store = RedisMirror(), redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        entries = document({"a": SOON, "b": SOON})
        await mirror.mirror("uid", redis_server.url, None, LAYOUT, entries)
        store.flushall()
        store.set(LAYOUT.jti_key("left-by-someone"), 1)  # not an entry in force
        store.set("other-policy:jti:x", 1)  # outside the layout: never touched
        await mirror.mirror("uid", redis_server.url, None, LAYOUT, entries)
        assert store.exists(LAYOUT.jti_key("a"), LAYOUT.jti_key("b")) == 2
        assert not store.exists(LAYOUT.jti_key("left-by-someone"))
        assert store.exists("other-policy:jti:x")
        # A fresh operator (nothing in memory) trusts a matching digest and writes nothing.
        assert await RedisMirror().mirror("uid", redis_server.url, None, LAYOUT, entries) == 0
    finally:
        await mirror.close()


async def test_an_entry_deleted_or_changed_behind_the_mirrors_back_is_written_again(redis_server):
    """Finding 3 of issue 16: the mirror trusted the digest key alone, so an entry key deleted
    (or rewritten) by someone else stayed lost, for the running mirror and a fresh one alike,
    and the verifier accepted the revoked jti. Every mirror now checks every entry."""
    mirror, store = RedisMirror(), redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        entries = document({"a": SOON, "b": SOON + 10}, {"alice": SubjectEntry(SOON - 3600, SOON + 60)})
        await mirror.mirror("uid", redis_server.url, None, LAYOUT, entries)
        store.delete(LAYOUT.jti_key("b"))
        store.set(LAYOUT.subject_key("alice"), SOON - 7200)  # an older issuedBefore: fewer tokens refused
        assert await mirror.mirror("uid", redis_server.url, None, LAYOUT, entries) == 2  # the two entries, not the digest
        assert store.get(LAYOUT.jti_key("b")) == str(SOON + 10) and store.expiretime(LAYOUT.jti_key("b")) == SOON + 10
        assert store.get(LAYOUT.subject_key("alice")) == str(SOON - 3600)
        assert store.expiretime(LAYOUT.subject_key("alice")) == SOON + 60
        assert LAYOUT.revokes({"jti": "b"}, *store.mget(LAYOUT.jti_key("b"), LAYOUT.subject_key("x"))) is not None
        assert await mirror.mirror("uid", redis_server.url, None, LAYOUT, entries) == 0
        store.delete(LAYOUT.jti_key("a"))  # a fresh operator (nothing in memory) restores it too
        fresh = RedisMirror()
        try:
            assert await fresh.mirror("uid", redis_server.url, None, LAYOUT, entries) == 1
        finally:
            await fresh.close()
        assert store.get(LAYOUT.jti_key("a")) == str(SOON)
    finally:
        await mirror.close()


async def test_entries_evicted_under_maxmemory_are_written_again(redis_server):
    """Finding 3 of issue 16: under ``maxmemory`` with a volatile-* policy Redis evicts entry
    keys (they expire, so they are candidates) and never the digest (it does not); the mirror
    writes exactly the evicted entries again, once Redis has room again."""
    mirror, store = RedisMirror(), redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        entries = document({f"jti-{i}": SOON + i for i in range(2000)})
        await mirror.mirror("uid", redis_server.url, None, LAYOUT, entries)
        store.config_set("maxmemory-policy", "volatile-ttl")
        store.config_set("maxmemory", store.info("memory")["used_memory"] - 1000)
        store.dbsize()  # the next command makes Redis evict down to the limit
        store.config_set("maxmemory", 0)  # room again (a bigger limit), so what is written stays
        evicted = [jti for jti in entries.jti if not store.exists(LAYOUT.jti_key(jti))]
        assert evicted and store.info("stats")["evicted_keys"] == len(evicted)
        assert store.exists(LAYOUT.digest_key)
        assert await mirror.mirror("uid", redis_server.url, None, LAYOUT, entries) == len(evicted)
        assert store.exists(*(LAYOUT.jti_key(jti) for jti in entries.jti)) == len(entries.jti)
        assert all(store.expiretime(LAYOUT.jti_key(jti)) == entries.jti[jti] for jti in evicted)
    finally:
        await mirror.close()


async def test_an_unreachable_redis_is_reported_without_its_password(redis_server):
    mirror = RedisMirror(timeout=0.5)
    redis_server.kill()
    url = redis_server.url.replace("redis://", "redis://:hunter2@")
    try:
        with pytest.raises(RedisUnavailable) as failed:
            await mirror.mirror("uid", url, None, LAYOUT, document({"a": SOON}))
        assert "hunter2" not in str(failed.value) and "127.0.0.1" in str(failed.value)
    finally:
        await mirror.close()


def _mirror_connections(store: redis.Redis) -> int:
    """Connections to the server other than ``store``'s own."""
    return sum(1 for client in store.client_list() if int(client["id"]) != store.client_id())


async def _until(predicate, what: str) -> None:
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}")


async def test_the_client_of_a_forgotten_policy_is_closed_and_a_shared_one_kept(redis_server):
    """Finding 12: a deleted policy's Redis client stayed open for the life of the operator."""
    mirror, store = RedisMirror(), redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        for uid in ("first", "second"):
            await mirror.mirror(uid, redis_server.url, None, RedisLayout.for_policy("auth", uid), document({"a": SOON}))
        assert _mirror_connections(store) == 1  # one client for both: same URL, same password
        mirror.forget("first")
        await asyncio.sleep(0.1)
        assert _mirror_connections(store) == 1  # still used by the second policy
        mirror.forget("second")
        await _until(lambda: _mirror_connections(store) == 0, "the client closed")
    finally:
        await mirror.close()


async def test_a_changed_password_closes_the_client_of_the_old_one(redis_server):
    """Finding 12: every password a policy ever used kept a client open."""
    with redis.Redis.from_url(redis_server.url) as admin:
        admin.execute_command("ACL", "SETUSER", "default", "on", ">old-secret", ">new-secret", "~*", "&*", "+@all")
    mirror = RedisMirror()
    store = redis.Redis.from_url(redis_server.url, password="old-secret", decode_responses=True)
    try:
        await mirror.mirror("uid", redis_server.url, "old-secret", LAYOUT, document({"a": SOON}))
        await mirror.mirror("uid", redis_server.url, "new-secret", LAYOUT, document({"a": SOON, "b": SOON}))
        await _until(lambda: _mirror_connections(store) == 1, "only the new password's client left")
    finally:
        await mirror.close()
