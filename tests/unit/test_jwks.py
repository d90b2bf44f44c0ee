"""core/jwks.py: canonical rendering and strict validation of the public JWK Set."""

from __future__ import annotations

import functools
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc.jwk import ECKey, OKPKey, RSAKey

from signing_key_operator.core.jwks import (
    MAX_JWK_SET_BYTES,
    PRIVATE_MEMBERS,
    REASONS,
    InvalidJwkSet,
    JwkSet,
    parse_jwk_set,
    render_jwk_set,
    validate_jwk_set,
)

# ---------------------------------------------------------------- keys, generated at test time


@functools.cache
def _private(kind: str, n: int = 0):
    if kind == "RSA":
        return RSAKey.import_key(rsa.generate_private_key(65537, 2048))
    if kind == "EC":
        return ECKey.import_key(ec.generate_private_key(ec.SECP256R1()))
    if kind == "EC384":
        return ECKey.import_key(ec.generate_private_key(ec.SECP384R1()))
    return OKPKey.import_key(ed25519.Ed25519PrivateKey.generate())


_ALG = {"RSA": "RS256", "EC": "ES256", "EC384": "ES384", "OKP": "EdDSA"}


def public_jwk(kind: str = "RSA", n: int = 0, *, alg: bool = True) -> dict:
    key = _private(kind, n)
    jwk = dict(key.as_dict(private=False))
    jwk["kid"] = key.thumbprint()
    jwk["use"] = "sig"
    if alg:
        jwk["alg"] = _ALG[kind]
    return jwk


def private_jwk(kind: str = "RSA", n: int = 0) -> dict:
    key = _private(kind, n)
    jwk = dict(key.as_dict(private=True))
    jwk["kid"] = key.thumbprint()
    return jwk


def doc(*keys: dict) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


def refused(data: bytes | str, reason: str) -> InvalidJwkSet:
    with pytest.raises(InvalidJwkSet) as info:
        parse_jwk_set(data)
    assert info.value.reason == reason, str(info.value)
    assert info.value.reason in REASONS
    return info.value


# ---------------------------------------------------------------- render


def test_render_is_canonical_and_keeps_key_order():
    keys = [public_jwk("OKP"), public_jwk("RSA"), public_jwk("EC")]
    body = render_jwk_set(keys)
    assert body.endswith(b"}\n") and body.count(b"\n") == 1
    assert b" " not in body
    obj = json.loads(body)
    assert [k["kid"] for k in obj["keys"]] == [k["kid"] for k in keys]
    assert list(obj) == ["keys"]
    for k in obj["keys"]:
        assert list(k) == sorted(k)
    assert body == (json.dumps({"keys": keys}, sort_keys=True, separators=(",", ":")) + "\n").encode()
    # deterministic: member order of the input dicts does not matter
    shuffled = [dict(reversed(list(k.items()))) for k in keys]
    assert render_jwk_set(shuffled) == body
    assert parse_jwk_set(body).kids == tuple(k["kid"] for k in keys)


def test_render_validates_before_returning():
    with pytest.raises(InvalidJwkSet) as info:
        render_jwk_set([public_jwk("EC"), private_jwk("RSA")])
    assert info.value.reason == "private_member"
    with pytest.raises(InvalidJwkSet) as info:
        render_jwk_set([])
    assert info.value.reason == "empty"
    with pytest.raises(InvalidJwkSet):
        render_jwk_set([{**public_jwk("EC"), "x": float("nan")}])
    with pytest.raises(TypeError):
        render_jwk_set({"keys": []})  # type: ignore[arg-type]


def test_render_escapes_non_ascii():
    body = render_jwk_set([{**public_jwk("OKP"), "kid": "schlüssel-1"}])
    assert body.isascii()
    assert parse_jwk_set(body).kids == ("schlüssel-1",)


# ---------------------------------------------------------------- parse: the good path


