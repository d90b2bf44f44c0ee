"""`dev-cluster image`: the Dockerfile's own steps run, a failing one stops the build with its own
error and leaves no cache entry, and the cache key follows what the image is made of.

The broken build runs the real tools (buildah bud on the base made from Debian's packages); the
base comes from the machine's image cache (built once, about a minute cold), and the app image is
built against it in a cache under tmp_path, so nothing this test breaks is seen by a later run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from signing_key_operator.devcluster import image

# Most of these run the node's tools (buildah, mmdebstrap, containerd; `make node` installs them).
pytestmark = pytest.mark.node

REPO = Path(__file__).resolve().parents[2]


def _copy_of_the_repository(target: Path) -> Path:
    """The files a build of the Dockerfile sees, plus the tests (which it must not see)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    target.mkdir()
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, target / name)
    for folder in ("operator", "tests"):
        shutil.copytree(REPO / folder, target / folder, ignore=ignore)
    return target


def test_a_failing_dockerfile_step_fails_the_build_with_its_own_error_and_leaves_no_cache_entry(tmp_path):
    base = image.ensure_base()
    context = _copy_of_the_repository(tmp_path / "repo")
    dockerfile = context / "Dockerfile"
    step = "RUN python -m venv /opt/venv"
    assert step in dockerfile.read_text()
    dockerfile.write_text(dockerfile.read_text().replace(step, "RUN python -m no_such_venv_module /opt/venv"))
    cache = tmp_path / "cache"

    with pytest.raises(RuntimeError) as failure:
        image.ensure_app(base, context=context, cache=cache)

    message = str(failure.value)
    assert "buildah bud (the Dockerfile) failed" in message
    assert "No module named no_such_venv_module" in message, "the step's own error is shown"
    assert 'building at STEP "RUN python -m no_such_venv_module /opt/venv"' in message
    left = sorted(path.name for path in image.images_dir(cache).iterdir())
    assert all(name.endswith(".lock") for name in left), f"no entry or staging folder is left: {left}"


def test_the_app_cache_key_follows_the_dockerfile_the_base_and_the_copied_code_not_the_tests(tmp_path):
    context = _copy_of_the_repository(tmp_path / "repo")
    base_digest, args = "sha256:" + "0" * 64, {"BASE_IMAGE": "localhost/base:x"}

    def key() -> str:
        return image.app_key(context, base_digest, args)

    first = key()
    assert key() == first, "the key is stable"

    (context / "tests" / "unit" / "test_new.py").write_text("def test_nothing_new():\n    assert True\n")
    cache_folder = context / "operator" / "signing_key_operator" / "__pycache__"
    cache_folder.mkdir(exist_ok=True)
    (cache_folder / "stray.cpython-311.pyc").write_bytes(b"\0bytecode")
    (context / "operator" / "signing_key_operator.egg-info").mkdir(exist_ok=True)
    (context / "operator" / "signing_key_operator.egg-info" / "PKG-INFO").write_text("Name: x\n")
    assert key() == first, "tests, bytecode and egg-info are not in the image"

    operator_code = context / "operator" / "signing_key_operator" / "controller" / "settings.py"
    original = operator_code.read_text()
    operator_code.write_text(original + "\n# changed\n")
    changed_code = key()
    assert changed_code != first, "the operator's code is copied into the image"
    operator_code.write_text(original)
    assert key() == first

    (context / "README.md").write_text((context / "README.md").read_text() + "\nchanged\n")
    changed_readme = key()
    assert changed_readme not in (first, changed_code), "README.md is copied (pip reads it)"

    dockerfile = context / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "LABEL changed=yes\n")
    changed_dockerfile = key()
    assert changed_dockerfile not in (first, changed_code, changed_readme)

    base_digest = "sha256:" + "1" * 64
    assert key() != changed_dockerfile, "another base makes another image"


def test_the_copied_files_are_read_from_the_dockerfiles_copy_lines(tmp_path):
    dockerfile = (REPO / "Dockerfile").read_text()
    assert image.copied_sources(dockerfile) == ["pyproject.toml", "README.md", "operator"]
    files = {path.relative_to(REPO).as_posix() for path in image.context_files(REPO, dockerfile)}
    assert "pyproject.toml" in files and "operator/signing_key_operator/cli/main.py" in files
    assert not any("__pycache__" in name or ".egg-info" in name or name.startswith("tests/") for name in files)

    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM scratch\nCOPY missing.txt /\n")
    with pytest.raises(RuntimeError, match="copies missing.txt"):
        image.context_files(context, (context / "Dockerfile").read_text())


