"""An HMAC policy on the real kubelet: a pod signs from the signing Secret as the kubelet mounts it,
and the four conformance libraries verify every token it signs from the verification Secret as
the kubelet mounts it (the volume of a second pod, read on the node where the kubelet writes it,
``..data`` swaps, lag and all), through rotations.

The simulated mount of tests/conformance/test_hmac_rotation.py runs 10 rotations on a scaled
timeline; here the kubelet's own lag (about a minute) sets the pace, so publishAhead is 150 s and
the run does 2 rotations: enough to show the reloading snippets follow the real kubelet, and a
new key reaches the verifiers' mount before the signer's mount names it.
"""

from __future__ import annotations

import base64
import json
import time

import pytest

from tests.conformance.clients import HMAC_CLIENTS, hmac_client_args
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
from tests.conformance.timeline import AUDIENCE, OLDEST_MARGIN_S
from tests.integration.harness import wait_until

from .chart_release import NAMESPACE, Kube
from .pods import holder_pod, ready_signer, require_verifier_builds, signer_pod

POLICY = "node-hmac"
ROTATIONS = 2
TOKEN_LIFETIME_S = 10
CLOCK_SKEW_S = 1
SPEC = {
    "algorithm": "HS256",
    # The kubelet's sync (1 min) with jitter, measured up to 80 s (bench/node_bench.py volumes):
    # 150 s lets the verifiers' mount have a new key well before the signer's mount names it.
    "rotation": {"interval": "24h", "publishAhead": "150s"},
    "tokenLifetime": f"{TOKEN_LIFETIME_S}s",
    "clockSkew": f"{CLOCK_SKEW_S}s",
}
SIGNER, HOLDER = "hmac-signer", "hmac-verification-holder"
BEAT_S = 1.0
ROTATION_TIMEOUT_S = 150 + 150  # publishAhead, then the signer's mount


def _kids_in(path) -> list[str]:
    try:
        return [key["kid"] for key in json.loads(path.read_text())["keys"]]
    except (OSError, ValueError):
        return []


def _signing(kube: Kube):
    data = kube.json("get", "secret", "-n", NAMESPACE, f"{POLICY}-signing")["data"]
    return signing_key({name: base64.b64decode(value) for name, value in data.items()})


@pytest.fixture(scope="module")
def hmac_pods_run(release, kube, node_cluster, tmp_path_factory):
    require_verifier_builds()
    release.configure(**{"operator.secretPropagation": "2m"})
    kube.apply(NAMESPACE, {"apiVersion": "signingkeys.dev/v1alpha1", "kind": "SigningKeyPolicy",
                           "metadata": {"name": POLICY}, "spec": SPEC})
    wait_until(lambda: kube.kubectl("get", "secret", "-n", NAMESPACE, "--ignore-not-found", "-o", "name",
                                    f"{POLICY}-verification").strip(), 60, "the verification Secret")
    log_dir = tmp_path_factory.mktemp("hmac-pods")
    kube.apply(NAMESPACE, signer_pod(release.image, SIGNER, f"{POLICY}-signing"))
    kube.apply(NAMESPACE, holder_pod(release.image, HOLDER, f"{POLICY}-verification"))
    processes, workers = {}, []
    scheduler = signer = None
    rotations = []
    try:
        pod_signer = ready_signer(kube, NAMESPACE, SIGNER)
        kube.kubectl("wait", "-n", NAMESPACE, f"pod/{HOLDER}", "--for=condition=Ready", "--timeout=120s", timeout=150)
        holder = kube.json("get", "pod", "-n", NAMESPACE, HOLDER)
        jwks_file = (node_cluster.node.kubelet_dir / "pods" / holder["metadata"]["uid"] / "volumes"
                     / "kubernetes.io~secret" / "mounted" / "jwks.json")
        wait_until(lambda: _kids_in(jwks_file), 60, f"the kubelet to write {jwks_file}")

        processes = start_clients(HMAC_CLIENTS, hmac_client_args(str(jwks_file), CLOCK_SKEW_S, AUDIENCE), log_dir)
        warm_up(processes, _signing(kube), TOKEN_LIFETIME_S)
        recorder = Recorder()
        workers, scheduler, signer = start_verifying_tokens_of(processes, recorder, {"pod": pod_signer.sign},
                                                               lambda: True, BEAT_S, OLDEST_MARGIN_S)
        for number in range(ROTATIONS):
            before = set(_kids_in(jwks_file))
            requested = time.time()
            kube.kubectl("annotate", "--overwrite", "-n", NAMESPACE, "signingkeypolicy", POLICY,
                         f"signingkeys.dev/rotate=node-hmac-{number}-{time.time():.0f}")
            new = wait_until(lambda: set(_kids_in(jwks_file)) - before, ROTATION_TIMEOUT_S,
                             "the new key in the verifiers' mount", interval=0.5)
            (kid,) = new
            in_mount = time.time() - requested
            first = wait_until(lambda: next((t for t in signer.signed if t.kid == kid), None), ROTATION_TIMEOUT_S,
                               f"the pod to sign with {kid} (rotation {number + 1})", interval=0.5)
            rotations.append({"kid": kid, "in_verifiers_mount_s": round(in_mount, 1),
                              "signing_in_pod_s": round(first.signed - requested, 1)})
            print(f"rotation {number + 1}: {kid[:8]}… in the verifiers' mount {in_mount:.1f}s after the request, "
                  f"signed by the pod {rotations[-1]['signing_in_pod_s']}s after it")
            if signer.error is not None:
                raise RuntimeError(f"the signer failed: {signer.error!r}")
        verdicts = finish_signing(signer, scheduler, workers, recorder, TOKEN_LIFETIME_S + CLOCK_SKEW_S + 10)
        signed = list(signer.signed)
    finally:
        stop_verifying(signer, scheduler, workers, processes)
        for pod in (SIGNER, HOLDER):
            kube.kubectl("delete", "pod", "-n", NAMESPACE, pod, "--wait=false", check=False)
        kube.kubectl("delete", "signingkeypolicy", "-n", NAMESPACE, POLICY, "--wait=false", check=False)
    result = {
        "rotations": rotations,
        "signed": len(signed),
        "kids_signed": sorted({token.kid for token in signed}),
        "clients": {client.name: verdict_counts([v for v in verdicts if v.client == client.name]) for client in HMAC_CLIENTS},
    }
    print(json.dumps(result, indent=1))
    (tmp_path_factory.getbasetemp() / "hmac-pods-run.json").write_text(json.dumps(result, indent=2))
    return result


def test_the_pod_signed_with_every_key_the_rotations_made(hmac_pods_run):
    assert len(hmac_pods_run["rotations"]) == ROTATIONS
    for rotation in hmac_pods_run["rotations"]:
        assert rotation["kid"] in hmac_pods_run["kids_signed"], rotation
        # published where the verifiers read it before the signer's mount named it
        assert rotation["in_verifiers_mount_s"] < rotation["signing_in_pod_s"], rotation


@pytest.mark.parametrize("client", [client.name for client in HMAC_CLIENTS])
def test_every_library_verifies_every_token_from_the_kubelets_mount(hmac_pods_run, client):
    figures = hmac_pods_run["clients"][client]
    assert figures["late"] == 0, figures
    assert figures["failed"] == 0, figures
    assert figures["verified"] >= 2 * hmac_pods_run["signed"], figures
