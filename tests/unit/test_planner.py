"""The lifecycle planner: one example test per rule (fixed clock), then property tests that
drive random timelines and check the design's invariants after every step, crash and restart."""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from signing_key_operator.core.keys import KeyMaterial, generate_key
from signing_key_operator.core.planner import (
    InconsistentKeysError,
    KeyReason,
    KeyRecord,
    KeyState,
    Plan,
    Requests,
    SigningSecretView,
    is_plausible_kid,
    key_secret_name,
    plan,
)
from signing_key_operator.core.spec import PolicySpec

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
FAKE_PRIVATE_MARKER = "FAKE-PRIVATE-MATERIAL"


class FakeKeys:
    """A fast, deterministic key factory: kids look like real thumbprints."""

    def __init__(self) -> None:
        self.made = 0

    def for_spec(self, spec: PolicySpec):
        return lambda: self.make(spec.algorithm)

    def make(self, alg: str) -> KeyMaterial:
        self.made += 1
        digest = hashlib.sha256(f"fake-key-{self.made}".encode()).digest()
        kid = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        return KeyMaterial(
            kid=kid,
            alg=alg,
            private=f"-----BEGIN PRIVATE KEY-----\n{FAKE_PRIVATE_MARKER}-{self.made}\n".encode(),
            public_members=(("kty", "EC"),),
        )


def make_spec(**changes) -> PolicySpec:
    base = PolicySpec.from_resource(
        "demo",
        {"rotation": {"interval": "24h", "publishAhead": "2h"}, "tokenLifetime": "1h"},
    )
    return replace(base, **changes)


SPEC = make_spec()


class Driver:
    """Runs plans against a store of records the way the operator would, with a fake clock."""

    def __init__(self, spec: PolicySpec = SPEC, now: datetime = T0) -> None:
        self.spec = spec
        self.now = now
        self.keys: tuple[KeyRecord, ...] = ()
        self.requests = Requests()
        self.factory = FakeKeys()

    def plan(self, **kwargs) -> Plan:
        return plan(self.spec, self.keys, self.now, self.factory.for_spec(self.spec), self.requests, **kwargs)

    def step(self, **kwargs) -> Plan:
        result = self.plan(**kwargs)
        self.keys = result.keys
        self.requests = with_handled(self.requests, result)
        return result

    def advance_to(self, moment: datetime) -> Plan:
        self.now = moment
        return self.step()

    def by_state(self, state: KeyState) -> list[KeyRecord]:
        return [record for record in self.keys if record.state is state]

    @property
    def active(self) -> KeyRecord:
        (active,) = self.by_state(KeyState.ACTIVE)
        return active

    @property
    def next_key(self) -> KeyRecord:
        (waiting,) = self.by_state(KeyState.NEXT)
        return waiting


def with_handled(requests: Requests, result: Plan) -> Requests:
    return replace(
        requests,
        rotate_handled=result.handled.rotate if result.handled.rotate is not None else requests.rotate_handled,
        revoke_handled=result.handled.revoke if result.handled.revoke is not None else requests.revoke_handled,
    )


def assert_idle(result: Plan, keys) -> None:
    assert result.keys == tuple(keys)
    assert not result.has_changes
    assert result.events == ()
    assert result.rotations == ()
    assert not result.handled


def reasons(result: Plan) -> list[str]:
    return [event.reason for event in result.events]


def bootstrapped(spec: PolicySpec = SPEC) -> Driver:
    driver = Driver(spec)
    driver.step()
    return driver


def rotated_once(spec: PolicySpec = SPEC) -> Driver:
    """Active key 2 (timer), retired key 1, right after the first rotation."""
    driver = bootstrapped(spec)
    driver.advance_to(T0 + spec.rotation_interval - spec.publish_ahead)
    driver.advance_to(T0 + spec.rotation_interval)
    return driver


# -- bootstrap and the timer ----------------------------------------------------------------


def test_bootstrap_makes_one_key_that_signs_at_once():
    driver = Driver()
    result = driver.step()
    (record,) = result.keys
    assert record.state is KeyState.ACTIVE
    assert (record.serial, record.reason, record.emergency) == (1, KeyReason.BOOTSTRAP, True)
    assert record.created == record.activated == T0
    assert set(result.new_material) == {1}
    assert result.new_material[1].kid == record.kid
    assert result.created == (record,)
    assert result.active == record
    assert result.published == (record,)
    assert result.rotations == ()
    assert [(event.type, event.reason) for event in result.events] == [("Normal", "KeyActivated")]
    assert result.next_wakeup == T0 + DAY - 2 * HOUR


def test_steady_state_is_idle():
    driver = bootstrapped()
    assert_idle(driver.plan(), driver.keys)
    driver.now = T0 + DAY - 2 * HOUR - timedelta(microseconds=1)
    assert_idle(driver.plan(), driver.keys)


def test_timer_publishes_the_next_key_publish_ahead_before_the_interval_ends():
    driver = bootstrapped()
    first = driver.active
    result = driver.advance_to(T0 + DAY - 2 * HOUR)
    assert reasons(result) == ["KeyPublished"]
    waiting = driver.next_key
    assert (waiting.serial, waiting.reason, waiting.emergency) == (2, KeyReason.TIMER, False)
    assert waiting.created == T0 + DAY - 2 * HOUR
    assert waiting.activate_at == T0 + DAY
    assert driver.active == first
    assert [record.kid for record in result.published] == [first.kid, waiting.kid]
    assert result.next_wakeup == T0 + DAY
    assert_idle(driver.plan(), driver.keys)


