"""Key Secrets read back once per version, in a worker process.

Why a process: loading a private key validates it (for RSA, ``cryptography`` checks the primes:
about 0.14 s for RSA-3072 and 0.3 s for RSA-4096), and ``cryptography`` holds the GIL while it
does, so ``asyncio.to_thread`` stalls the event loop as much as parsing in place (four RSA-4096
loads in threads kept the loop from running for 2.1 s). Meanwhile every policy's watch events,
its reconciles and kopf's /healthz wait. The validation stays (a Secret edited so that its RSA
parameters no longer fit together is reported as broken, invariant 7, not published); it runs in
one child process, which reads its requests from its stdin and so exits when this process goes,
however it goes (the workers of a ``ProcessPoolExecutor`` outlive a SIGKILLed parent).

Why a cache: an unchanged Secret (same uid, same resourceVersion) reads back to the same key, so
it is parsed once, not on every reconcile. Each policy keeps only the Secrets of its last
listing and forgets them with the policy, so the cache is bounded by the key Secrets that exist.

The pipe carries pickles: both ends are this module, in this process and its own child.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import struct
import sys
from typing import Any, BinaryIO

from ..k8s.objects import BrokenKeySecret, StoredKey, read_key_secret

_FRAME = struct.Struct(">Q")

Read = StoredKey | BrokenKeySecret
"""A key Secret read back: its key, or why it cannot be read (the message names no data)."""


class KeyReaderFailed(Exception):
    """The worker died or could not read a Secret for a reason other than the Secret's content."""


class KeySecretReader:
    """Reads the key Secrets of every policy of this operator process."""

    def __init__(self) -> None:
        self._read: dict[str, dict[tuple[str, str], Read]] = {}
        self._worker: asyncio.subprocess.Process | None = None
        self._exchange_lock = asyncio.Lock()

    async def read(self, policy_uid: str, secrets: list[dict[str, Any]]) -> list[Read]:
        """Each Secret of ``secrets`` read back, in order; only versions not read before are parsed."""
        known = self._read.get(policy_uid, {})
        versions = [_version(secret) for secret in secrets]
        missing = [secret for secret, version in zip(secrets, versions) if version not in known]
        if missing:
            parsed = await asyncio.shield(self._parse(missing))  # a cancelled caller must not cut an exchange short
            known = {**known, **dict(zip(map(_version, missing), parsed))}
        self._read[policy_uid] = {version: known[version] for version in versions}
        return [known[version] for version in versions]

    def forget(self, policy_uid: str) -> None:
        self._read.pop(policy_uid, None)

    async def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None and worker.returncode is None:
            worker.stdin.close()  # the worker exits at the end of its input
            await worker.wait()

    async def _parse(self, secrets: list[dict[str, Any]]) -> list[Read]:
        async with self._exchange_lock:
            worker = await self._running_worker()
            request = pickle.dumps(secrets)
            try:
                worker.stdin.write(_FRAME.pack(len(request)) + request)
                await worker.stdin.drain()
                (size,) = _FRAME.unpack(await worker.stdout.readexactly(_FRAME.size))
                answers = pickle.loads(await worker.stdout.readexactly(size))
            except (ConnectionError, asyncio.IncompleteReadError):
                self._worker = None  # the next read starts another one
                raise KeyReaderFailed(f"the key reader process exited (code {await worker.wait()})") from None
        results: list[Read] = []
        for secret, (verdict, value) in zip(secrets, answers):
            if verdict == "failed":
                raise KeyReaderFailed(f"Secret {secret['metadata']['name']}: {value}")
            results.append(value if verdict == "read" else BrokenKeySecret(value))
        return results

    async def _running_worker(self) -> asyncio.subprocess.Process:
        if self._worker is None or self._worker.returncode is not None:
            self._worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", __name__, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
            )
        return self._worker


def _version(secret: dict[str, Any]) -> tuple[str, str]:
    return secret["metadata"]["uid"], secret["metadata"]["resourceVersion"]


def _answer(secret: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "read", read_key_secret(secret)
    except BrokenKeySecret as broken:
        return "broken", str(broken)
    except Exception as error:  # noqa: BLE001 - reported to the reconcile, which retries; the worker lives on
        return "failed", f"{type(error).__name__}: {error}"


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """The worker: answer each request until the input ends."""
    while len(header := requests.read(_FRAME.size)) == _FRAME.size:
        (size,) = _FRAME.unpack(header)
        answer = pickle.dumps([_answer(secret) for secret in pickle.loads(requests.read(size))])
        answers.write(_FRAME.pack(len(answer)) + answer)
        answers.flush()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the operator, which ends the input
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the answers
    serve(sys.stdin.buffer, protocol)
