"""Fixtures of the conformance suite: the verifier builds, a namespace and an operator of its own,
and the run summary.

The suite runs its own operator (``--namespace conf-<hex>``, ``--secret-propagation`` to match
the simulated kubelet lag, the served-JWKS read-back flags of gate.py scaled to the timeline) on
a namespace outside the session operator's ``t-*`` pattern, so no other operator acts on its
policies and its metrics are its own.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
from kubernetes import client

from tests.integration.conftest import signingkeypolicy_crd  # noqa: F401 - fixture reused
from tests.integration.harness import OperatorProcess, Policies

from .clients import cache_root, missing_builds
from .gate import OPERATOR_ARGS as SERVED_CHECK_ARGS
from .gate import format_table as format_served_gate
from .timeline import SECRET_PROPAGATION



@pytest.fixture(scope="session", autouse=True)
def verifier_builds():
    """Autouse, so a missing build skips before the control plane starts."""
    missing = missing_builds()
    if missing:
        message = (
            "the conformance verifiers are not built for the current sources "
            f"({', '.join(missing)} missing under {cache_root()}): "
            "run tests/conformance/setup.sh first (`make test` does)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"in CI {message}; a skip here would hide a missing install step", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def conformance_namespace(verifier_builds, api_client, signingkeypolicy_crd):  # noqa: F811
    name = f"conf-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="session")
def conformance_operator(kubeconfig, conformance_namespace, tmp_path_factory):
    process = OperatorProcess(
        kubeconfig,
        tmp_path_factory.mktemp("conformance-operator") / "operator.log",
        extra_args=["--namespace", conformance_namespace, "--secret-propagation", SECRET_PROPAGATION, *SERVED_CHECK_ARGS],
    ).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def conformance_policies(api_client, conformance_namespace, conformance_operator) -> Policies:
    return Policies(api_client, conformance_namespace)


@pytest.fixture(scope="session")
def summary(tmp_path_factory):
    """What the suite measured; printed and written to last-run.json at the end of the session."""
    started = time.monotonic()
    data: dict = {}
    yield data
    if not data:
        return
    data["suite_wall_time_s"] = round(time.monotonic() - started, 1)
    text = json.dumps(data, indent=2, sort_keys=False)
    targets = [tmp_path_factory.getbasetemp() / "conformance-last-run.json", cache_root() / "last-run.json"]
    for target in targets:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text + "\n")
        except OSError:
            pass
    print("\n\n=== conformance summary ===")
    print(format_summary(data))
    print(f"(JSON: {targets[1]}; also {targets[0]})")


def _verification_header(width: int) -> str:
    return f"{'client':<{width}}{'verified':>10}{'failures':>10}{'fresh':>8}{'mid':>8}{'oldest':>8}{'revoke reaction':>18}"


def _verification_row(name: str, figures: dict, width: int) -> str:
    """A client's verifications in a run, by age, and its reaction to the revoke."""
    kinds, reaction = figures["by_kind"], figures.get("revoke_reaction_s")
    return (f"{name:<{width}}{figures['verified']:>10}{figures['failures']:>10}{kinds.get('fresh', 0):>8}"
            f"{kinds.get('mid', 0):>8}{kinds.get('oldest', 0):>8}{(f'{reaction:.2f} s' if reaction is not None else 'never'):>18}")


def format_summary(data: dict) -> str:
    lines = []
    rotation = data.get("rotation")
    if rotation:
        lines.append(
            f"rotations: {rotation['rotations']['total']} ({rotation['rotations']['timer']} timer, "
            f"{rotation['rotations']['annotation']} annotation) in {rotation['duration_s']} s; "
            f"{rotation['tokens_signed']} tokens signed over {len(rotation['kids_signed'])} kids"
        )
        lines.append(f"{_verification_header(18)}{'fetches/rotation':>18}{'during revoke':>15}  user agent")
        for name, figures in rotation["clients"].items():
            lines.append(
                f"{_verification_row(name, figures, 18)}"
                f"{figures.get('jwks_fetches_per_rotation', '-'):>18}{figures.get('jwks_fetches_during_revoke', '-'):>15}"
                f"  {','.join(figures.get('jwks_fetch_client_labels', []))}"
            )
        revoke = rotation.get("revoke") or {}
        if revoke:
            lines.append(
                f"revoke: kid left the ConfigMap after {revoke.get('configmap_s')} s and the served JWKS after "
                f"{revoke.get('served_s')} s; the signer saw the fresh key after {revoke.get('signer_switched_s')} s"
            )
            for name, figures in rotation["clients"].items():
                lines.append(f"  {name}: {figures.get('revoke_reaction_s')} s: {figures.get('revoke_explanation')}")
    hmac = data.get("hmac_rotation")
    if hmac:
        lines.append("")
        lines.append(
            f"HMAC ({hmac['spec']['algorithm']}, verification Secret on a lagging mount): {hmac['rotations']['total']} rotations "
            f"({hmac['rotations'].get('timer', 0)} timer, {hmac['rotations'].get('annotation', 0)} annotation) in "
            f"{hmac['duration_s']} s; {hmac['tokens_signed']} tokens over {hmac['kids_signed']} kids"
        )
        lines.append(f"{_verification_header(10)}  library")
        for name, figures in hmac["clients"].items():
            lines.append(f"{_verification_row(name, figures, 10)}  {figures['library']}")
    negative = data.get("envoy_negative")
    if negative:
        lines.append("")
        lines.append(
            f"Envoy with cache_duration > publishAhead (scale 1/{negative['scale']}: publishAhead "
            f"{negative['spec']['rotation']['publishAhead']}, {negative['rotations']} rotations):"
        )
        for name, figures in negative["clients"].items():
            lines.append(
                f"  {name} ({figures['cache_duration_s']:g} s here): {figures['failed']} failed / "
                f"{figures['verified']} verified; new key refused for {figures['new_key_refused_for_s']} s after it "
                f"started signing"
            )
        lines.append(f"  ShortTimeline: {negative['short_timeline_warnings'][:1]}")
    served_gate = data.get("served_gate")
    if served_gate:
        lines.append("")
        lines.append(format_served_gate(served_gate))
    matrix = data.get("matrix_markdown")
    if matrix:
        lines.append("")
        lines.append(matrix.rstrip())
    if "suite_wall_time_s" in data:
        lines.append(f"suite wall time: {data['suite_wall_time_s']} s (rotation run {rotation['duration_s'] if rotation else '-'} s, "
                     f"matrix {data.get('matrix_duration_s', '-')} s)")
    return "\n".join(lines)

