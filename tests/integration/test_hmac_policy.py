"""An HMAC (HS256/384/512) policy on the real API server with the operator running: the same
lifecycle as any policy, its keys only ever in Secrets, and verifiers served by the
verification Secret instead of a public JWK Set."""

from __future__ import annotations

import base64
import json
import time

import jwt as pyjwt
import pytest
from kubernetes.client.rest import ApiException

from signing_key_operator.sign import SigningKey

from .harness import Policies, outside_secrets, wait_until

HMAC_SPEC = {
    "algorithm": "HS256",
    "rotation": {"interval": "12s", "publishAhead": "4s"},
    "tokenLifetime": "5s",
    "clockSkew": "1s",
}


@pytest.fixture(autouse=True)
def _running_operator(operator):
    yield
    assert operator.process.poll() is None, "the operator exited:\n" + operator.logs()[-3000:]


def _verification_set(policies: Policies, policy: str) -> dict:
    data = policies.secret_data(f"{policy}-verification")
    return json.loads(data["jwks.json"]) if data else {"keys": []}


def _verification_kids(policies: Policies, policy: str) -> list[str]:
    return [key["kid"] for key in _verification_set(policies, policy)["keys"]]


def _sign_with_the_signing_secret(policies: Policies, policy: str) -> tuple[str, str]:
    """A token from the signer library, reading the signing Secret as a mount presents it."""
    key = SigningKey.from_files(policies.secret_data(f"{policy}-signing"))
    token = pyjwt.encode({"sub": "alice", "exp": int(time.time()) + 5}, key.key.get_op_key("sign"),
                         algorithm=key.alg, headers={"kid": key.kid})
    return token, key.kid


def _verifies(token: str, jwk_set: dict, alg: str) -> bool:
    kid = pyjwt.get_unverified_header(token)["kid"]
    keys = {key.key_id: key for key in pyjwt.PyJWKSet.from_dict(jwk_set).keys}
    if kid not in keys:
        return False
    try:
        pyjwt.decode(token, keys[kid], algorithms=[alg], options={"verify_exp": False})
        return True
    except pyjwt.InvalidTokenError:
        return False


