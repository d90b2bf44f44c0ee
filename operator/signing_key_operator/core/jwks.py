"""Rendering and validation of the public JWK Set (RFC 7517) that verifiers fetch.

Pure code: no I/O, and no kopf, kubernetes or aiohttp imports. The operator renders the set
with :func:`render_jwk_set` before it writes the ConfigMap; the sidecar checks whatever it
reads with :func:`parse_jwk_set` before it serves it. Both sides use the same rules, so a set
the operator would refuse to publish is also a set the sidecar refuses to serve.

Canonical form (what :func:`render_jwk_set` returns, byte for byte what the sidecar serves):

* ``{"keys":[...]}``, keys in the order given (the caller decides; the planner puts them in a
  stable order so an unchanged set renders to identical bytes and an unchanged ETag),
* members of every object sorted, compact separators, ASCII only (non-ASCII escaped),
* one trailing newline (``kubectl get cm -o yaml`` then shows a readable block scalar, and
  ``curl`` output ends cleanly; the newline is part of the body and of the ETag).

What is refused (:class:`InvalidJwkSet`, with a stable :attr:`InvalidJwkSet.reason` code for
metrics and a message that never contains key material):

* bytes that are not UTF-8 JSON, JSON with duplicate member names (parsers disagree about
  which one wins, a classic confusion attack), NaN/Infinity, more than :data:`MAX_JWK_SET_BYTES`;
* anything that is not an object with a non-empty ``keys`` list of objects;
* ANY private member (``d p q dp dq qi oth k``), at any depth of the document, and every
  symmetric ``oct`` key: this set is public, and a private member here is a key compromise
  (design invariant 5);
* any member outside the public allow-list: ``keys`` at the top level; in a key, ``kty kid use
  alg key_ops`` and its type's public members (RSA ``n e``; EC ``crv x y``; OKP ``crv x``).
  The sidecar serves the checked bytes as they are, so what it serves is exactly what passed
  these rules, and its ETag (their SHA-256) stays the operator's on every replica. Such content
  is refused, not stripped and re-serialised: :func:`render_jwk_set` never writes anything
  else, so it was written by someone else, and serving a cleaned copy would hide a leaked key
  that must be reported (refusal reason, log line, metric) while the last good set is served;
* a key without the members its ``kty`` needs (RSA ``n e``; EC ``crv x y``; OKP ``crv x``),
  members of the wrong JSON type (``kty crv alg use`` and the key material must be strings),
  members that are not base64url, or values that do not form a valid public key (EC point not
  on its curve, wrong coordinate length, ...): one malformed key makes some clients (Go
  ``jwkset``, Nimbus) reject the whole set, so it must never be served;
* a missing or empty ``kid``, duplicate kids, an ``alg`` that does not fit the key.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x448, x25519

__all__ = [
    "InvalidJwkSet",
    "JwkSet",
    "MAX_JWK_SET_BYTES",
    "PRIVATE_MEMBERS",
    "REASONS",
    "loads_strict",
    "parse_jwk_set",
    "render_jwk_set",
    "validate_jwk_set",
]

MAX_JWK_SET_BYTES = 1024 * 1024
"""A ConfigMap holds at most 1 MiB in total, so a bigger set cannot have been published."""

PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
"""JWK members that carry private or secret key material (RFC 7518 section 6)."""

REASONS = frozenset(
    {
        "too_large",
        "not_utf8",
        "invalid_json",
        "duplicate_member",
        "not_an_object",
        "keys_not_a_list",
        "empty",
        "key_not_an_object",
        "private_member",
        "unknown_member",
        "symmetric_key",
        "unsupported_kty",
        "missing_member",
        "invalid_member",
        "unsupported_curve",
        "invalid_key",
        "missing_kid",
        "duplicate_kid",
        "alg_mismatch",
    }
)
"""Every value :attr:`InvalidJwkSet.reason` can take (bounded: safe as a metric label)."""

_REQUIRED = MappingProxyType({"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "OKP": ("crv", "x")})
_STRING_MEMBERS = frozenset({"kty", "crv", "alg", "use"})
_COMMON_MEMBERS = frozenset({"kty", "kid", "use", "alg", "key_ops"})
"""What any served key may carry besides its type's public members (:data:`_REQUIRED`). No
certificate members (``x5c x5t x5t#S256 x5u``): the operator issues no certificates, and an
allow-list is only worth its name if every member on it is checked."""
_SET_MEMBERS = frozenset({"keys"})

_EC_CURVES: Mapping[str, tuple[ec.EllipticCurve, int]] = MappingProxyType({
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
    "P-521": (ec.SECP521R1(), 66),
    "secp256k1": (ec.SECP256K1(), 32),
})

_OKP_CURVES = MappingProxyType({
    "Ed25519": ed25519.Ed25519PublicKey,
    "Ed448": ed448.Ed448PublicKey,
    "X25519": x25519.X25519PublicKey,
    "X448": x448.X448PublicKey,
})

# alg values that fit each kty (signature and key-management algorithms of RFC 7518/8037).
_ALGS_RSA = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "RSA-OAEP", "RSA-OAEP-256", "RSA1_5"}
)
_ALGS_EC_SIG = MappingProxyType({"ES256": "P-256", "ES384": "P-384", "ES512": "P-521", "ES256K": "secp256k1"})
_ALGS_ECDH = frozenset({"ECDH-ES", "ECDH-ES+A128KW", "ECDH-ES+A192KW", "ECDH-ES+A256KW"})
_ALGS_OKP_SIG = MappingProxyType({"EdDSA": ("Ed25519", "Ed448"), "Ed25519": ("Ed25519",), "Ed448": ("Ed448",)})

_B64URL = re.compile(r"\A[A-Za-z0-9_-]+\Z")
_KID_SHOWN = 80
_MEMBER_NAME_SHOWN = 16


class InvalidJwkSet(ValueError):
    """The content is not a valid public JWK Set.

    ``reason`` is one of :data:`REASONS` (stable, low-cardinality: fit for a metric label);
    ``str(exc)`` explains it for humans and never contains key material.
    """

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class JwkSet:
    """A validated public JWK Set."""

    keys: tuple[Mapping[str, Any], ...]
    """The JWKs, in the order of the set."""

    @property
    def kids(self) -> tuple[str, ...]:
        """Key ids in set order (unique, validated)."""
        return tuple(k["kid"] for k in self.keys)

    @property
    def algs(self) -> tuple[str, ...]:
        """The distinct ``alg`` members of the keys, sorted (keys without ``alg`` add none)."""
        return tuple(sorted({k["alg"] for k in self.keys if "alg" in k}))

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        return iter(self.keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self.kids

    def get(self, kid: str) -> Mapping[str, Any] | None:
        """The key with this kid, or None."""
        for key in self.keys:
            if key["kid"] == kid:
                return key
        return None

    def to_dict(self) -> dict[str, Any]:
        """A fresh ``{"keys": [...]}`` dict (deep enough copies to be mutated by the caller)."""
        return {"keys": [json.loads(json.dumps(k)) for k in self.keys]}


def render_jwk_set(public_jwks: Sequence[Mapping[str, Any]]) -> bytes:
    """Render public JWKs as the canonical JWK Set document (see the module docstring).

    Raises :class:`InvalidJwkSet` if the result would not pass :func:`parse_jwk_set`, so what
    this returns can always be published.
    """
    if isinstance(public_jwks, (str, bytes, Mapping)):
        raise TypeError("render_jwk_set takes a sequence of JWK dicts")
    try:
        body = (
            json.dumps(
                {"keys": list(public_jwks)},
                sort_keys=True,
                separators=(",", ":"),
                ensure_ascii=True,
                allow_nan=False,
            )
            + "\n"
        ).encode("ascii")
    except (TypeError, ValueError) as exc:
        # The message of json's errors names the offending type/value kind, not key material.
        raise InvalidJwkSet("invalid_json", f"JWKs are not JSON-serialisable: {type(exc).__name__}") from None
    parse_jwk_set(body)
    return body


def render_shared_key_set(oct_jwks: Sequence[Mapping[str, Any]]) -> bytes:
    """The JWK Set of an HMAC policy's verification Secret: ``oct`` keys, ``k`` and all. Secret!

    Canonical like the public set (the same keys give the same bytes, so an unchanged set is
    never rewritten). It is never given to :func:`parse_jwk_set`, which refuses exactly these
    keys: this document is for the verifiers that mount the Secret, and for nobody else."""
    for key in oct_jwks:
        if key.get("kty") != "oct" or set(key) != {"kty", "k", "kid", "alg", "use"}:
            # A caller's mistake, not content read from outside: no metric reason for it.
            raise ValueError("a shared-key set holds only oct keys with exactly kty, k, kid, alg and use")
    return (json.dumps({"keys": list(oct_jwks)}, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")


def parse_jwk_set(data: bytes | bytearray | memoryview | str) -> JwkSet:
    """Parse and validate a serialized JWK Set; raise :class:`InvalidJwkSet` if it is not a
    valid, non-empty, public-only set."""
    if isinstance(data, str):
        raw = data.encode("utf-8", "surrogatepass")
    else:
        raw = bytes(data)
    if len(raw) > MAX_JWK_SET_BYTES:
        raise InvalidJwkSet("too_large", f"JWK Set is {len(raw)} bytes, more than {MAX_JWK_SET_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJwkSet("not_utf8", f"JWK Set is not UTF-8 (byte offset {exc.start})") from None
    if not text.strip():
        raise InvalidJwkSet("invalid_json", "JWK Set is empty (no JSON document)")
    try:
        obj = loads_strict(text)
    except DuplicateMember as exc:
        raise InvalidJwkSet("duplicate_member", f"JSON object has duplicate member {exc.name!r}") from None
    except (ValueError, RecursionError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        what = exc.msg if isinstance(exc, json.JSONDecodeError) else "not JSON"
        raise InvalidJwkSet("invalid_json", f"JWK Set is not valid JSON{where}: {what}") from None
    return validate_jwk_set(obj)


def validate_jwk_set(obj: Any) -> JwkSet:
    """Validate an already-decoded JWK Set object; raise :class:`InvalidJwkSet` if invalid."""
    if not isinstance(obj, Mapping):
        raise InvalidJwkSet("not_an_object", f"JWK Set must be a JSON object, got {_json_type(obj)}")
    _refuse_private_members(obj)
    if "keys" not in obj:
        raise InvalidJwkSet("keys_not_a_list", 'JWK Set has no "keys" member')
    keys = obj["keys"]
    if not isinstance(keys, list):
        raise InvalidJwkSet("keys_not_a_list", f'"keys" must be an array, got {_json_type(keys)}')
    if not keys:
        raise InvalidJwkSet("empty", 'JWK Set has no keys ("keys" is empty)')
    for i, key in enumerate(keys):
        if not isinstance(key, Mapping):
            raise InvalidJwkSet("key_not_an_object", f"key #{i} must be a JSON object, got {_json_type(key)}")
    unknown = set(obj) - _SET_MEMBERS
    if unknown:
        raise InvalidJwkSet("unknown_member", f'JWK Set has member(s) {_member_names(unknown)} besides "keys": only keys are served')
    for i, key in enumerate(keys):
        if key.get("kty") == "oct":
            raise InvalidJwkSet(
                "symmetric_key", f"key #{i}{_kid_hint(key)} is a symmetric (oct) key: refused outright"
            )
    seen: set[str] = set()
    for i, key in enumerate(keys):
        _validate_key(i, key)
        kid = key["kid"]
        if kid in seen:
            raise InvalidJwkSet("duplicate_kid", f"key #{i}: kid {_show(kid)} appears more than once")
        seen.add(kid)
    return JwkSet(keys=tuple(dict(k) for k in keys))


def _validate_key(i: int, key: Mapping[str, Any]) -> None:
    where = f"key #{i}{_kid_hint(key)}"
    kid = key.get("kid")
    if "kid" not in key:
        raise InvalidJwkSet("missing_kid", f'{where} has no "kid"')
    if not isinstance(kid, str) or not kid:
        raise InvalidJwkSet("missing_kid", f'{where}: "kid" must be a non-empty string')
    if "kty" not in key:
        raise InvalidJwkSet("missing_member", f'{where} has no "kty"')
    # Before any lookup by value: a JSON array or object is unhashable, and a TypeError here would
    # escape as a crash rather than a refusal (the sidecar's source restarting, the verifier
    # skipping its failure throttle). n, e, x and y are checked where they are decoded.
    for member in _STRING_MEMBERS.intersection(key):
        if not isinstance(key[member], str) or not key[member]:
            raise InvalidJwkSet("invalid_member", f'{where}: "{member}" must be a non-empty string')
    kty = key["kty"]
    if kty not in _REQUIRED:
        raise InvalidJwkSet("unsupported_kty", f"{where} has unsupported kty {_show(kty)} (expected RSA, EC or OKP)")
    unknown = set(key) - _COMMON_MEMBERS.union(_REQUIRED[kty])
    if unknown:
        raise InvalidJwkSet(
            "unknown_member",
            f"{where} has member(s) {_member_names(unknown)} outside what a public {kty} key carries "
            f"({', '.join(sorted(_COMMON_MEMBERS.union(_REQUIRED[kty])))})",
        )
    missing = [m for m in _REQUIRED[kty] if m not in key]
    if missing:
        raise InvalidJwkSet("missing_member", f"{where} ({kty}) lacks required member(s) {', '.join(missing)}")
    if "use" in key and key["use"] not in ("sig", "enc"):
        raise InvalidJwkSet("invalid_member", f'{where}: "use" must be "sig" or "enc"')
    if "key_ops" in key and (
        not isinstance(key["key_ops"], list) or not all(isinstance(o, str) for o in key["key_ops"])
    ):
        raise InvalidJwkSet("invalid_member", f'{where}: "key_ops" must be an array of strings')

    if kty == "RSA":
        n = _b64_member(where, key, "n")
        e = _b64_member(where, key, "e")
        if n[0] == 0 or e[0] == 0:
            raise InvalidJwkSet("invalid_member", f"{where}: RSA n and e must not have leading zero octets")
        try:
            rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big")).public_key()
        except ValueError:
            raise InvalidJwkSet("invalid_key", f"{where}: n and e do not form a valid RSA public key") from None
        _check_alg(where, key, ok=key.get("alg") in _ALGS_RSA)
    elif kty == "EC":
        crv = key["crv"]
        if crv not in _EC_CURVES:
            raise InvalidJwkSet("unsupported_curve", f"{where}: unsupported EC curve {_show(crv)}")
        curve, size = _EC_CURVES[crv]
        x = _b64_member(where, key, "x")
        y = _b64_member(where, key, "y")
        if len(x) != size or len(y) != size:
            raise InvalidJwkSet("invalid_member", f"{where}: {crv} coordinates must be {size} octets each")
        try:
            ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve).public_key()
        except ValueError:
            raise InvalidJwkSet("invalid_key", f"{where}: the point is not on curve {crv}") from None
        alg = key.get("alg")
        _check_alg(where, key, ok=_ALGS_EC_SIG.get(alg) == crv or alg in _ALGS_ECDH)
    else:  # OKP
        crv = key["crv"]
        if crv not in _OKP_CURVES:
            raise InvalidJwkSet("unsupported_curve", f"{where}: unsupported OKP curve {_show(crv)}")
        x = _b64_member(where, key, "x")
        try:
            _OKP_CURVES[crv].from_public_bytes(x)
        except ValueError:
            raise InvalidJwkSet("invalid_key", f"{where}: x is not a valid {crv} public key") from None
        alg = key.get("alg")
        ok = crv in _ALGS_OKP_SIG.get(alg, ()) or (crv.startswith("X") and alg in _ALGS_ECDH)
        _check_alg(where, key, ok=ok)


def _refuse_private_members(obj: Mapping[str, Any]) -> None:
    """Private material first, anywhere in the document (in a key, nested in one of its members,
    beside the keys): it is the most serious finding and must be the reason reported (and
    counted) whatever else is wrong."""
    keys = obj.get("keys")
    in_keys = list(enumerate(keys)) if isinstance(keys, list) else []
    for i, key in in_keys:
        private = _private_names(key)
        if private:
            hint = _kid_hint(key) if isinstance(key, Mapping) else ""
            raise InvalidJwkSet(
                "private_member",
                f"key #{i}{hint} has private member(s) {', '.join(private)}: "
                "a public JWK Set must never carry private key material",
            )
    private = _private_names({name: value for name, value in obj.items() if name != "keys" or not isinstance(value, list)})
    if private:
        raise InvalidJwkSet(
            "private_member",
            f"JWK Set has private member(s) {', '.join(private)} outside its keys: "
            "a public JWK Set must never carry private key material",
        )


def _private_names(value: Any) -> list[str]:
    """Private member names in the objects of ``value`` at any depth. A loop, not recursion: the
    document may nest as deep as the JSON parser allowed."""
    found: set[str] = set()
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, Mapping):
            found.update(PRIVATE_MEMBERS.intersection(item))
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return sorted(found)


def _check_alg(where: str, key: Mapping[str, Any], *, ok: bool) -> None:
    if "alg" in key and not ok:
        detail = f"crv {_show(key['crv'])}" if "crv" in key else f"kty {key['kty']}"
        raise InvalidJwkSet("alg_mismatch", f"{where}: alg {_show(key['alg'])} does not fit {detail}")


def _b64_member(where: str, key: Mapping[str, Any], member: str) -> bytes:
    value = key[member]
    if not isinstance(value, str) or not _B64URL.match(value) or len(value) % 4 == 1:
        raise InvalidJwkSet("invalid_member", f'{where}: "{member}" must be unpadded base64url')
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise InvalidJwkSet("invalid_member", f'{where}: "{member}" must be unpadded base64url') from None


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` that refuses duplicate member names (parsers disagree about which one
    wins, a classic confusion attack) and NaN/Infinity; raises ValueError (DuplicateMember for
    the first)."""
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


class DuplicateMember(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name if len(name) <= _KID_SHOWN else name[:_KID_SHOWN] + "..."


def _no_duplicates(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise DuplicateMember(name)
        out[name] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _show(value: Any) -> str:
    """A short, safe rendering of an identifier (kid, alg, crv): never used for key material."""
    if not isinstance(value, str):
        return _json_type(value)
    if len(value) > _KID_SHOWN:
        value = value[:_KID_SHOWN] + "..."
    return repr(value)


def _member_names(names: Iterable[str]) -> str:
    """Unknown member names for a message. Whoever wrote them could have put anything in a
    name, so each is cut short: enough to recognise ``x5t#S256``, too little to carry a key."""
    ordered = sorted(names)
    shown = [repr(n) if len(n) <= _MEMBER_NAME_SHOWN else repr(n[:_MEMBER_NAME_SHOWN]) + "..." for n in ordered[:5]]
    more = f" and {len(ordered) - 5} more" if len(ordered) > 5 else ""
    return ", ".join(shown) + more


def _kid_hint(key: Mapping[str, Any]) -> str:
    kid = key.get("kid")
    return f" (kid {_show(kid)})" if isinstance(kid, str) and kid else ""
