"""Prometheus metrics of one sidecar app, in a registry of its own.

A per-app :class:`~prometheus_client.CollectorRegistry` (never the process-global one) keeps
apps independent: several apps in one test process, or the sidecar embedded next to the
operator, never collide on metric names. Every label has a bounded set of values: ``path`` is
the route template (``unmatched`` for anything else), ``reason`` a fixed code, ``kid`` a public
RFC 7638 thumbprint of a key currently served (never key material, design invariant 5).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

PREFIX = "signing_key_sidecar"


class SidecarMetrics:
    """The collectors, registered in ``self.registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests served, by route, method and status code.",
            ["path", "method", "status"],
            registry=r,
        )
        self.generation = Gauge(
            f"{PREFIX}_jwks_generation",
            "Generation of the JWK Set being served: +1 on every accepted change, 0 before the first.",
            registry=r,
        )
        self.last_reload = Gauge(
            f"{PREFIX}_jwks_last_reload_timestamp_seconds",
            "Unix time at which the JWK Set being served was loaded (0 before the first load).",
            registry=r,
        )
        self.keys_served = Gauge(
            f"{PREFIX}_jwks_keys_served",
            "Number of keys in the JWK Set being served.",
            registry=r,
        )
        self.kid_served = Gauge(
            f"{PREFIX}_jwks_kid_served",
            "1 for every kid in the JWK Set being served (the series disappears with the key).",
            ["kid"],
            registry=r,
        )
        self.refused = Counter(
            f"{PREFIX}_jwks_reloads_refused",
            "Content refused as not a valid public JWK Set; the last good set stays served.",
            ["reason"],
            registry=r,
        )
        self.max_age_ignored = Counter(
            f"{PREFIX}_jwks_max_age_ignored",
            "Published max-age values ignored as invalid (not an integer 0..31536000): the set was "
            "served all the same, with the fallback max-age.",
            registry=r,
        )
        self.source_present = Gauge(
            f"{PREFIX}_jwks_source_present",
            "1 while the source (ConfigMap or mounted file) exists, 0 after it disappeared "
            "(the last good set is still served).",
            registry=r,
        )
        self.revocations_generation = Gauge(
            f"{PREFIX}_revocations_generation",
            "Generation of the revocation document being served: +1 on every accepted change.",
            registry=r,
        )
        self.revocations_last_reload = Gauge(
            f"{PREFIX}_revocations_last_reload_timestamp_seconds",
            "Unix time at which the revocation document being served was loaded.",
            registry=r,
        )
        self.revocations_entries = Gauge(
            f"{PREFIX}_revocations_entries",
            "Entries (jti and subject) in the revocation document being served.",
            registry=r,
        )
        self.revocations_refused = Counter(
            f"{PREFIX}_revocations_reloads_refused",
            "Content refused as not a valid revocation document; the last good one stays served.",
            ["reason"],
            registry=r,
        )
        self.revocations_max_age_ignored = Counter(
            f"{PREFIX}_revocations_max_age_ignored",
            "Published max-age values ignored as invalid: the revocation document was served all "
            "the same, with the fallback max-age.",
            registry=r,
        )
        self.revocations_source_present = Gauge(
            f"{PREFIX}_revocations_source_present",
            "1 while the revocation ConfigMap (or mounted file) exists, 0 after it disappeared.",
            registry=r,
        )
        self.ready = Gauge(
            f"{PREFIX}_ready",
            "1 while /readyz answers 200.",
            registry=r,
        )
        self._kids: set[str] = set()
        self._request_children: dict[tuple[str, str, int], Any] = {}

    def request_counter(self, path: str, method: str, status: int) -> Any:
        """The ``http_requests`` child for these labels, cached: ``labels()`` takes a lock and
        builds the label tuple on every call, a measurable share of a JWKS request. Every label
        has a bounded set of values, so the cache is bounded too. Used by the app's middleware
        and by the JWKS fast path (fastpath.py), so both count in the same series."""
        key = (path, method, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(path=path, method=method, status=str(status))
        return child

    def set_kids(self, kids: Iterable[str]) -> None:
        new = set(kids)
        for gone in self._kids - new:
            self.kid_served.remove(gone)
        for kid in new:
            self.kid_served.labels(kid=kid).set(1)
        self._kids = new
        self.keys_served.set(len(new))
