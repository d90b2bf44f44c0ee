"""handlers.PolicyRunner's bookkeeping: what it remembers about objects goes when they go.

The runner here talks to an API server that is not there (a closed loopback port): its loops'
reconciles fail and back off, which is all these tests need; what they check is the runner's
own memory, as the watch handlers leave it."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s_client

from signing_key_operator.controller.handlers import PolicyRunner
from signing_key_operator.k8s.api import KubeApi
from signing_key_operator.k8s.objects import POLICY_LABEL
from signing_key_operator.controller.metrics import OperatorMetrics
from signing_key_operator.controller.settings import OperatorSettings
from tests.redis_server import free_port

POLICY = {"apiVersion": "signingkeys.dev/v1alpha1", "kind": "SigningKeyPolicy",
          "metadata": {"name": "api", "namespace": "auth", "uid": "policy-uid", "resourceVersion": "1", "generation": 1},
          "spec": {"algorithm": "ES256"}}


@pytest.fixture
async def runner():
    configuration = k8s_client.Configuration()
    configuration.host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    api = KubeApi(configuration)
    runner = PolicyRunner(OperatorSettings(metrics_port=None, health_port=None), api, OperatorMetrics())
    yield runner
    await runner.stop()
    await api.close()


def owned(name: str, resource_version: str) -> dict:
    return {"metadata": {"name": name, "namespace": "auth", "labels": {POLICY_LABEL: "api"}, "resourceVersion": resource_version}}


def revocation(resource_version: str) -> dict:
    return {"metadata": {"name": "leaked", "namespace": "auth", "uid": "revocation-uid", "resourceVersion": resource_version},
            "spec": {"policyName": "api", "jti": "j1"}, "status": {}}


async def test_the_record_of_an_own_write_goes_when_its_object_is_deleted(runner):
    """Finding 12: PolicyLoop.own_versions kept a record for every key Secret the policy ever had."""
    runner.policy_changed(POLICY)
    loop = runner.loops[("auth", "api")]
    for serial in range(1, 50):  # what a long-lived policy's loop has recorded: one per key, and its TokenRevocation
        loop.own_versions[("Secret", f"api-key-{serial}")] = str(serial)
    loop.own_versions[("TokenRevocation", "leaked")] = "7"
    for serial in range(1, 49):  # every key but the newest was removed again
        runner.owned_object_changed("Secret", owned(f"api-key-{serial}", str(serial)), deleted=True)
    await runner.revocation_changed(revocation("7"), deleted=True)
    assert loop.own_versions == {("Secret", "api-key-49"): "49"}


async def test_a_revocation_marked_orphan_is_forgotten_once_its_policy_has_a_loop(runner):
    """Finding 12: `orphans` kept a TokenRevocation marked PolicyNotFound for as long as a loop
    existed for its policy, even after the TokenRevocation was deleted."""
    runner.orphans["revocation-uid"] = "3"  # marked while the policy did not exist
    runner.policy_changed(POLICY)  # the policy is created
    await runner.revocation_changed(revocation("4"), deleted=False)  # its loop reports on it
    assert "revocation-uid" not in runner.orphans

    runner.orphans["revocation-uid"] = "5"
    await runner.revocation_changed(revocation("5"), deleted=True)
    assert runner.orphans == {}


async def test_a_version_of_our_own_that_carries_a_new_request_wakes_the_loop(runner):
    """A watch restarted after its resourceVersion expired lists only the latest version: when
    that is the status patch we wrote just after a user's annotation, the annotation arrives in
    what looks like our own echo."""
    runner.policy_changed(POLICY)
    loop = runner.loops[("auth", "api")]
    loop.task.cancel()  # judge notice() alone, with no reconcile consuming the wake
    with pytest.raises(BaseException):
        await loop.task
    loop.reconciled_request = (1, None, None)
    loop.own_versions[("SigningKeyPolicy", "api")] = "9"
    ours = {**POLICY, "metadata": {**POLICY["metadata"], "resourceVersion": "9"}}

    loop.wake.clear()
    runner.policy_changed(ours)
    assert not loop.wake.is_set()  # our own write, asking nothing new: an echo

    annotated = {**ours, "metadata": {**ours["metadata"], "annotations": {"signingkeys.dev/revoke-kid": "kid-1234567890"}}}
    runner.policy_changed(annotated)
    assert loop.wake.is_set()

    loop.wake.clear()
    respecced = {**ours, "metadata": {**ours["metadata"], "generation": 2}}
    runner.policy_changed(respecced)
    assert loop.wake.is_set()
