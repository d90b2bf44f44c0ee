"""A real node beside the dev control plane: containerd and runc from Debian, pods on a CNI
bridge with no uplink, and kubelet, kube-scheduler and kube-proxy built from the control plane's
pinned Kubernetes module.

Everything lives under `<cluster dir>/node`: containerd's root, state and socket, the CNI
configuration and its address allocations, the kubelet's root and pod logs. The few things
that cannot be private (the bridge, the network namespaces containerd makes under /var/run/netns,
the iptables chains kube-proxy writes, mounts) are what `teardown` removes, and the pids this
module started are the only processes it stops. One node runs on a machine at a time: the
bridge's name and subnet and kube-proxy's chains are the machine's, not the directory's.

Why each setting is what it is comes from running it here (see NODE-NOTES.md): the machine's
root lacks CAP_SYS_RESOURCE (restrict_oom_score_adj), mounts cgroup v1 without systemd
(cgroupfs, failCgroupV1: false), and no registry is reachable (images are imported, so the
sandbox image is built locally and pulls never happen).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .build import NodeBinaries
from .processes import log_tail, process_is, stop_process

if TYPE_CHECKING:
    from .image import BuiltImage

NODE_NAME = "sko-node"
BRIDGE = "sko0"
# The host's address on the bridge: the gateway of every pod, the address the kubelet and the
# API server listen on (the `kubernetes` Service points here), and the node's InternalIP.
NODE_ADDRESS = "10.85.0.1"
POD_SUBNET = "10.85.0.0/24"
POD_RANGE = ("10.85.0.10", "10.85.0.250")
SERVICE_SUBNET = "10.0.0.0/24"
KUBELET_USER = f"system:node:{NODE_NAME}"
REQUIRED_COMMANDS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "ip": "iproute2",
}
CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
# Paths that the kubelet and containerd 1.6's CNI library use whatever they are configured with:
# container log links, CNI results per sandbox, and the loopback network's lock.
CONTAINER_LOG_LINKS = Path("/var/log/containers")
CNI_RESULTS = Path("/var/lib/cni/results")
MACHINE_FOLDERS = (CONTAINER_LOG_LINKS, Path("/var/lib/cni"), Path("/etc/cni"))
NODE_READY_TIMEOUT = 120.0


class NodeError(RuntimeError):
    """The node could not start; the message says which part and shows its log."""


def _say(message: str) -> None:
    print(f"[dev-cluster] {message}", file=sys.stderr, flush=True)


def missing_node_packages() -> list[str]:
    """Debian packages the node needs that this machine lacks (`make node-packages` installs them)."""
    missing = {package for command, package in REQUIRED_COMMANDS.items() if shutil.which(command) is None}
    if not (CNI_BIN_DIR / "bridge").exists():
        missing.add("containernetworking-plugins")
    return sorted(missing)


@dataclass
class NodeState:
    containerd_pid: int = 0
    kubelet_pid: int = 0
    scheduler_pid: int = 0
    proxy_pid: int = 0
    kubelet_port: int = 0
    sandbox_image: str = ""
    binaries: dict[str, str] | None = None
    # Machine folders that did not exist before this node made them (see MACHINE_FOLDERS).
    created_folders: list[str] | None = None

    def pids(self) -> dict[str, int]:
        return {
            "kubelet": self.kubelet_pid,
            "kube-scheduler": self.scheduler_pid,
            "kube-proxy": self.proxy_pid,
            "containerd": self.containerd_pid,
        }


def _run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise NodeError(f"`{' '.join(argv)}` failed (exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    return result


class DevNode:
    """The node of one dev-cluster directory. `DevCluster` owns it: it creates the bridge before
    the API server binds to it, and starts the node's processes once the API server is ready."""

    def __init__(self, cluster_dir: Path, logs: Path):
        self.dir = cluster_dir / "node"
        self.logs = logs
        self.containerd_dir = self.dir / "containerd"
        self.socket = self.containerd_dir / "containerd.sock"
        self.cni_conf_dir = self.dir / "cni" / "net.d"
        self.kubelet_dir = self.dir / "kubelet"

    # -- network ----------------------------------------------------------------------------
    def create_bridge(self) -> None:
        """The pods' bridge with the node's address; no uplink and no masquerading, so nothing
        a pod sends can leave this machine."""
        if _run(["ip", "link", "show", BRIDGE], check=False).returncode == 0:
            owner = Path(f"/run/{BRIDGE}.owner")
            # A bridge whose owner's folder is gone is left from a run that died: taken over.
            if owner.exists() and owner.read_text() != str(self.dir) and Path(owner.read_text()).exists():
                raise NodeError(f"bridge {BRIDGE} belongs to the node in {owner.read_text()}: one node per machine; `dev-cluster down --dir` that one first")
        else:
            _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        Path(f"/run/{BRIDGE}.owner").write_text(str(self.dir))
        addresses = _run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE]).stdout
        if f" {NODE_ADDRESS}/" not in addresses:
            _run(["ip", "addr", "add", f"{NODE_ADDRESS}/{POD_SUBNET.split('/')[1]}", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])
        # Service addresses route to the bridge, never to the machine's default route: a
        # ClusterIP that kube-proxy does not map (yet) then goes nowhere instead of out.
        _run(["ip", "route", "replace", SERVICE_SUBNET, "dev", BRIDGE, "src", NODE_ADDRESS])

    def _write_cni_config(self) -> None:
        self.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": "sko-pods",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET, "rangeStart": POD_RANGE[0], "rangeEnd": POD_RANGE[1], "gateway": NODE_ADDRESS}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        # Private, so allocations die with the directory instead of leaking
                        # into the machine's /var/lib/cni.
                        "dataDir": str(self.dir / "cni" / "ipam"),
                    },
                },
                {"type": "loopback"},
            ],
        }
        (self.cni_conf_dir / "10-sko-pods.conflist").write_text(json.dumps(conflist, indent=2))

    # -- containerd -------------------------------------------------------------------------
    def _write_containerd_config(self, sandbox_image: str) -> Path:
        self.containerd_dir.mkdir(parents=True, exist_ok=True)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{self.containerd_dir / 'root'}"
