"""Application pods for the node tests, as an application team would write them under the
restricted Pod Security Standard: our image, a policy's Secret mounted as a whole volume (never
subPath: a subPath mount never updates), no ServiceAccount token."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.conformance.clients import cache_root, missing_builds
from tests.conformance.driver import TOKEN_CLAIMS, library_token
from tests.integration.harness import wait_until

MOUNT = "/var/run/signing-key"

# The application: a token for the claims POSTed, from the key the mount holds now.
SIGNER_APP = f"""
import http.server, json
from signing_key_operator.sign import Signer

signer = Signer.from_directory({MOUNT!r})

class Sign(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        claims = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        try:
            status, body = 200, signer.sign(claims)
        except Exception as error:
            status, body = 503, f"{{type(error).__name__}}: {{error}}"
        body = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("", 8080), Sign).serve_forever()
"""

# A pod that only holds a Secret's volume, so the kubelet keeps it up to date (the verifiers read
# it from the node, where the kubelet writes it).
HOLDER_APP = "import time\nwhile True:\n    time.sleep(3600)\n"


def _pod(image: str, name: str, secret: str, command: list[str], ports: list[dict]) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "automountServiceAccountToken": False,  # the mounted Secret is all it reads
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "app", "image": image, "imagePullPolicy": "Never",
                "command": command,
                "ports": ports,
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "mounted", "mountPath": MOUNT, "readOnly": True}],
            }],
            "volumes": [{"name": "mounted", "secret": {"secretName": secret}}],
        },
    }


def signer_pod(image: str, name: str, secret: str) -> dict:
    """A pod signing with ``Signer.from_directory`` on ``secret`` (a signing Secret), on port 8080."""
    return _pod(image, name, secret, ["python", "-c", SIGNER_APP], [{"containerPort": 8080}])


def holder_pod(image: str, name: str, secret: str) -> dict:
    """A pod with ``secret`` mounted and nothing else to do."""
    return _pod(image, name, secret, ["python", "-c", HOLDER_APP], [])


class PodSigner:
    """sign(claims) through the pod's HTTP port, from this machine (the pod network's bridge)."""

    def __init__(self, url: str):
        self.url = url

    def sign(self, claims: dict) -> str:
        request = urllib.request.Request(self.url, data=json.dumps(claims).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.read().decode()
        except urllib.error.HTTPError as refused:
            raise RuntimeError(f"the signer pod refused: {refused.read().decode()}") from None


def require_verifier_builds() -> None:
    """Node tests never skip (conftest.py): missing verifier builds fail them with the reason."""
    missing = missing_builds()
    if missing:
        pytest.fail(f"the conformance verifiers are not built ({', '.join(missing)} missing under {cache_root()}): "
                    "run tests/conformance/setup.sh first (`make test` does)", pytrace=False)


def ready_signer(kube, namespace: str, pod: str) -> PodSigner:
    """The signer pod, once Ready and signing."""
    kube.kubectl("wait", "-n", namespace, f"pod/{pod}", "--for=condition=Ready", "--timeout=120s", timeout=150)
    pod_ip = kube.json("get", "pod", "-n", namespace, pod)["status"]["podIP"]
    pod_signer = PodSigner(f"http://{pod_ip}:8080/sign")
    wait_until(lambda: answers(pod_signer), 60, "the signer pod to sign")
    return pod_signer


def answers(pod_signer: PodSigner) -> bool:
    """Whether the pod signs a token now."""
    try:
        library_token(pod_signer.sign(TOKEN_CLAIMS), 0, "pod")
        return True
    except (OSError, RuntimeError):
        return False