def test_parse_valid_set_exposes_kids_and_algs():
    keys = [public_jwk("RSA"), public_jwk("EC"), public_jwk("OKP"), public_jwk("EC384", alg=False)]
    jwks = parse_jwk_set(doc(*keys))
    assert isinstance(jwks, JwkSet)
    assert jwks.kids == tuple(k["kid"] for k in keys)
    assert jwks.algs == ("ES256", "EdDSA", "RS256")
    assert len(jwks) == 4
    assert keys[1]["kid"] in jwks and "nope" not in jwks
    assert jwks.get(keys[2]["kid"])["crv"] == "Ed25519"
    assert jwks.get("nope") is None
    assert jwks.to_dict() == {"keys": keys}
    assert validate_jwk_set({"keys": keys}).kids == jwks.kids


def test_parse_accepts_str_and_key_ops():
    key = {**public_jwk("EC"), "key_ops": ["verify"]}
    assert parse_jwk_set(json.dumps({"keys": [key]})).keys == (key,)


SECRET = "c2VjcmV0LXZhbHVlLW5ldmVyLXNob3du"


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"keys": [public_jwk("EC")], "d": SECRET}, "private_member"),
        ({"keys": [{**public_jwk("EC"), "private": {"d": SECRET}}]}, "private_member"),
        ({"keys": [{**public_jwk("RSA"), "backup": [{"p": SECRET, "q": SECRET}]}]}, "private_member"),
        ({"keys": [public_jwk("OKP")], "meta": {"rotation": [{"d": SECRET}]}}, "private_member"),
        ({"keys": [public_jwk("EC")], "note": SECRET}, "unknown_member"),
        ({"keys": [{**public_jwk("EC"), "x5t#S256": SECRET}]}, "unknown_member"),
        ({"keys": [{**public_jwk("EC"), "ext": {"v": SECRET}}]}, "unknown_member"),
        ({"keys": [{**public_jwk("RSA"), "x": SECRET}]}, "unknown_member"),
        ({"keys": [{**public_jwk("OKP"), "y": SECRET}]}, "unknown_member"),
        ({"keys": [{**public_jwk("EC"), SECRET: 1}]}, "unknown_member"),
    ],
    ids=["top-level d", "d nested in a key", "p q in a list in a key", "d nested beside the keys",
         "unknown top-level member", "x5t#S256", "unknown object in a key", "EC member in an RSA key",
         "EC member in an OKP key", "secret as a member name"],
)
def test_only_the_public_members_of_each_key_type_are_accepted(document, reason):
    """finding 4: only each key's known private members were checked, so a top-level "d" or a
    nested "private": {"d": ...} was served, private value included. Now only an allow-list of
    public members per key type (and "keys" at the top level) passes; a private member name at
    any depth is reported as such."""
    exc = refused(json.dumps(document), reason)
    assert SECRET not in str(exc) and SECRET[:17] not in str(exc)
    if reason == "private_member":
        assert "private member(s)" in str(exc)


# ---------------------------------------------------------------- parse: every refusal


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "invalid_json"),
        (b"   \n", "invalid_json"),
        (b"{", "invalid_json"),
        (b"not json", "invalid_json"),
        (b"\xff\xfe{}", "not_utf8"),
        (b'{"keys": [NaN]}', "invalid_json"),
        (b"[]", "not_an_object"),
        (b"null", "not_an_object"),
        (b'"keys"', "not_an_object"),
        (b"{}", "keys_not_a_list"),
        (b'{"keys": {}}', "keys_not_a_list"),
        (b'{"keys": "abc"}', "keys_not_a_list"),
        (b'{"keys": []}', "empty"),
        (b'{"keys": [1]}', "key_not_an_object"),
        (b'{"keys": [[]]}', "key_not_an_object"),
        (b'{"keys": [], "keys": []}', "duplicate_member"),
    ],
)
def test_structural_refusals(data, reason):
    refused(data, reason)


def test_too_large():
    refused(b" " * (MAX_JWK_SET_BYTES + 1), "too_large")


@pytest.mark.parametrize(
    ("kind", "member"),
    [("RSA", "n"), ("RSA", "e"), ("EC", "crv"), ("EC", "x"), ("EC", "y"), ("OKP", "crv"), ("OKP", "x")],
)
def test_missing_required_member(kind, member):
    key = public_jwk(kind)
    del key[member]
    exc = refused(doc(key), "missing_member")
    assert member in str(exc)


def test_missing_kty():
    key = public_jwk("EC")
    del key["kty"]
    refused(doc(key), "missing_member")


