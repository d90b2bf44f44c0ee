"""Operator figures on a real control plane. Prints numbers; asserts nothing.

    .venv/bin/python bench/operator_bench.py latency   # revoke -> gone, rotate -> published (p50/p99)
    .venv/bin/python bench/operator_bench.py writes    # API writes per rotation step, per idle policy-hour
    .venv/bin/python bench/operator_bench.py scale     # N policies: time until all Ready, operator RSS
    .venv/bin/python bench/operator_bench.py rsa       # N RSA-4096 policies: reconciles per second, /healthz stalls
    .venv/bin/python bench/operator_bench.py served    # spec.jwks.servedAt checks: GETs and API writes per idle policy-hour

Each run starts its own dev control plane in a temporary folder and an operator process (the
same `signing-key-operator run` users run), and stops both at the end.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.integration.harness import OperatorProcess, Policies, wait_until  # noqa: E402

from signing_key_operator.devcluster.cluster import DevCluster  # noqa: E402
from signing_key_operator.devcluster.crd import install_crds  # noqa: E402

GROUP, VERSION, PLURAL = "signingkeys.dev", "v1alpha1", "signingkeypolicies"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


@contextmanager
def environment(operator_args: list[str] = ()):
    with tempfile.TemporaryDirectory(prefix="sko-bench-") as tmp:
        cluster = DevCluster(Path(tmp) / "cluster")
        cluster.up()
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        install_crds(api)
        client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="bench")))
        operator = OperatorProcess(cluster.kubeconfig, Path(tmp) / "operator.log", extra_args=list(operator_args)).start()
        try:
            yield cluster, api, operator
        finally:
            operator.stop()
            api.close()
            cluster.down()


class ConfigMapWatcher:
    """Timestamps every version of one ConfigMap's kid list, from a watch (no polling lag)."""

    def __init__(self, api, namespace: str, name: str):
        self.core = client.CoreV1Api(api)
        self.namespace, self.name = namespace, name
        self.versions: list[tuple[float, list[str]]] = []
        self.changed = threading.Condition()
        self._stop = watch.Watch()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        try:
            self._watch()
        except Exception as error:  # noqa: BLE001 - a bench reports, it does not hide
            print(f"watch ended: {error!r}", file=sys.stderr)

    def _watch(self):
        for event in self._stop.stream(self.core.list_namespaced_config_map, self.namespace,
                                       field_selector=f"metadata.name={self.name}", timeout_seconds=3600):
            kids = [k["kid"] for k in json.loads(event["object"].data["jwks.json"])["keys"]]
            with self.changed:
                self.versions.append((time.monotonic(), kids))
                self.changed.notify_all()

    def wait_for(self, predicate, since: float, timeout: float = 10) -> float:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for stamp, kids in self.versions:
                    if stamp >= since and predicate(kids):
                        return stamp
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("the ConfigMap never reached the expected content")
                self.changed.wait(remaining)

    def stop(self):
        self._stop.stop()


def latency(runs: int) -> None:
    with environment() as (_, api, _operator):
        policies = Policies(api, "bench")
        policies.create("latency", {"algorithm": "ES256", "rotation": {"interval": "720h", "publishAhead": "1s"},
                                    "tokenLifetime": "1s", "clockSkew": "0s", "jwks": {"maxAge": "1s"}})
        policies.wait_ready("latency")
        watcher = ConfigMapWatcher(api, "bench", "latency-jwks")
        wait_until(lambda: watcher.versions, 10, "the watch")
        rotate, revoke = [], []
        for i in range(runs):
            before = set(policies.jwks_kids("latency-jwks"))
            start = time.monotonic()
            policies.annotate("latency", {"signingkeys.dev/rotate": f"bench-{i}"})
            seen = watcher.wait_for(lambda kids: bool(set(kids) - before), start)
            rotate.append(seen - start)
            (new_kid,) = set(next(kids for stamp, kids in watcher.versions if stamp == seen)) - before
            wait_until(lambda: policies.get("latency")["status"].get("activeKid") == new_kid, 15, "activation")
            start = time.monotonic()
            policies.annotate("latency", {"signingkeys.dev/revoke-kid": new_kid})
            seen = watcher.wait_for(lambda kids: new_kid not in kids, start)
            revoke.append(seen - start)
            wait_until(lambda: policies.get("latency")["status"]["activeKid"] not in (None, new_kid), 10, "the emergency key")
        watcher.stop()
    for name, values in (("rotate annotation -> new key in ConfigMap", rotate), ("revoke-kid annotation -> kid gone from ConfigMap", revoke)):
        print(f"{name}: n={len(values)} p50={statistics.median(values) * 1000:.0f} ms "
              f"p99={percentile(values, 0.99) * 1000:.0f} ms max={max(values) * 1000:.0f} ms")


