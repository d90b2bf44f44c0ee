"""A small JWT verifier for services that trust a SigningKeyPolicy's keys and revocations.

    verifier = Verifier("http://signing-keys.auth:8080/.well-known/jwks.json",
                        revocations_url="http://signing-keys.auth:8080/revocations.json",
                        issuer="https://auth.example", audience="orders")
    claims = verifier.verify(token)        # or raises TokenRejected / RevokedToken

Both documents are fetched with urllib and cached as HTTP says: ``Cache-Control: max-age``
(else ``default_max_age``; never longer than ``max_cache_age``), then revalidated with
``If-None-Match`` (a 304 keeps the cached copy). A token signed with a kid the cached set does
not know causes one refetch, at most once per ``unknown_kid_cooldown`` seconds, so a flood of
made-up kids cannot hammer the sidecar.

``exp`` is required (a token without it would never expire, and a jti revocation ends with
the token's exp); ``iss`` and ``aud`` are checked when ``issuer`` / ``audience`` are given.
Everything fails closed: a document that cannot be fetched or is invalid once its cache has
expired, a revocation document that says ``"backend":"redis"`` when no ``redis_url`` was given,
and an unreachable Redis all reject the token; a failed fetch is tried again after a second,
not once per token. Messages say why and never carry the token or key material. One Verifier
is meant to be shared by the threads of a WSGI app.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import redis
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, ClaimError, JoseError
from joserfc.jwk import KeySet

from .core.algorithm_registry import ExactAlgorithmRegistry
from .core.jwks import MAX_JWK_SET_BYTES, InvalidJwkSet, parse_jwk_set
from .core.revocations import (
    MAX_CONFIGMAP_BYTES,
    InvalidRevocationDocument,
    RedisLayout,
    RevocationDocument,
    parse_revocation_document,
)

__all__ = ["RevokedToken", "TokenRejected", "Verifier"]

DEFAULT_ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA")
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*no-(?:cache|store)\s*(?:,|$)", re.IGNORECASE)
_MAX_BODY = max(MAX_JWK_SET_BYTES, MAX_CONFIGMAP_BYTES)
"""Neither document can be larger (a ConfigMap holds 1 MiB); one byte more is read, to tell a
document over the limit from one that just fits."""
RETRY_FAILED_FETCH_AFTER = 1.0
"""After a failed fetch, tokens are rejected with the same reason for this many seconds without
asking again: threads queued behind a slow or failing source do not each wait for their own
timeout, and a recovering sidecar is not met by one request per incoming token."""


class TokenRejected(Exception):
    """The token must not be accepted; ``str()`` says why (never the token or key material)."""


class RevokedToken(TokenRejected):
    """The token is valid but revoked (by its jti, or its subject's issuedBefore)."""


@dataclass(frozen=True)
class _Cached:
    value: Any
    etag: str | None
    max_age: float
    expires: float


class _Document:
    """One HTTP document, cached by max-age and revalidated by ETag; a lock around refresh."""

    def __init__(self, url: str, parse: Callable[[bytes], Any], what: str, *, timeout: float,
                 default_max_age: float, max_cache_age: float, clock: Callable[[], float]) -> None:
        self._url, self._parse, self._what = url, parse, what
        self._timeout, self._default_max_age, self._clock = timeout, default_max_age, clock
        self._max_cache_age = max_cache_age
        self._lock = threading.Lock()
        self._cached: _Cached | None = None
        self._last_forced = float("-inf")
        self._failure: tuple[float, str] | None = None

    def get(self) -> Any:
        cached = self._cached
        if cached is not None and self._clock() < cached.expires:
            return cached.value
        with self._lock:  # another thread may have refreshed while this one waited
            cached = self._cached
            if cached is None or self._clock() >= cached.expires:
                cached = self._refresh(cached)
            return cached.value

    def refetch(self, cooldown: float) -> Any | None:
        """Fetch now (revalidating), unless the last such refetch was under ``cooldown`` ago:
        then None. For an unknown kid: a new key may have been published since."""
        with self._lock:
            now = self._clock()
            if now - self._last_forced < cooldown:
                return None
            self._last_forced = now
            return self._refresh(self._cached).value

    def _refresh(self, cached: _Cached | None) -> _Cached:
        now = self._clock()
        if self._failure is not None and now - self._failure[0] < RETRY_FAILED_FETCH_AFTER:
            raise TokenRejected(self._failure[1])
        try:
            self._cached = self._fetch(cached)
        except TokenRejected as error:
            self._failure = (now, str(error))
            raise
        self._failure = None
        return self._cached

    def _fetch(self, cached: _Cached | None) -> _Cached:
        started = self._clock()
        request = urllib.request.Request(self._url, headers={"Accept": "application/json"})
        if cached is not None and cached.etag:
            request.add_header("If-None-Match", cached.etag)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                body = response.read(_MAX_BODY + 1)
                headers = response.headers
        except urllib.error.HTTPError as error:
            if error.code == 304 and cached is not None:
                max_age = self._max_age(error.headers.get("Cache-Control"), cached.max_age)
                return replace(cached, etag=error.headers.get("ETag") or cached.etag, max_age=max_age,
                               expires=started + max_age)
            raise TokenRejected(f"{self._what} unavailable: {self._url} answered HTTP {error.code}; "
                                "token rejected (fail closed)") from None
        except (OSError, ValueError, http.client.HTTPException) as error:  # refused, timeouts, bad URL or reply
            reason = getattr(error, "reason", None) or type(error).__name__
            raise TokenRejected(f"{self._what} unavailable: {self._url} could not be fetched ({reason}); "
                                "token rejected (fail closed)") from None
        if len(body) > _MAX_BODY:
            raise TokenRejected(f"{self._what} from {self._url} is invalid (more than {_MAX_BODY} bytes, "
                                "more than a ConfigMap can hold); token rejected (fail closed)")
        try:
            value = self._parse(body)
        except (InvalidJwkSet, InvalidRevocationDocument, JoseError, ValueError) as error:
            raise TokenRejected(f"{self._what} from {self._url} is invalid ({error}); "
                                "token rejected (fail closed)") from None
        max_age = self._max_age(headers.get("Cache-Control"), self._default_max_age)
        return _Cached(value, headers.get("ETag"), max_age, started + max_age)

    def _max_age(self, cache_control: str | None, fallback: float) -> float:
        return min(_max_age(cache_control, fallback), self._max_cache_age)


def _max_age(cache_control: str | None, fallback: float) -> float:
    if cache_control:
        if _NO_CACHE.search(cache_control):
            return 0.0
        match = _MAX_AGE.search(cache_control)
        if match:
            return float(match.group(1))
    return fallback


def _parse_key_set(body: bytes) -> Mapping[str, Any]:
    """kid -> joserfc key, after the operator's own checks (public-only, well-formed keys)."""
    checked = parse_jwk_set(body)
    keys = KeySet.import_key_set({"keys": [dict(jwk) for jwk in checked.keys]})
    return {key.kid: key for key in keys}


class Verifier:
    """Verifies JWTs against a policy's published JWK Set and, optionally, its revocations."""

    def __init__(
        self,
        jwks_url: str,
        *,
        revocations_url: str | None = None,
        redis_url: str | None = None,
        redis_prefix: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        leeway: float = 60.0,
        max_token_lifetime: float | None = None,
        default_max_age: float = 60.0,
        max_cache_age: float = 86400.0,
        unknown_kid_cooldown: float = 30.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.jwks_url = jwks_url
        """The sidecar's ``/.well-known/jwks.json``. Required: there is no other source of keys."""
        self.revocations_url = revocations_url
        """The sidecar's ``/revocations.json``. None by default: not every policy revokes, and a
        verifier that should check revocations must say so (it then fails closed without it)."""
        self.issuer = issuer
        """Required ``iss`` value. None skips the check: the key set already ties tokens to one
        policy, but a service that shares keys between issuers should set it."""
        self.audience = audience
        """Required ``aud`` value (or member of the ``aud`` list). None skips the check, as
        not every token names an audience; a service should set it whenever its tokens do."""
        self.algorithms = tuple(algorithms)
        """Accepted ``alg`` values: by default every algorithm the operator can sign with and
        nothing else (no "none", no HMAC, so a public key can never act as a shared secret)."""
        self.leeway = leeway
        """Seconds of clock skew allowed for exp/nbf/iat: 60 s, what the policies' clockSkew
        defaults to and what most JWT libraries allow; more widens the window of a stolen token."""
        self.max_token_lifetime = max_token_lifetime
        """Longest ``exp - iat`` accepted, in seconds (plus ``leeway``): the policy's longest
        token lifetime, ``tokenLifetimeSeconds`` of the signing Secret's ``lifetimes.json``. A
        token that lives longer outlives its key's retention, so it was made by a misconfigured
        signer and fails anyway once its key is removed; refusing it at once says so while it
        can be fixed. With it, a token without ``iat`` is refused (its lifetime cannot be told).
        None skips the check: only the verifier's owner knows which policy it follows."""
        self.default_max_age = default_max_age
        """Cache lifetime when a response has no max-age: 60 s, the sidecar's usual max-age, so
        a new key or revocation is seen within a minute even behind a proxy that drops headers."""
        self.max_cache_age = max_cache_age
        """Longest a document is used without asking again, whatever its max-age says: 24 h, the
        longest spec.jwks.maxAge a policy allows. A longer one (a proxy's, or thousands of digits,
        which float() makes infinite) would otherwise keep a revocation from ever being seen."""
        self.unknown_kid_cooldown = unknown_kid_cooldown
        """At most one refetch per this many seconds for unknown kids: 30 s bounds the load
        made-up kids can cause, while a freshly rotated-in key is still found at its first use
        (the operator publishes keys well before signing with them, so this rarely matters)."""
        self.timeout = timeout
        """Seconds for one HTTP fetch or Redis call: 5 s, long enough for a busy cluster, short
        enough that a request fails (closed) before most clients give up."""
        self.clock = clock
        """Seconds since the epoch; injectable for tests."""
        if redis_url is not None and not redis_prefix:
            raise ValueError("redis_prefix is required with redis_url: the policy's key prefix "
                             "(by default signingkeys:<namespace>/<policy>:)")
        common = {"timeout": timeout, "default_max_age": default_max_age, "max_cache_age": max_cache_age, "clock": clock}
        self._keys = _Document(jwks_url, _parse_key_set, "JWK Set", **common)
        self._revocations = (
            _Document(revocations_url, parse_revocation_document, "revocation document", **common)
            if revocations_url else None
        )
        self._redis = (
            redis.Redis.from_url(redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
            if redis_url is not None else None
        )
        self._layout = RedisLayout(redis_prefix) if redis_prefix else None
        self._registry = ExactAlgorithmRegistry(algorithms=self.algorithms)

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims if its signature, times, issuer and audience are right and it is
        not revoked; raises :class:`TokenRejected` (or :class:`RevokedToken`) otherwise."""
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, UnicodeError, AttributeError):
            raise TokenRejected("malformed token: not a compact JWS") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.algorithms:
            raise TokenRejected(f"algorithm {str(alg)[:20]!r} is not accepted")
        if not isinstance(kid, str) or not kid:
            raise TokenRejected("token header has no kid")
        key = self._key(kid)
        if key.alg is not None and key.alg != alg:
            raise TokenRejected(f"token alg {alg} does not match the alg of key {kid[:64]}")
        try:
            claims = jwt.decode(token, key, algorithms=self.algorithms, registry=self._registry).claims
        except BadSignatureError:
            raise TokenRejected(f"bad signature (key {kid[:64]})") from None
        except (JoseError, ValueError):
            raise TokenRejected("malformed token: undecodable header or claims") from None
        self._check_claims(claims)
        reason = self.is_revoked(claims)
        if reason is not None:
            raise RevokedToken(reason)
        return claims

    def is_revoked(self, claims: Mapping[str, Any]) -> str | None:
        """Why these verified claims are revoked, or None; raises :class:`TokenRejected` when
        the revocation source cannot be read, or the jti is not a string (fail closed)."""
        if "jti" in claims and not isinstance(claims["jti"], str):
            # Revocations name string jtis (RFC 7519 makes a jti a string); matching a number by
            # its string form would conflate 123 and "123". Such a token cannot be checked.
            raise TokenRejected("token refused: claim jti is not a string, so it cannot be checked against the "
                                "revocations (fail closed)")
        if self._revocations is not None:
            document: RevocationDocument = self._revocations.get()
            if document.backend != "redis":
                return document.revokes(claims)
            if self._redis is None:
                raise TokenRejected("the revocation document says its entries live in Redis, but this "
                                    "Verifier has no redis_url; token rejected (fail closed)")
        if self._redis is None or self._layout is None:
            return None
        jti, subject = claims.get("jti"), claims.get("sub")
        keys = [self._layout.jti_key(jti) if isinstance(jti, str) else None,
                self._layout.subject_key(subject) if isinstance(subject, str) else None]
        wanted = [k for k in keys if k is not None]
        if not wanted:
            return None
        try:
            values = dict(zip(wanted, self._redis.mget(wanted)))
        except redis.RedisError as error:  # the URL may hold a password: never in the message
            raise TokenRejected(f"revocation store (Redis) unavailable ({type(error).__name__}); "
                                "token rejected (fail closed)") from None
        return self._layout.revokes(claims, values.get(keys[0]), values.get(keys[1]))

    def _key(self, kid: str) -> Any:
        key = self._keys.get().get(kid)
        if key is None:
            refreshed = self._keys.refetch(self.unknown_kid_cooldown)
            key = refreshed.get(kid) if refreshed is not None else None
        if key is None:
            raise TokenRejected(f"unknown kid {kid[:64]!r}: not in the published JWK Set")
        return key

    def _check_claims(self, claims: dict[str, Any]) -> None:
        options: dict[str, Any] = {"exp": {"essential": True}}
        if self.issuer is not None:
            options["iss"] = {"essential": True, "value": self.issuer}
        if self.audience is not None:
            options["aud"] = {"essential": True, "value": self.audience}
        registry = jwt.JWTClaimsRegistry(now=self.clock, leeway=self.leeway, **options)
        try:
            registry.validate(claims)
        except ClaimError as error:
            claim = getattr(error, "claim", "?")  # claim names and joserfc's words, never values
            raise TokenRejected(f"token refused: claim {claim}: {error.description}") from None
        if self.max_token_lifetime is not None:
            issued_at, expires = claims.get("iat"), claims["exp"]
            if isinstance(issued_at, bool) or not isinstance(issued_at, (int, float)):
                raise TokenRejected("token refused: claim iat is missing, so its lifetime cannot be checked "
                                    f"against the policy's {self.max_token_lifetime:g}s")
            if expires - issued_at > self.max_token_lifetime + self.leeway:
                raise TokenRejected(f"token refused: it lives {expires - issued_at:g}s (exp - iat), longer than the "
                                    f"policy's token lifetime of {self.max_token_lifetime:g}s; its signer does not "
                                    "follow the policy")
