"""The documented signer snippets (Node jose, Go golang-jwt, Java Nimbus) follow the rules of
examples/signers/README.md for every algorithm the CRD allows, as the Python library's unit tests
check for it: kid and a random jti on every token, exp - iat the policy's lifetime or a class's,
a longer lifetime, an unknown class or a claim the signer owns refused, and an unusable version
of the mount never signed with (the last good key signs on).

No control plane: a key made here, written to a kubelet-style volume (tests/kubelet_volume.py),
and each token checked with PyJWT against the key's public JWK.
"""

from __future__ import annotations

import json

import jwt
import pytest

from signing_key_operator.core.keys import PUBLIC_KEY_ALGORITHMS, generate_key
from tests.kubelet_volume import kubelet_update

from .driver import start_snippet_signers

LIFETIMES = {"tokenLifetimeSeconds": 3600, "clockSkewSeconds": 60, "classes": {"admin": 600}}
SNIPPETS = ("Node jose", "Go golang-jwt", "Java Nimbus")


def signing_secret(material, lifetimes=LIFETIMES) -> dict[str, bytes]:
    return {"kid": material.kid.encode(), "alg": material.alg.encode(), "private.pem": material.private,
            "lifetimes.json": json.dumps(lifetimes).encode()}


@pytest.fixture(scope="module")
def snippets(tmp_path_factory):
    volume = tmp_path_factory.mktemp("snippet-rules-volume")
    started = start_snippet_signers(volume, tmp_path_factory.mktemp("snippet-rules-logs"))
    yield volume, started
    for snippet in started.values():
        snippet.close()


@pytest.mark.parametrize("name", SNIPPETS)
def test_the_snippet_signs_every_algorithm_with_kid_jti_and_the_policys_lifetime(snippets, name):
    volume, signers = snippets
    jtis = set()
    for algorithm in sorted(PUBLIC_KEY_ALGORITHMS):
        material = generate_key(algorithm)
        kubelet_update(volume, signing_secret(material))
        public = jwt.PyJWK(material.public_jwk())
        token = signers[name].sign({"sub": "alice", "aud": "orders"})
        header = jwt.get_unverified_header(token)
        assert (header["alg"], header["kid"]) == (algorithm, material.kid), header
        claims = jwt.decode(token, public, algorithms=[algorithm], audience="orders")
        assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 3600, (algorithm, claims)
        admin = jwt.decode(signers[name].sign({"sub": "root"}, lifetime_class="admin"), public,
                           algorithms=[algorithm], options={"verify_aud": False})
        assert admin["exp"] - admin["iat"] == 600, (algorithm, admin)
        shorter = jwt.decode(signers[name].sign({}, lifetime=30), public, algorithms=[algorithm])
        assert shorter["exp"] - shorter["iat"] == 30, (algorithm, shorter)
        jtis |= {claims["jti"], admin["jti"], shorter["jti"]}
    assert len(jtis) == 3 * len(PUBLIC_KEY_ALGORITHMS)  # random, never repeated


@pytest.mark.parametrize("name", SNIPPETS)
@pytest.mark.parametrize("request_, refusal", [
    ({"lifetime": 3601}, "asked for a 3601s token; the policy allows at most 3600s"),
    ({"lifetime": 601, "lifetime_class": "admin"}, "asked for a 601s token; the policy allows at most 600s"),
    ({"lifetime_class": "root"}, 'the policy has no token lifetime class "root"'),
    ({"claims": {"exp": 1}}, "claims? exp (is|are) set by the signer"),
    ({"claims": {"jti": "chosen"}}, "claims? jti (is|are) set by the signer"),
], ids=["longer", "longer-than-class", "unknown-class", "exp", "jti"])
def test_the_snippet_refuses_what_would_outlive_the_policy(snippets, name, request_, refusal):
    volume, signers = snippets
    kubelet_update(volume, signing_secret(generate_key("ES256")))
    with pytest.raises(RuntimeError, match=f"{name} signer: fail: .*{refusal}"):
        signers[name].sign(request_.get("claims", {}), lifetime_class=request_.get("lifetime_class"),
                           lifetime=request_.get("lifetime"))


@pytest.mark.parametrize("name", SNIPPETS)
@pytest.mark.parametrize("unusable", [
    {"lifetimes.json": b'{"tokenLifetimeSeconds": 1.5}'},
    {"lifetimes.json": b'{"tokenLifetimeSeconds": 0}'},
    {"private.pem": b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"},
], ids=["fractional-lifetime", "zero-lifetime", "not-a-key"])
def test_the_snippet_keeps_its_last_good_key_when_a_version_is_unusable(snippets, name, unusable):
    volume, signers = snippets
    good = generate_key("ES256")
    kubelet_update(volume, signing_secret(good))
    assert jwt.get_unverified_header(signers[name].sign({}))["kid"] == good.kid
    kubelet_update(volume, {**signing_secret(generate_key("ES256")), **unusable})
    token = signers[name].sign({})
    assert jwt.get_unverified_header(token)["kid"] == good.kid
    jwt.decode(token, jwt.PyJWK(good.public_jwk()), algorithms=["ES256"])