def test_next_key_activates_when_due_and_the_old_key_retires():
    driver = bootstrapped()
    first = driver.active
    driver.advance_to(T0 + DAY - 2 * HOUR)
    driver.now = T0 + DAY - timedelta(microseconds=1)
    assert_idle(driver.plan(), driver.keys)
    result = driver.advance_to(T0 + DAY)
    assert reasons(result) == ["KeyActivated", "KeyRetired"]
    assert result.rotations == (KeyReason.TIMER,)
    assert driver.active.serial == 2 and driver.active.activated == T0 + DAY
    (retired,) = driver.by_state(KeyState.RETIRED)
    assert retired.kid == first.kid
    assert retired.retired == T0 + DAY
    assert retired.removal_due == T0 + DAY + SPEC.retention
    assert {record.serial for record in result.changed} == {1, 2}
    # activation leaves the published set (and so the served JWKS and its ETag) unchanged
    assert [record.kid for record in result.published] == [first.kid, driver.active.kid]
    assert result.next_wakeup == T0 + DAY + SPEC.retention


def test_retired_key_is_removed_when_its_retention_passes():
    driver = rotated_once()
    (retired,) = driver.by_state(KeyState.RETIRED)
    driver.now = retired.removal_due - timedelta(microseconds=1)
    assert_idle(driver.plan(), driver.keys)
    result = driver.advance_to(retired.removal_due)
    assert result.removed == (retired,)
    assert reasons(result) == ["KeyRemoved"]
    assert [record.serial for record in driver.keys] == [2]


def test_a_retired_key_the_signing_secret_still_holds_stays_published_past_its_retention():
    """Signers sign with what the signing Secret holds: when pointing it at the new key failed
    (or the operator died before) for longer than the retention, the old key still signs."""
    driver = rotated_once()
    (retired,) = driver.by_state(KeyState.RETIRED)
    lagging = SigningSecretView(kid=retired.kid, since=T0, replaced_kid=None)
    driver.now = retired.removal_due + HOUR
    result = driver.step(signing=lagging)
    assert retired.kid in [record.kid for record in result.published]
    assert result.removed == ()


def test_the_replaced_key_keeps_a_full_retention_from_when_the_signing_secret_moved():
    driver = rotated_once()
    (retired,) = driver.by_state(KeyState.RETIRED)
    moved = retired.removal_due + HOUR
    signing = SigningSecretView(kid=driver.active.kid, since=moved, replaced_kid=retired.kid)
    driver.now = moved
    result = driver.step(signing=signing)
    (kept,) = driver.by_state(KeyState.RETIRED)
    assert kept.removal_due == moved + SPEC.retention
    assert result.removed == () and retired.kid in [record.kid for record in result.published]
    driver.now = moved + SPEC.retention - timedelta(microseconds=1)
    assert_idle(driver.plan(signing=signing), driver.keys)
    assert driver.advance_to(moved + SPEC.retention).removed == (kept,)


def test_a_signing_secret_that_moved_on_time_changes_no_retention():
    driver = rotated_once()
    (retired,) = driver.by_state(KeyState.RETIRED)
    signing = SigningSecretView(kid=driver.active.kid, since=retired.retired, replaced_kid=retired.kid)
    assert_idle(driver.plan(signing=signing), driver.keys)
    driver.now = retired.removal_due
    assert driver.plan(signing=signing).removed == (retired,)


def test_retention_grows_with_the_spec_and_never_shrinks():
    driver = rotated_once()
    (retired,) = driver.by_state(KeyState.RETIRED)
    driver.spec = make_spec(token_lifetime=5 * HOUR)
    result = driver.step()
    (grown,) = driver.by_state(KeyState.RETIRED)
    assert grown.removal_due == retired.retired + driver.spec.retention
    assert result.changed == (grown,)
    driver.spec = make_spec(token_lifetime=timedelta(minutes=5))
    result = driver.step()
    assert not result.has_changes
    assert driver.by_state(KeyState.RETIRED) == [grown]


def test_timer_key_follows_a_longer_interval_set_after_it_was_published():
    driver = bootstrapped()
    driver.advance_to(T0 + DAY - 2 * HOUR)
    driver.spec = make_spec(rotation_interval=2 * DAY)
    result = driver.step()
    assert driver.next_key.activate_at == T0 + 2 * DAY
    assert result.changed == (driver.next_key,)
    assert driver.advance_to(T0 + DAY).rotations == ()


def test_next_key_never_activates_before_the_current_publish_ahead():
    driver = bootstrapped()
    driver.advance_to(T0 + DAY - 2 * HOUR)
    driver.spec = make_spec(publish_ahead=5 * HOUR)
    driver.step()
    assert driver.next_key.activate_at == T0 + DAY - 2 * HOUR + 5 * HOUR
    driver.spec = make_spec(rotation_interval=6 * HOUR, publish_ahead=HOUR)
    driver.step()
    assert driver.next_key.activate_at == T0 + DAY - HOUR  # created + publishAhead, not earlier


# -- rotate requests ------------------------------------------------------------------------


def test_rotate_request_publishes_a_key_that_activates_after_publish_ahead():
    driver = bootstrapped()
    driver.now = T0 + HOUR
    driver.requests = Requests(rotate="2025-01-01T01:00:00Z")
    result = driver.step()
    assert result.handled.rotate == "2025-01-01T01:00:00Z"
    waiting = driver.next_key
    assert (waiting.reason, waiting.rotate_request) == (KeyReason.ANNOTATION, "2025-01-01T01:00:00Z")
    assert waiting.activate_at == T0 + 3 * HOUR
    assert_idle(driver.plan(), driver.keys)
    result = driver.advance_to(T0 + 3 * HOUR)
    assert result.rotations == (KeyReason.ANNOTATION,)


