"""The scaled timeline of the rotation run and each client's settings scaled to match.

Production defaults stand behind every figure: publishAhead 1 h (the longest default client
cache, Go keyfunc's) becomes 6 s, so the factor is 1/600, and each client's cache times are
divided by the same 600. Network timeouts and everything else keep the library defaults (they
measure the network, not the timeline), except where a library refuses the mix (Nimbus
requires refresh-ahead + refresh timeout <= cache TTL). tests/conformance/README.md carries
the same table for people.
"""

from __future__ import annotations

FACTOR = 600
"""Production seconds per test second."""

PUBLISH_AHEAD_S = 6  # 1 h / 600
TOKEN_LIFETIME_S = 6  # 1 h / 600
CLOCK_SKEW_S = 1  # 60 s / 600 = 0.1 s, raised: Nimbus takes whole seconds, and it must exceed scheduling jitter
JWKS_MAX_AGE_S = 1  # 60 s / 600 = 0.1 s, raised to the CRD's whole seconds
INTERVAL_S = 8  # 720 h is not a cache: short enough for 20+ rotations in a few minutes

POLICY_SPEC = {
    "algorithm": "ES256",
    "rotation": {"interval": f"{INTERVAL_S}s", "publishAhead": f"{PUBLISH_AHEAD_S}s"},
    "tokenLifetime": f"{TOKEN_LIFETIME_S}s",
    "clockSkew": f"{CLOCK_SKEW_S}s",
    "jwks": {"maxAge": f"{JWKS_MAX_AGE_S}s"},
}

SECRET_PROPAGATION = "2s"
"""The operator's --secret-propagation: covers the simulated kubelet (poll 0.2 s + lag up to
1.2 s) plus the operator's own writes before the signing Secret changes."""

# The simulated kubelet (see driver.MountedSecret): 90 s of real propagation would be 0.15 s;
# the suite uses a harsher 0.2 s poll + 0.5-1.2 s lag, covered by --secret-propagation 2s.
MOUNT_POLL_S = 0.2
MOUNT_LAG_S = (0.5, 1.2)

SIGNER_BEAT_S = 0.2
"""A token every 0.2 s: about 30 per key, and with every token verified three times and the
revoke's probes beside them, about 25 requests a second to each client (at 0.15 s and 20
probes a second the JVM clients fell up to 0.3 s behind their oldest-age deadlines when a busy
loop shared the machine; at 0.2 s they kept within 0.15 s there, but see OLDEST_MARGIN_S)."""
OLDEST_MARGIN_S = 0.5
"""Tokens are re-verified this long before exp + clockSkew, the oldest any verifier accepts.

It is the room the harness has to start those checks on time on two cores shared by ten
verifier processes (four JVMs), nine sidecars, the operator and the control plane, which all
wake at each rotation: with a busy loop beside the suite the oldest-age checks started up to
0.3 s behind their schedule (p99 under 0.25 s), with two busy loops up to 0.7 s, and the
earlier 0.25 s lost a few checks per client in an empty-cache run on a slower machine. It is
not always enough: in the whole suite, on a slow spell of a shared VM, test_rotation's checks
have started up to 0.6 s late (3-9 late per client for three clients in an empty-cache
``make test``); the lag figures in the summary show how much of it a run used, and
test_rotation allows those few where no key's end of life goes unchecked
(its ``LATE_SHARE_LIMIT`` and ``END_OF_LIFE_WINDOW_S``).

The margin barely changes what the check catches: the last token of a retired key is signed
within the mount's lag (0.5 to 1.4 s) of its successor's first, with iat in whole seconds, so
its oldest check comes 1.1 to 3 s (at 0.25 s: 0.85 to 2.75 s) before the key leaves the served
set, tokenLifetime + clockSkew + secretPropagation (9 s) after its successor began to sign. A
retention short of tokenLifetime or of secretPropagation fails within a few rotations; the
exact sum, clockSkew included, is the planner's, pinned by its unit and property tests."""

ALG = POLICY_SPEC["algorithm"]

ISSUER = "https://conformance.signingkeys.test"
AUDIENCE = "https://api.conformance.signingkeys.test"
"""The ``iss`` and ``aud`` of every token the suite signs. Verifiers that check them are told
them, as their users configure them: the gateways need an issuer, oauth2-proxy an audience (its
client id), and PyJWT refuses a token with an ``aud`` it was not told to expect."""


def _s(seconds: float) -> str:
    return f"{seconds:g}"


def _ms(seconds: float) -> str:
    return str(round(seconds * 1000))


CLIENT_IDENTITY_ARGS: dict[str, list[str]] = {
    "PyJWT": ["--audience", AUDIENCE],
    "Envoy": ["--issuer", ISSUER],
    "Envoy async_fetch": ["--issuer", ISSUER],
    "oauth2-proxy": ["--issuer", ISSUER, "--audience", AUDIENCE],
}
"""What a client must be told about the tokens whatever the timeline (the algorithm matrix
passes only these, and otherwise keeps every library default)."""