def _writes(operator: OperatorProcess) -> dict[str, float]:
    found = re.findall(r'signing_key_operator_api_writes_total\{object="(\w+)"\} (\S+)', operator.metrics())
    return {kind: float(value) for kind, value in found}


def _total(writes: dict[str, float]) -> float:
    return sum(writes.values())


def writes(idle_seconds: int, idle_policies: int) -> None:
    spec = {"algorithm": "ES256", "rotation": {"interval": "8s", "publishAhead": "3s"},
            "tokenLifetime": "2s", "clockSkew": "0s", "jwks": {"maxAge": "1s"}}
    with environment(["--secret-propagation", "1s"]) as (_, api, operator):
        policies = Policies(api, "bench")
        policies.create("writes", spec)
        policies.wait_ready("writes")
        # Writes of each rotation step: the operator logs its write count per reconcile, then the
        # Events of that reconcile, which say what the step was.
        wait_until(lambda: operator.logs().count("KeyRemoved") >= 3, 90, "three rotations", interval=1)
        steps: dict[str, list[int]] = {}
        current = None
        for line in operator.logs().splitlines():
            match = re.search(r"bench/writes: reconciled with (\d+) API writes", line)
            if match:
                current = int(match.group(1))
                continue
            event = re.search(r"bench/writes (Key\w+):", line)
            if event and current is not None:
                label = {"KeyPublished": "publish the next key", "KeyActivated": "activate it and retire the old",
                         "KeyRemoved": "remove a retired key"}.get(event.group(1))
                if label:
                    steps.setdefault(label, []).append(current)
                    current = None
        for label, counts in steps.items():
            print(f"API writes per rotation step, {label}: {counts}")

        # Idle: policies with the default 30-day interval, nothing due; count writes over the window.
        for i in range(idle_policies):
            policies.create(f"idle-{i}", {})
        wait_until(lambda: all(policies.condition(f"idle-{i}") == "True" for i in range(idle_policies)), 120, "idle policies Ready", interval=1)
        policies.delete("writes")
        time.sleep(2)
        before = _total(_writes(operator))
        time.sleep(idle_seconds)
        after = _total(_writes(operator))
        per_hour = (after - before) / idle_policies / (idle_seconds / 3600)
        print(f"idle: {after - before:.0f} API writes by {idle_policies} settled policies in {idle_seconds} s "
              f"= {per_hour:.2f} writes per policy-hour")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scale(count: int) -> None:
    with environment() as (_, api, operator):
        objects = client.CustomObjectsApi(api)
        time.sleep(2)
        idle_rss = _rss_mib(operator.process.pid)
        start = time.monotonic()
        for i in range(count):
            objects.create_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "SigningKeyPolicy",
                "metadata": {"name": f"p{i:04d}"}, "spec": {"algorithm": "ES256"}})
        created = time.monotonic() - start
        peak = idle_rss

        def ready_count() -> int:
            nonlocal peak
            peak = max(peak, _rss_mib(operator.process.pid))
            items = objects.list_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL)["items"]
            return sum(1 for p in items if any(c["type"] == "Ready" and c["status"] == "True"
                                               for c in (p.get("status") or {}).get("conditions") or []))

        ready = 0
        deadline = time.monotonic() + 600
        while ready < count and time.monotonic() < deadline:
            ready = ready_count()
            time.sleep(1)
        elapsed = time.monotonic() - start
        time.sleep(5)
        settled_rss = _rss_mib(operator.process.pid)
        print(f"{count} policies: created in {created:.1f} s; {ready}/{count} Ready {elapsed:.1f} s after the first create")
        print(f"operator RSS: {idle_rss:.0f} MiB before, peak {peak:.0f} MiB while reconciling, {settled_rss:.0f} MiB settled")


