"""Signing key material: generation, loading and the public JWK a verifier needs.

Keys are generated and parsed with ``cryptography``; the JWK form and the kid (RFC 7638 JWK
thumbprint, SHA-256, base64url) come from ``joserfc``. Everything here is public by default:
``repr()``/``str()`` never show private material, and :meth:`KeyMaterial.public_jwk` carries
only public members. The private key leaves this module only through the explicitly named
:attr:`KeyMaterial.private` and :meth:`KeyMaterial.private_jwk`.

HMAC keys (HS256/384/512) are shared secrets: they have no public half, so ``public_jwk``
refuses them (joserfc's ``OctKey.as_dict(private=False)`` would still carry ``k``), and only
``private_jwk`` gives their ``oct`` JWK, for the verification Secret. Their kid is the same RFC
7638 thumbprint, a SHA-256 over the key: for a full-entropy key it tells nothing, and every
token's signature is already a function of the key that would let one test a guess, so a
random kid would hide nothing more while losing the check that a stored key matches its kid.

Generation is CPU-bound and synchronous (an RSA 4096 key takes about 0.4 s): async callers
run it in a thread (``asyncio.to_thread``) so the event loop never stalls.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Union

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

__all__ = [
    "ALGORITHMS",
    "b64url",
    "DEFAULT_RSA_KEY_SIZE",
    "HMAC_ALGORITHMS",
    "HMAC_BLOCK_BITS",
    "HMAC_HASH_BITS",
    "MINIMUM_RSA_KEY_SIZE",
    "PUBLIC_KEY_ALGORITHMS",
    "RSA_ALGORITHMS",
    "RSA_KEY_SIZES",
    "KeyMaterial",
    "KeyMaterialError",
    "generate_key",
    "is_hmac_algorithm",
    "is_hmac_key_size",
    "is_rsa_algorithm",
    "load_key",
]

RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
PUBLIC_KEY_ALGORITHMS = (*RSA_ALGORITHMS, "ES256", "ES384", "ES512", "EdDSA")
"""The algorithms whose keys have a public half, published in a JWK Set."""
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
ALGORITHMS = (*PUBLIC_KEY_ALGORITHMS, *HMAC_ALGORITHMS)

HMAC_HASH_BITS = MappingProxyType({"HS256": 256, "HS384": 384, "HS512": 512})
"""The smallest HMAC key for each algorithm, and the default: RFC 7518 section 3.2 requires a
key "of the same size as the hash output ... or larger"."""

HMAC_BLOCK_BITS = MappingProxyType({"HS256": 512, "HS384": 1024, "HS512": 1024})
"""The largest HMAC key worth having: a key longer than the hash's block is hashed down to the
hash size first (RFC 2104 section 3), so it adds length and no strength."""

RSA_KEY_SIZES = (2048, 3072, 4096)
"""Sizes offered for new RSA keys. 2048 is the floor of RFC 7518 section 3.3; sizes outside
the common three buy little and are unevenly supported by hardware and verifier libraries."""

DEFAULT_RSA_KEY_SIZE = 3072
"""128-bit security (NIST SP 800-57), the size NIST expects to last beyond 2030, while
generation stays around 0.1 s (4096 takes about 0.4 s) and signatures stay half the size."""

MINIMUM_RSA_KEY_SIZE = 2048
"""RFC 7518 section 3.3: RS*/PS* keys "of size 2048 bits or larger MUST be used"."""

_CURVE_BY_ALGORITHM = MappingProxyType(
    {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
)
_JWK_CURVE_NAME = MappingProxyType({"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"})

_PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey]


class KeyMaterialError(ValueError):
    """Key material is unreadable or does not fit its algorithm.

    The message describes the problem (type, curve, size, kid) and never contains the
    material itself, so it is safe in events, conditions and logs.
    """


def is_rsa_algorithm(algorithm: str) -> bool:
    return algorithm in RSA_ALGORITHMS


def is_hmac_algorithm(algorithm: str) -> bool:
    return algorithm in HMAC_ALGORITHMS


@dataclass(frozen=True)
class KeyMaterial:
    """One signing key: its kid, algorithm and private material.

    Build it with :func:`generate_key` or :func:`load_key`, which guarantee that ``kid`` is
    the thumbprint of the key and that the key fits ``alg``.
    """

    kid: str
    alg: str
    private: bytes = field(repr=False)
    """The private key as PKCS#8 PEM, or for an HMAC key the raw key bytes."""
    public_members: tuple[tuple[str, str], ...] = field(repr=False, compare=False)
    """The public JWK members (kty, crv, x, y / n, e) computed when the key was made, so that
    publishing does not re-parse the private key; empty for an HMAC key, which has none."""

    def __post_init__(self) -> None:
        if self.alg not in ALGORITHMS:
            raise KeyMaterialError(f"unsupported algorithm {self.alg!r}")

    @property
    def is_shared_secret(self) -> bool:
        return is_hmac_algorithm(self.alg)

    def public_jwk(self) -> dict[str, str]:
        """The JWK for the JWKS: public members only, plus ``kid``, ``alg`` and ``use="sig"``.
        An HMAC key has no public half and is never published: asking is a bug, and refused."""
        if self.is_shared_secret:
            raise KeyMaterialError(f"key {self.kid} is an {self.alg} shared secret: it has no public JWK")
        return {**dict(self.public_members), "use": "sig", "alg": self.alg, "kid": self.kid}

    def private_jwk(self) -> dict[str, Any]:
        """The full private JWK (for an HMAC key its ``oct`` JWK, which verifiers need too).
        Secret!"""
        if self.is_shared_secret:
            return {"kty": "oct", "k": b64url(self.private), "use": "sig", "alg": self.alg, "kid": self.kid}
        private = _to_joserfc_key(_load_private_key(self.private))
        return {**private.as_dict(private=True), "use": "sig", "alg": self.alg, "kid": self.kid}


