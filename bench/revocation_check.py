"""Cost of one revocation check (``Verifier.is_revoked``), by backend and entry count. PRINTS figures.

    .venv/bin/python bench/revocation_check.py [--runs 7] [--checks 5000] [--redis-checks 2000]

ConfigMap backend: a revocation document of N jti entries (UUIDs, as issuers use) served on
127.0.0.1 like the sidecar serves it (max-age, ETag); the Verifier fetches it once and then
checks from its cache. Redis backend: a throwaway redis-server on 127.0.0.1 (tests/redis_server.py,
Debian's redis-server) loaded with N keys through a pipeline, one MGET per check. Each case runs
``--runs`` times; the figures are the median of the runs' medians and the p99 of all checks,
for a revoked and a not-revoked token. A document over 1 MiB cannot be stored in a ConfigMap and
is refused by the verifier (fail closed); that is printed instead of a timing. Everything
listens on 127.0.0.1 only, and every loop is bounded in count.
"""

from __future__ import annotations

import argparse
import http.server
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from signing_key_operator.core.revocations import (  # noqa: E402
    MAX_CONFIGMAP_BYTES,
    RedisLayout,
    RevocationDocument,
)
from signing_key_operator.verify import TokenRejected, Verifier  # noqa: E402
from tests.redis_server import RedisServer, redis_server_binary  # noqa: E402

COUNTS = (10_000, 100_000)
NAMESPACE, POLICY = "bench", "api"


def serve_once(body: bytes) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "public, max-age=3600")
            self.send_header("ETag", '"bench"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the verifier stops reading a document over 1 MiB

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    return httpd


def measure(check, claims: dict, runs: int, checks: int) -> tuple[float, float]:
    """(median of the runs' median, p99 of all) in microseconds per check."""
    medians, every = [], []
    clock = time.perf_counter_ns
    for _ in range(runs):
        times = []
        for _ in range(checks):
            started = clock()
            check(claims)
            times.append((clock() - started) / 1000)
        medians.append(statistics.median(times))
        every += times
    every.sort()
    return statistics.median(medians), every[min(len(every) - 1, int(len(every) * 0.99))]


def cases(jtis: list[str], now: int) -> dict[str, dict]:
    return {
        "revoked": {"jti": jtis[len(jtis) // 2], "sub": "alice", "iat": now},
        "not revoked": {"jti": str(uuid.uuid4()), "sub": "alice", "iat": now},
    }


def sanity(verifier: Verifier, case: str, claims: dict) -> None:
    """The bench measures the real answer: a revoked token is reported, a good one is not."""
    if (verifier.is_revoked(claims) is not None) != (case == "revoked"):
        raise SystemExit(f"wrong answer for the {case} token: the bench is broken")


def row(backend: str, count: int, case: str, figures: tuple[float, float], extra: str = "") -> None:
    median, p99 = figures
    print(f"{backend:<9} {count:>7,} entries  {case:<11}  median {median:7.2f} us  p99 {p99:7.2f} us{extra}")


def bench_document(count: int, runs: int, checks: int) -> None:
    now = int(time.time())
    jtis = [str(uuid.uuid4()) for _ in range(count)]
    body = RevocationDocument({j: now + 3600 for j in jtis}).render()
    over = len(body) > MAX_CONFIGMAP_BYTES
    print(f"document  {count:>7,} entries  {len(body):,} bytes"
          + (f" (over the {MAX_CONFIGMAP_BYTES:,}-byte ConfigMap limit)" if over else ""))
    document = RevocationDocument({j: now + 3600 for j in jtis})
    for case, claims in cases(jtis, now).items():
        row("in memory", count, case, measure(document.revokes, claims, runs, checks), "  (RevocationDocument.revokes alone)")
    httpd = serve_once(body)
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/revocations.json"
        verifier = Verifier(f"http://127.0.0.1:{httpd.server_address[1]}/jwks.json", revocations_url=url)
        for case, claims in cases(jtis, now).items():
            try:
                sanity(verifier, case, claims)
            except TokenRejected as error:
                print(f"configmap {count:>7,} entries  {case:<11}  refused: {error}")
                continue
            row("configmap", count, case, measure(verifier.is_revoked, claims, runs, checks))
    finally:
        httpd.shutdown()
        httpd.server_close()


def bench_redis(server: RedisServer, count: int, runs: int, checks: int) -> None:
    now = int(time.time())
    layout = RedisLayout.for_policy(NAMESPACE, POLICY)
    client = redis.Redis.from_url(server.url)
    client.flushdb()
    jtis = [str(uuid.uuid4()) for _ in range(count)]
    started = time.perf_counter()
    with client.pipeline(transaction=False) as pipe:
        for n, jti in enumerate(jtis, 1):
            pipe.set(layout.jti_key(jti), now + 3600, exat=now + 3600)
            if n % 10_000 == 0:
                pipe.execute()
        pipe.execute()
    loaded = time.perf_counter() - started
    memory = client.info("memory")["used_memory_human"]
    client.close()
    print(f"redis     {count:>7,} keys loaded in {loaded:.2f} s (pipeline), used_memory {memory}")
    verifier = Verifier("http://127.0.0.1:1/jwks.json", redis_url=server.url, redis_prefix=layout.prefix)
    for case, claims in cases(jtis, now).items():
        sanity(verifier, case, claims)
        row("redis", count, case, measure(verifier.is_revoked, claims, runs, checks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--checks", type=int, default=5000, help="checks per run, document backend")
    parser.add_argument("--redis-checks", type=int, default=2000, help="checks per run, Redis backend")
    args = parser.parse_args()
    print(f"Verifier.is_revoked, {args.runs} runs; times per check in microseconds")
    for count in COUNTS:
        bench_document(count, args.runs, args.checks)
    if redis_server_binary() is None:
        print("redis: skipped, redis-server is not installed (apt-get install redis-server)")
        return
    with RedisServer() as server:
        for count in COUNTS:
            bench_redis(server, count, args.runs, args.redis_checks)


if __name__ == "__main__":
    main()