state = "{self.containerd_dir / 'state'}"
# Plugins that would look at the machine's storage or need what it lacks.
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.containerd_dir / 'opt'}"

[{cri}]
  # Imported, never pulled: no registry is reachable.
  sandbox_image = "{sandbox_image}"
  # The machine's root lacks CAP_SYS_RESOURCE: a negative oom_score_adj cannot be written.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{self.cni_conf_dir}"
  max_conf_num = 1
"""
        path = self.containerd_dir / "config.toml"
        path.write_text(config)
        return path

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run(["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args], check=check)

    def _wait_containerd(self, pid: int, binary: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.socket.exists() and self.ctr("version", check=False).returncode == 0:
                return
            if not process_is(pid, binary):
                raise NodeError(f"containerd exited during start-up:\n{self._log_tail('containerd')}")
            time.sleep(0.2)
        raise NodeError(f"containerd not answering after {timeout:.0f}s:\n{self._log_tail('containerd')}")

    # -- kubelet, scheduler, proxy ----------------------------------------------------------
    def _write_kubelet_config(self, pki_dir: Path, ca_cert: Path, port: int, healthz_port: int) -> Path:
        self.kubelet_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_ADDRESS,
            "port": port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "imageServiceEndpoint": f"unix://{self.socket}",
            # No systemd here, and cgroup v1 (hybrid): see NODE-NOTES.md.
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "failSwapOn": False,
            "podLogsDir": str(self.dir / "pod-logs"),
            "staticPodPath": str(self.dir / "manifests"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(ca_cert)},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(pki_dir / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(pki_dir / "kubelet-serving.key"),
            # A dev machine's disk is often fuller than the defaults allow; eviction would stop
            # the pods the tests are about.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "clusterDomain": "cluster.local",
            "registerNode": True,
            "serializeImagePulls": False,
        }
        (self.dir / "manifests").mkdir(parents=True, exist_ok=True)
        path = self.kubelet_dir / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def _write_proxy_config(self, kubeconfig: Path, healthz_port: int, metrics_port: int) -> Path:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "mode": "iptables",
            "hostnameOverride": NODE_NAME,
            "clusterCIDR": POD_SUBNET,
            "bindAddress": NODE_ADDRESS,
            "healthzBindAddress": f"127.0.0.1:{healthz_port}",
            "metricsBindAddress": f"127.0.0.1:{metrics_port}",
            # NodePorts only on the bridge, never on the machine's own interfaces.
            "nodePortAddresses": [POD_SUBNET],
            # 0: leave the machine's conntrack settings as they are.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        path = self.dir / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start(self, binaries: NodeBinaries, cluster, server: str, sandbox: "BuiltImage") -> NodeState:
        """Start containerd (with the sandbox image imported), then the kubelet, kube-scheduler
        and kube-proxy; return once the node is Ready. The cluster's own spawn, kubeconfig and
        port helpers are used, so logs, identities and ports come from one place."""
        from .cluster import _distinct_free_ports

        state = NodeState(sandbox_image=sandbox.ref, binaries={
            "kubelet": str(binaries.kubelet), "kube-scheduler": str(binaries.kube_scheduler),
            "kube-proxy": str(binaries.kube_proxy), "containerd": _which("containerd"),
        })
        state.created_folders = [str(folder) for folder in MACHINE_FOLDERS if not folder.exists()]
        cluster._save_node(state)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_cni_config()
        config = self._write_containerd_config(sandbox.ref)
        state.containerd_pid = cluster._spawn("containerd", [state.binaries["containerd"], "--config", str(config)])
        cluster._save_node(state)
        self._wait_containerd(state.containerd_pid, state.binaries["containerd"])
        self.import_image(sandbox.archive, sandbox.ref)

        pki = cluster.pki
        pki.issue("kubelet-serving", NODE_NAME, server=True, ips=(NODE_ADDRESS,), dns_names=(NODE_NAME,))
        kubelet_port, kubelet_healthz, proxy_healthz, proxy_metrics = _distinct_free_ports(4)
        state.kubelet_port = kubelet_port
        kubelet_kubeconfig = cluster._write_kubeconfig(self.dir / "kubelet.kubeconfig", server, KUBELET_USER, ("system:nodes",), "kubelet")
        kubelet_config = self._write_kubelet_config(pki.dir, pki.ca_cert, kubelet_port, kubelet_healthz)
        state.kubelet_pid = cluster._spawn("kubelet", [
            state.binaries["kubelet"],
            f"--config={kubelet_config}",
            f"--kubeconfig={kubelet_kubeconfig}",
            f"--root-dir={self.kubelet_dir}",
            f"--cert-dir={self.kubelet_dir / 'pki'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_ADDRESS}",
            "--v=1",
        ])
        cluster._save_node(state)
        scheduler_kubeconfig = cluster._write_kubeconfig(self.dir / "kube-scheduler.kubeconfig", server, "system:kube-scheduler", (), "kube-scheduler")
        state.scheduler_pid = cluster._spawn("kube-scheduler", [
            state.binaries["kube-scheduler"],
            f"--kubeconfig={scheduler_kubeconfig}",
            f"--authentication-kubeconfig={scheduler_kubeconfig}",
            f"--authorization-kubeconfig={scheduler_kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",
            "--v=1",
        ])
        cluster._save_node(state)
        proxy_kubeconfig = cluster._write_kubeconfig(self.dir / "kube-proxy.kubeconfig", server, "system:kube-proxy", (), "kube-proxy")
        proxy_config = self._write_proxy_config(proxy_kubeconfig, proxy_healthz, proxy_metrics)
        state.proxy_pid = cluster._spawn("kube-proxy", [state.binaries["kube-proxy"], f"--config={proxy_config}", "--v=1"])
        cluster._save_node(state)
        self._wait_node_ready(cluster, state)
        return state

    def import_image(self, archive: Path, ref: str) -> None:
        """Put an OCI archive into the node's containerd under exactly `ref`, the name the
        kubelet asks the CRI for (devcluster/image.py's load_image)."""
        from .image import load_image

        load_image(archive, ref, self.socket)

    def _wait_node_ready(self, cluster, state: NodeState) -> None:
        deadline = time.monotonic() + NODE_READY_TIMEOUT
        last = "not registered"
        while time.monotonic() < deadline:
            for name, pid in state.pids().items():
                if not process_is(pid, state.binaries[name]):
                    raise NodeError(f"{name} exited during start-up:\n{self._log_tail(name)}")
            try:
                node = cluster.get_json(f"/api/v1/nodes/{NODE_NAME}")
            except OSError:
                node = None
            if node:
                conditions = {c["type"]: c for c in node.get("status", {}).get("conditions", [])}
                ready = conditions.get("Ready", {})
                if ready.get("status") == "True":
                    _say(f"node {NODE_NAME} Ready")
                    return
                last = f"Ready={ready.get('status')}: {ready.get('message', '')}"
            time.sleep(0.5)
        raise NodeError(f"node {NODE_NAME} not Ready after {NODE_READY_TIMEOUT:.0f}s ({last}):\n{self._log_tail('kubelet')}")

    # -- teardown ---------------------------------------------------------------------------
    def teardown(self, state: NodeState | None) -> list[str]:
        """Stop what the node started and remove what it left on the machine: containers and
        their shims, network namespaces, mounts under the node's folder, kube-proxy's chains,
        the bridge. Safe to run twice, and with only part of the node started."""
        stopped: list[str] = []
        pids = state.pids() if state else {}
        binaries = (state.binaries or {}) if state else {}
        # The kubelet first: nothing restarts a container once it is gone. containerd last: it
        # must outlive the containers it is asked to remove.
        for name in ("kubelet", "kube-scheduler", "kube-proxy"):
            if stop_process(pids.get(name, 0), binaries.get(name)):
                stopped.append(name)
        if binaries.get("kube-proxy"):
            # kube-proxy's own clean-up knows every chain it writes; the kubelet's few
            # (KUBE-FIREWALL, which drops non-loopback packets to 127/8, and two canaries) it
            # leaves, so those go below.
            _run([binaries["kube-proxy"], "--cleanup", "--proxy-mode=iptables"], check=False)
        _remove_kube_chains()
        netns, sandboxes = self._sandboxes() if self.socket.exists() else (set(), set())
        if self.socket.exists() and process_is(pids.get("containerd", 0), binaries.get("containerd", "")):
            self._remove_containers()
        if stop_process(pids.get("containerd", 0), binaries.get("containerd")):
            stopped.append("containerd")
        for shim in self._our_shims():
            os.kill(shim, signal.SIGKILL)
        for path in sorted(netns):
            _run(["umount", path], check=False)
            Path(path).unlink(missing_ok=True)
        self._remove_machine_traces(sandboxes, (state.created_folders or []) if state else [])
        self._unmount_under(self.dir)
        if not self._mounts_under(self.dir):
            # Images, containers and pod volumes go too; a mount that would not go keeps the
            # folder, so removing it never reaches into a mounted file system.
            shutil.rmtree(self.dir, ignore_errors=True)
        if _run(["ip", "link", "show", BRIDGE], check=False).returncode == 0:
            owner = Path(f"/run/{BRIDGE}.owner")
            if not owner.exists() or owner.read_text() == str(self.dir):
                _run(["ip", "link", "delete", BRIDGE], check=False)
                owner.unlink(missing_ok=True)
        return stopped

    def _remove_machine_traces(self, sandboxes: set[str], created_folders: list[str]) -> None:
        """What the kubelet and CNI wrote outside the node's folder: container log links into
        it, CNI results of its sandboxes, and the machine folders it created, once empty."""
        if CONTAINER_LOG_LINKS.is_dir():
            for link in CONTAINER_LOG_LINKS.iterdir():
                if link.is_symlink() and os.readlink(link).startswith(str(self.dir) + "/"):
                    link.unlink()
        if CNI_RESULTS.is_dir():
            for result in CNI_RESULTS.iterdir():
                if any(f"-{sandbox}-" in result.name for sandbox in sandboxes):
                    result.unlink()
        for folder in sorted(map(Path, created_folders), key=lambda f: len(str(f)), reverse=True):
            (folder / "net.d" / "cni.lock").unlink(missing_ok=True)
            for empty in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(str(p)), reverse=True):
                if not any(empty.iterdir()):
                    empty.rmdir()
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    def _sandboxes(self) -> tuple[set[str], set[str]]:
        """The network namespaces and ids of this containerd's pod sandboxes, from their specs."""
        paths: set[str] = set()
        sandboxes: set[str] = set()
        listing = self.ctr("containers", "list", "--quiet", check=False)
        for container in listing.stdout.split():
            info = self.ctr("containers", "info", container, check=False)
            try:
                spec = json.loads(info.stdout).get("Spec", {})
            except json.JSONDecodeError:
                continue
            for namespace in spec.get("linux", {}).get("namespaces", []):
                path = namespace.get("path", "")
                if namespace.get("type") == "network" and path.startswith("/var/run/netns/"):
                    paths.add(path)
                    sandboxes.add(container)
        return paths, sandboxes

    def _remove_containers(self) -> None:
        for task in self.ctr("tasks", "list", "--quiet", check=False).stdout.split():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
        deadline = time.monotonic() + 15
        while (tasks := self.ctr("tasks", "list", "--quiet", check=False).stdout.split()) and time.monotonic() < deadline:
            for task in tasks:
                self.ctr("tasks", "delete", "--force", task, check=False)
            time.sleep(0.2)
        for container in self.ctr("containers", "list", "--quiet", check=False).stdout.split():
            self.ctr("containers", "delete", container, check=False)

    def _our_shims(self) -> list[int]:
        """containerd-shim processes started for this containerd (they name its socket)."""
        found = []
        marker = str(self.socket).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and marker in cmdline:
                found.append(int(entry.name))
        return found

    @staticmethod
    def _mounts_under(root: Path) -> list[str]:
        prefix = str(root.resolve()) + "/"
        mounts = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].encode().decode("unicode_escape")
            if point.startswith(prefix):
                mounts.append(point)
        return mounts

    @classmethod
    def _unmount_under(cls, root: Path) -> None:
        for point in sorted(cls._mounts_under(root), key=len, reverse=True):
            if _run(["umount", point], check=False).returncode != 0:
                _run(["umount", "-l", point], check=False)

    def _log_tail(self, name: str) -> str:
        return log_tail(self.logs, name)