@pytest.mark.parametrize("kid", [None, "", 7])
def test_missing_or_bad_kid(kid):
    key = public_jwk("EC")
    if kid is None:
        del key["kid"]
    else:
        key["kid"] = kid
    refused(doc(key), "missing_kid")


def test_duplicate_kids():
    a, b = public_jwk("EC"), public_jwk("OKP")
    b["kid"] = a["kid"]
    exc = refused(doc(a, b), "duplicate_kid")
    assert a["kid"] in str(exc)


@pytest.mark.parametrize("member", sorted(PRIVATE_MEMBERS))
def test_any_private_member_is_refused(member):
    key = public_jwk("RSA")
    secret = "c2VjcmV0LXZhbHVlLW5ldmVyLXNob3du"
    key[member] = secret if member != "oth" else [{"r": secret, "d": secret, "t": secret}]
    exc = refused(doc(public_jwk("EC"), key), "private_member")
    assert member in str(exc)
    assert secret not in str(exc) and secret not in repr(exc.args)


@pytest.mark.parametrize("kind", ["RSA", "EC", "OKP"])
def test_full_private_keys_are_refused_without_leaking_material(kind):
    key = private_jwk(kind)
    exc = refused(doc(key), "private_member")
    for member, value in key.items():
        if member in PRIVATE_MEMBERS | {"n", "x", "y"}:
            assert value not in str(exc)


def test_private_member_wins_over_other_errors():
    # a later key leaks "d", an earlier key is malformed: the leak is what gets reported
    bad = public_jwk("EC")
    del bad["y"]
    refused(doc(bad, private_jwk("OKP")), "private_member")


def test_symmetric_keys_are_refused_outright():
    refused(doc({"kty": "oct", "kid": "h1", "alg": "HS256"}), "symmetric_key")
    refused(doc(public_jwk("EC"), {"kty": "oct", "kid": "h1", "k": "c2VjcmV0"}), "private_member")


@pytest.mark.parametrize("kty", ["foo", "RSA-HSM", "oct-ish"])
def test_unsupported_kty(kty):
    refused(doc({**public_jwk("EC"), "kty": kty}), "unsupported_kty")


def test_invalid_base64url_members():
    for member, value in [("n", "not base64!"), ("e", "AQAB="), ("n", 12345), ("e", "")]:
        key = public_jwk("RSA")
        key[member] = value
        refused(doc(key), "invalid_member")
    key = public_jwk("EC")
    key["x"] = key["x"] + "+"
    refused(doc(key), "invalid_member")


def test_ec_point_not_on_curve():
    key = public_jwk("EC")
    x = key["x"]
    key["x"] = ("B" if x[0] == "A" else "A") + x[1:]
    exc = refused(doc(key), "invalid_key")
    assert key["x"] not in str(exc) and key["y"] not in str(exc)


def test_ec_coordinates_must_be_full_length():
    key = public_jwk("EC")
    key["x"] = key["x"][:-4]
    refused(doc(key), "invalid_member")


def test_unsupported_curves():
    refused(doc({**public_jwk("EC"), "crv": "P-192"}), "unsupported_curve")
    refused(doc({**public_jwk("OKP"), "crv": "Ed1"}), "unsupported_curve")


def test_okp_bad_length():
    key = public_jwk("OKP")
    key["x"] = key["x"][:20]
    refused(doc(key), "invalid_key")


def test_rsa_invalid_numbers():
    key = public_jwk("RSA")
    key["e"] = "Ag"  # e = 2: even
    refused(doc(key), "invalid_key")
    key = public_jwk("RSA")
    key["n"] = "AA" + key["n"]  # leading zero octet
    refused(doc(key), "invalid_member")


@pytest.mark.parametrize(
    ("kind", "alg"),
    [("RSA", "ES256"), ("RSA", "HS256"), ("EC", "RS256"), ("EC", "ES384"), ("OKP", "ES256"), ("EC384", "ES256")],
)
def test_alg_must_fit_the_key(kind, alg):
    refused(doc({**public_jwk(kind), "alg": alg}), "alg_mismatch")


@pytest.mark.parametrize(("kind", "alg"), [("RSA", "PS384"), ("RSA", "RS512"), ("EC384", "ES384"), ("OKP", "Ed25519")])
def test_alg_fitting_the_key_is_accepted(kind, alg):
    assert parse_jwk_set(doc({**public_jwk(kind), "alg": alg})).algs == (alg,)


