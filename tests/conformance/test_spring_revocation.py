"""The Spring Security revocation example (examples/spring-revocation) against a real sidecar.

The sidecar runs as in a pod that mounts the policy's two ConfigMaps (``serve --jwks-file
--revocations-file``, the kubelet's atomic symlink swap simulated by tests/kubelet_volume.py), so
no API server is needed. The example is the jar setup.sh builds; each token goes through the
application's real ``SecurityFilterChain`` (``Main``), which answers as a server would: 200, 401
with ``WWW-Authenticate``, or 500.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import jwt
import pytest

from signing_key_operator.core.jwks import render_jwk_set
from signing_key_operator.core.keys import KeyMaterial, generate_key
from signing_key_operator.core.revocations import RevocationDocument, SubjectEntry
from tests.integration.harness import free_port, terminate, wait_until
from tests.kubelet_volume import kubelet_update

from .clients import build_dir, is_built

BUILD = "spring-revocation"
MAX_AGE = 2
"""The revocation document's max-age (s): how long the example may keep a copy."""
PROBE_INTERVAL = 0.1
PROBE_MARGIN = 0.5
"""On top of max-age: a probe interval, one request through the filter chain, scheduling."""
PICKUP_BUDGET = 1.5
"""How long the sidecar may take to serve a written document (it polls every 0.25 s and wants a
change stable over two polls: about 0.5 s)."""


@pytest.fixture(scope="module", autouse=True)
def verifier_builds():
    """Overrides the suite's fixture of that name: this module needs its own build only, and no
    control plane. Skips when setup.sh has not built it, fails instead in CI."""
    if not is_built(BUILD):
        message = (
            f"the {BUILD} example is not built for the current sources (no {build_dir(BUILD)}): "
            "run tests/conformance/setup.sh first (`make test` does)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"in CI {message}; a skip here would hide a missing install step", pytrace=False)
        pytest.skip(message)


class Sidecar:
    """``signing-key-operator serve --jwks-file DIR --revocations-file DIR2`` on 127.0.0.1."""

    def __init__(self, root: Path, key: KeyMaterial):
        root.mkdir(parents=True, exist_ok=True)
        self.jwks_dir, self.revocations_dir = root / "jwks", root / "revocations"
        kubelet_update(self.jwks_dir, {"jwks.json": render_jwk_set([key.public_jwk()]), "max-age": b"60"})
        self.publish(RevocationDocument(), wait=False)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "sidecar.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "signing_key_operator", "serve", "--jwks-file", str(self.jwks_dir),
                 "--revocations-file", str(self.revocations_dir), "--host", "127.0.0.1", "--port", str(self.port),
                 "--shutdown-delay", "0"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        wait_until(self._ready, 30, f"the sidecar on port {self.port} to be ready")

    def _get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=2) as reply:
                return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
        except urllib.error.HTTPError as error:
            return error.code, {}, b""
        except OSError:
            return 0, {}, b""

    def _ready(self) -> bool:
        assert self.process.poll() is None, f"sidecar exited:\n{self.log_path.read_text()[-3000:]}"
        return self._get("/readyz")[0] == 200

    def publish(self, document: RevocationDocument, wait: bool = True) -> float:
        """Write the document as the kubelet updates a ConfigMap volume; with ``wait``, block
        until the sidecar serves it. Returns the monotonic time of the write."""
        body = document.render()
        written = time.monotonic()
        kubelet_update(self.revocations_dir, {"revocations.json": body, "max-age": str(MAX_AGE).encode()})
        if wait:
            wait_until(lambda: self.serves(document), 10, "the sidecar to serve the new document", 0.02)
        return written

    def serves(self, document: RevocationDocument) -> bool:
        return self._get("/revocations.json")[2] == document.render()

    def revocation_requests(self, status: int) -> float:
        """``signing_key_sidecar_http_requests_total`` for GET /revocations.json with ``status``."""
        text = self._get("/metrics")[2].decode()
        total = 0.0
        for labels, value in re.findall(r"^signing_key_sidecar_http_requests_total\{([^}]*)\} (\S+)$", text, re.M):
            if 'path="/revocations.json"' in labels and 'method="GET"' in labels and f'status="{status}"' in labels:
                total += float(value)
        return total

    def stop(self) -> None:
        terminate(self.process, grace=10)