def test_rotate_request_is_never_served_twice_even_when_handled_was_not_recorded():
    driver = bootstrapped()
    driver.now = T0 + HOUR
    requests = Requests(rotate="again")
    first = plan(driver.spec, driver.keys, driver.now, driver.factory.for_spec(driver.spec), requests)
    assert len(first.new_material) == 1
    # The operator crashed before it stored the handled value: planning again is a no-op.
    second = plan(driver.spec, first.keys, driver.now, driver.factory.for_spec(driver.spec), requests)
    assert not second.has_changes and second.handled.rotate == "again"
    later = plan(driver.spec, first.keys, T0 + 10 * HOUR, driver.factory.for_spec(driver.spec), requests)
    assert later.new_material == {} and later.handled.rotate == "again"
    assert later.active.rotate_request == "again"
    # Still not recorded after the requested key took over: the key itself remembers.
    after = plan(driver.spec, later.keys, T0 + 11 * HOUR, driver.factory.for_spec(driver.spec), requests)
    assert after.new_material == {} and after.rotations == ()


def test_rotate_request_equal_to_the_handled_value_is_ignored():
    driver = bootstrapped()
    driver.requests = Requests(rotate="done", rotate_handled="done")
    assert_idle(driver.plan(), driver.keys)
    driver.requests = Requests(rotate="   ")
    assert_idle(driver.plan(), driver.keys)


def test_rotate_request_hurries_an_existing_next_key():
    driver = bootstrapped()
    driver.advance_to(T0 + DAY - 2 * HOUR)
    driver.now = T0 + DAY - HOUR
    driver.requests = Requests(rotate="now-please")
    result = driver.step()
    assert result.new_material == {}
    assert driver.next_key.rotate_request == "now-please"
    assert driver.next_key.activate_at == T0 + DAY  # created + publishAhead: still in the future
    driver.spec = make_spec(rotation_interval=10 * DAY)
    driver.step()
    assert driver.next_key.activate_at == T0 + DAY  # a requested key ignores the interval


def test_rotate_request_activates_a_next_key_published_long_enough_ago():
    driver = bootstrapped()
    driver.advance_to(T0 + DAY - 2 * HOUR)
    driver.spec = make_spec(rotation_interval=10 * DAY)
    driver.advance_to(T0 + 2 * DAY)
    waiting = driver.next_key
    driver.requests = Requests(rotate="go")
    result = driver.step()
    assert driver.active.kid == waiting.kid
    assert result.rotations == (KeyReason.TIMER,)
    assert result.handled.rotate == "go"


# -- revoke requests ------------------------------------------------------------------------


def test_revoking_the_active_key_unpublishes_it_and_a_fresh_key_signs_at_once():
    driver = bootstrapped()
    driver.advance_to(T0 + DAY - 2 * HOUR)
    compromised, waiting = driver.active, driver.next_key
    driver.now = T0 + DAY - HOUR
    driver.requests = Requests(revoke_kid=compromised.kid)
    result = driver.step()
    assert result.handled.revoke == compromised.kid
    (revoked,) = driver.by_state(KeyState.REVOKED)
    assert (revoked.kid, revoked.revoked) == (compromised.kid, driver.now)
    fresh = driver.active
    assert fresh.kid not in (compromised.kid, waiting.kid)
    assert (fresh.reason, fresh.emergency, fresh.activated) == (KeyReason.EMERGENCY, True, driver.now)
    # the waiting next key was stored beside the compromised one and never signed: it goes too
    assert driver.by_state(KeyState.NEXT) == [] and waiting in result.removed
    assert {record.kid for record in result.published} == {fresh.kid}
    assert result.rotations == (KeyReason.EMERGENCY,)
    assert [(event.type, event.reason) for event in result.events] == [
        ("Warning", "KeyRevoked"),
        ("Normal", "KeyRemoved"),
        ("Warning", "KeyActivated"),
    ]
    assert_idle(driver.plan(), driver.keys)


def test_revoking_the_next_key_leaves_the_active_key_signing():
    driver = bootstrapped()
    driver.advance_to(T0 + DAY - 2 * HOUR)
    active, waiting = driver.active, driver.next_key
    driver.requests = Requests(revoke_kid=waiting.kid)
    result = driver.step()
    assert driver.active == active
    assert driver.by_state(KeyState.REVOKED)[0].kid == waiting.kid
    # The timer is still due, so a replacement next key is published at once.
    assert driver.next_key.serial == 3
    assert result.rotations == ()


def test_revoking_a_retired_key_unpublishes_it_and_it_is_removed_after_retention():
    driver = rotated_once()
    (retired,) = driver.by_state(KeyState.RETIRED)
    driver.now += timedelta(minutes=5)
    driver.requests = Requests(revoke_kid=retired.kid)
    result = driver.step()
    assert retired.kid not in {record.kid for record in result.published}
    (revoked,) = driver.by_state(KeyState.REVOKED)
    assert revoked.removal_due == driver.now + SPEC.retention
    assert result.next_wakeup == revoked.removal_due
    result = driver.advance_to(revoked.removal_due)
    assert result.removed == (revoked,)


@pytest.mark.parametrize(
    "value",
    [
        "no-such-kid-but-plausible",
        "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n",
        "kid with spaces",
        "short",
    ],
)
def test_revoke_request_for_an_unknown_or_implausible_kid_is_refused(value):
    driver = bootstrapped()
    before = driver.keys
    driver.requests = Requests(revoke_kid=value)
    result = driver.step()
    assert result.keys == before
    assert not result.has_changes
    assert [(event.type, event.reason) for event in result.events] == [("Warning", "RevokeRefused")]
    assert result.handled.revoke == value
    if not is_plausible_kid(value):
        assert value not in result.events[0].message
        assert "MIGHA" not in result.events[0].message
    assert_idle(driver.plan(), driver.keys)


