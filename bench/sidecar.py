"""Benchmarks of the JWKS sidecar (`signing-key-operator serve`). They PRINT figures; no asserts.

    .venv/bin/python bench/sidecar.py throughput   # wrk vs Debian's nginx, same file, same headers
    .venv/bin/python bench/sidecar.py propagation  # ConfigMap update -> first response with new ETag
    .venv/bin/python bench/sidecar.py rss          # VmRSS at idle and under wrk load (+ nginx)
    .venv/bin/python bench/sidecar.py pipeline     # VmRSS under pipelined GETs from clients that never read
    .venv/bin/python bench/sidecar.py all

nginx and wrk come from Debian (bench/setup-tools.sh installs them with apt-get when missing).
Everything listens on 127.0.0.1 only; nginx runs in the foreground with a private prefix and
config in a temp dir (never the system service). Every loop is bounded in count and time.
See bench/README.md for the figures measured.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO))

from signing_key_operator.core.jwks import render_jwk_set  # noqa: E402
from tests.kubelet_volume import kubelet_update  # noqa: E402
from signing_key_operator.core.keys import generate_key  # noqa: E402

JWKS_PATH = "/.well-known/jwks.json"
MAX_AGE = 60
MAX_AGE_ANNOTATION = "signingkeys.dev/jwks-max-age"


# ---------------------------------------------------------------------------------------------
# helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest() + '"'


def realistic_jwks(alg: str = "RS256", n: int = 3) -> bytes:
    """What one policy publishes in steady state: previous, current and next key."""
    return render_jwk_set([generate_key(alg).public_jwk() for _ in range(n)])


def find_tool(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)


def ensure_tools() -> tuple[str, str]:
    nginx, wrk = find_tool("nginx"), find_tool("wrk")
    if not (nginx and wrk):
        print("nginx or wrk missing: running bench/setup-tools.sh (apt-get)", flush=True)
        subprocess.run(["sh", str(REPO / "bench" / "setup-tools.sh")], check=True, timeout=900)
        nginx, wrk = find_tool("nginx"), find_tool("wrk")
    if not (nginx and wrk):
        sys.exit("nginx and wrk are needed (bench/setup-tools.sh)")
    return nginx, wrk


def pin(cpu: int | None) -> list[str]:
    """`taskset -c CPU` prefix, or nothing (one core, or pinning disabled)."""
    if cpu is None or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(cpu)]


def http_get(port: int, path: str = JWKS_PATH, headers: dict[str, str] | None = None,
             timeout: float = 2.0) -> tuple[int | None, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    except OSError:
        return None, {}, b""
    finally:
        conn.close()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time consumed so far by ``pids`` (from /proc/PID/stat)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        out = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(p) for p in out]


def mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python {platform.python_version()}"


# ---------------------------------------------------------------------------------------------
# servers


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def pids(self) -> list[int]:
        """The process and its children (nginx: master + worker)."""
        return [self.process.pid, *children(self.process.pid)]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM if self.name != "nginx" else signal.SIGQUIT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_ours(workdir: Path, source: list[str], *, cpu: int | None, extra: list[str] = (),
               pythonpath: Path = REPO / "operator", name: str = "ours") -> Server:
    port = free_port()
    log = workdir / f"sidecar-{port}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [*pin(cpu), sys.executable, "-m", "signing_key_operator", "serve", *source,
             "--host", "127.0.0.1", "--port", str(port), "--shutdown-delay", "0", *extra],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(pythonpath)},
        )
    server = Server(name, port, process, log)
    # taskset execs the target: same pid. Wait for the listener.
    wait_for(lambda: http_get(port, "/healthz")[0] == 200 or process.poll() is not None, 30, "the sidecar to listen")
    if process.poll() is not None:
        raise SystemExit(f"the sidecar exited:\n{log.read_text()[-3000:]}")
    return server


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server_tokens off;
    # keep-alive connections as long-lived as ours (nginx closes one after 1000 requests by
    # default, which would make wrk reconnect and cost nginx throughput)
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{ }}
    default_type application/jwk-set+json;
    etag on;
    server {{
        listen 127.0.0.1:{port};
        location = /.well-known/jwks.json {{
            alias {jwks};
            add_header Cache-Control "public, max-age={max_age}" always;
            add_header Access-Control-Allow-Origin "*" always;
            add_header X-Content-Type-Options nosniff always;
        }}
    }}
}}
"""


