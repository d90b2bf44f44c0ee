"""Which keys a policy's status lists: the CRD caps status.keys, the planner caps nothing, so the
reconciler chooses within the cap (finding 7 of issue 16; the real API server's side is in
tests/integration/test_status_keys.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

from signing_key_operator.core.planner import KeyReason, KeyRecord, KeyState
from signing_key_operator.controller.reconciler import STATUS_KEYS_LIMIT, _listed_keys

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "signingkeypolicies.yaml"
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _record(serial: int, state: KeyState) -> KeyRecord:
    moment = T0 + timedelta(minutes=serial)
    times = {KeyState.ACTIVE: {"activated": moment}, KeyState.RETIRED: {"activated": moment, "retired": moment},
             KeyState.REVOKED: {"revoked": moment}, KeyState.NEXT: {}}[state]
    return KeyRecord(serial=serial, kid=f"kid-{serial:04d}-AAAAAAAA", alg="ES256", state=state, created=moment,
                     reason=KeyReason.TIMER, **times)


def test_the_status_key_limit_is_the_crds_max_items():
    """finding 7: the reconciler's limit and the CRD's maxItems are one number."""
    crd = yaml.safe_load(CRD_FILE.read_text())
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["keys"]["maxItems"] == STATUS_KEYS_LIMIT
    assert status["keysNotListed"]["type"] == "integer"


def test_status_lists_the_signing_and_next_key_and_the_newest_others_within_the_limit():
    """finding 7: with more keys than status can hold, the signing and the next key are always
    listed (even when newer revoked keys outnumber the limit), then the newest others."""
    records = [_record(1, KeyState.RETIRED), _record(2, KeyState.ACTIVE), _record(3, KeyState.NEXT)]
    records += [_record(serial, KeyState.REVOKED) for serial in range(4, 4 + STATUS_KEYS_LIMIT + 5)]

    listed = _listed_keys(records)

    assert len(listed) == STATUS_KEYS_LIMIT
    serials = [record.serial for record in listed]
    assert serials == sorted(serials)
    assert {2, 3} <= set(serials)
    newest = max(record.serial for record in records)
    assert serials[2:] == list(range(newest - STATUS_KEYS_LIMIT + 3, newest + 1))


def test_status_lists_every_key_below_the_limit():
    """finding 7: below the limit nothing is left out."""
    records = [_record(serial, KeyState.RETIRED) for serial in range(1, 10)] + [_record(10, KeyState.ACTIVE)]
    assert _listed_keys(list(reversed(records))) == records
