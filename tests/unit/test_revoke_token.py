"""cli/revoke_token.py: the checks revoke-token makes before it asks the API server for anything."""

from __future__ import annotations

import json
import time

import jwt as pyjwt
import pytest

from signing_key_operator.core.jwks import render_jwk_set
from signing_key_operator.core.keys import generate_key
from signing_key_operator.cli.revoke_token import Refusal, verified_claims

KEY = generate_key("ES256")


def _token() -> str:
    return pyjwt.encode({"sub": "alice", "jti": "j-1", "exp": int(time.time()) + 600}, KEY.private,
                        algorithm="ES256", headers={"kid": KEY.kid})


def test_a_token_verifies_against_the_published_set():
    assert verified_claims(_token(), render_jwk_set([KEY.public_jwk()]).decode())["jti"] == "j-1"


@pytest.mark.parametrize("member", ["kty", "crv"])
def test_a_published_set_the_sidecar_would_refuse_is_refused_with_its_reason(member):
    """finding 10, in revoke-token: a JWK Set whose kty is a JSON array made joserfc raise
    TypeError (a traceback) instead of a refusal that says what is wrong with the set."""
    published = json.loads(render_jwk_set([KEY.public_jwk()]))
    published["keys"][0][member] = [published["keys"][0][member]]
    with pytest.raises(Refusal) as refused:
        verified_claims(_token(), json.dumps(published))
    assert "published JWK Set is invalid" in str(refused.value) and f'"{member}" must be' in str(refused.value)


HMAC_KEY = generate_key("HS256")


def _hmac_token(key=HMAC_KEY, alg: str = "HS256") -> str:
    return pyjwt.encode({"sub": "svc", "jti": "h-1", "exp": int(time.time()) + 600}, key.private, algorithm=alg,
                        headers={"kid": key.kid})


def test_an_hs_token_verifies_against_its_policys_verification_set_with_that_algorithm_only():
    from signing_key_operator.core.jwks import render_shared_key_set

    shared = render_shared_key_set([HMAC_KEY.private_jwk()]).decode()
    assert verified_claims(_hmac_token(), shared, "HS256")["jti"] == "h-1"
    with pytest.raises(Refusal, match="does not verify"):
        verified_claims(_hmac_token(), shared, "HS512")  # the policy's algorithm is pinned
    with pytest.raises(Refusal, match="does not verify"):
        verified_claims(_hmac_token(generate_key("HS256")), shared, "HS256")  # another key, an unknown kid
    with pytest.raises(Refusal, match="does not hold a set of oct keys"):
        verified_claims(_hmac_token(), render_jwk_set([KEY.public_jwk()]).decode(), "HS256")


def test_an_hs_token_never_verifies_against_a_public_key_policy():
    """HS256 with a public key's bytes as the secret is the classic confusion: refused."""
    published = render_jwk_set([KEY.public_jwk()]).decode()
    with pytest.raises(Refusal, match="does not verify"):
        verified_claims(_hmac_token(), published)
