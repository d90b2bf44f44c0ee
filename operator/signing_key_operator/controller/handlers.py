"""kopf registrations: watch events in, one reconcile loop per policy, Events out.

Why `on.event` and a loop per policy, not `on.create/update/resume` and a fixed timer:
- every cause (create, update, resume after restart, a request annotation, drift of an owned
  object) ends in the same gather -> plan -> act, so one path serves them all;
- the loop sleeps until the plan's next due time (not a poll), so an idle policy costs nothing;
- kopf writes no bookkeeping (no diff-base annotation, no finalizer) for event handlers, so an
  idle policy makes zero API writes, and deleting a policy never waits on the operator: its
  objects carry ownerReferences and the garbage collector removes them.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import socket
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import kopf

from ..core.planner import REVOKE_ANNOTATION, ROTATE_ANNOTATION, PlanEvent
from ..k8s import objects
from ..k8s.api import POLICIES, REVOCATIONS, ApiError, KubeApi, load_configuration
from .metrics import OperatorMetrics
from .reconciler import Outcome, Reconciler
from .revocation_publisher import Verdict, reference, revocation_status
from .settings import OperatorSettings

logger = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "signingkeys.dev", "v1alpha1", "signingkeypolicies"
REVOCATION_PLURAL = "tokenrevocations"
EVENT_SOURCE = "signing-key-operator"
"""The component named on every Event (source.component and reportingComponent)."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def failure_message(error: Exception) -> str:
    """What a policy's condition and Event say about a failed reconcile. The errors raised here
    name objects and API answers, never data; a text that quotes key material anyway is withheld."""
    text = f"{type(error).__name__}: {error}"
    if "PRIVATE KEY" in text:
        return f"{type(error).__name__} (its message is withheld: it quotes key material)"
    return text if len(text) <= 1024 else text[:1023] + "…"