def test_revoking_an_already_revoked_kid_changes_nothing():
    driver = rotated_once()
    (retired,) = driver.by_state(KeyState.RETIRED)
    driver.requests = Requests(revoke_kid=retired.kid)
    driver.step()
    driver.requests = Requests(revoke_kid=f" {retired.kid} ", revoke_handled=retired.kid)
    result = driver.step()
    assert not result.has_changes and result.events == ()
    assert result.handled.revoke == f" {retired.kid} "


# -- spec changes and suspend ----------------------------------------------------------------


def test_algorithm_change_rotates_gracefully():
    driver = bootstrapped()
    driver.now = T0 + HOUR
    driver.spec = make_spec(algorithm="EdDSA")
    result = driver.step()
    waiting = driver.next_key
    assert (waiting.alg, waiting.reason) == ("EdDSA", KeyReason.SPEC_CHANGE)
    assert waiting.activate_at == T0 + 3 * HOUR
    assert driver.active.alg == "ES256"
    assert result.rotations == ()
    result = driver.advance_to(T0 + 3 * HOUR)
    assert driver.active.alg == "EdDSA"
    assert result.rotations == (KeyReason.SPEC_CHANGE,)


def test_algorithm_change_drops_a_next_key_of_the_old_algorithm():
    driver = bootstrapped()
    driver.advance_to(T0 + DAY - 2 * HOUR)
    old_next = driver.next_key
    driver.spec = make_spec(algorithm="RS256")
    result = driver.step()
    assert result.removed == (old_next,)
    assert driver.next_key.alg == "RS256" and driver.next_key.serial == 3
    driver.spec = SPEC  # and back: the RS256 next key never signed, so it simply goes
    result = driver.step()
    assert [record.alg for record in result.removed] == ["RS256"]
    assert driver.next_key.alg == "ES256"  # the timer is due, so the timer publishes again


def test_suspend_stops_rotations_but_not_revocations_or_removals():
    driver = rotated_once()
    driver.spec = make_spec(suspend=True)
    (retired,) = driver.by_state(KeyState.RETIRED)
    driver.now = T0 + 10 * DAY
    driver.requests = Requests(rotate="please")
    result = driver.step()
    assert result.removed == (retired,)
    assert result.handled.rotate is None  # kept until the policy is resumed
    assert driver.by_state(KeyState.NEXT) == []
    assert result.next_wakeup is None
    driver.spec = make_spec(suspend=True, algorithm="ES384")
    assert not driver.plan().has_changes
    compromised = driver.active
    driver.requests = replace(driver.requests, revoke_kid=compromised.kid)
    result = driver.step()
    assert driver.active.reason is KeyReason.EMERGENCY and driver.active.alg == "ES384"
    driver.spec = make_spec()
    result = driver.step()
    assert result.handled.rotate == "please"
    assert driver.next_key.reason in (KeyReason.ANNOTATION, KeyReason.SPEC_CHANGE)


def test_suspend_holds_a_next_key_that_is_due():
    driver = bootstrapped()
    driver.advance_to(T0 + DAY - 2 * HOUR)
    driver.spec = make_spec(suspend=True)
    driver.now = T0 + 3 * DAY
    result = driver.step()
    assert not result.has_changes
    assert driver.active.serial == 1
    assert result.next_wakeup is None


# -- repair ---------------------------------------------------------------------------------


def _record(serial, state, created, **fields) -> KeyRecord:
    return KeyRecord(
        serial=serial,
        kid=f"kid-{serial:04d}-abcdefgh",
        alg="ES256",
        state=state,
        created=created,
        reason=fields.pop("reason", KeyReason.TIMER),
        **fields,
    )


def test_two_active_keys_keep_the_most_recently_activated():
    older = _record(1, KeyState.ACTIVE, T0, activated=T0)
    newer = _record(2, KeyState.ACTIVE, T0, activated=T0 + 2 * HOUR)
    result = plan(SPEC, [older, newer], T0 + 3 * HOUR, FakeKeys().for_spec(SPEC))
    assert result.active.serial == 2
    (retired,) = [record for record in result.keys if record.state is KeyState.RETIRED]
    assert (retired.serial, retired.retired) == (1, T0 + 3 * HOUR)
    assert result.new_material == {}


def test_no_active_key_activates_a_next_key_published_long_enough():
    waiting = _record(1, KeyState.NEXT, T0, activate_at=T0 + DAY)
    result = plan(SPEC, [waiting], T0 + 2 * HOUR, FakeKeys().for_spec(SPEC))
    assert result.active.serial == 1 and result.active.emergency is False
    assert result.new_material == {}


def test_no_active_key_and_a_young_next_key_makes_an_emergency_key():
    waiting = _record(1, KeyState.NEXT, T0, activate_at=T0 + DAY)
    retired = _record(
        2, KeyState.RETIRED, T0, activated=T0, retired=T0 + HOUR, removal_due=T0 + 4 * HOUR
    )
    result = plan(SPEC, [waiting, retired], T0 + HOUR, FakeKeys().for_spec(SPEC))
    assert result.active.serial == 3
    assert (result.active.reason, result.active.emergency) == (KeyReason.EMERGENCY, True)
    assert [record.state for record in result.keys] == [KeyState.NEXT, KeyState.RETIRED, KeyState.ACTIVE]
    assert [(event.type, event.reason) for event in result.events] == [("Warning", "KeyActivated")]


