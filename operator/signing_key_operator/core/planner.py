"""The key lifecycle: one pure decision per reconcile, ``plan(spec, keys, now) -> Plan``.

Modelled on dex's ``server/signer/rotation.go`` (one small function decides, given the stored
keys and the time) and on cert-manager's policy chains (each rule is a check named like a
sentence, applied in a fixed order). All state lives in the :class:`KeyRecord` s the caller
reads back from the key Secrets (design invariant 6), the clock and the key factory are passed
in, and the same inputs always give the same plan, so a retry or a second replica that plans
again decides the same thing and an idle policy plans zero writes.

Lifecycle::

    next (published, not signing) -> active (signing) -> retired (published) -> removed
    any non-revoked key -> revoked (unpublished at once) -> removed

Rules, in the order :func:`plan` applies them:

1. repair: a next key stored while a now revoked key still signed goes (whoever obtained one
   may have obtained both); several active keys keep the most recently activated; no active
   key activates a next key that has been published for publishAhead, else an emergency key
   (or the bootstrap key when there are no keys at all) signs at once, because there is never
   zero active keys;
2. a revoke request revokes a known kid; if that kid was signing, a fresh key signs at once;
3. (not when suspended) a next key of another algorithm than the spec's is dropped (it never
   signed, so no token needs it); a rotate request makes a next key that activates after
   publishAhead; an algorithm change starts a graceful rotation; the timer publishes the next
   key publishAhead before the interval ends; a due next key activates and the active key
   retires. With ``spec.jwks.servedAt`` a next key's publishAhead counts from when every URL
   was first seen serving it (recorded on the key), and it activates only while they serve it;
4. retired and revoked keys are removed once their retention has passed, counted from when the
   signing Secret stopped naming them; a retired key it still names stays published, because
   signers sign with whatever it holds, not with what the records say.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Literal

from .durations import format_duration
from .keys import ALGORITHMS, KeyMaterial
from .spec import PolicySpec, timeline_warnings

__all__ = [
    "REVOKE_ANNOTATION",
    "ROTATE_ANNOTATION",
    "Handled",
    "InconsistentKeysError",
    "KeyReason",
    "KeyRecord",
    "KeyState",
    "Plan",
    "PlanEvent",
    "Requests",
    "SigningSecretView",
    "is_plausible_kid",
    "key_secret_name",
    "plan",
]

ROTATE_ANNOTATION = "signingkeys.dev/rotate"
REVOKE_ANNOTATION = "signingkeys.dev/revoke-kid"

_PLAUSIBLE_KID = re.compile(r"^[A-Za-z0-9_-]{8,128}$")


class KeyState(enum.StrEnum):
    NEXT = "next"
    ACTIVE = "active"
    RETIRED = "retired"
    REVOKED = "revoked"


class KeyReason(enum.StrEnum):
    """Why a key was made (recorded on the key, shown in events, a metric label)."""

    BOOTSTRAP = "bootstrap"
    TIMER = "timer"
    ANNOTATION = "annotation"
    SPEC_CHANGE = "spec-change"
    EMERGENCY = "emergency"


_PUBLISHED_STATES = frozenset({KeyState.NEXT, KeyState.ACTIVE, KeyState.RETIRED})


class InconsistentKeysError(ValueError):
    """The records contradict each other (duplicate serial or kid).

    Two Secrets claiming one serial or one kid mean someone copied or edited a Secret; the
    caller reports them and leaves them in place (invariant 7) rather than guessing.
    """


def key_secret_name(policy_name: str, serial: int) -> str:
    """Name of the Secret holding key ``serial``.

    Deterministic on purpose: two replicas (or a retry) that decide to create the same key
    create the same name, and the API server lets only one of them succeed.
    """
    return f"{policy_name}-key-{serial}"


def is_plausible_kid(value: str) -> bool:
    """Whether ``value`` looks like a kid (base64url, as RFC 7638 thumbprints are)."""
    return bool(_PLAUSIBLE_KID.match(value))


@dataclass(frozen=True, kw_only=True)
class KeyRecord:
    """Everything persisted about one key, next to its material (never the material itself)."""

    serial: int
    kid: str
    alg: str
    state: KeyState
    created: datetime
    """When the key was made and published."""
    reason: KeyReason
    activate_at: datetime | None = None
    """For a next key: when it is due to sign (recomputed from the current spec each plan)."""
    activated: datetime | None = None
    retired: datetime | None = None
    removal_due: datetime | None = None
    """For a retired or revoked key: when its record may go; it only ever grows."""
    revoked: datetime | None = None
    rotate_request: str | None = None
    """The rotate annotation value this key answers, so a request is never served twice."""
    emergency: bool = False
    """Activated without being published publishAhead before (bootstrap and emergency keys)."""
    first_served: datetime | None = None
    """When every ``spec.jwks.servedAt`` URL was first seen serving this key; with servedAt its
    publishAhead counts from here, not from ``created``. Recorded once and kept, so a restart
    neither forgets a wait nor starts it over."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", KeyState(self.state))
        object.__setattr__(self, "reason", KeyReason(self.reason))
        if isinstance(self.serial, bool) or not isinstance(self.serial, int) or self.serial < 1:
            raise ValueError(f"serial must be a positive integer, got {self.serial!r}")
        if not self.kid:
            raise ValueError(f"key {self.serial}: kid must not be empty")
        if self.alg not in ALGORITHMS:
            raise ValueError(f"key {self.serial}: unsupported alg {self.alg!r}")
        for name in ("created", "activate_at", "activated", "retired", "removal_due", "revoked", "first_served"):
            value = getattr(self, name)
            if value is not None and (value.tzinfo is None or value.utcoffset() is None):
                raise ValueError(f"key {self.serial}: {name} must be timezone-aware")
        required = {
            KeyState.ACTIVE: "activated",
            KeyState.RETIRED: "retired",
            KeyState.REVOKED: "revoked",
        }.get(self.state)
        if required and getattr(self, required) is None:
            raise ValueError(f"key {self.serial}: a {self.state} key needs {required}")

    @property
    def published(self) -> bool:
        return self.state in _PUBLISHED_STATES


