"""A policy writes only objects it owns (finding 1 of issue 16): an object of the name it would
write that is not its own (a user's ConfigMap or Secret, another policy's objects, a Secret in
the way of a key Secret's name) is left exactly as it is, the policy says so (Ready=False,
NameConflict, a Warning Event naming the object and its owner), and it picks up again once the
name is free."""

from __future__ import annotations

import uuid

import pytest
from kubernetes import client

from .harness import FAST_SPEC, OperatorProcess, Policies, wait_until

SLOW_SPEC = {**FAST_SPEC, "rotation": {"interval": "1h", "publishAhead": "4s"}}


@pytest.fixture
def solo(api_client, signingkeypolicy_crd):
    """A namespace the session operator does not watch, for an operator that looks again at
    a name conflict every second (the default is half a minute)."""
    name = f"conflict-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield Policies(api_client, name)
    core.delete_namespace(name)


@pytest.fixture
def quick_operator(solo, kubeconfig, tmp_path):
    process = OperatorProcess(
        kubeconfig, tmp_path / "operator.log", extra_args=["--namespace", solo.namespace, "--name-conflict-recheck", "1s"]
    ).start()
    yield process
    assert process.process.poll() is None, "the operator exited:\n" + process.logs()[-3000:]
    process.stop()


def _ready(policies: Policies, name: str) -> dict | None:
    """The Ready condition of the policy, once it has one."""
    conditions = (policies.get(name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), None)


def _wait_for_conflict(policies: Policies, name: str) -> dict:
    return wait_until(lambda: (lambda c: c if c and c["reason"] == "NameConflict" else None)(_ready(policies, name)),
                      30, f"policy {name} to report NameConflict")


def _conflict_messages(policies: Policies, name: str) -> list[str]:
    return [e.message for e in policies.events(name) if e.reason == "NameConflict" and e.type == "Warning"]


def _stored(core_read, name: str, namespace: str) -> dict:
    """Everything of an object a write could change, resourceVersion included."""
    obj = core_read(name, namespace).to_dict()
    metadata = obj["metadata"]
    return {"data": obj.get("data"), "resource_version": metadata["resource_version"], "labels": metadata["labels"],
            "annotations": metadata["annotations"], "owner_references": metadata["owner_references"]}


def test_a_users_configmap_and_secret_named_by_a_policy_are_left_byte_identical(policies, operator):
    """finding 1: the operator replaced a user's ConfigMap and set itself as its owner (so that
    deleting the policy let the garbage collector delete the user's object)."""
    core = policies.core
    core.create_namespaced_config_map(policies.namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="app-config"), data={"database_url": "postgres://db:5432/app"}))
    core.create_namespaced_secret(policies.namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="app-secret"), string_data={"password": "hunter2"}))
    configmap_before = _stored(core.read_namespaced_config_map, "app-config", policies.namespace)
    secret_before = _stored(core.read_namespaced_secret, "app-secret", policies.namespace)

    policies.create("grabby", {**SLOW_SPEC, "jwksConfigMapName": "app-config", "signingSecretName": "app-secret"})

    ready = _wait_for_conflict(policies, "grabby")
    assert ready["status"] == "False"
    assert "ConfigMap app-config" in ready["message"] and "Secret app-secret" in ready["message"]
    messages = wait_until(lambda: (lambda m: m if len(m) == 2 else None)(_conflict_messages(policies, "grabby")),
                          15, "a NameConflict Warning for each object")
    assert any("ConfigMap app-config" in m and "owner: no owner" in m and "spec.jwksConfigMapName" in m for m in messages)
    assert any("Secret app-secret" in m and "owner: no owner" in m and "spec.signingSecretName" in m for m in messages)
    assert _stored(core.read_namespaced_config_map, "app-config", policies.namespace) == configmap_before
    assert _stored(core.read_namespaced_secret, "app-secret", policies.namespace) == secret_before
    assert configmap_before["owner_references"] is None
    # Nothing else was written for the keys: no key Secret waits unpublished.
    assert policies.key_secrets("grabby") == []
    assert policies.get("grabby")["status"].get("activeKid") is None
    assert policies.condition("grabby", "Degraded") == "True"


