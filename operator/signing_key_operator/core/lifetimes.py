"""``lifetimes.json``: how long a signer may make its tokens live, as the signing Secret says it.

Retention counts from the policy's tokenLifetime: a key stays published that long (plus the
clock skew) after it stopped signing. A token that lives longer fails once its key is gone, so
the lifetime is the policy's, not each application's. The operator writes this document beside
the key it signs with, and the signer library (``signing_key_operator.sign``) reads it back; both
ends are here so that they cannot drift apart.

Whole seconds, rounded down (a signer is never allowed longer than the policy says, and no
signer has to parse Go durations); canonical JSON (sorted keys, no spaces), so an unchanged
spec gives the same bytes and the Secret is not rewritten.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["InvalidLifetimes", "LifetimeRefused", "TokenLifetimes"]


class InvalidLifetimes(ValueError):
    """``lifetimes.json`` is not a document this version can follow (the message says which part)."""


class LifetimeRefused(ValueError):
    """A signer asked for a lifetime the policy does not allow (longer, or an unknown class)."""


@dataclass(frozen=True)
class TokenLifetimes:
    token_lifetime_seconds: int
    """The longest any token may live (``exp - iat``): the policy's tokenLifetime."""
    clock_skew_seconds: int
    """The leeway verifiers give past ``exp``: the policy's clockSkew."""
    classes: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Shorter lifetimes by class name (``spec.tokenLifetimes``), none longer than the default."""

    def encode(self) -> bytes:
        document = {
            "tokenLifetimeSeconds": self.token_lifetime_seconds,
            "clockSkewSeconds": self.clock_skew_seconds,
            "classes": dict(self.classes),
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, data: bytes) -> TokenLifetimes:
        """The document the operator wrote; :class:`InvalidLifetimes` for anything else (a
        signer that cannot tell the lifetime must not guess one)."""
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise InvalidLifetimes("lifetimes.json is not JSON") from None
        if not isinstance(document, dict):
            raise InvalidLifetimes("lifetimes.json is not a JSON object")
        default = _positive_seconds(document, "tokenLifetimeSeconds")
        skew = document.get("clockSkewSeconds")
        if isinstance(skew, bool) or not isinstance(skew, int) or skew < 0:
            raise InvalidLifetimes("lifetimes.json: clockSkewSeconds must be a whole number of seconds, 0 or more")
        classes = document.get("classes", {})
        if not isinstance(classes, dict):
            raise InvalidLifetimes("lifetimes.json: classes must be an object")
        for name in classes:
            seconds = _positive_seconds(classes, name, f"classes.{name[:63]}")
            if seconds > default:
                raise InvalidLifetimes(f"lifetimes.json: class {name[:63]} is longer than tokenLifetimeSeconds")
        return cls(default, skew, MappingProxyType(dict(classes)))

    def allowed(self, lifetime_class: str | None = None) -> int:
        """The longest lifetime a token of ``lifetime_class`` (None: the default) may have."""
        if lifetime_class is None:
            return self.token_lifetime_seconds
        try:
            return self.classes[lifetime_class]
        except KeyError:
            known = ", ".join(sorted(self.classes)) or "none"
            raise LifetimeRefused(f"the policy has no token lifetime class {lifetime_class[:63]!r} "
                                  f"(its classes: {known})") from None

    def lifetime(self, lifetime_class: str | None = None, requested: float | None = None) -> int:
        """Seconds from ``iat`` to ``exp`` for a new token: ``requested`` (rounded down) if given
        and allowed, else the class's (or the default) lifetime. Longer is refused, not cut."""
        allowed = self.allowed(lifetime_class)
        if requested is None:
            return allowed
        if requested != requested or requested <= 0:  # NaN or not positive
            raise LifetimeRefused(f"a token lifetime must be positive (asked for {requested})")
        if requested > allowed:
            which = f"class {lifetime_class!r}" if lifetime_class is not None else "the policy's tokenLifetime"
            raise LifetimeRefused(f"asked for a {requested:g}s token; {which} allows at most {allowed}s")
        return max(1, int(requested))

    @property
    def longest(self) -> int:
        """The longest lifetime of any class: what a verifier may allow (retention counts from it)."""
        return max((self.token_lifetime_seconds, *self.classes.values()))


def _positive_seconds(document: Mapping, key: str, name: str | None = None) -> int:
    value = document.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidLifetimes(f"lifetimes.json: {name or key} must be a whole number of seconds, more than 0")
    return value