class HealthzProbe:
    """Asks the operator's /healthz (kopf's, served on the event loop) every ``interval`` seconds
    and keeps each answer's latency: how long the loop leaves a request waiting."""

    def __init__(self, port: int, interval: float = 0.1):
        self.url = f"http://127.0.0.1:{port}/healthz"
        self.interval = interval
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import urllib.request

        while not self._stop.is_set():
            start = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=30) as reply:
                    reply.read()
                self.latencies.append(time.monotonic() - start)
            except OSError:
                self.failures += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        if not self.latencies:
            return f"no answer ({self.failures} failed requests)"
        return (f"n={len(self.latencies)} p50={statistics.median(self.latencies) * 1000:.0f} ms "
                f"p99={percentile(self.latencies, 0.99) * 1000:.0f} ms max={max(self.latencies) * 1000:.0f} ms"
                f"{f', {self.failures} failed' if self.failures else ''}")


def _reconciles(operator: OperatorProcess) -> dict[str, float]:
    """Reconciles so far, by result: done, conflict (a lost race, retried at once), failed."""
    text = operator.metrics_or_empty()
    counts = {result: float(value) for result, value in re.findall(r'signing_key_operator_reconciles_total\{result="(\w+)"\} (\S+)', text)}
    counts["failed"] = sum(float(value) for value in re.findall(r'signing_key_operator_reconcile_errors_total\{kind="\w+"\} (\S+)', text))
    return counts


def rsa(count: int, seconds: int, pokers: int) -> None:
    """Reconciles of RSA-4096 policies whose keys do not change: every reconcile lists the key
    Secrets and reads them back. The policies are woken by annotating them (each annotation is a
    change the operator must look at), from ``pokers`` threads, as fast as the API takes it."""
    from tests.integration.harness import free_port

    health_port = free_port()
    with environment(["--health-port", str(health_port), "--health-host", "127.0.0.1"]) as (cluster, api, operator):
        objects = client.CustomObjectsApi(api)
        names = [f"rsa{i:03d}" for i in range(count)]
        start = time.monotonic()
        for name in names:
            objects.create_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "SigningKeyPolicy", "metadata": {"name": name},
                "spec": {"algorithm": "RS256", "rsaKeySize": 4096}})
        policies = Policies(api, "bench")
        wait_until(lambda: all(policies.condition(name) == "True" for name in names), 900, "all policies Ready", interval=2)
        print(f"{count} RS256 policies with RSA-4096 keys Ready {time.monotonic() - start:.0f} s after the first create")
        time.sleep(5)  # the bootstrap's echoes settle

        stop = threading.Event()
        pokes = [0] * pokers

        def poke(worker: int) -> None:
            own = client.CustomObjectsApi(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
            while not stop.is_set():
                name = names[(pokes[worker] * pokers + worker) % count]
                own.patch_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, name,
                                                   {"metadata": {"annotations": {"bench.signingkeys.dev/poke": str(time.monotonic())}}})
                pokes[worker] += 1

        with HealthzProbe(health_port) as idle_probe:
            time.sleep(5)
        threads = [threading.Thread(target=poke, args=(i,), daemon=True) for i in range(pokers)]
        with HealthzProbe(health_port) as probe:
            before, began = _reconciles(operator), time.monotonic()
            for thread in threads:
                thread.start()
            time.sleep(seconds)
            after, ended = _reconciles(operator), time.monotonic()
            stop.set()
            for thread in threads:
                thread.join()
        done = after.get("done", 0) - before.get("done", 0)
        others = ", ".join(f"{after.get(k, 0) - before.get(k, 0):.0f} {k}" for k in ("conflict", "failed"))
        print(f"reconciles: {done:.0f} done in {ended - began:.1f} s = {done / (ended - began):.1f} per second ({others}); "
              f"{sum(pokes)} annotations from {pokers} threads = {sum(pokes) / (ended - began):.0f} per second")
        print(f"/healthz latency, idle: {idle_probe.summary()}")
        print(f"/healthz latency while reconciling: {probe.summary()}")

        # A restarted operator has read nothing yet: every key Secret is parsed once.
        operator.stop()
        restarted = OperatorProcess(cluster.kubeconfig, operator.log_path,
                                    extra_args=["--health-port", str(health_port), "--health-host", "127.0.0.1"]).start()
        try:
            start = time.monotonic()
            with HealthzProbe(health_port) as probe:
                wait_until(lambda: _reconciles(restarted).get("done", 0) >= count, 900, f"{count} reconciles", interval=0.5)
            print(f"restart: {count} reconciles done {time.monotonic() - start:.1f} s after the start (every key "
                  f"Secret read for the first time; {_reconciles(restarted)['failed']:.0f} failed); /healthz latency meanwhile: {probe.summary()}")
        finally:
            restarted.stop()


