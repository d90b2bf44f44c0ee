"""One policy's TokenRevocations: gather -> compile -> publish -> report.

Gather lists the TokenRevocations of the policy's namespace that name it. The pure
:func:`~.core.revocations.compile_revocations` decides which are in force at ``now``. Publish
writes the revocation ConfigMap only when its bytes change, and with the Redis backend mirrors
the entries (redis_mirror.py). Report sets each TokenRevocation's status (InForce, until) and
posts an Event when that changes: published, pruned at its end, invalid, or not published
(document full, Redis unreachable), so nothing is dropped silently.

Order: the document (or Redis) first, the statuses after, so an InForce=True status is never
seen before verifiers can see the entry.

A revocation ConfigMap that exists but is not the policy's (a user's object of that name,
another policy's) is left as it is: nothing is published there, the entries say so, and the
policy reports the conflict (:attr:`Published.conflict`).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..core.planner import PlanEvent
from ..core.revocations import (
    Compiled,
    RedisLayout,
    Revocation,
    RevocationDocument,
    RevocationError,
    compile_revocations,
    parse_revocation,
)
from ..core.spec import PolicySpec
from ..k8s import objects
from ..k8s.api import CONFIGMAPS, REVOCATIONS, SECRETS, ApiError, KubeApi
from .redis_mirror import RedisMirror, RedisUnavailable

logger = logging.getLogger(__name__)

REVOCATIONS_FILE = "revocations.json"
API_VERSION = "signingkeys.dev/v1alpha1"


@dataclass
class Published:
    """What the policy's status says about its revocations."""

    status: dict[str, Any]
    condition: tuple[str, str, str]
    """(status, reason, message) of the policy's RevocationsPublished condition."""
    next_wakeup: datetime | None
    in_force: int = 0
    unpublished: int = 0
    """Entries in force that verifiers cannot see (document full, Redis unreachable)."""
    conflict: objects.NameConflict | None = None
    """The revocation ConfigMap's name is taken by an object this policy does not own."""


Write = Callable[[str, Awaitable[dict[str, Any]]], Awaitable[dict[str, Any]]]
"""The reconciler's guarded write: (kind, API call) -> written object."""


@dataclass
class Verdict:
    """What one TokenRevocation's status says, and the Event when that changes."""

    in_force: bool
    reason: str
    message: str
    until: datetime | None
    event_type: str
    event_reason: str


