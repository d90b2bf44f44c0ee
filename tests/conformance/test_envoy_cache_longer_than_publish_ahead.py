"""The misconfiguration users will make: publishAhead shorter than Envoy's cache_duration.

Envoy's jwt_authn keeps a remote JWKS for ``cache_duration`` (10 min by default) and does not
refetch when a token names a kid it does not know. A policy whose publishAhead is shorter lets a
new key sign while Envoy workers still hold a set without it, and those workers refuse its
tokens until their cache runs out. This run shows it, counted, with a control beside it: the
same policy, the same tokens, and a second Envoy whose cache_duration is shorter than
publishAhead, which must refuse none. The operator's ShortTimeline warning must name Envoy.

This run has its own scale, 1/60 (one production minute per test second), so that Envoy's
default cache and a plausible too-short publishAhead are both whole seconds: cache_duration
10 min -> 10 s, publishAhead 2 min -> 2 s, and the control Envoy's cache_duration 1 min -> 1 s.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.integration.harness import wait_until

from .clients import ENVOY_UNKNOWN_KID, Client
from .driver import (
    ClientWorker,
    Recorder,
    Sidecar,
    drain,
    mount_signing_secret,
    start_clients,
    start_verifying,
    stop_verifying,
    warm_up,
)
from .timeline import CLIENT_IDENTITY_ARGS, CLOCK_SKEW_S, OLDEST_MARGIN_S, SIGNER_BEAT_S

POLICY = "envoy-short-publish-ahead"
SCALE = 60
"""Production seconds per test second in this run."""
PUBLISH_AHEAD_S = 2  # 2 min
INTERVAL_S = 12  # long enough that a misconfigured worker's 10 s cache lapses within each rotation
TOKEN_LIFETIME_S = 6
SPEC = {
    "algorithm": "ES256",
    "rotation": {"interval": f"{INTERVAL_S}s", "publishAhead": f"{PUBLISH_AHEAD_S}s"},
    "tokenLifetime": f"{TOKEN_LIFETIME_S}s",
    "clockSkew": f"{CLOCK_SKEW_S}s",
    "jwks": {"maxAge": "1s"},
}
ROTATIONS = 3
SIGN_AFTER_LAST_ROTATION_S = 3.0

MISCONFIGURED = Client("Envoy cache_duration 10 min", "envoy", "{Envoy} `jwt_authn`, cache_duration default")
CONTROL = Client("Envoy cache_duration 1 min", "envoy", "{Envoy} `jwt_authn`, cache_duration 1 min")
CACHE_S = {MISCONFIGURED.name: 600 / SCALE, CONTROL.name: 60 / SCALE}


@pytest.fixture(scope="module")
def negative_run(kubeconfig, conformance_namespace, conformance_policies, summary, tmp_path_factory):
    policies = conformance_policies
    log_dir = tmp_path_factory.mktemp("conformance-envoy-negative")
    policies.create(POLICY, SPEC)
    policies.wait_ready(POLICY, 60)
    sidecar = Sidecar(kubeconfig, conformance_namespace, f"{POLICY}-jwks", log_dir / "sidecar.log").wait_ready()
    mounted = mount_signing_secret(kubeconfig, conformance_namespace, POLICY, log_dir)
    clients = (MISCONFIGURED, CONTROL)
    args = {
        client.name: ["--url", sidecar.url, *CLIENT_IDENTITY_ARGS["Envoy"], "--concurrency", "2",
                      "--clock-skew-s", str(CLOCK_SKEW_S), "--cache-duration-ms", str(round(CACHE_S[client.name] * 1000))]
        for client in clients
    }
    processes: dict = {}
    workers: list[ClientWorker] = []
    scheduler = signer = None
    recorder = Recorder()
    activations: list[dict] = []
    try:
        mounted.start()
        key = wait_until(mounted.visible, 30, "the signer to see the signing Secret")
        processes = start_clients(clients, args, log_dir)
        warm_up(processes, key, TOKEN_LIFETIME_S)
        workers, scheduler, signer = start_verifying(processes, recorder, mounted, SIGNER_BEAT_S, OLDEST_MARGIN_S)
        active = policies.get(POLICY)["status"]["activeKid"]
        deadline = time.monotonic() + (ROTATIONS + 2) * INTERVAL_S + 30
        while len(activations) < ROTATIONS or time.time() - activations[-1]["at"] < SIGN_AFTER_LAST_ROTATION_S:
            assert time.monotonic() < deadline, f"only {len(activations)} rotations of {POLICY}"
            for worker in workers:
                assert worker.error is None and worker.is_alive(), f"{worker.process.client.name}: {worker.error!r}"
            current = (policies.get(POLICY).get("status") or {}).get("activeKid")
            if current and current != active:
                activations.append({"at": time.time(), "kid": current})
                active = current
            time.sleep(0.1)
        signer.stop()
        drain(scheduler, workers, TOKEN_LIFETIME_S + CLOCK_SKEW_S + 20)
        events = policies.events(POLICY)
    finally:
        stop_verifying(signer, scheduler, workers, processes)
        mounted.stop()
        sidecar.stop()
        policies.delete(POLICY)

    verdicts = recorder.snapshot()
    figures = {}
    for client in clients:
        mine = [v for v in verdicts if v.client == client.name and not v.late]
        failed = [v for v in mine if not v.ok]
        # How long after each new key started signing its tokens were still refused.
        refused_for = []
        for activation in activations:
            refused = [v.started for v in failed if v.token.kid == activation["kid"]]
            if refused:
                first_token = min(t.signed for t in signer.signed if t.kid == activation["kid"])
                refused_for.append(round(max(refused) - first_token, 2))
        figures[client.name] = {
            "cache_duration_s": CACHE_S[client.name],
            "verified": sum(1 for v in mine if v.ok),
            "failed": len(failed),
            "failed_by_kind": dict(Counter(v.kind for v in failed)),
            "reasons": sorted({v.reason for v in failed})[:5],
            "new_key_refused_for_s": refused_for,
        }
    short_timeline = [event.message for event in events if event.reason == "ShortTimeline"]
    summary["envoy_negative"] = {
        "spec": SPEC, "scale": SCALE, "rotations": len(activations), "clients": figures,
        "short_timeline_warnings": short_timeline,
    }
    return summary["envoy_negative"]


def test_envoy_with_a_cache_longer_than_publish_ahead_refuses_tokens_of_the_new_key(negative_run):
    figures = negative_run["clients"][MISCONFIGURED.name]
    assert negative_run["rotations"] >= ROTATIONS
    assert figures["failed"] > 0, f"a 10 s cache against a 2 s publishAhead refused nothing: {figures}"
    assert all(ENVOY_UNKNOWN_KID in reason for reason in figures["reasons"]), figures["reasons"]
    # Refused at most until the worker's cache ran out: cache_duration less publishAhead, plus
    # the scheduling slack of a loaded machine.
    assert max(figures["new_key_refused_for_s"]) <= CACHE_S[MISCONFIGURED.name] - PUBLISH_AHEAD_S + 2, figures


def test_envoy_with_a_cache_shorter_than_publish_ahead_refuses_nothing(negative_run):
    figures = negative_run["clients"][CONTROL.name]
    assert figures["failed"] == 0, figures
    assert figures["verified"] > 0


def test_the_operator_warns_that_envoys_default_cache_is_longer(negative_run):
    warnings = negative_run["short_timeline_warnings"]
    assert warnings and any("Envoy" in message for message in warnings), warnings
