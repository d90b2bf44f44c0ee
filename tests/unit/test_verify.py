"""signing_key_operator.verify against real HTTP servers on 127.0.0.1 and a real redis-server.

The HTTP server serves documents the way the sidecar does (Cache-Control max-age, strong ETag,
304 on If-None-Match) and counts every request, so the tests see what the verifier fetched.
Time is a fake clock handed to the Verifier; tokens are signed with PyJWT.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import json
import threading
import time
import warnings

import jwt as pyjwt
import pytest
import redis

from signing_key_operator.core.jwks import render_jwk_set
from signing_key_operator.core.keys import generate_key
from signing_key_operator.core.revocations import RedisLayout, RevocationDocument, SubjectEntry
from signing_key_operator.verify import RevokedToken, TokenRejected, Verifier
from tests.redis_server import free_port

JWKS = "/.well-known/jwks.json"
REVOCATIONS = "/revocations.json"
T0 = 1_800_000_000.0
PREFIX = "signingkeys:team-a/api:"


@functools.cache
def key(alg: str = "ES256", n: int = 0):
    return generate_key(alg, 2048)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class DocServer:
    """Serves documents by path like the sidecar; records (path, If-None-Match, status)."""

    def __init__(self) -> None:
        self.docs: dict[str, tuple[bytes, str | None]] = {}
        self.log: list[tuple[str, str | None, int]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server.lock:
                    doc = server.docs.get(self.path)
                if doc is None:
                    self._reply(404, b"not found\n", {})
                    return
                body, cache_control = doc
                etag = '"' + hashlib.sha256(body).hexdigest() + '"'
                headers = {"ETag": etag, "Content-Type": "application/json"}
                if cache_control is not None:
                    headers["Cache-Control"] = cache_control
                inm = self.headers.get("If-None-Match")
                self._reply(304 if inm == etag else 200, b"" if inm == etag else body, headers, inm)

            def _reply(self, status: int, body: bytes, headers: dict, inm: str | None = None) -> None:
                with server.lock:
                    server.log.append((self.path, inm, status))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if status != 304:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def serve(self, path: str, body: bytes, max_age: int | None = 60) -> None:
        with self.lock:
            self.docs[path] = (body, None if max_age is None else f"public, max-age={max_age}")

    def serve_keys(self, *keys, max_age: int | None = 60) -> None:
        self.serve(JWKS, render_jwk_set([k.public_jwk() for k in keys]), max_age)

    def requests(self, path: str = JWKS) -> list[tuple[str | None, int]]:
        with self.lock:
            return [(inm, status) for p, inm, status in self.log if p == path]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = DocServer()
    s.serve_keys(key())
    yield s
    s.stop()


@pytest.fixture
def clock():
    return Clock()


def token(k=None, *, now: float = T0, lifetime: int = 300, kid: str | None = None, **claims) -> str:
    k = k or key()
    body = {"iss": "https://issuer.test", "aud": "orders", "sub": "alice", "jti": "j-1",
            "iat": int(now), "exp": int(now) + lifetime, **claims}
    return pyjwt.encode(body, k.private, algorithm=k.alg, headers={"kid": kid or k.kid})


def verifier(server: DocServer, clock: Clock, **options) -> Verifier:
    options.setdefault("issuer", "https://issuer.test")
    options.setdefault("audience", "orders")
    return Verifier(server.url(JWKS), clock=clock, timeout=2.0, **options)


def revocations(jti=(), sub=(), backend="configmap") -> bytes:
    return RevocationDocument(dict(jti), {s: SubjectEntry(*e) for s, e in dict(sub).items()}, backend).render()


def rejected(v: Verifier, tok: str, kind: type = TokenRejected) -> str:
    with pytest.raises(kind) as caught:
        v.verify(tok)
    message = str(caught.value)
    assert not [part for part in tok.split(".") if len(part) > 16 and part in message], "no part of the token in a message"
    return message


# --- signatures and claims ---------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "ES512", "EdDSA", "PS256", "RS256"])
def test_accepts_a_valid_token_of_every_family_without_warnings(server, clock, alg):
    server.serve_keys(key(alg))
    v = verifier(server, clock)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # joserfc warns on "EdDSA"; the verifier must not pass it on
        claims = v.verify(token(key(alg)))
    assert claims["sub"] == "alice" and claims["jti"] == "j-1" and claims["exp"] == int(T0) + 300


def test_refuses_a_bad_signature(server, clock):
    v = verifier(server, clock)
    forged = token(key("ES256", 1), kid=key().kid)  # another key claiming the published kid
    assert "bad signature" in rejected(v, forged)
    header, payload, signature = token().split(".")
    other_payload = token(sub="mallory").split(".")[1]
    assert "bad signature" in rejected(v, f"{header}.{other_payload}.{signature}")


def test_refuses_expired_tokens_with_leeway(server, clock):
    v = verifier(server, clock, leeway=60)
    clock.advance(300 + 59)
    assert v.verify(token())["sub"] == "alice", "within the leeway"
    clock.advance(2)
    assert "expired" in rejected(v, token())


def test_a_token_that_outlives_the_policys_lifetime_is_refused_saying_so(server, clock):
    """A signer that hard-codes a longer exp than the policy's tokenLifetime (300 s here)."""
    v = verifier(server, clock, leeway=60, max_token_lifetime=300)
    assert v.verify(token(lifetime=300))["sub"] == "alice"
    assert v.verify(token(lifetime=360))["sub"] == "alice", "within the leeway"
    reason = rejected(v, token(lifetime=361))
    assert "lives 361s (exp - iat), longer than the policy's token lifetime of 300s" in reason
    no_iat = pyjwt.encode({"iss": "https://issuer.test", "aud": "orders", "exp": int(T0) + 60}, key().private,
                          algorithm="ES256", headers={"kid": key().kid})
    assert "claim iat is missing" in rejected(v, no_iat)
    assert verifier(server, clock).verify(token(lifetime=86400))["sub"] == "alice", "unchecked without a bound"


