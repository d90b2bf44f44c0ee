"""The Redis backend of token revocation: every entry in force as one key expiring at its end.

Redis is a cache of the TokenRevocations, never their source of truth: the objects in the API
are. So the mirror is rebuilt from them whenever Redis does not hold what was last mirrored
(the digest key is missing or different: a restart without persistence, a flush, another
writer), and otherwise updated incrementally (only new, changed and withdrawn entries), so one
new revocation costs a few commands whatever the number of entries. Entries that end need no
command: their keys expire by themselves (``SET ... EXAT``).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .core.revocations import RedisLayout, RevocationDocument


class RedisUnavailable(Exception):
    """Redis could not be reached or refused a command; str() names the URL, never a password."""


@dataclass(frozen=True)
class _Mirrored:
    digest: str
    entries: RevocationDocument


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
        try:
            stored = await client.get(layout.digest_key)
            if stored == digest:
                self._mirrored[policy_uid] = _Mirrored(digest, entries)
                return 0
            known = self._mirrored.get(policy_uid)
            if known is not None and stored == known.digest:
                sets, deletes = _difference(known.entries, entries, layout)
            else:
                sets, deletes = _difference(RevocationDocument(), entries, layout)
                deletes += await _stale_keys(client, layout, entries)
            async with client.pipeline(transaction=True) as pipe:
                for key, value, until in sets:
                    pipe.set(key, value, exat=until)
                if deletes:
                    pipe.delete(*deletes)
                pipe.set(layout.digest_key, digest)
                await pipe.execute()
        except (RedisError, OSError) as error:
            raise RedisUnavailable(f"Redis at {_without_password(url)}: {type(error).__name__}: {error}") from None
        self._mirrored[policy_uid] = _Mirrored(digest, entries)
        return len(sets) + (1 if deletes else 0) + 1

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


def _difference(before: RevocationDocument, after: RevocationDocument, layout: RedisLayout):
    sets: list[tuple[str, int, int]] = []
    for jti, until in after.jti.items():
        if before.jti.get(jti) != until:
            sets.append((layout.jti_key(jti), until, until))
    for subject, entry in after.sub.items():
        if before.sub.get(subject) != entry:
            sets.append((layout.subject_key(subject), entry.issued_before, entry.until))
    deletes = [layout.jti_key(jti) for jti in before.jti if jti not in after.jti]
    deletes += [layout.subject_key(subject) for subject in before.sub if subject not in after.sub]
    return sets, deletes


async def _stale_keys(client: aioredis.Redis, layout: RedisLayout, entries: RevocationDocument) -> list[str]:
    """Keys under the layout that no entry in force accounts for (withdrawn while the operator
    was away, or left by an earlier mirror)."""
    wanted = {layout.jti_key(jti) for jti in entries.jti} | {layout.subject_key(s) for s in entries.sub}
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