@dataclass(frozen=True)
class SigningSecretView:
    """What the signing Secret says now. Signers sign with the key it holds, whatever the records
    say: when writing it fails or is interrupted after the records moved on, a retired key is
    still signing, and its tokens need it published for a full retention after the Secret moves.
    """

    kid: str | None
    """The key it holds (its ``kid`` member)."""
    since: datetime | None = None
    """When it was pointed at that key; absent on Secrets written before this was recorded."""
    replaced_kid: str | None = None
    """The key it held before ``since``: signers stopped using that one only then."""


@dataclass(frozen=True)
class Requests:
    """The request annotations on the policy and the values already handled."""

    rotate: str | None = None
    rotate_handled: str | None = None
    revoke_kid: str | None = None
    revoke_handled: str | None = None


@dataclass(frozen=True)
class Handled:
    """Request values this plan consumed; the caller records them as handled."""

    rotate: str | None = None
    revoke: str | None = None

    def __bool__(self) -> bool:
        return self.rotate is not None or self.revoke is not None


@dataclass(frozen=True)
class PlanEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    """What the keys should look like after this step, and what to tell the user.

    ``keys`` is the full desired set (unchanged, changed and new records, by serial); the
    caller writes ``created`` (with ``new_material``), then ``changed``, then deletes
    ``removed``.
    """

    keys: tuple[KeyRecord, ...]
    new_material: Mapping[int, KeyMaterial]
    removed: tuple[KeyRecord, ...]
    events: tuple[PlanEvent, ...]
    handled: Handled
    next_wakeup: datetime | None
    """The earliest future time something is due (key creation, activation, removal)."""
    rotations: tuple[KeyReason, ...]
    """One reason per change of the signing key in this step (bootstrap is not a rotation)."""
    activation_held: tuple[str, ...] = ()
    """Kids that would sign by now were the JWKS read back from where it is written, but wait
    until every ``spec.jwks.servedAt`` URL serves them (and publishAhead more)."""
    due_without_read_back: datetime | None = None
    """With servedAt, for a next key not seen served yet: when it would sign were the ConfigMap
    write its publication (from then on it is held until served, see ``activation_held``)."""
    previous: tuple[KeyRecord, ...] = field(default=(), repr=False)

    @property
    def active(self) -> KeyRecord:
        return next(record for record in self.keys if record.state is KeyState.ACTIVE)

    @property
    def published(self) -> tuple[KeyRecord, ...]:
        """The JWKS content, oldest key first; never a revoked key.

        The order follows serials, not states, so activating a key leaves the published set
        byte for byte unchanged: no ConfigMap write, no new ETag, no refetch by any verifier.
        The set changes only when a key is published or removed. (Our tokens always carry a
        kid, so no verifier needs the signing key in first place.)"""
        return tuple(sorted((record for record in self.keys if record.published), key=lambda record: record.serial))

    @property
    def created(self) -> tuple[KeyRecord, ...]:
        return tuple(record for record in self.keys if record.serial in self.new_material)

    @property
    def changed(self) -> tuple[KeyRecord, ...]:
        """Existing records that need a write (state or any timestamp differs from the input)."""
        before = {record.serial: record for record in self.previous}
        return tuple(
            record
            for record in self.keys
            if record.serial in before and record != before[record.serial]
        )

    @property
    def has_changes(self) -> bool:
        return bool(self.new_material or self.removed or self.changed)


