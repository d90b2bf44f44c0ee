"""key_reader.py with its real worker process: key Secrets are parsed once per version, off the
event loop, and the worker goes when the operator does."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone

import pytest

from signing_key_operator.core.keys import generate_key
from signing_key_operator.core.planner import KeyReason, KeyRecord, KeyState
from signing_key_operator.k8s import objects
from signing_key_operator.controller.key_reader import KeySecretReader

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
POLICY = {"apiVersion": "signingkeys.dev/v1alpha1", "kind": "SigningKeyPolicy",
          "metadata": {"name": "api", "namespace": "auth", "uid": "policy-uid"}}


def stored_secret(algorithm: str, serial: int = 1, resource_version: str = "1", **generate) -> dict:
    """A key Secret as the API server answers it (data base64, uid and resourceVersion set)."""
    material = generate_key(algorithm, **generate)
    record = KeyRecord(serial=serial, kid=material.kid, alg=algorithm, state=KeyState.ACTIVE,
                       created=T0, activated=T0, reason=KeyReason.BOOTSTRAP)
    secret = objects.key_secret(POLICY, record, material)
    secret["metadata"].update(uid=f"secret-uid-{serial}", resourceVersion=resource_version)
    return secret


@pytest.fixture
async def reader():
    reader = KeySecretReader()
    yield reader
    await reader.close()


async def test_an_unchanged_key_secret_is_parsed_once_and_a_new_version_again(reader):
    """Finding 6: every reconcile parsed (and validated) every key Secret again."""
    secret = stored_secret("ES256")
    (first,) = await reader.read("policy-uid", [secret])
    (again,) = await reader.read("policy-uid", [secret])
    assert again is first  # kept, not parsed again (a parse in the worker answers a new object)
    assert first.record.kid == first.material.kid and first.resource_version == "1"

    relabelled = {**secret, "metadata": {**secret["metadata"], "resourceVersion": "2"}}
    (changed,) = await reader.read("policy-uid", [relabelled])
    assert changed is not first and changed.resource_version == "2"

    reader.forget("policy-uid")
    (after_forget,) = await reader.read("policy-uid", [relabelled])
    assert after_forget is not changed


async def test_a_policy_keeps_only_the_secrets_of_its_last_listing(reader):
    """Finding 6: the cache is bounded by the key Secrets that exist."""
    old, new = stored_secret("ES256", serial=1), stored_secret("ES256", serial=2)
    (old_read, _) = await reader.read("policy-uid", [old, new])
    await reader.read("policy-uid", [new])  # the old key was removed
    (old_again,) = await reader.read("policy-uid", [old])
    assert old_again is not old_read


async def test_an_unreadable_secret_is_reported_with_a_message_that_holds_no_data(reader):
    secret = stored_secret("ES256")
    secret["data"]["private.pem"] = base64.b64encode(b"-----BEGIN PRIVATE KEY-----\nnot a key\n").decode()
    (broken,) = await reader.read("policy-uid", [secret])
    assert isinstance(broken, objects.BrokenKeySecret)
    assert "private.pem is unusable" in str(broken) and "not a key" not in str(broken)
    (again,) = await reader.read("policy-uid", [secret])
    assert again is broken


async def test_validating_an_rsa_4096_key_leaves_the_event_loop_free(reader):
    """Finding 6: cryptography holds the GIL while it validates an RSA key (0.3 s for 4096
    bits), so parsing on the loop, or in a thread, stopped every other task meanwhile."""
    secrets = [stored_secret("RS256", serial=serial, rsa_key_size=4096) for serial in (1, 2)]
    await reader.read("warm-up", [stored_secret("ES256")])  # the worker has started
    reading = asyncio.create_task(reader.read("policy-uid", secrets))
    turns = 0
    while not reading.done():
        turns += 1
        await asyncio.sleep(0)
    assert all(isinstance(read, objects.StoredKey) for read in reading.result())
    assert turns > 10  # the loop went on running other tasks while the keys were validated


async def test_a_worker_that_died_is_replaced(reader):
    secret = stored_secret("ES256")
    await reader.read("policy-uid", [secret])
    dead = reader._worker
    dead.kill()  # as the kernel's OOM killer would
    await dead.wait()
    changed = {**secret, "metadata": {**secret["metadata"], "resourceVersion": "2"}}
    (read,) = await reader.read("policy-uid", [changed])
    assert read.resource_version == "2" and reader._worker.pid != dead.pid


def test_the_worker_exits_when_the_operator_is_killed(tmp_path):
    """A pool's workers outlive a SIGKILLed parent; the reader's worker reads its stdin and ends with it."""
    script = textwrap.dedent("""
        import asyncio, os, signal, sys
        from signing_key_operator.controller.key_reader import KeySecretReader
        from tests.unit.test_key_reader import stored_secret

        async def main():
            reader = KeySecretReader()
            await reader.read("policy-uid", [stored_secret("ES256")])
            print(reader._worker.pid, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
    """)
    operator = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert operator.returncode == -signal.SIGKILL, operator.stderr
    worker = int(operator.stdout.strip())
    deadline = time.monotonic() + 30
    while _running(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(worker), f"worker {worker} outlived the operator"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False