def test_a_copied_policy_keeping_anothers_object_names_takes_none_of_them_over(policies, operator):
    """finding 1: a copy that kept the first policy's explicit jwksConfigMapName,
    signingSecretName and revocation configMapName silently took the first one's objects over."""
    names = {"jwksConfigMapName": "shared-jwks", "signingSecretName": "shared-signing",
             "revocation": {"configMapName": "shared-revocations"}}
    policies.create("first", {**SLOW_SPEC, **names})
    first_kid = policies.wait_ready("first")["status"]["activeKid"]
    core = policies.core
    before = {
        "jwks": _stored(core.read_namespaced_config_map, "shared-jwks", policies.namespace),
        "revocations": _stored(core.read_namespaced_config_map, "shared-revocations", policies.namespace),
        "signing": _stored(core.read_namespaced_secret, "shared-signing", policies.namespace),
    }

    policies.create("copy", {**SLOW_SPEC, **names})

    ready = _wait_for_conflict(policies, "copy")
    for what in ("ConfigMap shared-jwks", "Secret shared-signing", "ConfigMap shared-revocations"):
        assert what in ready["message"]
    messages = wait_until(lambda: (lambda m: m if len(m) == 3 else None)(_conflict_messages(policies, "copy")),
                          15, "a NameConflict Warning for each of the first policy's objects")
    assert all("owner: SigningKeyPolicy/first" in m for m in messages), messages
    assert policies.condition("copy", "RevocationsPublished") == "False"
    after = {
        "jwks": _stored(core.read_namespaced_config_map, "shared-jwks", policies.namespace),
        "revocations": _stored(core.read_namespaced_config_map, "shared-revocations", policies.namespace),
        "signing": _stored(core.read_namespaced_secret, "shared-signing", policies.namespace),
    }
    assert after == before
    assert policies.condition("first") == "True"
    assert policies.get("first")["status"]["activeKid"] == first_kid
    assert policies.key_secrets("copy") == []


def test_a_users_secret_in_the_way_of_a_key_secret_is_neither_adopted_nor_overwritten(policies, operator):
    """finding 1, key Secrets: a Secret carrying a policy's key labels but not owned by it (here
    a copy of another policy's key) was read as that policy's key, signed with, and relabelled."""
    policies.create("origin", SLOW_SPEC)
    policies.wait_ready("origin")
    (original,) = policies.key_secrets("origin")
    labels = {**original.metadata.labels, "signingkeys.dev/policy": "keyed"}
    policies.core.create_namespaced_secret(policies.namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="keyed-key-1", labels=labels, annotations=original.metadata.annotations),
        type=original.type, data=original.data))
    before = _stored(policies.core.read_namespaced_secret, "keyed-key-1", policies.namespace)

    policies.create("keyed", SLOW_SPEC)

    ready = _wait_for_conflict(policies, "keyed")
    assert "Secret keyed-key-1" in ready["message"] and "owner: no owner" in ready["message"]
    wait_until(lambda: _conflict_messages(policies, "keyed"), 15, "the NameConflict Warning")
    assert _stored(policies.core.read_namespaced_secret, "keyed-key-1", policies.namespace) == before
    assert policies.secret_data("keyed-signing") is None
    assert policies.jwks("keyed-jwks") is None


def test_deleting_the_object_in_the_way_lets_the_policy_resume(solo, quick_operator):
    """finding 1: once the user's ConfigMap is gone, the policy publishes its JWKS under that
    name, owned by the policy."""
    solo.core.create_namespaced_config_map(solo.namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="app-config"), data={"database_url": "postgres://db:5432/app"}))
    solo.create("patient", {**SLOW_SPEC, "jwksConfigMapName": "app-config"})
    _wait_for_conflict(solo, "patient")

    solo.core.delete_namespaced_config_map("app-config", solo.namespace)

    kid = solo.wait_ready("patient", timeout=30)["status"]["activeKid"]
    assert solo.jwks_kids("app-config") == [kid]
    owners = solo.core.read_namespaced_config_map("app-config", solo.namespace).metadata.owner_references
    assert [(o.kind, o.name, o.controller) for o in owners] == [("SigningKeyPolicy", "patient", True)]


def test_a_copied_policy_takes_over_once_the_first_policy_is_deleted(solo, quick_operator):
    """finding 1: two policies naming the same objects: the first keeps them; when it is deleted
    (and the garbage collector removes its objects) the second one makes its own."""
    names = {"jwksConfigMapName": "shared-jwks", "signingSecretName": "shared-signing"}
    solo.create("first", {**SLOW_SPEC, **names})
    first_kid = solo.wait_ready("first")["status"]["activeKid"]
    solo.create("second", {**SLOW_SPEC, **names})
    _wait_for_conflict(solo, "second")
    assert solo.jwks_kids("shared-jwks") == [first_kid]

    solo.delete("first")

    second_kid = solo.wait_ready("second", timeout=60)["status"]["activeKid"]
    assert second_kid != first_kid
    assert solo.jwks_kids("shared-jwks") == [second_kid]
    assert solo.secret_data("shared-signing")["kid"].decode() == second_kid
