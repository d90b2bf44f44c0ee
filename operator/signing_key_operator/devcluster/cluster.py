"""A real control plane on loopback: etcd, kube-apiserver (TLS, RBAC, service-account issuer) and
kube-controller-manager (garbage collection, namespace deletion, default service accounts); with
`node=True` also a real node (devcluster/node.py) and the controllers that pods need.

One class serves the `dev-cluster` command and the tests' pytest fixture. Everything it starts is
recorded in `<dir>/state.json` so that `down` can stop every process, from any shell.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from .build import Binaries, ensure_binaries, ensure_node_binaries
from .node import NODE_ADDRESS, NODE_NAME, DevNode, NodeState
from .pki import DevPKI
from .processes import log_tail, process_is, stop_process

STATE_FILE = "state.json"
ADMIN_USER = "dev-admin"
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
# GC needs to read and delete every kind; on a real cluster it gets that through per-controller
# service accounts. system:masters keeps the harness small without changing what GC does.
CONTROLLER_MANAGER_GROUPS = ("system:masters",)
CONTROLLERS = "garbagecollector,namespace,serviceaccount"
# What Deployments, Services and pods' tokens need once there is a node: ReplicaSets and pods,
# EndpointSlices for kube-proxy, the kube-root-ca.crt ConfigMap every projected token volume
# mounts, and the node lifecycle controller that lifts the not-ready taint.
NODE_CONTROLLERS = (
    "deployment-controller,replicaset-controller,endpoints-controller,endpointslice-controller,"
    "root-ca-certificate-publisher-controller,node-lifecycle-controller,pod-garbage-collector-controller,"
    "disruption-controller,clusterrole-aggregation-controller"
)
START_ATTEMPTS = 3
ETCD_TIMEOUT = 30.0


class StartupError(RuntimeError):
    """A control-plane process died or never became healthy; `up` retries with fresh ports."""


def _distinct_free_ports(count: int) -> list[int]:
    """Free loopback ports, all different: sockets stay bound until every port is chosen, so
    the kernel cannot hand the same port out twice."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _say(message: str) -> None:
    print(f"[dev-cluster] {message}", file=sys.stderr, flush=True)


@dataclass
class ClusterState:
    etcd_pid: int
    apiserver_pid: int
    controller_manager_pid: int
    etcd_port: int
    apiserver_port: int
    kubernetes_version: str
    etcd_version: str
    binaries: list[str]
    started_at: float
    # The API server's one address: loopback, or the node's address on the pods' bridge (which
    # the machine itself reaches too) when there is a node.
    address: str = "127.0.0.1"
    node: dict | None = None

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.apiserver_port}"

    def node_state(self) -> NodeState | None:
        return NodeState(**self.node) if self.node is not None else None

    def pids(self) -> dict[str, int]:
        return {
            "kube-controller-manager": self.controller_manager_pid,
            "kube-apiserver": self.apiserver_pid,
            "etcd": self.etcd_pid,
        }