def test_the_signer_librarys_tokens_pass_the_lifetime_check(server, clock, tmp_path):
    from signing_key_operator.core.spec import PolicySpec
    from signing_key_operator.k8s import objects
    from signing_key_operator.sign import Signer
    from tests.kubelet_volume import kubelet_update

    from .test_signing_secret import POLICY, T0 as SINCE

    spec = PolicySpec.from_resource("api", {"tokenLifetime": "5m", "clockSkew": "1m"})
    secret = objects.signing_secret(POLICY, "api-signing", key(), 1, since=SINCE, replaced=None,
                                    lifetimes=spec.signer_lifetimes())
    kubelet_update(tmp_path / "mount", {name: base64.b64decode(value) for name, value in secret["data"].items()})
    signed = Signer.from_directory(tmp_path / "mount", clock=clock).sign(
        {"iss": "https://issuer.test", "aud": "orders", "sub": "alice"})
    assert verifier(server, clock, max_token_lifetime=300, leeway=0).verify(signed)["sub"] == "alice"


def test_refuses_a_token_not_yet_valid_or_issued_in_the_future(server, clock):
    v = verifier(server, clock, leeway=60)
    assert "nbf" in rejected(v, token(nbf=int(T0) + 120))
    assert "iat" in rejected(v, token(now=T0 + 120))
    assert v.verify(token(nbf=int(T0) + 30))["sub"] == "alice"


def test_refuses_wrong_issuer_audience_and_missing_exp(server, clock):
    v = verifier(server, clock)
    assert "iss" in rejected(v, token(iss="https://evil.test"))
    assert "aud" in rejected(v, token(aud="billing"))
    assert v.verify(token(aud=["billing", "orders"]))["aud"] == ["billing", "orders"]
    no_exp = pyjwt.encode({"iss": "https://issuer.test", "aud": "orders", "sub": "a"}, key().private,
                          algorithm="ES256", headers={"kid": key().kid})
    assert "exp" in rejected(v, no_exp)
    unchecked = verifier(server, clock, issuer=None, audience=None)
    assert unchecked.verify(token(iss="https://other.test", aud="billing"))["iss"] == "https://other.test"


