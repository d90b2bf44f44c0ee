"""Builds kube-apiserver, kube-controller-manager and etcd from their Go modules.

No package registry ships these binaries, but the Go module proxy serves their sources. The pinned
versions live in the go.mod files beside this module (gomod/kube, gomod/etcd); binaries are cached
outside the repo in a folder named by those versions and a hash of the go.mod/go.sum files, so a
build happens once per pin and every later run starts in seconds.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
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
class _Target:
    module_dir: Path
    packages: dict[str, str]  # binary name -> Go package
    ldflags: str
    out_dir: Path

    def binaries(self) -> list[Path]:
        return [self.out_dir / name for name in self.packages]


def _fingerprint(module_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((module_dir / name).read_bytes())
    return digest.hexdigest()[:12]


def _targets() -> tuple[_Target, _Target, str, str]:
    kube_dir, etcd_dir = GOMOD_DIR / "kube", GOMOD_DIR / "etcd"
    k8s_version = _pinned_version(kube_dir / "go.mod", "k8s.io/kubernetes")
    etcd_version = _pinned_version(etcd_dir / "go.mod", "go.etcd.io/etcd/server/v3")
    major, minor = k8s_version.lstrip("v").split(".")[:2]
    # Without the version stamp the binary reports v0.0.0-master, which version checks dislike.
    ldflags = " ".join(
        f"-X k8s.io/component-base/version.{key}={value}"
        for key, value in (("gitVersion", k8s_version), ("gitMajor", major), ("gitMinor", minor))
    )
    root = cache_root() / "controlplane"
    kube = _Target(
        kube_dir,
        {
            "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
        },
        ldflags,
        root / f"kubernetes-{k8s_version}-{_fingerprint(kube_dir)}",
    )
    etcd = _Target(
        etcd_dir,
        {"etcd": "go.etcd.io/etcd/server/v3"},
        "",
        root / f"etcd-{etcd_version}-{_fingerprint(etcd_dir)}",
    )
    return kube, etcd, k8s_version, etcd_version


def _say(message: str) -> None:
    print(f"[dev-cluster] {message}", file=sys.stderr, flush=True)


def _build(target: _Target, label: str) -> None:
    if all(path.exists() for path in target.binaries()):
        return
    if shutil.which("go") is None:
        raise RuntimeError("Go is needed to build the control plane (https://go.dev); none on PATH")
    staging = target.out_dir.with_name(target.out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _say(f"building {label} from the Go module proxy (once per version; about 5 min cold on 2 cores)")
    started = time.monotonic()
    for name, package in target.packages.items():
        _go_build(target, package, staging / name, f"{label}: {name}", started)
    shutil.rmtree(target.out_dir, ignore_errors=True)
    staging.rename(target.out_dir)
    _say(f"built {label} in {time.monotonic() - started:.0f}s -> {target.out_dir}")


def _go_build(target: _Target, package: str, output: Path, label: str, started: float) -> None:
    command = ["go", "build", "-v", "-trimpath", "-o", str(output)]
    if target.ldflags:
        command += ["-ldflags", target.ldflags]
    command.append(package)
    # -mod=mod lets a fresh machine fill go.sum gaps; -buildvcs=false because the repo's git
    # metadata says nothing about these third-party binaries.
    env = dict(os.environ, GOFLAGS=f"{os.environ.get('GOFLAGS', '')} -mod=mod -buildvcs=false".strip())
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
    kube, etcd, k8s_version, etcd_version = _targets()
    _build(etcd, f"etcd {etcd_version}")
    _build(kube, f"kube-apiserver and kube-controller-manager {k8s_version}")
    apiserver, controller_manager = kube.binaries()
    (etcd_binary,) = etcd.binaries()
    return Binaries(etcd_binary, apiserver, controller_manager, k8s_version, etcd_version)