def test_extra_next_keys_are_dropped_keeping_the_oldest():
    active = _record(1, KeyState.ACTIVE, T0, activated=T0)
    first = _record(2, KeyState.NEXT, T0 + HOUR)
    second = _record(3, KeyState.NEXT, T0 + HOUR)
    result = plan(SPEC, [active, first, second], T0 + HOUR, FakeKeys().for_spec(SPEC))
    assert [record.serial for record in result.removed] == [3]


def test_inconsistent_records_are_refused():
    record = _record(1, KeyState.ACTIVE, T0, activated=T0)
    with pytest.raises(InconsistentKeysError, match="serial"):
        plan(SPEC, [record, replace(record, kid="another-kid-123")], T0, FakeKeys().for_spec(SPEC))
    with pytest.raises(InconsistentKeysError, match="kid"):
        plan(SPEC, [record, replace(record, serial=2)], T0, FakeKeys().for_spec(SPEC))


# -- closing the loop, inputs and helpers -----------------------------------------------------


SERVED_SPEC = make_spec(served_at=("https://jwks.example.test/.well-known/jwks.json",))


def test_without_served_at_the_read_back_changes_nothing():
    driver = bootstrapped()
    driver.advance_to(T0 + DAY - 2 * HOUR)
    driver.now = T0 + DAY
    assert driver.plan(served_kids=set()).active.kid == driver.next_key.kid


def test_publish_ahead_counts_from_when_every_url_serves_the_next_key():
    driver = bootstrapped(SERVED_SPEC)
    driver.advance_to(T0 + DAY - 2 * HOUR)
    waiting = driver.next_key
    assert waiting.activate_at is None  # not served anywhere yet: no time to sign
    driver.now = T0 + DAY  # would sign now without the read-back
    held = driver.plan(served_kids={driver.active.kid})
    assert not held.has_changes and held.activation_held == (waiting.kid,)
    driver.now = T0 + DAY + HOUR
    seen = driver.step(served_kids={driver.active.kid, waiting.kid})
    recorded = driver.next_key
    assert recorded.first_served == T0 + DAY + HOUR
    assert recorded.activate_at == T0 + DAY + 3 * HOUR  # publishAhead 2 h from first seen
    assert [event.reason for event in seen.events] == ["KeyServed"] and seen.rotations == ()
    driver.now = T0 + DAY + 3 * HOUR - timedelta(seconds=1)
    assert not driver.plan(served_kids={waiting.kid}).has_changes
    driver.now = T0 + DAY + 3 * HOUR
    assert driver.plan(served_kids={waiting.kid}).active.kid == waiting.kid


def test_a_next_key_that_stops_being_served_does_not_sign_until_it_is_back():
    driver = bootstrapped(SERVED_SPEC)
    driver.advance_to(T0 + DAY - 2 * HOUR)
    waiting = driver.next_key
    driver.step(served_kids={driver.active.kid, waiting.kid})
    driver.now = T0 + DAY + HOUR  # due, but a cache in the way serves an older set again
    held = driver.plan(served_kids={driver.active.kid})
    assert held.active.kid != waiting.kid and held.activation_held == (waiting.kid,)
    assert driver.plan(served_kids={waiting.kid}).active.kid == waiting.kid
    assert driver.next_key.first_served == T0 + DAY - 2 * HOUR  # seen once counts, and is kept


def test_an_emergency_key_never_waits_for_the_read_back():
    driver = bootstrapped(SERVED_SPEC)
    driver.requests = Requests(revoke_kid=driver.active.kid)
    result = driver.step(served_kids=set())
    assert result.active.emergency and result.active.reason is KeyReason.EMERGENCY


def test_short_publish_ahead_warns_when_a_key_is_published():
    spec = make_spec(publish_ahead=timedelta(minutes=30))
    driver = Driver(spec)
    result = driver.step()
    assert ("Warning", "ShortTimeline") in [(event.type, event.reason) for event in result.events]
    assert "Go keyfunc" in result.events[-1].message
    assert_idle(driver.plan(), driver.keys)


def test_key_factory_must_follow_the_spec():
    with pytest.raises(ValueError, match="RS256"):
        plan(SPEC, [], T0, lambda: FakeKeys().make("RS256"))


def test_key_factory_must_not_repeat_a_kid():
    material = FakeKeys().make("ES256")
    first = plan(SPEC, [], T0, lambda: material)
    with pytest.raises(ValueError, match="already in use"):
        plan(SPEC, first.keys, T0 + DAY, lambda: material)


def test_now_must_be_aware_utc():
    with pytest.raises(ValueError, match="UTC"):
        plan(SPEC, [], datetime(2025, 1, 1), FakeKeys().for_spec(SPEC))
    with pytest.raises(ValueError, match="UTC"):
        plan(SPEC, [], datetime(2025, 1, 1, tzinfo=timezone(HOUR)), FakeKeys().for_spec(SPEC))


def test_key_record_accepts_stored_strings_and_validates():
    record = KeyRecord(serial=1, kid="k" * 43, alg="ES256", state="active", created=T0, activated=T0, reason="timer")
    assert record.state is KeyState.ACTIVE and record.reason is KeyReason.TIMER
    with pytest.raises(ValueError, match="needs activated"):
        KeyRecord(serial=1, kid="k" * 43, alg="ES256", state="active", created=T0, reason="timer")
    with pytest.raises(ValueError, match="timezone-aware"):
        KeyRecord(serial=1, kid="k" * 43, alg="ES256", state="next", created=datetime(2025, 1, 1), reason="timer")
    with pytest.raises(ValueError):
        KeyRecord(serial=0, kid="k" * 43, alg="ES256", state="next", created=T0, reason="timer")
    with pytest.raises(ValueError):
        KeyRecord(serial=1, kid="k" * 43, alg="ES256", state="gone", created=T0, reason="timer")