class PolicyLoop:
    """Reconciles one policy whenever it is woken or its next due time comes."""

    def __init__(self, runner: PolicyRunner, body: dict[str, Any]):
        self.runner = runner
        self.body = body
        self.wake = asyncio.Event()
        self.own_versions: dict[tuple[str, str], str] = {}
        self._heard: list[tuple[tuple[str, str], str | None]] | None = None
        """Events noticed while a reconcile runs (None while none runs)."""
        self.reconciled_request: tuple[Any, ...] | None = None
        """What the policy asked for when the last reconcile began (see ``_asked_of``)."""
        self.reported_failure: tuple[str, int | None] | None = None
        """The kind of failure last reported on the policy by an Event (None: none since the last success)."""
        self.reconcile_at: datetime | None = None
        self.check_at: datetime | None = None
        """When to check the policy's servedAt URLs without reconciling (None: it names none)."""
        self._check_only = False
        self.task = asyncio.create_task(self._run(), name=f"policy {self.key}")
        self.wake.set()

    @property
    def key(self) -> tuple[str, str]:
        return self.body["metadata"]["namespace"], self.body["metadata"]["name"]

    async def _run(self) -> None:
        failures = 0
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self._check_only:
                # Woken for a check of the served JWKS alone: it costs no API call, and only
                # one that finds something new reconciles (and writes status).
                self._check_only = False
                if not await self._check_finds_news():
                    await self._sleep()
                    continue
            outcome = Outcome()
            self._heard = []
            self.reconciled_request = _asked_of(self.body)
            try:
                await self.runner.reconciler.reconcile(self.body, outcome)
                failures, self.reported_failure = 0, None
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - any failure is retried with backoff, never crash-loops
                failures += 1
                outcome.retry_after = await self._failed(error, failures, outcome)
            # What a failed reconcile did before it failed counts too: its writes' echoes are
            # ignored (else they would cut the backoff short) and its Events are posted.
            self.own_versions.update(outcome.own_versions)
            heard, self._heard = self._heard, None
            if any(self.own_versions.get(key) != version for key, version in heard):
                self.wake.set()
            if outcome.writes:
                logger.info("%s/%s: reconciled with %d API writes", *self.key, outcome.writes)
            await self.runner.post_events(self.body, outcome)
            delay = self._delay(outcome)
            self.reconcile_at = None if delay is None else self.runner.clock() + timedelta(seconds=delay)
            self.check_at = outcome.next_check
            await self._sleep()

    async def _sleep(self) -> None:
        """Until woken by an event, or until the next reconcile or check is due."""
        due = [(when, check_only) for when, check_only in ((self.reconcile_at, False), (self.check_at, True)) if when is not None]
        if not due:
            return
        when, check_only = min(due, key=lambda item: item[0])
        try:
            await asyncio.wait_for(self.wake.wait(), timeout=max(0.0, (when - self.runner.clock()).total_seconds()))
        except asyncio.TimeoutError:
            self._check_only = check_only
            self.wake.set()

    async def _check_finds_news(self) -> bool:
        try:
            news, self.check_at = await self.runner.reconciler.check_served(self.body)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - a reconcile follows, with its own error handling
            logger.warning("check of the served JWKS of %s/%s failed: %s: %s", *self.key, type(error).__name__, error)
            return True
        return news

    async def _failed(self, error: Exception, failures: int, outcome: Outcome) -> timedelta:
        """Count and log a failed reconcile; once it persists, say so on the policy. Returns the backoff."""
        settings = self.runner.settings
        kind = type(error).__name__
        self.runner.metrics.reconcile_errors.labels(kind).inc()
        backoff = min(settings.error_backoff_initial * 2 ** (failures - 1), settings.error_backoff_max)
        message = failure_message(error)
        logger.warning("reconcile of %s/%s failed (%s); retrying in %s", *self.key, message, backoff)
        if failures < settings.failures_before_report:
            return backoff
        # One Event per kind of failure, not one per retry: the condition carries the latest text.
        what = (kind, getattr(error, "status", None))
        if what != self.reported_failure:
            self.reported_failure = what
            outcome.events.append(PlanEvent("Warning", "ReconcileFailed", f"{message} (failed {failures} times in a row; retrying with backoff)"))
        try:
            await self.runner.reconciler.report_failure(self.body, message, outcome)
        except Exception as report_error:  # noqa: BLE001 - the Event and the log still say it
            logger.warning("could not set ReconcileFailed on %s/%s: %s: %s", *self.key, type(report_error).__name__, report_error)
        return backoff

    def _delay(self, outcome: Outcome) -> float | None:
        if outcome.retry_after is not None:
            return outcome.retry_after.total_seconds() * (1 + random.random() / 2)
        if outcome.next_wakeup is None:
            return None
        # A few milliseconds late rather than early: an early wake-up finds nothing due yet.
        return max(0.0, (outcome.next_wakeup - self.runner.clock()).total_seconds()) + 0.01

    def notice(self, kind: str, body: dict[str, Any], deleted: bool = False) -> None:
        """A watch event about the policy or one of its objects: reconcile again, unless it is
        the echo of one of this loop's own writes."""
        metadata = body["metadata"]
        key, version = (kind, metadata["name"]), metadata.get("resourceVersion")
        if deleted:
            # Its record goes with it: key Secret names are never used again, so the records
            # would otherwise grow with every key the policy ever had.
            self.own_versions.pop(key, None)
            self.wake.set()
        elif kind == "SigningKeyPolicy" and _asked_of(body) != self.reconciled_request:
            # A version of our own can still carry news: when the watch skipped the user's
            # version (one restarted after its resourceVersion expired lists only the latest),
            # the status patch we wrote after it is the first we hear of their annotation.
            self.wake.set()
        elif self._heard is not None:
            # Judged once the reconcile under way has had all its writes answered: under load an
            # echo can come in before the answer to its write does.
            self._heard.append((key, version))
        elif self.own_versions.get(key) != version:
            self.wake.set()


