"""What common JWKS verifiers do with a key set: the one source of those figures.

A rotation is safe for a verifier only if the new key reaches the verifier's cached set before
the first token signed with it does, and the old key stays published while its tokens are
accepted. How long that takes is decided by the verifier's own cache, not by the JWKS server:
the clients below cache on their own clock and ignore Cache-Control. This table says what each
does under its defaults, as read in its source at the version named, and what follows from
that for a policy's timeline.

Everything that depends on those figures takes them from here, so that they cannot drift apart:
the default publishAhead (``spec.DEFAULT_MINIMUM_PUBLISH_AHEAD``, held equal to the CRD's static
default by tests/unit/test_verifier_clients.py), the default clockSkew, the ``ShortTimeline``
warning (``spec.timeline_warnings``), and the client table in README.md and docs/design.md,
which is :func:`markdown_table`'s output (the same test checks both and rewrites them with
``SKO_UPDATE_README=1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from .durations import format_duration

__all__ = ["VERIFIER_CLIENTS", "VerifierClient", "markdown_table"]


@dataclass(frozen=True)
class VerifierClient:
    """One JWKS verifier with its default settings."""

    name: str
    """How the docs and the ShortTimeline warning name it (library or product and the entry point)."""
    version: str
    """The release whose source or docs the figures were read in."""
    kind: Literal["library", "gateway"]
    """A library inside the service, or a gateway (or its control plane) in front of it."""
    default_cache: timedelta | None
    """The longest it goes without fetching the set on its own; None: the set never expires."""
    cache_setting: str
    """The knob that sets default_cache, as its users write it."""
    honours_cache_control: bool
    """Whether the response's Cache-Control max-age shortens (or sets) the cache time."""
    refetch_on_unknown_kid: bool
    """Whether a token naming a kid the cached set lacks makes it fetch the set again."""
    unknown_kid_cooldown: timedelta | None
    """How long after a fetch an unknown kid cannot cause another; None: no limit (or no refetch)."""
    unknown_kid_refetches_per_cooldown: int
    """How many fetches the cooldown lets through (a rate limit of 2 per 30 s rather than 1)."""
    cooldown_setting: str
    """The knob that sets the cooldown; empty when there is none."""
    per_worker_cache: bool
    """Whether each worker thread keeps (and fetches) its own copy of the set by default."""
    exp_leeway: timedelta
    """How long after ``exp`` it still accepts a token by default."""
    leeway_setting: str
    """The knob that sets exp_leeway; empty when there is none."""
    note: str
    """What the columns cannot say: how the refetch behaves, what changes with other settings."""
    source: str
    """Where the figures come from: the source file or documentation page read."""
    conformance: tuple[str, ...]
    """The conformance suite's clients that run it (tests/conformance/clients.py); empty: documented only."""

    def __post_init__(self) -> None:
        if self.default_cache is None and not self._always_refetches:
            # It would keep its first set for ever: no publishAhead would make a rotation safe.
            raise ValueError(f"{self.name}: a set that never expires needs an unconditional unknown-kid refetch")
        if not self.refetch_on_unknown_kid and self.unknown_kid_cooldown is not None:
            raise ValueError(f"{self.name}: a cooldown without an unknown-kid refetch")

    @property
    def _always_refetches(self) -> bool:
        return self.refetch_on_unknown_kid and self.unknown_kid_cooldown is None

    @property
    def minimum_publish_ahead(self) -> timedelta:
        """How long a key must be published before it signs for this client to know it.

        The default cache time: the refetch on an unknown kid is rate-limited in most clients
        and absent in gateways, so it is not counted on. The exception is a client whose set
        never expires: its refetch on a failed verification is the only way it learns keys,
        and it is unconditional, so a token with a published key is never refused.
        """
        if self.default_cache is None:
            return timedelta(0)
        return self.default_cache

    def minimum_retention(self, token_lifetime: timedelta) -> timedelta:
        """How long a key must stay published after its last signature for this client: its
        last token lives token_lifetime and is accepted exp_leeway longer."""
        return token_lifetime + self.exp_leeway