def test_key_secret_names_are_deterministic():
    assert key_secret_name("billing", 7) == "billing-key-7"


def test_real_keys_work_too():
    result = plan(SPEC, [], T0, lambda: generate_key("ES256"))
    material = result.new_material[1]
    assert material.kid == result.active.kid
    assert "PRIVATE" not in repr(result)


# -- property tests: random timelines, invariants after every step ---------------------------

TICKS = st.one_of(
    st.integers(min_value=0, max_value=120),
    st.integers(min_value=60, max_value=4 * 3600),
    st.integers(min_value=3600, max_value=5 * 86400),
).map(lambda seconds: timedelta(seconds=seconds))

SPEC_CHANGES = st.one_of(
    st.tuples(st.just("algorithm"), st.sampled_from(["ES256", "ES384", "EdDSA", "RS256", "PS256"])),
    st.tuples(st.just("rotation_interval"), st.sampled_from([6 * HOUR, DAY, 3 * DAY, 30 * DAY])),
    st.tuples(st.just("publish_ahead"), st.sampled_from([timedelta(minutes=30), HOUR, 2 * HOUR, 5 * HOUR])),
    st.tuples(st.just("token_lifetime"), st.sampled_from([timedelta(minutes=5), HOUR, 12 * HOUR, 2 * DAY])),
    st.tuples(st.just("clock_skew"), st.sampled_from([timedelta(0), timedelta(minutes=1), timedelta(minutes=5)])),
    st.tuples(st.just("suspend"), st.booleans()),
)

REVOKE_TARGETS = st.sampled_from(["active", "next", "retired", "revoked", "unknown", "garbage", "repeat"])

ACTIONS = st.one_of(
    st.tuples(st.just("tick"), TICKS),
    st.tuples(st.just("tick"), TICKS),
    st.tuples(st.just("rotate"), st.booleans()),
    st.tuples(st.just("revoke"), REVOKE_TARGETS),
    st.tuples(st.just("spec"), SPEC_CHANGES),
)

# A crash stops the operator part-way through acting on a plan: a random subset of its record
# writes (creates and changes) is stored; the handled values only if every one of those was (the
# reconciler records them after the writes), and of the deletions, which come last, a random
# subset only once the handled values are stored. The restarted operator plans again, and may
# crash again.
COMMITS = st.one_of(st.just(None), st.just(None), st.just(None), st.integers(min_value=0, max_value=2**16))

GARBAGE = "-----BEGIN PRIVATE KEY----- MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg"


