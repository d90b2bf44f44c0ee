"""The served-JWKS gate through real rotations, with and without it, in the same run.

An *arm* is one policy on the scaled timeline (timeline.py: publishAhead 6 s, chosen as if
nothing stood between the sidecar and the verifiers), its sidecar watching the ConfigMap, a
:class:`~tests.served_endpoint.LaggingEndpoint` in front of the sidecar that serves what the
sidecar served ``lag`` seconds ago (a CDN or a stale volume), a signer that sees the signing
Secret late as a mounting pod does, and every conformance client (libraries and gateways)
fetching from the lagging endpoint, which is where verifiers fetch. The *gated* arm names that endpoint in
``spec.jwks.servedAt``, so a new key's publishAhead counts from when the endpoint first served
it; the *ungated* arm does not, so publishAhead counts from the ConfigMap write, and with
lag > publishAhead verifiers meet tokens of a key they cannot fetch yet.

Rotations, as test_rotation.py makes them: the first by the rotate annotation, then the timer
and the annotation alternate (an annotation 0.5 s after each timer rotation), until the arm has
had ``rotations`` activations. Every token goes to every client fresh, half-way and at its
oldest acceptable age. Both arms run at once: two policies, sidecars, endpoints, signers and
sets of clients (10 verifier processes, 4 of them JVMs), each signer at half test_rotation's
rate (SIGNER_BEAT_S).

Used by test_served_gate.py (lag 8 s, 3 rotations) and bench/served_gate.py (lag 30 s, 10).
"""

from __future__ import annotations

import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from signing_key_operator.core.planner import ROTATE_ANNOTATION

from tests.integration.harness import Policies, wait_until
from tests.served_endpoint import LaggingEndpoint

from .clients import CLIENTS
from .driver import (
    MountedSecret,
    Recorder,
    Scheduler,
    ServedHistory,
    Sidecar,
    Signer,
    SigningKey,
    Verdict,
    lag_figures,
    mount_signing_secret,
    start_clients,
    start_verifying,
    stop_verifying,
    warm_up,
)
from .timeline import (
    CLIENT_ARGS,
    CLOCK_SKEW_S,
    FACTOR,
    INTERVAL_S,
    JWKS_MAX_AGE_S,
    MOUNT_LAG_S,
    MOUNT_POLL_S,
    OLDEST_MARGIN_S,
    POLICY_SPEC,
    PUBLISH_AHEAD_S,
    SECRET_PROPAGATION,
    TOKEN_LIFETIME_S,
)
from .timeline import SIGNER_BEAT_S as TIMELINE_SIGNER_BEAT_S

SERVED_CHECK_INTERVAL = "0.2s"
SERVED_CHECK_IDLE_INTERVAL = "10s"
JWKS_SERVER_RELOAD_TIME = "2s"
OPERATOR_ARGS = [
    "--served-check-interval", SERVED_CHECK_INTERVAL,
    "--served-check-idle-interval", SERVED_CHECK_IDLE_INTERVAL,
    "--jwks-server-reload-time", JWKS_SERVER_RELOAD_TIME,
]
"""The operator's read-back flags on the scaled timeline (the defaults are 5 s, 5 min, 2 min):
the conformance operator (conftest.py) and bench/served_gate.py pass them."""

ARMS = ("gated", "ungated")
ANNOTATE_AFTER_TIMER_S = 0.5
STEP_S = 0.2
SIGNER_BEAT_S = 2 * TIMELINE_SIGNER_BEAT_S
"""A token every 0.4 s per arm, not test_rotation's 0.2 s: two arms at its rate are twice its
verifications (when it was 0.15 s, about 200 a second over 10 verifier processes on 2 cores,
and on a loaded machine the JVM verifiers fell behind: up to 1.3 % of the oldest-age verdicts
finished after exp + clockSkew). At 0.4 s both arms together verify as often as test_rotation's one does, and
an ungated rotation still has several tokens in the 1-2 s when its key signs unserved."""
SIGN_AFTER_LAST_ROTATION_S = 3.0
"""Signing goes on this long after an arm's last activation (more than the mount lag), so the
last key's tokens are verified too."""
ANNOTATION_PREFIX = "signingkeys.dev/"


def rotation_budget_s(lag: float) -> float:
    """Longest one gated rotation should take: the key is published up to interval -
    publishAhead after the last activation, reaches the endpoint ``lag`` later, is seen within a
    check interval or two, then waits publishAhead; plus slack for a loaded machine."""
    return (INTERVAL_S - PUBLISH_AHEAD_S) + lag + PUBLISH_AHEAD_S + 6