def start_nginx(nginx: str, workdir: Path, jwks_file: Path, *, cpu: int | None) -> Server:
    port = free_port()
    prefix = workdir / "nginx"
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, jwks=jwks_file, max_age=MAX_AGE))
    log = prefix / "stderr.log"
    with open(log, "ab") as out:
        process = subprocess.Popen([*pin(cpu), nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                                   stdout=out, stderr=subprocess.STDOUT)
    server = Server("nginx", port, process, log)
    wait_for(lambda: http_get(port)[0] == 200 or process.poll() is not None, 15, "nginx to listen")
    if process.poll() is not None:
        raise SystemExit(f"nginx exited:\n{log.read_text()[-3000:]}\n{(prefix / 'error.log').read_text()[-3000:]}")
    return server


@contextlib.contextmanager
def running(*servers: Server) -> Iterator[None]:
    try:
        yield
    finally:
        for s in servers:
            s.stop()


def served_file(workdir: Path, body: bytes) -> Path:
    """A world-readable directory with jwks.json (nginx's worker may run as nobody)."""
    www = workdir / "www"
    www.mkdir()
    os.chmod(workdir, 0o755)
    os.chmod(www, 0o755)
    path = www / "jwks.json"
    path.write_bytes(body)
    os.chmod(path, 0o644)
    return path


# ---------------------------------------------------------------------------------------------
# wrk


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: str
    non2xx: int
    cpu_us: float = 0.0
    """Server CPU time (user + system) per request, in microseconds."""


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"cannot parse wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(wrk: str, port: int, *, threads: int, connections: int, duration: int, cpu: int | None) -> WrkResult:
    cmd = [*pin(cpu), wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
           f"http://127.0.0.1:{port}{JWKS_PATH}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Socket errors:.*", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return WrkResult(rps, p50, p99, requests, errors.group(0) if errors else "", int(non2xx.group(1)) if non2xx else 0)


def cpu_layout(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """(server cpu, wrk cpu): on 2+ cores, the server on CPU 1 and wrk on CPU 0."""
    if args.no_pin or (os.cpu_count() or 1) < 2:
        return None, None
    return 1, 0


# ---------------------------------------------------------------------------------------------
# throughput


def cmd_throughput(args: argparse.Namespace) -> None:
    nginx, wrk = ensure_tools()
    server_cpu, wrk_cpu = cpu_layout(args)
    body = realistic_jwks(args.alg)
    nginx_version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.splitlines()[0].strip()
    print(f"# throughput: GET {JWKS_PATH}, {len(body)}-byte JWKS ({args.alg} x3), {machine()}")
    print(f"# {nginx_version} (worker_processes 1) vs ours (one process); {wrk_version}")
    print(f"# load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])} "
          "(other processes on the machine skew absolute figures; compare within a round)")
    print(f"# wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency, {args.rounds} round(s) each, "
          f"alternating, after a {args.warmup}s warm-up; "
          + (f"servers pinned to CPU {server_cpu}, wrk to CPU {wrk_cpu}" if server_cpu is not None else "no CPU pinning"))
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp:
        workdir = Path(tmp)
        jwks_file = served_file(workdir, body)
        ours = start_ours(workdir, ["--jwks-file", str(jwks_file.parent), "--max-age", str(MAX_AGE)], cpu=server_cpu)
        ngx = start_nginx(nginx, workdir, jwks_file, cpu=server_cpu)
        servers = [ours, ngx]
        if args.baseline:
            servers.insert(1, start_ours(workdir, ["--jwks-file", str(jwks_file.parent), "--max-age", str(MAX_AGE)],
                                         cpu=server_cpu, pythonpath=args.baseline.resolve(), name="base"))
        with running(*servers):
            for s in servers[:-1]:
                wait_for(lambda: http_get(s.port)[0] == 200, 10, "the sidecar to load the file")
            for s in servers:
                status, headers, got = http_get(s.port)
                shown = {k: headers.get(k) for k in ("content-type", "cache-control", "etag", "last-modified",
                                                     "access-control-allow-origin", "x-content-type-options")}
                same = "same bytes" if got == body else "DIFFERENT BYTES"
                print(f"# {s.name:5} {status} {same} {json.dumps(shown)}")
                etag = headers.get("etag", "")
                print(f"#       If-None-Match {etag} -> {http_get(s.port, headers={'If-None-Match': etag})[0]}")
            for s in servers:
                run_wrk(wrk, s.port, threads=args.threads, connections=args.connections, duration=args.warmup, cpu=wrk_cpu)
            results: dict[str, list[WrkResult]] = {s.name: [] for s in servers}
            for r in range(args.rounds):
                for s in servers if r % 2 == 0 else servers[::-1]:
                    pids = s.pids
                    cpu_before = cpu_seconds(pids)
                    res = run_wrk(wrk, s.port, threads=args.threads, connections=args.connections,
                                  duration=args.duration, cpu=wrk_cpu)
                    res.cpu_us = (cpu_seconds(pids) - cpu_before) / max(res.requests, 1) * 1e6
                    results[s.name].append(res)
                    extra = (f" {res.errors}" if res.errors else "") + (f" non-2xx/3xx {res.non2xx}" if res.non2xx else "")
                    print(f"round {r + 1} {s.name:5}: {res.rps:10.0f} req/s  p50 {res.p50_ms:7.3f} ms  "
                          f"p99 {res.p99_ms:7.3f} ms  server CPU {res.cpu_us:5.1f} us/req  ({res.requests} requests){extra}",
                          flush=True)
                for name in [n for n in results if n != "nginx"]:
                    a, b = results[name][-1], results["nginx"][-1]
                    print(f"round {r + 1} {name}/nginx: throughput {a.rps / b.rps:.2f}, p99 {a.p99_ms / b.p99_ms:.2f}")
            rss = {s.name: [rss_kib(p) for p in s.pids] for s in servers}
    med = {name: (statistics.median(r.rps for r in rs), statistics.median(r.p99_ms for r in rs),
                  statistics.median(r.cpu_us for r in rs)) for name, rs in results.items()}
    for name, (rps, p99, cpu_us) in med.items():
        print(f"median {name:5}: {rps:10.0f} req/s  p99 {p99:7.3f} ms  server CPU {cpu_us:5.1f} us/req")
    # Per-round ratios pair runs made next to each other in time, which cancels most of the
    # drift of a shared machine; their median is the headline figure.
    for name in [n for n in results if n != "nginx"]:
        pairs = list(zip(results[name], results["nginx"]))
        tput = statistics.median(a.rps / b.rps for a, b in pairs)
        p99 = statistics.median(a.p99_ms / b.p99_ms for a, b in pairs)
        note = " (goal >= 0.5)" if name == "ours" else f" (base: {args.baseline})"
        print(f"ratio {name}/nginx, median of the {len(pairs)} per-round ratios: throughput {tput:.2f}{note}, "
              f"p99 latency {p99:.2f} (lower is better); ratio of the medians: throughput "
              f"{med[name][0] / med['nginx'][0]:.2f}, p99 {med[name][1] / med['nginx'][1]:.2f}")
        print(f"  CPU efficiency {name}/nginx (nginx CPU per request / {name}'s; less sensitive to other load "
              f"on the machine): {med['nginx'][2] / med[name][2]:.2f}")
    print(f"# load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print(f"# RSS after load: ours {mib(rss['ours'][0])}; nginx master {mib(rss['nginx'][0])}, "
          f"worker {mib(rss['nginx'][1] if len(rss['nginx']) > 1 else None)}")


# ---------------------------------------------------------------------------------------------
# propagation


class Poller:
    """Keeps one keep-alive connection to the sidecar and GETs until the ETag is the expected one."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)

    def etag(self) -> str | None:
        for _ in range(2):
            try:
                self.conn.request("GET", JWKS_PATH)
                resp = self.conn.getresponse()
                resp.read()
                return resp.getheader("ETag")
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        return None

    def wait_for(self, etag: str, timeout: float) -> float | None:
        """monotonic time of the first response carrying ``etag``, None on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.etag() == etag:
                return time.monotonic()
        return None

    def close(self) -> None:
        self.conn.close()


def summary(label: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"{label}: n={len(ms)}  p50 {pct(ms, 50):7.1f} ms  p99 {pct(ms, 99):7.1f} ms  "
            f"min {min(ms):7.1f} ms  max {max(ms):7.1f} ms")


def cmd_propagation(args: argparse.Namespace) -> None:
    from kubernetes import client
    from kubernetes.config import new_client_from_config

    from signing_key_operator.devcluster.cluster import DevCluster

    print(f"# propagation: ConfigMap update through the API -> first GET {JWKS_PATH} carrying the new ETag; "
          f"{args.updates} updates per mode, {machine()}")
    # Distinct sets up front (key generation is not part of what is measured): a rotation each.
    keys = [generate_key("ES256").public_jwk() for _ in range(args.updates + 3)]
    bodies = [render_jwk_set(keys[i:i + 3]) for i in range(args.updates + 1)]
    with tempfile.TemporaryDirectory(prefix="sidecar-prop-") as tmp:
        workdir = Path(tmp)
        cluster = DevCluster(workdir / "cluster")
        t = time.monotonic()
        cluster.up()
        print(f"# dev cluster up in {time.monotonic() - t:.1f}s", flush=True)
        api = new_client_from_config(config_file=str(cluster.kubeconfig))
        try:
            core = client.CoreV1Api(api)
            ns, name = "bench", "jwks"
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
            core.create_namespaced_config_map(ns, client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=name, annotations={MAX_AGE_ANNOTATION: "60"}),
                data={"jwks.json": bodies[0].decode(), "max-age": "60"}))

            def update(body: bytes) -> None:
                core.patch_namespaced_config_map(name, ns, {"data": {"jwks.json": body.decode()}})

            # --- watch mode
            watch = start_ours(workdir, ["--configmap", f"{ns}/{name}", "--kubeconfig", str(cluster.kubeconfig)], cpu=None)
            with running(watch):
                poller = Poller(watch.port)
                if poller.wait_for(etag_of(bodies[0]), 30) is None:
                    raise SystemExit(f"the sidecar never served the first set:\n{watch.log.read_text()[-3000:]}")
                total, missed = [], 0
                for body in bodies[1:]:
                    t0 = time.monotonic()
                    update(body)
                    seen = poller.wait_for(etag_of(body), args.timeout)
                    if seen is None:
                        missed += 1
                    else:
                        total.append(seen - t0)
                    time.sleep(args.gap)
                poller.close()
            print(summary("watch mode, API update -> new ETag served", total)
                  + (f"  ({missed} not seen within {args.timeout}s)" if missed else ""), flush=True)

            # --- file mode: simulate the kubelet as soon as the API update returns
            volume = workdir / "volume"
            volume.mkdir()
            kubelet_update(volume, {"jwks.json": bodies[-1], "max-age": b"60"})
            filed = start_ours(workdir, ["--jwks-file", str(volume)], cpu=None)
            with running(filed):
                poller = Poller(filed.port)
                if poller.wait_for(etag_of(bodies[-1]), 30) is None:
                    raise SystemExit(f"the sidecar never served the file:\n{filed.log.read_text()[-3000:]}")
                total, after_file, missed = [], [], 0
                for body in bodies[:-1]:
                    t0 = time.monotonic()
                    update(body)
                    kubelet_update(volume, {"jwks.json": body, "max-age": b"60"})
                    t_file = time.monotonic()
                    seen = poller.wait_for(etag_of(body), args.timeout)
                    if seen is None:
                        missed += 1
                    else:
                        total.append(seen - t0)
                        after_file.append(seen - t_file)
                    time.sleep(args.gap)
                poller.close()
            print(summary("file mode, symlink swap -> new ETag served (what the sidecar adds)", after_file)
                  + (f"  ({missed} not seen within {args.timeout}s)" if missed else ""))
            print(summary("file mode, API update -> new ETag served, kubelet simulated as instant", total))
            print("# file mode: the kubelet's own sync period (up to ~60-90 s: syncFrequency, 1 min by default, plus "
                  "jitter and its ConfigMap cache) comes on top; this measures only what the sidecar adds once the file changes "
                  "(--poll-interval 0.25 s, a change must be stable over two polls)")
        finally:
            api.close()
            cluster.down()


# ---------------------------------------------------------------------------------------------
# RSS


def sample_rss(pids: list[int], seconds: float, every: float = 0.25) -> list[int]:
    """Peak VmRSS (KiB) of each pid over ``seconds``."""
    peaks = [0] * len(pids)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for i, pid in enumerate(pids):
            peaks[i] = max(peaks[i], rss_kib(pid) or 0)
        time.sleep(every)
    return peaks


def measure_rss(wrk: str, server: Server, label: str, args: argparse.Namespace, wrk_cpu: int | None) -> None:
    pids = server.pids
    time.sleep(args.settle)
    idle = [rss_kib(p) for p in pids]
    load: list[int] = []
    box: dict[str, WrkResult] = {}
    th = threading.Thread(target=lambda: box.setdefault("r", run_wrk(
        wrk, server.port, threads=args.threads, connections=args.connections, duration=args.duration, cpu=wrk_cpu)))
    th.start()
    load = sample_rss(pids, args.duration)
    th.join(args.duration + 60)
    after = [rss_kib(p) for p in pids]
    rps = f"{box['r'].rps:.0f} req/s" if "r" in box else "wrk failed"
    names = ["master", "worker"] if server.name == "nginx" else ["process"]
    for i, name in enumerate(names[: len(pids)]):
        print(f"{label:28} {name:7}: idle {mib(idle[i]):>10}  peak under load {mib(load[i]):>10}  "
              f"after load {mib(after[i]):>10}   (wrk -c{args.connections} -d{args.duration}s: {rps})", flush=True)


def cmd_rss(args: argparse.Namespace) -> None:
    nginx, wrk = ensure_tools()
    server_cpu, wrk_cpu = cpu_layout(args)
    body = realistic_jwks(args.alg)
    print(f"# RSS (VmRSS from /proc/PID/status), idle after {args.settle}s and peak sampled every 0.25 s under "
          f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s; {len(body)}-byte JWKS; {machine()}")
    with tempfile.TemporaryDirectory(prefix="sidecar-rss-") as tmp:
        workdir = Path(tmp)
        jwks_file = served_file(workdir, body)
        ours = start_ours(workdir, ["--jwks-file", str(jwks_file.parent), "--max-age", str(MAX_AGE)], cpu=server_cpu)
        with running(ours):
            wait_for(lambda: http_get(ours.port)[0] == 200, 10, "the sidecar to load the file")
            measure_rss(wrk, ours, "ours --jwks-file", args, wrk_cpu)
        ngx = start_nginx(nginx, workdir, jwks_file, cpu=server_cpu)
        with running(ngx):
            measure_rss(wrk, ngx, "nginx (reference)", args, wrk_cpu)
        if args.no_watch:
            return
        from kubernetes import client
        from kubernetes.config import new_client_from_config

        from signing_key_operator.devcluster.cluster import DevCluster

        cluster = DevCluster(workdir / "cluster")
        cluster.up()
        api = new_client_from_config(config_file=str(cluster.kubeconfig))
        try:
            core = client.CoreV1Api(api)
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="bench")))
            core.create_namespaced_config_map("bench", client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name="jwks", annotations={MAX_AGE_ANNOTATION: str(MAX_AGE)}),
                data={"jwks.json": body.decode()}))
            watch = start_ours(workdir, ["--configmap", "bench/jwks", "--kubeconfig", str(cluster.kubeconfig)],
                               cpu=server_cpu)
            with running(watch):
                wait_for(lambda: http_get(watch.port)[0] == 200, 30, "the sidecar to load the ConfigMap")
                measure_rss(wrk, watch, "ours --configmap (watch)", args, wrk_cpu)
        finally:
            api.close()
            cluster.down()