def served(count: int, minutes: float) -> None:
    """Idle policies whose servedAt URL agrees, with the operator's default check intervals:
    what the read-back costs the JWKS server (GETs, counted at the endpoint) and the API (writes)."""
    from tests.conformance.driver import Sidecar
    from tests.served_endpoint import LaggingEndpoint

    with environment(["--secret-propagation", "2s"]) as (cluster, api, operator):
        policies = Policies(api, "bench")
        log_dir = Path(tempfile.mkdtemp(prefix="sko-bench-served-"))
        serving = []
        try:
            for index in range(count):
                sidecar = Sidecar(cluster.kubeconfig, "bench", f"idle-{index}-jwks", log_dir / f"sidecar-{index}.log")
                endpoint = LaggingEndpoint(sidecar.url, poll=1.0).start()
                serving.append((sidecar, endpoint))
                policies.create(f"idle-{index}", {"jwks": {"servedAt": [endpoint.url]}})
            for index in range(count):
                wait_until(lambda: any(c["type"] == "JWKSServed" and c["status"] == "True"
                                       for c in (policies.get(f"idle-{index}").get("status") or {}).get("conditions") or []),
                           120, f"idle-{index} JWKSServed", interval=0.5)
            time.sleep(10)  # the last status writes land
            writes_before = _total(_writes(operator))
            versions = {f"idle-{i}": policies.get(f"idle-{i}")["metadata"]["resourceVersion"] for i in range(count)}
            requests_before = [endpoint.requests for _, endpoint in serving]
            started = time.monotonic()
            time.sleep(minutes * 60)
            hours = (time.monotonic() - started) / 3600
            requests = [endpoint.requests - before for (_, endpoint), before in zip(serving, requests_before)]
            writes = _total(_writes(operator)) - writes_before
            unchanged = sum(policies.get(name)["metadata"]["resourceVersion"] == version for name, version in versions.items())
            print(f"served: {count} idle policies, one servedAt URL each, default check intervals, {hours * 60:.1f} min")
            print(f"  GETs per policy-hour at its URL: p50 {statistics.median(requests) / hours:.1f}, "
                  f"max {max(requests) / hours:.1f} (total {sum(requests)})")
            print(f"  API writes: {writes:.0f} in all ({writes / count / hours:.2f} per idle policy-hour); "
                  f"{unchanged}/{count} policies kept their resourceVersion")
        finally:
            for sidecar, endpoint in serving:
                endpoint.stop()
                sidecar.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("latency").add_argument("--runs", type=int, default=25)
    w = sub.add_parser("writes")
    w.add_argument("--idle-seconds", type=int, default=120)
    w.add_argument("--idle-policies", type=int, default=20)
    sub.add_parser("scale").add_argument("--count", type=int, default=1000)
    r = sub.add_parser("rsa")
    r.add_argument("--count", type=int, default=100)
    r.add_argument("--seconds", type=int, default=30)
    r.add_argument("--pokers", type=int, default=4)
    v = sub.add_parser("served")
    v.add_argument("--count", type=int, default=10)
    v.add_argument("--minutes", type=float, default=30)
    args = parser.parse_args()
    if args.what == "latency":
        latency(args.runs)
    elif args.what == "writes":
        writes(args.idle_seconds, args.idle_policies)
    elif args.what == "served":
        served(args.count, args.minutes)
    elif args.what == "rsa":
        rsa(args.count, args.seconds, args.pokers)
    else:
        scale(args.count)


if __name__ == "__main__":
    main()
