"""Operator settings: every field has a default, and a docstring saying why."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from ..core.jwks import MAX_JWK_SET_BYTES
from ..core.revocations import MAX_CONFIGMAP_BYTES
from ..core.spec import DEFAULT_SECRET_PROPAGATION


@dataclass(frozen=True)
class OperatorSettings:
    kubeconfig: str | None = None
    """Path to a kubeconfig; None means in-cluster credentials, else the default kubeconfig,
    the order kubectl users expect."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means cluster-wide. A namespaced install (the chart's
    `namespaces` value) needs only Roles in those namespaces."""

    secret_propagation: timedelta = DEFAULT_SECRET_PROPAGATION
    """How long a mounted Secret takes to reach signers (the kubelet's resync: up to 90 s with
    its defaults; see core/spec.py). A retired key stays published this much longer (invariant 3)."""

    conflict_retry: timedelta = timedelta(milliseconds=200)
    """Wait after a write lost a resourceVersion race: another replica (or the user) changed the
    objects, so re-read at once rather than wait for the next due time."""

    name_conflict_recheck: timedelta = timedelta(seconds=30)
    """How often a policy held by a name conflict looks again. The object in the way is not the
    operator's, so freeing the name (deleting or renaming it) sends no event the operator
    watches; a few reads per policy every half minute is cheap, and a user who fixed it waits
    no longer than that."""

    error_backoff_initial: timedelta = timedelta(seconds=1)
    """First wait after a failed reconcile (API unreachable, refused write); doubles each time."""

    error_backoff_max: timedelta = timedelta(seconds=60)
    """Upper bound of that backoff: a broken API server must not be hammered, and a policy must
    not sit unreconciled for longer than a minute once the API is back."""

    failures_before_report: int = 3
    """Failed reconciles in a row before the policy says so (Ready=False, reason ReconcileFailed,
    and a Warning Event): one failure is usually a blip (an API server restart, a dropped
    connection) that the retry a second later gets past; three in a row, over 1 + 2 s of backoff,
    is a refusal or an outage that a human should see."""

    metrics_port: int | None = 8080
    """Port of the Prometheus endpoint (/metrics); None disables it."""

    metrics_host: str = "0.0.0.0"
    """Address the metrics endpoint binds: all interfaces in a pod; tests pass 127.0.0.1."""

    health_port: int | None = 8081
    """Port of kopf's liveness endpoint (/healthz) for the Deployment's probes; None disables it."""

    health_host: str = "0.0.0.0"
    """Address the liveness endpoint binds: all interfaces in a pod (the kubelet probes the pod
    IP); benches that time it pass 127.0.0.1."""

    peering: str | None = None
    """kopf peering object name for several replicas; None runs standalone. Replicas are kept
    from rotating twice by resourceVersion-guarded writes, not by peering (kopf peering is not
    leader election), so peering only saves duplicate reads."""

    api_connections: int = 16
    """Concurrent HTTPS connections to the API server. A thousand policies starting at once are
    all Ready within about 30 s with 16 (bench/operator_bench.py scale); every connection costs
    TLS buffers, and 32 pushed the operator past 150 MiB for no gain in time."""

    redis_resync: timedelta = timedelta(seconds=15)
    """How often a Redis-backed policy checks that Redis still holds its entries (one GET of a
    digest key). Redis without persistence forgets everything on a restart; the entries come
    back from the TokenRevocations within this long (plus one reconcile)."""

    revocation_document_limit: int = MAX_CONFIGMAP_BYTES
    """Largest revocation ConfigMap (document plus max-age) the operator writes. 1 MiB is what
    the API server accepts; a cluster admin may set less, since every watcher of the ConfigMap
    (each JWKS server replica) receives the whole object on every change. Beyond it the stored
    document is kept and the policy says to use the Redis backend."""

    served_check_interval: timedelta = timedelta(seconds=5)
    """How often a policy with ``spec.jwks.servedAt`` checks its URLs while something is pending
    (a URL not serving the published set: a new key not there yet, a removed one still there).
    A new key's publishAhead starts at the first check that finds it everywhere, so this is
    how late it may start; one GET per URL every 5 s costs a JWKS server nothing."""

    served_check_idle_interval: timedelta = timedelta(minutes=5)
    """How often it checks while every URL serves the published set: rarely, since nothing is
    expected to change, but often enough that an endpoint that starts lying (a cache
    misconfigured, a stale replica) is reported within minutes. 12 GETs per URL per hour."""

    served_check_error_max_interval: timedelta = timedelta(minutes=1)
    """While a URL cannot be read (its JWKS server not up yet, an outage), checks back off from
    the pending interval, doubling, to this: a dead endpoint costs a GET a minute, and one that
    comes back is seen (and a waiting key's publishAhead starts) within a minute."""

    served_check_timeout: timedelta = timedelta(seconds=5)
    """Longest a check of one URL may take, redirects and body included: verifiers' HTTP
    clients give up about then, and a URL that slow is reported as unreachable."""

    served_check_max_bytes: int = MAX_JWK_SET_BYTES
    """Largest body a check reads: a ConfigMap holds at most 1 MiB, so a bigger set was not
    published by this operator, and reading on would let an endpoint exhaust memory."""

    served_check_redirects: int = 3
    """Redirects a check follows (an ingress moving http to https, a CDN's canonical host);
    more is a loop or a misconfiguration, reported as unreachable."""

    served_check_connections: int = 16
    """Concurrent connections for all checks of this process; checks of one policy run at once."""

    jwks_server_reload_time: timedelta = timedelta(minutes=2)
    """How long a JWKS server may take to serve a changed ConfigMap: under a second for the
    chart's sidecar watching it, up to 90 s for a server reading a mounted ConfigMap (the
    kubelet's sync; measured p99 89 s). Plus jwks.maxAge, this is how long a URL may keep
    serving a removed or revoked key, or lack the signing key, before it is an alarm
    (Warning Event, Degraded)."""

    def __post_init__(self) -> None:
        if not 0 < self.revocation_document_limit <= MAX_CONFIGMAP_BYTES:
            raise ValueError(f"revocation_document_limit must be 1..{MAX_CONFIGMAP_BYTES} bytes (the API server's ConfigMap limit)")
