"""The moving parts of a conformance run: a sidecar, a signer that sees the signing Secret the
way a pod that mounts it does (late), the verifier clients fed on a schedule, and a record of
every verdict.

Times: ``time.time()`` (wall clock) throughout, because the verifiers judge exp against the
same machine's wall clock.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import queue
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from signing_key_operator import sign as signer_library
from signing_key_operator.core.planner import ROTATE_ANNOTATION

from tests.integration.harness import REPO, free_port, terminate, wait_until
from tests.kubelet_volume import kubelet_update

from .clients import Client, VerifierProcess, build_dir
from .timeline import AUDIENCE, ISSUER, MOUNT_LAG_S, MOUNT_POLL_S, exp_leeway


TOKEN_CLAIMS = {"iss": ISSUER, "aud": AUDIENCE, "sub": "conformance"}
"""What the suite's tokens say besides the times and jti (the clients are told this issuer and audience)."""
PROBE_AGENT = "conformance-probe"
"""The User-Agent of the suite's own requests to a sidecar, so they are told apart from a client's."""


def jwks_fetches(port: int) -> dict[str, float]:
    """``signing_key_sidecar_jwks_fetches_total`` by client label: the JWKS fetches the sidecar
    on ``port`` answered, as its /metrics reports them."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"User-Agent": PROBE_AGENT})
    with urllib.request.urlopen(request, timeout=5) as reply:
        text = reply.read().decode()
    return {
        sample.labels["client"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "signing_key_sidecar_jwks_fetches_total"
    }


# -- sidecar --------------------------------------------------------------------------------------


class Sidecar:
    """`signing-key-operator serve` watching one ConfigMap, as the chart runs it."""

    def __init__(self, kubeconfig: Path, namespace: str, configmap: str, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/.well-known/jwks.json"
        self.log_path = log_path
        log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "signing_key_operator", "serve", "--configmap", f"{namespace}/{configmap}",
             "--kubeconfig", str(kubeconfig), "--host", "127.0.0.1", "--port", str(self.port),
             "--shutdown-delay", "0"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"sidecar exited with {self.process.returncode}; see {self.log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 30) -> "Sidecar":
        wait_until(self.ready, timeout, f"the JWKS sidecar on port {self.port} to be ready", interval=0.1)
        return self

    def fetches(self) -> dict[str, float]:
        return jwks_fetches(self.port)

    def kids(self) -> list[str]:
        with urllib.request.urlopen(self.url, timeout=2) as reply:
            return [key["kid"] for key in json.loads(reply.read())["keys"]]

    def stop(self) -> None:
        terminate(self.process, grace=10)


# -- the signer's view of the signing Secret ------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: bytes
    """PEM, or an HMAC key's raw bytes: what PyJWT signs with either way."""


def read_signing_secret(core: k8s.CoreV1Api, namespace: str, name: str) -> tuple[str, dict[str, bytes]] | None:
    """(resourceVersion, data) of the signing Secret, or None while it does not exist."""
    try:
        secret = core.read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return secret.metadata.resource_version, {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}


def signing_key(data: dict[str, bytes]) -> SigningKey:
    return SigningKey(data["kid"].decode(), data["alg"].decode(), data.get("private.pem") or data["key"])


