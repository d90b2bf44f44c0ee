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
