"""The kubectl plugin's decisions, without an API server: what revoke-kid says it will do, which
TokenRevocations refuse a token, how a token is read, and the status screen for a fixed clock.
The commands themselves run through the real kubectl in tests/integration/test_kubectl_plugin.py."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import pytest

from signing_key_operator.cli.kube import CommandError
from signing_key_operator.cli.kubectl_plugin import decode_unverified, matching_revocations, render_status, revoke_kid_plan
from signing_key_operator.core.spec import PolicySpec

from .test_key_timeline import NOW, STATUS

POLICY = {
    "metadata": {"name": "api-tokens", "namespace": "auth"},
    "spec": {"algorithm": "ES256", "rotation": {"interval": "4m", "publishAhead": "1m"}, "tokenLifetime": "1m",
             "clockSkew": "1s", "jwks": {"maxAge": "10s"}},
    "status": {**STATUS, "signingSecretName": "api-tokens-signing", "jwksConfigMapName": "api-tokens-jwks",
               "conditions": [{"type": "Ready", "status": "True", "reason": "KeysReady", "message": "the active key is published"}]},
}


def kid_of(state: str) -> str:
    return next(key["kid"] for key in STATUS["keys"] if key["state"] == state)


def test_revoking_the_active_key_says_a_fresh_key_signs_at_once_and_its_tokens_are_refused():
    plan = revoke_kid_plan(POLICY, kid_of("active"))
    assert plan.startswith(f"{kid_of('active')} signs now (since 2026-12-02T12:08:00Z).")
    assert "A fresh key is made and signs at once, without being published ahead" in plan
    assert "Every token" in plan and "issued in the last 1m" in plan and "max-age 10s" in plan


def test_revoking_an_hmac_key_speaks_of_the_verification_secret_and_its_mount():
    status = {k: v for k, v in POLICY["status"].items() if k != "jwksConfigMapName"}
    hmac = {**POLICY, "spec": {**POLICY["spec"], "algorithm": "HS256", "jwks": None},
            "status": {**status, "verificationSecretName": "api-tokens-verification"}}
    plan = revoke_kid_plan(hmac, kid_of("active"))
    assert "It leaves the verification Secret api-tokens-verification at once." in plan
    assert "once their mount of that Secret follows" in plan and "max-age" not in plan
    screen = render_status(hmac, [], None, NOW, 100, colour=False)
    assert "verifiers mount Secret api-tokens-verification (shared keys: no public JWK Set)" in screen
    assert "ConfigMap" not in screen


def test_revoking_a_next_key_refuses_no_token():
    plan = revoke_kid_plan(POLICY, kid_of("next"))
    assert "has not signed yet" in plan and "no token is refused" in plan


def test_revoking_a_retired_key_leaves_the_active_key_signing():
    plan = revoke_kid_plan(POLICY, kid_of("retired"))
    assert "signed until 2026-12-02T12:06:00Z" in plan and "the active key goes on signing" in plan


def test_an_unknown_or_already_revoked_kid_is_refused_with_the_policys_keys():
    with pytest.raises(CommandError, match="not-ours is not a key of SigningKeyPolicy api-tokens; its keys: thirdKey"):
        revoke_kid_plan(POLICY, "not-ours")
    with pytest.raises(CommandError, match="is already revoked"):
        revoke_kid_plan(POLICY, kid_of("revoked"))


def test_a_revocation_matches_as_the_operator_publishes_it():
    """By jti until exp + clockSkew, by subject for tokens issued before (or without iat), and
    an invalid TokenRevocation matches nothing: what verifiers of the published entries do."""
    now = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
    spec = PolicySpec.from_resource("api", {"algorithm": "ES256", "tokenLifetime": "1h", "clockSkew": "1m"})
    revocations = [
        {"metadata": {"name": "by-jti"}, "spec": {"policyName": "api", "jti": "j1", "expiresAt": "2026-12-02T13:00:00Z"}},
        {"metadata": {"name": "ended"}, "spec": {"policyName": "api", "jti": "j2", "expiresAt": "2026-12-02T11:00:00Z"}},
        {"metadata": {"name": "in-skew"}, "spec": {"policyName": "api", "jti": "j4", "expiresAt": "2026-12-02T11:59:30Z"}},
        {"metadata": {"name": "by-sub"}, "spec": {"policyName": "api", "subject": "alice", "issuedBefore": "2026-12-02T11:30:00Z"}},
        {"metadata": {"name": "invalid"}, "spec": {"policyName": "api", "jti": "j5"}},
    ]
    early = datetime(2026, 12, 2, 11, 0, tzinfo=timezone.utc).timestamp()
    late = datetime(2026, 12, 2, 11, 45, tzinfo=timezone.utc).timestamp()
    assert matching_revocations(revocations, {"jti": "j1", "sub": "bob", "iat": late}, spec, now) == ["by-jti"]
    assert matching_revocations(revocations, {"jti": "j2", "sub": "bob", "iat": late}, spec, now) == []
    assert matching_revocations(revocations, {"jti": "j4", "sub": "bob", "iat": late}, spec, now) == ["in-skew"]
    assert matching_revocations(revocations, {"jti": "j3", "sub": "alice", "iat": early}, spec, now) == ["by-sub"]
    assert matching_revocations(revocations, {"jti": "j3", "sub": "alice"}, spec, now) == ["by-sub"]
    assert matching_revocations(revocations, {"jti": "j3", "sub": "alice", "iat": late}, spec, now) == []
    assert matching_revocations(revocations, {"jti": "j5", "sub": "bob", "iat": late}, spec, now) == []


def _part(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def test_a_token_is_read_without_verifying_and_its_signature_only_measured():
    header, claims, signature = decode_unverified(f"{_part({'alg': 'ES256', 'kid': 'k'})}.{_part({'sub': 'a'})}.{'A' * 86}")
    assert header == {"alg": "ES256", "kid": "k"} and claims == {"sub": "a"} and signature == 64
    for bad in ("not-a-token", f"{_part([1])}.{_part({})}.AA", "a.b.c"):
        with pytest.raises(CommandError):
            decode_unverified(bad)


def test_the_status_screen_says_ready_what_the_policy_says_and_draws_the_keys():
    screen = render_status(POLICY, [{"time": "2026-12-02T12:08:00Z", "type": "Warning", "reason": "KeyRevoked",
                                     "message": "revoked", "count": 1}], None, NOW, 100, False)
    lines = screen.splitlines()
    assert lines[0] == "SigningKeyPolicy auth/api-tokens: Ready (KeysReady: the active key is published)"
    assert lines[1] == "  ES256; rotates every 4m, a new key published 1m before it signs; tokens live 1m (clockSkew 1s)"
    assert "  12:08:00  Warning KeyRevoked: revoked" in lines
    assert render_status({**POLICY, "status": {}}, [], None, NOW, 100, False).startswith(
        "SigningKeyPolicy auth/api-tokens: not reconciled yet (no Ready condition): is the operator running?")


def test_an_api_server_that_does_not_answer_is_one_sentence_not_a_traceback(tmp_path, capsys):
    import socket

    import yaml

    from signing_key_operator.cli.kubectl_plugin import main

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once the socket is closed
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "auth"}}]}))
    assert main(["status", "api-tokens", "--kubeconfig", str(config)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("kubectl signingkeys status: the API server did not answer (") and "Traceback" not in error
