"""The served-JWKS gate, with and without it, through real rotations (gate.py).

Both arms at once: a lagging endpoint (8 s) between the sidecar and every client, more than
publishAhead (6 s). The gated arm names that endpoint in spec.jwks.servedAt: no client may fail
a verification, every key must wait for the endpoint before its publishAhead starts, and then
wait publishAhead. The ungated arm trusts its ConfigMap write: some client must fail, which
shows that the misconfiguration is real and that this suite can see it.
"""

from __future__ import annotations

import pytest

from .clients import CLIENTS
from .gate import run_arms
from .timeline import PUBLISH_AHEAD_S, TOKEN_LIFETIME_S

LAG_S = 8
ROTATIONS = 3
LATE_SHARE = 0.01
"""Verdicts that finished after exp + clockSkew (the harness fell behind on a loaded machine)
are neither successes nor failures; at most this share of them."""
TOLERANCE_S = 0.05
"""Times come from the key Secrets' annotations (microseconds); this only absorbs rounding."""


@pytest.fixture(scope="module")
def gate_run(kubeconfig, conformance_namespace, conformance_policies, summary, tmp_path_factory) -> dict:
    result = run_arms(
        conformance_policies, kubeconfig, conformance_namespace, tmp_path_factory.mktemp("conformance-served-gate"),
        lag=LAG_S, rotations=ROTATIONS,
    )
    summary["served_gate"] = result
    return result


def test_both_arms_rotated(gate_run):
    for name, arm in gate_run["arms"].items():
        assert len(arm["rotations"]) >= ROTATIONS, (name, arm["rotations"])
        assert arm["kids_signed"] >= ROTATIONS + 1, (name, arm["kids_signed"])


@pytest.mark.parametrize("client", [client.name for client in CLIENTS])
def test_gated_arm_zero_failed_verifications(gate_run, client):
    figures = gate_run["arms"]["gated"]["clients"][client]
    signed = gate_run["arms"]["gated"]["tokens_signed"]
    assert figures["late"] <= LATE_SHARE * 3 * signed, (
        f"{figures['late']} verifications by {client} finished after the token's exp + clockSkew: the "
        "harness fell behind, so those verdicts say nothing"
    )
    assert figures["failures"] == 0, f"{client}: {figures['failures']} failed verifications, e.g. {figures['failure_samples']}"
    # fresh, half-way and oldest, each token, less the few that came too late to say anything
    assert figures["verifications"] + figures["late"] >= 3 * signed, figures
    assert figures["oldest_age_verified_s"] >= TOKEN_LIFETIME_S - 1, figures


def test_gated_keys_waited_for_the_endpoint_then_publish_ahead(gate_run):
    rows = gate_run["arms"]["gated"]["rotations"]
    for row in rows:
        assert row["published_to_first_served_s"] is not None and row["first_served_to_activation_s"] is not None, row
        assert row["published_to_first_served_s"] >= LAG_S - 1, (
            f"key {row['kid']} was first served {row['published_to_first_served_s']} s after it was published, "
            f"before the endpoint's lag of {LAG_S} s could have passed: {row}"
        )
        assert row["first_served_to_activation_s"] >= PUBLISH_AHEAD_S - TOLERANCE_S, (
            f"key {row['kid']} signed {row['first_served_to_activation_s']} s after it was first served, "
            f"less than publishAhead ({PUBLISH_AHEAD_S} s): {row}"
        )
        # and the endpoint itself had served it publishAhead before it signed
        assert row["endpoint_to_activation_s"] >= PUBLISH_AHEAD_S - 0.2, row


def test_ungated_arm_fails_some_verifications(gate_run):
    clients = gate_run["arms"]["ungated"]["clients"]
    failing = {name: figures["failures"] for name, figures in clients.items() if figures["failures"]}
    assert failing, (
        f"no client failed a verification with publishAhead {PUBLISH_AHEAD_S} s behind an endpoint {LAG_S} s late: "
        f"the suite could not tell the gate from its absence: {clients}"
    )