class RevocationPublisher:
    def __init__(
        self, api: KubeApi, mirror: RedisMirror, clock: Callable[[], datetime], *,
        redis_resync: timedelta, redis_retry: timedelta, document_limit: int, name_conflict_recheck: timedelta,
    ):
        self.api = api
        self.document_limit = document_limit
        self.mirror = mirror
        self.clock = clock
        self.redis_resync = redis_resync
        self.redis_retry = redis_retry
        self.name_conflict_recheck = name_conflict_recheck
        self._reported_full: dict[str, int] = {}

    async def publish(self, policy: dict[str, Any], spec: PolicySpec, write: Write, events: list[tuple[dict, PlanEvent]], policy_events: list[PlanEvent]) -> Published:
        metadata = policy["metadata"]
        namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
        items, parsed, invalid = await self._gather(namespace, name)
        now = self.clock()
        max_age = int(spec.jwks_max_age.total_seconds())
        compiled = compile_revocations(
            parsed.values(), token_lifetime=spec.token_lifetime, clock_skew=spec.clock_skew, now=now,
            backend=spec.revocation_backend, max_document_bytes=self.document_limit - len(str(max_age)),
        )
        where = f"ConfigMap {spec.revocation_config_map_name}"
        body = compiled.document.render()
        problem: tuple[str, str] | None = None  # (reason, message) for entries not published
        if compiled.left_out:
            problem = ("DocumentFull", (
                f"{where} holds the {len(compiled.document)} oldest entries in {len(body)} bytes; {len(compiled.left_out)} more "
                f"would pass the limit of {self.document_limit} bytes. Set spec.revocation.backend: Redis on "
                f"SigningKeyPolicy {name}"
            ))
            if self._reported_full.get(uid) != len(compiled.left_out):
                self._reported_full[uid] = len(compiled.left_out)
                policy_events.append(PlanEvent("Warning", "RevocationsTooLarge", problem[1]))
        else:
            self._reported_full.pop(uid, None)
        served = compiled.document
        wakeups = [compiled.next_expiry]
        conflict = await self._write_document(policy, spec, body, max_age, write)
        if conflict is not None:
            problem = ("NameConflict", str(conflict))
            served = RevocationDocument()
            wakeups.append(now + self.name_conflict_recheck)

        if spec.revocation_backend == "Redis":
            assert spec.redis is not None
            where = f"Redis {spec.redis.url}"
            layout = RedisLayout.for_policy(namespace, name, spec.redis.key_prefix)
            try:
                password = await self._redis_password(namespace, spec)
                await self.mirror.mirror(uid, spec.redis.url, password, layout, compiled.entries)
                served = compiled.entries
                # Redis may lose everything (a restart without persistence): look again soon.
                wakeups.append(now + self.redis_resync)
            except (RedisUnavailable, _PasswordMissing) as error:
                problem = ("RedisUnavailable", f"{error}; retrying, entries stay pending until it answers")
                served = RevocationDocument()
                wakeups.append(now + self.redis_retry)
                logger.warning("%s/%s: %s", namespace, name, problem[1])

        for item in items:
            item_name = item["metadata"]["name"]
            verdict = _verdict(item_name, parsed.get(item_name), invalid.get(item_name), compiled, served, problem, where)
            await self._report(item, verdict, spec, write, events)

        unpublished = sum(1 for r, _ in compiled.in_force if not _is_served(r, served))
        if problem is not None:
            condition = ("False", problem[0], problem[1])
        else:
            condition = ("True", "Published", f"{len(compiled.in_force)} revocation(s) in force, published in {where}")
        status = {
            "backend": spec.revocation_backend,
            "configMapName": spec.revocation_config_map_name,
            "inForce": len(compiled.in_force),
            "documentBytes": len(body),
        }
        return Published(
            status, condition, min((w for w in wakeups if w is not None), default=None), len(compiled.in_force), unpublished,
            conflict,
        )

    async def _gather(self, namespace: str, policy_name: str) -> tuple[list[dict[str, Any]], dict[str, Revocation], dict[str, str]]:
        """The policy's TokenRevocations as stored, those that parse, and why the others do not."""
        items = [i for i in await self.api.list(REVOCATIONS, namespace) if (i.get("spec") or {}).get("policyName") == policy_name]
        parsed: dict[str, Revocation] = {}
        invalid: dict[str, str] = {}
        for item in items:
            name, created = item["metadata"]["name"], item["metadata"].get("creationTimestamp")
            try:
                parsed[name] = parse_revocation(name, item.get("spec"), objects.parse_time(created) if created else None)
            except RevocationError as error:
                invalid[name] = str(error)
        return items, parsed, invalid

    async def _write_document(
        self, policy: dict[str, Any], spec: PolicySpec, body: bytes, max_age: int, write: Write
    ) -> objects.NameConflict | None:
        """Create or replace the revocation ConfigMap, only when its content changed and it is
        absent or the policy's own; else the conflict, and nothing written."""
        namespace = policy["metadata"]["namespace"]
        desired = objects.published_configmap(policy, spec.revocation_config_map_name, "revocations", REVOCATIONS_FILE, body, max_age)
        current = await self.api.get(CONFIGMAPS, namespace, spec.revocation_config_map_name)
        conflict = objects.name_conflict("ConfigMap", current, policy, "spec.revocation.configMapName")
        if conflict is not None or objects.configmap_is_current(current, desired):
            return conflict
        if current is None:
            await write("ConfigMap", self.api.create(CONFIGMAPS, namespace, desired))
        else:
            desired["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            await write("ConfigMap", self.api.replace(CONFIGMAPS, namespace, desired))
        return None

    async def _redis_password(self, namespace: str, spec: PolicySpec) -> str | None:
        assert spec.redis is not None
        if spec.redis.password_secret is None:
            return None
        secret_name, key = spec.redis.password_secret
        secret = await self.api.get(SECRETS, namespace, secret_name)
        value = ((secret or {}).get("data") or {}).get(key)
        if value is None:
            raise _PasswordMissing(f"Secret {secret_name} has no data key {key} (spec.revocation.redis.passwordSecretRef)")
        return base64.b64decode(value).decode()

    async def _report(self, item: dict[str, Any], verdict: Verdict, spec: PolicySpec, write: Write, events: list[tuple[dict, PlanEvent]]) -> None:
        metadata = item["metadata"]
        status, transition = revocation_status(item, verdict, spec.revocation_backend, self.clock())
        if status is None:
            return
        patch = {"status": status}
        try:
            await write("TokenRevocation", self.api.merge_patch(REVOCATIONS, metadata["namespace"], metadata["name"], patch, subresource="status"))
        except ApiError as error:
            if error.not_found:
                return  # deleted since the list: its withdrawal wakes this policy again
            raise
        if transition:
            events.append((reference(item), PlanEvent(verdict.event_type, verdict.event_reason, verdict.message)))

    def forget(self, uid: str) -> None:
        self._reported_full.pop(uid, None)
        self.mirror.forget(uid)


def revocation_status(
    item: dict[str, Any], verdict: Verdict, backend: str | None, now: datetime
) -> tuple[dict[str, Any] | None, bool]:
    """(the status to write, or None when the stored one already says it; whether InForce
    changes). lastTransitionTime stays while the condition's status and reason hold."""
    metadata = item["metadata"]
    current = item.get("status") or {}
    previous = next((c for c in current.get("conditions") or [] if c.get("type") == "InForce"), None)
    condition_status = "True" if verdict.in_force else "False"
    unchanged = previous is not None and previous.get("status") == condition_status and previous.get("reason") == verdict.reason
    since = previous.get("lastTransitionTime") if unchanged else objects.format_time(now)
    status = {
        "observedGeneration": metadata.get("generation"),
        "inForce": verdict.in_force,
        "until": objects.format_time(verdict.until) if verdict.until else None,
        "backend": backend,
        "conditions": [{
            "type": "InForce", "status": condition_status, "reason": verdict.reason, "message": verdict.message,
            "lastTransitionTime": since, "observedGeneration": metadata.get("generation"),
        }],
    }
    if all(current.get(k) == v for k, v in status.items()):
        return None, False
    return status, not unchanged


class _PasswordMissing(Exception):
    pass


def reference(item: dict[str, Any]) -> dict[str, Any]:
    """What kopf.event needs to name a TokenRevocation as the Event's object."""
    metadata = item["metadata"]
    return {
        "apiVersion": API_VERSION, "kind": "TokenRevocation",
        "metadata": {k: metadata[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in metadata},
    }


def _is_served(revocation: Revocation, served: RevocationDocument) -> bool:
    if revocation.jti is not None:
        return revocation.jti in served.jti
    entry = served.sub.get(revocation.subject or "")
    return entry is not None and revocation.issued_before is not None and entry.issued_before >= revocation.issued_before.timestamp()


def _verdict(name, revocation, invalid, compiled: Compiled, served, problem, where) -> Verdict:
    if invalid is not None:
        return Verdict(False, "Invalid", f"{invalid}; not published", None, "Warning", "InvalidRevocation")
    ends = {r.name: until for r, until in compiled.in_force + compiled.expired}
    until = ends[name]
    if any(r.name == name for r, _ in compiled.expired):
        return Verdict(False, "Expired", f"{revocation.what}: ended at {objects.format_time(until)} (no verifier accepts the token any more); pruned from {where}",
                        until, "Normal", "RevocationExpired")
    if _is_served(revocation, served):
        return Verdict(True, "Published", f"{revocation.what}: refused by verifiers until {objects.format_time(until)}; published in {where}",
                        until, "Normal", "RevocationPublished")
    reason, message = problem if problem is not None else ("Pending", "not published yet")
    return Verdict(False, reason, f"{revocation.what}: not published: {message}", until, "Warning", "RevocationNotPublished")