# ---------------------------------------------------------------------------------------------
# pipelined requests from clients that never read


def sample_until_steady(pid: int, most: float, steady: float = 2.0, every: float = 0.1) -> int:
    """Peak VmRSS (KiB) of ``pid``, sampled until it has not changed for ``steady`` seconds (the
    server is done with what it was sent) or ``most`` seconds have passed."""
    peak = last = rss_kib(pid) or 0
    start = changed = time.monotonic()
    while time.monotonic() - start < most and time.monotonic() - changed < steady:
        time.sleep(every)
        now = rss_kib(pid) or 0
        if now != last:
            last, changed = now, time.monotonic()
        peak = max(peak, now)
    return peak


def pipeline_load(port: int, path: str, pid: int, args: argparse.Namespace) -> tuple[int, int]:
    """Open ``args.connections`` connections, send ``args.kib`` KiB of pipelined GETs of ``path``
    on each and never read an answer (a receive buffer of 4 KiB, so the client's kernel holds
    almost nothing). Returns (peak VmRSS KiB while sending, holding and just after closing,
    bytes sent). Bounded: sending stops after ``args.send_timeout`` s, the connections are held
    until the server's RSS is steady (at most ``args.hold`` s), then closed."""
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    payload = request * (args.kib * 1024 // len(request))
    sel = selectors.DefaultSelector()
    socks, offsets = [], {}
    peak = 0
    try:
        for _ in range(args.connections):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.setblocking(False)
            socks.append(sock)
            offsets[sock] = 0
            sel.register(sock, selectors.EVENT_WRITE)
        deadline = time.monotonic() + args.send_timeout
        next_sample = 0.0
        while offsets and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.05):
                sock = key.fileobj
                try:
                    offsets[sock] += sock.send(memoryview(payload)[offsets[sock]:offsets[sock] + 65536])
                except BlockingIOError:
                    continue
                if offsets[sock] >= len(payload):
                    sel.unregister(sock)
                    del offsets[sock]
            if time.monotonic() >= next_sample:
                peak = max(peak, rss_kib(pid) or 0)
                next_sample = time.monotonic() + 0.1
        sent = args.connections * len(payload) - sum(len(payload) - o for o in offsets.values())
        peak = max(peak, sample_until_steady(pid, args.hold))
    finally:
        sel.close()
        for sock in socks:
            sock.close()
    return max(peak, sample_until_steady(pid, args.hold)), sent