def test_bad_use_and_key_ops():
    refused(doc({**public_jwk("EC"), "use": "sign"}), "invalid_member")
    refused(doc({**public_jwk("EC"), "alg": ""}), "invalid_member")
    refused(doc({**public_jwk("EC"), "key_ops": "verify"}), "invalid_member")


_NOT_STRINGS = [None, 7, 1.5, True, [], ["P-256"], {}, {"crv": "P-256"}]


@pytest.mark.parametrize("kind", ["RSA", "EC", "OKP"])
@pytest.mark.parametrize("value", _NOT_STRINGS, ids=repr)
def test_a_member_that_is_not_a_string_is_refused_never_a_crash(kind, value):
    """finding 10: a JSON array or object as "crv" raised TypeError (unhashable) instead of a
    refusal; every member that must be a string is refused the same way, whatever its JSON type."""
    for member in sorted(set(public_jwk(kind)) | {"use", "alg"}):
        key = {**public_jwk(kind), member: value}
        with pytest.raises(InvalidJwkSet) as info:
            parse_jwk_set(doc(key))
        assert info.value.reason in {"invalid_member", "missing_kid"}, (member, info.value.reason)


def test_messages_name_the_key_but_not_the_material():
    key = public_jwk("RSA")
    key["e"] = "Ag"
    exc = refused(doc(public_jwk("EC"), key), "invalid_key")
    assert "key #1" in str(exc) and key["kid"] in str(exc)
    assert key["n"] not in str(exc)


# ---------------------------------------------------------------- properties

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(data):
    try:
        parse_jwk_set(data)
    except InvalidJwkSet as exc:
        assert exc.reason in REASONS


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_arbitrary_json_never_crashes(obj):
    for candidate in (obj, {"keys": obj}, {"keys": [obj]}):
        try:
            validate_jwk_set(candidate)
        except InvalidJwkSet as exc:
            assert exc.reason in REASONS


_KINDS = ["RSA", "EC", "OKP", "EC384"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(_KINDS), min_size=1, max_size=4, unique=True),
    st.data(),
)
def test_roundtrip_and_private_leak_detection(kinds, data):
    keys = [public_jwk(k) for k in kinds]
    body = render_jwk_set(keys)
    assert parse_jwk_set(body).kids == tuple(k["kid"] for k in keys)
    assert render_jwk_set(parse_jwk_set(body).to_dict()["keys"]) == body
    # adding any private member anywhere is always refused
    victim = data.draw(st.integers(0, len(keys) - 1))
    member = data.draw(st.sampled_from(sorted(PRIVATE_MEMBERS)))
    keys[victim] = {**keys[victim], member: "AQAB"}
    with pytest.raises(InvalidJwkSet) as info:
        render_jwk_set(keys)
    assert info.value.reason == "private_member"



def test_an_hmac_policys_verification_set_is_one_the_sidecar_refuses_to_serve():
    from signing_key_operator.core.jwks import render_shared_key_set
    from signing_key_operator.core.keys import generate_key

    keys = [generate_key("HS256"), generate_key("HS512")]
    document = render_shared_key_set([key.private_jwk() for key in keys])
    assert [key["kid"] for key in json.loads(document)["keys"]] == [key.kid for key in keys]
    assert render_shared_key_set([key.private_jwk() for key in keys]) == document  # canonical: same keys, same bytes
    with pytest.raises(InvalidJwkSet) as refused:
        parse_jwk_set(document)
    assert refused.value.reason in ("private_member", "symmetric_key")
    assert json.loads(document)["keys"][0]["k"] not in str(refused.value)


def test_the_verification_set_holds_nothing_but_oct_keys():
    from signing_key_operator.core.jwks import render_shared_key_set
    from signing_key_operator.core.keys import generate_key

    with pytest.raises(ValueError, match="only oct keys"):
        render_shared_key_set([generate_key("ES256").public_jwk()])
    with pytest.raises(ValueError, match="only oct keys"):
        render_shared_key_set([{**generate_key("HS256").private_jwk(), "x5c": ["..."]}])
