"""sidecar/app.py + state.py: endpoints, headers, conditional requests, refusals, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import re
from email.utils import parsedate_to_datetime

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwk import ECKey, OKPKey, RSAKey
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from signing_key_operator.core.jwks import parse_jwk_set, render_jwk_set
from signing_key_operator.sidecar.app import (
    JWKS_CONTENT_TYPE,
    LIFECYCLE,
    METRICS,
    STATE,
    etag_matches,
    make_app,
)
from signing_key_operator.sidecar.settings import Settings
from signing_key_operator.sidecar.sources import MAX_AGE_ANNOTATION, apply_configmap, apply_published
from signing_key_operator.sidecar.state import JwksState, Outcome

JWKS = "/.well-known/jwks.json"


@functools.cache
def _key(kind: str, n: int = 0):
    if kind == "RSA":
        return RSAKey.import_key(rsa.generate_private_key(65537, 2048)), "RS256"
    if kind == "EC":
        return ECKey.import_key(ec.generate_private_key(ec.SECP256R1())), "ES256"
    return OKPKey.import_key(ed25519.Ed25519PrivateKey.generate()), "EdDSA"


def jwk(kind: str, n: int = 0) -> dict:
    key, alg = _key(kind, n)
    return {**key.as_dict(private=False), "kid": key.thumbprint(), "alg": alg, "use": "sig"}


def private_jwk(kind: str, n: int = 0) -> dict:
    key, alg = _key(kind, n)
    return {**key.as_dict(private=True), "kid": key.thumbprint(), "alg": alg}


def body_of(*keys: dict) -> bytes:
    return render_jwk_set(list(keys))


@contextlib.asynccontextmanager
async def serve(settings: Settings | None = None, body: bytes | None = None, max_age: int | None = None):
    app = make_app(None, settings or Settings())
    if body is not None:
        assert app[STATE].offer(body, max_age=max_age, origin="test") is Outcome.LOADED
    async with TestClient(TestServer(app)) as client:
        yield client, app[STATE]


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# ---------------------------------------------------------------- JWKS endpoint


@pytest.mark.parametrize("path", [JWKS, "/jwks.json"])
async def test_get_serves_body_byte_for_byte_with_headers(path):
    body = body_of(jwk("EC"), jwk("RSA"))
    async with serve(body=body) as (client, state):
        resp = await client.get(path)
        assert resp.status == 200
        assert await resp.read() == body
        h = resp.headers
        assert h["Content-Type"] == JWKS_CONTENT_TYPE
        assert h["Cache-Control"] == "public, max-age=60"
        assert h["ETag"] == '"' + hashlib.sha256(body).hexdigest() + '"'
        assert h["Content-Length"] == str(len(body))
        assert h["Access-Control-Allow-Origin"] == "*"
        assert h["X-Content-Type-Options"] == "nosniff"
        assert parsedate_to_datetime(h["Last-Modified"]).timestamp() == pytest.approx(state.current.loaded_at, abs=1)
        assert "no-store" not in h["Cache-Control"]


async def test_head_has_headers_and_no_body():
    body = body_of(jwk("OKP"))
    async with serve(body=body) as (client, _):
        get = await client.get(JWKS)
        head = await client.head(JWKS)
        assert head.status == 200
        assert await head.read() == b""
        for name in ("Content-Type", "Cache-Control", "ETag", "Last-Modified", "Content-Length"):
            assert head.headers[name] == get.headers[name], name


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    "header",
    ["{etag}", "W/{etag}", '"other", {etag}', '"a",W/{etag} , "b"', "*", ' {etag} ', ', {etag},'],
)
async def test_if_none_match_gives_304(method, header):
    body = body_of(jwk("EC"))
    async with serve(body=body, max_age=42) as (client, state):
        etag = state.current.etag
        resp = await client.request(method, JWKS, headers={"If-None-Match": header.format(etag=etag)})
        assert resp.status == 304
        assert await resp.read() == b""
        assert resp.headers["ETag"] == etag
        assert resp.headers["Cache-Control"] == "public, max-age=42"
        assert "Last-Modified" in resp.headers
        assert "Content-Type" not in resp.headers


@pytest.mark.parametrize("header", ['"nope"', 'W/"nope", "other"', "garbage", '"' + "0" * 64 + '"', ""])
async def test_if_none_match_mismatch_gives_200(header):
    body = body_of(jwk("EC"))
    async with serve(body=body) as (client, _):
        resp = await client.get(JWKS, headers={"If-None-Match": header})
        assert resp.status == 200
        assert await resp.read() == body


async def test_if_modified_since_is_not_honoured():
    body = body_of(jwk("EC"))
    async with serve(body=body) as (client, _):
        resp = await client.get(JWKS, headers={"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"})
        assert resp.status == 200 and await resp.read() == body


def test_etag_matches_unit():
    assert etag_matches('"abc"', '"abc"')
    assert etag_matches('W/"abc"', '"abc"')
    assert etag_matches('"x", "abc"', '"abc"')
    assert etag_matches("*", '"abc"')
    assert not etag_matches('"abcd"', '"abc"')
    assert not etag_matches("abc", '"abc"')
    assert not etag_matches('"x" "abc"', '"abc"')  # not a valid list


async def test_503_until_a_valid_set_is_loaded_then_200():
    async with serve() as (client, state):
        for path in (JWKS, "/jwks.json", "/readyz"):
            resp = await client.get(path)
            assert resp.status == 503
            assert resp.headers["Content-Type"] == "application/json"
            payload = await resp.json()
            assert payload.get("error") == "jwks_not_loaded" or payload.get("ready") is False
        resp = await client.get(JWKS)
        assert resp.headers["Retry-After"] == "1"
        assert "no-store" not in resp.headers.get("Cache-Control", "")
        # bad content does not make it ready
        state.offer(b'{"keys": []}', origin="test")
        assert (await client.get(JWKS)).status == 503
        ready = await (await client.get("/readyz")).json()
        assert ready["lastRefusal"]["reason"] == "empty"
        state.offer(body_of(jwk("EC")), origin="test")
        assert (await client.get(JWKS)).status == 200
        assert (await client.get("/readyz")).status == 200


async def test_max_age_precedence():
    body = body_of(jwk("EC"))
    async with serve(body=body, max_age=300) as (client, state):
        assert (await client.get(JWKS)).headers["Cache-Control"] == "public, max-age=300"
        # a max-age change alone applies without a new generation
        assert state.offer(body, max_age=None, origin="test") is Outcome.UNCHANGED
        assert state.current.generation == 1
        assert (await client.get(JWKS)).headers["Cache-Control"] == "public, max-age=60"
    async with serve(Settings(max_age=5), body=body, max_age=300) as (client, _):
        assert (await client.get(JWKS)).headers["Cache-Control"] == "public, max-age=5"
    async with serve(Settings(max_age=0), body=body) as (client, _):
        assert (await client.get(JWKS)).headers["Cache-Control"] == "public, max-age=0"


async def test_new_generation_changes_etag_and_body():
    a, b = body_of(jwk("EC")), body_of(jwk("EC"), jwk("OKP"))
    async with serve(body=a) as (client, state):
        first = await client.get(JWKS)
        etag = first.headers["ETag"]
        assert state.offer(b, origin="test") is Outcome.LOADED
        assert state.current.generation == 2
        resp = await client.get(JWKS, headers={"If-None-Match": etag})
        assert resp.status == 200
        assert await resp.read() == b
        assert resp.headers["ETag"] != etag


# ---------------------------------------------------------------- refusals keep the last good set

BAD_CONTENT = {
    "invalid_json": b'{"keys": [',
    "not_an_object": b"[1, 2]",
    "keys_not_a_list": b'{"kid": "x"}',
    "empty": b'{"keys": []}',
    "missing_member": None,  # filled in below (needs keys)
    "missing_kid": None,
    "duplicate_kid": None,
    "private_member": None,
    "symmetric_key": b'{"keys": [{"kty": "oct", "kid": "hmac"}]}',
    "not_utf8": b"\xff\xfe",
}


def bad_content(reason: str) -> bytes:
    if BAD_CONTENT[reason] is not None:
        return BAD_CONTENT[reason]
    ec_key = jwk("EC")
    if reason == "missing_member":
        return json.dumps({"keys": [{k: v for k, v in ec_key.items() if k != "y"}]}).encode()
    if reason == "missing_kid":
        return json.dumps({"keys": [{k: v for k, v in ec_key.items() if k != "kid"}]}).encode()
    if reason == "duplicate_kid":
        return json.dumps({"keys": [ec_key, {**jwk("OKP"), "kid": ec_key["kid"]}]}).encode()
    assert reason == "private_member"
    return json.dumps({"keys": [jwk("OKP"), private_jwk("EC")]}).encode()


@pytest.mark.parametrize("reason", sorted(BAD_CONTENT))
async def test_bad_content_is_refused_counted_and_last_good_set_kept(reason, caplog):
    good = body_of(jwk("EC"), jwk("OKP"))
    async with serve(body=good) as (client, state):
        bad = bad_content(reason)
        assert state.offer(bad, origin="test") is Outcome.REFUSED
        assert state.offer(bad, origin="test") is Outcome.REFUSED  # same content again: counted once
        resp = await client.get(JWKS)
        assert resp.status == 200 and await resp.read() == good
        assert state.current.generation == 1
        assert (await client.get("/readyz")).status == 200
        samples = metric_samples(await (await client.get("/metrics")).text())
        assert samples[("signing_key_sidecar_jwks_reloads_refused_total", (("reason", reason),))] == 1
        assert state.last_refusal.reason == reason
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert reason in logged and "refused" in logged
    if reason == "private_member":
        for member in ("d", "p", "q", "dp", "dq", "qi"):
            value = private_jwk("EC").get(member)
            if value:
                assert value not in logged


async def test_private_material_outside_the_keys_known_members_is_never_served():
    """finding 4: a set with a top-level "d", or a key with a nested "private": {"d": ...}, was
    served as stored, private value included. Now refused as private material; the last good set
    stays served with its own ETag, and before any good set nothing is served at all."""
    secret = private_jwk("EC")["d"]
    good = body_of(jwk("EC"))
    leaks = [
        json.dumps({"keys": [jwk("EC")], "d": secret}).encode(),
        json.dumps({"keys": [{**jwk("OKP"), "private": {"d": secret}}]}).encode(),
    ]
    async with serve() as (client, state):
        for leak in leaks:
            assert state.offer(leak, origin="test") is Outcome.REFUSED
            assert state.last_refusal.reason == "private_member" and secret not in state.last_refusal.message
            assert (await client.get(JWKS)).status == 503
        assert state.offer(good, origin="test") is Outcome.LOADED
        for leak in leaks:
            assert state.offer(leak, origin="test") is Outcome.REFUSED
            reply = await client.get(JWKS)
            assert await reply.read() == good and secret.encode() not in good
            assert reply.headers["ETag"] == '"' + hashlib.sha256(good).hexdigest() + '"'
        samples = metric_samples(await (await client.get("/metrics")).text())
        assert samples[("signing_key_sidecar_jwks_reloads_refused_total", (("reason", "private_member"),))] == 4


async def test_apply_configmap_shared_logic():
    good, newer = body_of(jwk("EC")), body_of(jwk("EC"), jwk("RSA"))
    async with serve() as (client, state):
        cm = {
            "metadata": {"name": "jwks", "annotations": {MAX_AGE_ANNOTATION: "120"}, "resourceVersion": "5"},
            "data": {"jwks.json": good.decode(), "max-age": "999"},
        }
        assert apply_configmap(state, cm, origin="cm") is Outcome.LOADED
        assert (await client.get(JWKS)).headers["Cache-Control"] == "public, max-age=120"
        # invalid annotation: ignored, falls back to the data key
        cm["metadata"]["annotations"][MAX_AGE_ANNOTATION] = "soon"
        assert apply_configmap(state, cm, origin="cm") is Outcome.UNCHANGED
        assert (await client.get(JWKS)).headers["Cache-Control"] == "public, max-age=999"
        # binaryData works too
        bin_cm = {"metadata": {}, "binaryData": {"jwks.json": __import__("base64").b64encode(newer).decode()}}
        assert apply_configmap(state, bin_cm, origin="cm") is Outcome.LOADED
        assert await (await client.get(JWKS)).read() == newer
        # data key missing: refused, last good kept
        assert apply_configmap(state, {"metadata": {}, "data": {"other": "x"}}, origin="cm") is Outcome.REFUSED
        assert state.last_refusal.reason == "missing_data_key"
        # deleted: keeps serving, stays ready, reports the source as gone
        assert apply_configmap(state, None, origin="cm") is None
        assert state.source_present is False
        resp = await client.get(JWKS)
        assert resp.status == 200 and await resp.read() == newer
        ready = await client.get("/readyz")
        assert ready.status == 200 and (await ready.json())["sourcePresent"] is False
        samples = metric_samples(await (await client.get("/metrics")).text())
        assert samples[("signing_key_sidecar_jwks_source_present", ())] == 0
        # comes back with new content
        assert apply_published(state, {"jwks.json": good}, origin="cm") is Outcome.LOADED
        assert state.source_present is True and state.current.generation == 3


# ---------------------------------------------------------------- discovery


async def test_discovery_document_for_spring():
    issuer = "https://auth.example.com"
    body = body_of(jwk("EC"), jwk("RSA"), {**jwk("OKP"), "alg": "EdDSA"})
    async with serve(Settings(issuer=issuer), body=body) as (client, state):
        resp = await client.get("/.well-known/openid-configuration")
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.headers["Cache-Control"] == "public, max-age=60"
        doc = await resp.json()
        assert doc["issuer"] == issuer
        assert doc["jwks_uri"] == issuer + "/.well-known/jwks.json"
        assert doc["id_token_signing_alg_values_supported"] == ["ES256", "EdDSA", "RS256"]
        assert doc["response_types_supported"] and doc["subject_types_supported"] == ["public"]
        etag = resp.headers["ETag"]
        again = await client.get("/.well-known/openid-configuration", headers={"If-None-Match": etag})
        assert again.status == 304
        head = await client.head("/.well-known/openid-configuration")
        assert head.status == 200 and await head.read() == b""
        state.offer(body_of(jwk("EC")), origin="test")
        doc2 = await (await client.get("/.well-known/openid-configuration")).json()
        assert doc2["id_token_signing_alg_values_supported"] == ["ES256"]


async def test_discovery_with_issuer_path_is_served_under_the_path_too():
    issuer = "https://auth.example.com/tenants/a"
    body = body_of(jwk("EC"))
    async with serve(Settings(issuer=issuer), body=body) as (client, _):
        for path in ("/.well-known/openid-configuration", "/tenants/a/.well-known/openid-configuration"):
            doc = await (await client.get(path)).json()
            assert doc["issuer"] == issuer
            assert doc["jwks_uri"] == issuer + "/.well-known/jwks.json"
        assert await (await client.get("/tenants/a/.well-known/jwks.json")).read() == body


async def test_discovery_404_without_issuer_and_503_before_load():
    async with serve(body=body_of(jwk("EC"))) as (client, _):
        assert (await client.get("/.well-known/openid-configuration")).status == 404
    async with serve(Settings(issuer="https://a.example")) as (client, _):
        assert (await client.get("/.well-known/openid-configuration")).status == 503


def test_settings_validation():
    for bad in ({"issuer": "ftp://x"}, {"issuer": "https://x/?q=1"}, {"port": 70000}, {"max_age": -1},
                {"data_key": "a/b"}, {"poll_interval": 0}):
        with pytest.raises(ValueError):
            Settings(**bad)
    assert Settings(issuer="http://issuer.svc:8080").issuer == "http://issuer.svc:8080"


# ---------------------------------------------------------------- probes and metrics


async def test_healthz_and_readyz_and_draining():
    async with serve() as (client, state):
        resp = await client.get("/healthz")
        assert resp.status == 200 and await resp.text() == "ok\n"
        assert (await client.get("/readyz")).status == 503
        state.offer(body_of(jwk("EC")), origin="test")
        resp = await client.get("/readyz")
        assert resp.status == 200
        payload = await resp.json()
        assert payload["ready"] is True and payload["generation"] == 1 and payload["kids"] == [jwk("EC")["kid"]]
        client.app[LIFECYCLE].draining = True  # after SIGTERM: unready, but the JWKS is still served
        assert (await client.get("/readyz")).status == 503
        assert (await client.get(JWKS)).status == 200
        assert (await client.get("/healthz")).status == 200


async def test_metrics_content():
    a, b = body_of(jwk("EC"), jwk("OKP")), body_of(jwk("OKP"))
    async with serve() as (client, state):
        await client.get(JWKS)  # 503
        state.offer(a, origin="test")
        await client.get(JWKS)
        await client.get(JWKS)
        await client.head("/jwks.json")
        etag = state.current.etag
        await client.get(JWKS, headers={"If-None-Match": etag})
        await client.get("/no/such/path")
        state.offer(b'{"keys": []}', origin="test")
        state.offer(b, origin="test")
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        s = metric_samples(await resp.text())
        req = "signing_key_sidecar_http_requests_total"
        assert s[(req, (("method", "GET"), ("path", JWKS), ("status", "503")))] == 1
        assert s[(req, (("method", "GET"), ("path", JWKS), ("status", "200")))] == 2
        assert s[(req, (("method", "GET"), ("path", JWKS), ("status", "304")))] == 1
        assert s[(req, (("method", "HEAD"), ("path", "/jwks.json"), ("status", "200")))] == 1
        assert s[(req, (("method", "GET"), ("path", "unmatched"), ("status", "404")))] == 1
        assert s[("signing_key_sidecar_jwks_generation", ())] == 2
        last_reload = s[("signing_key_sidecar_jwks_last_reload_timestamp_seconds", ())]
        assert last_reload == pytest.approx(state.current.loaded_at)
        assert s[("signing_key_sidecar_jwks_keys_served", ())] == 1
        assert s[("signing_key_sidecar_jwks_kid_served", (("kid", jwk("OKP")["kid"]),))] == 1
        assert ("signing_key_sidecar_jwks_kid_served", (("kid", jwk("EC")["kid"]),)) not in s  # gone with the key
        assert s[("signing_key_sidecar_jwks_reloads_refused_total", (("reason", "empty"),))] == 1
        assert s[("signing_key_sidecar_ready", ())] == 1
        assert s[("signing_key_sidecar_jwks_source_present", ())] == 1
        # OpenMetrics on request
        om = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert om.headers["Content-Type"].startswith("application/openmetrics-text")


async def test_each_app_has_its_own_registry():
    body = body_of(jwk("EC"))
    async with serve(body=body) as (c1, s1), serve() as (c2, s2):
        await c1.get(JWKS)
        assert s1.metrics.registry is not s2.metrics.registry
        m2 = metric_samples(await (await c2.get("/metrics")).text())
        assert m2[("signing_key_sidecar_jwks_generation", ())] == 0
        assert not any(k[0] == "signing_key_sidecar_http_requests_total" and ("path", JWKS) in k[1] for k in m2)
        assert c1.app[METRICS] is s1.metrics
    assert REGISTRY.get_sample_value("signing_key_sidecar_jwks_generation") is None


async def test_served_bytes_are_what_verifiers_parse():
    # PyJWT's client reads whatever the endpoint returns: the served body must be the canonical
    # set, parseable and identical to the rendering.
    import jwt

    body = body_of(jwk("RSA"), jwk("EC"))
    async with serve(body=body) as (client, _):
        served = await (await client.get(JWKS)).read()
        keyset = jwt.PyJWKSet.from_json(served.decode())
        assert {k.key_id for k in keyset.keys} == set(parse_jwk_set(served).kids)


# ---------------------------------------------------------------- revocation document

REVOCATIONS_PATH = "/revocations.json"


@contextlib.asynccontextmanager
async def serve_revocations(document: bytes | None, max_age: int | None = 7):
    from signing_key_operator.sidecar.app import REVOCATIONS
    from signing_key_operator.sidecar.state import RevocationState

    state = JwksState()
    app = make_app(None, Settings(), state=state, revocations=RevocationState(state.metrics))
    assert state.offer(body_of(jwk("EC")), origin="test") is Outcome.LOADED
    if document is not None:
        assert app[REVOCATIONS].offer(document, max_age=max_age, origin="test") is Outcome.LOADED
    async with TestClient(TestServer(app)) as client:
        yield client, app[REVOCATIONS]


REVOKED = b'{"backend":"configmap","jti":{"j1":1900000000},"sub":{}}\n'


async def test_revocations_are_served_byte_for_byte_with_the_jwks_headers_and_304():
    async with serve_revocations(REVOKED) as (client, _):
        reply = await client.get(REVOCATIONS_PATH)
        assert reply.status == 200 and await reply.read() == REVOKED
        etag = '"' + hashlib.sha256(REVOKED).hexdigest() + '"'
        assert reply.headers["ETag"] == etag
        assert reply.headers["Cache-Control"] == "public, max-age=7"
        assert reply.headers["Content-Type"] == "application/json"
        assert "Last-Modified" in reply.headers
        again = await client.get(REVOCATIONS_PATH, headers={"If-None-Match": etag})
        assert again.status == 304 and await again.read() == b"" and again.headers["ETag"] == etag
        head = await client.head(REVOCATIONS_PATH)
        assert head.status == 200 and head.headers["ETag"] == etag


async def test_bad_revocation_content_is_refused_and_the_last_good_document_stays_served():
    async with serve_revocations(REVOKED) as (client, state):
        for bad in (b"{", b'{"backend":"configmap","jti":{"j1":"soon"},"sub":{}}', b'{"keys":[]}'):
            assert state.offer(bad, origin="test") is Outcome.REFUSED
            assert await (await client.get(REVOCATIONS_PATH)).read() == REVOKED
        metrics = metric_samples(await (await client.get("/metrics")).text())
        refused = {labels: v for (name, labels), v in metrics.items() if name == "signing_key_sidecar_revocations_reloads_refused_total"}
        assert sum(refused.values()) == 3
        assert metrics[("signing_key_sidecar_revocations_entries", ())] == 1


async def test_not_ready_until_the_revocation_document_is_loaded():
    async with serve_revocations(None) as (client, state):
        assert (await client.get(REVOCATIONS_PATH)).status == 503
        ready = await client.get("/readyz")
        assert ready.status == 503 and "revocation" in (await ready.json())["reason"]
        state.offer(REVOKED, origin="test")
        ready = await client.get("/readyz")
        assert ready.status == 200
        assert (await ready.json())["revocations"] == {"generation": 1, "entries": 1, "backend": "configmap", "sourcePresent": True}


async def test_without_a_revocation_source_the_path_says_so():
    async with serve(body=body_of(jwk("EC"))) as (client, _):
        reply = await client.get(REVOCATIONS_PATH)
        assert reply.status == 404 and (await reply.json())["error"] == "revocations_not_configured"
        assert (await client.get("/readyz")).status == 200


async def test_a_max_age_of_any_length_never_holds_back_an_update():
    """finding 11: an annotation of more than 4300 digits made int() raise, and the whole update,
    revocation included, was dropped. Now such a value is ignored like any invalid max-age (the
    data key, else the default, applies), counted once, and the document is served."""
    huge = "9" * 5000
    newer = b'{"backend":"configmap","jti":{"j1":1900000000,"j2":1900000000},"sub":{}}\n'
    async with serve_revocations(REVOKED) as (client, state):
        cm = {"metadata": {"annotations": {MAX_AGE_ANNOTATION: huge}}, "data": {"revocations.json": newer.decode()}}
        assert apply_configmap(state, cm, key="revocations.json", origin="cm") is Outcome.LOADED
        reply = await client.get(REVOCATIONS_PATH)
        assert await reply.read() == newer and reply.headers["Cache-Control"] == "public, max-age=60"
        cm["data"]["max-age"] = "0" * 5000 + "30"  # leading zeros of any length: still 30
        assert apply_configmap(state, cm, key="revocations.json", origin="cm") is Outcome.UNCHANGED
        assert (await client.get(REVOCATIONS_PATH)).headers["Cache-Control"] == "public, max-age=30"
        metrics = metric_samples(await (await client.get("/metrics")).text())
        assert metrics[("signing_key_sidecar_revocations_max_age_ignored_total", ())] == 1, "the same value: once"
        assert metrics[("signing_key_sidecar_jwks_max_age_ignored_total", ())] == 0
    async with serve(body=body_of(jwk("EC"))) as (client, state):
        newer_set = body_of(jwk("EC"), jwk("OKP"))
        cm = {"metadata": {"annotations": {MAX_AGE_ANNOTATION: huge}}, "data": {"jwks.json": newer_set.decode()}}
        assert apply_configmap(state, cm, origin="cm") is Outcome.LOADED
        assert await (await client.get(JWKS)).read() == newer_set
        metrics = metric_samples(await (await client.get("/metrics")).text())
        assert metrics[("signing_key_sidecar_jwks_max_age_ignored_total", ())] == 1


# ---------------------------------------------------------------- source supervision


class _StoppingSource:
    """Fails at once, except its fifth run, which works for longer than the backoff cap first."""

    description = "test source"

    def __init__(self, long_run: float) -> None:
        self.runs = 0
        self.long_run = long_run
        self.settled = asyncio.Event()

    async def run(self, state) -> None:
        self.runs += 1
        if self.runs == 5:
            await asyncio.sleep(self.long_run)
        if self.runs == 7:
            self.settled.set()
            await asyncio.Event().wait()  # runs until the app stops
        raise RuntimeError("the source broke")


async def test_the_restart_backoff_starts_again_after_a_source_ran_for_a_while(caplog):
    """Finding 12: the wait between restarts only ever grew, so after one bad spell every later
    restart, for the life of the pod, waited the cap."""
    settings = Settings(backoff_initial=0.1, backoff_max=0.4)
    source = _StoppingSource(long_run=0.5)
    caplog.set_level("WARNING", logger="signing_key_operator.sidecar.app")
    async with TestClient(TestServer(make_app(source, settings))):
        await asyncio.wait_for(source.settled.wait(), 30)
    waits = [float(m.group(1)) for r in caplog.records if (m := re.search(r"restarting in ([\d.]+)s", r.getMessage()))]
    assert waits == [0.1, 0.2, 0.4, 0.4, 0.1, 0.2]