VERIFIER_CLIENTS: tuple[VerifierClient, ...] = (
    VerifierClient(
        name="PyJWT PyJWKClient",
        version="PyJWT 2.15.1",
        kind="library",
        default_cache=timedelta(seconds=300),
        cache_setting="lifespan",
        honours_cache_control=False,
        refetch_on_unknown_kid=True,
        unknown_kid_cooldown=timedelta(seconds=30),
        unknown_kid_refetches_per_cooldown=1,
        cooldown_setting="cooldown_duration",
        per_worker_cache=False,
        exp_leeway=timedelta(0),
        leeway_setting="leeway",
        note=(
            "The cooldown counts from every successful fetch, the first and the expiry fetches "
            "included, so a token with a new key can be refused for up to 30 s even though an "
            "unknown kid refetches."
        ),
        source="https://github.com/jpadilla/pyjwt/blob/2.15.1/jwt/jwks_client.py",
        conformance=("PyJWT",),
    ),
    VerifierClient(
        name="Node jose createRemoteJWKSet",
        version="jose 6.2.18",
        kind="library",
        default_cache=timedelta(minutes=10),
        cache_setting="cacheMaxAge",
        honours_cache_control=False,
        refetch_on_unknown_kid=True,
        unknown_kid_cooldown=timedelta(seconds=30),
        unknown_kid_refetches_per_cooldown=1,
        cooldown_setting="cooldownDuration",
        per_worker_cache=False,
        exp_leeway=timedelta(0),
        leeway_setting="clockTolerance",
        note=(
            "An unknown kid refetches only once the last fetch is older than cooldownDuration; "
            "concurrent lookups share one request."
        ),
        source="https://github.com/panva/jose/blob/v6.2.18/src/jwks/remote.ts",
        conformance=("jose",),
    ),
    VerifierClient(
        name="Nimbus JWKSourceBuilder",
        version="nimbus-jose-jwt 10.9.1",
        kind="library",
        default_cache=timedelta(minutes=5),
        cache_setting="cache(timeToLive, refreshTimeout)",
        honours_cache_control=False,
        refetch_on_unknown_kid=True,
        unknown_kid_cooldown=timedelta(seconds=30),
        unknown_kid_refetches_per_cooldown=2,
        cooldown_setting="rateLimited(minTimeInterval)",
        per_worker_cache=False,
        exp_leeway=timedelta(seconds=60),
        leeway_setting="DefaultJWTClaimsVerifier.setMaxClockSkew",
        note=(
            "Refresh-ahead is on: a lookup in the last 30 s of the 5 min starts a fetch in the "
            "background. The rate limit lets 2 fetches through per 30 s, so one is left for an "
            "unknown kid after a refresh."
        ),
        source=(
            "https://javadoc.io/doc/com.nimbusds/nimbus-jose-jwt/10.9.1/"
            "com/nimbusds/jose/jwk/source/JWKSourceBuilder.html"
        ),
        conformance=("Nimbus",),
    ),
    VerifierClient(
        name="Spring NimbusJwtDecoder.withJwkSetUri",
        version="spring-security-oauth2-jose 7.1.2",
        kind="library",
        default_cache=timedelta(minutes=5),
        cache_setting="cache(Cache)",
        honours_cache_control=False,
        refetch_on_unknown_kid=True,
        unknown_kid_cooldown=None,
        unknown_kid_refetches_per_cooldown=1,
        cooldown_setting="",
        per_worker_cache=False,
        exp_leeway=timedelta(seconds=60),
        leeway_setting="JwtTimestampValidator(clockSkew)",
        note=(
            "Builds Nimbus's JWKSourceBuilder with refreshAheadCache(false) and "
            "rateLimited(false): Nimbus's 5 min cache, and every unknown kid refetches (no "
            "cooldown; concurrent lookups wait for one fetch). The minimum still counts the "
            "cache time, as for every client whose set expires by itself. A Spring Cache "
            "passed to cache() replaces Nimbus's, and its expiry becomes the cache time."
        ),
        source=(
            "https://github.com/spring-projects/spring-security/blob/7.1.2/oauth2/oauth2-jose/"
            "src/main/java/org/springframework/security/oauth2/jwt/NimbusJwtDecoder.java"
        ),
        conformance=("Spring",),
    ),
    VerifierClient(
        name="Go keyfunc",
        version="MicahParks/keyfunc v3.9.1, jwkset v0.11.4, golang-jwt v5.3.1",
        kind="library",
        default_cache=timedelta(hours=1),
        cache_setting="RefreshInterval",
        honours_cache_control=False,
        refetch_on_unknown_kid=True,
        unknown_kid_cooldown=timedelta(minutes=5),
        unknown_kid_refetches_per_cooldown=1,
        cooldown_setting="RefreshUnknownKID",
        per_worker_cache=False,
        exp_leeway=timedelta(0),
        leeway_setting="jwt.WithLeeway",
        note=(
            "A goroutine fetches the set every RefreshInterval whether or not it is used. An "
            "unknown kid refetches through a rate.Limiter of 1 per 5 min; a lookup waits up to "
            "RateLimitWaitMax (1 min) for it, then fails."
        ),
        source="https://github.com/MicahParks/keyfunc/blob/v3.9.1/keyfunc.go",
        conformance=("keyfunc",),
    ),
    VerifierClient(
        name="Envoy jwt_authn",
        version="Envoy 1.40.0",
        kind="gateway",
        default_cache=timedelta(minutes=10),
        cache_setting="remote_jwks.cache_duration",
        honours_cache_control=False,
        refetch_on_unknown_kid=False,
        unknown_kid_cooldown=None,
        unknown_kid_refetches_per_cooldown=1,
        cooldown_setting="",
        per_worker_cache=True,
        exp_leeway=timedelta(seconds=60),
        leeway_setting="clock_skew_seconds",
        note=(
            "The data plane of Istio, Envoy Gateway and Gloo. Without async_fetch each worker "
            "thread fetches on demand and keeps its own copy, expiring cache_duration after its "
            "own fetch; with async_fetch the main thread refetches 5 s before cache_duration "
            "and shares the set with every worker. A refetch on an unknown kid was merged and "
            "reverted upstream (envoyproxy/envoy#36458, #37763): only publishAhead protects it."
        ),
        source=(
            "https://github.com/envoyproxy/envoy/blob/v1.40.0/api/envoy/extensions/filters/http/"
            "jwt_authn/v3/config.proto"
        ),
        conformance=("Envoy", "Envoy async_fetch"),
    ),
    VerifierClient(
        name="oauth2-proxy",
        version="oauth2-proxy v7.15.6, go-oidc v3.21.0 RemoteKeySet",
        kind="gateway",
        default_cache=None,
        cache_setting="",
        honours_cache_control=False,
        refetch_on_unknown_kid=True,
        unknown_kid_cooldown=None,
        unknown_kid_refetches_per_cooldown=1,
        cooldown_setting="",
        per_worker_cache=False,
        exp_leeway=timedelta(0),
        leeway_setting="",
        note=(
            "Also what NGINX auth_request, Traefik ForwardAuth and Caddy forward_auth put in "
            "front of APIs. go-oidc keeps the set until a verification fails, then refetches: "
            "on an unknown kid, and also on a bad signature under a known kid. Concurrent "
            "refetches share one request; there is no cooldown, so every token that fails "
            "verification can cost the JWKS server a fetch. exp is checked without leeway "
            "(go-oidc allows 5 min only on nbf)."
        ),
        source="https://github.com/coreos/go-oidc/blob/v3.21.0/oidc/jwks.go",
        conformance=("oauth2-proxy",),
    ),
    VerifierClient(
        name="istiod",
        version="Istio master",
        kind="gateway",
        default_cache=timedelta(minutes=20),
        cache_setting="PILOT_JWT_PUB_KEY_REFRESH_INTERVAL",
        honours_cache_control=False,
        refetch_on_unknown_kid=False,
        unknown_kid_cooldown=None,
        unknown_kid_refetches_per_cooldown=1,
        cooldown_setting="",
        per_worker_cache=False,
        exp_leeway=timedelta(seconds=60),
        leeway_setting="Envoy's clock_skew_seconds",
        note=(
            "With PILOT_JWT_ENABLE_REMOTE_JWKS unset (false: istiod fetches) istiod fetches a "
            "RequestAuthentication's jwksUri every 20 min and inlines the keys into Envoy's "
            "config as local_jwks (pilot/pkg/model/jwks_resolver.go), pushed over xDS when they "
            "change; Envoy then never fetches, and a token with a new kid is refused until the "
            "next refresh (istio/istio#41588)."
        ),
        source="https://github.com/istio/istio/blob/master/pilot/pkg/features/pilot.go",
        conformance=(),
    ),
)
"""The common verifiers, libraries first, then the gateways."""


