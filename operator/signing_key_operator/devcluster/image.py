"""Builds the images a dev-cluster node runs: the repository's Dockerfile, and the pause image.

No container registry is reachable, so nothing is pulled. The base image is made from Debian's
packages, fetched through the host's own apt sources by mmdebstrap, and turned into an image by
buildah; the Dockerfile then takes it through its BASE_IMAGE build argument and buildah runs the
Dockerfile's own steps (`buildah bud`), so a broken Dockerfile fails here exactly as it would for
a user. buildah, rather than umoci or skopeo, because it is the one Debian tool that both makes an
image from a root file system and runs a Dockerfile; the pause image (the kubelet's sandbox) is the
real `pause.c` from the pinned k8s.io/kubernetes module, compiled statically into a scratch image
by the same tool.

Each image is cached under `cache_root()/images/` in a folder named by a hash of everything that
decides it (base: the packages, mmdebstrap's arguments, the apt sources and the host's added CA
certificates; pause: pause.c, the compiler flags and gcc; app: the base's digest, the Dockerfile,
its build arguments and every file its COPY lines take from the context). A cache entry is only
ever a finished one: it is built in a `.partial` folder, which is renamed into place after every
step succeeded and removed when one fails, under a lock so two processes never build one entry.
Each entry holds the image as an OCI archive (`image.tar`, what `ctr images import` loads) and
`image.json` (its reference and manifest digest). buildah works in a storage of its own (vfs, chroot
isolation) made under the cache for one build and removed after it, so neither system storage nor
a stale layer is ever involved.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .build import GOMOD_DIR, _pinned_version, cache_root, finished_entry

REPO_ROOT = Path(__file__).resolve().parents[3]

# The Dockerfile's default base is python:3.12-slim-bookworm: the same Debian release, whose
# python3 (3.11) the package accepts. The packages are what the Dockerfile's steps use: `python -m
# venv` and pip (python3-venv brings pip's and setuptools' wheels), `python` (python-is-python3),
# groupadd/useradd (passwd) and TLS to the package index (ca-certificates).
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "passwd", "ca-certificates")
# Essential packages and the ones above, no apt (the Dockerfile installs nothing with it); no man
# pages, docs (but copyrights) or translations, which no container reads.
MMDEBSTRAP_ARGS = (
    "--variant=essential",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
)
BASE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8")
# CA certificates the host added to its trust store. A host that reaches PyPI through a proxy with
# its own CA needs the build's pip to trust it too; Debian's pip reads the system bundle.
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")

APP_REPOSITORY = "docker.io/library/signing-key-operator"
PAUSE_REPOSITORY = "docker.io/library/signing-key-operator-pause"
PAUSE_SOURCE = "build/pause/linux/pause.c"
# What the pause image's Makefile compiles with (CFLAGS there), VERSION named the same way.
PAUSE_CFLAGS = ("-Os", "-Wall", "-Werror", "-static")


@dataclass(frozen=True)
class BuiltImage:
    """A finished cache entry: `archive` is an OCI archive holding one image named `ref`."""

    ref: str
    archive: Path
    digest: str


@dataclass(frozen=True)
class Images:
    app_ref: str
    app_archive: Path
    pause_ref: str
    pause_archive: Path


def _say(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


def _run(command: Sequence[str], what: str, **kwargs) -> str:
    """Run a command; on failure raise with its own output, which names what went wrong."""
    result = subprocess.run(list(command), capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-40:])
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {shlex.join(command)}\n{tail}")
    return result.stdout


# The Debian packages of the tools below (buildah runs rootless only with uidmap's newuidmap).
_PACKAGES = {"mmdebstrap": "mmdebstrap", "buildah": "buildah uidmap", "gcc": "gcc libc6-dev", "ctr": "containerd"}


def _require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if "go" in missing:
        raise RuntimeError("Go is needed to fetch the pause image's source (https://go.dev); none on PATH")
    if missing:
        packages = " ".join(_PACKAGES[tool] for tool in missing)
        raise RuntimeError(f"{', '.join(missing)} not found: install with `sh scripts/apt-install.sh {packages}`")


def _digest(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


# --- the cache ---------------------------------------------------------------------------------


def _cached(entry: Path) -> BuiltImage | None:
    meta = entry / "image.json"
    if not meta.is_file():
        return None
    os.utime(entry)  # used now: _prune keeps the entries used last
    recorded = json.loads(meta.read_text())
    return BuiltImage(recorded["ref"], entry / "image.tar", recorded["digest"])


# Entries of one kind kept besides the one just built: every change to the operator's code makes a
# new app image (90 MiB), and switching between a few checkouts should not rebuild each time. One
# used within KEPT_IF_USED_WITHIN seconds is kept too: another run may be loading it into a node.
KEPT_PER_KIND = 3
KEPT_IF_USED_WITHIN = 3600


def _prune(entry: Path) -> None:
    """Remove the entries of `entry`'s kind beyond the KEPT_PER_KIND used last and not used lately,
    each under its lock (one another process is building is left alone)."""
    kind = entry.name.rsplit("-", 1)[0]
    others = [p for p in entry.parent.glob(f"{kind}-*") if p.is_dir() and p.suffix != ".partial" and p != entry]
    for old in sorted(others, key=lambda p: p.stat().st_mtime, reverse=True)[KEPT_PER_KIND - 1:]:
        if time.time() - old.stat().st_mtime < KEPT_IF_USED_WITHIN:
            continue
        lock_path = old.with_name(old.name + ".lock")
        with open(lock_path, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            shutil.rmtree(old)
            lock_path.unlink()
        _say(f"removed the older {kind} image {old.name}")


def _ensure_entry(entry: Path, label: str, build) -> BuiltImage:
    """Return the finished entry, building it into `<entry>.partial` first if it is missing
    (build.finished_entry). `build(staging)` writes `staging/image.tar` and returns (ref, digest)."""
    started = time.monotonic()
    with finished_entry(entry, lambda: (entry / "image.json").is_file()) as staging:
        if staging is not None:
            ref, digest = build(staging)
            (staging / "image.json").write_text(json.dumps({"ref": ref, "digest": digest}, indent=1) + "\n")
    found = _cached(entry)
    assert found is not None
    if staging is None:
        _say(f"{label}: cached {found.ref}")
        return found
    _prune(entry)
    size = found.archive.stat().st_size
    _say(f"{label}: built {found.ref} in {time.monotonic() - started:.0f}s ({size / 2**20:.0f} MiB archive)")
    return found


class _Buildah:
    """buildah on a storage of its own; `storage()` makes one for a build and removes it after."""

    def __init__(self, root: Path):
        self.root = root

    def __call__(self, *args: str, what: str) -> str:
        return _run(self.command(*args), what)

    def command(self, *args: str) -> list[str]:
        return [
            "buildah", "--root", str(self.root / "root"), "--runroot", str(self.root / "run"),
            "--storage-driver", "vfs", *args,
        ]

    @classmethod
    @contextmanager
    def storage(cls, parent: Path) -> Iterator[_Buildah]:
        parent.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=".buildah-", dir=parent))
        try:
            yield cls(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def push(self, image: str, archive: Path, ref: str, what: str) -> str:
        """Write `image` as an OCI archive naming it `ref`; return its manifest digest."""
        digest_file = archive.with_name(archive.name + ".digest")
        self("push", "--quiet", "--digestfile", str(digest_file), image, f"oci-archive:{archive}:{ref}", what=what)
        digest = digest_file.read_text().strip()
        digest_file.unlink()
        return digest

    def load(self, image: BuiltImage, what: str) -> None:
        """Put a cached image into this storage under its own name."""
        image_id = self("pull", "--quiet", f"oci-archive:{image.archive}", what=what).strip().splitlines()[-1]
        self("tag", image_id, image.ref, what=what)


def images_dir(cache: Path | None = None) -> Path:
    return (cache or cache_root()) / "images"


# --- base: Debian's packages ---------------------------------------------------------------------


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas, current, key = [], {}, None
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, None
        elif line[0] in " \t" and key:
            current[key] += "\n" + line.strip()
        else:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            current[key] = value.strip()
    return stanzas


_ONE_LINE_OPTIONS = {"signed-by": "signed-by", "arch": "architectures", "lang": "languages", "trusted": "trusted"}


def _one_line_stanzas(text: str) -> list[dict[str, str]]:
    stanzas = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"(\S+)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)", line)
        if not match:
            raise RuntimeError(f"cannot read the apt source line {line!r}")
        kind, options, uri, suite, components = match.groups()
        stanza = {"types": kind, "uris": uri, "suites": suite, "components": components}
        for option in (options or "").split():
            name, _, value = option.partition("=")
            if name not in _ONE_LINE_OPTIONS:
                raise RuntimeError(f"the apt source line {line!r} has option {name!r}, which this build does not know")
            stanza[_ONE_LINE_OPTIONS[name]] = value.replace(",", " ")
        stanzas.append(stanza)
    return stanzas


# deb822 field names are case-insensitive; these are written as apt's manual spells them.
_DEB822_NAMES = {"uris": "URIs", "signed-by": "Signed-By"}


def debian_sources(suite: str = BASE_SUITE, apt_dir: Path = Path("/etc/apt")) -> str:
    """The host's apt sources for `suite` and its -updates/-security/... suites, as deb822 text.

    Sources of other suites (a vendor's repository, another release) are left out: the base is
    Debian's `suite` only, and their keyrings need not be there."""
    files = [apt_dir / "sources.list"] if (apt_dir / "sources.list").is_file() else []
    files += sorted(p for p in (apt_dir / "sources.list.d").glob("*") if p.suffix in (".list", ".sources"))
    kept = []
    for path in files:
        text = path.read_text()
        for stanza in _deb822_stanzas(text) if path.suffix == ".sources" else _one_line_stanzas(text):
            if stanza.get("enabled", "yes").lower() == "no" or "deb" not in stanza.get("types", "").split():
                continue
            suites = [s for s in stanza.get("suites", "").split() if s == suite or s.startswith(suite + "-")]
            if suites:
                kept.append(dict(stanza, types="deb", suites=" ".join(suites)))
    if not kept:
        raise RuntimeError(f"the host's apt sources ({', '.join(map(str, files)) or 'none'}) name no {suite} suite")
    return "\n".join(
        "".join(f"{_DEB822_NAMES.get(key, key.title())}: {value}\n" for key, value in stanza.items()) for stanza in kept
    )


def _host_ca_certificates() -> list[Path]:
    return sorted(p for p in HOST_CA_DIR.rglob("*.crt") if p.is_file()) if HOST_CA_DIR.is_dir() else []


def _mmdebstrap_command(sources: str, output: Path, certificates: list[Path]) -> list[str]:
    command = ["mmdebstrap", *MMDEBSTRAP_ARGS, f"--include={','.join(BASE_PACKAGES)}", "--format=tar"]
    if certificates:
        command += [
            f"--customize-hook=sync-in {HOST_CA_DIR} {HOST_CA_DIR}",
            '--customize-hook=chroot "$1" update-ca-certificates --fresh',
        ]
    return command + [BASE_SUITE, str(output), "-"]


def base_key(sources: str, certificates: list[Path]) -> str:
    recipe = json.dumps({"suite": BASE_SUITE, "packages": BASE_PACKAGES, "args": MMDEBSTRAP_ARGS, "env": BASE_ENV})
    parts = [recipe.encode(), sources.encode()]
    for path in certificates:
        parts += [str(path).encode(), path.read_bytes()]
    return _digest(*parts)[:12]


def ensure_base(cache: Path | None = None) -> BuiltImage:
    """The Dockerfile's base: a minimal Debian root file system as an image (`localhost/...`)."""
    _require("mmdebstrap", "buildah")
    sources, certificates = debian_sources(), _host_ca_certificates()
    key = base_key(sources, certificates)
    ref = f"localhost/signing-key-operator-base:{BASE_SUITE}-{key}"

    def build(staging: Path) -> tuple[str, str]:
        rootfs = staging / "rootfs.tar"
        _say(f"base: mmdebstrap {BASE_SUITE} with {', '.join(BASE_PACKAGES)} (about 1 min)")
        _run(_mmdebstrap_command(sources, rootfs, certificates), "mmdebstrap", input=sources)
        with _Buildah.storage(staging) as buildah:
            _say("base: buildah from scratch, add the root file system, commit")
            container = buildah("from", "scratch", what="buildah from scratch").strip()
            buildah("add", container, str(rootfs), "/", what="buildah add the root file system")
            rootfs.unlink()
            config = [arg for env in BASE_ENV for arg in ("--env", env)]
            buildah("config", *config, "--cmd", "/bin/bash", container, what="buildah config")
            buildah("commit", "--quiet", "--rm", container, ref, what="buildah commit")
            digest = buildah.push(ref, staging / "image.tar", ref, "buildah push (base)")
        return ref, digest

    return _ensure_entry(images_dir(cache) / f"base-{key}", "base", build)


# --- pause: the kubelet's sandbox ----------------------------------------------------------------


def _kubernetes_module_dir() -> tuple[Path, str]:
    kube_dir = GOMOD_DIR / "kube"
    version = _pinned_version(kube_dir / "go.mod", "k8s.io/kubernetes")
    # `go mod download` fetches the module from the Go module proxy if the module cache lacks it.
    info = json.loads(_run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
                           "go mod download k8s.io/kubernetes", cwd=kube_dir))
    if "Dir" not in info:
        raise RuntimeError(f"go mod download k8s.io/kubernetes@{version}: {info.get('Error', info)}")
    return Path(info["Dir"]), version


