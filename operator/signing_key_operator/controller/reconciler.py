"""One reconcile of one policy: gather -> plan -> act, in a crash-safe order.

Gather reads the key Secrets, the JWKS ConfigMap and the signing Secret fresh from the API (no
cache: a decision must rest on what is stored now); only what parsing a key Secret gave is kept,
by the Secret's version, and parsing runs in a worker process (key_reader.py). The pure planner
decides. Act writes in an order that keeps the invariants at every step, so a crash between any
two writes leaves a state the next reconcile continues from:

1. create new key Secrets (their names come from serials, so a second replica that decided the
   same creation collides and backs off: the create is the guarded write);
2. publish the JWKS ConfigMap, for an HMAC policy the verification Secret (new keys appear
   before they sign; revoked and removed keys leave);
3. record changed lifecycle states on the key Secrets, the newly active key first;
4. point the signing Secret at the active key (only now does anyone sign with a new key);
5. record handled request annotations on the policy;
6. delete the key Secrets the plan removes (retention passed, dropped next keys): last, because
   a removed key may be the last record that answers a request;
7. the status view.

Before the first write every object the plan would write (JWKS ConfigMap or verification
Secret, signing Secret, new key Secrets) is read and must be absent or this policy's own: controlled by an ownerReference
with the policy's uid, as cert-manager requires of a Secret it writes. A name alone proves
nothing: a user's ConfigMap, another policy's Secret, the leftovers of an earlier policy of the
same name share names with what this policy would make. One that is not its own holds all key
writes (a key must not start signing while its JWKS or signing Secret cannot be written), the
policy reports NameConflict, and it looks again every ``name_conflict_recheck``: freeing the
name sends no event this operator watches. Two policies naming one object: the first to make
it keeps it.

Token revocations (revocation_publisher.py) are published first, before any key work: they
are an emergency path independent of the keys, so neither a broken key Secret nor a lost race
over the keys (nor a name conflict of the keys' objects) holds them back; a conflict over the
revocation ConfigMap holds only the revocation document.

Every update carries the resourceVersion it was decided on; a 409 aborts the step and the
policy is reconciled again from fresh reads (dex's "re-check inside the guarded write"). For the
JWKS ConfigMap and the signing Secret, "decided on" covers the key Secrets too: both are read
before the key Secrets are listed, so whatever another replica published or pointed at since
this view was gathered makes their replace fail, however old the view. A view can still fall
between another replica's JWKS write and its state records; that is what a restart after a crash
there sees, and it is safe only with the policy's requests as they are now (the revoke-kid that
replica is acting on). The policy comes from the watch, which may lag every read here, so its
plan inputs (spec generation, request annotations) are read again before either write, and a
change means deciding again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from ..core.durations import format_duration
from ..core.jwks import render_jwk_set, render_shared_key_set
from ..core.keys import KeyMaterial, generate_key
from ..core.planner import (
    REVOKE_ANNOTATION, ROTATE_ANNOTATION, KeyRecord, KeyState, Plan, PlanEvent, Requests, key_secret_name, plan,
)
from ..core.served import bounded, served_everywhere
from ..core.spec import PolicySpec, SpecError, timeline_warnings
from ..k8s import objects
from ..k8s.api import CONFIGMAPS, POLICIES, SECRETS, ApiError, KubeApi
from .key_reader import KeySecretReader
from .metrics import OperatorMetrics
from .redis_mirror import RedisMirror
from .revocation_publisher import Published, RevocationPublisher
from .served_readback import ServedReadBack, ServedReport
from .settings import OperatorSettings

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What one reconcile did, for the loop that schedules the next one."""

    events: list[PlanEvent] = field(default_factory=list)
    object_events: list[tuple[dict[str, Any], PlanEvent]] = field(default_factory=list)
    """Events about other objects than the policy (its TokenRevocations)."""
    next_wakeup: datetime | None = None
    next_check: datetime | None = None
    """When to check the servedAt URLs again (None: the policy names none)."""
    retry_after: timedelta | None = None
    writes: int = 0
    own_versions: dict[tuple[str, str], str] = field(default_factory=dict)
    """(kind, name) -> resourceVersion of objects this reconcile wrote: their watch events are
    echoes of our own writes and need no reconcile."""


STATUS_KEYS_LIMIT = 64
"""How many keys status.keys lists: its maxItems in crds/signingkeypolicies.yaml (a unit test
holds the two equal). Beyond it, status.keysNotListed counts the older keys left out."""