class MountedSecret(threading.Thread):
    """A Secret as a pod sees it through a volume mount: every change, late (the signing
    Secret, or an HMAC policy's verification Secret).

    The kubelet notices a changed Secret on its sync loop and swaps the volume's files after
    its cache delay. Scaled down: this polls the API every ``poll`` seconds and writes each new
    version into :attr:`volume` ``lag`` seconds (uniform in the range) after it saw it, in
    order, the way the kubelet's AtomicWriter does (a ``..data`` swap). The operator's
    --secret-propagation must cover poll + the longest lag.
    """

    APPLY_EVERY_S = 0.01

    def __init__(self, kubeconfig: Path, namespace: str, name: str, poll: float, lag: tuple[float, float],
                 volume: Path):
        super().__init__(name="mounted-secret", daemon=True)
        self.api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
        self.core = k8s.CoreV1Api(self.api)
        self.namespace, self.secret_name = namespace, name
        self.poll, self.lag = poll, lag
        self.volume = volume
        """Where the Secret's files appear, as in the pod's mount."""
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._pending: list[tuple[float, dict[str, bytes]]] = []
        self._visible: SigningKey | None = None
        self.files: dict[str, bytes] | None = None
        """What the mounted files hold now (None before the first version is shown)."""
        self.changes: list[dict] = []
        """(kid, lifetimes, seen by the poll, visible to the signer), for the report."""

    def run(self) -> None:
        version = None
        next_poll = 0.0
        try:
            while not self.stop_event.is_set():
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.poll
                    try:
                        current = read_signing_secret(self.core, self.namespace, self.secret_name)
                    except Exception:  # noqa: BLE001 - an API hiccup is a late sync, not a test failure
                        current = None
                    if current is not None and current[0] != version:
                        version = current[0]
                        now = time.time()
                        shown = now if not self.changes else now + random.uniform(*self.lag)
                        if not self._pending or self._pending[-1][1] != current[1]:
                            self._pending.append((shown, current[1]))
                            self.changes.append({"kid": current[1].get("kid", b"").decode() or None,
                                                 "lifetimes": current[1].get("lifetimes.json", b"").decode(),
                                                 "seen": now, "visible": None})
                self._apply_due()
                self.stop_event.wait(self.APPLY_EVERY_S)
        finally:
            self.api.close()

    def _apply_due(self) -> None:
        while self._pending and self._pending[0][0] <= time.time():
            _, data = self._pending.pop(0)
            kubelet_update(self.volume, data)
            with self._lock:
                # A signing Secret names its key; an HMAC policy's verification Secret does not.
                self._visible = signing_key(data) if "kid" in data else None
                self.files = data
                next(change for change in self.changes if change["visible"] is None)["visible"] = time.time()

    def visible(self) -> SigningKey | None:
        """The key the mounted files hold now."""
        with self._lock:
            return self._visible

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)


def mount_signing_secret(kubeconfig: Path, namespace: str, policy: str, log_dir: Path) -> MountedSecret:
    """The policy's signing Secret as the suite's signers see it: the timeline's poll and lag,
    into ``log_dir/signing-mount``."""
    return MountedSecret(kubeconfig, namespace, f"{policy}-signing", MOUNT_POLL_S, MOUNT_LAG_S, log_dir / "signing-mount")


@contextmanager
def signing_policy(policies, kubeconfig: Path, namespace: str, policy: str, spec: dict,
                   log_dir: Path) -> Iterator[tuple[MountedSecret, Sidecar]]:
    """A policy created and Ready, a sidecar on its ConfigMap, and its signing Secret on the
    suite's lagging mount, all started and the mount showing a key; stopped, and the policy
    deleted, on the way out."""
    policies.create(policy, spec)
    policies.wait_ready(policy, 60)
    mounted = mount_signing_secret(kubeconfig, namespace, policy, log_dir)
    sidecar = Sidecar(kubeconfig, namespace, f"{policy}-jwks", log_dir / "sidecar.log")
    try:
        mounted.start()
        sidecar.wait_ready()
        wait_until(mounted.visible, 30, "the signers to see the signing Secret")
        yield mounted, sidecar
    finally:
        sidecar.stop()
        mounted.stop()
        policies.delete(policy)


# -- a sidecar on a mounted file, and keys made here (no operator) --------------------------------

def new_key(kid: str) -> tuple[dict, SigningKey]:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = {**json.loads(ECAlgorithm.to_jwk(private.public_key())), "kid": kid, "alg": "ES256", "use": "sig"}
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return jwk, SigningKey(kid, "ES256", pem)


