"""The Redis backend of token revocation: every entry in force as one key expiring at its end.

Redis is a cache of the TokenRevocations, never their source of truth: the objects in the API
are. Redis also loses single keys on its own (eviction under ``maxmemory``, an expiry or DEL by
someone else) while the digest key stays, so no digest can vouch for the entries, and a sample
would miss the one evicted entry that lets a revoked token through: every mirror (each
reconcile, and every resync) checks every entry (:class:`_EntryCheck`) and writes again each
one that is missing, and each subject entry that holds another issuedBefore.

The check is EXISTS of every jti key (a verifier only asks whether it exists) and MGET of every
subject key (a verifier compares its issuedBefore). The EXISTS commands are packed here, once
per entry set, and their replies are one integer per :data:`CHECK_BATCH` keys, because redis-py
packs and parses every argument and reply in Python: for 100,000 entries, MGET of every key
through it cost 1.3 s of the operator's CPU, where this check adds about 25 ms to the 0.35 s
the digest already costs, and about 85 ms of Redis's CPU (bench/redis_mirror.py; figures in
bench/README.md).

The digest key says which entry set was written last, so what was withdrawn can be deleted:
when it is the set this process mirrored, the entries it had and does not want any more; when
it is unknown (a restart without persistence, a flush, another writer, a fresh operator that
does not know what was withdrawn meanwhile), every key under the layout that no entry accounts
for (a SCAN). Entries that end need no command: their keys expire by themselves
(``SET ... EXAT``).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..core.revocations import RedisLayout, RevocationDocument

CHECK_BATCH = 1000
"""Keys per EXISTS or MGET of the check: Redis runs one command at a time, so a batch holds it
(and the verifiers asking it) for about a millisecond, while all of them still go in one round
trip."""


class RedisUnavailable(Exception):
    """Redis could not be reached or refused a command; str() names the URL, never a password."""


class _EntryCheck:
    """Finds the entries of one entry set that Redis does not hold as written (see the module
    docstring): one round trip of EXISTS, packed here once, then MGET of the subject keys and of
    the jti keys of every batch that came back short."""

    def __init__(self, entries: RevocationDocument, layout: RedisLayout):
        self.wanted = _wanted(entries, layout)
        jti_count = len(entries.jti)
        self.batches = [(start, min(start + CHECK_BATCH, jti_count)) for start in range(0, jti_count, CHECK_BATCH)]
        self.subjects_from = jti_count
        self.packed = b"".join(_packed(b"EXISTS", [self.wanted[i][0] for i in range(a, b)]) for a, b in self.batches)

    async def lost(self, client: aioredis.Redis) -> list[tuple[str, int, int]]:
        """(key, value, end) of every entry missing or holding another value."""
        counts = await _send_packed(client, self.packed, len(self.batches)) if self.batches else []
        suspects = [entry for (a, b), count in zip(self.batches, counts) if count < b - a for entry in self.wanted[a:b]]
        suspects += self.wanted[self.subjects_from:]
        if not suspects:
            return []
        async with client.pipeline(transaction=False) as pipe:
            for start in range(0, len(suspects), CHECK_BATCH):
                pipe.mget([key for key, _, _ in suspects[start:start + CHECK_BATCH]])
            held = [value for batch in await pipe.execute() for value in batch]
        return [(key, value, until) for (key, value, until), have in zip(suspects, held) if have != str(value)]


@dataclass(frozen=True)
class _Mirrored:
    digest: str
    check: _EntryCheck


def entries_digest(entries: RevocationDocument) -> str:
    return hashlib.sha256(entries.render()).hexdigest()


class RedisMirror:
    """Mirrors the entries of every Redis-backed policy of this operator process."""

    def __init__(self, timeout: float = 2.0):
        self.timeout = timeout
        self._clients: dict[tuple[str, str | None], aioredis.Redis] = {}
        self._client_of: dict[str, tuple[str, str | None]] = {}
        """Policy uid -> the (url, password) of its client; a client no policy uses is closed."""
        self._closing: set[asyncio.Task] = set()
        self._mirrored: dict[str, _Mirrored] = {}

    def _client(self, policy_uid: str, url: str, password: str | None) -> aioredis.Redis:
        key = (url, password)
        previous = self._client_of.get(policy_uid)
        self._client_of[policy_uid] = key
        if previous is not None and previous != key:
            self._release(previous)  # the policy's URL or password changed
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = aioredis.Redis.from_url(
                url, password=password, socket_timeout=self.timeout, socket_connect_timeout=self.timeout, decode_responses=True
            )
        return client

    async def mirror(self, policy_uid: str, url: str, password: str | None, layout: RedisLayout, entries: RevocationDocument) -> int:
        """Make Redis hold exactly ``entries`` under ``layout``; returns the commands written."""
        digest = entries_digest(entries)
        client = self._client(policy_uid, url, password)
        known = self._mirrored.get(policy_uid)
        check = known.check if known is not None and known.digest == digest else _EntryCheck(entries, layout)
        try:
            stored = await client.get(layout.digest_key)
            sets = await check.lost(client)
            deletes: list[str] = []
            if stored != digest:
                wanted_keys = {key for key, _, _ in check.wanted}
                if known is not None and stored == known.digest:
                    deletes = [key for key, _, _ in known.check.wanted if key not in wanted_keys]
                else:
                    deletes = await _stale_keys(client, layout, wanted_keys)
            if sets or deletes or stored != digest:
                async with client.pipeline(transaction=True) as pipe:
                    for key, value, until in sets:
                        pipe.set(key, value, exat=until)
                    if deletes:
                        pipe.delete(*deletes)
                    if stored != digest:
                        pipe.set(layout.digest_key, digest)
                    await pipe.execute()
        except (RedisError, OSError) as error:
            raise RedisUnavailable(f"Redis at {_without_password(url)}: {type(error).__name__}: {error}") from None
        self._mirrored[policy_uid] = _Mirrored(digest, check)
        return len(sets) + (1 if deletes else 0) + (1 if stored != digest else 0)

    def forget(self, policy_uid: str) -> None:
        self._mirrored.pop(policy_uid, None)
        key = self._client_of.pop(policy_uid, None)
        if key is not None:
            self._release(key)

    def _release(self, key: tuple[str, str | None]) -> None:
        """Close the client of ``key`` unless another policy still uses it (in the background:
        a policy is forgotten from a watch handler, which must not wait on Redis)."""
        if key in self._client_of.values() or (client := self._clients.pop(key, None)) is None:
            return
        task = asyncio.get_running_loop().create_task(client.aclose(), name=f"close Redis client {_without_password(key[0])}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        await asyncio.gather(*self._closing, return_exceptions=True)
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
        self._client_of.clear()


def _wanted(entries: RevocationDocument, layout: RedisLayout) -> list[tuple[str, int, int]]:
    """(key, value, end) of every entry, jti entries first: the value a verifier reads, the
    key's EXAT."""
    wanted = [(layout.jti_key(jti), until, until) for jti, until in entries.jti.items()]
    wanted += [(layout.subject_key(subject), e.issued_before, e.until) for subject, e in entries.sub.items()]
    return wanted


