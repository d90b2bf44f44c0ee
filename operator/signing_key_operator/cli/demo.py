"""`signing-key-operator demo`: the whole product on a laptop in about a minute.

Starts the dev control plane, installs the CRD, runs the operator and the JWKS sidecar in the
background, applies a policy with a fast timeline, prints the JWKS URL, then requests one
rotation and narrates it as a verifier sees it: the new key is served first, the operator reads
it back from the sidecar (``spec.jwks.servedAt``), and it signs only publishAhead after it was
seen served. `dev-cluster down` stops everything it started.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path


from ..devcluster.cluster import DevCluster
from ..devcluster.crd import CRD_DIR, install_crds
from ..k8s.objects import parse_time
from ..sign import Signer
from ..verify import RevokedToken, Verifier
from .revoke_token import revoke

DEMO_NAMESPACE = "demo"
DEMO_POLICY = "demo-tokens"
DEMO_SPEC = {
    "algorithm": "ES256",
    # A fast timeline so a rotation is seen within the demo; production policies rotate in
    # days and publish hours ahead (see examples/).
    "rotation": {"interval": "10m", "publishAhead": "15s"},
    "tokenLifetime": "1m",
    "clockSkew": "10s",
    "jwks": {"maxAge": "5s"},
}
PROCESSES_FILE = "demo-processes.json"


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]


def _start_background(cluster: DevCluster, name: str, argv: list[str]) -> int:
    log = open(cluster.logs / f"{name}.log", "ab")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    path = cluster.dir / PROCESSES_FILE
    recorded = json.loads(path.read_text()) if path.exists() else {}
    recorded[name] = process.pid
    path.write_text(json.dumps(recorded))
    return process.pid


def stop_demo_processes(cluster: DevCluster) -> list[str]:
    """Stop what `demo` started (called by `dev-cluster down`)."""
    import signal

    path = cluster.dir / PROCESSES_FILE
    if not path.exists():
        return []
    stopped = []
    for name, pid in json.loads(path.read_text()).items():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"signing_key_operator" in cmdline or b"signing-key-operator" in cmdline:
            os.kill(pid, signal.SIGTERM)
            stopped.append(name)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    path.unlink()
    return stopped


def _served(url: str) -> tuple[list[str], str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return [key["kid"] for key in json.loads(reply.read())["keys"]], reply.headers.get("ETag", "")
    except OSError:
        return [], ""


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"[demo] gave up after {timeout:.0f}s waiting for {what}; see .devcluster/logs/")


def run_demo(directory: Path) -> int:
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    from ..devcluster.tools import ensure_tools

    ensure_tools()
    cluster = DevCluster(directory)
    _say("starting the control plane (etcd, kube-apiserver, kube-controller-manager)")
    cluster.up()
    stop_demo_processes(cluster)
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    core = client.CoreV1Api(api)
    objects = client.CustomObjectsApi(api)

    _say(f"installing the CRDs from {CRD_DIR}")
    install_crds(api)

    metrics_port, sidecar_port = _port(18080), _port(18443)
    kubeconfig = str(cluster.kubeconfig)
    _say(f"starting the operator (log: {cluster.logs / 'operator.log'}, metrics: http://127.0.0.1:{metrics_port}/metrics)")
    _start_background(cluster, "operator", [
        sys.executable, "-m", "signing_key_operator", "run", "--kubeconfig", kubeconfig,
        "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1", "--health-port", "0",
        "--secret-propagation", "5s", "--served-check-interval", "1s",
    ])

    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=DEMO_NAMESPACE)))
    except ApiException as error:
        if error.status != 409:
            raise
    url = f"http://127.0.0.1:{sidecar_port}/.well-known/jwks.json"
    # The operator reads the set back where verifiers fetch it, and a new key's publishAhead
    # starts only once it is served there.
    spec = {**DEMO_SPEC, "jwks": {**DEMO_SPEC["jwks"], "servedAt": [url]}}
    policy = {"apiVersion": "signingkeys.dev/v1alpha1", "kind": "SigningKeyPolicy",
              "metadata": {"name": DEMO_POLICY, "namespace": DEMO_NAMESPACE}, "spec": spec}
    _say(f"applying SigningKeyPolicy {DEMO_NAMESPACE}/{DEMO_POLICY}: {json.dumps(spec)}")
    try:
        objects.create_namespaced_custom_object("signingkeys.dev", "v1alpha1", DEMO_NAMESPACE, "signingkeypolicies", policy)
    except ApiException as error:
        if error.status != 409:
            raise

    def ready():
        status = objects.get_namespaced_custom_object("signingkeys.dev", "v1alpha1", DEMO_NAMESPACE, "signingkeypolicies", DEMO_POLICY).get("status") or {}
        return status.get("activeKid") if any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []) else None

    active = _wait(ready, 60, "the policy to be Ready")
    _say(f"policy Ready; active kid {active}")

    _say(f"starting the JWKS sidecar (watch mode, log: {cluster.logs / 'sidecar.log'})")
    _start_background(cluster, "sidecar", [
        sys.executable, "-m", "signing_key_operator", "serve", "--configmap", f"{DEMO_NAMESPACE}/{DEMO_POLICY}-jwks",
        "--revocations-configmap", f"{DEMO_NAMESPACE}/{DEMO_POLICY}-revocations", "--kubeconfig", kubeconfig, "--host", "127.0.0.1", "--port", str(sidecar_port),
        "--issuer", f"http://127.0.0.1:{sidecar_port}",
    ])
    kids, etag = _wait(lambda: (lambda served: served if served[0] else None)(_served(url)), 30, "the sidecar to serve the JWKS")
    _say(f"JWKS served at {url}: kids {kids} (ETag {etag})")

    value = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    _say(f"requesting one rotation: kubectl annotate skp/{DEMO_POLICY} signingkeys.dev/rotate={value} --overwrite")
    objects.patch_namespaced_custom_object("signingkeys.dev", "v1alpha1", DEMO_NAMESPACE, "signingkeypolicies", DEMO_POLICY,
                                           {"metadata": {"annotations": {"signingkeys.dev/rotate": value}}})
    requested = time.monotonic()
    kids = _wait(lambda: (lambda served: served[0] if len(served[0]) > len(kids) else None)(_served(url)), 30, "the new key to be served")
    new_kid = next(kid for kid in kids if kid != active)
    _say(f"+{time.monotonic() - requested:.1f}s new key {new_kid} is served (published, not signing yet): kids {kids}")

    def first_served() -> dict | None:
        # The key Secret's record, not status: status shows whole seconds.
        secrets = core.list_namespaced_secret(DEMO_NAMESPACE, label_selector=f"signingkeys.dev/policy={DEMO_POLICY},signingkeys.dev/component=key").items
        record = next((s.metadata.annotations for s in secrets if s.metadata.annotations.get("signingkeys.dev/kid") == new_kid), {})
        return record if record.get("signingkeys.dev/first-served") else None

    record = _wait(first_served, 30, "the operator to see the new key served")
    seen_after = (parse_time(record["signingkeys.dev/first-served"]) - parse_time(record["signingkeys.dev/created"])).total_seconds()
    _say(f"+{time.monotonic() - requested:.1f}s the operator read it back from {url}: seen served {seen_after:.1f}s after it was "
         f"published (first-served on its key Secret); it signs publishAhead ({DEMO_SPEC['rotation']['publishAhead']}) after that")

    def signing_secret() -> dict[str, str]:
        secret = core.read_namespaced_secret(f"{DEMO_POLICY}-signing", DEMO_NAMESPACE)
        return {key: base64.b64decode(value).decode() for key, value in secret.data.items()}

    _wait(lambda: signing_secret()["kid"] == new_kid, 60, "the new key to start signing")
    _say(f"+{time.monotonic() - requested:.1f}s key {new_kid} now signs (Secret {DEMO_POLICY}-signing); "
         f"the old key {active} stays served for its tokens' lifetime")

    # As an application signs: the library reads the signing Secret (here through the API; a
    # pod mounts it) and sets kid, iat, exp (the policy's tokenLifetime) and a random jti.
    signer = Signer.from_secret(DEMO_NAMESPACE, f"{DEMO_POLICY}-signing", api_client=api)
    token = signer.sign({"sub": "demo-user"})
    base = f"http://127.0.0.1:{sidecar_port}"
    verifier = Verifier(f"{base}/.well-known/jwks.json", revocations_url=f"{base}/revocations.json")
    claims = verifier.verify(token)
    _say(f"the signer library made a token with {new_kid} (sub={claims['sub']}, jti={claims['jti']}, "
         f"lives {claims['exp'] - claims['iat']}s: the policy's tokenLifetime); it verifies")
    _say("revoking it: signing-key-operator revoke-token -n "
         f"{DEMO_NAMESPACE} --policy {DEMO_POLICY} --reason demo <token>")
    _say(revoke(api, DEMO_NAMESPACE, DEMO_POLICY, token, reason="demo"))
    revoked = time.monotonic()
    _wait(lambda: claims["jti"] in json.loads(urllib.request.urlopen(f"{base}/revocations.json", timeout=5).read())["jti"],
          30, "the revocation to be served")
    _say(f"+{time.monotonic() - revoked:.1f}s {base}/revocations.json lists jti {claims['jti']}")

    def refusal() -> str | None:
        try:
            verifier.verify(token)
        except RevokedToken as error:
            return str(error)
        return None

    reason = _wait(refusal, 30, "the verifier to refuse the token")
    _say(f"+{time.monotonic() - revoked:.1f}s the verifier refuses it ({reason}) once its cached copy is older than "
         "max-age; until the token would have expired anyway")
    bin_dir = Path(sys.executable).parent
    print(f"""
The demo keeps running. Try:
  curl -si {url}
  curl -s http://127.0.0.1:{sidecar_port}/.well-known/openid-configuration
  curl -s http://127.0.0.1:{sidecar_port}/revocations.json
  export KUBECONFIG={kubeconfig} PATH={bin_dir}:$PATH   # kubectl, and its kubectl-signingkeys plugin
  kubectl signingkeys status {DEMO_POLICY} -n {DEMO_NAMESPACE}      # the keys on a timeline, conditions, Events
  kubectl signingkeys rotate {DEMO_POLICY} -n {DEMO_NAMESPACE}
  kubectl signingkeys revoke-kid {DEMO_POLICY} {new_kid} -n {DEMO_NAMESPACE}
  kubectl get skp,tokenrevocations -n {DEMO_NAMESPACE}
  kubectl describe skp -n {DEMO_NAMESPACE} {DEMO_POLICY}
Stop everything with: make down
""", flush=True)
    return 0