class FileSidecar:
    """`signing-key-operator serve --jwks-file`, on a volume updated as the kubelet does; no
    control plane. Its own polls (``publish``, ``fetches``) send a User-Agent of their own,
    which ``fetches`` leaves out."""

    def __init__(self, volume: Path, log: Path, max_age: int = 1):
        self.volume = volume
        volume.mkdir(parents=True, exist_ok=True)  # a pod's volume exists before its container starts
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/.well-known/jwks.json"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "signing_key_operator", "serve", "--jwks-file", str(volume),
                 "--max-age", str(max_age), "--host", "127.0.0.1", "--port", str(self.port), "--shutdown-delay", "0"],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            )

    def _get(self, path: str) -> bytes:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers={"User-Agent": PROBE_AGENT})
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.read()

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"the sidecar exited with {self.process.returncode}")
        try:
            self._get("/healthz")  # listening; /readyz waits for a first set, which publish() makes
            return True
        except OSError:
            return False

    def publish(self, jwks: list[dict]) -> None:
        """Serve these JWKs, once the sidecar serves them."""
        kubelet_update(self.volume, {"jwks.json": json.dumps({"keys": jwks}).encode()})
        kids = sorted(key["kid"] for key in jwks)

        def served() -> bool:
            try:  # 503 until a first set is loaded
                return sorted(key["kid"] for key in json.loads(self._get("/.well-known/jwks.json"))["keys"]) == kids
            except OSError:
                return False

        wait_until(served, 10, f"the sidecar to serve {kids}", interval=0.05)

    def fetches(self) -> float:
        """Fetches by everything but the suite's own polls."""
        return sum(count for client, count in jwks_fetches(self.port).items() if client != PROBE_AGENT)

    def stop(self) -> None:
        terminate(self.process, grace=5)


# -- tokens and verdicts --------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    seq: int
    kid: str
    alg: str
    signed: float
    exp: int
    value: str
    probe: bool = False
    iat: int | None = None
    signer: str = "python"
    """Which signer made it: the Python library, a snippet (SNIPPET_SIGNERS), or the suite."""


def sign(key: SigningKey, seq: int, lifetime: int, probe: bool = False) -> Token:
    """A token signed here with ``key`` (a stand-in for a signer that kept a key, as the
    revoke probes need, or for keys no operator made); the run's tokens come from the library."""
    now = time.time()
    iat = int(now)
    claims = {**TOKEN_CLAIMS, "iat": iat, "exp": iat + lifetime, "jti": str(seq)}
    value = jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid})
    return Token(seq, key.kid, key.alg, now, iat + lifetime, value, probe, iat)


@dataclass
class Verdict:
    client: str
    token: Token
    kind: str
    """fresh | mid | oldest | probe"""
    started: float
    finished: float
    ok: bool
    reason: str
    due: float = 0.0
    """When the scheduler meant the request to start; ``started - due`` is the harness's lag."""

    @property
    def late(self) -> bool:
        """The verdict says nothing: the request started after exp + the client's leeway (the
        harness fell behind), or it was refused and answered after it, so the client may have
        read its clock once the token's life was over (a verifier stalled on a loaded machine,
        or waiting on a refetch). The tests that count late verdicts want none, except
        test_rotation, which allows a few where every key's end of life is still checked."""
        bound = self.token.exp + exp_leeway(self.client)
        return self.started > bound or (not self.ok and self.finished > bound)


