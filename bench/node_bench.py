"""Figures from the dev cluster's real node (kubelet, containerd, pods). Prints numbers; asserts
nothing.

    .venv/bin/python bench/node_bench.py volumes  [--objects 10 --rounds 2]
        how long a ConfigMap and a Secret update take to reach the files a running container
        mounts, with the kubelet's default settings (p50/p99): what the file-mode JWKS server
        and signers that mount the signing Secret live with
    .venv/bin/python bench/node_bench.py rotation [--rotations 10]
        `kubectl annotate ... rotate` -> the new kid served through the JWKS server's Service, in
        watch mode and in file mode, with the chart installed by helm (p50/p99)

Each run starts its own dev cluster with a node in a temporary folder (with the image built from
the Dockerfile, cached), and removes all of it at the end. The volume files are read on the host,
where the kubelet writes them: the container sees the same directory through a bind mount.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.integration.harness import wait_until  # noqa: E402
from tests.node.chart_release import NAMESPACE, POLICY, POLICY_SPEC, Kube, Release, served_kids  # noqa: E402

from signing_key_operator.devcluster.cluster import DevCluster  # noqa: E402
from signing_key_operator.devcluster.image import ensure_images  # noqa: E402
from signing_key_operator.devcluster.tools import ensure_tools  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def summary(name: str, values: list[float]) -> None:
    print(f"{name}: n={len(values)} p50={percentile(values, 0.5):.1f}s p99={percentile(values, 0.99):.1f}s "
          f"min={min(values):.1f}s max={max(values):.1f}s mean={statistics.mean(values):.1f}s", flush=True)


def node_cluster(folder: Path) -> tuple[DevCluster, str]:
    ensure_tools()
    cluster = DevCluster(folder)
    cluster.up(node=True)
    images = ensure_images()
    cluster.node.import_image(images.app_archive, images.app_ref)
    return cluster, images.app_ref


def volumes(kube: Kube, cluster: DevCluster, image: str, objects: int, rounds: int) -> None:
    namespace = "bench-volumes"
    kube.kubectl("create", "namespace", namespace)
    kube.kubectl("wait", "--for=jsonpath={.metadata.name}=default", "-n", namespace, "serviceaccount/default", "--timeout=60s")
    for index in range(objects):
        kube.kubectl("create", "configmap", f"cm{index}", "-n", namespace, "--from-literal=v=0")
        kube.kubectl("create", "secret", "generic", f"s{index}", "-n", namespace, "--from-literal=v=0")
    volumes_spec = [{"name": f"cm{i}", "configMap": {"name": f"cm{i}"}} for i in range(objects)]
    volumes_spec += [{"name": f"s{i}", "secret": {"secretName": f"s{i}"}} for i in range(objects)]
    kube.apply(namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "reader"},
        "spec": {
            "containers": [{"name": "reader", "image": image, "imagePullPolicy": "Never", "command": ["sleep", "infinity"],
                            "volumeMounts": [{"name": v["name"], "mountPath": f"/mnt/{v['name']}"} for v in volumes_spec]}],
            "volumes": volumes_spec,
            "terminationGracePeriodSeconds": 0,
        },
    })
    kube.kubectl("wait", "--for=condition=Ready", "-n", namespace, "pod/reader", "--timeout=120s")
    uid = kube.json("get", "pod", "-n", namespace, "reader")["metadata"]["uid"]
    pod_volumes = cluster.node.kubelet_dir / "pods" / uid / "volumes"
    lags: dict[str, list[float]] = {"configmap": [], "secret": []}
    for round_number in range(1, rounds + 1):
        pending: dict[Path, tuple[str, str, float]] = {}
        lock = threading.Lock()

        def watch_files() -> None:
            while True:
                with lock:
                    if not pending and done.is_set():
                        return
                    for path, (kind, value, written) in list(pending.items()):
                        try:
                            if path.read_text() == value:
                                lags[kind].append(time.time() - written)
                                del pending[path]
                        except OSError:
                            pass
                time.sleep(0.05)

        done = threading.Event()
        watcher = threading.Thread(target=watch_files)
        watcher.start()
        # Updates at random moments over a minute and a half, so their phases against the
        # kubelet's pod sync are spread the way production updates are.
        updates = [("configmap", f"cm{i}") for i in range(objects)] + [("secret", f"s{i}") for i in range(objects)]
        random.shuffle(updates)
        for kind, name in updates:
            time.sleep(random.uniform(0, 90 / len(updates) * 2))
            value = f"{round_number}-{time.time_ns()}"
            folder = "kubernetes.io~configmap" if kind == "configmap" else "kubernetes.io~secret"
            written = time.time()
            if kind == "configmap":
                kube.kubectl("patch", "configmap", name, "-n", namespace, "--type=merge", "-p", f'{{"data":{{"v":"{value}"}}}}')
            else:
                kube.kubectl("patch", "secret", name, "-n", namespace, "--type=merge", "-p", f'{{"stringData":{{"v":"{value}"}}}}')
            with lock:
                pending[pod_volumes / folder / name / "v"] = (kind, value, written)
        done.set()
        watcher.join(timeout=300)
        print(f"round {round_number}: {len(lags['configmap'])} ConfigMap and {len(lags['secret'])} Secret updates seen", flush=True)
    summary("ConfigMap volume update -> file in the container", lags["configmap"])
    summary("Secret volume update -> file in the container", lags["secret"])
    kube.kubectl("delete", "namespace", namespace, "--wait=false")


def rotation(kube: Kube, image: str, rotations: int) -> None:
    kube.kubectl("create", "namespace", NAMESPACE)
    release = Release(kube, image)
    release.configure(**{"jwksServer.enabled": "false"})
    kube.apply(NAMESPACE, {"apiVersion": "signingkeys.dev/v1alpha1", "kind": "SigningKeyPolicy",
                           "metadata": {"name": POLICY}, "spec": POLICY_SPEC})
    release.wait_ready()
    for mode in ("watch", "file"):
        release.configure(**{"jwksServer.mode": mode})
        url = release.jwks_url
        wait_until(lambda: served_kids(url) == release.published_kids(), 300, "the served set to match", interval=0.5)
        lags = []
        for _ in range(rotations):
            annotated = time.time()
            kid = release.rotate()  # annotates, and returns once the new key Secret exists
            wait_until(lambda: kid in (served_kids(url) or []), 600, f"{kid} served ({mode})", interval=0.1)
            lags.append(time.time() - annotated)
            wait_until(lambda: release.signing_kid() == kid, 120, f"{kid} signing", interval=0.5)
        summary(f"annotate rotate -> new kid served through the Service ({mode} mode)", lags)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["volumes", "rotation"])
    parser.add_argument("--objects", type=int, default=10, help="volumes: ConfigMaps and Secrets mounted (each)")
    parser.add_argument("--rounds", type=int, default=2, help="volumes: updates per object")
    parser.add_argument("--rotations", type=int, default=10, help="rotation: rotations per mode")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sko-node-bench-") as folder:
        cluster, image = node_cluster(Path(folder))
        try:
            kube = Kube(cluster.kubeconfig)
            if args.what == "volumes":
                volumes(kube, cluster, image, args.objects, args.rounds)
            else:
                rotation(kube, image, args.rotations)
        finally:
            cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
