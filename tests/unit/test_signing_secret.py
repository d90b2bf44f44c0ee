"""The signing Secret's record of when signers moved to its key, which the planner counts a
replaced key's retention from (invariant 3)."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

import json

from signing_key_operator.core.keys import generate_key
from signing_key_operator.core.spec import PolicySpec
from signing_key_operator.k8s import objects

POLICY = {"apiVersion": "signingkeys.dev/v1alpha1", "kind": "SigningKeyPolicy",
          "metadata": {"name": "api", "namespace": "auth", "uid": "u-1"}}
T0 = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=timezone.utc)
LIFETIMES = PolicySpec.from_resource("api", {}).signer_lifetimes()


def _as_stored(secret: dict) -> dict:
    """The Secret as the API server returns it (the operator writes data, already base64)."""
    return secret


def test_moving_the_signing_secret_records_when_and_which_key_it_replaced():
    old, new = generate_key("ES256"), generate_key("ES256")
    first = _as_stored(objects.signing_secret(POLICY, "api-signing", old, 1, since=T0, replaced=None, lifetimes=LIFETIMES))
    assert objects.signing_view(first).replaced_kid is None
    moved = _as_stored(objects.signing_secret(POLICY, "api-signing", new, 2, since=T0 + timedelta(hours=1), replaced=first, lifetimes=LIFETIMES))
    view = objects.signing_view(moved)
    assert (view.kid, view.since, view.replaced_kid) == (new.kid, T0 + timedelta(hours=1), old.kid)


def test_repairing_an_edited_signing_secret_keeps_when_signers_moved():
    """A rewrite with the same key is not a move: the replaced key's retention still counts
    from the real move, not from the repair (which would drop what it replaced)."""
    old, new = generate_key("ES256"), generate_key("ES256")
    first = _as_stored(objects.signing_secret(POLICY, "api-signing", old, 1, since=T0, replaced=None, lifetimes=LIFETIMES))
    moved = _as_stored(objects.signing_secret(POLICY, "api-signing", new, 2, since=T0 + timedelta(hours=1), replaced=first, lifetimes=LIFETIMES))
    repaired = _as_stored(objects.signing_secret(POLICY, "api-signing", new, 2, since=T0 + timedelta(hours=5), replaced=moved, lifetimes=LIFETIMES))
    view = objects.signing_view(repaired)
    assert (view.kid, view.since, view.replaced_kid) == (new.kid, T0 + timedelta(hours=1), old.kid)


def test_signers_are_told_the_lifetimes_in_whole_seconds():
    spec = PolicySpec.from_resource("api", {"tokenLifetime": "90m", "clockSkew": "30s", "tokenLifetimes": [
        {"name": "admin", "lifetime": "10m"}, {"name": "batch", "lifetime": "1h29m59.9s"}]})
    secret = _as_stored(objects.signing_secret(POLICY, "api-signing", generate_key("ES256"), 1, since=T0, replaced=None,
                                               lifetimes=spec.signer_lifetimes()))
    told = json.loads(base64.b64decode(secret["data"]["lifetimes.json"]))
    # rounded down: a signer must never be allowed a longer token than the policy's
    assert told == {"tokenLifetimeSeconds": 5400, "clockSkewSeconds": 30, "classes": {"admin": 600, "batch": 5399}}


def test_a_lifetime_change_makes_the_signing_secret_stale_and_keeps_when_signers_moved():
    key = generate_key("ES256")
    before = PolicySpec.from_resource("api", {}).signer_lifetimes()
    after = PolicySpec.from_resource("api", {"tokenLifetime": "15m"}).signer_lifetimes()
    first = _as_stored(objects.signing_secret(POLICY, "api-signing", key, 1, since=T0, replaced=None, lifetimes=before))
    assert objects.signing_secret_is_current(first, key, before)
    assert not objects.signing_secret_is_current(first, key, after)
    assert objects.signing_lifetimes(first) == before
    rewritten = _as_stored(objects.signing_secret(POLICY, "api-signing", key, 1, since=T0 + timedelta(hours=2),
                                                  replaced=first, lifetimes=after))
    assert objects.signing_view(rewritten).since == T0
    assert objects.signing_lifetimes(rewritten) == after


def test_a_signing_secret_from_before_lifetimes_is_stale():
    key = generate_key("ES256")
    old = _as_stored(objects.signing_secret(POLICY, "api-signing", key, 1, since=T0, replaced=None, lifetimes=LIFETIMES))
    del old["data"]["lifetimes.json"]
    assert objects.signing_lifetimes(old) == b""
    assert not objects.signing_secret_is_current(old, key, LIFETIMES)