@dataclass
class Timeline:
    spec: PolicySpec = SPEC
    now: datetime = T0
    keys: tuple[KeyRecord, ...] = ()
    requests: Requests = Requests()
    factory: FakeKeys = field(default_factory=FakeKeys)
    rotate_values: int = 0
    required_retention: dict[str, timedelta] = field(default_factory=dict)
    ever_revoked: set[str] = field(default_factory=set)
    revoked_while_signing: set[datetime] = field(default_factory=set)
    activations_per_request: Counter = field(default_factory=Counter)
    emergency_keys_per_revoke: Counter = field(default_factory=Counter)

    def plan(self, keys=None, now=None, requests=None) -> Plan:
        return plan(
            self.spec,
            self.keys if keys is None else keys,
            self.now if now is None else now,
            self.factory.for_spec(self.spec),
            self.requests if requests is None else requests,
        )

    def apply(self, action) -> None:
        kind, argument = action
        if kind == "tick":
            self.now += argument
        elif kind == "rotate":
            if argument or self.requests.rotate is None:
                self.rotate_values += 1
            self.requests = replace(self.requests, rotate=f"rotate-{self.rotate_values}")
        elif kind == "revoke":
            self.requests = replace(self.requests, revoke_kid=self.revoke_value(argument))
        elif kind == "spec":
            name, value = argument
            try:
                self.spec = replace(self.spec, **{name: value})
            except ValueError:
                pass  # the API server would refuse this spec; the old one stays

    def revoke_value(self, target: str) -> str | None:
        if target == "repeat":
            return self.requests.revoke_kid
        if target == "garbage":
            return GARBAGE
        states = {"active": KeyState.ACTIVE, "next": KeyState.NEXT, "retired": KeyState.RETIRED, "revoked": KeyState.REVOKED}
        candidates = [record.kid for record in self.keys if record.state is states.get(target)]
        return candidates[0] if candidates else "plausible-but-unknown-kid"

    def commit(self, result: Plan, crash_mask: int | None) -> None:
        was_active = {record.serial for record in self.keys if record.state is KeyState.ACTIVE}
        stored_before = {record.serial for record in self.keys}
        if crash_mask is None:
            self.keys = result.keys
            self.requests = with_handled(self.requests, result)
        else:
            puts = (*result.created, *result.changed)
            store = {record.serial: record for record in self.keys}
            for index, record in enumerate(puts):
                if crash_mask >> index & 1:
                    store[record.serial] = record
            all_put = all(crash_mask >> index & 1 for index in range(len(puts)))
            if all_put and crash_mask >> len(puts) & 1:
                self.requests = with_handled(self.requests, result)
                for index, record in enumerate(result.removed, start=len(puts) + 1):
                    if crash_mask >> index & 1:
                        store.pop(record.serial, None)
            self.keys = tuple(sorted(store.values(), key=lambda record: record.serial))
        if result.handled.revoke is not None:
            # a revoke request stores at most one emergency key, however often a crash makes
            # the operator plan it again
            minted = [r for r in self.keys if r.serial not in stored_before and r.reason is KeyReason.EMERGENCY]
            self.emergency_keys_per_revoke[result.handled.revoke] += len(minted)
            assert self.emergency_keys_per_revoke[result.handled.revoke] <= 1
        for record in self.keys:
            if record.state is KeyState.ACTIVE and record.serial not in was_active and record.rotate_request:
                # a rotate request makes the signing key change once, however often it is seen
                self.activations_per_request[record.rotate_request] += 1
                assert self.activations_per_request[record.rotate_request] == 1
            if record.state is KeyState.REVOKED:
                self.ever_revoked.add(record.kid)
                if record.activated is not None and record.retired in (None, record.revoked):
                    self.revoked_while_signing.add(record.revoked)
            if record.state is KeyState.RETIRED and record.removal_due is not None:
                # The retention a stored record promises never shrinks. What the spec asked for
                # during a reconcile that crashed before writing the record was never promised
                # (the operator may never have seen it); the current spec's is checked in check().
                previous = self.required_retention.get(record.kid, timedelta(0))
                self.required_retention[record.kid] = max(previous, record.removal_due - record.retired)

    def check(self, before: tuple[KeyRecord, ...], result: Plan) -> None:
        spec, now = self.spec, self.now
        published_kids = [record.kid for record in result.published]

        # (1) exactly one active key, and it is published
        active = [record for record in result.keys if record.state is KeyState.ACTIVE]
        assert len(active) == 1
        assert active[0].kid in published_kids
        assert result.active == active[0]

        # (2) a key that starts signing was published publishAhead before, unless emergency
        previous = {record.serial: record for record in before}
        for record in active:
            if previous.get(record.serial, record).state is not KeyState.ACTIVE or record.serial not in previous:
                assert record.activated == now
                if not record.emergency:
                    assert record.activated - record.created >= spec.publish_ahead
                else:
                    assert record.reason in (KeyReason.BOOTSTRAP, KeyReason.EMERGENCY)
                # a key stored while a revoked key still signed may have leaked with it
                assert all(record.created >= revoked for revoked in self.revoked_while_signing)

        # (3) a key that stopped signing stays published for its whole retention
        still_there = {record.kid: record for record in result.keys}
        for record in before:
            if record.state is not KeyState.RETIRED:
                continue
            after = still_there.get(record.kid)
            if after is None or after.state is not KeyState.RETIRED:
                revoked = after is not None and after.state is KeyState.REVOKED
                if not revoked:
                    required = max(self.required_retention.get(record.kid, timedelta(0)), spec.retention)
                    assert now >= record.retired + required
        for record in result.keys:
            if record.state is KeyState.RETIRED:
                assert record.removal_due >= record.retired + spec.retention

        # revoked kids never come back; the JWKS has no duplicates
        assert not self.ever_revoked & set(published_kids)
        assert all(record.state is not KeyState.REVOKED for record in result.published)
        assert len(set(published_kids)) == len(published_kids)

        # serials are unique and new keys get higher serials than any existing one
        serials = [record.serial for record in result.keys]
        assert serials == sorted(set(serials))
        highest_before = max((record.serial for record in before), default=0)
        assert all(serial > highest_before for serial in result.new_material)
        assert {record.serial for record in result.created} == set(result.new_material)

        # private material never shows in events
        for event in result.events:
            assert FAKE_PRIVATE_MARKER not in event.message
            assert GARBAGE not in event.message and "MIGHA" not in event.message

        # (6) the state is all in the records: planning again changes nothing. A crash after the
        # record writes and before the handled values leaves the removed records stored (they
        # are deleted last), and planning then removes the same ones and nothing else.
        unsettled = tuple(sorted((*result.keys, *result.removed), key=lambda record: record.serial))
        again = self.plan(keys=unsettled)
        assert not again.new_material and not again.changed and again.rotations == ()
        assert {record.serial for record in again.removed} == {record.serial for record in result.removed}
        assert all(event.reason in ("RevokeRefused", "KeyRemoved") for event in again.events)
        settled = with_handled(self.requests, result)
        quiet = self.plan(keys=result.keys, requests=settled)
        assert_idle(quiet, result.keys)

        # next_wakeup is exact: nothing is due before it, something is due at it
        if result.next_wakeup is None:
            assert_idle(self.plan(keys=result.keys, now=now + 3650 * DAY, requests=settled), result.keys)
        else:
            assert result.next_wakeup > now
            halfway = now + (result.next_wakeup - now) / 2
            assert_idle(self.plan(keys=result.keys, now=halfway, requests=settled), result.keys)
            assert self.plan(keys=result.keys, now=result.next_wakeup, requests=settled).has_changes


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(steps=st.lists(st.tuples(ACTIONS, COMMITS), min_size=1, max_size=40))
# Timelines Hypothesis found on 2026-12-01, each a crash that leaves two next keys behind:
# a revoke then took the rotate request of the next key it dropped although a key it kept
# carried that request too (the request changed the signing key twice), or dropped one of the
# two next keys and left the other for the next plan; a repair dropped the next key carrying the
# newest rotate request and the request counted as answered by the key it had just dropped.
@example(steps=[(("rotate", False), None), (("spec", ("algorithm", "ES384")), 0), (("tick", timedelta(seconds=1)), 1),
                (("revoke", "active"), None), (("tick", timedelta(seconds=1)), None), (("revoke", "active"), None)])
@example(steps=[(("rotate", False), None), (("spec", ("algorithm", "ES384")), 0), (("rotate", False), 1),
                (("revoke", "active"), 0), (("tick", timedelta(seconds=1)), None)])
