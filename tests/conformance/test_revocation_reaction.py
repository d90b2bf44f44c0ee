"""A token revoked with `revoke-token`, end to end: the operator compiles the TokenRevocation into
the policy's revocation ConfigMap, the sidecar (watch mode) serves it, and both revocation-aware
verifiers refuse the token: the Python `signing_key_operator.verify.Verifier` and the Spring
Security example. Prints how long each took (figures belong to bench/, so the only bound is the
wait: max-age plus 10 s)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import jwt as pyjwt

from signing_key_operator.verify import RevokedToken, TokenRejected, Verifier
from tests.integration.harness import Policies, free_port, terminate, wait_until

from .test_spring_revocation import Example

MAX_AGE = 2  # the policy's jwks.maxAge, which the revocation document carries too


def test_a_token_revoked_with_revoke_token_is_refused_by_the_python_verifier_and_spring(
    kubeconfig, api_client, conformance_namespace, conformance_operator, tmp_path
):
    ns = conformance_namespace
    policies = Policies(api_client, ns)
    policies.create("revoking", {"algorithm": "ES256", "rotation": {"publishAhead": "1h"}, "tokenLifetime": "10m",
                                 "jwks": {"maxAge": f"{MAX_AGE}s"}})
    policies.wait_ready("revoking")
    signing = policies.secret_data("revoking-signing")
    now = int(time.time())

    def token(jti: str) -> str:
        return pyjwt.encode({"sub": "alice", "jti": jti, "iat": now, "exp": now + 300}, signing["private.pem"],
                            algorithm="ES256", headers={"kid": signing["kid"].decode()})

    stolen, kept = token(f"stolen-{uuid.uuid4().hex}"), token(f"kept-{uuid.uuid4().hex}")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "sidecar.log", "wb") as log:
        sidecar = subprocess.Popen(
            [sys.executable, "-m", "signing_key_operator", "serve", "--kubeconfig", str(kubeconfig),
             "--configmap", f"{ns}/revoking-jwks", "--revocations-configmap", f"{ns}/revoking-revocations",
             "--host", "127.0.0.1", "--port", str(port), "--shutdown-delay", "0"], stdout=log, stderr=subprocess.STDOUT)
    spring = Example(f"{base}/.well-known/jwks.json", f"{base}/revocations.json", tmp_path / "spring.log")
    try:
        python = Verifier(f"{base}/.well-known/jwks.json", revocations_url=f"{base}/revocations.json")
        wait_until(lambda: _python_accepts(python, stolen), 30, "the sidecar to serve and the Python verifier to accept")
        assert spring.verify(stolen)["ok"] is True

        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "signing_key_operator", "revoke-token", "--kubeconfig", str(kubeconfig), "-n", ns,
             "--policy", "revoking", "--reason", "conformance"], input=stolen, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        refused: dict[str, float] = {}
        while len(refused) < 2 and time.monotonic() - started < MAX_AGE + 10:
            if "python" not in refused and _python_refuses(python, stolen):
                refused["python"] = time.monotonic() - started
            if "spring" not in refused:
                answer = spring.verify(stolen)
                if not answer["ok"]:
                    assert answer["status"] == 401 and "revoked" in answer["error"], answer
                    refused["spring"] = time.monotonic() - started
            time.sleep(0.1)
        print(f"\nrevoke-token -> refused: Python Verifier {refused.get('python', float('nan')):.2f}s, "
              f"Spring example {refused.get('spring', float('nan')):.2f}s (document max-age {MAX_AGE}s)")
        assert set(refused) == {"python", "spring"}, f"not refused within max-age + 10 s: {refused}"
        assert python.verify(kept)["sub"] == "alice"
        assert spring.verify(kept)["ok"] is True
    finally:
        spring.close()
        terminate(sidecar, grace=10)


def _python_accepts(verifier: Verifier, token: str) -> bool:
    try:
        verifier.verify(token)
        return True
    except TokenRejected:
        return False


def _python_refuses(verifier: Verifier, token: str) -> bool:
    try:
        verifier.verify(token)
    except RevokedToken:
        return True
    return False
