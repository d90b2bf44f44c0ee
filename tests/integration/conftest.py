from __future__ import annotations

import uuid

import pytest

from signing_key_operator.devcluster.crd import install_crds

REDIS_RESYNC = "2s"
"""How often the session operator checks Redis-backed policies (default 15 s): tests restart Redis."""

from .harness import OperatorProcess, Policies


@pytest.fixture(scope="session")
def signingkeypolicy_crd(api_client):
    """The CRDs from crds/ (SigningKeyPolicy and TokenRevocation), installed once per run
    (create, or replace when already there); the SigningKeyPolicy CRD's name."""
    return install_crds(api_client)[0]


@pytest.fixture(scope="session")
def operator(kubeconfig, api_client, signingkeypolicy_crd, tmp_path_factory):
    """One operator process for the run, handed out once it reconciles; tests that kill
    operators start their own."""
    # Tests that run operators of their own use namespaces outside this pattern.
    process = OperatorProcess(
        kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", extra_args=["--namespace", "t-*", "--redis-resync", REDIS_RESYNC]
    ).start().wait_serving().wait_reconciling(api_client, f"t-first-{uuid.uuid4().hex[:8]}")
    yield process
    process.stop()


@pytest.fixture
def policies(api_client, namespace, signingkeypolicy_crd) -> Policies:
    return Policies(api_client, namespace)