def _packed(command: bytes, keys: list[str]) -> bytes:
    """One command in the Redis protocol (RESP), as redis-py would pack it."""
    parts = [b"*%d\r\n$%d\r\n%s\r\n" % (len(keys) + 1, len(command), command)]
    for key in keys:
        raw = key.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


async def _send_packed(client: aioredis.Redis, packed: bytes, replies: int) -> list:
    """Send commands packed already on one of the client's connections; their replies."""
    pool = client.connection_pool
    connection = await pool.get_connection()
    try:
        await connection.send_packed_command(packed)
        return [await connection.read_response() for _ in range(replies)]
    except BaseException:
        await connection.disconnect()  # replies left unread must not reach the next command
        raise
    finally:
        await pool.release(connection)


async def _stale_keys(client: aioredis.Redis, layout: RedisLayout, wanted: set[str]) -> list[str]:
    """Keys under the layout that no entry in force accounts for (withdrawn while the operator
    was away, or left by an earlier mirror)."""
    stale = []
    for pattern in (layout.jti_key("*"), layout.subject_key("*")):
        async for key in client.scan_iter(match=_escape_glob(pattern[:-1]) + "*", count=1000):
            if key not in wanted:
                stale.append(key)
    return stale


def _escape_glob(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _without_password(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"