@pytest.mark.parametrize(("algorithm", "key_bytes"), [("HS256", 32), ("HS384", 48), ("HS512", 128)])
def test_an_hmac_policy_keeps_its_keys_in_secrets_and_publishes_no_jwk_set(policies, algorithm, key_bytes):
    spec = {**HMAC_SPEC, "algorithm": algorithm, **({"hmacKeySize": 1024} if key_bytes == 128 else {})}
    policies.create("shared", spec)
    status = policies.wait_ready("shared")["status"]
    active = status["activeKid"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["message"] == f"key {active} signs and is published in Secret shared-verification"
    assert (status["verificationSecretName"], status.get("jwksConfigMapName")) == ("shared-verification", None)

    signing = policies.secret_data("shared-signing")
    assert set(signing) == {"kid", "alg", "key", "key.b64url", "lifetimes.json"}
    assert (signing["kid"].decode(), signing["alg"].decode(), len(signing["key"])) == (active, algorithm, key_bytes)
    assert signing["key.b64url"] == base64.urlsafe_b64encode(signing["key"]).rstrip(b"=")

    (verification_key,) = _verification_set(policies, "shared")["keys"]
    assert verification_key == {"kty": "oct", "kid": active, "alg": algorithm, "use": "sig",
                                "k": signing["key.b64url"].decode()}
    secret = policies.core.read_namespaced_secret("shared-verification", policies.namespace)
    assert secret.type == "signingkeys.dev/verification-keys"
    assert secret.metadata.owner_references[0].name == "shared"

    (key_secret,) = policies.key_secrets("shared")
    assert set(key_secret.data) == {"kid", "alg", "key"}
    assert base64.b64decode(key_secret.data["key"]) == signing["key"]

    with pytest.raises(ApiException) as missing:
        policies.core.read_namespaced_config_map("shared-jwks", policies.namespace)
    assert missing.value.status == 404
    token, kid = _sign_with_the_signing_secret(policies, "shared")
    assert kid == active and _verifies(token, _verification_set(policies, "shared"), algorithm)


def test_an_hmac_key_enters_the_verification_secret_before_it_signs_and_stays_after(policies):
    policies.create("rotating", {**HMAC_SPEC, "rotation": {"interval": "1h", "publishAhead": "4s"}})
    first = policies.wait_ready("rotating")["status"]["activeKid"]
    old_token, _ = _sign_with_the_signing_secret(policies, "rotating")

    policies.annotate("rotating", {"signingkeys.dev/rotate": "2026-12-02T16:00:00Z"})
    new_kid = wait_until(lambda: policies.get("rotating")["status"].get("nextKid"), 15, "a next key")
    assert _verification_kids(policies, "rotating") == [first, new_kid]
    assert policies.secret_data("rotating-signing")["kid"].decode() == first  # published, not signing yet
    wait_until(lambda: policies.secret_data("rotating-signing")["kid"].decode() == new_kid, 20, "the new key to sign")
    # The status follows the signing Secret in the same reconcile, not at the same instant.
    wait_until(lambda: {key["kid"]: key["state"] for key in policies.get("rotating")["status"]["keys"]}
               == {first: "retired", new_kid: "active"}, 10, "the status to show the new key active and the first retired")

    new_token, _ = _sign_with_the_signing_secret(policies, "rotating")
    verification = _verification_set(policies, "rotating")
    assert _verifies(old_token, verification, "HS256") and _verifies(new_token, verification, "HS256")
    # The retired key leaves after its retention (tokenLifetime 5s + clockSkew 1s + propagation).
    wait_until(lambda: _verification_kids(policies, "rotating") == [new_kid], 30, "the retired key's removal")
    assert not _verifies(old_token, _verification_set(policies, "rotating"), "HS256")


def test_a_revoked_hmac_key_leaves_the_verification_secret_at_once(policies):
    policies.create("breached", {**HMAC_SPEC, "rotation": {"interval": "1h", "publishAhead": "4s"}})
    victim = policies.wait_ready("breached")["status"]["activeKid"]
    token, _ = _sign_with_the_signing_secret(policies, "breached")
    policies.annotate("breached", {"signingkeys.dev/revoke-kid": victim})
    wait_until(lambda: victim not in _verification_kids(policies, "breached"), 10, "the revoked key to leave")
    fresh = wait_until(lambda: (lambda kid: kid if kid != victim else None)(
        policies.secret_data("breached-signing")["kid"].decode()), 15, "a fresh key to sign")
    assert _verification_kids(policies, "breached") == [fresh]
    assert not _verifies(token, _verification_set(policies, "breached"), "HS256")
    wait_until(lambda: "KeyRevoked" in policies.event_reasons("breached"), 10, "the KeyRevoked Event")


def test_an_edited_verification_secret_is_restored_from_the_key_secrets(policies):
    policies.create("restored", HMAC_SPEC)
    policies.wait_ready("restored")
    before = _verification_set(policies, "restored")
    forged = {"keys": [{"kty": "oct", "kid": "forged-kid-0000", "alg": "HS256", "use": "sig", "k": "Zm9yZ2Vk"}]}
    policies.core.patch_namespaced_secret("restored-verification", policies.namespace,
                                          {"data": {"jwks.json": base64.b64encode(json.dumps(forged).encode()).decode()}})
    wait_until(lambda: _verification_set(policies, "restored")["keys"][0]["kid"] != "forged-kid-0000", 15, "the restore")
    assert _verification_set(policies, "restored")["keys"][:1] == before["keys"][:1]
    wait_until(lambda: "JwksRestored" in policies.event_reasons("restored"), 10, "the JwksRestored Event")


def test_no_hmac_key_material_reaches_configmaps_status_events_logs_or_metrics(policies, api_client, operator):
    """After a full HS run (create, rotate, revoke, timer rotations) the keys, raw or encoded in
    any of the ways Secrets and JWKs carry them, are only in Secrets. Keys are collected as the
    run goes: a removed key's Secret is gone by the end, but its bytes may have been logged."""
    keys: set[bytes] = set()

    def collect() -> None:
        for key in _verification_set(policies, "scanned")["keys"]:
            keys.add(base64.urlsafe_b64decode(key["k"] + "=="))
        for secret in policies.key_secrets("scanned"):
            keys.add(base64.b64decode(secret.data["key"]))

    policies.create("scanned", HMAC_SPEC)
    first = policies.wait_ready("scanned")["status"]["activeKid"]
    collect()
    policies.annotate("scanned", {"signingkeys.dev/rotate": "now"})
    wait_until(lambda: collect() or policies.get("scanned")["status"]["activeKid"] != first, 20, "the requested rotation")
    active = policies.get("scanned")["status"]["activeKid"]
    policies.annotate("scanned", {"signingkeys.dev/revoke-kid": active})
    wait_until(lambda: collect() or active not in _verification_kids(policies, "scanned"), 10, "the revocation")
    deadline = time.monotonic() + 13  # a timer rotation too (interval 12s)
    while time.monotonic() < deadline:
        collect()
        time.sleep(0.5)
    assert len(keys) >= 4, f"the run made {len(keys)} HMAC keys, too few to prove anything"
    needles = set()
    for key in keys:
        needles |= {key.hex(), base64.b64encode(key).decode(), base64.urlsafe_b64encode(key).rstrip(b"=").decode()}

    haystacks = outside_secrets(api_client, **{"operator log": operator.logs(), "metrics": operator.metrics()})
    leaks = [where for where, text in haystacks.items() if any(needle in text for needle in needles)]
    assert not leaks, leaks
    # The check can fail: the same needles are found where the keys are.
    assert any(needle in policies.secret_data("scanned-verification")["jwks.json"].decode() for needle in needles)
