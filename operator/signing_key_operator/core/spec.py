"""The policy a SigningKeyPolicy asks for, parsed and validated from the CR's ``spec``.

:meth:`PolicySpec.from_resource` is the only place defaults are filled in, and every default
says why it has its value. Errors name the CR field (``spec.rotation.publishAhead: ...``) so
the user can fix the manifest from the event or condition alone.

The timeline defaults come from what verifiers do with the JWKS. They cache on their own clock
and mostly ignore Cache-Control (figures from their sources, see
:data:`~.verifier_clients.VERIFIER_CLIENTS`), so a key must be published longer than the
longest of those caches before it signs; and some accept a token a while past its exp, so its
key must stay published the longest of those leeways longer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .durations import format_duration, parse_duration
from .keys import (
    ALGORITHMS, DEFAULT_RSA_KEY_SIZE, HMAC_BLOCK_BITS, HMAC_HASH_BITS, RSA_KEY_SIZES, is_hmac_algorithm, is_hmac_key_size,
)
from .lifetimes import TokenLifetimes
from .verifier_clients import VERIFIER_CLIENTS, VerifierClient

__all__ = [
    "DEFAULT_ALGORITHM",
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_JWKS_MAX_AGE",
    "DEFAULT_MINIMUM_PUBLISH_AHEAD",
    "DEFAULT_ROTATION_INTERVAL",
    "DEFAULT_SECRET_PROPAGATION",
    "DEFAULT_TOKEN_LIFETIME",
    "PolicySpec",
    "REVOCATION_BACKENDS",
    "RedisTarget",
    "SERVED_AT_LIMIT",
    "TOKEN_LIFETIME_CLASS_LIMIT",
    "SpecError",
    "SpecWarning",
    "timeline_warnings",
]


DEFAULT_ALGORITHM = "ES256"
"""Small keys and signatures, generation in microseconds, and supported by every common
verifier (PyJWT, jose, Nimbus, keyfunc); RSA remains available for old verifiers."""

DEFAULT_ROTATION_INTERVAL = timedelta(hours=720)
"""30 days: often enough that rotation is a routine, exercised path (and a leaked key has a
bounded life), rare enough that publishAhead and retention are a small part of each period, so
the JWKS normally holds two or three keys."""

DEFAULT_MINIMUM_PUBLISH_AHEAD = max(client.minimum_publish_ahead for client in VERIFIER_CLIENTS)
"""1 h, the longest minimum publishAhead among the common verifiers (Go keyfunc's background
refresh): after it every one of them has fetched the set again and knows the new key before a
token signed with it arrives. The CRD's static default is the same value (a unit test holds
them equal)."""

DEFAULT_TOKEN_LIFETIME = timedelta(hours=1)
"""The common access-token lifetime (OAuth servers and cloud STS default to about an hour);
set it to the longest lifetime your signers issue, since retention is derived from it."""

DEFAULT_CLOCK_SKEW = max(client.exp_leeway for client in VERIFIER_CLIENTS)
"""1 min, the longest exp leeway among the common verifiers (Spring's JwtTimestampValidator,
Nimbus, Envoy's clock_skew_seconds): they accept a token up to this long after its exp, so its
key must stay published that much longer. The CRD's static default is the same value."""

DEFAULT_JWKS_MAX_AGE = timedelta(seconds=60)
"""Cache-Control max-age for proxies, CDNs and the few clients that honour it: short enough
that a revocation spreads within a minute, long enough to spare the server a request storm
(never no-store, which caused a thundering herd in Vault)."""

DEFAULT_SECRET_PROPAGATION = timedelta(minutes=2)
"""A mounted Secret reaches pods at the kubelet's next resync of the pod: its sync period (1 min
by default) with up to 50% jitter, so up to 90 s with nothing to spare. Measured on a real
kubelet with its defaults (bench/node_bench.py volumes): p50 50 s, max 80 s over 20 updates.
Signers keep using the old key until then, so its tokens keep appearing; 2 min keeps a margin
over the 90 s bound, and costs only a retired key published 30 s longer."""

REVOCATION_BACKENDS = ("ConfigMap", "Redis")
"""``spec.revocation.backend``. ConfigMap is the default: no extra infrastructure, and room for
some 20,000 UUID jtis (bench/revocation_bench.py capacity); Redis beyond that."""

SERVED_AT_LIMIT = 8
"""At most this many ``spec.jwks.servedAt`` URLs: each is probed on its own, and a policy is
served at a Service URL and one or two public ones (ingress, CDN), not at dozens."""

TOKEN_LIFETIME_CLASS_LIMIT = 8
"""At most this many ``spec.tokenLifetimes`` classes: a few kinds of token (admin, service,
user) get lifetimes of their own; dozens would be configuration no one can review."""

_PUBLIC_SET_ONLY = (
    "applies only to a public JWK Set, and an HMAC policy publishes none "
    "(its keys go to verifiers in the verification Secret)"
)

_CLASS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

_SERVED_URL = re.compile(r"^https?://[^/?#@\s]+([/?#]\S*)?$")
_SERVED_URL_MAX_LENGTH = 2048

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_MAX_NAME_LENGTH = 253


class SpecError(ValueError):
    """A spec field is invalid; ``str()`` reads ``"spec.rotation.interval: must be positive"``."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field_path = field_path
        self.message = message


@dataclass(frozen=True)
class SpecWarning:
    """Not an error: the policy works, but some verifiers may reject tokens around a rotation."""

    field_path: str
    message: str

    def __str__(self) -> str:
        return f"{self.field_path}: {self.message}"


@dataclass(frozen=True)
class RedisTarget:
    """``spec.revocation.redis``: where the Redis backend mirrors the entries."""

    url: str
    """redis:// or rediss:// URL without credentials (the spec is not a Secret)."""
    password_secret: tuple[str, str] | None = None
    """(Secret name, data key) of the password, in the policy's namespace; None: no AUTH."""
    key_prefix: str | None = None
    """None: ``signingkeys:<namespace>/<policy>:`` (see core.revocations.RedisLayout)."""


@dataclass(frozen=True, kw_only=True)
class PolicySpec:
    """A validated SigningKeyPolicy spec (construct it with :meth:`from_resource`).

    Construction checks the cross-field rules too, so ``dataclasses.replace`` cannot build an
    unsafe policy either.
    """

    name: str
    """The SigningKeyPolicy's name; the default object names derive from it."""
    algorithm: str
    """``spec.algorithm``, default :data:`DEFAULT_ALGORITHM` (why: see there)."""
    rsa_key_size: int
    """``spec.rsaKeySize``, default :data:`~.keys.DEFAULT_RSA_KEY_SIZE` (why: see there).
    Used for RS*/PS* only; the CRD refuses it with any other algorithm, so a spec never carries
    a setting that does nothing."""
    rotation_interval: timedelta
    """``spec.rotation.interval``: how long each key signs; :data:`DEFAULT_ROTATION_INTERVAL`."""
    hmac_key_size: int | None = None
    """``spec.hmacKeySize`` in bits, for HS* only (None otherwise: the CRD refuses it with any
    other algorithm); by default the hash size, the floor of RFC 7518 section 3.2
    (:data:`~.keys.HMAC_HASH_BITS`), and at most the hash's block size
    (:data:`~.keys.HMAC_BLOCK_BITS`), beyond which a key adds no strength."""
    verification_secret_name: str = ""
    """``spec.verificationSecretName``, for HS* only, default ``<name>-verification`` (filled in
    at construction): the Secret verifiers mount, holding the keys as an ``oct`` JWK Set. An HS
    policy publishes no public JWK Set: its keys verify as well as they sign."""
    publish_ahead: timedelta
    """``spec.rotation.publishAhead``: how long a key is published before it signs. Default
    max(:data:`DEFAULT_MINIMUM_PUBLISH_AHEAD`, jwks.maxAge): longer than every common client's
    cache and than what Cache-Control lets others keep."""
    token_lifetime: timedelta
    """``spec.tokenLifetime``: the longest lifetime signers give tokens; :data:`DEFAULT_TOKEN_LIFETIME`."""
    clock_skew: timedelta
    """``spec.clockSkew``: how late verifiers may still accept a token; :data:`DEFAULT_CLOCK_SKEW`."""
    jwks_max_age: timedelta
    """``spec.jwks.maxAge``: the JWKS Cache-Control max-age; :data:`DEFAULT_JWKS_MAX_AGE`."""
    signing_secret_name: str
    """``spec.signingSecretName``, default ``<name>-signing``: predictable, so signer
    Deployments can name the Secret they mount before the policy has made it."""
    jwks_config_map_name: str
    """``spec.jwksConfigMapName``, default ``<name>-jwks``, predictable for the same reason."""
    suspend: bool
    """``spec.suspend``, default false: a policy rotates unless someone decides otherwise."""
    secret_propagation: timedelta
    """Not in the CRD: an operator setting, since it depends on the cluster's kubelets;
    :data:`DEFAULT_SECRET_PROPAGATION`."""
    revocation_backend: str = "ConfigMap"
    """``spec.revocation.backend``: ConfigMap by default, since it needs nothing beyond the
    cluster; Redis when the entries outgrow one ConfigMap."""
    revocation_config_map_name: str = ""
    """``spec.revocation.configMapName``, default ``<name>-revocations`` (filled in at
    construction), predictable so the sidecar can be told it before the policy exists."""
    redis: RedisTarget | None = None
    """``spec.revocation.redis``; required with the Redis backend."""
    served_at: tuple[str, ...] = ()
    """``spec.jwks.servedAt``: URLs where verifiers fetch the set. Empty by default: the
    operator then trusts its ConfigMap write, as before; with URLs, a new key's publishAhead
    starts only once every one of them serves it."""
    ca_bundle: tuple[str, str] | None = None
    """``spec.jwks.caBundleRef``: (ConfigMap name, key) of the CA certificates for https
    servedAt URLs; None: the system's CAs. TLS is verified either way."""
    token_lifetime_classes: tuple[tuple[str, timedelta], ...] = ()
    """``spec.tokenLifetimes`` (a list of name and lifetime): (name, lifetime) in name order, each at most
    tokenLifetime, for tokens that should live shorter (admin sessions, say). Published in the
    signing Secret for signers; retention keeps counting from tokenLifetime, the longest."""

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise SpecError(
                "spec.algorithm", f"must be one of {', '.join(ALGORITHMS)} (got {self.algorithm!r})"
            )
        if self.rsa_key_size not in RSA_KEY_SIZES:
            raise SpecError(
                "spec.rsaKeySize",
                f"must be one of {', '.join(map(str, RSA_KEY_SIZES))} (got {self.rsa_key_size!r})",
            )
        self._check_shared_secret_settings()
        if self.rotation_interval <= timedelta(0):
            raise SpecError("spec.rotation.interval", "must be positive")
        if self.publish_ahead <= timedelta(0):
            raise SpecError("spec.rotation.publishAhead", "must be positive")
        if self.publish_ahead >= self.rotation_interval:
            raise SpecError(
                "spec.rotation.publishAhead",
                f"must be below spec.rotation.interval ({_show(self.publish_ahead)} >= "
                f"{_show(self.rotation_interval)})",
            )
        if self.jwks_max_age < timedelta(0):
            raise SpecError("spec.jwks.maxAge", "must not be negative")
        # Equal is enough: a set fetched just before a key was published expires in the
        # caches that honour max-age before that key signs. (An HMAC policy has no cached set:
        # its verifiers wait for the kubelet instead, which the timeline warning covers.)
        if self.publish_ahead < self.jwks_max_age and not self.is_shared_secret:
            raise SpecError(
                "spec.rotation.publishAhead",
                f"must not be below spec.jwks.maxAge ({_show(self.publish_ahead)} < "
                f"{_show(self.jwks_max_age)}): clients that honour Cache-Control would not "
                "have seen a new key before it signs",
            )
        if self.token_lifetime <= timedelta(0):
            raise SpecError("spec.tokenLifetime", "must be positive")
        if self.clock_skew < timedelta(0):
            raise SpecError("spec.clockSkew", "must not be negative")
        if self.secret_propagation < timedelta(0):
            raise SpecError("secretPropagation", "must not be negative")
        _check_object_name("spec.signingSecretName", self.signing_secret_name, self.name)
        _check_object_name("spec.jwksConfigMapName", self.jwks_config_map_name, self.name)
        if self.revocation_backend not in REVOCATION_BACKENDS:
            raise SpecError(
                "spec.revocation.backend", f"must be one of {', '.join(REVOCATION_BACKENDS)} (got {self.revocation_backend!r})"
            )
        if self.revocation_backend == "Redis" and self.redis is None:
            raise SpecError("spec.revocation.redis", "url is required when backend is Redis")
        if not self.revocation_config_map_name:
            object.__setattr__(self, "revocation_config_map_name", f"{self.name}-revocations")
        _check_object_name("spec.revocation.configMapName", self.revocation_config_map_name, self.name)
        if self.revocation_config_map_name == self.jwks_config_map_name:
            raise SpecError("spec.revocation.configMapName", "must differ from spec.jwksConfigMapName")
        if len(self.served_at) > SERVED_AT_LIMIT:
            raise SpecError("spec.jwks.servedAt", f"at most {SERVED_AT_LIMIT} URLs (got {len(self.served_at)})")
        for index, url in enumerate(self.served_at):
            if not isinstance(url, str) or len(url) > _SERVED_URL_MAX_LENGTH or not _SERVED_URL.match(url):
                raise SpecError(
                    f"spec.jwks.servedAt[{index}]",
                    "must be an http:// or https:// URL without credentials (user@ or user:password@)",
                )
        if len(set(self.served_at)) != len(self.served_at):
            raise SpecError("spec.jwks.servedAt", "lists a URL twice")
        if len(self.token_lifetime_classes) > TOKEN_LIFETIME_CLASS_LIMIT:
            raise SpecError(
                "spec.tokenLifetimes", f"at most {TOKEN_LIFETIME_CLASS_LIMIT} classes (got {len(self.token_lifetime_classes)})"
            )
        if len({name for name, _ in self.token_lifetime_classes}) != len(self.token_lifetime_classes):
            raise SpecError("spec.tokenLifetimes", "names a class twice")
        for name, lifetime in self.token_lifetime_classes:
            if not _CLASS_NAME.match(name):
                raise SpecError("spec.tokenLifetimes", f"class {name!r}: names are DNS labels (a-z, 0-9 and '-', at most 63)")
            if lifetime <= timedelta(0):
                raise SpecError("spec.tokenLifetimes", f"class {name}: the lifetime must be positive")
            if lifetime > self.token_lifetime:
                raise SpecError(
                    "spec.tokenLifetimes",
                    f"class {name} must not outlive spec.tokenLifetime ({_show(lifetime)} > {_show(self.token_lifetime)}): "
                    "retention counts from tokenLifetime, so a longer class would outlive its key",
                )

    @property
    def is_shared_secret(self) -> bool:
        """HS*: the keys verify as well as they sign, so they go to verifiers in a Secret and
        nothing about them is published."""
        return is_hmac_algorithm(self.algorithm)

    @property
    def published_set_name(self) -> str:
        """Where verifiers find the keys: the verification Secret of an HMAC policy, else the
        JWKS ConfigMap."""
        return self.verification_secret_name if self.is_shared_secret else self.jwks_config_map_name

    @property
    def key_size(self) -> int | None:
        """The size in bits new keys are made with (RSA or HMAC); None: the curve decides."""
        if self.is_shared_secret:
            return self.hmac_key_size
        return self.rsa_key_size if self.algorithm.startswith(("RS", "PS")) else None

    def _check_shared_secret_settings(self) -> None:
        if not self.is_shared_secret:
            if self.hmac_key_size is not None:
                raise SpecError("spec.hmacKeySize", f"applies only to the HMAC algorithms (HS256, HS384, HS512), not to {self.algorithm}")
            if self.verification_secret_name:
                raise SpecError("spec.verificationSecretName", f"applies only to the HMAC algorithms (HS256, HS384, HS512), not to {self.algorithm}")
            return
        if self.hmac_key_size is None:
            object.__setattr__(self, "hmac_key_size", HMAC_HASH_BITS[self.algorithm])
        if not is_hmac_key_size(self.algorithm, self.hmac_key_size):
            low, high, size = HMAC_HASH_BITS[self.algorithm], HMAC_BLOCK_BITS[self.algorithm], self.hmac_key_size
            raise SpecError(
                "spec.hmacKeySize",
                f"must be a multiple of 8 from {low} to {high} for {self.algorithm} (got {size!r}): "
                f"RFC 7518 requires at least the hash size, and beyond the hash's block size a key is hashed down first",
            )
        if self.served_at:
            raise SpecError("spec.jwks.servedAt", _PUBLIC_SET_ONLY)
        if self.ca_bundle is not None:
            raise SpecError("spec.jwks.caBundleRef", _PUBLIC_SET_ONLY)
        if self.jwks_max_age != DEFAULT_JWKS_MAX_AGE:
            raise SpecError("spec.jwks.maxAge", _PUBLIC_SET_ONLY)
        if not self.verification_secret_name:
            object.__setattr__(self, "verification_secret_name", f"{self.name}-verification")
        _check_object_name("spec.verificationSecretName", self.verification_secret_name, self.name)

    @property
    def retention(self) -> timedelta:
        """How long a key that stopped signing stays published (invariant 3).

        Its last tokens live for tokenLifetime, verifiers accept them clockSkew longer, and
        signers keep signing with it until the new signing Secret reaches them.
        """
        return self.token_lifetime + self.clock_skew + self.secret_propagation

    def signer_lifetimes(self) -> bytes:
        """``lifetimes.json`` of the signing Secret (:class:`~.lifetimes.TokenLifetimes`): the
        longest a token may live (retention counts from it), the clock skew verifiers give, and
        the shorter lifetimes by class name."""
        return TokenLifetimes(
            token_lifetime_seconds=_whole_seconds(self.token_lifetime),
            clock_skew_seconds=_whole_seconds(self.clock_skew),
            classes={name: _whole_seconds(lifetime) for name, lifetime in self.token_lifetime_classes},
        ).encode()

    @classmethod
    def from_resource(
        cls,
        name: str,
        spec: Mapping[str, Any] | None,
        *,
        secret_propagation: timedelta = DEFAULT_SECRET_PROPAGATION,
    ) -> PolicySpec:
        """Parse a SigningKeyPolicy's ``spec`` (camelCase keys as in the CRD).

        Unknown keys are ignored: the API server prunes them against the CRD schema.
        """
        spec = _mapping("spec", spec if spec is not None else {})
        rotation = _mapping("spec.rotation", spec.get("rotation") or {})
        jwks = _mapping("spec.jwks", spec.get("jwks") or {})

        algorithm = spec.get("algorithm", DEFAULT_ALGORITHM)
        if not isinstance(algorithm, str):
            raise SpecError("spec.algorithm", f"must be a string (got {type(algorithm).__name__})")
        rsa_key_size = spec.get("rsaKeySize", DEFAULT_RSA_KEY_SIZE)
        if isinstance(rsa_key_size, bool) or not isinstance(rsa_key_size, int):
            raise SpecError("spec.rsaKeySize", f"must be an integer (got {rsa_key_size!r})")
        hmac_key_size = spec.get("hmacKeySize")
        if hmac_key_size is not None and (isinstance(hmac_key_size, bool) or not isinstance(hmac_key_size, int)):
            raise SpecError("spec.hmacKeySize", f"must be an integer (got {hmac_key_size!r})")
        if is_hmac_algorithm(algorithm) and "jwksConfigMapName" in spec:
            raise SpecError("spec.jwksConfigMapName", _PUBLIC_SET_ONLY)
        suspend = spec.get("suspend", False)
        if not isinstance(suspend, bool):
            raise SpecError("spec.suspend", f"must be true or false (got {suspend!r})")

        jwks_max_age = _duration("spec.jwks.maxAge", jwks, "maxAge", DEFAULT_JWKS_MAX_AGE)
        revocation = _mapping("spec.revocation", spec.get("revocation") or {})
        redis = _redis_target(revocation.get("redis"))
        served_at = jwks.get("servedAt") or []
        if not isinstance(served_at, list):
            raise SpecError("spec.jwks.servedAt", f"must be a list of URLs (got {type(served_at).__name__})")
        ca_bundle = None
        if jwks.get("caBundleRef") is not None:
            reference = _mapping("spec.jwks.caBundleRef", jwks["caBundleRef"])
            ca_bundle = (
                _name("spec.jwks.caBundleRef.configMapName", reference, "configMapName", ""),
                _name("spec.jwks.caBundleRef.key", reference, "key", "ca.crt"),
            )
            if not ca_bundle[0]:
                raise SpecError("spec.jwks.caBundleRef.configMapName", "is required")
        return cls(
            name=name,
            algorithm=algorithm,
            rsa_key_size=rsa_key_size,
            hmac_key_size=hmac_key_size,
            verification_secret_name=_name("spec.verificationSecretName", spec, "verificationSecretName", ""),
            rotation_interval=_duration(
                "spec.rotation.interval", rotation, "interval", DEFAULT_ROTATION_INTERVAL
            ),
            publish_ahead=_duration(
                "spec.rotation.publishAhead",
                rotation,
                "publishAhead",
                # Clients that honour Cache-Control may hold the set for maxAge, so a long
                # maxAge lengthens the default rather than making it refuse itself.
                max(DEFAULT_MINIMUM_PUBLISH_AHEAD, jwks_max_age),
            ),
            token_lifetime=_duration("spec.tokenLifetime", spec, "tokenLifetime", DEFAULT_TOKEN_LIFETIME),
            clock_skew=_duration("spec.clockSkew", spec, "clockSkew", DEFAULT_CLOCK_SKEW),
            jwks_max_age=jwks_max_age,
            signing_secret_name=_name("spec.signingSecretName", spec, "signingSecretName", f"{name}-signing"),
            jwks_config_map_name=_name("spec.jwksConfigMapName", spec, "jwksConfigMapName", f"{name}-jwks"),
            suspend=suspend,
            secret_propagation=secret_propagation,
            revocation_backend=revocation.get("backend") or "ConfigMap",
            revocation_config_map_name=_name(
                "spec.revocation.configMapName", revocation, "configMapName", f"{name}-revocations"
            ),
            redis=redis,
            served_at=tuple(served_at),
            ca_bundle=ca_bundle,
            token_lifetime_classes=_lifetime_classes(spec.get("tokenLifetimes")),
        )


def timeline_warnings(spec: PolicySpec) -> tuple[SpecWarning, ...]:
    """Warnings for timelines shorter than what common verifiers need (valid, but risky)."""
    warnings: list[SpecWarning] = []
    if spec.is_shared_secret:
        # Its verifiers read a mounted Secret, not a cached JWK Set: the kubelet's lag counts.
        if spec.publish_ahead < spec.secret_propagation:
            warnings.append(
                SpecWarning(
                    "spec.rotation.publishAhead",
                    f"{_show(spec.publish_ahead)} is shorter than the time a changed Secret takes to reach "
                    f"the pods that mount it ({_show(spec.secret_propagation)}: the kubelet's sync period "
                    "with its jitter). Verifiers may reject tokens signed by a new key until their copy "
                    "of the verification Secret has it.",
                )
            )
        return tuple(warnings)
    slower = [client for client in VERIFIER_CLIENTS if spec.publish_ahead < client.minimum_publish_ahead]
    if slower:
        clients = _by_minimum_publish_ahead(slower)
        warnings.append(
            SpecWarning(
                "spec.rotation.publishAhead",
                f"{_show(spec.publish_ahead)} is shorter than the JWKS cache of {clients}. "
                "With default settings these verifiers may reject tokens signed by a new key "
                "(kid not found) until they refresh.",
            )
        )
    return tuple(warnings)


def _by_minimum_publish_ahead(clients: list[VerifierClient]) -> str:
    """``"Go keyfunc (1h); istiod (20m); PyJWT PyJWKClient and Spring ... (5m)"``: grouped by
    duration, longest first, so that a list of six or seven clients still reads at a glance."""
    groups: dict[timedelta, list[str]] = {}
    for client in clients:
        groups.setdefault(client.minimum_publish_ahead, []).append(client.name)
    return "; ".join(
        f"{_and(names)} ({_show(duration)})" for duration, names in sorted(groups.items(), reverse=True)
    )


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _lifetime_classes(value: Any) -> tuple[tuple[str, timedelta], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SpecError("spec.tokenLifetimes", f"must be a list of {{name, lifetime}} (got {type(value).__name__})")
    parsed = []
    for index, entry in enumerate(value):
        entry = _mapping(f"spec.tokenLifetimes[{index}]", entry)
        name = entry.get("name")
        if not isinstance(name, str):
            raise SpecError(f"spec.tokenLifetimes[{index}].name", "is required")
        parsed.append((name, _duration(f"spec.tokenLifetimes[{index}].lifetime", entry, "lifetime", timedelta(0))))
    return tuple(sorted(parsed))


def _redis_target(value: Any) -> RedisTarget | None:
    if value is None:
        return None
    redis = _mapping("spec.revocation.redis", value)
    url = redis.get("url")
    if not isinstance(url, str) or not re.fullmatch(r"rediss?://[^@/]+(/[0-9]+)?", url):
        raise SpecError("spec.revocation.redis.url", "must be redis://host:port[/db] or rediss://..., without credentials")
    secret = redis.get("passwordSecretRef")
    password_secret = None
    if secret is not None:
        secret = _mapping("spec.revocation.redis.passwordSecretRef", secret)
        password_secret = (
            _name("spec.revocation.redis.passwordSecretRef.name", secret, "name", ""),
            _name("spec.revocation.redis.passwordSecretRef.key", secret, "key", "password"),
        )
        if not password_secret[0]:
            raise SpecError("spec.revocation.redis.passwordSecretRef.name", "is required")
    prefix = redis.get("keyPrefix")
    if prefix is not None and (not isinstance(prefix, str) or not prefix):
        raise SpecError("spec.revocation.redis.keyPrefix", "must be a non-empty string")
    return RedisTarget(url, password_secret, prefix)


def _whole_seconds(value: timedelta) -> int:
    """Rounded down, so that a signer never issues a token longer than the policy allows."""
    return int(value.total_seconds())


def _show(value: timedelta) -> str:
    return format_duration(value, compact=True)


def _mapping(field_path: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(field_path, f"must be an object (got {type(value).__name__})")
    return value


def _duration(field_path: str, parent: Mapping[str, Any], key: str, default: timedelta) -> timedelta:
    if parent.get(key) is None:
        return default
    try:
        return parse_duration(parent[key])
    except ValueError as error:
        raise SpecError(field_path, str(error)) from None


def _name(field_path: str, parent: Mapping[str, Any], key: str, default: str) -> str:
    value = parent.get(key)
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise SpecError(field_path, f"must be a string (got {type(value).__name__})")
    return value


def _check_object_name(field_path: str, value: str, policy_name: str) -> None:
    if len(value) > _MAX_NAME_LENGTH or not _DNS1123_SUBDOMAIN.match(value):
        raise SpecError(
            field_path,
            f"{value!r} is not a valid object name (lowercase letters, digits, '-' and '.', "
            f"at most {_MAX_NAME_LENGTH} characters)",
        )
    if re.fullmatch(re.escape(policy_name) + r"-key-[0-9]+", value):
        raise SpecError(field_path, f"{value!r} collides with the names of the per-key Secrets")
