"""More keys than the CRD lets status.keys hold (finding 7 of issue 16): status lists the
signing key, the next key and the newest others, says how many it leaves out, and stays current."""

from __future__ import annotations

import pytest

from signing_key_operator.controller.reconciler import STATUS_KEYS_LIMIT

from .harness import FAST_SPEC, Policies, wait_until


@pytest.fixture(autouse=True)
def _running_operator(operator):
    yield
    assert operator.process.poll() is None, "the operator exited:\n" + operator.logs()[-3000:]


def _signing_kid(policies: Policies, name: str) -> str | None:
    data = policies.secret_data(f"{name}-signing")
    return data["kid"].decode() if data else None


def test_a_revocation_storm_past_the_status_key_limit_keeps_status_current(policies):
    """finding 7: with 66 keys every status patch got 422 and status froze with an activeKid
    other than the signing Secret's. Each emergency revocation keeps the revoked key for its
    retention (tokenLifetime 1h here) and makes a fresh one, so 65 of them make 66 keys."""
    policies.create("stormy", {**FAST_SPEC, "rotation": {"interval": "1h", "publishAhead": "4s"}, "tokenLifetime": "1h"})
    policies.wait_ready("stormy")
    for _ in range(STATUS_KEYS_LIMIT + 1):
        victim = _signing_kid(policies, "stormy")
        policies.annotate("stormy", {"signingkeys.dev/revoke-kid": victim})
        wait_until(lambda: _signing_kid(policies, "stormy") not in (None, victim), 30, f"a fresh key after revoking {victim}")
    signing = _signing_kid(policies, "stormy")
    assert len(policies.key_secrets("stormy")) == STATUS_KEYS_LIMIT + 2

    status = wait_until(lambda: (lambda s: s if s.get("activeKid") == signing else None)(policies.get("stormy")["status"]),
                        30, f"status to show the signing key {signing}")
    assert len(status["keys"]) == STATUS_KEYS_LIMIT
    assert status["keysNotListed"] == 2
    assert any(key["kid"] == signing and key["state"] == "active" for key in status["keys"])
    assert policies.condition("stormy") == "True"