def _which(command: str) -> str:
    found = shutil.which(command)
    if found is None:
        raise NodeError(f"{command} is not installed (Debian package {REQUIRED_COMMANDS.get(command, command)}); `make node-packages` installs it")
    return found


def _remove_kube_chains() -> None:
    """Delete every KUBE-* chain, and the rules that jump to one, from the machine's iptables and
    ip6tables. Only this node's kubelet and kube-proxy make them on this machine (one node per
    machine), so none of them is anyone else's."""
    for save, command in (("iptables-save", "iptables"), ("ip6tables-save", "ip6tables")):
        dump = _run([save], check=False).stdout
        table = ""
        jumps: list[tuple[str, str]] = []
        chains: list[tuple[str, str]] = []
        for line in dump.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":KUBE-"):
                chains.append((table, line[1:].split()[0]))
            elif line.startswith("-A ") and " -j KUBE-" in line and not line.split()[1].startswith("KUBE-"):
                jumps.append((table, line[3:]))
        for table, rule in jumps:
            _run([command, "-t", table, "-D", *_split_rule(rule)], check=False)
        for table, chain in chains:
            _run([command, "-t", table, "-F", chain], check=False)
        for table, chain in chains:
            _run([command, "-t", table, "-X", chain], check=False)


def _split_rule(rule: str) -> list[str]:
    import shlex

    return shlex.split(rule)