def plan(
    spec: PolicySpec,
    keys: Sequence[KeyRecord],
    now: datetime,
    new_key: Callable[[], KeyMaterial],
    requests: Requests = Requests(),
    *,
    served_kids: Collection[str] | None = None,
    signing: SigningSecretView | None = None,
) -> Plan:
    """Decide the next step for one policy.

    ``new_key`` is called only when a key must be made (possibly more than once in a step)
    and must return material for ``spec.algorithm``; it is synchronous, so async callers run
    ``plan`` in a thread. ``served_kids`` is the set of kids every ``spec.jwks.servedAt`` URL
    serves right now (the caller reads them back; None counts as none when the spec names
    URLs, and is ignored when it names none): a next key's publishAhead starts once it appears
    there, and it activates only while it is there (the loop is closed where verifiers look).
    Emergency and bootstrap keys never wait: there must always be a signing key. ``signing``
    is what the signing Secret holds now (see :class:`SigningSecretView`).
    """
    if now.tzinfo is None or now.utcoffset() != timedelta(0):
        raise ValueError("now must be a timezone-aware UTC datetime")
    step = _Step(spec, keys, now, new_key, signing, served_kids)

    # Repair first: a crash between creating an emergency key and marking the revoked key may
    # have left two active keys; settling on the newest makes the re-planned revocation find
    # its key already replaced instead of minting another emergency key on every restart. The
    # next keys stored beside a key revoked while it signed go before that, so that a repair
    # never activates one of them.
    step.drop_next_keys_stored_beside_revoked_signing_keys()
    step.keep_one_active_key()
    handled_revoke = step.revoke_requested_kid(requests)
    step.keep_one_next_key()
    handled_rotate = None
    if not spec.suspend:
        step.drop_next_key_of_another_algorithm()
        handled_rotate = step.publish_next_key_on_rotate_request(requests)
        step.publish_next_key_when_algorithm_changed()
        step.publish_next_key_when_interval_nears_its_end()
    step.record_when_next_key_is_first_served_everywhere()
    step.schedule_next_key()
    if not spec.suspend:
        step.activate_next_key_when_due()
    step.extend_retention_to_current_spec()
    step.remove_keys_past_retention()
    return step.finish(Handled(rotate=handled_rotate, revoke=handled_revoke))


