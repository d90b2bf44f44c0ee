"""The sidecar's HTTP app: serves the published JWK Set to verifiers.

Endpoints
---------
``GET|HEAD /.well-known/jwks.json`` and ``/jwks.json``
    The set byte for byte as published, ``Content-Type: application/jwk-set+json`` (RFC 7517
    section 8.5; PyJWT's PyJWKClient, Node ``jose`` createRemoteJWKSet, Nimbus/Spring and Go
    ``keyfunc``/``jwkset`` all read the body whatever its content type, and jose and Spring even
    ask for it in ``Accept``), ``Cache-Control: public, max-age=N`` (``--max-age``, else the
    policy's value published with the ConfigMap, else 60; never ``no-store``), a strong
    ``ETag`` (SHA-256 of the body: the same on every replica), ``Last-Modified``. A matching
    ``If-None-Match`` (a list, ``W/`` tags and ``*`` included) gives ``304`` with ETag and
    Cache-Control. ``If-Modified-Since`` is deliberately not honoured: Last-Modified is the
    time this replica loaded the set, which differs between replicas, so a date comparison
    could answer 304 to a client holding an older set; ETag comparison cannot. ``503`` with a
    JSON error until a valid set has been loaded.
``GET|HEAD /.well-known/openid-configuration`` (only with ``--issuer``, else 404)
    ``issuer``, ``jwks_uri`` (issuer + ``/.well-known/jwks.json``), the algs of the set, enough
    for Spring's ``JwtDecoders.fromIssuerLocation``. When the issuer URL has a path, both
    documents are also served under that path, where such clients look for them.
``GET|HEAD /revocations.json`` (only with a revocation source, else 404)
    The policy's revocation document (TokenRevocations in force, see
    :mod:`signing_key_operator.core.revocations`) byte for byte as published, with the same
    Cache-Control, ETag, 304 and refusal of bad content as the JWKS; ``application/json``.
``/healthz``
    200 while the process runs (liveness).
``/readyz``
    200 once a valid set (and, with a revocation source, a valid revocation document: a
    verifier must not be told "nothing is revoked" by a replica that does not know yet) is
    loaded, 503 before, and 503 while draining after SIGTERM.
    If the ConfigMap (or file) is deleted, the sidecar keeps serving the last good set and
    stays ready: every replica sees the deletion at the same moment, so turning unready would
    pull all of them out of the Service and fail every verifier at once, while the last good
    set keeps verifying the tokens in flight. Revocation still works, because it is an update
    of the ConfigMap, which is applied. The deletion is logged, shown in the /readyz body
    (``sourcePresent: false``) and in the ``signing_key_sidecar_jwks_source_present`` gauge.
``/metrics``
    Prometheus text format from a per-app registry (see metrics.py).

The app writes nothing to disk and logs through :mod:`logging` only. ``serve`` puts the JWKS
fast path (fastpath.py) in front of it: plain GET/HEAD of the JWKS paths are answered there with
this app's headers (``_Handlers.jwks_headers``), byte for byte as the app would; every other
request, and every connection after one, is served by this app.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict
from prometheus_client.exposition import choose_encoder

from .metrics import SidecarMetrics
from .settings import Settings
from .sources import Source
from .state import JwksState, PublishedState, RevocationState, Snapshot

log = logging.getLogger(__name__)

JWKS_CONTENT_TYPE = "application/jwk-set+json"
JSON_CONTENT_TYPE = "application/json"
JWKS_PATHS = ("/.well-known/jwks.json", "/jwks.json")
DISCOVERY_PATH = "/.well-known/openid-configuration"
REVOCATIONS_PATH = "/revocations.json"


@dataclass
class Lifecycle:
    draining: bool = False
    """Set on SIGTERM: /readyz answers 503 while the JWKS is still served."""


STATE = web.AppKey("state", JwksState)
REVOCATIONS = web.AppKey("revocations", RevocationState)
SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", SidecarMetrics)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
HANDLERS = web.AppKey("handlers", "_Handlers")

_ETAG_RE = re.compile(r'[\s,]*(?:W/)?"([^"]*)"\s*(?:,|$)')


def make_app(
    source: Source | None,
    settings: Settings | None = None,
    *,
    state: JwksState | None = None,
    revocation_source: Source | None = None,
    revocations: RevocationState | None = None,
) -> web.Application:
    """Build the app. ``source`` (None: content is offered to ``app[STATE]`` by the caller) runs
    as a background task from startup to cleanup and is restarted if it ever fails; so does
    ``revocation_source``. The revocation document is served when either a revocation source or
    a ``revocations`` state (offered to by the caller) is given."""
    settings = settings or Settings()
    if state is None:
        state = JwksState(SidecarMetrics())
    metrics = state.metrics
    if revocations is None and revocation_source is not None:
        revocations = RevocationState(metrics)
    app = web.Application(middlewares=[_metrics_middleware(metrics)])
    app[STATE] = state
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[LIFECYCLE] = Lifecycle()

    if revocations is not None:
        app[REVOCATIONS] = revocations
    handlers = app[HANDLERS] = _Handlers(state, settings, app[LIFECYCLE], revocations)
    for path in JWKS_PATHS:
        app.router.add_get(path, handlers.jwks)
    app.router.add_get(REVOCATIONS_PATH, handlers.revocations)
    if settings.issuer:
        app.router.add_get(DISCOVERY_PATH, handlers.discovery)
        prefix = urlsplit(settings.issuer).path.rstrip("/")
        if prefix:
            app.router.add_get(prefix + DISCOVERY_PATH, handlers.discovery)
            app.router.add_get(prefix + JWKS_PATHS[0], handlers.jwks)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)

    if source is not None:
        app.cleanup_ctx.append(_source_runner(source, state, settings))
    if revocation_source is not None:
        app.cleanup_ctx.append(_source_runner(revocation_source, revocations, settings))
    metrics.ready.set(0)
    return app


class RestartBackoff:
    """The wait before a stopped source is restarted: doubling (up to ``cap``) while it keeps
    stopping, and back to ``initial`` once it has run for ``cap`` or longer, since a source that
    worked that long is not part of the same failure streak (without that, one bad hour set every
    later restart, for the life of the pod, to the cap)."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial, self.cap = initial, cap
        self._next = initial

    def after_run(self, ran_for: float) -> float:
        """The wait after a run that lasted ``ran_for`` seconds."""
        if ran_for >= self.cap:
            self._next = self.initial
        wait = self._next
        self._next = min(wait * 2, self.cap)
        return wait


