"""Settings of the JWKS sidecar (``signing-key-operator serve``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_MAX_AGE = 60


@dataclass(frozen=True)
class Settings:
    """Everything the app and the sources need; every field has a safe default."""

    host: str = "0.0.0.0"
    """Listen on every interface: the pod IP is what the Service routes to."""

    port: int = 8080
    """Unprivileged port, so the container runs as non-root without NET_BIND_SERVICE."""

    max_age: int | None = None
    """``Cache-Control: max-age`` forced by the operator of the sidecar (--max-age). None means:
    take the policy's value published with the ConfigMap, so one setting (spec.jwks.maxAge)
    drives both the operator's publishAhead check and the header."""

    default_max_age: int = DEFAULT_MAX_AGE
    """Used when neither --max-age nor the ConfigMap gives one: short, so proxies and the few
    clients that honour Cache-Control pick up a rotation quickly, but never ``no-store`` (that
    made every verifier refetch on every token in Vault: a thundering herd)."""

    issuer: str | None = None
    """When set, serve ``/.well-known/openid-configuration`` for this issuer (Spring's
    ``JwtDecoders.fromIssuerLocation``). It must equal the JWTs' ``iss`` exactly: clients
    compare it as a string."""

    data_key: str = "jwks.json"
    """ConfigMap data key (and file name in the mounted volume) that holds the JWK Set; the
    operator writes ``jwks.json``."""

    poll_interval: float = 0.25
    """How often the file source stats the mounted file. A stat of a tmpfs file costs
    microseconds, so a quarter second makes reload latency negligible next to the kubelet's
    sync period without any inotify dependency."""

    resync_interval: float = 10.0
    """The file source re-reads the file this often even if stat saw no change, in case a
    rewrite kept size and mtime (coarse-timestamp file systems); cheap, the set is small."""

    watch_timeout_seconds: int = 90
    """Server-side timeout of one watch request: the watch reconnects (resuming from the last
    resourceVersion, no relist) at least this often, so a silently dead connection is noticed
    within about this time."""

    backoff_initial: float = 0.5
    """First wait after a failed list/watch; doubles up to ``backoff_max`` (with jitter), so an
    API server outage is not hammered by every sidecar replica at once."""

    backoff_max: float = 30.0
    """Cap of the reconnect backoff: a rotation published after an outage is picked up within
    this long of the API server coming back."""

    shutdown_delay: float = 3.0
    """After SIGTERM, /readyz turns 503 but the JWKS is still served this long, so endpoints
    controllers and kube-proxy stop routing here before the listener closes (no refused
    connections during a rollout)."""

    shutdown_timeout: float = 5.0
    """How long in-flight requests may take to finish once the listener is closed."""

    keepalive_timeout: float = 75.0
    """Idle keep-alive connections (no complete request for this long, also while a request
    trickles in on the fast path) are closed, on the fast path and in aiohttp alike."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.max_age is not None and self.max_age < 0:
            raise ValueError(f"max-age must be >= 0, got {self.max_age}")
        if self.default_max_age < 0:
            raise ValueError("default max-age must be >= 0")
        if not self.data_key or "/" in self.data_key:
            raise ValueError(f"data key must be a plain file name, got {self.data_key!r}")
        for name in ("poll_interval", "resync_interval", "backoff_initial", "backoff_max"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.watch_timeout_seconds < 1:
            raise ValueError("watch_timeout_seconds must be >= 1")
        if self.keepalive_timeout <= 0:
            raise ValueError("keepalive_timeout must be > 0")
        if self.shutdown_delay < 0 or self.shutdown_timeout < 0:
            raise ValueError("shutdown delay and timeout must be >= 0")
        if self.issuer is not None:
            parts = urlsplit(self.issuer)
            if parts.scheme not in ("https", "http") or not parts.netloc:
                raise ValueError(f"issuer must be an http(s) URL, got {self.issuer!r}")
            if parts.query or parts.fragment:
                raise ValueError("issuer must not have a query or fragment (OpenID Connect Discovery 1.0)")

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
