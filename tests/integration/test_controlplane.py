"""The harness is a real API server: behaviour a mock of the API would not have."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

WIDGET_GROUP = "foundation.test.signingkeys.dev"


def _configmap(name: str, **metadata) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, **metadata), data={"k": "v"})


def _wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def widget_crd(api_client):
    extensions = client.ApiextensionsV1Api(api_client)
    name = f"widgets.{WIDGET_GROUP}"
    body = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": WIDGET_GROUP,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object",
                        "required": ["size"],
                        "properties": {"size": {"type": "integer", "minimum": 1}},
                    }},
                }},
            }],
        },
    }
    extensions.create_custom_resource_definition(body)

    def established():
        crd = extensions.read_custom_resource_definition(name)
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    _wait_until(established, 30, "the CRD to be Established")
    yield WIDGET_GROUP
    extensions.delete_custom_resource_definition(name)


def test_custom_resource_violating_its_schema_is_refused_with_the_servers_message(api_client, namespace, widget_crd):
    objects = client.CustomObjectsApi(api_client)

    def widget(size):
        return {"apiVersion": f"{widget_crd}/v1", "kind": "Widget", "metadata": {"name": f"w{size}"}, "spec": {"size": size}}

    objects.create_namespaced_custom_object(widget_crd, "v1", namespace, "widgets", widget(3))
    with pytest.raises(ApiException) as refused:
        objects.create_namespaced_custom_object(widget_crd, "v1", namespace, "widgets", widget(0))
    assert refused.value.status == 422
    assert "spec.size" in refused.value.body
    assert "should be greater than or equal to 1" in refused.value.body


def test_watch_sees_added_modified_and_deleted(api_client, namespace):
    core = client.CoreV1Api(api_client)
    start = core.list_namespaced_config_map(namespace).metadata.resource_version
    core.create_namespaced_config_map(namespace, _configmap("watched"))
    core.patch_namespaced_config_map("watched", namespace, {"data": {"k": "changed"}})
    core.delete_namespaced_config_map("watched", namespace)

    seen = []
    stream = watch.Watch()
    for event in stream.stream(core.list_namespaced_config_map, namespace, resource_version=start, timeout_seconds=10):
        if event["object"].metadata.name == "watched":
            seen.append(event["type"])
        if event["type"] == "DELETED":
            stream.stop()
    assert seen == ["ADDED", "MODIFIED", "DELETED"]


def test_update_with_a_stale_resource_version_conflicts(api_client, namespace):
    core = client.CoreV1Api(api_client)
    created = core.create_namespaced_config_map(namespace, _configmap("guarded"))
    core.patch_namespaced_config_map("guarded", namespace, {"data": {"k": "newer"}})

    stale = created
    stale.data = {"k": "lost update"}
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_config_map("guarded", namespace, stale)
    assert conflict.value.status == 409
    assert core.read_namespaced_config_map("guarded", namespace).data == {"k": "newer"}


def test_identity_without_rights_is_forbidden_and_rbac_grants_exactly_what_it_says(dev_cluster, api_client, namespace):
    user = f"reader-{uuid.uuid4().hex[:6]}"
    limited = config.new_client_from_config(config_file=str(dev_cluster.kubeconfig_for(user)))
    limited_core = client.CoreV1Api(limited)
    client.CoreV1Api(api_client).create_namespaced_config_map(namespace, _configmap("visible"))

    with pytest.raises(ApiException) as forbidden:
        limited_core.read_namespaced_config_map("visible", namespace)
    assert forbidden.value.status == 403
    assert user in forbidden.value.body

    rbac = client.RbacAuthorizationV1Api(api_client)
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "read-configmaps"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
    })
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "read-configmaps"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    })
    assert _wait_until(
        lambda: _can_read(limited_core, "visible", namespace), 10, "the RoleBinding to take effect"
    ).data == {"k": "v"}
    with pytest.raises(ApiException) as still_forbidden:
        limited_core.list_namespaced_secret(namespace)
    assert still_forbidden.value.status == 403
    limited.close()


def _can_read(core, name, namespace):
    try:
        return core.read_namespaced_config_map(name, namespace)
    except ApiException as error:
        if error.status == 403:
            return None
        raise


def test_deleting_an_owner_garbage_collects_what_it_owns(api_client, namespace):
    core = client.CoreV1Api(api_client)
    owner = core.create_namespaced_config_map(namespace, _configmap("owner"))
    reference = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    core.create_namespaced_config_map(namespace, _configmap("owned", owner_references=[reference]))
    core.create_namespaced_config_map(namespace, _configmap("bystander"))

    core.delete_namespaced_config_map("owner", namespace)

    def owned_is_gone():
        names = {cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items}
        return "owned" not in names and names

    remaining = _wait_until(owned_is_gone, 60, "the garbage collector to delete the owned ConfigMap")
    assert "bystander" in remaining


def test_deleted_namespace_finishes_deleting(api_client):
    core = client.CoreV1Api(api_client)
    name = f"t-gone-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(name, _configmap("content"))
    core.delete_namespace(name)

    def namespace_is_gone():
        try:
            core.read_namespace(name)
        except ApiException as error:
            return error.status == 404
        return False

    _wait_until(namespace_is_gone, 60, "the namespace controller to finish deleting the namespace")


def test_dev_cluster_command_starts_reports_and_stops_everything(tmp_path):
    command = [sys.executable, "-m", "signing_key_operator", "dev-cluster"]
    directory = ["--dir", str(tmp_path / "cli")]
    up = subprocess.run(command + ["up"] + directory, capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == str(tmp_path / "cli" / "kubeconfig")

    status = subprocess.run(command + ["status"] + directory, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "kube-apiserver /readyz   ok" in status.stdout
    state = json.loads((tmp_path / "cli" / "state.json").read_text())
    pids = [state["etcd_pid"], state["apiserver_pid"], state["controller_manager_pid"]]
    assert all(_alive(pid) for pid in pids)

    down = subprocess.run(command + ["down"] + directory, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert "kube-apiserver" in down.stdout and "etcd" in down.stdout
    after = subprocess.run(command + ["status"] + directory, capture_output=True, text=True, timeout=60)
    assert after.returncode == 1 and "not running" in after.stdout
    assert not [pid for pid in pids if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_up_retries_with_fresh_ports_when_etcd_cannot_start(tmp_path, monkeypatch, capsys):
    import socket

    from signing_key_operator.devcluster import cluster as cluster_module

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    real = cluster_module._distinct_free_ports
    tries = []

    def ports(count):
        tries.append(count)
        return [busy, *real(count - 1)] if len(tries) == 1 else real(count)

    monkeypatch.setattr(cluster_module, "_distinct_free_ports", ports)
    cluster = cluster_module.DevCluster(tmp_path / "retry")
    try:
        state = cluster.up()
        assert len(tries) == 2 and state.etcd_port != busy
        assert "start-up failed (etcd exited during start-up" in capsys.readouterr().err
        assert cluster.ready()
    finally:
        cluster.down()
        taken.close()