def test_the_base_uses_the_hosts_debian_sources_of_its_suite_only(tmp_path):
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text(
        "# a comment\n"
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.test/debian bookworm main contrib\n"
        "deb-src http://mirror.test/debian bookworm main\n"
        "deb http://mirror.test/debian trixie main\n"
    )
    (apt / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.test/debian-security\nSuites: bookworm-security\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://vendor.test/apt\nSuites: nodistro\nComponents: main\n\n"
        "Enabled: no\nTypes: deb\nURIs: http://off.test/debian\nSuites: bookworm-backports\nComponents: main\n"
    )
    (apt / "sources.list.d" / "vendor.list.disabled").write_text("deb http://disabled.test/ bookworm main\n")

    sources = image.debian_sources("bookworm", apt)

    assert sources == (
        "Types: deb\nURIs: http://mirror.test/debian\nSuites: bookworm\nComponents: main contrib\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        "\n"
        "Types: deb\nURIs: http://mirror.test/debian-security\nSuites: bookworm-security\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    with pytest.raises(RuntimeError, match="name no bullseye suite"):
        image.debian_sources("bullseye", apt)


def test_a_new_entry_keeps_the_entries_of_its_kind_used_last_and_removes_the_rest(tmp_path):
    folder = image.images_dir(tmp_path)
    folder.mkdir(parents=True)
    for age, name in enumerate(["app-old4", "app-old3", "app-old2", "app-old1", "base-keep"]):
        (folder / name).mkdir()
        (folder / name / "image.json").write_text('{"ref": "x", "digest": "y"}')
        (folder / f"{name}.lock").touch()
        os.utime(folder / name, (1000 + age, 1000 + age))
    image._cached(folder / "app-old3")  # used now: newest
    lately = time.time() - image.KEPT_IF_USED_WITHIN / 2
    os.utime(folder / "app-old4", (lately, lately))  # used lately: maybe loading into a node now

    def build(staging: Path) -> tuple[str, str]:
        (staging / "image.tar").write_bytes(b"archive")
        return "docker.io/library/x:new", "sha256:new"

    built = image._ensure_entry(folder / "app-new", "app", build)

    assert built.archive.read_bytes() == b"archive"
    left = sorted(path.name for path in folder.iterdir())
    assert left == ["app-new", "app-new.lock", "app-old3", "app-old3.lock", "app-old4", "app-old4.lock",
                    "base-keep", "base-keep.lock"]


@pytest.fixture
def containerd(tmp_path):
    """A containerd of the test's own: root, state, socket and plugin folders under tmp_path, the
    CRI's options as the dev-cluster node sets them; stopped and its mounts released after."""
    folder = tmp_path / "ctd"
    folder.mkdir()
    socket = folder / "containerd.sock"
    config = folder / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{folder}/root"\nstate = "{folder}/state"\n'
        f'[grpc]\n  address = "{socket}"\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{folder}/opt"\n'
        '[plugins."io.containerd.grpc.v1.cri"]\n  restrict_oom_score_adj = true\n'
    )
    log = open(folder / "containerd.log", "w")
    process = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["ctr", "--address", str(socket), "version"], capture_output=True).returncode != 0:
            assert process.poll() is None, (folder / "containerd.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "containerd did not serve within 30 s"
            time.sleep(0.2)
        yield socket
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(str(folder))), reverse=True):
            subprocess.run(["umount", mount], check=True)


def test_load_image_imports_the_pause_image_under_exactly_its_name_and_it_runs(containerd):
    pause = image.ensure_pause()
    assert pause.ref.startswith("docker.io/library/"), "the name the kubelet looks up"

    image.load_image(pause.archive, pause.ref, containerd)

    ctr = ["ctr", "--address", str(containerd), "--namespace", "k8s.io"]
    names = subprocess.run([*ctr, "images", "list", "--quiet"], capture_output=True, text=True, check=True).stdout.split()
    assert pause.ref in names
    assert not [name for name in names if name.startswith("import-")], names
    run = subprocess.run([*ctr, "run", "--rm", "--read-only", pause.ref, "pause-version", "/pause", "-v"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("pause.c v3."), run.stdout