class DevCluster:
    def __init__(self, directory: Path):
        self.dir = directory.resolve()
        self.pki = DevPKI(self.dir / "pki")
        self.kubeconfig = self.dir / "kubeconfig"
        self.logs = self.dir / "logs"
        self.node = DevNode(self.dir, self.logs)

    # -- state ------------------------------------------------------------------------------
    def state(self) -> ClusterState | None:
        path = self.dir / STATE_FILE
        if not path.exists():
            return None
        return ClusterState(**json.loads(path.read_text()))

    def running(self, state: ClusterState | None = None) -> dict[str, bool]:
        """Which processes of `state` (default: the saved state) still run."""
        state = state or self.state()
        if state is None:
            return {}
        running = {
            name: process_is(pid, binary)
            for (name, pid), binary in zip(state.pids().items(), state.binaries)
        }
        node = state.node_state()
        if node is not None:
            for name, pid in node.pids().items():
                running[name] = bool(pid) and process_is(pid, (node.binaries or {}).get(name, ""))
        return running

    # -- lifecycle --------------------------------------------------------------------------
    def up(self, timeout: float = 120.0, node: bool = False) -> ClusterState:
        """Start the control plane (and with `node`, a node), or return the running one when it
        already has what is asked for."""
        running = self.running()
        current = self.state()
        has_node = current is not None and current.node is not None
        if running and all(running.values()) and has_node == node and self.ready():
            assert current is not None
            _say(f"already running at {current.server}" + (f" with node {NODE_NAME}" if node else ""))
            return current
        if running or self.node.dir.exists():
            self.down()
        binaries = ensure_binaries()
        node_parts = self._node_parts() if node else None
        self.pki.ensure()
        self.logs.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                return self._start(binaries, timeout, node_parts)
            except StartupError as error:
                if attempt == START_ATTEMPTS:
                    raise
                _say(f"start-up failed ({error}); retrying with fresh ports and data ({attempt}/{START_ATTEMPTS})")
        raise AssertionError("unreachable")

    @staticmethod
    def _node_parts():
        """The node's binaries and sandbox image, built (or found in the cache) before anything
        starts, so a build failure stops `up` before it changes the machine."""
        from .image import ensure_pause
        from .node import NodeError, missing_node_packages

        missing = missing_node_packages()
        if missing:
            raise NodeError(f"the node needs Debian packages {', '.join(missing)}: `make node-packages` (scripts/apt-install.sh) installs them")
        return ensure_node_binaries(), ensure_pause()

    def _start(self, binaries: Binaries, timeout: float, node_parts=None) -> ClusterState:
        shutil.rmtree(self.dir / "etcd", ignore_errors=True)  # throwaway data; a failed try leaves none behind
        etcd_port, peer_port, apiserver_port = _distinct_free_ports(3)
        address = NODE_ADDRESS if node_parts is not None else "127.0.0.1"
        started = time.time()
        state = ClusterState(
            etcd_pid=self._start_etcd(binaries, etcd_port, peer_port),
            apiserver_pid=0,
            controller_manager_pid=0,
            etcd_port=etcd_port,
            apiserver_port=apiserver_port,
            kubernetes_version=binaries.kubernetes_version,
            etcd_version=binaries.etcd_version,
            binaries=[str(binaries.kube_controller_manager), str(binaries.kube_apiserver), str(binaries.etcd)],
            started_at=started,
            address=address,
            # Recorded before the node exists, so a failed start's `down` removes its bridge.
            node=asdict(NodeState()) if node_parts is not None else None,
        )
        self._save(state)
        try:
            if node_parts is not None:
                self.node.create_bridge()  # before the API server binds to the node's address
            # etcd first, on its own: an API server without etcd only fails 20 s later, and
            # says less about why than etcd's own log does.
            self._wait_until_healthy(state, f"http://127.0.0.1:{etcd_port}/health", "etcd", ETCD_TIMEOUT)
            state.apiserver_pid = self._start_apiserver(binaries, etcd_port, apiserver_port, address, with_node=node_parts is not None)
            self._save(state)
            self._wait_ready(state, timeout)
            self._write_kubeconfig(self.kubeconfig, state.server, ADMIN_USER, ("system:masters",), "admin")
            state.controller_manager_pid = self._start_controller_manager(binaries, state, with_node=node_parts is not None)
            self._save(state)
            if node_parts is not None:
                node_binaries, sandbox = node_parts
                _say(f"starting node {NODE_NAME}: containerd, kubelet, kube-scheduler, kube-proxy")
                self.node.start(node_binaries, self, state.server, sandbox)
        except BaseException:
            self._save(state)  # what was started, even if the state file went missing meanwhile
            self.down()
            raise
        _say(f"kube-apiserver {state.kubernetes_version} ready at {state.server} in {time.time() - started:.1f}s")
        return state

    def _wait_until_healthy(self, state: ClusterState, url: str, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if not self.running(state).get(name):
                raise StartupError(f"{name} exited during start-up:\n{self._log_tail(name)}")
            time.sleep(0.1)
        raise StartupError(f"{name} not healthy after {timeout:.0f}s:\n{self._log_tail(name)}")

    def down(self) -> list[str]:
        """Stop every process this directory started, and remove what its node left on the
        machine; return the names of the processes that ran."""
        state = self.state()
        stopped: list[str] = []
        if state is not None and state.node is not None or self.node.dir.exists():
            stopped += self.node.teardown(state.node_state() if state else None)
        if state is None:
            return stopped
        for (name, pid), binary in zip(state.pids().items(), state.binaries):
            if stop_process(pid, binary):
                stopped.append(name)
        (self.dir / STATE_FILE).unlink(missing_ok=True)
        return stopped

    def _save_node(self, node: NodeState) -> None:
        state = self.state()
        assert state is not None, "the node starts after the control plane"
        state.node = asdict(node)
        self._save(state)

    def _save(self, state: ClusterState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))

    def _spawn(self, name: str, argv: list[str]) -> int:
        log = open(self.logs / f"{name}.log", "ab")
        # A session of its own: `dev-cluster up` returns while the control plane keeps running,
        # and a Ctrl-C in the caller's terminal does not reach it.
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return process.pid

    def _start_etcd(self, binaries: Binaries, port: int, peer_port: int) -> int:
        client, peer = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer_port}"
        return self._spawn("etcd", [
            str(binaries.etcd),
            "--name=dev",
            f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=dev={peer}",
            "--unsafe-no-fsync",  # throwaway data: durability buys nothing and costs test time
            "--log-level=info",  # to its log file only; start-up failures need the detail
        ])

    def _start_apiserver(self, binaries: Binaries, etcd_port: int, port: int, address: str, *, with_node: bool) -> int:
        pki = self.pki
        node_flags = []
        if with_node:
            # kubectl logs/exec: the API server calls the kubelet at the node's InternalIP, checks
            # its serving certificate against the dev CA and shows a client certificate of its own.
            kubelet_client = pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",))
            node_flags = [
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-certificate-authority={pki.ca_cert}",
                f"--kubelet-client-certificate={kubelet_client.cert_path}",
                f"--kubelet-client-key={kubelet_client.key_path}",
            ]
        return self._spawn("kube-apiserver", [
            str(binaries.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--bind-address={address}",
            f"--advertise-address={address}",
            f"--secure-port={port}",
            f"--cert-dir={pki.dir}",
            f"--tls-cert-file={pki.dir / 'apiserver.crt'}",
            f"--tls-private-key-file={pki.dir / 'apiserver.key'}",
            f"--client-ca-file={pki.ca_cert}",
            "--authorization-mode=Node,RBAC",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--profiling=false",
            "--v=1",
            *node_flags,
        ])

    def _start_controller_manager(self, binaries: Binaries, state: ClusterState, *, with_node: bool) -> int:
        kubeconfig = self.dir / "kube-controller-manager.kubeconfig"
        self._write_kubeconfig(kubeconfig, state.server, CONTROLLER_MANAGER_USER, CONTROLLER_MANAGER_GROUPS, "kube-controller-manager")
        return self._spawn("kube-controller-manager", [
            str(binaries.kube_controller_manager),
            f"--kubeconfig={kubeconfig}",
            f"--controllers={CONTROLLERS + (',' + NODE_CONTROLLERS if with_node else '')}",
            *([f"--root-ca-file={self.pki.ca_cert}"] if with_node else []),
            "--leader-elect=false",
            "--secure-port=0",
            "--use-service-account-credentials=false",
            "--v=1",
        ])

    # -- access -----------------------------------------------------------------------------
    def _ssl_context(self, cert_stem: str) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(self.pki.dir / f"{cert_stem}.crt", self.pki.dir / f"{cert_stem}.key")
        return context

    def ready(self) -> bool:
        state = self.state()
        if state is None:
            return False
        try:
            self.pki.issue("admin", ADMIN_USER, ("system:masters",))
            with urllib.request.urlopen(f"{state.server}/readyz", context=self._ssl_context("admin"), timeout=5) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return False

    def _wait_ready(self, state: ClusterState, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return
            running = self.running(state)
            dead = [name for name, alive in running.items() if not alive and name in ("kube-apiserver", "etcd")]
            if dead:
                tails = "\n".join(f"--- {name}:\n{self._log_tail(name)}" for name in dead)
                raise StartupError(f"{', '.join(dead)} exited during start-up:\n{tails}")
            time.sleep(0.25)
        raise StartupError(f"kube-apiserver not ready after {timeout:.0f}s:\n{self._log_tail('kube-apiserver')}")

    def get_json(self, path: str) -> dict | None:
        """GET an API path as the admin; None when it does not exist (404)."""
        state = self.state()
        if state is None:
            return None
        try:
            with urllib.request.urlopen(f"{state.server}{path}", context=self._ssl_context("admin"), timeout=5) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise

    def _log_tail(self, name: str) -> str:
        return log_tail(self.logs, name)

    def _write_kubeconfig(self, path: Path, server: str, user: str, groups: tuple[str, ...], cert_stem: str) -> Path:
        issued = self.pki.issue(cert_stem, user, groups)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "dev", "cluster": {
                "server": server,
                "certificate-authority-data": base64.b64encode(self.pki.ca_cert.read_bytes()).decode(),
            }}],
            "users": [{"name": user, "user": {
                "client-certificate-data": base64.b64encode(issued.cert_path.read_bytes()).decode(),
                "client-key-data": base64.b64encode(issued.key_path.read_bytes()).decode(),
            }}],
            "contexts": [{"name": "dev", "context": {"cluster": "dev", "user": user}}],
            "current-context": "dev",
        }
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def kubeconfig_for(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig for an identity with only the rights RBAC grants `user` and `groups`."""
        state = self.state()
        if state is None:
            raise RuntimeError("the dev cluster is not running")
        stem = "user-" + "".join(c if c.isalnum() else "_" for c in "-".join((user, *groups)))
        return self._write_kubeconfig(self.dir / f"{stem}.kubeconfig", state.server, user, groups, stem)

    def describe_node(self) -> str:
        """The node's readiness and its pods, for `dev-cluster status`."""
        node = self.get_json(f"/api/v1/nodes/{NODE_NAME}")
        if node is None:
            return f"{'node ' + NODE_NAME:<24} not registered"
        ready = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}.get("Ready", "Unknown")
        lines = [f"{'node ' + NODE_NAME:<24} Ready={ready} ({NODE_ADDRESS})"]
        pods = (self.get_json("/api/v1/pods") or {}).get("items", [])
        for pod in sorted(pods, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"])):
            statuses = pod["status"].get("containerStatuses", [])
            ready_count = sum(1 for s in statuses if s.get("ready"))
            name = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
            lines.append(f"  {name:<50} {pod['status'].get('phase', '?'):<10} {ready_count}/{len(statuses)} ready  {pod['status'].get('podIP', '')}")
        return "\n".join(lines)
