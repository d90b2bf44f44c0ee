import base64
import hashlib
import json
import re

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwk import import_key

from signing_key_operator.core.keys import (
    HMAC_ALGORITHMS,
    PUBLIC_KEY_ALGORITHMS,
    KeyMaterial,
    KeyMaterialError,
    generate_key,
    load_key,
)

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
EXPECTED_KEY_TYPE = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", "Ed25519"),
}
RFC7638_REQUIRED_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}


@pytest.fixture(scope="module")
def materials():
    # 2048-bit RSA keeps the module fast; the default size has its own test.
    return {alg: generate_key(alg, rsa_key_size=2048) for alg in PUBLIC_KEY_ALGORITHMS}


def _pem_body_lines(pem: bytes) -> list[str]:
    return [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]


def _rfc7638_thumbprint(jwk: dict) -> str:
    """An independent RFC 7638 implementation: required members, sorted, no whitespace."""
    required = {name: jwk[name] for name in RFC7638_REQUIRED_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(required, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


@pytest.mark.parametrize("alg", PUBLIC_KEY_ALGORITHMS)
def test_public_jwk_has_only_public_members_and_identity(materials, alg):
    material = materials[alg]
    jwk = material.public_jwk()
    kty, crv = EXPECTED_KEY_TYPE[alg]
    assert jwk["kty"] == kty
    assert jwk.get("crv") == crv
    assert not PRIVATE_MEMBERS & set(jwk)
    assert (jwk["kid"], jwk["alg"], jwk["use"]) == (material.kid, alg, "sig")
    assert material.public_jwk() is not material.public_jwk()  # callers may mutate their copy


@pytest.mark.parametrize("alg", PUBLIC_KEY_ALGORITHMS)
def test_kid_is_the_rfc7638_sha256_thumbprint(materials, alg):
    material = materials[alg]
    jwk = material.public_jwk()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", material.kid)
    assert material.kid == _rfc7638_thumbprint(jwk)
    assert material.kid == import_key(jwk).thumbprint()


def test_independent_thumbprint_matches_the_rfc7638_example():
    rfc7638_example = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F"
        "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4v"
        "MQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert _rfc7638_thumbprint(rfc7638_example) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("alg", PUBLIC_KEY_ALGORITHMS)
def test_private_material_never_in_repr_or_str(materials, alg):
    material = materials[alg]
    private_jwk = material.private_jwk()
    secrets = [*_pem_body_lines(material.private), private_jwk["d"]]
    for text in (repr(material), str(material), f"{material}", f"{material!r}"):
        assert "PRIVATE" not in text
        for secret in secrets:
            assert secret not in text
    assert material.kid in repr(material)


@pytest.mark.parametrize("alg", PUBLIC_KEY_ALGORITHMS)
def test_private_pem_is_pkcs8_and_signs_tokens_the_public_jwk_verifies(materials, alg):
    material = materials[alg]
    assert material.private.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    token = jwt.encode({"sub": "demo"}, material.private, algorithm=alg, headers={"kid": material.kid})
    assert jwt.get_unverified_header(token)["kid"] == material.kid
    verifying_key = jwt.PyJWK(material.public_jwk())
    assert jwt.decode(token, verifying_key.key, algorithms=[alg]) == {"sub": "demo"}


@pytest.mark.parametrize("alg", PUBLIC_KEY_ALGORITHMS)
def test_private_jwk_is_explicit_and_complete(materials, alg):
    material = materials[alg]
    private_jwk = material.private_jwk()
    assert "d" in private_jwk
    assert (private_jwk["kid"], private_jwk["alg"], private_jwk["use"]) == (material.kid, alg, "sig")
    assert import_key(private_jwk).thumbprint() == material.kid


@pytest.mark.parametrize("alg", PUBLIC_KEY_ALGORITHMS)
def test_load_key_round_trips(materials, alg):
    material = materials[alg]
    loaded = load_key(material.private, alg, expected_kid=material.kid)
    assert loaded == material
    assert loaded.public_jwk() == material.public_jwk()


def test_generate_key_defaults_to_rsa_3072():
    material = generate_key("RS256")
    private_key = serialization.load_pem_private_key(material.private, password=None)
    assert private_key.key_size == 3072


def test_each_generated_key_is_new():
    assert generate_key("ES256").kid != generate_key("ES256").kid


@pytest.mark.parametrize(("alg", "size"), [("HS1", 3072), ("none", 3072), ("RS256", 1024), ("PS256", 3000)])
def test_generate_key_refuses_unsupported_requests(alg, size):
    with pytest.raises(KeyMaterialError):
        generate_key(alg, rsa_key_size=size)


def _pem(private_key, private_format=serialization.PrivateFormat.PKCS8, encryption=None) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        private_format,
        encryption or serialization.NoEncryption(),
    )


def test_load_key_accepts_traditional_rsa_pem_and_reencodes_it_as_pkcs8():
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    traditional = _pem(private_key, serialization.PrivateFormat.TraditionalOpenSSL)
    assert traditional.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    material = load_key(traditional, "PS256")
    assert material.private == _pem(private_key)


@pytest.fixture(scope="module")
def foreign_keys():
    return {
        "rsa1024": rsa.generate_private_key(public_exponent=65537, key_size=1024),
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "secp256k1": ec.generate_private_key(ec.SECP256K1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
    }


@pytest.mark.parametrize(
    ("key_name", "alg", "message"),
    [
        ("p256", "RS256", "RS256 needs an RSA key, got an EC P-256 key"),
        ("rsa1024", "RS256", "at least 2048 bits, got 1024 bits"),
        ("p384", "ES256", "ES256 needs an EC P-256 key, got an EC P-384 key"),
        ("p256", "ES512", "ES512 needs an EC P-521 key"),
        ("secp256k1", "ES256", "ES256 needs an EC P-256 key, got an EC secp256k1 key"),
        ("ed25519", "ES256", "got an Ed25519 key"),
        ("p256", "EdDSA", "EdDSA needs an Ed25519 key"),
    ],
)
def test_load_key_refuses_material_that_does_not_fit_the_algorithm(foreign_keys, key_name, alg, message):
    pem = _pem(foreign_keys[key_name])
    with pytest.raises(KeyMaterialError, match=re.escape(message)) as error:
        load_key(pem, alg)
    _assert_no_key_material(error.value, pem)


def test_load_key_reports_a_kid_mismatch_without_material(materials):
    material = materials["ES256"]
    with pytest.raises(KeyMaterialError, match="does not match kid 'someone-elses-kid'") as error:
        load_key(material.private, "ES256", expected_kid="someone-elses-kid")
    _assert_no_key_material(error.value, material.private)


def test_load_key_refuses_encrypted_pem(foreign_keys):
    encrypted = _pem(
        foreign_keys["p256"], encryption=serialization.BestAvailableEncryption(b"correct horse")
    )
    with pytest.raises(KeyMaterialError, match="encrypted") as error:
        load_key(encrypted, "ES256")
    _assert_no_key_material(error.value, encrypted)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"not a key",
        b"-----BEGIN PRIVATE KEY-----\nQUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\n-----END PRIVATE KEY-----\n",
    ],
)
def test_load_key_refuses_unreadable_material(garbage):
    with pytest.raises(KeyMaterialError, match="not a readable PEM private key") as error:
        load_key(garbage, "ES256")
    _assert_no_key_material(error.value, garbage)