class _Conflict(Exception):
    """A guarded write lost a race; re-read and decide again."""


class Reconciler:
    def __init__(
        self,
        api: KubeApi,
        settings: OperatorSettings,
        metrics: OperatorMetrics,
        clock: Callable[[], datetime],
        key_factory: Callable[[str, int, int | None], KeyMaterial] = generate_key,
    ):
        self.api = api
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.key_factory = key_factory
        self._reported: dict[tuple[str, str], str] = {}
        self.key_reader = KeySecretReader()
        self.served = ServedReadBack(api, settings, metrics, clock)
        self.revocations = RevocationPublisher(
            api, RedisMirror(), clock, redis_resync=settings.redis_resync, redis_retry=settings.error_backoff_initial * 4,
            document_limit=settings.revocation_document_limit, name_conflict_recheck=settings.name_conflict_recheck,
        )

    async def reconcile(self, policy: dict[str, Any], outcome: Outcome) -> None:
        """Reconcile once, recording in ``outcome`` as it goes: when this raises, ``outcome`` still
        holds what was done (the writes, their echoes to ignore, their Events)."""
        try:
            spec = PolicySpec.from_resource(
                policy["metadata"]["name"], policy.get("spec") or {}, secret_propagation=self.settings.secret_propagation
            )
        except SpecError as error:
            await self._refuse_spec(policy, error, outcome)
            return
        self._warn_short_timeline_once(policy, spec, outcome)
        try:
            await self._reconcile(policy, spec, outcome)
        except _Conflict:
            self.metrics.reconciles.labels("conflict").inc()
            outcome.retry_after = self.settings.conflict_retry
        else:
            self.metrics.reconciles.labels("done").inc()

    # -- gather -------------------------------------------------------------------------------
    async def _gather_keys(self, policy: dict[str, Any]) -> tuple[list[objects.StoredKey], list[tuple[dict, str]]]:
        metadata = policy["metadata"]
        selector = f"{objects.POLICY_LABEL}={metadata['name']},{objects.COMPONENT_LABEL}=key"
        secrets = [
            secret for secret in await self.api.list(SECRETS, metadata["namespace"], selector)
            # Not this policy's (an earlier policy's of the same name, or a user's): never touched.
            if objects.is_owned_by(secret, policy)
        ]
        stored, broken = [], []
        for secret, read in zip(secrets, await self.key_reader.read(metadata["uid"], secrets)):
            if isinstance(read, objects.BrokenKeySecret):
                broken.append((secret, str(read)))
            else:
                stored.append(read)
        # Two Secrets holding one key (a copied Secret) would make the planner refuse the whole
        # set: both are reported like unreadable ones and left in place, for a human to decide.
        holders: dict[str, list[objects.StoredKey]] = {}
        for key in stored:
            holders.setdefault(key.record.kid, []).append(key)
        by_name = {secret["metadata"]["name"]: secret for secret in secrets}
        for kid, keys in holders.items():
            if len(keys) == 1:
                continue
            for key in keys:
                others = ", ".join(other.secret_name for other in keys if other is not key)
                broken.append((by_name[key.secret_name], f"Secret {key.secret_name}: holds key {kid}, as Secret {others} does (a copy?)"))
        return [key for key in stored if len(holders[key.record.kid]) == 1], broken

    # -- decide and act -----------------------------------------------------------------------
    async def _reconcile(self, policy: dict[str, Any], spec: PolicySpec, outcome: Outcome) -> None:
        metadata = policy["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        revocations = await self.revocations.publish(
            policy, spec, lambda kind, call: self._write(outcome, kind, call), outcome.object_events, outcome.events
        )
        self.metrics.observe_revocations(namespace, name, revocations.in_force, revocations.unpublished)
        where = _published_set(spec)
        published_set = await self.api.get(where.resource, namespace, spec.published_set_name)
        signing = await self.api.get(SECRETS, namespace, spec.signing_secret_name)
        stored, broken = await self._gather_keys(policy)
        if broken:
            # Invariant 7: report and leave in place. Writing around an unreadable key could
            # unpublish a key that signers still use, so the policy holds still until a human
            # repairs or deletes the Secret.
            self._report_broken(policy, broken, outcome)
            self._report_conflicts(policy, _conflicts_of(revocations), outcome)
            outcome.next_wakeup = revocations.next_wakeup
            await self._patch_status(policy, spec, [s.record for s in stored], outcome, revocations, broken=broken)
            return
        conflicts = [c for c in (
            objects.name_conflict(where.kind, published_set, policy, where.field),
            objects.name_conflict("Secret", signing, policy, "spec.signingSecretName"),
        ) if c is not None]
        if conflicts:
            await self._hold_for_conflicts(policy, spec, stored, conflicts, outcome, revocations)
            return
        annotations = metadata.get("annotations") or {}
        requests = _requests(policy)
        # Read back before deciding: a next key's publishAhead starts once every URL serves it.
        # Not while a revocation waits: it must not wait for a slow URL's timeout, and what the
        # last check found is enough (the revocation does not depend on it).
        revoking = requests.revoke_kid is not None and requests.revoke_kid != requests.revoke_handled
        if not spec.served_at:
            observations: tuple = ()
        elif revoking:
            observations = self.served.last_observations(metadata["uid"], spec)
        else:
            observations = await self.served.observe(policy, spec, reuse_within=self.settings.served_check_interval)
        now = self.clock()
        decision: Plan = await asyncio.to_thread(
            functools.partial(plan, signing=objects.signing_view(signing), served_kids=served_everywhere(observations)),
            spec, [s.record for s in stored], now, lambda: self.key_factory(spec.algorithm, spec.rsa_key_size, spec.hmac_key_size), requests,
        )
        materials = {s.record.serial: s.material for s in stored}
        materials.update(decision.new_material)
        by_serial = {s.record.serial: s for s in stored}
        # Every object the plan writes is checked before the first write: a key Secret created
        # and then left unpublished, or a key activated whose signing Secret cannot follow,
        # would be a half-done rotation.
        for record in decision.created:
            existing = await self.api.get(SECRETS, namespace, key_secret_name(name, record.serial))
            if existing is None:
                continue
            conflict = objects.name_conflict("Secret", existing, policy)
            if conflict is None:
                raise _Conflict()  # ours, made since the list: another replica got there first
            await self._hold_for_conflicts(policy, spec, stored, [conflict], outcome, revocations)
            return
        self._report_conflicts(policy, _conflicts_of(revocations), outcome)
        act_events_from = len(outcome.events)

        for record in decision.created:
            body = objects.key_secret(policy, record, decision.new_material[record.serial])
            await self._write(outcome, "Secret", self.api.create(SECRETS, namespace, body))

        await self._publish_jwks(policy, spec, published_set, decision, materials, outcome)

        changed = sorted(decision.changed, key=lambda r: (r.state is not KeyState.ACTIVE, r.serial))
        for record in changed:
            current = by_serial[record.serial]
            secret = await self.api.get(SECRETS, namespace, current.secret_name)
            if secret is None or secret["metadata"]["resourceVersion"] != current.resource_version:
                raise _Conflict()
            await self._write(outcome, "Secret", self.api.replace(SECRETS, namespace, objects.with_record(secret, record)))

        active = decision.active
        await self._point_signing_secret(policy, spec, signing, materials[active.serial], active.serial, outcome)

        for reason in decision.rotations:
            self.metrics.rotations.labels(reason.value).inc()
        # What the plan decided reads before what acting on it touched (e.g. the signing Secret).
        outcome.events[act_events_from:act_events_from] = [e for e in decision.events if e.reason != "ShortTimeline"]
        for event in decision.events:
            if event.reason == "RevokeRefused":
                self.metrics.refused_inputs.labels("revoke-annotation").inc()

        handled = {}
        if decision.handled.rotate is not None and annotations.get(objects.ROTATE_HANDLED_ANNOTATION) != decision.handled.rotate:
            handled[objects.ROTATE_HANDLED_ANNOTATION] = decision.handled.rotate
        if decision.handled.revoke is not None and annotations.get(objects.REVOKE_HANDLED_ANNOTATION) != decision.handled.revoke:
            handled[objects.REVOKE_HANDLED_ANNOTATION] = decision.handled.revoke
        if handled:
            patch = {"metadata": {"annotations": handled, "resourceVersion": metadata["resourceVersion"]}}
            written = await self._write(outcome, "SigningKeyPolicy", self.api.merge_patch(POLICIES, namespace, name, patch))
            policy = {**policy, "metadata": written["metadata"]}

        # Deleted only once the requests are recorded handled: a removed key may be the last
        # record answering a request, and a crash between its deletion and the handled value
        # would have the request answered again.
        for record in decision.removed:
            current = by_serial[record.serial]
            await self._write(outcome, "Secret", self.api.delete(SECRETS, namespace, current.secret_name, current.resource_version))

        outcome.next_wakeup = min((t for t in (decision.next_wakeup, revocations.next_wakeup) if t is not None), default=None)
        next_rotation = _next_rotation(decision.keys, spec)
        self.metrics.observe_policy(namespace, name, active.activated, next_rotation)
        served = None
        if spec.served_at:
            served = self.served.report(policy, spec, decision.keys, observations, decision.activation_held, decision.due_without_read_back)
            outcome.events.extend(served.events)
            outcome.next_check = served.next_check
        else:
            self.served.forget(metadata["uid"])
            self.metrics.observe_served(namespace, name, {}, [], timedelta(0))
        await self._patch_status(policy, spec, list(decision.keys), outcome, revocations, served=served, held=decision.activation_held)

    async def check_served(self, policy: dict[str, Any]) -> tuple[bool, datetime | None]:
        """A check of the servedAt URLs between reconciles: (whether a reconcile must follow,
        when to check next)."""
        try:
            spec = PolicySpec.from_resource(
                policy["metadata"]["name"], policy.get("spec") or {}, secret_propagation=self.settings.secret_propagation
            )
        except SpecError:
            return True, None
        if not spec.served_at:
            return True, None
        return await self.served.check(policy, spec)

    async def _write(self, outcome: Outcome, kind: str, call) -> dict[str, Any]:
        try:
            written = await call
        except ApiError as error:
            if error.conflict:
                raise _Conflict() from None
            raise
        self.metrics.api_writes.labels(kind).inc()
        outcome.writes += 1
        if written:  # a DELETE answers with no object worth remembering
            outcome.own_versions[(kind, written["metadata"]["name"])] = written["metadata"]["resourceVersion"]
        return written

    async def _check_plan_inputs_unchanged(self, policy) -> None:
        """Before a JWKS or signing-Secret write: the policy as stored must still say what the
        plan read from it (spec generation, request annotations), else decide again. Other
        changes (status, unrelated annotations) change no plan and are no reason to retry."""
        metadata = policy["metadata"]
        stored = await self.api.get(POLICIES, metadata["namespace"], metadata["name"])
        if (
            stored is None or stored["metadata"]["uid"] != metadata["uid"]
            or stored["metadata"].get("generation") != metadata.get("generation") or _requests(stored) != _requests(policy)
        ):
            raise _Conflict()

    async def _publish_jwks(self, policy, spec: PolicySpec, current, decision: Plan, materials, outcome: Outcome) -> None:
        """``current``: the JWKS ConfigMap (for an HMAC policy the verification Secret) as read
        before the key Secrets were listed (absent or this policy's); the replace carries its
        resourceVersion, so a change since then aborts the write."""
        namespace = policy["metadata"]["namespace"]
        published = [materials[record.serial] for record in decision.published]
        if spec.is_shared_secret:
            document = render_shared_key_set([material.private_jwk() for material in published])
            desired = objects.verification_secret(policy, spec.verification_secret_name, document)
            current_already = objects.secret_is_current(current, desired)
        else:
            jwks = render_jwk_set([material.public_jwk() for material in published])
            max_age = int(spec.jwks_max_age.total_seconds())
            desired = objects.published_configmap(policy, spec.jwks_config_map_name, "jwks", "jwks.json", jwks, max_age)
            current_already = objects.configmap_is_current(current, desired)
        if current_already:
            return
        await self._check_plan_inputs_unchanged(policy)
        resource, kind, _ = _published_set(spec)
        if current is None:
            await self._write(outcome, kind, self.api.create(resource, namespace, desired))
        else:
            desired["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            await self._write(outcome, kind, self.api.replace(resource, namespace, desired))
        if not decision.has_changes:
            outcome.events.append(PlanEvent(
                "Warning", "JwksRestored", f"{kind} {spec.published_set_name} did not match the key Secrets and was rewritten from them"
            ))

    async def _point_signing_secret(self, policy, spec: PolicySpec, current, material: KeyMaterial, serial: int, outcome: Outcome) -> None:
        """``current`` as for :meth:`_publish_jwks`."""
        namespace = policy["metadata"]["namespace"]
        lifetimes = spec.signer_lifetimes()
        if objects.signing_secret_is_current(current, material, lifetimes):
            return
        await self._check_plan_inputs_unchanged(policy)
        same_key = objects.signing_secret_holds(current, material)
        desired = objects.signing_secret(
            policy, spec.signing_secret_name, material, serial, since=self.clock(), replaced=current, lifetimes=lifetimes
        )
        if current is None:
            await self._write(outcome, "Secret", self.api.create(SECRETS, namespace, desired))
        else:
            desired["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            await self._write(outcome, "Secret", self.api.replace(SECRETS, namespace, desired))
        message = (
            f"Secret {spec.signing_secret_name} now tells signers {lifetimes.decode()}" if same_key
            else f"Secret {spec.signing_secret_name} now holds key {material.kid}"
        )
        outcome.events.append(PlanEvent("Normal", "SigningSecretUpdated", message))

    async def _hold_for_conflicts(
        self, policy, spec: PolicySpec, stored: list[objects.StoredKey], conflicts: list[objects.NameConflict],
        outcome: Outcome, revocations: Published,
    ) -> None:
        """Write no key state while an object the keys need belongs to someone else: a key
        activated without its JWKS published, or signing while its signing Secret cannot be
        written, would break verifiers. The status says why; the policy looks again later,
        since freeing the name sends no event this operator sees."""
        self._report_conflicts(policy, conflicts + _conflicts_of(revocations), outcome)
        recheck = self.clock() + self.settings.name_conflict_recheck
        outcome.next_wakeup = min((t for t in (recheck, revocations.next_wakeup) if t is not None))
        await self._patch_status(policy, spec, [s.record for s in stored], outcome, revocations, conflicts=conflicts)

    # -- reporting ----------------------------------------------------------------------------
    def _report_conflicts(self, policy, conflicts: list[objects.NameConflict], outcome: Outcome) -> None:
        """One Warning per conflict (object and owner) while it lasts; one that ends is
        forgotten, so it is reported again should it come back."""
        uid = policy["metadata"]["uid"]
        current = {(uid, f"conflict {c.kind} {c.name}"): c.owner for c in conflicts}
        for key in [k for k in self._reported if k[0] == uid and k[1].startswith("conflict ") and k not in current]:
            del self._reported[key]
        for conflict in conflicts:
            key = (uid, f"conflict {conflict.kind} {conflict.name}")
            if self._reported.get(key) == conflict.owner:
                continue
            self._reported[key] = conflict.owner
            self.metrics.refused_inputs.labels("name-conflict").inc()
            outcome.events.append(PlanEvent("Warning", "NameConflict", str(conflict)))

    def _report_broken(self, policy, broken: list[tuple[dict, str]], outcome: Outcome) -> None:
        for secret, reason in broken:
            key = (policy["metadata"]["uid"], secret["metadata"]["name"])
            version = secret["metadata"]["resourceVersion"]
            if self._reported.get(key) == version:
                continue
            self._reported[key] = version
            self.metrics.refused_inputs.labels("key-secret").inc()
            outcome.events.append(PlanEvent("Warning", "KeySecretInvalid", f"{reason}; left in place, rotation paused until it is repaired or deleted"))

    def _warn_short_timeline_once(self, policy, spec: PolicySpec, outcome: Outcome) -> None:
        key = (policy["metadata"]["uid"], "timeline")
        generation = str(policy["metadata"].get("generation"))
        if self._reported.get(key) == generation:
            return
        self._reported[key] = generation
        for warning in timeline_warnings(spec):
            outcome.events.append(PlanEvent("Warning", "ShortTimeline", str(warning)))

    async def _refuse_spec(self, policy, error: SpecError, outcome: Outcome) -> None:
        key = (policy["metadata"]["uid"], "spec")
        generation = str(policy["metadata"].get("generation"))
        if self._reported.get(key) != generation:
            self._reported[key] = generation
            self.metrics.refused_inputs.labels("spec").inc()
            outcome.events.append(PlanEvent("Warning", "InvalidSpec", str(error)))
        status = dict(policy.get("status") or {})
        status["observedGeneration"] = policy["metadata"].get("generation")
        status["conditions"] = _conditions(
            policy, self.clock(), ready=("False", "InvalidSpec", str(error)), degraded=("True", "InvalidSpec", str(error))
        )
        await self._patch_status_body(policy, status, outcome)

    async def report_failure(self, policy, message: str, outcome: Outcome) -> None:
        """Say on the policy that reconciling it keeps failing (Ready=False, ReconcileFailed); the
        other conditions stay as they are. The status write may be what fails: then this raises."""
        failed = ("False", "ReconcileFailed", message)
        conditions = _conditions(policy, self.clock(), ready=failed, degraded=("True", "ReconcileFailed", message))
        kept = [c for c in (policy.get("status") or {}).get("conditions") or [] if c.get("type") not in ("Ready", "Degraded")]
        await self._patch_status_body(policy, {"conditions": conditions + kept}, outcome)

    def forget(self, uid: str) -> None:
        for key in [k for k in self._reported if k[0] == uid]:
            del self._reported[key]
        self.key_reader.forget(uid)
        self.revocations.forget(uid)
        self.served.forget(uid)

    async def close(self) -> None:
        await self.key_reader.close()
        await self.served.close()
        await self.revocations.mirror.close()

    async def _patch_status(
        self, policy, spec: PolicySpec, records: list[KeyRecord], outcome: Outcome, revocations: Published, broken=(),
        conflicts: Sequence[objects.NameConflict] = (), served: ServedReport | None = None, held: Sequence[str] = (),
    ) -> None:
        """``conflicts``: those that held the keys; the revocation ConfigMap's are added here.
        ``served``: this reconcile's read-back; without one (keys held by a broken Secret or a
        name conflict) the last one stays in status. ``held``: kids waiting to be served."""
        active = next((r for r in records if r.state is KeyState.ACTIVE), None)
        waiting = next((r for r in records if r.state is KeyState.NEXT), None)
        next_rotation = _next_rotation(records, spec)
        conflicts = [*conflicts, *_conflicts_of(revocations)]
        if broken:
            message = "; ".join(reason for _, reason in broken)
            ready = ("False", "KeySecretInvalid", message)
            degraded = ("True", "KeySecretInvalid", message)
        elif conflicts:
            message = "; ".join(map(str, conflicts))
            ready = ("False", "NameConflict", message)
            degraded = ("True", "NameConflict", message)
        else:
            ready = ("True", "KeysPublished", f"key {active.kid} signs and is published in {_published_set(spec).kind} {spec.published_set_name}")
            degraded = ("False", "AsExpected", "all key Secrets are readable")
            overdue = self.clock() - active.activated - spec.rotation_interval if active and active.activated else None
            if served is not None and served.alarms:
                degraded = ("True", "JWKSNotServed", bounded("; ".join(served.alarms), 4096))
            elif held and overdue is not None and overdue > timedelta(0):
                degraded = (
                    "True", "RotationOverdue",
                    f"key {held[0]} is not served at every spec.jwks.servedAt URL, so it does not sign yet and rotation is "
                    f"{format_duration(timedelta(seconds=int(overdue.total_seconds())), compact=True)} overdue (see condition JWKSServed); key {active.kid} keeps signing",
                )
        previous_status = policy.get("status") or {}
        status = {
            "observedGeneration": policy["metadata"].get("generation"),
            "activeKid": active.kid if active else None,
            "nextKid": waiting.kid if waiting else None,
            "nextRotationTime": objects.format_time(next_rotation) if next_rotation else None,
            "signingSecretName": spec.signing_secret_name,
            "jwksConfigMapName": None if spec.is_shared_secret else spec.jwks_config_map_name,
            "verificationSecretName": spec.verification_secret_name if spec.is_shared_secret else None,
            "keys": [_status_key(r) for r in _listed_keys(records)],
            "keysNotListed": len(records) - STATUS_KEYS_LIMIT if len(records) > STATUS_KEYS_LIMIT else None,
            "revocations": revocations.status,
            "servedAt": served.status if served is not None else (previous_status.get("servedAt") if spec.served_at else None),
            "conditions": _conditions(
                policy, self.clock(), ready=ready, degraded=degraded, revocations_published=revocations.condition,
                jwks_served=served.condition if served is not None else None, keep_jwks_served=bool(spec.served_at),
            ),
        }
        await self._patch_status_body(policy, status, outcome)

    async def _patch_status_body(self, policy, status: dict[str, Any], outcome: Outcome) -> None:
        # The gauge follows the condition as decided, before the write: a status write that
        # keeps failing is itself a reason the policy is not Ready (ReconcileFailed follows).
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)
        if ready is not None:
            self.metrics.observe_ready(policy["metadata"]["namespace"], policy["metadata"]["name"], ready["status"] == "True", ready["reason"])
        current = policy.get("status") or {}
        stale = [key for key, value in status.items() if current.get(key) != value]
        if not stale:
            return
        metadata = policy["metadata"]
        logger.debug("status of %s/%s: %s changed", metadata["namespace"], metadata["name"], ", ".join(stale))
        await self._write(
            outcome, "SigningKeyPolicy",
            self.api.merge_patch(POLICIES, metadata["namespace"], metadata["name"], {"status": status}, subresource="status"),
        )


class _PublishedSet(NamedTuple):
    resource: Any
    kind: str
    field: str
    """The spec field that names it (for a NameConflict)."""


def _published_set(spec: PolicySpec) -> _PublishedSet:
    """Where the policy's keys go to verifiers (``spec.published_set_name``): the JWKS
    ConfigMap, or for an HMAC policy the verification Secret."""
    if spec.is_shared_secret:
        return _PublishedSet(SECRETS, "Secret", "spec.verificationSecretName")
    return _PublishedSet(CONFIGMAPS, "ConfigMap", "spec.jwksConfigMapName")


def _requests(policy: dict[str, Any]) -> Requests:
    annotations = policy["metadata"].get("annotations") or {}
    return Requests(
        rotate=annotations.get(ROTATE_ANNOTATION),
        rotate_handled=annotations.get(objects.ROTATE_HANDLED_ANNOTATION),
        revoke_kid=annotations.get(REVOKE_ANNOTATION),
        revoke_handled=annotations.get(objects.REVOKE_HANDLED_ANNOTATION),
    )


def _conflicts_of(revocations: Published) -> list[objects.NameConflict]:
    return [revocations.conflict] if revocations.conflict is not None else []


def _next_rotation(records, spec: PolicySpec) -> datetime | None:
    waiting = next((r for r in records if r.state is KeyState.NEXT), None)
    if waiting is not None and waiting.activate_at is not None:
        return waiting.activate_at
    active = next((r for r in records if r.state is KeyState.ACTIVE), None)
    if active is None or spec.suspend:
        return None
    return active.activated + spec.rotation_interval


def _listed_keys(records: Sequence[KeyRecord]) -> list[KeyRecord]:
    """The keys status lists, by serial: the signing and the next key, then the newest others.
    The planner bounds no count (retention over interval, and manual rotations, decide it), so
    status must: one key past the CRD's limit would make every status write fail."""
    first = sorted(records, key=lambda r: (r.state not in (KeyState.ACTIVE, KeyState.NEXT), -r.serial))
    return sorted(first[:STATUS_KEYS_LIMIT], key=lambda r: r.serial)


def _status_key(record: KeyRecord) -> dict[str, Any]:
    entry: dict[str, Any] = {"kid": record.kid, "state": record.state.value, "algorithm": record.alg, "reason": record.reason.value}
    for field_name, status_name in (("created", "created"), ("first_served", "firstServed"), ("activated", "activated"), ("retired", "retired"), ("removal_due", "removalDue"), ("revoked", "revoked")):
        value = getattr(record, field_name)
        if value is not None:
            entry[status_name] = objects.format_time(value)
    return entry


def _conditions(
    policy, now: datetime, *, ready: tuple[str, str, str], degraded: tuple[str, str, str],
    revocations_published: tuple[str, str, str] | None = None,
    jwks_served: tuple[str, str, str] | None = None, keep_jwks_served: bool = False,
) -> list[dict[str, Any]]:
    """Conditions keep their lastTransitionTime while their status holds (kubectl wait and
    alerting read transitions), so an unchanged state writes nothing."""
    previous = {c.get("type"): c for c in (policy.get("status") or {}).get("conditions") or []}
    generation = policy["metadata"].get("generation")
    result = []
    wanted = [("Ready", ready), ("Degraded", degraded)]
    if revocations_published is not None:
        wanted.append(("RevocationsPublished", revocations_published))
    if jwks_served is not None:
        wanted.append(("JWKSServed", jwks_served))
    elif keep_jwks_served and "JWKSServed" in previous:
        before = previous["JWKSServed"]
        wanted.append(("JWKSServed", (before["status"], before["reason"], before["message"])))
    for kind, (status, reason, message) in wanted:
        before = previous.get(kind)
        unchanged = before is not None and before.get("status") == status
        since = before["lastTransitionTime"] if unchanged else objects.format_time(now)
        result.append({
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since, "observedGeneration": generation,
        })
    return result