def markdown_table() -> str:
    """The client table README.md and docs/design.md carry between their client-table markers."""
    header = (
        "| Client | Kind | Default cache | Honours Cache-Control | Refetch on unknown kid | Cooldown "
        "| Per-worker caches | Minimum publishAhead | Minimum retention | Conformance |"
    )
    lines = [
        "Generated from `operator/signing_key_operator/core/verifier_clients.py` by",
        "`tests/unit/test_verifier_clients.py` (do not edit by hand; `SKO_UPDATE_README=1` rewrites",
        "it): what each verifier does with a JWK Set under its defaults, read in its source at the",
        "version named; `tests/conformance/test_client_table.py` checks the refetch, per-worker and",
        "Cache-Control columns against the real clients the suite runs. A client's minimum",
        "publishAhead is the longest it goes without fetching on its own, since an unknown-kid",
        "refetch is rate-limited or absent in most and is not counted on; a client whose set never",
        "expires refetches on every failed verification, so it needs none. The CRD's default",
        "publishAhead is the longest minimum, and a policy whose publishAhead is shorter than a",
        "client's minimum gets a `ShortTimeline` Warning naming the client. The",
        "minimum retention counts from a key's last signature, whose token lives tokenLifetime and",
        "is accepted for the client's exp leeway after that; the operator keeps",
        "`tokenLifetime + clockSkew + secret propagation`, and clockSkew's default is the longest",
        "exp leeway below.",
        "",
        header,
        "| --- | --- | --- | :---: | :---: | --- | :---: | --- | --- | --- |",
    ]
    for client in VERIFIER_CLIENTS:
        cells = (
            f"{client.name} ({client.version})",
            client.kind,
            _cache_cell(client),
            _yes_no(client.honours_cache_control),
            _yes_no(client.refetch_on_unknown_kid),
            _cooldown_cell(client),
            _yes_no(client.per_worker_cache),
            _show(client.minimum_publish_ahead),
            _retention_cell(client),
            ", ".join(client.conformance) or "documented, not run",
        )
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Notes:", ""]
    lines += [_note(client) for client in VERIFIER_CLIENTS]
    return "\n".join(lines) + "\n"


def _cache_cell(client: VerifierClient) -> str:
    if client.default_cache is None:
        return "never expires"
    return _with_setting(_show(client.default_cache), client.cache_setting)


def _cooldown_cell(client: VerifierClient) -> str:
    if not client.refetch_on_unknown_kid:
        return "n/a"
    if client.unknown_kid_cooldown is None:
        return "none"
    period = _show(client.unknown_kid_cooldown)
    if client.unknown_kid_refetches_per_cooldown > 1:
        period = f"{client.unknown_kid_refetches_per_cooldown} per {period}"
    return _with_setting(period, client.cooldown_setting)


def _retention_cell(client: VerifierClient) -> str:
    if not client.exp_leeway:
        return "tokenLifetime"
    return f"tokenLifetime + {_show(client.exp_leeway)}"


def _note(client: VerifierClient) -> str:
    leeway = f" Exp leeway: `{client.leeway_setting}`." if client.leeway_setting else ""
    return f"- {client.name}: {client.note}{leeway} Source: <{client.source}>"


def _with_setting(value: str, setting: str) -> str:
    return f"{value} (`{setting}`)" if setting else value


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _show(value: timedelta) -> str:
    return format_duration(value, compact=True)
