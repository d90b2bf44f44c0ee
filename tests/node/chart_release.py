"""kubectl, helm and the chart's release on the node cluster, for tests/node and bench/node_bench.py."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.integration.harness import FAST_SPEC, REPO, wait_until

BIN = Path(sys.executable).parent
HELM = BIN / "helm"
KUBECTL = BIN / "kubectl"
CHART = REPO / "charts" / "signing-key-operator"


@dataclass
class Kube:
    """kubectl and helm against the node cluster."""

    kubeconfig: Path

    def run(self, *args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(KUBECTL), "--kubeconfig", str(self.kubeconfig), *args],
                              input=stdin, capture_output=True, text=True, timeout=timeout)

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120) -> str:
        result = self.run(*args, stdin=stdin, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def json(self, *args: str):
        return json.loads(self.kubectl(*args, "-o", "json"))

    def helm(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run([str(HELM), "--kubeconfig", str(self.kubeconfig), *args],
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr.strip()}\n{result.stdout}")
        return result.stdout

    def apply(self, namespace: str, document: dict) -> None:
        self.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(document))

    def pods(self, namespace: str, component: str) -> list[dict]:
        return self.json("get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/component={component}")["items"]

    def logs(self, namespace: str, pod: str, container: str | None = None, previous: bool = False) -> str:
        args = ["logs", "-n", namespace, pod]
        if container:
            args += ["-c", container]
        if previous:
            args.append("--previous")
        return self.kubectl(*args, check=False)

    def exec(self, namespace: str, pod: str, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        result = self.run("exec", "-n", namespace, pod, "--", *command, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl exec {pod} -- {' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def rollout(self, namespace: str, deployment: str, timeout: str = "180s") -> None:
        self.kubectl("rollout", "status", "-n", namespace, f"deployment/{deployment}", f"--timeout={timeout}", timeout=240)

    def service_url(self, namespace: str, service: str, path: str) -> str:
        svc = self.json("get", "service", "-n", namespace, service)
        return f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}{path}"


def served_kids(url: str) -> list[str] | None:
    """The kids a JWKS URL serves now, as a verifier fetching it sees them; None while it does
    not answer."""
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return [key["kid"] for key in json.loads(reply.read())["keys"]]
    except OSError:
        return None


def wait_served(url: str, predicate, timeout: float, what: str) -> tuple[list[str], float]:
    """Poll `url` until `predicate(kids)` holds; the kids and the seconds it took."""
    started = time.monotonic()
    kids = wait_until(lambda: (lambda k: k if k is not None and predicate(k) else None)(served_kids(url)),
                      timeout, what, interval=0.2)
    return kids, time.monotonic() - started


NAMESPACE = "sko-system"
RELEASE = "sko"
POLICY = "node-keys"
# Rotation by annotation only (the interval is long); a next key signs 5 s after it is published.
POLICY_SPEC = {**FAST_SPEC, "rotation": {"interval": "24h", "publishAhead": "5s"}, "tokenLifetime": "10s"}
# What an operator log must never say: a refusal by RBAC, a crash.
REFUSAL = re.compile(r"forbidden|unauthorized|not enough permissions|system:anonymous|\b403\b", re.IGNORECASE)
FILE_MODE_TIMEOUT = 240  # the kubelet refreshes ConfigMap volumes about once a minute


def _values(image: str, **overrides) -> list[str]:
    repository, _, tag = image.rpartition(":")
    values = {
        "image.repository": repository,
        "image.tag": tag,
        "image.pullPolicy": "Never",  # no registry here: the image is in the node's containerd
        "operator.secretPropagation": "2s",
        "jwksServer.enabled": "true",
        "jwksServer.policy": POLICY,
        "jwksServer.replicaCount": "1",
    }
    values.update({key: str(value) for key, value in overrides.items()})
    return [argument for key, value in values.items() for argument in ("--set", f"{key}={value}")]


class Release:
    def __init__(self, kube: Kube, image: str):
        self.kube = kube
        self.image = image
        self.fullname = RELEASE + "-signing-key-operator"
        self.jwks_service = self.fullname + "-jwks"

    def configure(self, **values) -> None:
        """helm upgrade --install with these values on top of the module's, then wait for both
        Deployments to roll out."""
        self.kube.helm("upgrade", "--install", RELEASE, str(CHART), "-n", NAMESPACE, "--wait", "--timeout", "4m",
                       *_values(self.image, **values))
        self.kube.rollout(NAMESPACE, self.fullname)
        if values.get("jwksServer.enabled", "true") == "true":
            self.kube.rollout(NAMESPACE, self.jwks_service)

    @property
    def jwks_url(self) -> str:
        return self.kube.service_url(NAMESPACE, self.jwks_service, "/.well-known/jwks.json")

    def policy(self) -> dict:
        return self.kube.json("get", "signingkeypolicy", "-n", NAMESPACE, POLICY)

    def signing_kid(self) -> str:
        secret = self.kube.json("get", "secret", "-n", NAMESPACE, f"{POLICY}-signing")
        return base64.b64decode(secret["data"]["kid"]).decode()

    def key_secrets(self) -> list[dict]:
        """The policy's key Secrets (the signing Secret has no state label)."""
        return self.kube.json("get", "secrets", "-n", NAMESPACE, "-l", f"signingkeys.dev/policy={POLICY},signingkeys.dev/state")["items"]

    def keys_by_state(self) -> dict[str, str]:
        return {s["metadata"]["annotations"]["signingkeys.dev/kid"]: s["metadata"]["labels"]["signingkeys.dev/state"]
                for s in self.key_secrets()}

    def published_kids(self) -> list[str]:
        configmap = self.kube.json("get", "configmap", "-n", NAMESPACE, f"{POLICY}-jwks")
        return [key["kid"] for key in json.loads(configmap["data"]["jwks.json"])["keys"]]

    def annotate(self, key: str, value: str) -> None:
        self.kube.kubectl("annotate", "--overwrite", "-n", NAMESPACE, "signingkeypolicy", POLICY, f"{key}={value}")

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            conditions = {c["type"]: c["status"] for c in self.policy().get("status", {}).get("conditions", [])}
            return conditions.get("Ready") == "True"

        wait_until(ready, timeout, f"policy {POLICY} Ready", interval=0.5)

    def rotate(self) -> str:
        """Annotate rotate and return the kid of the key it publishes."""
        before = set(self.keys_by_state())
        self.annotate("signingkeys.dev/rotate", uuid.uuid4().hex[:8])
        new = wait_until(lambda: set(self.keys_by_state()) - before, 60, "the rotation's new key Secret", interval=0.2)
        (kid,) = new
        return kid

    def operator_logs(self) -> str:
        return "\n".join(self.kube.logs(NAMESPACE, pod["metadata"]["name"]) for pod in self.kube.pods(NAMESPACE, "operator"))
