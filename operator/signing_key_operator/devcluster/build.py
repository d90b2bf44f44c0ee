"""Builds kube-apiserver, kube-controller-manager and etcd from their Go modules, and the node's
kubelet, kube-scheduler and kube-proxy from the same pinned Kubernetes module.

No package registry ships these binaries, but the Go module proxy serves their sources. The pinned
versions live in the go.mod files beside this module (gomod/kube, gomod/etcd); binaries are cached
outside the repo in a folder named by those versions and a hash of everything that changes what is
built (the module files, the packages, the linker flags, the Go toolchain and target), so a build
happens once per recipe and every later run starts in seconds.

A cache entry is only ever a finished one: binaries are built into a staging folder that is
renamed into place after every `go build` succeeded and removed when one fails; a lock keeps two
processes from building into the same staging folder at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

GOMOD_DIR = Path(__file__).parent / "gomod"


def cache_root() -> Path:
    """Where expensive builds are kept; override with SKO_CACHE_DIR (CI caches this folder)."""
    explicit = os.environ.get("SKO_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "signing-key-operator"


def _pinned_version(go_mod: Path, module: str) -> str:
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", go_mod.read_text(), re.M)
    if not match:
        raise RuntimeError(f"{go_mod} does not pin {module}")
    return match.group(1)


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubernetes_version: str
    etcd_version: str


@dataclass(frozen=True)
class NodeBinaries:
    kubelet: Path
    kube_scheduler: Path
    kube_proxy: Path


# What `go build` is told besides the target's own flags. -mod=readonly: the committed go.sum is
# the whole truth, so what is built is what the hash below names (-mod=mod would let a build
# rewrite go.mod/go.sum and so its own cache key); -buildvcs=false because the repo's git
# metadata says nothing about these third-party binaries.
GO_FLAGS = ("-mod=readonly", "-buildvcs=false")

# The parts of `go env` that change the binaries a build makes.
GO_ENV_KEYS = ("GOVERSION", "GOOS", "GOARCH", "GOAMD64", "GOARM64", "CGO_ENABLED", "GOEXPERIMENT", "GOFLAGS")


@dataclass(frozen=True)
class _Target:
    module_dir: Path
    packages: dict[str, str]  # binary name -> Go package
    ldflags: str
    out_dir: Path

    def binaries(self) -> list[Path]:
        return [self.out_dir / name for name in self.packages]


def go_environment() -> dict[str, str]:
    """The toolchain facts that go into the cache key."""
    if shutil.which("go") is None:
        raise RuntimeError("Go is needed to build the control plane (https://go.dev); none on PATH")
    result = subprocess.run(["go", "env", "-json", *GO_ENV_KEYS], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def recipe_fingerprint(module_dir: Path, packages: dict[str, str], ldflags: str, go_env: dict[str, str]) -> str:
    """A hash of everything that decides the binaries: every file of the module folder (go.mod,
    go.sum, tools.go), the packages and names, the flags, and the toolchain."""
    digest = hashlib.sha256()
    for path in sorted(module_dir.iterdir()):
        if path.is_file():
            digest.update(f"{path.name}\0".encode() + path.read_bytes() + b"\0")
    recipe = {"packages": packages, "ldflags": ldflags, "flags": GO_FLAGS, "go": go_env}
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    return digest.hexdigest()[:12]


def _targets(gomod_dir: Path, root: Path, go_env: dict[str, str]) -> tuple[_Target, _Target, _Target, str, str]:
    kube_dir, etcd_dir = gomod_dir / "kube", gomod_dir / "etcd"
    k8s_version = _pinned_version(kube_dir / "go.mod", "k8s.io/kubernetes")
    etcd_version = _pinned_version(etcd_dir / "go.mod", "go.etcd.io/etcd/server/v3")
    major, minor = k8s_version.lstrip("v").split(".")[:2]
    # Without the version stamp the binary reports v0.0.0-master, which version checks dislike.
    ldflags = " ".join(
        f"-X k8s.io/component-base/version.{key}={value}"
        for key, value in (("gitVersion", k8s_version), ("gitMajor", major), ("gitMinor", minor))
    )
    kube_packages = {
        "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
        "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    }
    # A target of its own, so a control plane without a node neither builds nor waits for it.
    node_packages = {
        "kubelet": "k8s.io/kubernetes/cmd/kubelet",
        "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
        "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
    }
    etcd_packages = {"etcd": "go.etcd.io/etcd/server/v3"}
    kube = _Target(
        kube_dir,
        kube_packages,
        ldflags,
        root / f"kubernetes-{k8s_version}-{recipe_fingerprint(kube_dir, kube_packages, ldflags, go_env)}",
    )
    node = _Target(
        kube_dir,
        node_packages,
        ldflags,
        root / f"kubernetes-node-{k8s_version}-{recipe_fingerprint(kube_dir, node_packages, ldflags, go_env)}",
    )
    etcd = _Target(
        etcd_dir,
        etcd_packages,
        "",
        root / f"etcd-{etcd_version}-{recipe_fingerprint(etcd_dir, etcd_packages, '', go_env)}",
    )
    return kube, node, etcd, k8s_version, etcd_version


def _say(message: str) -> None:
    print(f"[dev-cluster] {message}", file=sys.stderr, flush=True)


@contextmanager
def finished_entry(entry: Path, is_finished: Callable[[], bool]) -> Iterator[Path | None]:
    """Build a cache entry so that it only ever exists finished. Yields None when `is_finished()`
    (looked at again under the entry's lock, in case another process built it meanwhile);
    otherwise an empty `<entry>.partial` folder to build into, which is renamed to `entry` when
    the block succeeds and removed when it raises."""
    if is_finished():
        yield None
        return
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.with_name(entry.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_finished():
            yield None
            return
        staging = entry.with_name(entry.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(entry, ignore_errors=True)
        staging.rename(entry)


def _build(target: _Target, label: str) -> None:
    with finished_entry(target.out_dir, lambda: all(path.exists() for path in target.binaries())) as staging:
        if staging is None:
            return
        _say(f"building {label} from the Go module proxy (once per version; about 5 min cold on 2 cores)")
        started = time.monotonic()
        for name, package in target.packages.items():
            _go_build(target, package, staging / name, f"{label}: {name}", started)
    _say(f"built {label} in {time.monotonic() - started:.0f}s -> {target.out_dir}")


def _go_build(target: _Target, package: str, output: Path, label: str, started: float) -> None:
    command = ["go", "build", "-v", "-trimpath", "-o", str(output)]
    if target.ldflags:
        command += ["-ldflags", target.ldflags]
    command.append(package)
    env = dict(os.environ, GOFLAGS=" ".join([os.environ.get("GOFLAGS", ""), *GO_FLAGS]).strip())
    process = subprocess.Popen(
        command, cwd=target.module_dir, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    compiled = 0
    tail: list[str] = []
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(30):
            _say(f"  {label}: {compiled} packages compiled, {time.monotonic() - started:.0f}s")

    threading.Thread(target=heartbeat, daemon=True).start()
    assert process.stdout is not None
    for line in process.stdout:
        compiled += 1
        tail = (tail + [line.rstrip()])[-30:]
    rc = process.wait()
    done.set()
    if rc != 0:
        raise RuntimeError(f"building {label} failed (exit {rc}):\n" + "\n".join(tail))


def ensure_binaries() -> Binaries:
    """Build whatever is missing for the pinned versions, and return where the binaries are."""
    kube, _node, etcd, k8s_version, etcd_version = _targets(GOMOD_DIR, cache_root() / "controlplane", go_environment())
    _build(etcd, f"etcd {etcd_version}")
    _build(kube, f"kube-apiserver and kube-controller-manager {k8s_version}")
    apiserver, controller_manager = kube.binaries()
    (etcd_binary,) = etcd.binaries()
    return Binaries(etcd_binary, apiserver, controller_manager, k8s_version, etcd_version)


def ensure_node_binaries() -> NodeBinaries:
    """Build the node's binaries if missing (kubelet, kube-scheduler, kube-proxy), at the same
    Kubernetes pin as the control plane."""
    _kube, node, _etcd, k8s_version, _ = _targets(GOMOD_DIR, cache_root() / "controlplane", go_environment())
    _build(node, f"kubelet, kube-scheduler and kube-proxy {k8s_version}")
    kubelet, scheduler, proxy = node.binaries()
    return NodeBinaries(kubelet, scheduler, proxy)
