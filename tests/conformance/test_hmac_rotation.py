"""HMAC keys through continuous rotation: zero failed verifications, read from a mounted Secret.

An HS256 policy on a scaled timeline. Its signing Secret and its verification Secret each reach
this test through the suite's simulated kubelet mount (driver.MountedSecret: every change, late,
by a ``..data`` swap). The signer library signs from the first; four libraries verify from the
second's ``jwks.json``, each reading the file again when it changes, the way README.md shows
(PyJWT ``PyJWKSet``, jose ``importJWK`` by kid, Nimbus ``ImmutableJWKSet`` with a
``JWSVerificationKeySelector`` for HS256, keyfunc ``NewJWKSetJSON``). Every token is verified
fresh, half-way and at its oldest (exp + clockSkew, less a margin). Rotations alternate between
the timer and the rotate annotation; then the active key is revoked and each library's time to
refuse it is measured with tokens still signed by it.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from signing_key_operator.core.planner import REVOKE_ANNOTATION

from tests.integration.harness import wait_until

from .clients import HMAC_CLIENTS as CLIENTS
from .clients import hmac_client_args
from .driver import (
    MountedSecret,
    Recorder,
    check_threads,
    drain,
    drive_rotations,
    lag_figures,
    sign,
    start_clients,
    start_verifying,
    stop_verifying,
    warm_up,
)
from .timeline import AUDIENCE, MOUNT_LAG_S, MOUNT_POLL_S, OLDEST_MARGIN_S, SIGNER_BEAT_S

POLICY = "hmac"
TOKEN_LIFETIME_S = 6
CLOCK_SKEW_S = 1
SPEC = {
    "algorithm": "HS256",
    # publishAhead covers the simulated kubelet (poll 0.2 s + lag up to 1.2 s) twice over: the
    # verifiers' copy of the verification Secret has the key before the signers' copy of the
    # signing Secret names it.
    "rotation": {"interval": "8s", "publishAhead": "4s"},
    "tokenLifetime": f"{TOKEN_LIFETIME_S}s",
    "clockSkew": f"{CLOCK_SKEW_S}s",
}
TARGET_ROTATIONS = 10
MIN_EACH_KIND = 3
ROTATION_DEADLINE_S = 240
REVOKE_DEADLINE_S = 15
STEADY_REFUSAL_S = 1.0


def _revoke_reactions(policies, signing: MountedSecret, processes) -> dict:
    """Revoke the active key (signing stopped) and send each library tokens of it every 50 ms:
    seconds from the request until each refuses it for good."""
    key = wait_until(lambda: (lambda k: k if k and k.kid == policies.get(POLICY)["status"]["activeKid"] else None)(
        signing.visible()), 20, "the signers to hold the active key")
    revoked_at = time.time()
    policies.annotate(POLICY, {REVOKE_ANNOTATION: key.kid})
    refusing_since: dict[str, float | None] = {name: None for name in processes}
    seq = 20_000_000
    while time.time() < revoked_at + REVOKE_DEADLINE_S:
        seq += 1
        token = sign(key, seq, TOKEN_LIFETIME_S, probe=True)
        for name, process in processes.items():
            ok, _ = process.verify(token.value)
            if ok:
                refusing_since[name] = None
            elif refusing_since[name] is None:
                refusing_since[name] = time.time()
        if all(since is not None and time.time() - since >= STEADY_REFUSAL_S for since in refusing_since.values()):
            break
        time.sleep(0.05)
    return {name: round(since - revoked_at, 2) if since is not None else None for name, since in refusing_since.items()}


@pytest.fixture(scope="module")
def hmac_run(kubeconfig, conformance_namespace, conformance_policies, summary, tmp_path_factory) -> dict:
    policies = conformance_policies
    log_dir = tmp_path_factory.mktemp("conformance-hmac")
    policies.create(POLICY, SPEC)
    policies.wait_ready(POLICY, 60)
    signing = MountedSecret(kubeconfig, conformance_namespace, f"{POLICY}-signing", MOUNT_POLL_S, MOUNT_LAG_S,
                            log_dir / "signing-mount")
    verification = MountedSecret(kubeconfig, conformance_namespace, f"{POLICY}-verification", MOUNT_POLL_S, MOUNT_LAG_S,
                                 log_dir / "verification-mount")
    processes: dict = {}
    workers, scheduler, signer = [], None, None
    started = time.monotonic()
    try:
        signing.start()
        verification.start()
        wait_until(lambda: signing.visible() and verification.files, 30, "both Secrets to be mounted")
        processes = start_clients(CLIENTS, hmac_client_args(str(verification.volume / "jwks.json"), CLOCK_SKEW_S, AUDIENCE), log_dir)
        warm_up(processes, signing.visible(), TOKEN_LIFETIME_S)
        recorder = Recorder()
        workers, scheduler, signer = start_verifying(processes, recorder, signing, SIGNER_BEAT_S, OLDEST_MARGIN_S)
        rotations = drive_rotations(policies, POLICY, lambda: check_threads(workers, signer), TARGET_ROTATIONS,
                                    MIN_EACH_KIND, ROTATION_DEADLINE_S)
        time.sleep(2)  # the last key signs a little too
        signer.stop()
        drain(scheduler, workers, TOKEN_LIFETIME_S + CLOCK_SKEW_S + 10)
        verdicts = recorder.snapshot()
        signed = list(signer.signed)
        reactions = _revoke_reactions(policies, signing, processes)
    finally:
        stop_verifying(signer, scheduler, workers, processes)
        signing.stop()
        verification.stop()
        # Its 8 s timer would go on rotating through every module after this one.
        policies.delete(POLICY)
    clients = {}
    for client in CLIENTS:
        mine = [verdict for verdict in verdicts if verdict.client == client.name]
        late = [verdict for verdict in mine if verdict.late]
        counted = [verdict for verdict in mine if not verdict.late]
        failures = [verdict for verdict in counted if not verdict.ok]
        clients[client.name] = {
            "library": client.library,
            "verified": sum(1 for verdict in counted if verdict.ok),
            "failures": len(failures),
            "by_kind": dict(Counter(verdict.kind for verdict in counted if verdict.ok)),
            "late": len(late),
            **lag_figures(mine),
            "oldest_age_verified_s": round(max((v.started - v.token.signed for v in counted if v.ok), default=0), 2),
            "revoke_reaction_s": reactions.get(client.name),
            "failure_samples": [{"kid": v.token.kid, "kind": v.kind, "reason": v.reason,
                                 "age_s": round(v.started - v.token.signed, 2)} for v in failures[:10]],
        }
    result = {
        "spec": SPEC,
        "rotations": {"total": len(rotations), **Counter(rotation["reason"] for rotation in rotations)},
        "tokens_signed": len(signed),
        "kids_signed": len({token.kid for token in signed}),
        "duration_s": round(time.monotonic() - started, 1),
        "clients": clients,
    }
    summary["hmac_rotation"] = result
    return result


def test_every_library_verifies_every_hmac_token_through_the_rotations(hmac_run):
    assert hmac_run["rotations"]["total"] >= TARGET_ROTATIONS
    assert hmac_run["kids_signed"] >= TARGET_ROTATIONS
    for name, figures in hmac_run["clients"].items():
        assert figures["failures"] == 0, (name, figures["failure_samples"])
        kinds = figures["by_kind"]
        assert min(kinds.get("fresh", 0), kinds.get("mid", 0), kinds.get("oldest", 0)) > 0, (name, kinds)
        # Checked at their oldest: within a beat of exp + clockSkew, so a retired key was still there.
        assert figures["oldest_age_verified_s"] >= TOKEN_LIFETIME_S + CLOCK_SKEW_S - OLDEST_MARGIN_S - 0.5, (name, figures)


def test_a_revoked_hmac_key_is_refused_by_every_library_once_the_mount_follows(hmac_run):
    """Bounded by the operator's reaction and the simulated kubelet: poll 0.2 s, lag up to 1.2 s."""
    for name, figures in hmac_run["clients"].items():
        reaction = figures["revoke_reaction_s"]
        assert reaction is not None, f"{name} never refused the revoked key"
        assert reaction <= MOUNT_POLL_S + MOUNT_LAG_S[1] + 3, (name, reaction)