def generate_key(
    algorithm: str, rsa_key_size: int = DEFAULT_RSA_KEY_SIZE, hmac_key_size: int | None = None
) -> KeyMaterial:
    """Generate a fresh key for ``algorithm`` (``rsa_key_size`` applies to RS*/PS* only,
    ``hmac_key_size`` in bits to HS* only, by default the hash size)."""
    if algorithm not in ALGORITHMS:
        raise KeyMaterialError(
            f"unsupported algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}"
        )
    if is_hmac_algorithm(algorithm):
        bits = HMAC_HASH_BITS[algorithm] if hmac_key_size is None else hmac_key_size
        _check_hmac_key_size(algorithm, bits)
        return _hmac_material(secrets.token_bytes(bits // 8), algorithm)
    private_key: _PrivateKey
    if is_rsa_algorithm(algorithm):
        if rsa_key_size not in RSA_KEY_SIZES:
            raise KeyMaterialError(
                f"unsupported RSA key size {rsa_key_size!r}; expected one of "
                f"{', '.join(map(str, RSA_KEY_SIZES))}"
            )
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_key_size)
    elif algorithm in _CURVE_BY_ALGORITHM:
        private_key = ec.generate_private_key(_CURVE_BY_ALGORITHM[algorithm]())
    else:
        private_key = ed25519.Ed25519PrivateKey.generate()
    return _material(private_key, algorithm)


def load_key(private: bytes, alg: str, *, expected_kid: str | None = None) -> KeyMaterial:
    """Load a PEM private key (PKCS#8 or traditional) and check that it fits ``alg``.

    With ``expected_kid`` (the kid recorded next to the material) a mismatch is reported too:
    it means the Secret was edited by hand. The returned ``private`` is re-encoded as
    PKCS#8. Raises :class:`KeyMaterialError`, whose message never holds key material.
    """
    if alg not in ALGORITHMS:
        raise KeyMaterialError(f"unsupported algorithm {alg!r}; expected one of {', '.join(ALGORITHMS)}")
    if is_hmac_algorithm(alg):
        return _load_hmac_key(private, alg, expected_kid)
    if isinstance(private, str):
        private = private.encode("ascii", errors="replace")
    if not isinstance(private, (bytes, bytearray)):
        raise KeyMaterialError(f"key material must be PEM bytes, got {type(private).__name__}")
    private_key = _load_private_key(bytes(private))
    _check_fits_algorithm(private_key, alg)
    material = _material(private_key, alg)
    if expected_kid is not None and material.kid != expected_kid:
        raise KeyMaterialError(
            f"key material does not match kid {expected_kid!r} (its thumbprint is {material.kid!r})"
        )
    return material


def is_hmac_key_size(alg: str, bits: object) -> bool:
    """Whole bytes from the hash size to the block size (:data:`HMAC_HASH_BITS`, :data:`HMAC_BLOCK_BITS`)."""
    return (isinstance(bits, int) and not isinstance(bits, bool) and bits % 8 == 0
            and HMAC_HASH_BITS[alg] <= bits <= HMAC_BLOCK_BITS[alg])


def _check_hmac_key_size(alg: str, bits: int) -> None:
    if not is_hmac_key_size(alg, bits):
        raise KeyMaterialError(f"{alg} keys are whole bytes from {HMAC_HASH_BITS[alg]} to {HMAC_BLOCK_BITS[alg]} bits, got {bits!r}")


def _load_hmac_key(private: bytes, alg: str, expected_kid: str | None) -> KeyMaterial:
    if not isinstance(private, (bytes, bytearray)):
        raise KeyMaterialError(f"an {alg} key must be bytes, got {type(private).__name__}")
    # A stored key is checked against the floor only: a longer one still verifies its tokens.
    if len(private) * 8 < HMAC_HASH_BITS[alg]:
        raise KeyMaterialError(f"{alg} needs a key of at least {HMAC_HASH_BITS[alg]} bits, got {len(private) * 8} bits")
    material = _hmac_material(bytes(private), alg)
    if expected_kid is not None and material.kid != expected_kid:
        raise KeyMaterialError(f"key material does not match kid {expected_kid!r} (its thumbprint is {material.kid!r})")
    return material


def _hmac_material(key: bytes, alg: str) -> KeyMaterial:
    return KeyMaterial(kid=OctKey.import_key(key).thumbprint(), alg=alg, private=key, public_members=())


def b64url(data: bytes) -> str:
    """Base64url without padding, as JWK members (``k``) are written."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _load_private_key(private: bytes) -> _PrivateKey:
    try:
        private_key = serialization.load_pem_private_key(private, password=None)
    except TypeError:
        # The cause is dropped (`from None`) so no library message can carry key bytes along.
        raise KeyMaterialError("PEM private key is encrypted; expected an unencrypted key") from None
    except Exception:
        raise KeyMaterialError("not a readable PEM private key") from None
    if not isinstance(
        private_key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)
    ):
        raise KeyMaterialError(f"unsupported key type {_describe(private_key)}")
    return private_key


def _check_fits_algorithm(private_key: _PrivateKey, alg: str) -> None:
    if is_rsa_algorithm(alg):
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise KeyMaterialError(f"{alg} needs an RSA key, got {_describe(private_key)}")
        if private_key.key_size < MINIMUM_RSA_KEY_SIZE:
            raise KeyMaterialError(
                f"{alg} needs an RSA key of at least {MINIMUM_RSA_KEY_SIZE} bits, "
                f"got {private_key.key_size} bits"
            )
    elif alg in _CURVE_BY_ALGORITHM:
        wanted = _CURVE_BY_ALGORITHM[alg].name
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or private_key.curve.name != wanted:
            raise KeyMaterialError(
                f"{alg} needs an EC {_JWK_CURVE_NAME[wanted]} key, got {_describe(private_key)}"
            )
    elif not isinstance(private_key, ed25519.Ed25519PrivateKey):
        raise KeyMaterialError(f"{alg} needs an Ed25519 key, got {_describe(private_key)}")


def _describe(private_key: object) -> str:
    if isinstance(private_key, rsa.RSAPrivateKey):
        return f"an RSA key ({private_key.key_size} bits)"
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        curve = private_key.curve.name
        return f"an EC {_JWK_CURVE_NAME.get(curve, curve)} key"
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return "an Ed25519 key"
    return f"a {type(private_key).__name__}"


def _to_joserfc_key(key: Any) -> RSAKey | ECKey | OKPKey:
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return RSAKey.import_key(key)
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return ECKey.import_key(key)
    return OKPKey.import_key(key)


def _material(private_key: _PrivateKey, alg: str) -> KeyMaterial:
    # Only the public half goes to joserfc, so nothing derived here can hold private members.
    public = _to_joserfc_key(private_key.public_key())
    members = public.as_dict(private=False)
    ordered = (("kty", members.pop("kty")), *sorted(members.items()))
    return KeyMaterial(
        kid=public.thumbprint(),
        alg=alg,
        private=private_key.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.PKCS8,
            encryption_algorithm=serialization.NoEncryption(),
        ),
        public_members=tuple((name, str(value)) for name, value in ordered),
    )
