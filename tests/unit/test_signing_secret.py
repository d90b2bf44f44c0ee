"""The signing Secret's record of when signers moved to its key, which the planner counts a
replaced key's retention from (invariant 3)."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

from signing_key_operator.core.keys import generate_key
from signing_key_operator.k8s import objects

POLICY = {"apiVersion": "signingkeys.dev/v1alpha1", "kind": "SigningKeyPolicy",
          "metadata": {"name": "api", "namespace": "auth", "uid": "u-1"}}
T0 = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=timezone.utc)


def _as_stored(secret: dict) -> dict:
    """The Secret as the API server returns it (stringData folded into data)."""
    data = {key: base64.b64encode(value.encode()).decode() for key, value in secret["stringData"].items()}
    return {**{k: v for k, v in secret.items() if k != "stringData"}, "data": data}


def test_moving_the_signing_secret_records_when_and_which_key_it_replaced():
    old, new = generate_key("ES256"), generate_key("ES256")
    first = _as_stored(objects.signing_secret(POLICY, "api-signing", old, 1, since=T0, replaced=None))
    assert objects.signing_view(first).replaced_kid is None
    moved = _as_stored(objects.signing_secret(POLICY, "api-signing", new, 2, since=T0 + timedelta(hours=1), replaced=first))
    view = objects.signing_view(moved)
    assert (view.kid, view.since, view.replaced_kid) == (new.kid, T0 + timedelta(hours=1), old.kid)


def test_repairing_an_edited_signing_secret_keeps_when_signers_moved():
    """A rewrite with the same key is not a move: the replaced key's retention still counts
    from the real move, not from the repair (which would drop what it replaced)."""
    old, new = generate_key("ES256"), generate_key("ES256")
    first = _as_stored(objects.signing_secret(POLICY, "api-signing", old, 1, since=T0, replaced=None))
    moved = _as_stored(objects.signing_secret(POLICY, "api-signing", new, 2, since=T0 + timedelta(hours=1), replaced=first))
    repaired = _as_stored(objects.signing_secret(POLICY, "api-signing", new, 2, since=T0 + timedelta(hours=5), replaced=moved))
    view = objects.signing_view(repaired)
    assert (view.kid, view.since, view.replaced_kid) == (new.kid, T0 + timedelta(hours=1), old.kid)
