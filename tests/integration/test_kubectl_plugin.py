"""`kubectl signingkeys` on the real control plane, run through the real kubectl, which finds the
plugin (`kubectl-signingkeys`, installed with the package) on PATH as users' kubectl does.

Each command against a policy the session's operator reconciles: status (the screen, -o json,
the SVG), rotate, revoke-kid (what it will do, the confirmation, the annotation), inspect, and
the errors a person must be able to act on: an unknown policy, an unknown kid, no rights.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import jwt as pyjwt
import pytest
import yaml

from signing_key_operator.core.planner import REVOKE_ANNOTATION, ROTATE_ANNOTATION

from .harness import FAST_SPEC, KUBECTL, Policies, kubectl, wait_until

BIN = Path(sys.executable).parent


@pytest.fixture
def plugin(kubeconfig, operator):
    """`kubectl signingkeys ARGS` as a user runs it: KUBECONFIG set, the venv's bin on PATH."""
    assert (BIN / "kubectl-signingkeys").exists(), "kubectl-signingkeys is installed with the package (make setup)"

    def run(*args: str, stdin: str | None = None, config: Path | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "KUBECONFIG": str(config or kubeconfig), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        env.pop("NO_COLOR", None)
        return subprocess.run([str(KUBECTL), "signingkeys", *args], input=stdin, capture_output=True, text=True,
                              timeout=60, env=env)

    return run


def _ready_policy(policies: Policies, rotation: dict | None = None) -> dict:
    """A Ready policy "api" whose keys stay put for the test (no rotation for an hour), unless
    ``rotation`` says otherwise."""
    policies.create("api", {**FAST_SPEC, "rotation": rotation or {"interval": "1h", "publishAhead": "4s"}, "tokenLifetime": "1h"})
    return policies.wait_ready("api")


def _sign(policies: Policies, policy: str, claims: dict) -> str:
    signing = policies.secret_data(f"{policy}-signing")
    return pyjwt.encode(claims, signing["private.pem"], algorithm=signing["alg"].decode(), headers={"kid": signing["kid"].decode()})


def test_status_explains_the_policy_and_draws_its_keys(plugin, policies, namespace):
    # The next key is published 10 s after the first signs, and signs 110 s after that.
    _ready_policy(policies, {"interval": "2m", "publishAhead": "110s"})
    policy = wait_until(lambda: (lambda p: p if p["status"].get("nextKid") else None)(policies.get("api")), 30, "a next key")
    active, upcoming = policy["status"]["activeKid"], policy["status"]["nextKid"]
    shown = plugin("status", "api", "-n", namespace, "--width", "100")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert out.startswith(f"SigningKeyPolicy {namespace}/api: Ready ("), out
    assert "ES256; rotates every 2m, a new key published 110s before it signs; tokens live 1h (clockSkew 1s)" in out
    assert "signers mount Secret api-signing; the JWK Set is in ConfigMap api-jwks" in out
    assert f"{active} (active): signing since" in out and f"{upcoming} (next): published" in out
    assert "^ now " in out and "* next rotation" in out and f"{upcoming} (next): published" in out
    assert "\x1b[" not in out, "no colour when stdout is not a terminal"
    assert "Events:" in out and "KeyPublished" in out
    chart = out.split("\n\n")[1].splitlines()
    assert all(len(line) <= 100 for line in chart[:4]), chart


def test_status_as_json_yaml_and_svg(plugin, policies, namespace):
    policy = _ready_policy(policies)
    as_json = plugin("status", "api", "-n", namespace, "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    described = json.loads(as_json.stdout)
    assert {key["kid"]: key["state"] for key in described["keys"]} == \
        {key["kid"]: key["state"] for key in policy["status"]["keys"]}
    assert described["activeKid"] == policy["status"]["activeKid"]
    assert any(condition["type"] == "Ready" and condition["status"] == "True" for condition in described["conditions"])
    as_yaml = plugin("status", "api", "-n", namespace, "-o", "yaml")
    assert yaml.safe_load(as_yaml.stdout)["keys"] == described["keys"]
    svg = plugin("status", "api", "-n", namespace, "--format", "svg")
    root = ElementTree.fromstring(svg.stdout)
    # the first key signs as it is made, and retires at the next rotation
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert {rect.get("class") for rect in root.iter("{http://www.w3.org/2000/svg}rect") if rect.get("class")} == {"signing", "retired"}


def test_rotate_sets_the_annotation_and_says_when_the_new_key_signs(plugin, policies, namespace):
    policy = _ready_policy(policies)
    before = {key["kid"] for key in policy["status"]["keys"]}
    rotated = plugin("rotate", "api", "-n", namespace)
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.startswith(f"rotation requested ({ROTATE_ANNOTATION}=")
    assert "it signs publishAhead (4s) after it is published" in rotated.stdout
    assert ROTATE_ANNOTATION in policies.get("api")["metadata"]["annotations"]
    wait_until(lambda: {key["kid"] for key in policies.get("api")["status"]["keys"]} - before, 30, "the rotation's new key")


def test_revoke_kid_says_what_will_happen_asks_first_and_then_revokes(plugin, policies, namespace):
    policy = _ready_policy(policies)
    active = policy["status"]["activeKid"]

    unknown = plugin("revoke-kid", "api", "not-a-kid", "-n", namespace, "--yes")
    assert unknown.returncode == 1
    assert "not-a-kid is not a key of SigningKeyPolicy api; its keys: " in unknown.stderr and active in unknown.stderr

    unconfirmed = plugin("revoke-kid", "api", active, "-n", namespace, stdin="y\n")
    assert unconfirmed.returncode == 1
    assert f"{active} signs now" in unconfirmed.stdout
    assert "A fresh key is made and signs at once" in unconfirmed.stdout
    assert "confirmation needed and stdin is not a terminal; pass --yes" in unconfirmed.stderr
    assert REVOKE_ANNOTATION not in (policies.get("api")["metadata"].get("annotations") or {})

    revoked = plugin("revoke-kid", "api", active, "-n", namespace, "--yes")
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked: {REVOKE_ANNOTATION}={active} set on {namespace}/api" in revoked.stdout
    wait_until(lambda: {key["kid"]: key["state"] for key in policies.get("api")["status"]["keys"]}.get(active) in ("revoked", None),
               30, f"{active} revoked")
    again = plugin("revoke-kid", "api", active, "-n", namespace, "--yes")
    assert again.returncode == 1 and (f"{active} is already revoked" in again.stderr or "is not a key" in again.stderr)


def test_inspect_says_which_key_signed_a_token_and_whether_it_is_accepted(plugin, policies, namespace):
    policy = _ready_policy(policies)
    now = int(time.time())
    token = _sign(policies, "api", {"sub": "alice", "jti": "inspect-1", "iat": now, "exp": now + 600})
    inspected = plugin("inspect", "-n", namespace, stdin=token)
    assert inspected.returncode == 0, inspected.stdout + inspected.stderr
    out = inspected.stdout
    assert f"key: {policy['status']['activeKid']} of SigningKeyPolicy {namespace}/api, active" in out
    assert "signature: verifies against the policy's published JWK Set" in out
    assert "revoked: no TokenRevocation of the policy matches it" in out
    assert 'jti: "inspect-1"' in out
    assert re.search(r"^exp: \S+ \(in (10m|9m\d+s)\)$", out, re.MULTILINE), out
    assert out.rstrip().endswith("verdict: verifiers accept it")
    assert token not in out and token.split(".")[2] not in out, "the token is not echoed back"

    revoking = plugin("revoke-token", "--policy", "api", "-n", namespace, stdin=token)
    assert revoking.returncode == 0, revoking.stderr
    refused = plugin("inspect", "-n", namespace, "--policy", "api", stdin=token)
    assert refused.returncode == 1
    assert "revoked: yes, by TokenRevocation api-jti-" in refused.stdout
    assert refused.stdout.rstrip().endswith("verdict: verifiers refuse it")

    forged = pyjwt.encode({"sub": "mallory", "exp": now + 600}, "not the key" * 4, algorithm="HS256",
                          headers={"kid": policy["status"]["activeKid"]})
    bad = plugin("inspect", "-n", namespace, stdin=forged)
    assert bad.returncode == 1 and "signature: does not verify" in bad.stdout


def test_errors_name_what_to_fix(plugin, policies, namespace, kubeconfig, tmp_path):
    missing = plugin("status", "nope", "-n", namespace)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (f"kubectl signingkeys status: SigningKeyPolicy nope not found in namespace {namespace} "
                                      f"(kubectl get signingkeypolicies -n {namespace})")

    _ready_policy(policies)
    # An identity with no rights at all: a ServiceAccount's token in a kubeconfig of its own.
    assert kubectl(kubeconfig, "create", "serviceaccount", "nobody", "-n", namespace).returncode == 0
    token = kubectl(kubeconfig, "create", "token", "nobody", "-n", namespace).stdout.strip()
    config = yaml.safe_load(Path(kubeconfig).read_text())
    cluster = config["clusters"][0]
    nobody = {"apiVersion": "v1", "kind": "Config", "clusters": [cluster],
              "users": [{"name": "nobody", "user": {"token": token}}],
              "contexts": [{"name": "nobody", "context": {"cluster": cluster["name"], "user": "nobody", "namespace": namespace}}],
              "current-context": "nobody"}
    nobody_config = tmp_path / "nobody.kubeconfig"
    nobody_config.write_text(yaml.safe_dump(nobody))
    refused = plugin("status", "api", config=nobody_config)
    assert refused.returncode == 1
    assert (f"not allowed to get signingkeypolicies.signingkeys.dev in namespace {namespace}: "
            "your identity needs the 'get' verb on signingkeypolicies.signingkeys.dev there (RBAC)") in refused.stderr
    rotate = plugin("rotate", "api", config=nobody_config)
    assert rotate.returncode == 1 and "not allowed to get signingkeypolicies.signingkeys.dev" in rotate.stderr
    assert "Traceback" not in refused.stderr + rotate.stderr


def test_an_hmac_policys_token_is_inspected_and_revoked_against_its_verification_secret(plugin, policies, namespace):
    policies.create("shared", {"algorithm": "HS256", "rotation": {"interval": "1h", "publishAhead": "4s"},
                               "tokenLifetime": "1h", "clockSkew": "1s"})
    active = policies.wait_ready("shared")["status"]["activeKid"]
    signing = policies.secret_data("shared-signing")
    token = pyjwt.encode({"sub": "svc", "jti": "hs-jti-1", "exp": int(time.time()) + 600}, signing["key"],
                         algorithm="HS256", headers={"kid": active})
    inspected = plugin("inspect", "-n", namespace, stdin=token)
    assert inspected.returncode == 0, inspected.stdout + inspected.stderr
    assert f"key: {active} of SigningKeyPolicy {namespace}/shared, active" in inspected.stdout
    assert "signature: verifies against the policy's verification Secret shared-verification" in inspected.stdout
    assert signing["key.b64url"].decode() not in inspected.stdout + inspected.stderr
    revoked = plugin("revoke-token", "--policy", "shared", "-n", namespace, stdin=token)
    assert revoked.returncode == 0, revoked.stderr
    assert "TokenRevocation" in revoked.stdout and "created" in revoked.stdout
    forged = pyjwt.encode({"sub": "svc", "exp": int(time.time()) + 600}, b"x" * 32, algorithm="HS256", headers={"kid": active})
    refused = plugin("revoke-token", "--policy", "shared", "-n", namespace, stdin=forged)
    assert refused.returncode == 1 and "does not verify" in refused.stderr, refused.stderr
