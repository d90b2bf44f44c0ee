"""The operator's Prometheus metrics. Labels name policies and reasons, never key material."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class _PolicyCollector(Collector):
    """Per-policy gauges, computed at scrape time (key age from the activation time), so an
    idle policy costs nothing between scrapes."""

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self.activated: dict[tuple[str, str], float] = {}
        self.next_rotation: dict[tuple[str, str], float] = {}
        self.revocations: dict[tuple[str, str], tuple[int, int]] = {}
        self.served: dict[tuple[str, str], tuple[dict[str, float], list[str], float]] = {}
        self.ready: dict[tuple[str, str], tuple[bool, str]] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self._clock()
        ready = GaugeMetricFamily(
            "signing_key_operator_policy_ready",
            "1 while a policy's Ready condition is True, 0 while it is False; reason is the "
            "condition's (InvalidSpec, KeySecretInvalid, NameConflict, ReconcileFailed, ...).",
            labels=["namespace", "policy", "reason"],
        )
        for (namespace, policy), (is_ready, reason) in self.ready.items():
            ready.add_metric([namespace, policy, reason], 1.0 if is_ready else 0.0)
        age = GaugeMetricFamily(
            "signing_key_operator_active_key_age_seconds",
            "Seconds since the active signing key of a policy started signing.",
            labels=["namespace", "policy"],
        )
        due = GaugeMetricFamily(
            "signing_key_operator_next_rotation_timestamp_seconds",
            "When the next key of a policy is due to start signing (Unix time).",
            labels=["namespace", "policy"],
        )
        for (namespace, policy), activated in self.activated.items():
            age.add_metric([namespace, policy], now - activated)
        overdue = GaugeMetricFamily(
            "signing_key_operator_rotation_overdue_seconds",
            "Seconds the next rotation of a policy is past due (0 when it is not): a key held back "
            "because a servedAt URL does not serve it. Alert on > 0.",
            labels=["namespace", "policy"],
        )
        for (namespace, policy), when in self.next_rotation.items():
            due.add_metric([namespace, policy], when)
            overdue.add_metric([namespace, policy], max(0.0, now - when))
        lag = GaugeMetricFamily(
            "signing_key_operator_jwks_served_lag_seconds",
            "Seconds a spec.jwks.servedAt URL has not served the published JWK Set (0 while it does).",
            labels=["namespace", "policy", "url"],
        )
        grace = GaugeMetricFamily(
            "signing_key_operator_jwks_served_grace_seconds",
            "How long a servedAt URL of a policy may lag before it is an alarm (JWKSNotServed): "
            "the JWKS server's reload time + jwks.maxAge. Alert on lag > grace.",
            labels=["namespace", "policy"],
        )
        for (namespace, policy), (lagging_since, urls, allowed) in self.served.items():
            grace.add_metric([namespace, policy], allowed)
            for url in urls:
                since = lagging_since.get(url)
                lag.add_metric([namespace, policy, url], max(0.0, now - since) if since is not None else 0.0)
        in_force = GaugeMetricFamily(
            "signing_key_operator_revocations_in_force",
            "TokenRevocations of a policy in force now (published or not).",
            labels=["namespace", "policy"],
        )
        pending = GaugeMetricFamily(
            "signing_key_operator_revocations_unpublished",
            "TokenRevocations in force that verifiers cannot see yet (document full, Redis down): alert on > 0.",
            labels=["namespace", "policy"],
        )
        for (namespace, policy), (count, unpublished) in self.revocations.items():
            in_force.add_metric([namespace, policy], count)
            pending.add_metric([namespace, policy], unpublished)
        yield ready
        yield age
        yield due
        yield overdue
        yield lag
        yield grace
        yield in_force
        yield pending


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time):
        self.registry = registry or CollectorRegistry()
        self._keys = _PolicyCollector(clock)
        self.registry.register(self._keys)
        self.rotations = Counter(
            "signing_key_operator_rotations", "Changes of the signing key, by reason.",
            ["reason"], registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "signing_key_operator_reconcile_errors", "Reconciles that failed and will be retried.",
            ["kind"], registry=self.registry,
        )
        self.refused_inputs = Counter(
            "signing_key_operator_refused_inputs",
            "Inputs refused: invalid spec, bad annotation values, unreadable key Secrets.",
            ["kind"], registry=self.registry,
        )
        self.reconciles = Counter(
            "signing_key_operator_reconciles", "Reconciles run (gather, plan, act), by result.",
            ["result"], registry=self.registry,
        )
        self.served_checks = Counter(
            "signing_key_operator_jwks_served_checks", "Checks of spec.jwks.servedAt URLs, by result (ok, unreachable, invalid).",
            ["result"], registry=self.registry,
        )
        self.api_writes = Counter(
            "signing_key_operator_api_writes", "Writes to the Kubernetes API, by kind of object.",
            ["object"], registry=self.registry,
        )

    def observe_policy(self, namespace: str, policy: str, activated: datetime | None, next_rotation: datetime | None) -> None:
        key = (namespace, policy)
        for series, value in ((self._keys.activated, activated), (self._keys.next_rotation, next_rotation)):
            if value is None:
                series.pop(key, None)
            else:
                series[key] = value.timestamp()

    def observe_ready(self, namespace: str, policy: str, ready: bool, reason: str) -> None:
        self._keys.ready[(namespace, policy)] = (ready, reason)

    def observe_served(
        self, namespace: str, policy: str, lagging_since: dict[str, datetime], urls: list[str], grace: timedelta,
    ) -> None:
        if urls:
            self._keys.served[(namespace, policy)] = (
                {url: when.timestamp() for url, when in lagging_since.items()}, urls, grace.total_seconds(),
            )
        else:
            self._keys.served.pop((namespace, policy), None)

    def observe_revocations(self, namespace: str, policy: str, in_force: int, unpublished: int) -> None:
        self._keys.revocations[(namespace, policy)] = (in_force, unpublished)

    def forget_policy(self, namespace: str, policy: str) -> None:
        self.observe_policy(namespace, policy, None, None)
        self._keys.revocations.pop((namespace, policy), None)
        self._keys.served.pop((namespace, policy), None)
        self._keys.ready.pop((namespace, policy), None)
