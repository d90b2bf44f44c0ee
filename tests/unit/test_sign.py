"""The signer library against the signing Secret as a pod sees it: the files the operator
writes (objects.signing_secret), mounted the way the kubelet mounts them (..data swaps)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import jwt as pyjwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signing_key_operator.core.keys import ALGORITHMS, generate_key
from signing_key_operator.core.lifetimes import InvalidLifetimes, LifetimeRefused, TokenLifetimes
from signing_key_operator.core.spec import PolicySpec
from signing_key_operator.k8s import objects
from signing_key_operator.sign import Signer, SigningUnavailable
from tests.kubelet_volume import kubelet_update

from .test_signing_secret import POLICY, T0

SPEC = {"tokenLifetime": "1h", "clockSkew": "30s", "tokenLifetimes": [{"name": "admin", "lifetime": "10m"}]}
NOW = 1_800_000_000.25


def _files(material, spec=SPEC) -> dict[str, bytes]:
    """The signing Secret's data, as its files in a mounted volume."""
    secret = objects.signing_secret(POLICY, "api-signing", material, 1, since=T0, replaced=None,
                                    lifetimes=PolicySpec.from_resource("api", spec).signer_lifetimes())
    return {name: base64.b64decode(value) for name, value in secret["data"].items()}


def _verify(token: str, material) -> dict:
    key = material.private if material.is_shared_secret else pyjwt.PyJWK({**material.public_jwk()}).key
    return pyjwt.decode(token, key, algorithms=[material.alg], options={"verify_exp": False, "verify_iat": False, "verify_aud": False})


@pytest.fixture
def volume(tmp_path) -> Path:
    return tmp_path / "signing-key"


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_a_token_carries_kid_iat_exp_and_a_random_jti_and_verifies_with_the_published_key(volume, alg):
    material = generate_key(alg, 2048) if alg[:2] in ("RS", "PS") else generate_key(alg)
    kubelet_update(volume, _files(material))
    signer = Signer.from_directory(volume, clock=lambda: NOW)
    first, second = signer.sign({"sub": "alice", "aud": "orders"}), signer.sign({"sub": "alice"})
    assert pyjwt.get_unverified_header(first) == {"alg": alg, "kid": material.kid, "typ": "JWT"}
    claims = _verify(first, material)
    assert (claims["sub"], claims["aud"], claims["iat"], claims["exp"]) == ("alice", "orders", 1_800_000_000, 1_800_003_600)
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    assert _verify(second, material)["jti"] != claims["jti"]


def test_a_class_or_a_shorter_lifetime_is_honoured_and_a_longer_one_refused(volume):
    material = generate_key("ES256")
    kubelet_update(volume, _files(material))
    signer = Signer.from_directory(volume, clock=lambda: NOW)

    def lifetime(token: str) -> int:
        claims = _verify(token, material)
        return claims["exp"] - claims["iat"]

    assert lifetime(signer.sign({}, lifetime_class="admin")) == 600
    assert lifetime(signer.sign({}, lifetime=90.9)) == 90  # rounded down, never longer than asked
    assert lifetime(signer.sign({}, lifetime_class="admin", lifetime=60)) == 60
    with pytest.raises(LifetimeRefused, match=r"asked for a 3601s token; the policy's tokenLifetime allows at most 3600s"):
        signer.sign({}, lifetime=3601)
    with pytest.raises(LifetimeRefused, match=r"class 'admin' allows at most 600s"):
        signer.sign({}, lifetime_class="admin", lifetime=601)
    with pytest.raises(LifetimeRefused, match=r"no token lifetime class 'service' \(its classes: admin\)"):
        signer.sign({}, lifetime_class="service")
    for bad in (0, -5, float("nan")):
        with pytest.raises(LifetimeRefused, match="must be positive"):
            signer.sign({}, lifetime=bad)


@pytest.mark.parametrize("claim", ["exp", "iat", "jti"])
def test_a_caller_cannot_set_the_claims_the_signer_owns(volume, claim):
    kubelet_update(volume, _files(generate_key("ES256")))
    with pytest.raises(ValueError, match=f"claims {claim} are set by the signer"):
        Signer.from_directory(volume).sign({"sub": "x", claim: 4_000_000_000})


def test_a_kubelet_swap_reaches_the_signer_without_a_restart(volume):
    old, new = generate_key("ES256"), generate_key("ES256")
    kubelet_update(volume, _files(old))
    signer = Signer.from_directory(volume)
    assert pyjwt.get_unverified_header(signer.sign({}))["kid"] == old.kid
    kubelet_update(volume, _files(new, {"tokenLifetime": "15m"}))
    token = signer.sign({})
    assert pyjwt.get_unverified_header(token)["kid"] == new.kid
    claims = _verify(token, new)
    assert claims["exp"] - claims["iat"] == 900


def test_a_plain_directory_is_followed_by_its_files(tmp_path):
    """No ..data (a copied directory, an init container's output): files replaced in place."""
    old, new = generate_key("ES256"), generate_key("EdDSA")
    for name, value in _files(old).items():
        (tmp_path / name).write_bytes(value)
    signer = Signer.from_directory(tmp_path)
    assert pyjwt.get_unverified_header(signer.sign({}))["kid"] == old.kid
    for name, value in _files(new).items():
        (tmp_path / f"{name}.tmp").write_bytes(value)
        os.replace(tmp_path / f"{name}.tmp", tmp_path / name)
    assert pyjwt.get_unverified_header(signer.sign({}))["kid"] == new.kid


