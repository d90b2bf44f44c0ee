"""The signer library in a pod on the real kubelet, through 10 rotations: the conformance clients
verify every token it signs, fresh, half-way and at its oldest, against the JWK Set served
through the chart's JWKS Service.

An application signs as examples/signers/README.md says: our image, the policy's signing Secret
mounted as a volume (the kubelet's own ``..data`` swaps, with its own lag), and
``Signer.from_directory`` on it. The pod answers a POST of claims with a token, so the suite's
scheduler can hand each token to every client (tests/conformance/driver.py), which fetch the set
from the Service's ClusterIP through kube-proxy, as verifier pods would.

The operator runs with its default ``--secret-propagation`` (2m): the pod keeps signing with the
old key until the kubelet updates the volume (about a minute by default, measured here per
rotation), and the retired key must stay published for that long plus the token's lifetime.
Each rotation waits until the pod signs with the new key, so every key signs from the pod.
"""

from __future__ import annotations

import base64
import json
import statistics
from collections import Counter

import pytest

from signing_key_operator.k8s.objects import parse_time
from tests.conformance.clients import CLIENTS
from tests.conformance.driver import (
    Recorder,
    finish_signing,
    signing_key,
    start_clients,
    start_verifying_tokens_of,
    stop_verifying,
    verdict_counts,
    warm_up,
)
from tests.conformance.timeline import CLIENT_ARGS, OLDEST_MARGIN_S
from tests.integration.harness import wait_until

from .chart_release import NAMESPACE, POLICY, POLICY_SPEC, Kube, Release
from .pods import ready_signer, require_verifier_builds, signer_pod

ROTATIONS = 10
BEAT_S = 1.0
POD = "token-signer"
KUBELET_LAG_TIMEOUT_S = 150  # the kubelet's sync period (1 min) with jitter, and room
TOKEN_LIFETIME_S = int(POLICY_SPEC["tokenLifetime"].rstrip("s"))
CLOCK_SKEW_S = int(POLICY_SPEC["clockSkew"].rstrip("s"))

def _signing_key(kube: Kube):
    data = kube.json("get", "secret", "-n", NAMESPACE, f"{POLICY}-signing")["data"]
    return signing_key({name: base64.b64decode(value) for name, value in data.items()})


def _activated(release: Release, kid: str) -> float | None:
    for secret in release.key_secrets():
        annotations = secret["metadata"]["annotations"]
        if annotations["signingkeys.dev/kid"] == kid and annotations.get("signingkeys.dev/activated"):
            return parse_time(annotations["signingkeys.dev/activated"]).timestamp()
    return None


@pytest.fixture(scope="module")
def pod_run(release, kube, tmp_path_factory):
    require_verifier_builds()
    release.configure(**{"jwksServer.mode": "watch", "operator.secretPropagation": "2m"})
    release.wait_ready()
    log_dir = tmp_path_factory.mktemp("signer-pod")
    kube.apply(NAMESPACE, signer_pod(release.image, POD, f"{POLICY}-signing"))
    processes, workers = {}, []
    scheduler = signer = None
    rotations = []
    try:
        pod_signer = ready_signer(kube, NAMESPACE, POD)

        url = release.jwks_url
        processes = start_clients(CLIENTS, {name: ["--url", url, *args] for name, args in CLIENT_ARGS.items()}, log_dir)
        warm_up(processes, _signing_key(kube), TOKEN_LIFETIME_S)
        recorder = Recorder()
        workers, scheduler, signer = start_verifying_tokens_of(processes, recorder, {"pod": pod_signer.sign},
                                                               lambda: True, BEAT_S, OLDEST_MARGIN_S)
        for number in range(ROTATIONS):
            kid = release.rotate()
            activated = wait_until(lambda: _activated(release, kid), 60, f"{kid} to sign", interval=0.5)
            first = wait_until(lambda: next((t for t in signer.signed if t.kid == kid), None),
                               KUBELET_LAG_TIMEOUT_S, f"the pod to sign with {kid} (rotation {number + 1})", interval=0.2)
            rotations.append({"kid": kid, "kubelet_lag_s": round(first.signed - activated, 1)})
            print(f"rotation {number + 1}: {kid[:8]}… signing since the operator's switch, in the pod "
                  f"{first.signed - activated:.1f}s later")
            if signer.error is not None:
                raise RuntimeError(f"the signer failed: {signer.error!r}")
        verdicts = finish_signing(signer, scheduler, workers, recorder, TOKEN_LIFETIME_S + CLOCK_SKEW_S + 10)
        signed = list(signer.signed)
    finally:
        stop_verifying(signer, scheduler, workers, processes)
        pod_log = kube.logs(NAMESPACE, POD)
        kube.kubectl("delete", "pod", "-n", NAMESPACE, POD, "--wait=false", check=False)

    clients = {client.name: verdict_counts([verdict for verdict in verdicts if verdict.client == client.name])
               for client in CLIENTS}
    lags = [rotation["kubelet_lag_s"] for rotation in rotations]
    result = {
        "rotations": rotations,
        "kubelet_lag_s": {"p50": statistics.median(lags), "max": max(lags), "min": min(lags)},
        "signed": len(signed),
        "kids_signed": sorted({token.kid for token in signed}),
        "lifetimes": sorted(Counter(token.exp - token.iat for token in signed)),
        "clients": clients,
        "pod_log": pod_log[-2000:],
    }
    print(json.dumps({key: value for key, value in result.items() if key != "pod_log"}, indent=1))
    (tmp_path_factory.getbasetemp() / "signer-pod-run.json").write_text(json.dumps(result, indent=2))
    return result


def test_the_pod_signed_with_every_key_of_10_rotations(pod_run):
    assert len(pod_run["rotations"]) == ROTATIONS
    for rotation in pod_run["rotations"]:
        assert rotation["kid"] in pod_run["kids_signed"], rotation


def test_every_token_from_the_pod_lives_the_policys_token_lifetime(pod_run):
    assert pod_run["lifetimes"] == [TOKEN_LIFETIME_S], pod_run["lifetimes"]


@pytest.mark.parametrize("client", [client.name for client in CLIENTS])
def test_every_client_verifies_every_token_the_pod_signed_through_the_service(pod_run, client):
    figures = pod_run["clients"][client]
    assert figures["late"] == 0, figures
    assert figures["failed"] == 0, figures
    assert figures["verified"] >= 2 * pod_run["signed"], figures