EXP_LEEWAY_S: dict[str, float] = {
    "oauth2-proxy": 0,  # go-oidc checks exp with no leeway at all, and has no setting for one
}
"""Leeway on exp per client, where it is not clockSkew: a token is verified at its oldest at
exp + the client's leeway - OLDEST_MARGIN_S."""


def exp_leeway(client: str) -> float:
    return EXP_LEEWAY_S.get(client, CLOCK_SKEW_S)


# name -> command-line flags of that client's verifier (see verifiers/*/): each value is the
# production default divided by FACTOR unless its comment says otherwise.
CLIENT_ARGS: dict[str, list[str]] = {
    "PyJWT": [
        *CLIENT_IDENTITY_ARGS["PyJWT"],
        "--alg", ALG,
        "--lifespan", _s(300 / FACTOR),  # JWK Set cache 300 s
        "--cooldown", _s(30 / FACTOR),  # unknown-kid refetch cooldown 30 s
        "--leeway", _s(CLOCK_SKEW_S),
    ],
    "jose": [
        "--cache-max-age-ms", _ms(600 / FACTOR),  # cacheMaxAge 10 min
        "--cooldown-ms", _ms(30 / FACTOR),  # cooldownDuration 30 s
        "--leeway-s", _s(CLOCK_SKEW_S),
    ],
    "Nimbus": [
        "--alg", ALG,
        "--cache-ttl-ms", _ms(300 / FACTOR),  # cache time-to-live 5 min
        "--refresh-ahead-ms", _ms(30 / FACTOR),  # refresh-ahead 30 s (lazy, as by default)
        # 15 s refresh timeout would break Nimbus's rule refresh-ahead + timeout <= TTL: the
        # largest value it allows.
        "--refresh-timeout-ms", _ms(300 / FACTOR - 30 / FACTOR),
        "--rate-limit-ms", _ms(30 / FACTOR),  # at most 2 fetches per 30 s
        "--leeway-s", _s(CLOCK_SKEW_S),
    ],
    "Spring": [
        "--alg", ALG,
        # Spring's JWKSource: Nimbus cache 5 min, refresh-ahead and rate limit off. Its builder
        # has no TTL knob; a Caffeine Spring Cache with the scaled TTL takes the cache's place.
        "--cache-ttl-ms", _ms(300 / FACTOR),
        "--leeway-s", _s(CLOCK_SKEW_S),
    ],
    "keyfunc": [
        "--refresh-interval", f"{_ms(3600 / FACTOR)}ms",  # background refresh 1 h
        "--unknown-kid-every", f"{_ms(300 / FACTOR)}ms",  # unknown-kid refresh once per 5 min
        "--rate-limit-wait-max", f"{_ms(60 / FACTOR)}ms",  # waits at most 1 min for that limiter
        "--leeway", f"{_s(CLOCK_SKEW_S)}s",
    ],
    # Two worker threads (--concurrency 2), each with its own cache, as without async_fetch.
    "Envoy": [
        *CLIENT_IDENTITY_ARGS["Envoy"],
        "--cache-duration-ms", _ms(600 / FACTOR),  # RemoteJwks.cache_duration 10 min
        "--clock-skew-s", _s(CLOCK_SKEW_S),  # clock_skew_seconds 60
        "--concurrency", "2",
    ],
    # async_fetch: the main thread fetches at start and again every cache_duration, and the
    # workers share what it fetched.
    "Envoy async_fetch": [
        *CLIENT_IDENTITY_ARGS["Envoy async_fetch"],
        "--cache-duration-ms", _ms(600 / FACTOR),  # RemoteJwks.cache_duration 10 min
        "--clock-skew-s", _s(CLOCK_SKEW_S),
        "--concurrency", "2",
    ],
    # No cache setting exists: go-oidc keeps keys until a verification fails, then refetches.
    "oauth2-proxy": [*CLIENT_IDENTITY_ARGS["oauth2-proxy"], "--alg", ALG],
}

# Production default of each client's cache, and what bounds its reaction to a revoked kid.
CACHE_EXPLANATION: dict[str, str] = {
    "PyJWT": "the JWK Set cache (lifespan 300 s, here 0.5 s) expires; the refetched set lacks the kid",
    "jose": "cacheMaxAge (10 min, here 1 s) runs out; the next verification reloads the set",
    "Nimbus": "the cache TTL (5 min, here 0.5 s; refresh-ahead in its last 30 s, here 50 ms) runs out",
    "Spring": "Spring's cache TTL (Nimbus's 5 min, here 0.5 s via a Caffeine cache) runs out",
    "keyfunc": "the next background refresh (1 h, here 6 s), or an earlier unknown-kid refresh "
               "(here: the first token of the fresh key) replaces the whole set",
    "Envoy": "cache_duration (10 min, here 1 s) runs out in each worker; the next request there refetches",
    "Envoy async_fetch": "the main thread's next refresh, every cache_duration (10 min, here 1 s)",
    "oauth2-proxy": "never by time: go-oidc keeps its keys until a verification fails; the first token "
                    "of the fresh key fails, and the refetch it makes drops the revoked kid",
}
