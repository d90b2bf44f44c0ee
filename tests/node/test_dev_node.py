"""The dev cluster's node itself: `status` shows it and its pods, pods reach the API server
through the `kubernetes` Service, and `down` leaves nothing on the machine (no container, shim,
network namespace, mount, KUBE-* chain or bridge), after which `up --node` starts it again.

Runs before test_helm_install.py (file order), on the session's node cluster; it brings the node
back up, with the images that were loaded, before it ends.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from signing_key_operator.devcluster.node import BRIDGE

from tests.integration.harness import wait_until

from .chart_release import Kube


def _machine_leftovers(node_dir: Path) -> dict[str, list[str]]:
    shims = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and str(node_dir).encode() in cmdline:
                shims.append(entry.name)
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if line.split()[4].startswith(str(node_dir))]
    chains = [line for save in ("iptables-save", "ip6tables-save")
              for line in subprocess.run([save], capture_output=True, text=True).stdout.splitlines() if "KUBE-" in line]
    bridge = subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True, text=True).returncode == 0
    logs = Path("/var/log/containers")
    log_links = [link.name for link in logs.iterdir() if str(link.resolve()).startswith(str(node_dir))] if logs.is_dir() else []
    return {"shims": shims, "mounts": mounts, "chains": chains, "bridge": [BRIDGE] if bridge else [], "log links": log_links}


def _cni_results() -> set[str]:
    results = Path("/var/lib/cni/results")
    return {path.name for path in results.iterdir()} if results.is_dir() else set()


def test_status_shows_the_node_and_pods_reach_the_api_server_through_the_kubernetes_service(node_cluster, kube: Kube):
    from signing_key_operator.devcluster.image import ensure_images

    images = ensure_images()
    node_cluster.node.import_image(images.app_archive, images.app_ref)
    namespace = "node-probe"
    kube.kubectl("create", "namespace", namespace)
    wait_until(lambda: kube.run("get", "serviceaccount", "default", "-n", namespace).returncode == 0, 60, "the default ServiceAccount")
    # A pod that calls the API server the way the operator does: KUBERNETES_SERVICE_HOST, the
    # projected token and CA; an anonymous /version answers with the server's version.
    script = "\n".join([
        "import os, ssl, urllib.error, urllib.request",
        "base = '/var/run/secrets/kubernetes.io/serviceaccount/'",
        "context = ssl.create_default_context(cafile=base + 'ca.crt')",
        "url = f\"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}/api/v1/namespaces/node-probe/pods\"",
        "request = urllib.request.Request(url, headers={'Authorization': 'Bearer ' + open(base + 'token').read()})",
        "try:",
        "    print(urllib.request.urlopen(request, context=context).status)",
        "except urllib.error.HTTPError as error:",
        "    print(error.code, error.read().decode())",
    ])
    kube.kubectl("run", "caller", "-n", namespace, "--image", images.app_ref, "--image-pull-policy=Never",
                 "--restart=Never", "--command", "--", "python", "-c", script)
    wait_until(lambda: kube.json("get", "pod", "caller", "-n", namespace)["status"].get("phase") in ("Succeeded", "Failed"),
               120, "the calling pod to finish", interval=0.5)
    pod = kube.json("get", "pod", "caller", "-n", namespace)
    logs = kube.logs(namespace, "caller")
    # 403 naming the pod's ServiceAccount is the answer hoped for: the request crossed the
    # Service to the API server, TLS verified against the projected CA, and the token
    # authenticated (the account may not list pods). A network or TLS failure is a traceback.
    assert pod["status"]["phase"] == "Succeeded" and logs.startswith("403 ") and "system:serviceaccount:node-probe:default" in logs, logs

    status = subprocess.run([sys.executable, "-m", "signing_key_operator", "dev-cluster", "status", "--dir", str(node_cluster.dir)],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    for name in ("kubelet", "containerd", "kube-scheduler", "kube-proxy"):
        assert f"{name:<24} running" in status.stdout, status.stdout
    assert "node sko-node" in status.stdout and "Ready=True" in status.stdout
    assert "node-probe/caller" in status.stdout, status.stdout
    kube.kubectl("delete", "namespace", namespace, "--wait=false")


def test_dev_cluster_image_prints_only_the_reference_and_loads_it_into_the_running_node(node_cluster):
    # The README's `ref=$(signing-key-operator dev-cluster image)` needs the reference alone on
    # stdout; progress goes to stderr.
    result = subprocess.run([sys.executable, "-m", "signing_key_operator", "dev-cluster", "image", "--dir", str(node_cluster.dir)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    ref = result.stdout.strip()
    assert ref.startswith("docker.io/library/signing-key-operator:dev-") and "\n" not in ref, result.stdout
    assert "loaded" in result.stderr
    assert ref in node_cluster.node.ctr("images", "list", "--quiet").stdout.split()


def test_down_leaves_nothing_on_the_machine_and_up_starts_the_node_again(node_cluster, kube: Kube):
    from signing_key_operator.devcluster.image import ensure_images

    images = ensure_images()
    node_cluster.node.import_image(images.app_archive, images.app_ref)
    results_before = _cni_results()
    kube.kubectl("create", "namespace", "node-down")
    wait_until(lambda: kube.run("get", "serviceaccount", "default", "-n", "node-down").returncode == 0, 60, "the default ServiceAccount")
    kube.kubectl("run", "sleeper", "-n", "node-down", "--image", images.app_ref, "--image-pull-policy=Never",
                 "--command", "--", "sleep", "infinity")
    kube.kubectl("wait", "--for=condition=Ready", "-n", "node-down", "pod/sleeper", "--timeout=120s")
    node_dir = node_cluster.node.dir
    before = _machine_leftovers(node_dir)
    assert all(before.values()), before
    netns = sorted(Path("/var/run/netns").glob("cni-*"))
    assert netns, "the pod has a network namespace"

    stopped = node_cluster.down()
    assert {"kubelet", "containerd", "kube-proxy", "kube-scheduler", "kube-apiserver", "etcd"} <= set(stopped), stopped
    assert _machine_leftovers(node_dir) == {"shims": [], "mounts": [], "chains": [], "bridge": [], "log links": []}
    assert _cni_results() <= results_before, "CNI results of the node's sandboxes left behind"
    assert not [path for path in netns if path.exists()], "network namespaces left behind"
    assert not node_dir.exists(), "the node's folder (images, containers, volumes) is removed"

    node_cluster.up(node=True)
    node_cluster.node.import_image(images.app_archive, images.app_ref)
    assert kube.json("get", "node", "sko-node")["status"]["conditions"]