def policy_spec(gated: bool, endpoint_url: str) -> dict:
    jwks = {"maxAge": f"{JWKS_MAX_AGE_S}s"}
    if gated:
        jwks["servedAt"] = [endpoint_url]
    return {**POLICY_SPEC, "jwks": jwks}


class _EndpointView:
    """What ServedHistory needs (``kids()``), for the lagging endpoint."""

    def __init__(self, endpoint: LaggingEndpoint):
        self.endpoint = endpoint

    def kids(self) -> list[str]:
        return self.endpoint.served_kids()


def _record_time(text: str | None) -> float | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


@dataclass
class Arm:
    """One policy, its sidecar, lagging endpoint, signer and clients."""

    name: str
    gated: bool
    lag: float
    target: int
    policies: Policies
    kubeconfig: Path
    namespace: str
    log_dir: Path
    policy: str = ""
    sidecar: Sidecar | None = None
    endpoint: LaggingEndpoint | None = None
    sidecar_history: ServedHistory | None = None
    endpoint_history: ServedHistory | None = None
    mounted: MountedSecret | None = None
    processes: dict = field(default_factory=dict)
    workers: list = field(default_factory=list)
    recorder: Recorder = field(default_factory=Recorder)
    scheduler: Scheduler | None = None
    signer: Signer | None = None
    # what the run saw
    rotations: list[dict] = field(default_factory=list)
    keys: dict[str, dict] = field(default_factory=dict)
    """kid -> the lifecycle times of its key Secret (seconds since the epoch), read while it exists."""
    active: str | None = None
    warm_key: SigningKey | None = None
    annotations_sent: int = 0
    annotate_at: float | None = None
    started_at: float = 0.0
    stopped_signing_at: float | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    signed: int = 0
    kids_signed: list[str] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    conditions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.policy = f"served-{self.name}"
        self.log_dir = Path(self.log_dir) / self.name
        self.log_dir.mkdir(parents=True, exist_ok=True)

    # -- life cycle -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Sidecar, endpoint, then the policy (the gated one names the endpoint's URL)."""
        self.sidecar = Sidecar(self.kubeconfig, self.namespace, f"{self.policy}-jwks", self.log_dir / "sidecar.log")
        self.endpoint = LaggingEndpoint(self.sidecar.url, lag=self.lag).start()
        self.policies.create(self.policy, policy_spec(self.gated, self.endpoint.url))
        self.policies.wait_ready(self.policy, 60)
        self.sidecar.wait_ready()
        self.sidecar_history = ServedHistory(self.sidecar)
        self.endpoint_history = ServedHistory(_EndpointView(self.endpoint))  # type: ignore[arg-type]
        self.sidecar_history.start()
        self.endpoint_history.start()
        self.mounted = mount_signing_secret(self.kubeconfig, self.namespace, self.policy, self.log_dir)
        self.mounted.start()

    def wait_served(self) -> None:
        """Until the endpoint serves the bootstrap key (``lag`` after the sidecar first did)."""
        key = wait_until(self.mounted.visible, 30, f"{self.name}: the signer to see the signing Secret")
        wait_until(lambda: key.kid in self.endpoint.served_kids(), self.lag + 30,
                   f"{self.name}: the lagging endpoint to serve the bootstrap key", interval=0.1)
        # Not necessarily the key that signs now: with lag > interval the ungated arm has
        # rotated since, and its endpoint does not serve the active key yet.
        self.warm_key = key

    def start_clients(self) -> None:
        self.processes = start_clients(
            CLIENTS, {name: ["--url", self.endpoint.url, *args] for name, args in CLIENT_ARGS.items()}, self.log_dir
        )

    def warm(self) -> None:
        """One token each, not counted: a JVM takes a second or more to start."""
        warm_up(self.processes, self.warm_key, TOKEN_LIFETIME_S)

    def start_signing(self) -> None:
        self.workers, self.scheduler, self.signer = start_verifying(
            self.processes, self.recorder, self.mounted, SIGNER_BEAT_S, OLDEST_MARGIN_S
        )
        self.active = self.policies.get(self.policy)["status"]["activeKid"]
        self.started_at = time.time()
        self._annotate()  # the first rotation is an annotation one, then they alternate

    # -- driving ----------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return len(self.rotations) >= self.target

    @property
    def finished(self) -> bool:
        return self.done and time.time() - self.rotations[-1]["at"] >= SIGN_AFTER_LAST_ROTATION_S

    def _annotate(self) -> None:
        self.annotations_sent += 1
        self.policies.annotate(self.policy, {ROTATE_ANNOTATION: f"gate-{self.annotations_sent}-{time.time():.3f}"})

    def step(self) -> None:
        """One look at the policy: a new active kid is a rotation; keep the key Secrets' times."""
        self.check_threads()
        self._read_key_secrets()
        status = self.policies.get(self.policy).get("status") or {}
        current = status.get("activeKid")
        if current and current != self.active:
            reason = next((key.get("reason") for key in status.get("keys") or [] if key["kid"] == current), "unknown")
            self.rotations.append({"at": time.time(), "kid": current, "reason": reason})
            self.active = current
            if reason == "timer":
                self.annotate_at = time.time() + ANNOTATE_AFTER_TIMER_S
        if self.annotate_at is not None and time.time() >= self.annotate_at and not self.done:
            self._annotate()
            self.annotate_at = None

    def _read_key_secrets(self) -> None:
        for secret in self.policies.key_secrets(self.policy):
            annotations = secret.metadata.annotations or {}
            kid = annotations.get(f"{ANNOTATION_PREFIX}kid")
            if not kid:
                continue
            entry = self.keys.setdefault(kid, {"serial": int((secret.metadata.labels or {}).get(f"{ANNOTATION_PREFIX}serial", 0))})
            entry["reason"] = annotations.get(f"{ANNOTATION_PREFIX}reason")
            for name in ("created", "first-served", "activated", "retired"):
                moment = _record_time(annotations.get(f"{ANNOTATION_PREFIX}{name}"))
                if moment is not None:
                    entry[name] = moment

    def check_threads(self) -> None:
        for worker in self.workers:
            if worker.error is not None:
                raise RuntimeError(f"{self.name}: {worker.process.client.name} verifier failed: {worker.error!r}")
            if not worker.is_alive():
                raise RuntimeError(f"{self.name}: {worker.process.client.name} worker stopped")
        if self.signer is not None and self.signer.error is not None:
            raise RuntimeError(f"{self.name}: signer failed: {self.signer.error!r}")

    def stop_signing(self) -> None:
        if self.signer is not None and self.stopped_signing_at is None:
            self.signer.stop()
            self.stopped_signing_at = time.time()

    def drained(self) -> bool:
        return not self.scheduler.pending() and not any(worker.backlog() for worker in self.workers)

    def collect(self) -> None:
        self._read_key_secrets()
        self.verdicts = self.recorder.snapshot()
        self.signed = len(self.signer.signed)
        self.kids_signed = sorted({token.kid for token in self.signer.signed})
        counts: Counter = Counter()
        for event in sorted(self.policies.events(self.policy), key=lambda e: str(e.last_timestamp or e.event_time or "")):
            counts[event.reason] += event.count or 1
            if event.type == "Warning" and event.reason != "ShortTimeline":
                self.warnings.setdefault(event.reason, []).append(_short(event.message or "", 240))
        self.events = dict(sorted(counts.items()))
        status = self.policies.get(self.policy).get("status") or {}
        self.conditions = {c["type"]: f"{c['status']} ({c.get('reason')})" for c in status.get("conditions") or []}

    def close(self) -> None:
        try:  # first, or the operator goes on rotating it and checking an endpoint that is gone
            self.policies.delete(self.policy)
        except Exception:  # noqa: BLE001 - never created, or the API is going away
            pass
        stop_verifying(self.signer, self.scheduler, self.workers, self.processes)
        for part in (self.mounted, self.endpoint_history, self.sidecar_history):
            if part is not None:
                part.stop()
        if self.endpoint is not None:
            self.endpoint.stop()
        if self.sidecar is not None:
            self.sidecar.stop()

    # -- figures ----------------------------------------------------------------------------

    def figures(self) -> dict:
        return {
            "policy": self.policy,
            "gated": self.gated,
            "spec_jwks": policy_spec(self.gated, "<endpoint>")["jwks"],
            "lag_s": self.lag,
            "rotations": self._rotation_figures(),
            "rotation_kinds": dict(Counter(rotation["reason"] for rotation in self.rotations)),
            "duration_s": round((self.stopped_signing_at or time.time()) - self.started_at, 1),
            "tokens_signed": self.signed,
            "kids_signed": len(self.kids_signed),
            "clients": self._client_figures(),
            "events": self.events,
            "warnings": self.warnings,
            "conditions": self.conditions,
        }

    def _rotation_figures(self) -> list[dict]:
        rows = []
        for rotation in self.rotations:
            kid = rotation["kid"]
            key = self.keys.get(kid, {})
            created, first_served, activated = key.get("created"), key.get("first-served"), key.get("activated")
            at_endpoint = _first_with(self.endpoint_history, kid)
            at_sidecar = _first_with(self.sidecar_history, kid)

            def between(start, end):
                return round(end - start, 2) if start is not None and end is not None else None

            rows.append({
                "kid": kid,
                "reason": rotation["reason"],
                "published_to_first_served_s": between(created, first_served),
                "first_served_to_activation_s": between(first_served, activated),
                "published_to_activation_s": between(created, activated),
                "published_to_sidecar_s": between(created, at_sidecar),
                "published_to_endpoint_s": between(created, at_endpoint),
                "endpoint_to_first_served_s": between(at_endpoint, first_served),
                "endpoint_to_activation_s": between(at_endpoint, activated),
            })
        return rows

    def _client_figures(self) -> dict:
        result = {}
        for client in CLIENTS:
            mine = [v for v in self.verdicts if v.client == client.name and not v.token.probe]
            late = [v for v in mine if v.late]
            counted = [v for v in mine if not v.late]
            failures = [v for v in counted if not v.ok]
            durations = sorted((v.finished - v.started) * 1000 for v in counted)
            result[client.name] = {
                "verifications": len(counted),
                "failures": len(failures),
                "failures_by_kind": dict(Counter(v.kind for v in failures)),
                "verified_by_kind": dict(Counter(v.kind for v in counted if v.ok)),
                "late": len(late),
                **lag_figures(mine),
                "oldest_age_verified_s": round(max((v.started - v.token.signed for v in counted if v.ok), default=0), 2),
                "verify_ms_p50": round(statistics.median(durations), 1) if durations else None,
                "verify_ms_max": round(durations[-1], 1) if durations else None,
                "failure_reasons": dict(Counter(_short(v.reason.replace(v.token.kid, "<kid>"), 160) for v in failures).most_common(3)),
                "failure_samples": [self._sample(v) for v in failures[:5]],
            }
        return result

    def _sample(self, verdict: Verdict) -> dict:
        at_endpoint = self.endpoint_history.served_at(verdict.started)
        at_sidecar = self.sidecar_history.served_at(verdict.started)
        return {
            "kid": verdict.token.kid, "kind": verdict.kind, "reason": verdict.reason[:200],
            "age_s": round(verdict.started - verdict.token.signed, 2),
            "kid_at_endpoint_then": (verdict.token.kid in at_endpoint) if at_endpoint is not None else None,
            "kid_at_sidecar_then": (verdict.token.kid in at_sidecar) if at_sidecar is not None else None,
            "seconds_into_run": round(verdict.started - self.started_at, 2),
        }