def test_an_unusable_new_version_is_reported_and_the_last_good_key_kept(volume):
    good, other = generate_key("ES256"), generate_key("ES256")
    kubelet_update(volume, _files(good))
    signer = Signer.from_directory(volume)
    signer.sign({})
    tampered = {**_files(good), "private.pem": other.private}
    kubelet_update(volume, tampered)
    assert pyjwt.get_unverified_header(signer.sign({}))["kid"] == good.kid
    assert "does not match kid" in signer.last_error
    assert other.private.decode().splitlines()[1] not in signer.last_error
    kubelet_update(volume, _files(other))  # repaired: the next token follows
    assert pyjwt.get_unverified_header(signer.sign({}))["kid"] == other.kid
    assert signer.last_error is None


@pytest.mark.parametrize("files, reason", [
    (lambda f: {k: v for k, v in f.items() if k != "lifetimes.json"}, "has no lifetimes.json"),
    (lambda f: {**f, "lifetimes.json": b'{"tokenLifetimeSeconds": "1h"}'}, "tokenLifetimeSeconds must be a whole number"),
    (lambda f: {**f, "lifetimes.json": b"not json"}, "lifetimes.json is not JSON"),
    (lambda f: {**f, "alg": b"HS1"}, "unsupported algorithm"),
    (lambda f: {**f, "alg": b"HS256"}, "has no key"),
    (lambda f: {**f, "private.pem": b"garbage"}, "not a readable PEM private key"),
])
def test_a_signer_that_never_had_a_usable_version_refuses_to_sign(volume, files, reason):
    material = generate_key("ES256")
    kubelet_update(volume, files(_files(material)))
    with pytest.raises(SigningUnavailable, match=reason) as refused:
        Signer.from_directory(volume).sign({})
    assert material.private.decode().splitlines()[1] not in str(refused.value)


def test_a_missing_mount_is_named(tmp_path):
    with pytest.raises(SigningUnavailable, match="is not a directory"):
        Signer.from_directory(tmp_path / "absent").sign({})


def test_the_lifetimes_document_reads_back_what_the_policy_wrote():
    spec = PolicySpec.from_resource("api", SPEC)
    told = TokenLifetimes.parse(spec.signer_lifetimes())
    assert (told.token_lifetime_seconds, told.clock_skew_seconds, dict(told.classes)) == (3600, 30, {"admin": 600})
    assert told.encode() == spec.signer_lifetimes()
    assert told.longest == 3600


@pytest.mark.parametrize("document, reason", [
    ({"tokenLifetimeSeconds": 600, "clockSkewSeconds": 0, "classes": {"admin": 601}}, "class admin is longer"),
    ({"tokenLifetimeSeconds": 600, "clockSkewSeconds": -1}, "clockSkewSeconds must be"),
    ({"tokenLifetimeSeconds": True, "clockSkewSeconds": 0}, "tokenLifetimeSeconds must be"),
    ({"tokenLifetimeSeconds": 600, "clockSkewSeconds": 0, "classes": []}, "classes must be an object"),
    ({"tokenLifetimeSeconds": 600, "clockSkewSeconds": 0, "classes": {"a": 0}}, "classes.a must be"),
    ([600], "not a JSON object"),
])
def test_a_lifetimes_document_this_version_cannot_follow_is_refused(document, reason):
    with pytest.raises(InvalidLifetimes, match=reason):
        TokenLifetimes.parse(json.dumps(document).encode())


@settings(max_examples=300, deadline=None)
@given(default=st.integers(1, 86400), classes=st.lists(st.integers(1, 86400), max_size=4),
       requested=st.one_of(st.none(), st.floats(0.001, 200000)), pick=st.integers(0, 4))
def test_no_token_outlives_its_class(default, classes, requested, pick):
    lifetimes = TokenLifetimes(default, 60, {f"c{i}": min(seconds, default) for i, seconds in enumerate(classes)})
    lifetime_class = f"c{pick}" if pick < len(classes) else None
    allowed = lifetimes.allowed(lifetime_class)
    try:
        seconds = lifetimes.lifetime(lifetime_class, requested)
    except LifetimeRefused:
        assert requested is not None and requested > allowed
        return
    assert 1 <= seconds <= allowed
    assert requested is None or seconds <= max(1, requested)


def test_an_unusable_version_is_parsed_once_not_for_every_token(volume):
    good = generate_key("ES256")
    kubelet_update(volume, _files(good))
    directory = Signer.from_directory(volume)
    reads = []

    def counted(version):
        reads.append(version)
        return directory._read_files(version)

    signer = Signer(directory._read_version, counted)
    signer.sign({})
    kubelet_update(volume, {**_files(good), "lifetimes.json": b"{}"})
    for _ in range(5):
        assert pyjwt.get_unverified_header(signer.sign({}))["kid"] == good.kid
    assert len(reads) == 2 and "tokenLifetimeSeconds must be" in signer.last_error
