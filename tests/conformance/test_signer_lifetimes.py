"""The lifetimes of the signing Secret reach a running signer, and a signer that ignores them is
refused.

One policy on the suite's timeline, the signer library reading the signing Secret from a volume
that gets every change late (driver.MountedSecret, as a mounting pod does), and the policy's
sidecar. The tokenLifetime is shortened while the signer runs: the figure is how long after the
patch its tokens carry the new lifetime (the operator's write, the simulated kubelet's poll and
lag). Then a stand-in for a misconfigured application signs with the same key but hard-codes
twice the lifetime; the Python verifier, told the policy's lifetime, refuses it saying why.
"""

from __future__ import annotations

import json
import time

import jwt as pyjwt
import pytest

from signing_key_operator import sign as signer_library
from signing_key_operator.verify import TokenRejected, Verifier
from tests.integration.harness import GROUP, PLURAL, VERSION

from .driver import TOKEN_CLAIMS, sign, signing_policy
from .timeline import AUDIENCE, CLOCK_SKEW_S, ISSUER, POLICY_SPEC, TOKEN_LIFETIME_S

POLICY = "signer-lifetimes"
SHORTER_S = TOKEN_LIFETIME_S - 2
SIGN_EVERY_S = 0.05
PROPAGATION_DEADLINE_S = 30


def _lifetime(token: str) -> int:
    claims = pyjwt.decode(token, options={"verify_signature": False})
    return claims["exp"] - claims["iat"]


@pytest.fixture(scope="module")
def lifetime_run(kubeconfig, conformance_namespace, conformance_policies, summary, tmp_path_factory):
    policies = conformance_policies
    log_dir = tmp_path_factory.mktemp("conformance-signer-lifetimes")
    result: dict = {}
    with signing_policy(policies, kubeconfig, conformance_namespace, POLICY, POLICY_SPEC, log_dir) as (mounted, sidecar):
        signer = signer_library.Signer.from_directory(mounted.volume)
        lifetimes = [_lifetime(signer.sign(TOKEN_CLAIMS))]
        patched = time.time()
        policies.objects.patch_namespaced_custom_object(GROUP, VERSION, conformance_namespace, PLURAL, POLICY,
                                                        {"spec": {"tokenLifetime": f"{SHORTER_S}s"}})
        deadline = time.monotonic() + PROPAGATION_DEADLINE_S
        while lifetimes[-1] != SHORTER_S and time.monotonic() < deadline:
            time.sleep(SIGN_EVERY_S)
            lifetimes.append(_lifetime(signer.sign(TOKEN_CLAIMS)))
        result["reached_signer_s"] = round(time.time() - patched, 2) if lifetimes[-1] == SHORTER_S else None
        change = next((c for c in mounted.changes if json.loads(c["lifetimes"] or "{}").get("tokenLifetimeSeconds") == SHORTER_S), None)
        result["secret_written_s"] = round(change["seen"] - patched, 2) if change else None
        result["mount_visible_s"] = round(change["visible"] - patched, 2) if change and change["visible"] else None
        for _ in range(10):  # and it stays there
            lifetimes.append(_lifetime(signer.sign(TOKEN_CLAIMS)))
        result["lifetimes"] = lifetimes

        # A misconfigured application: the mounted key, but exp hard-coded at twice the policy's.
        key = mounted.visible()
        hard_coded = sign(key, 1, 2 * SHORTER_S).value
        verifier = Verifier(sidecar.url, issuer=ISSUER, audience=AUDIENCE, leeway=CLOCK_SKEW_S,
                            max_token_lifetime=SHORTER_S)
        try:
            verifier.verify(hard_coded)
            result["hard_coded_refusal"] = None
        except TokenRejected as refused:
            result["hard_coded_refusal"] = str(refused)
        result["library_token_verified"] = verifier.verify(signer.sign(TOKEN_CLAIMS))["sub"]
    summary["signer_lifetimes"] = {k: v for k, v in result.items() if k != "lifetimes"}
    return result


def test_a_lifetime_change_reaches_the_running_signer(lifetime_run):
    assert lifetime_run["reached_signer_s"] is not None, lifetime_run
    lifetimes = lifetime_run["lifetimes"]
    first_shorter = lifetimes.index(SHORTER_S)
    # The old lifetime until the mount shows the change, then only the new one: never a mix.
    assert set(lifetimes[:first_shorter]) == {TOKEN_LIFETIME_S}, lifetimes
    assert set(lifetimes[first_shorter:]) == {SHORTER_S}, lifetimes
    assert lifetime_run["secret_written_s"] is not None and lifetime_run["mount_visible_s"] is not None, lifetime_run
    assert lifetime_run["mount_visible_s"] <= lifetime_run["reached_signer_s"], lifetime_run


def test_a_signer_that_hard_codes_a_longer_lifetime_is_refused_by_the_verifier(lifetime_run):
    reason = lifetime_run["hard_coded_refusal"]
    assert reason is not None, "the verifier accepted a token twice as long as the policy allows"
    assert f"lives {2 * SHORTER_S}s (exp - iat), longer than the policy's token lifetime of {SHORTER_S}s" in reason
    assert lifetime_run["library_token_verified"] == "conformance"