class PolicyRunner:
    """All policy loops of this operator process."""

    def __init__(self, settings: OperatorSettings, api: KubeApi, metrics: OperatorMetrics, clock: Callable[[], datetime] = utc_now):
        self.settings = settings
        self.api = api
        self.metrics = metrics
        self.clock = clock
        self.reconciler = Reconciler(api, settings, metrics, clock)
        self.loops: dict[tuple[str, str], PolicyLoop] = {}
        self.background: set[asyncio.Task] = set()
        self.orphans: dict[str, str | None] = {}
        """TokenRevocations already marked PolicyNotFound: uid -> the resourceVersion marked."""

    def policy_changed(self, body: dict[str, Any]) -> None:
        key = body["metadata"]["namespace"], body["metadata"]["name"]
        loop = self.loops.get(key)
        if loop is not None and loop.body["metadata"]["uid"] != body["metadata"]["uid"]:
            self.policy_deleted(loop.body)
            loop = None
        if loop is None:
            self.loops[key] = PolicyLoop(self, body)
            return
        loop.body = body
        loop.notice("SigningKeyPolicy", body)

    def policy_deleted(self, body: dict[str, Any]) -> None:
        key = body["metadata"]["namespace"], body["metadata"]["name"]
        loop = self.loops.pop(key, None)
        if loop is not None:
            loop.task.cancel()
        self.reconciler.forget(body["metadata"]["uid"])
        self.metrics.forget_policy(*key)
        # Its TokenRevocations now revoke nothing: say so on each (no watch event will come).
        task = asyncio.create_task(self._mark_orphans(*key), name=f"orphans of {key}")
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _mark_orphans(self, namespace: str, policy_name: str) -> None:
        try:
            items = await self.api.list(REVOCATIONS, namespace)
        except ApiError as error:
            logger.warning("could not list the TokenRevocations of deleted policy %s/%s: %s", namespace, policy_name, error)
            return
        for item in items:
            if (item.get("spec") or {}).get("policyName") == policy_name:
                await self.revocation_changed(item, deleted=False)

    async def revocation_changed(self, body: dict[str, Any], deleted: bool) -> None:
        """A TokenRevocation changed: its policy's loop compiles the revocations again. One
        that names no existing policy is marked so (once per version), since no loop will."""
        metadata = body["metadata"]
        policy_name = (body.get("spec") or {}).get("policyName")
        loop = self.loops.get((metadata["namespace"], policy_name))
        if deleted or loop is not None:
            self.orphans.pop(metadata["uid"], None)  # withdrawn, or its policy is back and its loop reports
        if loop is not None:
            loop.notice("TokenRevocation", body, deleted)
            return
        if deleted:
            return
        if not isinstance(policy_name, str) or self.orphans.get(metadata["uid"]) == metadata.get("resourceVersion"):
            return
        try:
            if await self.api.get(POLICIES, metadata["namespace"], policy_name) is not None:
                return  # its loop is being started; it will report
            message = f"SigningKeyPolicy {policy_name} does not exist in namespace {metadata['namespace']}; nothing is revoked"
            verdict = Verdict(False, "PolicyNotFound", message, None, "Warning", "PolicyNotFound")
            status, _ = revocation_status(body, verdict, None, self.clock())
            if status is None:  # already marked so
                self.orphans[metadata["uid"]] = metadata.get("resourceVersion")
                return
            written = await self.api.merge_patch(
                REVOCATIONS, metadata["namespace"], metadata["name"], {"status": status}, subresource="status"
            )
            self.orphans[metadata["uid"]] = written["metadata"]["resourceVersion"]
            self.metrics.refused_inputs.labels("token-revocation").inc()
            kopf.event(reference(body), type=verdict.event_type, reason=verdict.event_reason, message=message)
            logger.warning("%s/%s PolicyNotFound: %s", metadata["namespace"], metadata["name"], message)
        except ApiError as error:
            logger.warning("could not mark TokenRevocation %s/%s: %s", metadata["namespace"], metadata["name"], error)

    def owned_object_changed(self, kind: str, body: dict[str, Any], deleted: bool) -> None:
        metadata = body["metadata"]
        policy = (metadata.get("labels") or {}).get(objects.POLICY_LABEL)
        loop = self.loops.get((metadata["namespace"], policy))
        if loop is not None:
            loop.notice(kind, body, deleted)

    async def post_events(self, body: dict[str, Any], outcome: Outcome) -> None:
        # Events about the policy first, then those about its TokenRevocations.
        for target, event in [(body, event) for event in outcome.events] + outcome.object_events:
            kopf.event(target, type=event.type, reason=event.reason, message=event.message)
            log = logger.warning if event.type == "Warning" else logger.info
            kind = "" if target is body else f"{target['kind']} "
            log("%s%s/%s %s: %s", kind, target["metadata"]["namespace"], target["metadata"]["name"], event.reason, event.message)

    async def stop(self) -> None:
        for task in self.background:
            task.cancel()
        for loop in self.loops.values():
            loop.task.cancel()
        await asyncio.gather(*(loop.task for loop in self.loops.values()), return_exceptions=True)
        self.loops.clear()
        await self.reconciler.close()