def _source_runner(
    source: Source, state: PublishedState, settings: Settings
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def supervise() -> None:
        backoff = RestartBackoff(settings.backoff_initial, settings.backoff_max)
        clock = asyncio.get_running_loop().time
        while True:
            started = clock()
            try:
                await source.run(state)
                wait = backoff.after_run(clock() - started)
                log.warning("%s stopped; restarting in %.1fs", source.description, wait)
            except asyncio.CancelledError:
                raise
            except Exception:
                wait = backoff.after_run(clock() - started)
                log.exception("%s failed; restarting in %.1fs", source.description, wait)
            await asyncio.sleep(wait)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        log.info("loading the %s from %s", state.what, source.description)
        task = asyncio.create_task(supervise(), name=f"{state.what} source: {source.description}")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx


def _metrics_middleware(metrics: SidecarMetrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    counter = metrics.request_counter

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        resource = request.match_info.route.resource
        path = resource.canonical if resource is not None else "unmatched"
        method = request.method if request.method in ("GET", "HEAD") else "other"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            counter(path, method, status).inc()

    return middleware


class _Handlers:
    def __init__(
        self, state: JwksState, settings: Settings, lifecycle: Lifecycle, revocations: RevocationState | None = None
    ) -> None:
        self.state = state
        self.revocation_state = revocations
        self.settings = settings
        self.lifecycle = lifecycle
        self._discovery_cache: tuple[int, bytes, str] | None = None
        self._jwks_headers: tuple[Snapshot, CIMultiDict[str], CIMultiDict[str]] | None = None

    def _max_age(self, snap: Snapshot) -> int:
        s = self.settings
        if s.max_age is not None:
            return s.max_age
        if snap.max_age is not None:
            return snap.max_age
        return s.default_max_age

    def _not_loaded(self, what: str = "JWK Set", error: str = "jwks_not_loaded") -> web.Response:
        return _json(
            503,
            {"error": error, "message": f"no valid {what} has been loaded yet"},
            headers={"Retry-After": "1", "Cache-Control": "no-cache"},
        )

    def _representation(
        self, request: web.Request, snap: Snapshot, body: bytes, etag: str, content_type: str
    ) -> web.Response:
        headers = self._headers(snap, etag)
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match is not None and etag_matches(if_none_match, etag):
            return web.Response(status=304, headers=headers)
        headers["Content-Type"] = content_type
        return web.Response(status=200, body=body, headers=headers)

    def _headers(self, snap: Snapshot, etag: str) -> CIMultiDict[str]:
        return CIMultiDict(
            {
                "Cache-Control": f"public, max-age={self._max_age(snap)}",
                "ETag": etag,
                "Last-Modified": snap.last_modified,
                "Access-Control-Allow-Origin": "*",
                "X-Content-Type-Options": "nosniff",
            }
        )

    def jwks_headers(self, snap: Snapshot) -> tuple[CIMultiDict[str], CIMultiDict[str]]:
        """Headers of the JWKS answers for ``snap``: (304, 200). Built once per snapshot (a new
        set or a new max-age makes a new Snapshot object); shared with the fast path
        (fastpath.py), which serializes exactly these. Callers must not modify them."""
        cached = self._jwks_headers
        if cached is None or cached[0] is not snap:
            not_modified = self._headers(snap, snap.etag)
            full = not_modified.copy()
            full["Content-Type"] = JWKS_CONTENT_TYPE
            cached = self._jwks_headers = (snap, not_modified, full)
        return cached[1], cached[2]

    async def jwks(self, request: web.Request) -> web.Response:
        # The hot path when served by aiohttp; most JWKS requests never get here but are
        # answered by the fast path (fastpath.py) with the same headers and status.
        snap = self.state.current
        if snap is None:
            return self._not_loaded()
        not_modified, full = self.jwks_headers(snap)
        user_agent = request.headers.get("User-Agent")
        self.state.metrics.count_jwks_fetch(user_agent.encode("utf-8", "surrogateescape") if user_agent is not None else None)
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match is not None and etag_matches(if_none_match, snap.etag):
            return web.Response(status=304, headers=not_modified)
        return web.Response(body=snap.body, headers=full)

    async def discovery(self, request: web.Request) -> web.Response:
        snap = self.state.current
        if snap is None:
            return self._not_loaded()
        cached = self._discovery_cache
        if cached is None or cached[0] != snap.generation:
            body = discovery_document(self.settings.issuer or "", snap)
            cached = (snap.generation, body, '"' + hashlib.sha256(body).hexdigest() + '"')
            self._discovery_cache = cached
        return self._representation(request, snap, cached[1], cached[2], JSON_CONTENT_TYPE)

    async def revocations(self, request: web.Request) -> web.Response:
        if self.revocation_state is None:
            return _json(
                404,
                {"error": "revocations_not_configured", "message": "this server has no revocation source (--revocations-configmap or --revocations-file)"},
                headers={"Cache-Control": "no-cache"},
            )
        snap = self.revocation_state.current
        if snap is None:
            return self._not_loaded("revocation document", "revocations_not_loaded")
        return self._representation(request, snap, snap.body, snap.etag, JSON_CONTENT_TYPE)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n", headers={"Cache-Control": "no-cache"})

    async def readyz(self, request: web.Request) -> web.Response:
        snap = self.state.current
        present = self.state.source_present
        if self.lifecycle.draining:
            return _json(503, {"ready": False, "reason": "shutting down"}, headers={"Cache-Control": "no-cache"})
        if snap is None:
            body: dict[str, Any] = {
                "ready": False,
                "reason": "no valid JWK Set loaded yet",
                "sourcePresent": present,
            }
            refusal = self.state.last_refusal
            if refusal is not None:
                body["lastRefusal"] = {"reason": refusal.reason, "message": refusal.message}
            return _json(503, body, headers={"Cache-Control": "no-cache"})
        body = {"ready": True, "generation": snap.generation, "kids": list(snap.content.kids), "sourcePresent": present}
        if self.revocation_state is not None:
            revocations = self.revocation_state.current
            if revocations is None:
                return _json(
                    503,
                    {"ready": False, "reason": "no valid revocation document loaded yet",
                     "sourcePresent": self.revocation_state.source_present},
                    headers={"Cache-Control": "no-cache"},
                )
            body["revocations"] = {
                "generation": revocations.generation,
                "entries": len(revocations.content),
                "backend": revocations.content.backend,
                "sourcePresent": self.revocation_state.source_present,
            }
        return _json(200, body, headers={"Cache-Control": "no-cache"})

    async def metrics(self, request: web.Request) -> web.Response:
        m = self.state.metrics
        revocations_loaded = self.revocation_state is None or self.revocation_state.loaded
        m.ready.set(1 if self.state.loaded and revocations_loaded and not self.lifecycle.draining else 0)
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        headers = {"Content-Type": content_type, "Cache-Control": "no-cache"}
        return web.Response(body=encoder(m.registry), headers=headers)


def discovery_document(issuer: str, snap: Snapshot) -> bytes:
    """OpenID Provider Metadata (OIDC Discovery 1.0) sufficient for JWT verifiers."""
    algs = sorted({_alg_of(k) for k in snap.content.keys} - {None})  # type: ignore[operator]
    doc = {
        "issuer": issuer,
        "jwks_uri": issuer.rstrip("/") + JWKS_PATHS[0],
        "id_token_signing_alg_values_supported": algs,
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
    }
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


_DEFAULT_ALG = {
    "P-256": "ES256",
    "P-384": "ES384",
    "P-521": "ES512",
    "secp256k1": "ES256K",
    "Ed25519": "EdDSA",
    "Ed448": "EdDSA",
}


def _alg_of(key: Any) -> str | None:
    if "alg" in key:
        return str(key["alg"])
    if key.get("use") == "enc":
        return None
    if key.get("kty") == "RSA":
        return "RS256"
    return _DEFAULT_ALG.get(key.get("crv", ""))


def etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 If-None-Match: ``*`` or a list of entity tags, weak comparison."""
    value = if_none_match.strip()
    if value == "*":
        return True
    opaque = etag.removeprefix("W/").strip('"')
    pos = 0
    while value[pos:].strip(", \t"):
        m = _ETAG_RE.match(value, pos)
        if m is None:
            return False  # malformed list: no match, serve the full representation
        if m.group(1) == opaque:
            return True
        pos = m.end()
    return False


def _json(status: int, body: dict[str, Any], *, headers: dict[str, str] | None = None) -> web.Response:
    data = (json.dumps(body, separators=(",", ":")) + "\n").encode()
    return web.Response(status=status, body=data, headers={"Content-Type": JSON_CONTENT_TYPE, **(headers or {})})
