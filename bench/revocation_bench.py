"""Token revocation figures on a real control plane. Prints numbers; asserts nothing.

    .venv/bin/python bench/revocation_bench.py latency    # TokenRevocation created -> served by the sidecar (p50/p99)
    .venv/bin/python bench/revocation_bench.py capacity   # entries per 1 MiB ConfigMap; what happens at the limit

Each run starts its own dev control plane in a temporary folder, an operator process and (for
latency) the JWKS sidecar in watch mode, as users run them, and stops them at the end. The cost
of the check itself in the Python verifier is bench/revocation_check.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from operator_bench import environment, percentile  # noqa: E402

from tests.integration.harness import Policies, Revocations, free_port, terminate, wait_until  # noqa: E402

from signing_key_operator.core.revocations import MAX_CONFIGMAP_BYTES, Revocation, compile_revocations  # noqa: E402

NOW = datetime.now(timezone.utc).replace(microsecond=0)
HOUR = timedelta(hours=1)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def latency(runs: int) -> None:
    with environment() as (cluster, api, _operator):
        policies, revocations = Policies(api, "bench"), Revocations(api, "bench")
        policies.create("api", {"algorithm": "ES256", "jwks": {"maxAge": "1s"}, "rotation": {"publishAhead": "1h"}})
        policies.wait_ready("api")
        port = free_port()
        log = open(Path(cluster.dir) / "sidecar.log", "wb")
        sidecar = subprocess.Popen(
            [sys.executable, "-m", "signing_key_operator", "serve", "--kubeconfig", str(cluster.kubeconfig),
             "--configmap", "bench/api-jwks", "--revocations-configmap", "bench/api-revocations",
             "--host", "127.0.0.1", "--port", str(port), "--shutdown-delay", "0"], stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/revocations.json"
        try:
            wait_until(lambda: _fetch(url, None)[0] == 200, 30, "the sidecar")
            served, created = [], []
            expires = _iso(NOW + HOUR)
            for i in range(runs):
                jti = f"bench-{i}-{uuid.uuid4().hex[:8]}"
                _, etag, _ = _fetch(url, None)
                start = time.monotonic()
                revocations.create(f"r{i}", {"policyName": "api", "jti": jti, "expiresAt": expires})
                created.append(time.monotonic() - start)
                while True:
                    status, etag, body = _fetch(url, etag)
                    if status == 200 and jti in json.loads(body)["jti"]:
                        served.append(time.monotonic() - start)
                        break
                    if time.monotonic() - start > 30:
                        raise TimeoutError(f"{jti} not served after 30 s")
                    time.sleep(0.002)
            print(f"revocation latency, {runs} TokenRevocations created one after another (watch mode; sidecar polled every 2 ms with If-None-Match):")
            print(f"  create call answered:       p50 {statistics.median(created) * 1000:6.0f} ms   p99 {percentile(created, 0.99) * 1000:6.0f} ms")
            print(f"  created -> served by sidecar: p50 {statistics.median(served) * 1000:6.0f} ms   p99 {percentile(served, 0.99) * 1000:6.0f} ms"
                  f"   max {max(served) * 1000:.0f} ms")
        finally:
            terminate(sidecar, grace=10)
            log.close()


def _fetch(url: str, etag: str | None) -> tuple[int, str | None, bytes]:
    request = urllib.request.Request(url, headers={"If-None-Match": etag} if etag else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.headers.get("ETag"), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, etag, b""
    except OSError:
        return 0, etag, b""


def _entries_per_configmap(make) -> tuple[int, int]:
    """How many entries of the kind `make(i)` builds fit in one ConfigMap, by the operator's own
    rendering: (entries, bytes of the largest document that fits)."""
    low, high = 1, 200_000
    while low < high:  # the largest n whose document fits
        middle = (low + high + 1) // 2
        size = len(compile_revocations([make(i) for i in range(middle)], token_lifetime=HOUR, clock_skew=timedelta(minutes=1),
                                       now=NOW).document.render()) + len("3600")
        if size <= MAX_CONFIGMAP_BYTES:
            low = middle
        else:
            high = middle - 1
    size = len(compile_revocations([make(i) for i in range(low)], token_lifetime=HOUR, clock_skew=timedelta(minutes=1),
                                   now=NOW).document.render())
    return low, size


def capacity(batch: int) -> None:
    uuid_jti = _entries_per_configmap(lambda i: Revocation(f"r{i}", "p", jti=str(uuid.UUID(int=i + 2**127)), expires_at=NOW + HOUR))
    long_jti = _entries_per_configmap(lambda i: Revocation(f"r{i}", "p", jti=f"{i:0256d}", expires_at=NOW + HOUR))
    subject = _entries_per_configmap(lambda i: Revocation(f"s{i}", "p", subject=f"user-{uuid.UUID(int=i)}", issued_before=NOW))
    print("entries per ConfigMap (1 MiB of data), by the operator's own rendering:")
    print(f"  jti = UUID (36 chars):        {uuid_jti[0]:7d} entries ({uuid_jti[1]} bytes)")
    print(f"  subject = user-<UUID>:        {subject[0]:7d} entries ({subject[1]} bytes)")
    print(f"  jti of 256 chars (CRD max):   {long_jti[0]:7d} entries ({long_jti[1]} bytes)")

    # For real, at the real limit: 256-character jtis fill 1 MiB with the fewest objects.
    with environment() as (_cluster, api, operator):
        policies, revocations = Policies(api, "bench"), Revocations(api, "bench")
        policies.create("full", {"algorithm": "ES256"})
        policies.wait_ready("full")
        expires = _iso(NOW + HOUR)
        target = long_jti[0] + 10
        started = time.monotonic()
        for i in range(target):
            revocations.create(f"r{i:05d}", {"policyName": "full", "jti": f"{i:0256d}", "expiresAt": expires})
            if (i + 1) % batch == 0:
                print(f"  created {i + 1}/{target} TokenRevocations ({time.monotonic() - started:.0f} s)", flush=True)
        condition = wait_until(lambda: next((c for c in policies.get("full")["status"].get("conditions") or []
                                             if c["type"] == "RevocationsPublished" and c["status"] == "False"), None), 300,
                               "RevocationsPublished=False")
        settled = time.monotonic() - started
        document = revocations.document("full-revocations")
        stored = len(document["jti"])
        statuses = {}
        for item in revocations.objects.list_namespaced_custom_object("signingkeys.dev", "v1alpha1", "bench", "tokenrevocations")["items"]:
            reason = next((c["reason"] for c in (item.get("status") or {}).get("conditions") or [] if c["type"] == "InForce"), "none")
            statuses[reason] = statuses.get(reason, 0) + 1
        events = [e.reason for e in policies.events("full")]
        print(f"at the limit, on the real control plane ({target} TokenRevocations of 256-char jtis, {settled:.0f} s):")
        print(f"  ConfigMap keeps {stored} entries ({len(json.dumps(document, separators=(',', ':')))} bytes of JSON)")
        print(f"  TokenRevocation InForce reasons: {statuses}")
        print(f"  policy condition RevocationsPublished=False, {condition['reason']}: {condition['message']}")
        print(f"  policy Events: RevocationsTooLarge x{events.count('RevocationsTooLarge')}")
        print(f"  operator still running: {operator.process.poll() is None}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    parser_latency = commands.add_parser("latency")
    parser_latency.add_argument("--runs", type=int, default=40)
    parser_capacity = commands.add_parser("capacity")
    parser_capacity.add_argument("--batch", type=int, default=500, help="print progress every this many creations")
    args = parser.parse_args()
    if args.command == "latency":
        latency(args.runs)
    else:
        capacity(args.batch)


if __name__ == "__main__":
    main()