def _asked_of(body: dict[str, Any]) -> tuple[Any, ...]:
    """What a person asks of a policy: its spec (by generation) and the request annotations.
    The operator's own writes (status, handled annotations) never change these."""
    metadata = body["metadata"]
    annotations = metadata.get("annotations") or {}
    return metadata.get("generation"), annotations.get(ROTATE_ANNOTATION), annotations.get(REVOKE_ANNOTATION)


def _policy_copy(body: kopf.Body) -> dict[str, Any]:
    """A plain copy of the policy without managedFields, which the operator never reads and
    which are most of an object's size (a thousand policies are held in memory at once)."""
    policy = copy.deepcopy(dict(body))
    policy["metadata"] = {k: v for k, v in policy["metadata"].items() if k != "managedFields"}
    return policy


def build_registry(runner: PolicyRunner, settings: OperatorSettings) -> kopf.OperatorRegistry:
    """Handlers are registered on a registry of their own (no import-time global state)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.INFO
        settings.posting.loggers = False  # only the Events we post on purpose
        # Events say who posted them (`kubectl describe`'s From column): the operator, as
        # cert-manager's say cert-manager, not the framework it is built on.
        settings.posting.reporting_component = EVENT_SOURCE
        settings.posting.reporting_instance = socket.gethostname()  # the pod's name in a cluster
        settings.posting.event_name_prefix = f"{EVENT_SOURCE}-"
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        # Event handlers store nothing today; should kopf ever keep progress, it goes to
        # annotations, never to status.kopf, which the CRD's status schema would prune.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="signingkeys.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="signingkeys.dev")
        settings.networking.error_backoffs = [1, 2, 5, 10, 30]

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        configuration = load_configuration(settings.kubeconfig)
        token = configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
        scheme, _, value = (token or "").partition(" ")
        return kopf.ConnectionInfo(
            server=configuration.host,
            ca_path=configuration.ssl_ca_cert,
            insecure=not configuration.verify_ssl,
            certificate_path=configuration.cert_file,
            private_key_path=configuration.key_file,
            scheme=scheme or None,
            token=value or None,
        )

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def policy_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
        raw = _policy_copy(body)
        if event.get("type") == "DELETED":
            runner.policy_deleted(raw)
        else:
            runner.policy_changed(raw)

    @kopf.on.event(GROUP, VERSION, REVOCATION_PLURAL, registry=registry)
    async def revocation_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
        raw = {"metadata": {k: body["metadata"].get(k) for k in ("name", "namespace", "uid", "resourceVersion", "generation")},
               "spec": copy.deepcopy(dict(body.get("spec") or {})), "status": copy.deepcopy(dict(body.get("status") or {}))}
        await runner.revocation_changed(raw, event.get("type") == "DELETED")

    for kind, plural in (("Secret", "secrets"), ("ConfigMap", "configmaps")):
        def owned_event(event: dict[str, Any], body: kopf.Body, _kind: str = kind, **_: Any) -> None:
            # Only the metadata: the data of a key Secret has no business in this process's memory.
            metadata = {key: body["metadata"].get(key) for key in ("name", "namespace", "labels", "resourceVersion")}
            runner.owned_object_changed(_kind, {"metadata": copy.deepcopy(metadata)}, event.get("type") == "DELETED")

        kopf.on.event("", "v1", plural, labels={objects.POLICY_LABEL: kopf.PRESENT}, registry=registry, id=f"owned-{plural}")(owned_event)

    return registry


async def run_operator(settings: OperatorSettings, stop_flag: asyncio.Event | None = None, clock: Callable[[], datetime] = utc_now) -> None:
    metrics = OperatorMetrics()
    api = KubeApi(load_configuration(settings.kubeconfig), connections=settings.api_connections)
    runner = PolicyRunner(settings, api, metrics, clock)
    registry = build_registry(runner, settings)
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry)
    try:
        await kopf.operator(
            registry=registry,
            standalone=settings.peering is None,
            peering_name=settings.peering,  # naming one makes kopf require its peering CRD
            priority=random.randint(0, 32767),
            namespaces=list(settings.namespaces),
            clusterwide=not settings.namespaces,
            liveness_endpoint=f"http://{settings.health_host}:{settings.health_port}/healthz" if settings.health_port else None,
            stop_flag=stop_flag,
        )
    finally:
        await runner.stop()
        await api.close()