def _first_with(history: ServedHistory | None, kid: str) -> float | None:
    if history is None:
        return None
    return next((sampled for sampled, kids in history.samples if kid in kids), None)


def _short(reason: str, limit: int = 120) -> str:
    return " ".join(reason.split())[:limit]


def run_arms(
    policies: Policies, kubeconfig: Path, namespace: str, log_dir: Path, lag: float, rotations: int,
    arms: tuple[str, ...] = ARMS, progress=None,
) -> dict:
    """Both arms at once until each has had ``rotations`` activations; their figures."""
    say = progress or (lambda message: None)
    run_started = time.monotonic()
    load_before = os.getloadavg()
    runners = [Arm(name, name == "gated", lag, rotations, policies, kubeconfig, namespace, log_dir) for name in arms]
    try:
        for arm in runners:
            arm.prepare()
        say(f"policies Ready; waiting {lag:g} s for the lagging endpoints to serve the bootstrap keys")
        for arm in runners:
            arm.wait_served()
        for arm in runners:
            arm.start_clients()
        for arm in runners:
            arm.warm()
        say("clients warm; rotating")
        for arm in runners:
            arm.start_signing()
        deadline = time.monotonic() + rotations * rotation_budget_s(lag) + 30
        reported = {arm.name: 0 for arm in runners}
        while not all(arm.stopped_signing_at is not None for arm in runners):
            for arm in runners:
                if arm.stopped_signing_at is None:
                    arm.step()
                    if arm.finished:
                        arm.stop_signing()
                else:
                    arm.check_threads()
                if len(arm.rotations) != reported[arm.name]:
                    reported[arm.name] = len(arm.rotations)
                    last = arm.rotations[-1]
                    say(f"{arm.name}: rotation {len(arm.rotations)}/{rotations} ({last['reason']}) "
                        f"{last['at'] - arm.started_at:.1f} s in")
            if time.monotonic() > deadline:
                raise AssertionError(
                    "rotations did not come in time: "
                    + ", ".join(f"{arm.name} {len(arm.rotations)}/{rotations} {[r['reason'] for r in arm.rotations]}" for arm in runners)
                    + f" (budget {rotation_budget_s(lag):.0f} s per rotation)"
                )
            time.sleep(STEP_S)
        drain_deadline = time.monotonic() + TOKEN_LIFETIME_S + CLOCK_SKEW_S + 30
        while not all(arm.drained() for arm in runners):
            for arm in runners:
                arm.check_threads()
            if time.monotonic() > drain_deadline:
                raise AssertionError("verifications still queued after the run")
            time.sleep(0.1)
        time.sleep(0.5)  # the request in flight
        for arm in runners:
            arm.check_threads()
            arm.collect()
    finally:
        for arm in runners:
            arm.close()
    return {
        "timeline": {**POLICY_SPEC, "secretPropagation": SECRET_PROPAGATION, "signerBeat_s": SIGNER_BEAT_S,
                     "mountPoll_s": MOUNT_POLL_S, "mountLag_s": list(MOUNT_LAG_S), "factor": FACTOR,
                     "operator": " ".join(OPERATOR_ARGS)},
        "lag_s": lag,
        "target_rotations": rotations,
        "wall_time_s": round(time.monotonic() - run_started, 1),
        "load_average": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "arms": {arm.name: arm.figures() for arm in runners},
    }