def lag_figures(verdicts: list[Verdict]) -> dict:
    """How far behind its schedule the harness started the oldest-age checks (the ones with a
    deadline), in ms: the headroom ``timeline.OLDEST_MARGIN_S`` leaves is what these use up."""
    lags = sorted((verdict.started - verdict.due) * 1000 for verdict in verdicts if verdict.kind == "oldest")
    if not lags:
        return {}
    return {"oldest_start_lag_ms_p50": round(lags[len(lags) // 2]),
            "oldest_start_lag_ms_p99": round(lags[min(len(lags) - 1, len(lags) * 99 // 100)]),
            "oldest_start_lag_ms_max": round(lags[-1])}


def verdict_counts(verdicts: list[Verdict]) -> dict:
    """One client's verdicts as figures: verified and failed among those that are not
    ``late`` (Verdict.late: the harness's delay, not the client's verdict), how late the
    harness was, and a few failures for the evidence."""
    late = [verdict for verdict in verdicts if verdict.late]
    counted = [verdict for verdict in verdicts if not verdict.late]
    return {
        "verified": sum(verdict.ok for verdict in counted),
        "failed": sum(not verdict.ok for verdict in counted),
        "late": len(late),
        **lag_figures(verdicts),
        "failure_samples": [{"kid": verdict.token.kid, "kind": verdict.kind, "reason": verdict.reason}
                            for verdict in counted if not verdict.ok][:5],
    }


class ClientWorker(threading.Thread):
    """Feeds one verifier process from its queue, one request at a time, and records verdicts.

    The queue puts oldest-age checks first, earliest due first: they are the only requests
    with a deadline (exp + the client's leeway), while a fresh or half-way check that waits
    behind them a few milliseconds still asks about a token well inside its life. On two busy
    cores a FIFO queue let a backlog of fresh checks push oldest ones past their deadline."""

    _STOP, _DEADLINE, _IN_TURN = 0, 1, 2

    def __init__(self, process: VerifierProcess, record: Callable[[Verdict], None]):
        super().__init__(name=f"verifier-{process.client.name}", daemon=True)
        self.process = process
        self.record = record
        self.jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self.error: BaseException | None = None

    def run(self) -> None:
        while True:
            rank, _, _, job = self.jobs.get()
            if rank == self._STOP:
                return
            token, kind, due = job
            started = time.time()
            try:
                ok, reason = self.process.verify(token.value)
            except BaseException as error:  # noqa: BLE001 - surfaced by the test
                self.error = error
                return
            self.record(Verdict(self.process.client.name, token, kind, started, time.time(), ok, reason, due))

    def submit(self, token: Token, kind: str, due: float | None = None) -> None:
        due = time.time() if due is None else due
        rank = self._DEADLINE if kind == "oldest" else self._IN_TURN
        self.jobs.put((rank, due if rank == self._DEADLINE else 0.0, next(self._order), (token, kind, due)))

    def stop(self) -> None:
        """Stop at once, before any queued request: the verifier processes are closing."""
        self.jobs.put((self._STOP, 0.0, next(self._order), None))

    def backlog(self) -> int:
        return self.jobs.qsize()


class Scheduler(threading.Thread):
    """Hands each token to every client when it is due: fresh, half-way, and at the oldest age
    that client still accepts (exp + its leeway, ``timeline.exp_leeway``, less ``margin``)."""

    def __init__(self, workers: list[ClientWorker], margin: float):
        super().__init__(name="scheduler", daemon=True)
        self.margin = margin
        self.by_leeway: dict[float, list[ClientWorker]] = {}
        for worker in workers:
            self.by_leeway.setdefault(exp_leeway(worker.process.client.name), []).append(worker)
        self.workers = workers
        self._heap: list[tuple[float, int, Token, str, tuple[ClientWorker, ...]]] = []
        self._counter = itertools.count()
        self._lock = threading.Condition()
        self._stopped = False

    def add(self, token: Token, ages: bool = True) -> None:
        for worker in self.workers:
            worker.submit(token, "probe" if token.probe else "fresh")
        if not ages:
            return
        with self._lock:
            for leeway, workers in self.by_leeway.items():
                oldest = token.exp + leeway - self.margin
                for due, kind in (((token.signed + oldest) / 2, "mid"), (oldest, "oldest")):
                    heapq.heappush(self._heap, (due, next(self._counter), token, kind, tuple(workers)))
            self._lock.notify()

    def pending(self) -> int:
        with self._lock:
            return len(self._heap)

    def run(self) -> None:
        while True:
            with self._lock:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.time()):
                    timeout = (self._heap[0][0] - time.time()) if self._heap else None
                    self._lock.wait(timeout)
                if self._stopped:
                    return
                due, _, token, kind, workers = heapq.heappop(self._heap)
            for worker in workers:
                worker.submit(token, kind, due)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify()


class Signer(threading.Thread):
    """Signs a token every ``beat`` seconds with each of ``sources`` (a name -> sign(claims)),
    once ``ready()``: the signer library reading the mounted Secret, as an application does
    (the key and the lifetime are whatever the volume holds then), the snippets beside it, or
    a signer in a pod."""

    def __init__(self, sources: dict[str, Callable[[dict], str]], ready: Callable[[], bool],
                 scheduler: Scheduler, beat: float):
        super().__init__(name="signer", daemon=True)
        self.sources, self.ready, self.scheduler = sources, ready, scheduler
        self.beat = beat
        self.stop_event = threading.Event()
        self.seq = itertools.count(1)
        self.signed: list[Token] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        # The sources take turns spread evenly over the beat, not all at its start: tokens
        # signed together come due together at every age, and each client answers one request
        # at a time, so the last of a burst waited for the others (four signers on two busy
        # cores: 300 ms behind their oldest-age deadline).
        next_beat = time.time()
        step = self.beat / max(1, len(self.sources))
        try:
            while not self.stop_event.is_set():
                for turn, (name, sign_with) in enumerate(self.sources.items()):
                    if self.stop_event.wait(max(0.0, next_beat + turn * step - time.time())):
                        return
                    if self.ready():
                        token = library_token(sign_with(TOKEN_CLAIMS), next(self.seq), name)
                        self.signed.append(token)
                        self.scheduler.add(token)
                next_beat += self.beat
                self.stop_event.wait(max(0.0, next_beat - time.time()))
        except BaseException as error:  # noqa: BLE001 - surfaced by the test
            self.error = error

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)


def library_token(value: str, seq: int, signer: str = "python") -> Token:
    """A token a signer made, described from its own header and claims."""
    header, claims = jwt.get_unverified_header(value), jwt.decode(value, options={"verify_signature": False})
    return Token(seq, header["kid"], header["alg"], time.time(), claims["exp"], value, iat=claims["iat"], signer=signer)


class SnippetSigner:
    """One of the documented signer snippets (verifiers/node/sign.mjs, verifiers/go/sign,
    verifiers/java/.../Signer.java) as a process reading the mounted Secret: a JSON request per
    line, a token (or ``fail: ...``) back."""

    def __init__(self, name: str, argv: list[str], log_path: Path):
        self.name, self.log_path = name, log_path
        self._log = open(log_path, "ab")
        self._lock = threading.Lock()
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                        text=True, bufsize=1)

    def sign(self, claims: dict, lifetime_class: str | None = None, lifetime: int | None = None) -> str:
        request = {"claims": claims, **({"class": lifetime_class} if lifetime_class else {}),
                   **({"lifetime": lifetime} if lifetime is not None else {})}
        with self._lock:
            assert self.process.stdin is not None and self.process.stdout is not None
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            answer = self.process.stdout.readline().strip()
        if not answer or answer.startswith("fail: "):
            raise RuntimeError(f"{self.name} signer: {answer or 'no answer'} (log: {self.log_path})")
        return answer

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        terminate(self.process, grace=5)
        self._log.close()


def start_snippet_signers(volume: Path, log_dir: Path) -> dict[str, SnippetSigner]:
    """The Node (jose), Go (golang-jwt) and Java (Nimbus) snippets, from the suite's builds, on
    ``volume``."""
    return {
        "Node jose": SnippetSigner("Node jose", ["node", str(build_dir("node") / "sign.mjs"), "--dir", str(volume)],
                                   log_dir / "signer-node.log"),
        "Go golang-jwt": SnippetSigner("Go golang-jwt", [str(build_dir("go") / "gosigner"), "--dir", str(volume)],
                                       log_dir / "signer-go.log"),
        # the jar's manifest puts its lib/ (Nimbus, Tink) on the class path
        "Java Nimbus": SnippetSigner("Java Nimbus", ["java", "-XX:+UseSerialGC", "-cp",
                                                     str(build_dir("java") / "target" / "java-verifier.jar"),
                                                     "dev.signingkeys.conformance.Signer", "--dir", str(volume)],
                                     log_dir / "signer-java.log"),
    }


class ServedHistory(threading.Thread):
    """The kids the sidecar serves, sampled every ``interval`` s: the evidence for any failure."""

    def __init__(self, sidecar: Sidecar, interval: float = 0.05):
        super().__init__(name="served-history", daemon=True)
        self.sidecar, self.interval = sidecar, interval
        self.samples: list[tuple[float, frozenset[str]]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                kids = frozenset(self.sidecar.kids())
                now = time.time()
                if not self.samples or self.samples[-1][1] != kids:
                    self.samples.append((now, kids))
            except OSError:
                pass
            self.stop_event.wait(self.interval)

    def served_at(self, moment: float) -> frozenset[str] | None:
        served = None
        for sampled, kids in self.samples:
            if sampled > moment:
                break
            served = kids
        return served

    def first_with(self, kid: str, after: float) -> float | None:
        for sampled, kids in self.samples:
            if sampled >= after and kid in kids:
                return sampled
        return None

    def first_without(self, kid: str, after: float) -> float | None:
        for sampled, kids in self.samples:
            if sampled >= after and kid not in kids:
                return sampled
        return None

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)


@dataclass
class Recorder:
    verdicts: list[Verdict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, verdict: Verdict) -> None:
        with self.lock:
            self.verdicts.append(verdict)

    def snapshot(self) -> list[Verdict]:
        with self.lock:
            return list(self.verdicts)


def warm_up(processes: dict[str, VerifierProcess], key: SigningKey, lifetime: int) -> None:
    """One token to each client, not counted: start-up (a JVM takes a second or more). Signed
    for each client just before it is asked: the clients before it may take longer than a
    token lives (in an empty-cache run the seven before oauth2-proxy took more than 5 s, and
    oauth2-proxy, which allows no leeway past exp, refused the one shared token as expired).
    A client still starting can outlast even its own token (PyJWT, first of eight processes
    starting at once on two cores, once read its token after it expired), so a refusal gets one
    more fresh token; a client refusing both is a failure with both reasons."""
    for name, process in processes.items():
        reasons = []
        for _ in range(2):
            ok, reason = process.verify(sign(key, 0, lifetime).value)
            if ok:
                break
            reasons.append(reason)
        assert ok, f"{name} refused its first tokens: {reasons} (log: {process.log_path})"


def start_verifying(processes: dict[str, VerifierProcess], recorder: Recorder, mounted: MountedSecret,
                    beat: float, margin: float, snippets: dict[str, SnippetSigner] | None = None,
                    ) -> tuple[list[ClientWorker], Scheduler, Signer]:
    """A worker per client, the scheduler, and the signer library on ``mounted`` (and each of
    ``snippets`` too) signing every ``beat`` seconds."""
    library = signer_library.Signer.from_directory(mounted.volume)
    sources = {"python": library.sign, **{name: snippet.sign for name, snippet in (snippets or {}).items()}}
    return start_verifying_tokens_of(processes, recorder, sources, lambda: mounted.visible() is not None, beat, margin)


def start_verifying_tokens_of(processes: dict[str, VerifierProcess], recorder: Recorder,
                              sources: dict[str, Callable[[dict], str]], ready: Callable[[], bool],
                              beat: float, margin: float) -> tuple[list[ClientWorker], Scheduler, Signer]:
    """A worker per client, the scheduler, and a signer signing with each of ``sources`` every
    ``beat`` seconds once ``ready()``; every token verified fresh, half-way and at its oldest."""
    workers = [ClientWorker(process, recorder) for process in processes.values()]
    for worker in workers:
        worker.start()
    scheduler = Scheduler(workers, margin)
    scheduler.start()
    signer = Signer(sources, ready, scheduler, beat)
    signer.start()
    return workers, scheduler, signer


def finish_signing(signer: Signer, scheduler: Scheduler, workers: list[ClientWorker], recorder: Recorder,
                   timeout: float) -> list[Verdict]:
    """The last key signs 3 s more, then signing stops (a signer's failure raised) and every
    scheduled verification is answered within ``timeout``; the verdicts."""
    time.sleep(3)
    signer.stop()
    if signer.error is not None:
        raise RuntimeError(f"a signer failed: {signer.error!r}")
    drain(scheduler, workers, timeout)
    return recorder.snapshot()


def drain(scheduler: Scheduler, workers: list[ClientWorker], timeout: float) -> None:
    """Until every scheduled verification has been handed out and answered."""
    deadline = time.monotonic() + timeout
    while scheduler.pending() or any(worker.backlog() for worker in workers):
        if time.monotonic() > deadline:
            raise AssertionError("verifications still queued after the run")
        time.sleep(0.1)
    time.sleep(0.5)  # the request in flight


def stop_verifying(signer: Signer | None, scheduler: Scheduler | None, workers: list[ClientWorker],
                   processes: dict[str, VerifierProcess]) -> None:
    """Stop signing, scheduling, the workers and the verifier processes; any of them may be
    missing, since a run can fail part-way through starting them."""
    if signer is not None:
        signer.stop()
    if scheduler is not None:
        scheduler.stop()
    for worker in workers:
        worker.stop()
    for process in processes.values():
        process.close()


def start_clients(clients: tuple[Client, ...], args: dict[str, list[str]], log_dir: Path) -> dict[str, VerifierProcess]:
    processes = {}
    for one in clients:
        processes[one.name] = VerifierProcess(one, args.get(one.name, []), log_dir / f"verifier-{one.name}.log")
    return processes



def check_threads(workers: list[ClientWorker], signer: Signer) -> None:
    """Raise if a verifier worker or the signer has failed or stopped."""
    for worker in workers:
        if worker.error is not None:
            raise RuntimeError(f"{worker.process.client.name} verifier failed: {worker.error!r}")
        if not worker.is_alive():
            raise RuntimeError(f"{worker.process.client.name} worker stopped")
    if signer.error is not None:
        raise RuntimeError(f"signer failed: {signer.error!r}")


def drive_rotations(policies, policy: str, check: Callable[[], None], target: int, min_each: int,
                    deadline_s: float) -> list[dict]:
    """Rotations alternating between the rotate annotation (first, then half a second after
    each timer rotation) and the timer, until there are ``target`` of them and ``min_each`` of
    each kind; each as when, which kid and why. ``check`` runs every poll (failed threads)."""
    rotations: list[dict] = []
    requests = 0

    def request_rotation() -> None:
        nonlocal requests
        requests += 1
        policies.annotate(policy, {ROTATE_ANNOTATION: f"conformance-{requests}-{time.time():.3f}"})

    active = policies.get(policy)["status"]["activeKid"]
    request_rotation()
    request_at = None
    deadline = time.monotonic() + deadline_s
    while True:
        kinds = Counter(rotation["reason"] for rotation in rotations)
        if len(rotations) >= target and kinds["timer"] >= min_each and kinds["annotation"] >= min_each:
            return rotations
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(rotations)} rotations ({dict(kinds)}) in {deadline_s}s")
        check()
        status = policies.get(policy).get("status") or {}
        current = status.get("activeKid")
        if current and current != active:
            reason = next((key.get("reason") for key in status.get("keys") or [] if key["kid"] == current), "unknown")
            rotations.append({"at": time.time(), "kid": current, "reason": reason})
            active = current
            if reason == "timer":
                request_at = time.time() + 0.5
        if request_at is not None and time.time() >= request_at:
            request_rotation()
            request_at = None
        time.sleep(0.1)