def test_load_key_refuses_a_public_key(materials):
    public_pem = import_key(materials["ES256"].public_jwk()).as_pem(private=False)
    with pytest.raises(KeyMaterialError):
        load_key(public_pem, "ES256")


def test_load_key_refuses_unknown_algorithm(materials):
    with pytest.raises(KeyMaterialError, match="unsupported algorithm 'HS1'"):
        load_key(materials["ES256"].private, "HS1")


def test_key_material_refuses_unknown_algorithm():
    with pytest.raises(KeyMaterialError):
        KeyMaterial(kid="x", alg="HS1", private=b"", public_members=())


def _assert_no_key_material(error: Exception, pem: bytes) -> None:
    """Neither the message nor anything chained to it may carry the PEM."""
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    text = str(error) + repr(error)
    assert "BEGIN" not in text
    for line in _pem_body_lines(pem) if pem.startswith(b"-----") else []:
        assert line not in text


# -- HMAC keys: shared secrets, never published ----------------------------------------------

HASH_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


@pytest.mark.parametrize("alg", HMAC_ALGORITHMS)
def test_an_hmac_key_is_the_hash_size_by_default_and_its_kid_is_the_oct_thumbprint(alg):
    material = generate_key(alg)
    assert len(material.private) == HASH_BYTES[alg]
    canonical = json.dumps({"k": base64.urlsafe_b64encode(material.private).rstrip(b"=").decode(), "kty": "oct"},
                           sort_keys=True, separators=(",", ":")).encode()
    assert material.kid == base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    assert material.public_members == ()
    assert generate_key(alg).private != material.private


@pytest.mark.parametrize("alg", HMAC_ALGORITHMS)
def test_an_hmac_key_has_no_public_jwk_and_never_shows_in_repr(alg):
    material = generate_key(alg)
    with pytest.raises(KeyMaterialError, match="shared secret: it has no public JWK") as refused:
        material.public_jwk()
    encoded = base64.urlsafe_b64encode(material.private).rstrip(b"=").decode()
    for text in (repr(material), str(material), str(refused.value)):
        assert encoded not in text and material.private.hex() not in text


@pytest.mark.parametrize("alg", HMAC_ALGORITHMS)
def test_the_oct_jwk_of_an_hmac_key_verifies_what_it_signs_in_pyjwt(alg):
    material = generate_key(alg)
    jwk = material.private_jwk()
    assert (jwk["kty"], jwk["alg"], jwk["kid"], jwk["use"]) == ("oct", alg, material.kid, "sig")
    token = jwt.encode({"sub": "s"}, material.private, algorithm=alg, headers={"kid": material.kid})
    key = jwt.PyJWKSet.from_dict({"keys": [jwk]})[material.kid]
    assert jwt.decode(token, key, algorithms=[alg])["sub"] == "s"


@pytest.mark.parametrize(("alg", "bits"), [("HS256", 512), ("HS384", 1024), ("HS512", 1024), ("HS384", 400)])
def test_an_hmac_key_can_be_up_to_the_block_size(alg, bits):
    assert len(generate_key(alg, hmac_key_size=bits).private) * 8 == bits


@pytest.mark.parametrize(("alg", "bits"), [("HS256", 128), ("HS384", 256), ("HS512", 384), ("HS256", 1024), ("HS256", 260)])
def test_an_hmac_key_below_the_hash_size_beyond_the_block_or_of_broken_bytes_is_refused(alg, bits):
    with pytest.raises(KeyMaterialError, match=f"{alg} keys are whole bytes from"):
        generate_key(alg, hmac_key_size=bits)


def test_a_stored_hmac_key_round_trips_and_a_short_or_foreign_one_is_refused():
    material = generate_key("HS512")
    assert load_key(material.private, "HS512", expected_kid=material.kid) == material
    with pytest.raises(KeyMaterialError, match="does not match kid"):
        load_key(generate_key("HS512").private, "HS512", expected_kid=material.kid)
    with pytest.raises(KeyMaterialError, match="at least 512 bits, got 256 bits") as short:
        load_key(generate_key("HS256").private, "HS512")
    assert material.private.hex() not in str(short.value)
