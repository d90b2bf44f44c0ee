"""Prometheus metrics of one sidecar app, in a registry of its own.

A per-app :class:`~prometheus_client.CollectorRegistry` (never the process-global one) keeps
apps independent: several apps in one test process, or the sidecar embedded next to the
operator, never collide on metric names. Every label has a bounded set of values: ``path`` is
the route template (``unmatched`` for anything else), ``reason`` a fixed code, ``kid`` a public
RFC 7638 thumbprint of a key currently served (never key material, design invariant 5),
``client`` the product token of a JWKS fetcher's User-Agent, bounded by
:data:`MAX_CLIENT_LABELS` (see :func:`client_label`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

PREFIX = "signing_key_sidecar"

MAX_CLIENT_LABELS = 32
"""Distinct ``client`` values of the fetch counter; later ones count as ``other``. A dozen kinds
of verifier fetch one set (libraries, gateways, probes); the User-Agent is the client's to
choose, so without a cap a client sending random ones would make a series per request."""

_MAX_CACHED_USER_AGENTS = 256
"""User-Agent strings whose label is remembered (one lookup per fetch instead of a regex);
beyond that the label is worked out on each request, so random User-Agents cost CPU, not memory."""

_PRODUCT = re.compile(rb"\s*([A-Za-z0-9][A-Za-z0-9._+-]{0,47})(?:[/\s]|$)")


def client_label(user_agent: bytes | None) -> str:
    """The product token of a User-Agent (RFC 9110 §10.1.5: ``product/version comment``):
    ``Envoy``, ``oauth2-proxy``, ``Go-http-client``, ``Java``, ``Python-urllib``... What a
    verifier calls itself is what tells fetchers apart on one JWKS server; the version and the
    comments are left out so that an upgrade does not make new series. ``none`` without a
    User-Agent, ``invalid`` when it does not start with a token."""
    if not user_agent:
        return "none"
    match = _PRODUCT.match(user_agent)
    return match.group(1).decode("ascii") if match else "invalid"


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
        self.jwks_fetches = Counter(
            f"{PREFIX}_jwks_fetches",
            "JWK Set requests (GET and HEAD, answered 200 or 304), by the product token of the "
            "client's User-Agent: how often each kind of verifier fetches. At most "
            f"{MAX_CLIENT_LABELS} client values, then 'other'.",
            ["client"],
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
        self._fetch_children: dict[str, Any] = {}
        self._fetch_children_by_user_agent: dict[bytes | None, Any] = {}

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

    def count_jwks_fetch(self, user_agent: bytes | None) -> None:
        """One JWK Set answer to a client with this User-Agent (raw header bytes, or None)."""
        child = self._fetch_children_by_user_agent.get(user_agent)
        if child is None:
            label = client_label(user_agent)
            if label not in self._fetch_children and len(self._fetch_children) >= MAX_CLIENT_LABELS:
                label = "other"
            child = self._fetch_children.get(label)
            if child is None:
                child = self._fetch_children[label] = self.jwks_fetches.labels(client=label)
            if len(self._fetch_children_by_user_agent) < _MAX_CACHED_USER_AGENTS:
                self._fetch_children_by_user_agent[user_agent] = child
        child.inc()

    def set_kids(self, kids: Iterable[str]) -> None:
        new = set(kids)
        for gone in self._kids - new:
            self.kid_served.remove(gone)
        for kid in new:
            self.kid_served.labels(kid=kid).set(1)
        self._kids = new
        self.keys_served.set(len(new))
