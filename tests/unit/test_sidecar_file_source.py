"""sidecar FileSource: the kubelet's atomic ConfigMap volume update, plain rewrites, deletion,
bad content, through the real app and a real HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import time
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from joserfc.jwk import ECKey, OKPKey

from signing_key_operator.core.jwks import render_jwk_set
from signing_key_operator.sidecar.app import STATE, make_app
from signing_key_operator.sidecar.settings import Settings
from signing_key_operator.sidecar.sources import FileSource
from tests.kubelet_volume import kubelet_update

JWKS = "/.well-known/jwks.json"
FAST = Settings(poll_interval=0.01, resync_interval=60.0)


@functools.cache
def jwk(kind: str, n: int = 0) -> dict:
    if kind == "EC":
        key, alg = ECKey.import_key(ec.generate_private_key(ec.SECP256R1())), "ES256"
    else:
        key, alg = OKPKey.import_key(ed25519.Ed25519PrivateKey.generate()), "EdDSA"
    return {**key.as_dict(private=False), "kid": key.thumbprint(), "alg": alg}


def body_of(*keys: dict) -> bytes:
    return render_jwk_set(list(keys))


async def eventually(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def serve_file(path: Path, settings: Settings = FAST):
    app = make_app(FileSource(path, settings), settings)
    async with TestClient(TestServer(app)) as client:
        yield client, app[STATE]


def refused_count(state, reason: str) -> float:
    value = state.metrics.registry.get_sample_value(
        "signing_key_sidecar_jwks_reloads_refused_total", {"reason": reason}
    )
    return value or 0


async def test_kubelet_atomic_symlink_swap(tmp_path):
    volume = tmp_path / "jwks"
    first, second = body_of(jwk("EC")), body_of(jwk("EC"), jwk("OKP"))
    kubelet_update(volume, {"jwks.json": first, "max-age": b"120"})
    async with serve_file(volume) as (client, state):  # the directory: --key names the file
        await eventually(lambda: state.loaded)
        resp = await client.get(JWKS)
        assert await resp.read() == first
        assert resp.headers["Cache-Control"] == "public, max-age=120"
        etag = resp.headers["ETag"]

        kubelet_update(volume, {"jwks.json": second, "max-age": b"30"})
        await eventually(lambda: state.current.generation == 2)
        resp = await client.get(JWKS, headers={"If-None-Match": etag})
        assert resp.status == 200
        assert await resp.read() == second
        assert resp.headers["Cache-Control"] == "public, max-age=30"

        # the max-age key disappears from the ConfigMap: back to the default
        kubelet_update(volume, {"jwks.json": second})
        await eventually(lambda: state.current.max_age is None)
        assert (await client.get(JWKS)).headers["Cache-Control"] == "public, max-age=60"
        assert state.current.generation == 2
        assert sorted(p.name for p in volume.iterdir() if not p.name.startswith("..2")) == ["..data", "jwks.json"]


async def test_kubelet_swap_to_bad_content_keeps_last_good(tmp_path):
    volume = tmp_path / "jwks"
    good, newer = body_of(jwk("EC")), body_of(jwk("OKP"))
    kubelet_update(volume, {"jwks.json": good})
    async with serve_file(volume / "jwks.json") as (client, state):
        await eventually(lambda: state.loaded)
        kubelet_update(volume, {"jwks.json": b'{"keys": []}'})
        await eventually(lambda: refused_count(state, "empty") == 1)
        await asyncio.sleep(0.05)  # more polls: no double counting
        assert refused_count(state, "empty") == 1
        assert await (await client.get(JWKS)).read() == good
        assert (await client.get("/readyz")).status == 200
        # the key disappears from the ConfigMap: the file goes away; last good set stays
        kubelet_update(volume, {"other": b"x"})
        await eventually(lambda: state.source_present is False)
        assert await (await client.get(JWKS)).read() == good
        kubelet_update(volume, {"jwks.json": newer})
        await eventually(lambda: state.current.generation == 2)
        assert await (await client.get(JWKS)).read() == newer
        assert state.source_present is True


async def test_a_curve_that_is_not_a_string_is_refused_and_counted_and_the_source_keeps_running(tmp_path, caplog):
    """finding 10: "crv" as a JSON array raised TypeError out of the source, which the app
    restarted again and again without ever counting or reporting a refusal."""
    volume = tmp_path / "jwks"
    good, newer = body_of(jwk("EC")), body_of(jwk("OKP"))
    kubelet_update(volume, {"jwks.json": good})
    async with serve_file(volume) as (client, state):
        await eventually(lambda: state.loaded)
        kubelet_update(volume, {"jwks.json": json.dumps({"keys": [{**jwk("EC"), "crv": ["P-256"]}]}).encode()})
        await eventually(lambda: refused_count(state, "invalid_member") == 1)
        assert state.last_refusal.reason == "invalid_member" and "crv" in state.last_refusal.message
        assert await (await client.get(JWKS)).read() == good
        kubelet_update(volume, {"jwks.json": newer})
        await eventually(lambda: state.current.generation == 2)
    assert not [r for r in caplog.records if "restarting" in r.getMessage()]


async def test_plain_rewrite_in_place_and_replace(tmp_path):
    path = tmp_path / "jwks.json"
    a, b, c = body_of(jwk("EC")), body_of(jwk("OKP")), body_of(jwk("EC"), jwk("OKP"))
    path.write_bytes(a)
    async with serve_file(path) as (client, state):
        await eventually(lambda: state.loaded)
        assert await (await client.get(JWKS)).read() == a
        with open(path, "wb") as f:  # truncate + write, same inode
            f.write(b)
        await eventually(lambda: state.current.generation == 2)
        assert await (await client.get(JWKS)).read() == b
        tmp = tmp_path / "jwks.json.tmp"  # write + rename over (what editors and many tools do)
        tmp.write_bytes(c)
        os.replace(tmp, path)
        await eventually(lambda: state.current.generation == 3)
        assert await (await client.get(JWKS)).read() == c
        assert refused_count(state, "invalid_json") == 0


async def test_change_invisible_to_stat_is_caught_by_resync(tmp_path):
    # A file system with coarse timestamps can rewrite a file with the same size and mtime:
    # simulate one whose stat never changes; the periodic re-read still picks the change up.
    class CoarseFileSource(FileSource):
        def _fingerprint(self):
            return (os.path.realpath(self.path),) if os.path.exists(self.path) else None

    path = tmp_path / "jwks.json"
    a, b = body_of(jwk("EC")), body_of(jwk("OKP"))
    path.write_bytes(a)
    settings = Settings(poll_interval=0.01, resync_interval=0.05)
    app = make_app(CoarseFileSource(path, settings), settings)
    async with TestClient(TestServer(app)) as client:
        state = app[STATE]
        await eventually(lambda: state.loaded)
        path.write_bytes(b)
        await eventually(lambda: state.current.generation == 2)
        assert await (await client.get(JWKS)).read() == b


async def test_missing_file_at_start_then_created(tmp_path):
    path = tmp_path / "jwks.json"
    async with serve_file(path) as (client, state):
        await eventually(lambda: state.source_present is False)
        assert (await client.get(JWKS)).status == 503
        assert (await client.get("/readyz")).status == 503
        path.write_bytes(body_of(jwk("EC")))
        await eventually(lambda: state.loaded)
        assert (await client.get(JWKS)).status == 200
        assert (await client.get("/readyz")).status == 200


async def test_deleted_file_keeps_serving_and_stays_ready(tmp_path):
    path = tmp_path / "jwks.json"
    good = body_of(jwk("EC"))
    path.write_bytes(good)
    async with serve_file(path) as (client, state):
        await eventually(lambda: state.loaded)
        path.unlink()
        await eventually(lambda: state.source_present is False)
        assert await (await client.get(JWKS)).read() == good
        ready = await client.get("/readyz")
        assert ready.status == 200 and (await ready.json())["sourcePresent"] is False


async def test_unreadable_file_is_refused_and_counted(tmp_path):
    path = tmp_path / "jwks.json"
    good = body_of(jwk("EC"))
    path.write_bytes(good)
    async with serve_file(path) as (client, state):
        await eventually(lambda: state.loaded)
        path.unlink()
        path.mkdir()  # open() fails with IsADirectoryError, even for root
        await eventually(lambda: refused_count(state, "unreadable") == 1)
        await asyncio.sleep(0.05)
        assert refused_count(state, "unreadable") == 1
        assert await (await client.get(JWKS)).read() == good
        path.rmdir()
        path.write_bytes(body_of(jwk("OKP")))
        await eventually(lambda: state.current.generation == 2)


async def test_source_task_stops_with_the_app(tmp_path):
    path = tmp_path / "jwks.json"
    path.write_bytes(body_of(jwk("EC")))
    before = {t for t in asyncio.all_tasks() if t.get_name().startswith("JWK Set source")}
    async with serve_file(path) as (_, state):
        await eventually(lambda: state.loaded)
        assert {t for t in asyncio.all_tasks() if t.get_name().startswith("JWK Set source")} - before
    assert not {t for t in asyncio.all_tasks() if t.get_name().startswith("JWK Set source")} - before