class Example:
    """``java -jar spring-revocation.jar``: one token per line in, one JSON line out."""

    def __init__(self, jwks_url: str, revocations_url: str, log_path: Path, extra_args: tuple[str, ...] = ()):
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen(
            ["java", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xss512k",
             "-jar", str(build_dir(BUILD) / "target" / "spring-revocation.jar"),
             "--jwks-url", jwks_url, "--revocations-url", revocations_url, *extra_args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def verify(self, token: str, timeout: float = 60) -> dict:
        assert self.process.stdin is not None
        self.process.stdin.write(token + "\n")
        self.process.stdin.flush()
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no answer from the example within {timeout}s; see {self.log_path}") from None
        if line is None:
            raise AssertionError(f"the example exited with {self.process.wait()}; see {self.log_path}:\n{self.log_path.read_text()[-3000:]}")
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None and self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            terminate(self.process, grace=5)
        self._log.close()


@pytest.fixture(scope="module")
def key() -> KeyMaterial:
    return generate_key("ES256")


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory, key):
    server = Sidecar(tmp_path_factory.mktemp("spring-revocation"), key)
    yield server
    server.stop()


@pytest.fixture
def example(sidecar, tmp_path):
    """A factory of fresh example processes (an empty cache each), closed after the test."""
    started: list[Example] = []

    def start(revocations_url: str | None = None, jwks_url: str | None = None, extra_args: tuple[str, ...] = ()) -> Example:
        process = Example(jwks_url or f"{sidecar.base}/.well-known/jwks.json",
                          revocations_url or f"{sidecar.base}/revocations.json", tmp_path / f"example-{len(started)}.log",
                          extra_args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


def sign(key: KeyMaterial, *, sub: str = "alice", iat: int | None = None, jti: str | None = None, with_iat: bool = True,
         lifetime: int = 300) -> tuple[str, str]:
    """(token, jti) signed like the policy's issuer signs: kid header, iat, exp, jti."""
    now = int(time.time())
    jti = jti or uuid.uuid4().hex
    claims = {"sub": sub, "jti": jti, "exp": now + lifetime}
    if with_iat:
        claims["iat"] = now if iat is None else iat
    return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid}), jti


def assert_ok(answer: dict) -> None:
    assert answer == {"ok": True, "status": 200}, answer


def assert_revoked(answer: dict, reason: str) -> None:
    """A 401 invalid_token naming the revocation, as the filter answers an expired token."""
    assert answer["ok"] is False and answer["status"] == 401, answer
    assert answer["error"].startswith('Bearer error="invalid_token"'), answer
    assert reason in answer["error"], answer


def test_a_token_longer_lived_than_the_policy_is_refused_by_the_lifetime_validator(sidecar, example, key):
    """A stand-in for an application that hard-codes a longer lifetime than the policy's 300 s."""
    sidecar.publish(RevocationDocument())
    spring = example(extra_args=("--max-token-lifetime-seconds", "300"))
    assert_ok(spring.verify(sign(key, lifetime=300)[0]))
    assert_ok(spring.verify(sign(key, lifetime=360)[0]))  # within the default clock skew of 60 s
    assert_revoked(spring.verify(sign(key, lifetime=361)[0]),
                   "token lives 361s (exp - iat), longer than the policy's token lifetime of 300s")
    # Without the setting the example keeps Spring's defaults: the same token is accepted.
    assert_ok(example().verify(sign(key, lifetime=361)[0]))


def test_revoked_jti_refused_and_fresh_token_accepted(sidecar, example, key):
    revoked, revoked_jti = sign(key)
    sidecar.publish(RevocationDocument(jti={revoked_jti: int(time.time()) + 600}))
    spring = example()
    fresh, _ = sign(key)
    assert_ok(spring.verify(fresh))
    assert_revoked(spring.verify(revoked), f"jti {revoked_jti} is revoked")
    assert_ok(spring.verify(fresh))