def _stats(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"min {min(values):.2f}  median {statistics.median(values):.2f}  max {max(values):.2f}"


def format_table(result: dict) -> str:
    """Per client, failed verifications / verifications in each arm; then the rotation timings."""
    arms = result["arms"]
    names = list(arms)
    lines = [
        f"lag {result['lag_s']:g} s, publishAhead {PUBLISH_AHEAD_S} s, interval {INTERVAL_S} s; "
        f"wall {result['wall_time_s']} s; load average {result['load_average']['before']} -> {result['load_average']['after']}",
    ]
    for name in names:
        arm = arms[name]
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(arm["rotation_kinds"].items()))
        lines.append(f"{name:>8}: {len(arm['rotations'])} rotations ({kinds}) in {arm['duration_s']} s, "
                     f"{arm['tokens_signed']} tokens over {arm['kids_signed']} kids; events {arm['events']}")
    header = (f"{'client':<18}" + "".join(f"{name + ' failed/verified':>28}" for name in names)
              + f"{'late':>8}{'verify ms p50/max':>22}")
    lines.append(header)
    for client in CLIENTS:
        cells, late, timing = [], [], []
        for name in names:
            figures = arms[name]["clients"][client.name]
            share = figures["failures"] / figures["verifications"] if figures["verifications"] else 0
            cells.append(f"{figures['failures']:>6} / {figures['verifications']:<6} ({share:6.1%})")
            late.append(str(figures["late"]))
            timing.append(f"{figures['verify_ms_p50']}/{figures['verify_ms_max']}")
        lines.append(f"{client.name:<18}" + "".join(f"{cell:>28}" for cell in cells) + f"{'/'.join(late):>8}"
                     + f"{' '.join(timing):>22}")
    for name in names:
        rows = arms[name]["rotations"]
        lines.append(f"{name} rotations, seconds (min / median / max over {len(rows)}):")
        for label, column in (
            ("published -> served by the sidecar", "published_to_sidecar_s"),
            ("published -> served at the endpoint", "published_to_endpoint_s"),
            ("published -> firstServed", "published_to_first_served_s"),
            ("firstServed -> activation", "first_served_to_activation_s"),
            ("endpoint served it -> activation", "endpoint_to_activation_s"),
            ("published -> activation", "published_to_activation_s"),
        ):
            values = [row[column] for row in rows]
            if any(v is not None for v in values):
                lines.append(f"  {label:<38} {_stats(values)}")
    for name in names:
        for client, figures in arms[name]["clients"].items():
            if figures["failure_reasons"]:
                lines.append(f"{name} {client} failures by kind {figures['failures_by_kind']}: {figures['failure_reasons']}")
    for name in names:
        for reason, messages in arms[name].get("warnings", {}).items():
            lines.append(f"{name} Warning {reason} x{len(messages)}, first: {messages[0]}")
    return "\n".join(lines)