@example(steps=[(("rotate", False), None), (("revoke", "next"), 0), (("tick", timedelta(seconds=0)), 0),
                (("rotate", True), 1), (("revoke", "active"), None)])
@example(steps=[(("rotate", False), None), (("spec", ("algorithm", "ES384")), 0), (("rotate", True), 1),
                (("rotate", False), None)])
@example(steps=[(("revoke", "next"), None), (("revoke", "active"), 0), (("rotate", False), None)])
@example(steps=[(("rotate", False), None), (("rotate", True), 0), (("revoke", "active"), 5),
                (("tick", timedelta(seconds=1)), None)])
@example(steps=[(("revoke", "active"), None), (("revoke", "active"), 0), (("rotate", False), 3),
                (("tick", timedelta(seconds=1)), None)])
# Found on 2026-12-02: a crash left unrecorded the rotate request a next key answered, the key
# was revoked, and its removal at the end of retention took the last record of the request with
# it, so planning again answered the request a second time (deletions now follow the handled
# values).
@example(steps=[(("revoke", "retired"), None), (("rotate", False), 1), (("revoke", "next"), 1),
                (("tick", timedelta(seconds=3780)), None)])
def test_invariants_hold_on_random_timelines(steps):
    timeline = Timeline()
    for action, crash_mask in steps:
        timeline.apply(action)
        before = timeline.keys
        result = timeline.plan()
        timeline.check(before, result)
        timeline.commit(result, crash_mask)


@settings(max_examples=60, deadline=None)
@given(
    ticks=st.lists(TICKS, min_size=1, max_size=60),
    interval=st.sampled_from([6 * HOUR, DAY, 30 * DAY]),
    publish_ahead=st.sampled_from([HOUR, 2 * HOUR, 5 * HOUR]),
)
def test_plain_timer_rotation_rotates_once_per_interval(ticks, interval, publish_ahead):
    timeline = Timeline(spec=make_spec(rotation_interval=interval, publish_ahead=publish_ahead))
    activations = []
    for tick in ticks:
        timeline.now += tick
        before = timeline.keys
        result = timeline.plan()
        timeline.check(before, result)
        timeline.commit(result, None)
        activations += [(timeline.now, reason) for reason in result.rotations]
    assert all(reason is KeyReason.TIMER for _, reason in activations)
    moments = [T0] + [moment for moment, _ in activations]
    assert all(later - earlier >= interval for earlier, later in zip(moments, moments[1:]))
    assert len([record for record in timeline.keys if record.state is KeyState.NEXT]) <= 1


@dataclass
class LaggingEndpoint:
    """What verifiers fetch: the published set as it was ``lag`` ago, the lag drawn afresh for
    every look (CDN nodes and caches disagree, so a key can appear and vanish again)."""

    history: list[tuple[datetime, frozenset[str]]] = field(default_factory=list)

    def publish(self, now: datetime, kids) -> None:
        if not self.history or self.history[-1][1] != frozenset(kids):
            self.history.append((now, frozenset(kids)))

    def served(self, now: datetime, lag: timedelta) -> frozenset[str]:
        seen = [kids for moment, kids in self.history if moment <= now - lag]
        return seen[-1] if seen else frozenset()


@dataclass
class ServedTimeline(Timeline):
    spec: PolicySpec = SERVED_SPEC
    endpoint: LaggingEndpoint = field(default_factory=LaggingEndpoint)
    served: frozenset[str] = frozenset()

    def plan(self, keys=None, now=None, requests=None) -> Plan:
        return plan(
            self.spec, self.keys if keys is None else keys, self.now if now is None else now,
            self.factory.for_spec(self.spec), self.requests if requests is None else requests,
            served_kids=self.served,
        )


LAGS = st.integers(min_value=0, max_value=4 * 3600).map(lambda seconds: timedelta(seconds=seconds))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(steps=st.lists(st.tuples(ACTIONS, COMMITS, LAGS), min_size=1, max_size=40))
# Found on 2026-12-02: the revocation of the signing key was recorded handled and the crash
# came before the next key stored beside it was deleted; that key went on to sign.
@example(steps=[(("rotate", False), None, timedelta(0)), (("tick", timedelta(seconds=114)), None, timedelta(0)),
                (("revoke", "active"), 7, timedelta(0)), (("tick", timedelta(seconds=7086)), None, timedelta(0))])
def test_invariants_hold_when_the_served_jwks_lags(steps):
    """With servedAt, on top of every invariant: a key signs only while it is served, never less
    than publishAhead after it was first seen served (bootstrap and emergency keys excepted),
    and the moment it was first seen is recorded once and never moves."""
    timeline = ServedTimeline()
    first_served: dict[str, datetime] = {}
    for action, crash_mask, lag in steps:
        timeline.apply(action)
        timeline.served = timeline.endpoint.served(timeline.now, lag)
        before = timeline.keys
        result = timeline.plan()
        timeline.check(before, result)
        was_active = {record.serial for record in before if record.state is KeyState.ACTIVE}
        for record in result.keys:
            if record.first_served is not None:
                assert record.first_served >= record.created
                assert first_served.get(record.kid, record.first_served) == record.first_served
            if record.state is KeyState.ACTIVE and record.serial not in was_active and not record.emergency:
                assert record.kid in timeline.served
                assert record.first_served is not None
                assert record.activated - record.first_served >= timeline.spec.publish_ahead
        timeline.commit(result, crash_mask)
        for record in timeline.keys:  # what was stored (a crash may have lost the write)
            if record.first_served is not None:
                first_served.setdefault(record.kid, record.first_served)
        timeline.endpoint.publish(timeline.now, [record.kid for record in timeline.keys if record.published])