def test_update_refused_within_max_age(sidecar, example, key):
    sidecar.publish(RevocationDocument())
    spring = example()
    token, jti = sign(key)
    assert_ok(spring.verify(token))  # the example now holds the empty document for MAX_AGE

    # Past max-age with nothing changed: the example revalidates (If-None-Match) and gets 304.
    not_modified = sidecar.revocation_requests(304)
    time.sleep(MAX_AGE + 0.2)
    assert_ok(spring.verify(token))
    assert sidecar.revocation_requests(304) == not_modified + 1, "the example did not revalidate with If-None-Match"

    update = RevocationDocument(jti={jti: int(time.time()) + 600})
    written = sidecar.publish(update, wait=False)
    served = None
    deadline = written + MAX_AGE + PICKUP_BUDGET + 5  # probe past the bound, to report how late
    while True:
        answer = spring.verify(token)
        now = time.monotonic()
        if served is None and sidecar.serves(update):
            served = now
        if not answer["ok"]:
            break
        assert now < deadline, "the example still accepts the token revoked by the update"
        time.sleep(PROBE_INTERVAL)
    assert_revoked(answer, f"jti {jti} is revoked")
    after_written, after_served = now - written, now - (served or now)
    print(f"\nspring-revocation: refused the revoked token {after_written:.2f} s after the document was written, "
          f"{after_served:.2f} s after the sidecar first served it (max-age {MAX_AGE} s, probes every {PROBE_INTERVAL} s)")
    # The example's share: at most max-age after the sidecar serves the update (plus a probe).
    assert after_served <= MAX_AGE + PROBE_MARGIN, f"refused {after_served:.2f} s after the sidecar served the update"
    assert after_written <= MAX_AGE + PICKUP_BUDGET + PROBE_MARGIN, f"refused {after_written:.2f} s after the update"
    for _ in range(3):
        assert_revoked(spring.verify(token), f"jti {jti} is revoked")


def test_revoked_subject_older_tokens_refused_newer_accepted(sidecar, example, key):
    now = int(time.time())
    sidecar.publish(RevocationDocument(sub={"alice": SubjectEntry(issued_before=now - 5, until=now + 600)}))
    spring = example()
    reason = f"tokens of subject alice issued before {now - 5} are revoked"
    assert_revoked(spring.verify(sign(key, sub="alice", iat=now - 10)[0]), reason)
    assert_revoked(spring.verify(sign(key, sub="alice", with_iat=False)[0]), reason)  # age unprovable
    assert_ok(spring.verify(sign(key, sub="alice", iat=now - 5)[0]))  # issued at issuedBefore: not before it
    assert_ok(spring.verify(sign(key, sub="alice", iat=now)[0]))
    assert_ok(spring.verify(sign(key, sub="bob", iat=now - 10)[0]))


def test_redis_backend_fails_closed(sidecar, example, key):
    """The entries are in Redis, which the example does not read: every token is refused, as a
    server fault (500, like an unreachable JWK Set), not as an invalid token."""
    sidecar.publish(RevocationDocument(backend="redis"))
    spring = example()
    for _ in range(2):
        answer = spring.verify(sign(key)[0])
        assert answer["ok"] is False and answer["status"] == 500, answer
        assert "RevocationListUnavailableException" in answer["error"] and '"backend":"redis"' in answer["error"], answer


def test_unreachable_revocation_list_fails_closed(example, key):
    spring = example(revocations_url=f"http://127.0.0.1:{free_port()}/revocations.json")
    answer = spring.verify(sign(key)[0])
    assert answer["ok"] is False and answer["status"] == 500, answer
    assert "RevocationListUnavailableException" in answer["error"] and "cannot fetch" in answer["error"], answer


def test_sidecar_gone_fails_closed_after_max_age(tmp_path, example, key):
    """A copy past its max-age is not used when it cannot be revalidated."""
    own = Sidecar(tmp_path / "own-sidecar", key)
    try:
        spring = example(jwks_url=f"{own.base}/.well-known/jwks.json", revocations_url=f"{own.base}/revocations.json")
        token, _ = sign(key)
        assert_ok(spring.verify(token))
    finally:
        own.stop()
    assert_ok(spring.verify(token))  # within max-age: the cached list (and JWK Set) still answer
    time.sleep(MAX_AGE + 0.2)
    answer = spring.verify(token)
    assert answer["ok"] is False and answer["status"] == 500, answer
    assert "RevocationListUnavailableException" in answer["error"] and "cannot fetch" in answer["error"], answer


def test_expired_token_refused_without_the_revocation_list(example, key):
    """setFailOnError: the default validators refuse first, so an expired token is a 401 (not
    the 500 of the missing list) and costs no fetch."""
    spring = example(revocations_url=f"http://127.0.0.1:{free_port()}/revocations.json")
    now = int(time.time())
    expired = jwt.encode({"sub": "alice", "jti": "x", "iat": now - 600, "exp": now - 300}, key.private,
                         algorithm=key.alg, headers={"kid": key.kid})
    answer = spring.verify(expired)
    assert answer["ok"] is False and answer["status"] == 401 and "expired" in answer["error"], answer