def pause_flags(module_dir: Path, kubernetes_version: str) -> tuple[str, list[str]]:
    """The pause image's version (the Makefile's TAG) and the Makefile's CFLAGS, VERSION stamped
    as `v<TAG>-<the kubernetes version>` (the Makefile's `git describe` of the release)."""
    makefile = (module_dir / "build" / "pause" / "Makefile").read_text()
    match = re.search(r"^TAG \?= (\S+)$", makefile, re.M)
    if not match:
        raise RuntimeError(f"{module_dir}/build/pause/Makefile names no TAG")
    tag = match.group(1)
    return tag, [*PAUSE_CFLAGS, f"-DVERSION=v{tag}-{kubernetes_version}"]


def ensure_pause(cache: Path | None = None) -> BuiltImage:
    """The pause image: `/pause` compiled statically from the pinned module, nothing else."""
    _require("buildah", "gcc", "go")
    module_dir, kubernetes_version = _kubernetes_module_dir()
    source = module_dir / PAUSE_SOURCE
    tag, flags = pause_flags(module_dir, kubernetes_version)
    gcc = _run(["gcc", "--version"], "gcc --version").splitlines()[0] + _run(["gcc", "-dumpmachine"], "gcc -dumpmachine")
    key = _digest(source.read_bytes(), json.dumps(flags).encode(), gcc.encode())[:12]
    ref = f"{PAUSE_REPOSITORY}:{tag}-{key}"

    def build(staging: Path) -> tuple[str, str]:
        binary = staging / "pause"
        _say(f"pause: gcc {' '.join(flags)} {PAUSE_SOURCE}")
        _run(["gcc", *flags, "-o", str(binary), str(source)], "compiling pause.c")
        with _Buildah.storage(staging) as buildah:
            container = buildah("from", "scratch", what="buildah from scratch").strip()
            buildah("copy", "--chmod", "0755", container, str(binary), "/pause", what="buildah copy /pause")
            buildah("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container, what="buildah config")
            buildah("commit", "--quiet", "--rm", container, ref, what="buildah commit")
            digest = buildah.push(ref, staging / "image.tar", ref, "buildah push (pause)")
        binary.unlink()
        return ref, digest

    return _ensure_entry(images_dir(cache) / f"pause-{key}", "pause", build)


# --- app: the repository's Dockerfile ------------------------------------------------------------


def _instructions(dockerfile: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    logical = ""
    for line in dockerfile.splitlines():
        if not logical and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        if logical.strip():
            word, _, rest = logical.strip().partition(" ")
            yield word.upper(), rest.strip()
        logical = ""


def copied_sources(dockerfile: str) -> list[str]:
    """What the Dockerfile's COPY and ADD lines take from the build context."""
    sources = []
    for instruction, arguments in _instructions(dockerfile):
        if instruction not in ("COPY", "ADD"):
            continue
        words = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
        flags = [w for w in words if w.startswith("--")]
        if any(flag.startswith("--from=") for flag in flags):
            continue  # from another stage, not the context
        for source in [w for w in words if not w.startswith("--")][:-1]:
            if "://" in source:
                raise RuntimeError(f"{instruction} {source}: a URL is not a build-context file")
            sources.append(source)
    return sources


def _ignore_patterns(context: Path) -> list[re.Pattern[str]]:
    ignore = context / ".dockerignore"
    patterns = []
    for line in ignore.read_text().splitlines() if ignore.is_file() else []:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("!"):
            raise RuntimeError(f"{ignore}: exceptions ({line}) are not understood by the image cache key")
        expression = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", line.strip("/")):
            expression += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        patterns.append(re.compile(expression))
    return patterns


def context_files(context: Path, dockerfile: str) -> list[Path]:
    """The context files that COPY/ADD take, less what .dockerignore keeps out of the context."""
    patterns = _ignore_patterns(context)

    def ignored(path: Path) -> bool:
        parts = PurePosixPath(path.relative_to(context).as_posix()).parts
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        return any(pattern.fullmatch(prefix) for pattern in patterns for prefix in prefixes)

    files: set[Path] = set()
    for source in copied_sources(dockerfile):
        matches = sorted(context.glob(source)) if any(c in source for c in "*?[") else [context / source]
        if not any(m.exists() for m in matches):
            raise RuntimeError(f"the Dockerfile copies {source}, which {context} does not have")
        for match in matches:
            candidates = match.rglob("*") if match.is_dir() else [match]
            files.update(p for p in candidates if p.is_file() and not ignored(p))
    return sorted(files)


def app_key(context: Path, base_digest: str, build_args: dict[str, str]) -> str:
    dockerfile = (context / "Dockerfile").read_text()
    parts = [base_digest.encode(), dockerfile.encode(), json.dumps(build_args, sort_keys=True).encode()]
    for path in context_files(context, dockerfile):
        parts += [path.relative_to(context).as_posix().encode(), path.read_bytes()]
    return _digest(*parts)[:12]


def ensure_app(base: BuiltImage, context: Path = REPO_ROOT, cache: Path | None = None) -> BuiltImage:
    """The repository's Dockerfile built by `buildah bud` on `base` (its BASE_IMAGE)."""
    _require("buildah")
    if not (context / "Dockerfile").is_file():
        raise RuntimeError(f"no Dockerfile in {context}: `dev-cluster image` builds a checkout of the repository")
    build_args = {"BASE_IMAGE": base.ref}
    key = app_key(context, base.digest, build_args)
    ref = f"{APP_REPOSITORY}:dev-{key}"

    def build(staging: Path) -> tuple[str, str]:
        with _Buildah.storage(staging) as buildah:
            buildah.load(base, "loading the base image")
            _say(f"app: buildah bud -f Dockerfile --build-arg BASE_IMAGE={base.ref} {context}")
            command = buildah.command(
                "bud", "--isolation", "chroot", "--network", "host", "--pull=never",
                *[arg for name, value in build_args.items() for arg in ("--build-arg", f"{name}={value}")],
                "-f", str(context / "Dockerfile"), "-t", ref, str(context),
            )
            _stream(command, "buildah bud (the Dockerfile)", label="app")
            digest = buildah.push(ref, staging / "image.tar", ref, "buildah push (app)")
        return ref, digest

    return _ensure_entry(images_dir(cache) / f"app-{key}", "app", build)


def _stream(command: list[str], what: str, label: str) -> None:
    """Run a long build, printing its steps as they start; on failure raise with its last lines."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-40:]
        if re.search(r"STEP \d+/\d+: ", line):  # "[1/2] STEP 3/6: RUN ..." in a multi-stage build
            _say(f"{label}: {line}")
    rc = process.wait()
    if rc != 0:
        raise RuntimeError(f"{what} failed (exit {rc}):\n" + "\n".join(tail))


def ensure_images(cache: Path | None = None) -> Images:
    """Build (or reuse) the base, pause and app images; return what a node loads."""
    pause = ensure_pause(cache)
    app = ensure_app(ensure_base(cache), cache=cache)
    return Images(app.ref, app.archive, pause.ref, pause.archive)


# --- loading into a containerd -------------------------------------------------------------------


def load_image(archive: Path, ref: str, containerd_socket: Path | str, snapshotter: str | None = None) -> None:
    """Import an archive into a containerd's k8s.io namespace (the CRI's) under exactly `ref`.

    `ref` must be the normalised name (docker.io/library/x:tag): that is the name the kubelet
    asks for. The archive names its image with that whole name, which ctr keeps as it is; only a
    short name (umoci's `latest`) becomes `import-<date>:latest`, the name the CRI then failed to
    find. No `--index-name`: it would give the archive's index the same name as the image.
    `--base-name` imports only images of `ref`'s repository, and the name is checked after."""
    _require("ctr")
    ctr = ["ctr", "--address", str(containerd_socket), "--namespace", "k8s.io"]
    command = [*ctr, "images", "import", "--base-name", ref.rsplit(":", 1)[0]]
    if snapshotter:
        command += ["--snapshotter", snapshotter]
    _run([*command, str(archive)], f"importing {ref} into containerd")
    names = _run([*ctr, "images", "list", "--quiet"], "ctr images list").split()
    if ref not in names:
        raise RuntimeError(f"ctr imported {archive} but containerd has no image {ref} (it has {', '.join(names)})")