def test_refuses_algorithms_not_allowed_and_malformed_tokens(server, clock):
    v = verifier(server, clock, algorithms=("RS256",))
    assert "'ES256' is not accepted" in rejected(v, token())
    v = verifier(server, clock)
    unsigned = pyjwt.encode({"sub": "a", "exp": int(T0) + 60}, None, algorithm="none", headers={"kid": key().kid})
    assert "'none' is not accepted" in rejected(v, unsigned)
    hmac = pyjwt.encode({"sub": "a", "exp": int(T0) + 60}, b"k" * 32, algorithm="HS256", headers={"kid": key().kid})
    assert "'HS256' is not accepted" in rejected(v, hmac)
    assert "malformed" in rejected(v, "not-a-token")
    assert "no kid" in rejected(v, pyjwt.encode({"exp": int(T0) + 60}, key().private, algorithm="ES256"))


def test_refuses_a_token_whose_alg_differs_from_its_key(server, clock):
    server.serve_keys(key("PS256"))
    rs = pyjwt.encode({"exp": int(T0) + 60}, key("PS256").private, algorithm="RS256", headers={"kid": key("PS256").kid})
    message = rejected(verifier(server, clock, issuer=None, audience=None), rs)
    assert "does not match" in message


def test_messages_carry_no_key_material(server, clock):
    server.serve(JWKS, render_jwk_set([key().public_jwk()]).replace(b'"kid"', b'"d":"c2VjcmV0","kid"'))
    message = rejected(verifier(server, clock), token())
    assert "invalid" in message and "c2VjcmV0" not in message and key().public_jwk()["x"] not in message


def test_a_set_with_a_curve_that_is_not_a_string_is_rejected_and_not_refetched_per_token(server, clock):
    """finding 10: "crv" as a JSON array escaped as TypeError, not a rejection, and skipped the
    failed-fetch throttle: 20 tokens, 20 fetches. Now: rejected, and fetched once."""
    bad = json.loads(render_jwk_set([key().public_jwk()]))
    bad["keys"][0]["crv"] = ["P-256"]
    server.serve(JWKS, json.dumps(bad).encode())
    v = verifier(server, clock)
    for _ in range(20):
        message = rejected(v, token())
        assert "JWK Set" in message and "invalid" in message and "crv" in message and "fail closed" in message
    assert len(server.requests()) == 1, "a failed fetch is not retried within a second"


# --- JWK Set cache -------------------------------------------------------------------------------


def test_unknown_kid_refetches_once_and_respects_the_cooldown(server, clock):
    v = verifier(server, clock, unknown_kid_cooldown=30)
    assert v.verify(token())
    assert len(server.requests()) == 1
    server.serve_keys(key(), key("ES256", 1))  # a key published after the verifier cached the set
    assert v.verify(token(key("ES256", 1)))["sub"] == "alice"
    assert len(server.requests()) == 2, "one refetch found the new key"
    stranger = token(key("ES256", 2))
    assert "unknown kid" in rejected(v, stranger)
    assert len(server.requests()) == 2, "within the cooldown: no refetch"
    clock.advance(29)
    rejected(v, stranger)
    assert len(server.requests()) == 2
    clock.advance(2)
    rejected(v, stranger)
    requests = server.requests()
    assert len(requests) == 3, "one refetch after the cooldown"
    assert requests[-1][0] is not None and requests[-1][1] == 304, "a revalidation: the set had not changed"


def test_honours_max_age_then_revalidates_with_if_none_match(server, clock):
    server.serve_keys(key(), max_age=100)
    v = verifier(server, clock)
    v.verify(token())
    clock.advance(99)
    v.verify(token(now=clock.now))
    assert [status for _, status in server.requests()] == [200], "no fetch before max-age"
    clock.advance(2)
    v.verify(token(now=clock.now))
    (first_inm, _), (inm, status) = server.requests()
    assert first_inm is None and inm and inm.startswith('"') and status == 304
    clock.advance(99)
    v.verify(token(now=clock.now))
    assert len(server.requests()) == 2, "the 304 restarted the max-age"
    clock.advance(2)
    v.verify(token(now=clock.now))
    assert len(server.requests()) == 3