def cmd_pipeline(args: argparse.Namespace) -> None:
    body = realistic_jwks(args.alg)
    print(f"# pipeline: {args.connections} connections x {args.kib} KiB of pipelined GETs each, never reading "
          f"(client SO_RCVBUF 4 KiB), sending for at most {args.send_timeout}s, held until VmRSS is steady for 2 s "
          f"(at most {args.hold}s), then closed; peak VmRSS sampled every 0.1 s until steady again; "
          f"{len(body)}-byte JWKS ({args.alg} x3); {machine()}")
    # The query string makes the fast path hand every connection to aiohttp at its first
    # request (fastpath.py): the same load on aiohttp's own protocol, as a reference.
    targets = [("ours, fast path", REPO / "operator", JWKS_PATH), ("ours, aiohttp path", REPO / "operator", JWKS_PATH + "?via=aiohttp")]
    if args.baseline:
        targets.insert(1, ("base, fast path", args.baseline.resolve(), JWKS_PATH))
    with tempfile.TemporaryDirectory(prefix="sidecar-pipeline-") as tmp:
        workdir = Path(tmp)
        jwks_file = served_file(workdir, body)
        for label, pythonpath, path in targets:
            server = start_ours(workdir, ["--jwks-file", str(jwks_file.parent), "--max-age", str(MAX_AGE)], cpu=None,
                                pythonpath=pythonpath, name=label)
            with running(server):
                wait_for(lambda: http_get(server.port)[0] == 200, 10, "the sidecar to load the file")
                time.sleep(args.settle)
                idle = rss_kib(server.process.pid)
                peak, sent = pipeline_load(server.port, path, server.process.pid, args)
                after = rss_kib(server.process.pid)
                status = http_get(server.port)[0]
                print(f"{label:18}: idle {mib(idle):>10}  peak {mib(peak):>10} (+{(peak - (idle or 0)) / 1024:5.1f} MiB)  "
                      f"after closing {mib(after):>10}; {sent / 2**20:.1f} of {args.connections * args.kib / 1024:.1f} MiB "
                      f"sent; a GET afterwards: {status}", flush=True)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def load_options(p: argparse.ArgumentParser, duration: int) -> None:
        p.add_argument("--threads", type=int, default=1, help="wrk threads (default: %(default)s)")
        p.add_argument("--connections", type=int, default=32, help="wrk connections (default: %(default)s)")
        p.add_argument("--duration", type=int, default=duration, help="seconds per wrk run (default: %(default)s)")
        p.add_argument("--alg", default="RS256", help="algorithm of the 3 keys in the JWKS (default: %(default)s)")
        p.add_argument("--no-pin", action="store_true", help="do not pin the server and wrk to separate CPUs")

    tp = sub.add_parser("throughput", help="req/s and p99 with wrk: ours vs nginx")
    load_options(tp, 10)
    tp.add_argument("--rounds", type=int, default=5, help="alternating runs per server (default: %(default)s)")
    tp.add_argument("--warmup", type=int, default=2, help="warm-up seconds per server (default: %(default)s)")
    tp.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                    help="also measure the sidecar from another source tree (DIR holds the signing_key_operator "
                         "package, e.g. `git archive HEAD operator | tar -x -C /tmp/base` -> /tmp/base/operator), "
                         "as 'base', for before/after comparisons")

    pp = sub.add_parser("propagation", help="ConfigMap update -> new ETag served, watch and file mode")
    pp.add_argument("--updates", type=int, default=30, help="updates per mode (default: %(default)s)")
    pp.add_argument("--timeout", type=float, default=10.0, help="give up on one update after this (default: %(default)s)")
    pp.add_argument("--gap", type=float, default=0.2, help="pause between updates (default: %(default)s)")

    rp = sub.add_parser("rss", help="VmRSS idle and under load, ours (file and watch mode) and nginx")
    load_options(rp, 10)
    rp.add_argument("--settle", type=float, default=2.0, help="idle seconds before the idle sample (default: %(default)s)")
    rp.add_argument("--no-watch", action="store_true", help="skip the watch mode (needs a dev cluster)")

    pl = sub.add_parser("pipeline", help="VmRSS under pipelined GETs from clients that never read: fast path, aiohttp")
    pl.add_argument("--connections", type=int, default=100, help="client connections (default: %(default)s)")
    pl.add_argument("--kib", type=int, default=256, help="KiB of pipelined GETs sent on each (default: %(default)s)")
    pl.add_argument("--send-timeout", type=float, default=10.0, help="stop sending after this (default: %(default)s)")
    pl.add_argument("--hold", type=float, default=30.0,
                    help="longest wait for a steady VmRSS, before and after closing (default: %(default)s)")
    pl.add_argument("--settle", type=float, default=2.0, help="idle seconds before the idle sample (default: %(default)s)")
    pl.add_argument("--alg", default="RS256", help="algorithm of the 3 keys in the JWKS (default: %(default)s)")
    pl.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                    help="also measure the sidecar from another source tree, as for throughput")

    ap = sub.add_parser("all", help="throughput, propagation, rss and pipeline with their defaults")
    ap.add_argument("--no-pin", action="store_true")

    args = parser.parse_args(argv)
    if args.command == "all":
        for name in ("throughput", "propagation", "rss", "pipeline"):
            main([name, *(["--no-pin"] if args.no_pin and name in ("throughput", "rss") else [])])
            print()
        return
    {"throughput": cmd_throughput, "propagation": cmd_propagation, "rss": cmd_rss,
     "pipeline": cmd_pipeline}[args.command](args)


if __name__ == "__main__":
    main()
