"""A reconcile that fails part way, against real API refusals: a ValidatingAdmissionPolicy bound
to the test's namespace refuses one of the operator's writes, as a cluster's policy, quota or
webhook would. Operators of their own, so their logs can be counted."""

from __future__ import annotations

import re
import time
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from .harness import OperatorProcess, Policies, wait_until
from .test_operator_resilience import solo  # noqa: F401 - the fixture: a namespace the session operator does not watch

FAILED = "reconcile of {namespace}/{name} failed"


class Refusal:
    """A ValidatingAdmissionPolicy (and its binding) refusing ``operations`` on ``resources`` in
    one namespace, for every user; deleted on exit."""

    def __init__(self, api_client, namespace: str, group: str, resources: list[str], expression: str, message: str):
        self.api = client.AdmissionregistrationV1Api(api_client)
        self.name = f"refuse-{uuid.uuid4().hex[:8]}"
        self.api.create_validating_admission_policy({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": self.name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [
                    {"apiGroups": [group], "apiVersions": ["*"], "operations": ["UPDATE"], "resources": resources}]},
                "validations": [{"expression": expression, "message": message, "reason": "Forbidden"}],
            },
        })
        self.api.create_validating_admission_policy_binding({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": self.name},
            "spec": {"policyName": self.name, "validationActions": ["Deny"], "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}},
        })

    def wait_effective(self, probe) -> None:
        """Until ``probe`` (a write the policy refuses) is refused: policies take effect a moment after they are made."""
        def refused() -> bool:
            try:
                probe()
            except ApiException as error:
                return error.status in (403, 422) and "denied request" in (error.body or "")
            return False
        wait_until(refused, 30, f"{self.name} to take effect", interval=0.2)

    def wait_lifted(self, probe) -> None:
        """Until ``probe`` passes again after :meth:`delete`."""
        def passes() -> bool:
            try:
                probe()
            except ApiException as error:
                if "denied request" not in (error.body or ""):
                    raise
                return False
            return True
        wait_until(passes, 30, f"{self.name} to be lifted", interval=0.2)

    def delete(self) -> None:
        self.api.delete_validating_admission_policy_binding(self.name)
        self.api.delete_validating_admission_policy(self.name)


def _condition(policies: Policies, name: str, kind: str = "Ready") -> dict:
    return next((c for c in (policies.get(name).get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def _backoffs(log: str, namespace: str, name: str) -> list[int]:
    """The backoff each logged failure announced, in seconds (the log says "retrying in 0:00:04")."""
    pattern = re.escape(FAILED.format(namespace=namespace, name=name)) + r".*; retrying in (\d+):(\d\d):(\d\d)"
    return [int(h) * 3600 + int(m) * 60 + int(s) for h, m, s in re.findall(pattern, log)]


@pytest.fixture
def own_operator(solo, kubeconfig, tmp_path):  # noqa: F811 - solo is the imported fixture
    process = OperatorProcess(kubeconfig, tmp_path / "operator.log", extra_args=["--namespace", solo.namespace]).start()
    yield process
    process.stop()


def test_a_refused_status_write_still_posts_the_events_of_the_writes_before_it_and_backs_off(solo, own_operator, api_client):  # noqa: F811
    """Finding 8: an exception threw the reconcile's Outcome away, so the Events of the writes it
    had made were never posted, the record of those writes was lost (their echoes woke the loop
    and cut the backoff short), and a persistent error reached neither status nor Events."""
    solo.create("refused", {"algorithm": "ES256"})
    solo.wait_ready("refused")
    refusal = Refusal(api_client, solo.namespace, "signingkeys.dev", ["signingkeypolicies/status"], "false",
                      "this test refuses every status write")
    try:
        generation = solo.get("refused")["metadata"]["generation"]
        refusal.wait_effective(lambda: solo.objects.patch_namespaced_custom_object_status(
            "signingkeys.dev", "v1alpha1", solo.namespace, "signingkeypolicies", "refused",
            {"status": {"observedGeneration": generation}}))
        solo.annotate("refused", {"signingkeys.dev/rotate": "after-the-refusal"})

        # The rotation's writes were made (key Secret, ConfigMap, the handled annotation) before
        # the status write was refused: their Events are posted all the same.
        wait_until(lambda: "KeyPublished" in solo.event_reasons("refused"), 30, "the new key's KeyPublished Event")
        assert len(solo.key_secrets("refused")) == 2
        wait_until(lambda: "ReconcileFailed" in solo.event_reasons("refused"), 30, "the ReconcileFailed Event", interval=0.5)
        warning = next(e for e in solo.events("refused") if e.reason == "ReconcileFailed")
        assert warning.type == "Warning" and "this test refuses every status write" in warning.message

        # Spaced by the backoff (1, 2, 4, 8, 16 s, each with up to 50% jitter): about 20 s of
        # failing holds at most five attempts; echoes of the operator's own writes waking the
        # loop would make many more.
        time.sleep(20)
        log = own_operator.logs()
        backoffs = _backoffs(log, solo.namespace, "refused")
        assert 3 <= len(backoffs) <= 7, backoffs
        assert backoffs == [2 ** i for i in range(len(backoffs))], backoffs
        assert solo.event_reasons("refused").count("ReconcileFailed") == 1  # one Event for the one error, not one per retry
    finally:
        refusal.delete()
    refusal.wait_lifted(lambda: solo.objects.patch_namespaced_custom_object_status(
        "signingkeys.dev", "v1alpha1", solo.namespace, "signingkeypolicies", "refused", {"status": {"observedGeneration": generation}}))

    solo.annotate("refused", {"example.com/nudge": "the refusal is gone"})  # wakes the loop now, not at the next backoff
    wait_until(lambda: solo.get("refused")["status"].get("nextKid"), 30, "the status written again")
    assert _condition(solo, "refused")["reason"] == "KeysPublished"


def test_a_persistently_refused_configmap_update_is_reported_as_reconcile_failed(solo, own_operator, api_client):  # noqa: F811
    """Finding 8: the policy kept saying Ready=True while every reconcile failed."""
    solo.create("blocked", {"algorithm": "ES256"})
    solo.wait_ready("blocked")
    refusal = Refusal(api_client, solo.namespace, "", ["configmaps"], "object.metadata.name != 'blocked-jwks'",
                      "this test refuses updates of ConfigMap blocked-jwks")
    try:
        refusal.wait_effective(lambda: solo.core.patch_namespaced_config_map(
            "blocked-jwks", solo.namespace, {"metadata": {"annotations": {"example.com/probe": uuid.uuid4().hex}}}))
        solo.annotate("blocked", {"signingkeys.dev/rotate": "blocked"})
        wait_until(lambda: _condition(solo, "blocked").get("reason") == "ReconcileFailed", 30, "Ready=False, ReconcileFailed")
        ready = _condition(solo, "blocked")
        assert ready["status"] == "False"
        assert "ConfigMap blocked-jwks" in ready["message"] and "403" in ready["message"]
        assert "PRIVATE KEY" not in ready["message"]
        assert _condition(solo, "blocked", "Degraded")["reason"] == "ReconcileFailed"
        assert _condition(solo, "blocked", "RevocationsPublished")["status"] == "True"  # the other conditions stay
        wait_until(lambda: "ReconcileFailed" in solo.event_reasons("blocked"), 15, "the ReconcileFailed Event", interval=0.5)
        assert len(solo.key_secrets("blocked")) == 2  # the write before the refused one stays made
    finally:
        refusal.delete()
    refusal.wait_lifted(lambda: solo.core.patch_namespaced_config_map(
        "blocked-jwks", solo.namespace, {"metadata": {"annotations": {"example.com/probe": uuid.uuid4().hex}}}))

    solo.annotate("blocked", {"example.com/nudge": "the refusal is gone"})
    status = solo.wait_ready("blocked")["status"]
    assert status["nextKid"] in solo.jwks_kids("blocked-jwks")
    assert _condition(solo, "blocked")["reason"] == "KeysPublished"


def test_a_copied_key_secret_is_reported_on_the_policy_and_left_in_place(policies, operator):
    """Finding 12: two Secrets holding one kid made the planner raise InconsistentKeysError,
    which was only logged: the policy went on saying Ready=True while nothing moved."""
    policies.create("copied", {"algorithm": "ES256"})
    kid = policies.wait_ready("copied")["status"]["activeKid"]
    (original,) = policies.key_secrets("copied")
    copy = client.V1Secret(
        metadata=client.V1ObjectMeta(
            name="copied-key-7", labels={**original.metadata.labels, "signingkeys.dev/serial": "7"},
            annotations=original.metadata.annotations, owner_references=original.metadata.owner_references),
        type=original.type, data=original.data)
    policies.core.create_namespaced_secret(policies.namespace, copy)

    wait_until(lambda: _condition(policies, "copied").get("status") == "False", 30, "Ready=False")
    ready = _condition(policies, "copied")
    assert ready["reason"] == "KeySecretInvalid"
    assert f"holds key {kid}" in ready["message"] and "copied-key-1" in ready["message"] and "copied-key-7" in ready["message"]
    wait_until(lambda: policies.event_reasons("copied").count("KeySecretInvalid") == 2, 15, "one Warning per copy", interval=0.5)
    assert {s.metadata.name for s in policies.key_secrets("copied")} == {"copied-key-1", "copied-key-7"}  # left in place
    assert policies.jwks_kids("copied-jwks") == [kid]

    policies.core.delete_namespaced_secret("copied-key-7", policies.namespace)
    assert policies.wait_ready("copied")["status"]["activeKid"] == kid