def test_without_max_age_the_default_applies(server, clock):
    server.serve_keys(key(), max_age=None)
    v = verifier(server, clock, default_max_age=10)
    v.verify(token())
    clock.advance(9)
    v.verify(token())
    assert len(server.requests()) == 1
    clock.advance(2)
    v.verify(token())
    assert len(server.requests()) == 2


def test_a_rotated_set_replaces_the_cache_and_a_removed_key_is_refused(server, clock):
    v = verifier(server, clock)
    old = token()
    v.verify(old)
    server.serve_keys(key("ES256", 1))
    clock.advance(61)
    assert "unknown kid" in rejected(v, old)
    assert [status for _, status in server.requests()][:2] == [200, 200]
    assert v.verify(token(key("ES256", 1), now=clock.now))


def test_jwks_unreachable_rejects_the_token(clock):
    v = Verifier(f"http://127.0.0.1:{free_port()}{JWKS}", clock=clock, timeout=2.0)
    message = rejected(v, token())
    assert "JWK Set unavailable" in message and "fail closed" in message


def test_concurrent_first_requests_fetch_the_set_once(server, clock):
    v = verifier(server, clock)
    tokens = [token(jti=f"j-{n}") for n in range(16)]
    results: list = []
    threads = [threading.Thread(target=lambda t=t: results.append(v.verify(t)["jti"])) for t in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == sorted(f"j-{n}" for n in range(16))
    assert len(server.requests()) == 1


# --- revocation document --------------------------------------------------------------------------


def test_refuses_a_revoked_jti_and_a_revoked_subjects_older_tokens(server, clock):
    server.serve(REVOCATIONS, revocations(jti={"j-bad": int(T0) + 400}, sub={"bob": (int(T0) - 10, int(T0) + 700)}))
    v = verifier(server, clock, revocations_url=server.url(REVOCATIONS))
    assert "jti j-bad is revoked" in rejected(v, token(jti="j-bad"), RevokedToken)
    assert v.verify(token(jti="j-good"))["jti"] == "j-good"
    assert "subject bob" in rejected(v, token(sub="bob", now=T0 - 20), RevokedToken)
    assert v.verify(token(sub="bob", now=T0 - 5))["sub"] == "bob", "issued after issuedBefore"
    assert v.is_revoked({"sub": "bob", "iat": int(T0) - 11}) is not None
    assert v.is_revoked({"sub": "bob", "iat": int(T0) - 10}) is None
    assert len(server.requests(REVOCATIONS)) == 1, "the document is cached like the key set"


def test_a_jti_that_is_not_a_string_is_rejected_never_taken_as_not_revoked(server, clock):
    """finding 5: revocations match string jtis, so a numeric jti was never found revoked:
    is_revoked said None. One rule everywhere: a jti is a string (RFC 7519), a token whose jti
    is anything else is rejected (fail closed), and revoke-token refuses to revoke it by jti."""
    server.serve(REVOCATIONS, revocations(jti={"123": int(T0) + 400}))
    v = verifier(server, clock, revocations_url=server.url(REVOCATIONS))
    for jti in (123, 12.5, True, None, ["123"]):
        assert "jti" in rejected(v, token(jti=jti))
        with pytest.raises(TokenRejected, match="jti is not a string"):
            v.is_revoked({"jti": jti, "sub": "alice", "iat": int(T0)})
    assert "jti 123 is revoked" in rejected(v, token(jti="123"), RevokedToken)
    assert v.is_revoked({"sub": "alice", "iat": int(T0)}) is None, "no jti at all: nothing to check"


def test_revocation_document_is_cached_and_revalidated(server, clock):
    server.serve(REVOCATIONS, revocations(), max_age=30)
    v = verifier(server, clock, revocations_url=server.url(REVOCATIONS))
    v.verify(token(jti="j-x"))
    server.serve(REVOCATIONS, revocations(jti={"j-x": int(T0) + 400}), max_age=30)
    clock.advance(29)
    assert v.verify(token(jti="j-x", now=clock.now)), "still the cached document"
    clock.advance(2)
    rejected(v, token(jti="j-x", now=clock.now), RevokedToken)
    clock.advance(31)
    rejected(v, token(jti="j-x", now=clock.now), RevokedToken)
    assert [status for _, status in server.requests(REVOCATIONS)] == [200, 200, 304]


def test_a_max_age_beyond_the_cap_still_lets_a_revocation_through(server, clock):
    """A max-age of thousands of digits became float("inf"): the first document was kept for
    ever and a later revocation never seen (the rule of finding 11, in the verifier). Now no
    document is used longer than max_cache_age (24 h by default) without asking again."""
    day = 86400
    server.docs[REVOCATIONS] = (revocations(), "public, max-age=" + "9" * 5000)
    v = verifier(server, clock, revocations_url=server.url(REVOCATIONS))
    assert v.verify(token(jti="j-x", lifetime=2 * day))
    server.serve(REVOCATIONS, revocations(jti={"j-x": int(T0) + 2 * day}), max_age=30)
    clock.advance(day - 1)
    assert v.verify(token(jti="j-x", lifetime=2 * day)), "within max_cache_age: the cached document"
    clock.advance(2)
    rejected(v, token(jti="j-x", lifetime=2 * day), RevokedToken)


def test_fails_closed_when_the_revocation_url_is_down(server, clock):
    v = verifier(server, clock, revocations_url=f"http://127.0.0.1:{free_port()}{REVOCATIONS}")
    message = rejected(v, token())
    assert "revocation document unavailable" in message and "fail closed" in message
    with pytest.raises(TokenRejected):
        v.is_revoked({"jti": "j-1"})


def test_fails_closed_when_the_cached_document_expires_and_the_source_is_gone(server, clock):
    server.serve(REVOCATIONS, revocations(), max_age=30)
    v = verifier(server, clock, revocations_url=server.url(REVOCATIONS))
    assert v.verify(token())
    del server.docs[REVOCATIONS]  # now 404, like a sidecar route that is gone
    clock.advance(29)
    assert v.verify(token(now=clock.now)), "the cached copy is still fresh"
    clock.advance(2)
    message = rejected(v, token(now=clock.now))
    assert "HTTP 404" in message and "fail closed" in message
    assert rejected(v, token(now=clock.now)) == message
    assert len(server.requests(REVOCATIONS)) == 2, "a failure is not retried within a second"
    server.serve(REVOCATIONS, revocations(jti={"j-1": int(T0) + 400}), max_age=30)
    clock.advance(1)
    rejected(v, token(now=clock.now), RevokedToken)
    assert len(server.requests(REVOCATIONS)) == 3


def test_fails_closed_on_an_invalid_revocation_document(server, clock):
    server.serve(REVOCATIONS, b'{"backend":"configmap","jti":{"j":"soon"},"sub":{}}\n')
    v = verifier(server, clock, revocations_url=server.url(REVOCATIONS))
    message = rejected(v, token())
    assert "revocation document" in message and "invalid" in message and "bad_entry" in message
    server.serve(REVOCATIONS, revocations(jti={f"j-{n:07}": int(T0) + 400 for n in range(60_000)}))
    clock.advance(2)  # past the retry delay after a failure
    assert "more than 1048576 bytes" in rejected(v, token(now=clock.now))


def test_fails_closed_on_a_redis_document_without_redis_url(server, clock):
    server.serve(REVOCATIONS, revocations(backend="redis"))
    v = verifier(server, clock, revocations_url=server.url(REVOCATIONS))
    message = rejected(v, token(jti="anything"))
    assert "Redis" in message and "redis_url" in message and "fail closed" in message


def test_redis_url_needs_a_prefix():
    with pytest.raises(ValueError, match="redis_prefix"):
        Verifier("http://127.0.0.1:1/jwks.json", redis_url="redis://127.0.0.1:1/0")


# --- Redis backend ----------------------------------------------------------------------------------


def load_entries(url: str, *, jti=(), sub=()) -> None:
    """Write entries the way the operator mirrors them: one key each, EXPIREAT its end."""
    layout = RedisLayout.for_policy("team-a", "api")
    client = redis.Redis.from_url(url)
    with client.pipeline() as pipe:
        for j, until in dict(jti).items():
            pipe.set(layout.jti_key(j), until)
            pipe.expireat(layout.jti_key(j), until)
        for s, (before, until) in dict(sub).items():
            pipe.set(layout.subject_key(s), before)
            pipe.expireat(layout.subject_key(s), until)
        pipe.execute()
    client.close()


def test_redis_checks_jti_and_subject(server, clock, redis_server):
    now = time.time()  # Redis expires keys by its own clock
    load_entries(redis_server.url, jti={"j-bad": int(now) + 600}, sub={"bob": (int(now) - 10, int(now) + 900)})
    clock.now = now
    v = verifier(server, clock, redis_url=redis_server.url, redis_prefix=PREFIX)
    assert "jti j-bad is revoked" in rejected(v, token(jti="j-bad", now=now), RevokedToken)
    assert "subject bob" in rejected(v, token(sub="bob", now=now - 20), RevokedToken)
    assert v.verify(token(sub="bob", now=now))["sub"] == "bob", "issued after issuedBefore"
    assert v.verify(token(jti="j-good", now=now))["jti"] == "j-good"
    other = Verifier(server.url(JWKS), redis_url=redis_server.url, redis_prefix="signingkeys:team-a/web:", clock=clock)
    assert other.verify(token(jti="j-bad", now=now)), "another policy's prefix"


def test_redis_document_switches_to_redis(server, clock, redis_server):
    now = time.time()
    load_entries(redis_server.url, jti={"j-bad": int(now) + 600})
    server.serve(REVOCATIONS, revocations(backend="redis"))
    clock.now = now
    v = verifier(server, clock, revocations_url=server.url(REVOCATIONS), redis_url=redis_server.url, redis_prefix=PREFIX)
    rejected(v, token(jti="j-bad", now=now), RevokedToken)
    assert v.verify(token(jti="j-ok", now=now))
    server.serve(REVOCATIONS, revocations(jti={"j-ok": int(now) + 600}))  # back to the ConfigMap backend
    clock.advance(61)
    rejected(v, token(jti="j-ok", now=clock.now), RevokedToken)
    assert v.verify(token(jti="j-bad", now=clock.now)), "the document, not Redis, decides now"


def test_redis_backend_rejects_a_jti_that_is_not_a_string(server, clock, redis_server):
    """finding 5, with Redis: a numeric jti made is_revoked skip the jti key and say None."""
    now = time.time()
    load_entries(redis_server.url, jti={"123": int(now) + 600})
    clock.now = now
    v = verifier(server, clock, redis_url=redis_server.url, redis_prefix=PREFIX)
    with pytest.raises(TokenRejected, match="jti is not a string"):
        v.is_revoked({"jti": 123, "sub": "alice", "iat": int(now)})
    assert "jti" in rejected(v, token(jti=123, now=now))
    rejected(v, token(jti="123", now=now), RevokedToken)


def test_redis_killed_fails_closed_and_restarted_recovers(server, clock, redis_server):
    now = time.time()
    entries = {"jti": {"j-bad": int(now) + 600}}
    load_entries(redis_server.url, **entries)
    clock.now = now
    v = verifier(server, clock, redis_url=redis_server.url, redis_prefix=PREFIX)
    assert v.verify(token(jti="j-good", now=now))
    rejected(v, token(jti="j-bad", now=now), RevokedToken)
    redis_server.kill()
    started = time.monotonic()
    message = rejected(v, token(jti="j-good", now=now))
    assert "Redis" in message and "unavailable" in message and "fail closed" in message
    assert redis_server.url not in message
    assert time.monotonic() - started < 5, "a refused connection fails fast"
    redis_server.start()
    assert v.verify(token(jti="j-good", now=now)), "reconnects to the restarted server"
    load_entries(redis_server.url, **entries)  # the operator writes its entries again
    rejected(v, token(jti="j-bad", now=now), RevokedToken)