class _Step:
    """The working copy of the records during one :func:`plan` call."""

    def __init__(
        self,
        spec: PolicySpec,
        keys: Sequence[KeyRecord],
        now: datetime,
        new_key: Callable[[], KeyMaterial],
        signing: SigningSecretView | None = None,
        served_kids: Collection[str] | None = None,
    ) -> None:
        self.spec = spec
        self.served_kids: frozenset[str] | None = (frozenset(served_kids or ())) if spec.served_at else None
        """None: the spec names no servedAt URL, so publication is the ConfigMap write."""
        self.now = now
        self.new_key = new_key
        self.signing = signing
        self.previous = tuple(sorted(keys, key=lambda record: record.serial))
        _check_consistent(self.previous)
        self.records: dict[int, KeyRecord] = {record.serial: record for record in self.previous}
        self.highest_serial = max(self.records, default=0)
        self.known_kids = {record.kid for record in self.previous}
        self.new_material: dict[int, KeyMaterial] = {}
        self.removed: list[KeyRecord] = []
        self.events: list[PlanEvent] = []
        self.rotations: list[KeyReason] = []
        self.held: list[str] = []
        self.superseded_rotate_request: str | None = None
        self.rotate_requests_of_dropped_next_keys: set[str] = set()
        """Rotate requests carried by next keys removed in this plan (a repair, a revocation,
        an algorithm change): they count as answered only while a key still here carries them."""
        self.retired_by_repair: set[int] = set()
        """Keys found active beside a newer one (a crash mid-rotation or mid-revocation)."""

    # -- queries ---------------------------------------------------------------------------

    def in_state(self, state: KeyState) -> list[KeyRecord]:
        return [record for record in self.records.values() if record.state is state]

    @property
    def active(self) -> KeyRecord | None:
        active = self.in_state(KeyState.ACTIVE)
        return active[0] if active else None

    @property
    def next_key(self) -> KeyRecord | None:
        waiting = self.in_state(KeyState.NEXT)
        return waiting[0] if waiting else None

    def publication_start(self, record: KeyRecord) -> datetime | None:
        """Where publishAhead counts from: the write, or with servedAt the moment every URL
        was first seen serving the key (None: not yet)."""
        return record.created if self.served_kids is None else record.first_served

    def served_now(self, record: KeyRecord) -> bool:
        return self.served_kids is None or record.kid in self.served_kids

    def published_for_long_enough(self, record: KeyRecord) -> bool:
        start = self.publication_start(record)
        return start is not None and self.now - start >= self.spec.publish_ahead and self.served_now(record)

    def signers_still_use(self, record: KeyRecord) -> bool:
        """A retired key the signing Secret still holds (a revoked one leaves regardless)."""
        return record.state is KeyState.RETIRED and self.signing is not None and self.signing.kid == record.kid

    def stopped_signing(self, record: KeyRecord) -> datetime | None:
        """When tokens of this key stopped being made: revoked or retired, or for the key the
        signing Secret held before its last move, that move if it came later."""
        if record.state is KeyState.REVOKED:
            return record.revoked
        if record.state is not KeyState.RETIRED:
            return None
        assert record.retired is not None
        signing = self.signing
        if signing is not None and signing.replaced_kid == record.kid and signing.since is not None:
            return max(record.retired, signing.since)
        return record.retired

    # -- rules -----------------------------------------------------------------------------

    def revoke_requested_kid(self, requests: Requests) -> str | None:
        value = requests.revoke_kid
        if value is None or not value.strip() or value == requests.revoke_handled:
            return None
        kid = value.strip()
        if not is_plausible_kid(kid):
            self.event(
                "Warning",
                "RevokeRefused",
                f"{REVOKE_ANNOTATION} holds a value of {len(value)} characters that is not a key "
                "ID (kids are base64url RFC 7638 thumbprints); nothing was revoked. The value is "
                "not repeated here in case it holds secret material.",
            )
            return value
        target = next((record for record in self.records.values() if record.kid == kid), None)
        if target is None:
            self.event(
                "Warning",
                "RevokeRefused",
                f"{REVOKE_ANNOTATION}={kid!r} names no key of this policy; nothing was revoked",
            )
            return value
        if target.state is KeyState.REVOKED:
            return value  # seen again after a crash; the records already say it
        was_signing = target.state is KeyState.ACTIVE
        self.put(
            replace(
                target,
                state=KeyState.REVOKED,
                revoked=self.now,
                activate_at=None,
                removal_due=self.now + self.spec.retention,
            )
        )
        self.event(
            "Warning",
            "KeyRevoked",
            f"Key {kid} (serial {target.serial}, was {target.state}) is revoked and leaves the "
            "JWKS now" + ("; a fresh key signs from now on" if was_signing else ""),
        )
        signing_until_now = was_signing or target.serial in self.retired_by_repair
        dropped = self.drop_next_keys_stored_beside(self.records[target.serial]) if signing_until_now else []
        if was_signing:
            # The emergency rotation also answers a rotate request a dropped key was for, unless
            # a key kept already answered it (a crash during a repair can leave two next keys
            # carrying one request, and it must not change the signing key twice).
            kept = {record.rotate_request for record in self.records.values()}
            unanswered = [key.rotate_request for key in dropped if key.rotate_request and key.rotate_request not in kept]
            answered = unanswered[-1] if unanswered else None
            self.create_active_key(KeyReason.EMERGENCY, why=f"key {kid} was revoked", rotate_request=answered)
        return value

    def drop_next_keys_stored_beside_revoked_signing_keys(self) -> None:
        """Finish a revocation a crash interrupted, from the records alone: the request may be
        recorded handled before the next keys beside the revoked key were deleted."""
        for record in self.in_state(KeyState.REVOKED):
            if record.activated is not None and record.retired in (None, record.revoked):
                self.drop_next_keys_stored_beside(record)

    def drop_next_keys_stored_beside(self, revoked: KeyRecord) -> list[KeyRecord]:
        """Whoever obtained a revoked signing key may have obtained the next keys stored beside
        it too (one, or two that a crash during a repair left); they never signed, so no token
        needs them: they go, oldest first, and a fresh key signs."""
        if revoked.revoked is None:
            return []
        dropped = [record for record in self.in_state(KeyState.NEXT) if record.created < revoked.revoked]
        for record in dropped:
            self.remove(record, why=f"stored beside revoked key {revoked.kid}; a fresh one is published at the next rotation")
        return dropped

    def keep_one_active_key(self) -> None:
        active = self.in_state(KeyState.ACTIVE)
        if len(active) > 1:
            newest = max(active, key=lambda record: (record.activated, record.serial))
            for record in active:
                if record is not newest:
                    self.retired_by_repair.add(record.serial)
                    self.retire(record, why=f"repair: key {newest.kid} is the most recently activated")
            return
        if active:
            return
        if not self.records:
            self.create_active_key(KeyReason.BOOTSTRAP, why="bootstrap: no token can exist yet")
            return
        ready = [
            record
            for record in self.in_state(KeyState.NEXT)
            if self.published_for_long_enough(record)
        ]
        if ready:
            self.activate(min(ready, key=lambda record: record.serial), why="repair: no key was active")
        else:
            self.create_active_key(KeyReason.EMERGENCY, why="repair: no key was active")

    def keep_one_next_key(self) -> None:
        """Two next keys mean a crash between writing one and deleting the other (a replacement
        for a key of the old algorithm, say): the one of the spec's algorithm stays, the oldest
        among those, so the repair finishes what the interrupted plan did instead of undoing it."""
        waiting = sorted(
            self.in_state(KeyState.NEXT),
            key=lambda record: (record.alg != self.spec.algorithm, record.serial),
        )
        for record in waiting[1:]:
            self.remove(record, why=f"repair: key {waiting[0].kid} is the next key")

    def drop_next_key_of_another_algorithm(self) -> None:
        waiting = self.next_key
        if waiting is not None and waiting.alg != self.spec.algorithm:
            self.remove(waiting, why=f"superseded: the policy now asks for {self.spec.algorithm}")
            # Its replacement answers the same rotate request, which must not count twice.
            self.superseded_rotate_request = waiting.rotate_request

    def publish_next_key_on_rotate_request(self, requests: Requests) -> str | None:
        value = requests.rotate
        if value is None or not value.strip() or value == requests.rotate_handled:
            return None
        answered = {record.rotate_request for record in (*self.previous, *self.records.values())}
        kept = {record.rotate_request for record in self.records.values()}
        # The key that answered it was just dropped (for the old algorithm, by a repair or beside
        # a revoked key): a new key answers it now, or the request would be lost.
        for dropped in self.rotate_requests_of_dropped_next_keys - kept:
            answered.discard(dropped)
        if value in answered:
            return value
        waiting = self.next_key
        if waiting is None:
            self.create_next_key(KeyReason.ANNOTATION, rotate_request=value)
        else:
            self.put(replace(waiting, rotate_request=value))
        return value

    def publish_next_key_when_algorithm_changed(self) -> None:
        active = self.active
        if active is not None and active.alg != self.spec.algorithm and self.next_key is None:
            self.create_next_key(
                KeyReason.SPEC_CHANGE, rotate_request=self.superseded_rotate_request
            )

    def publish_next_key_when_interval_nears_its_end(self) -> None:
        active = self.active
        if active is None or self.next_key is not None:
            return
        if self.now >= self.timer_publication_due(active):
            self.create_next_key(KeyReason.TIMER)

    def schedule_next_key(self) -> None:
        waiting, active = self.next_key, self.active
        if waiting is None or active is None:
            return
        activate_at = self.activation_due(waiting, active)
        if waiting.activate_at != activate_at:
            self.put(replace(waiting, activate_at=activate_at))

    def record_when_next_key_is_first_served_everywhere(self) -> None:
        waiting = self.next_key
        if waiting is None or self.served_kids is None or waiting.first_served is not None:
            return
        if waiting.kid in self.served_kids:
            self.put(replace(waiting, first_served=self.now))
            self.event(
                "Normal",
                "KeyServed",
                f"Key {waiting.kid} (serial {waiting.serial}) is served at every spec.jwks.servedAt URL, "
                f"seen {_ago(self.now - waiting.created)} after it was published; its publishAhead "
                f"({_ago(self.spec.publish_ahead)}) counts from now",
            )

    def activate_next_key_when_due(self) -> None:
        waiting, active = self.next_key, self.active
        if waiting is None or active is None:
            return
        if waiting.activate_at is None or not self.served_now(waiting):
            # Waiting on the read-back: held only once it would have signed without it.
            if self.now >= self.activation_due(waiting, active, start=waiting.created):
                self.held.append(waiting.kid)
            return
        if self.now < waiting.activate_at:
            return
        self.activate(waiting, why=f"scheduled ({waiting.reason})")

    def extend_retention_to_current_spec(self) -> None:
        for record in list(self.records.values()):
            stopped = self.stopped_signing(record)
            if stopped is None:
                continue
            due = stopped + self.spec.retention
            if record.removal_due is None or record.removal_due < due:
                self.put(replace(record, removal_due=due))

    def remove_keys_past_retention(self) -> None:
        for record in list(self.records.values()):
            if self.signers_still_use(record):
                continue
            if record.removal_due is not None and self.now >= record.removal_due:
                self.remove(record, why=f"{record.state} since its retention passed")

    # -- timing ----------------------------------------------------------------------------

    def timer_publication_due(self, active: KeyRecord) -> datetime:
        assert active.activated is not None
        return active.activated + self.spec.rotation_interval - self.spec.publish_ahead

    def activation_due(self, waiting: KeyRecord, active: KeyRecord, start: datetime | None = None) -> datetime | None:
        """When ``waiting`` signs: publishAhead after ``start`` (by default its publication
        start; None while that is unknown), and for the timer not before the interval ends."""
        start = start or self.publication_start(waiting)
        if start is None:
            return None
        earliest = start + self.spec.publish_ahead
        if waiting.reason is KeyReason.TIMER and waiting.rotate_request is None:
            assert active.activated is not None
            return max(earliest, active.activated + self.spec.rotation_interval)
        return earliest

    def next_wakeup(self) -> datetime | None:
        due = [
            record.removal_due
            for record in self.records.values()
            if record.state in (KeyState.RETIRED, KeyState.REVOKED) and record.removal_due is not None
        ]
        if not self.spec.suspend:
            waiting, active = self.next_key, self.active
            # A key that waits to be served wakes nobody: the read-back's next check does.
            if waiting is not None and waiting.activate_at is not None and self.served_now(waiting):
                due.append(waiting.activate_at)
            elif waiting is None and active is not None:
                due.append(self.timer_publication_due(active))
        future = [moment for moment in due if moment > self.now]
        return min(future, default=None)

    def due_without_read_back(self) -> datetime | None:
        waiting, active = self.next_key, self.active
        if self.served_kids is None or waiting is None or active is None or waiting.first_served is not None:
            return None
        return self.activation_due(waiting, active, start=waiting.created)

    # -- changes ---------------------------------------------------------------------------

    def put(self, record: KeyRecord) -> None:
        self.records[record.serial] = record

    def remove(self, record: KeyRecord, why: str) -> None:
        del self.records[record.serial]
        if record.state is KeyState.NEXT and record.rotate_request:
            self.rotate_requests_of_dropped_next_keys.add(record.rotate_request)
        self.removed.append(record)
        self.event("Normal", "KeyRemoved", f"Key {record.kid} (serial {record.serial}) removed: {why}")

    def retire(self, record: KeyRecord, why: str) -> None:
        removal_due = self.now + self.spec.retention
        self.put(
            replace(record, state=KeyState.RETIRED, retired=self.now, removal_due=removal_due)
        )
        self.event(
            "Normal",
            "KeyRetired",
            f"Key {record.kid} (serial {record.serial}) no longer signs ({why}); it stays in "
            f"the JWKS until {_timestamp(removal_due)} for tokens it signed",
        )

    def activate(self, record: KeyRecord, why: str) -> None:
        previous = self.active
        self.put(replace(record, state=KeyState.ACTIVE, activated=self.now, activate_at=None))
        self.event(
            "Normal",
            "KeyActivated",
            f"Key {record.kid} (serial {record.serial}, {record.alg}) signs from now on: {why}; "
            f"published {_ago(self.now - record.created)} ago",
        )
        self.rotations.append(record.reason)
        if previous is not None:
            self.retire(previous, why=f"replaced by key {record.kid}")

    def create_active_key(self, reason: KeyReason, why: str, rotate_request: str | None = None) -> None:
        serial, material = self.make_material()
        record = KeyRecord(
            serial=serial,
            kid=material.kid,
            alg=material.alg,
            state=KeyState.ACTIVE,
            created=self.now,
            activated=self.now,
            reason=reason,
            emergency=True,
            rotate_request=rotate_request,
        )
        self.put(record)
        bootstrap = reason is KeyReason.BOOTSTRAP
        self.event(
            "Normal" if bootstrap else "Warning",
            "KeyActivated",
            f"Key {record.kid} (serial {record.serial}, {record.alg}) published and signing at "
            f"once, without publishAhead: {why}",
        )
        if not bootstrap:
            self.rotations.append(reason)
        self.warn_about_short_timeline()

    def create_next_key(self, reason: KeyReason, rotate_request: str | None = None) -> None:
        serial, material = self.make_material()
        record = KeyRecord(
            serial=serial,
            kid=material.kid,
            alg=material.alg,
            state=KeyState.NEXT,
            created=self.now,
            reason=reason,
            rotate_request=rotate_request,
        )
        active = self.active
        if active is not None:
            record = replace(record, activate_at=self.activation_due(record, active))
        self.put(record)
        when = f" and signs from {_timestamp(record.activate_at)}" if record.activate_at else ""
        self.event(
            "Normal",
            "KeyPublished",
            f"Key {record.kid} (serial {serial}, {record.alg}) published ({reason}){when}",
        )
        self.warn_about_short_timeline()

    def make_material(self) -> tuple[int, KeyMaterial]:
        material = self.new_key()
        if material.alg != self.spec.algorithm:
            raise ValueError(
                f"key factory returned a {material.alg} key, the policy asks for {self.spec.algorithm}"
            )
        if material.kid in self.known_kids:
            raise ValueError(f"key factory returned kid {material.kid}, which is already in use")
        self.known_kids.add(material.kid)
        self.highest_serial += 1
        self.new_material[self.highest_serial] = material
        return self.highest_serial, material

    def warn_about_short_timeline(self) -> None:
        if any(event.reason == "ShortTimeline" for event in self.events):
            return
        for warning in timeline_warnings(self.spec):
            self.event("Warning", "ShortTimeline", str(warning))

    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(PlanEvent(type_, reason, message))

    def finish(self, handled: Handled) -> Plan:
        return Plan(
            keys=tuple(sorted(self.records.values(), key=lambda record: record.serial)),
            new_material=MappingProxyType(dict(self.new_material)),
            removed=tuple(self.removed),
            events=tuple(self.events),
            handled=handled,
            next_wakeup=self.next_wakeup(),
            rotations=tuple(self.rotations),
            activation_held=tuple(self.held),
            due_without_read_back=self.due_without_read_back(),
            previous=self.previous,
        )


def _check_consistent(records: Sequence[KeyRecord]) -> None:
    serials = [record.serial for record in records]
    if len(set(serials)) != len(serials):
        duplicates = sorted({serial for serial in serials if serials.count(serial) > 1})
        raise InconsistentKeysError(f"several key records claim serial {duplicates}")
    kids = [record.kid for record in records]
    if len(set(kids)) != len(kids):
        duplicates_kids = sorted({kid for kid in kids if kids.count(kid) > 1})
        raise InconsistentKeysError(f"several key records claim kid {duplicates_kids}")


def _timestamp(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else "-"


def _ago(elapsed: timedelta) -> str:
    return format_duration(timedelta(seconds=int(elapsed.total_seconds())), compact=True)
