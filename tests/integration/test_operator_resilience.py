"""Crash safety and several replicas: operators of their own, in namespaces the session operator
does not watch."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from kubernetes import client, watch

from signing_key_operator.k8s.objects import REVOKE_HANDLED_ANNOTATION

from .harness import FAST_SPEC, OperatorProcess, Policies, outside_secrets, wait_until

CRASHING_OPERATOR = str(Path(__file__).with_name("crashing_operator.py"))
RETENTION = timedelta(seconds=5 + 1 + 2)  # tokenLifetime + clockSkew + secret propagation of FAST_SPEC


@pytest.fixture
def solo(api_client, signingkeypolicy_crd):
    name = f"solo-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield Policies(api_client, name)
    core.delete_namespace(name)


def _stored_state(policies: Policies, name: str):
    keys = {}
    for secret in policies.key_secrets(name):
        annotations = secret.metadata.annotations
        keys[annotations["signingkeys.dev/kid"]] = {
            "state": secret.metadata.labels["signingkeys.dev/state"],
            "retired": annotations.get("signingkeys.dev/retired"),
            "reason": annotations.get("signingkeys.dev/reason"),
        }
    signing = policies.secret_data(f"{name}-signing")
    return keys, policies.jwks_kids(f"{name}-jwks"), signing["kid"].decode() if signing else None


def _check_invariants(policies: Policies, name: str, seen_published_at: dict[str, float], revoked: str | None = None) -> dict:
    keys, published, signing = _stored_state(policies, name)
    now = time.time()
    for kid in published:
        seen_published_at.setdefault(kid, now)
    if signing is not None and signing != revoked:
        # A revoked key leaves the JWKS before the signing Secret moves on: its tokens are to be
        # refused from that moment, so that window is the revocation working, not a gap.
        assert signing in published, f"the signing key {signing} is not published: {published}"
    assert set(published) <= set(keys), "a published kid has no key Secret"
    for kid, key in keys.items():
        if key["state"] == "revoked":
            assert kid not in published, f"revoked {kid} is still published"
        if key["state"] == "retired" and kid not in published:
            retired = datetime.fromisoformat(key["retired"].replace("Z", "+00:00"))
            assert datetime.now(timezone.utc) >= retired + RETENTION, f"retired {kid} unpublished before its retention"
    return keys


def test_kill_9_between_every_pair_of_writes_keeps_the_invariants_and_converges(solo, kubeconfig, tmp_path):
    """Each operator process makes exactly one write and is killed; the next one continues."""
    solo.create("crashy", FAST_SPEC)
    seen: dict[str, float] = {}
    crashes = 0
    revoked = None
    # The loop ends as soon as it has seen enough; the deadline only bounds a loaded machine,
    # where each operator start takes seconds.
    deadline = time.monotonic() + 360
    while time.monotonic() < deadline:
        process = OperatorProcess(
            kubeconfig, tmp_path / "crashing.log", extra_args=["--namespace", solo.namespace],
            entry=[CRASHING_OPERATOR], env={"SKO_CRASH_AFTER_WRITES": "1"},
        ).start()
        try:
            process.process.wait(20)
        except Exception:
            process.stop()  # nothing was due within 20 s
        if process.process.returncode == -9:
            crashes += 1
        keys = _check_invariants(solo, "crashy", seen, revoked)
        activated_by_timer = [k for k in keys.values() if k["reason"] == "timer" and k["state"] in ("active", "retired")]
        if revoked is None and activated_by_timer:
            # An emergency revocation in the middle, so its writes are interrupted too.
            revoked = next(kid for kid, key in keys.items() if key["state"] == "active")
            solo.annotate("crashy", {"signingkeys.dev/revoke-kid": revoked})
        removed = [kid for kid in seen if kid not in keys]
        if revoked and crashes >= 15 and removed and keys.get(revoked, {}).get("state", "revoked") == "revoked":
            break
    assert crashes >= 15, f"only {crashes} crashes happened:\n{(tmp_path / 'crashing.log').read_text()[-3000:]}"
    assert revoked is not None and removed

    survivor = OperatorProcess(kubeconfig, tmp_path / "survivor.log", extra_args=["--namespace", solo.namespace]).start()
    try:
        # Ready=True may still be the status a killed process wrote, and timer rotations go on
        # (the signing Secret moves before the status does): converged is when the survivor's
        # status and the stored state agree.
        def converged() -> bool:
            status = solo.get("crashy").get("status") or {}
            _, _, signing = _stored_state(solo, "crashy")
            return solo.condition("crashy") == "True" and signing == status.get("activeKid")

        wait_until(converged, 30, "the survivor's status to agree with the signing Secret")
        keys = _check_invariants(solo, "crashy", seen, revoked)
        assert Counter(k["state"] for k in keys.values())["active"] == 1
        _, published, _ = _stored_state(solo, "crashy")
        assert revoked not in published
        assert sorted(published) == sorted(kid for kid, k in keys.items() if k["state"] != "revoked")
    finally:
        survivor.stop()



def test_a_restarted_operator_writes_nothing_for_a_settled_policy(solo, kubeconfig, tmp_path):
    first = OperatorProcess(kubeconfig, tmp_path / "first.log", extra_args=["--namespace", solo.namespace]).start()
    try:
        solo.create("settled", {"algorithm": "PS256", "rsaKeySize": 2048})
        solo.wait_ready("settled")
        time.sleep(1)
    finally:
        first.stop()
    versions = _resource_versions(solo, "settled")
    restarted = OperatorProcess(kubeconfig, tmp_path / "restarted.log", extra_args=["--namespace", solo.namespace]).start()
    try:
        wait_until(lambda: 'signing_key_operator_reconciles_total{result="done"}' in restarted.metrics_or_empty(), 15, "a reconcile")
        time.sleep(2)
        assert _resource_versions(solo, "settled") == versions
        assert "signing_key_operator_api_writes_total{" not in restarted.metrics()
    finally:
        restarted.stop()


def _resource_versions(policies: Policies, name: str) -> list[str]:
    versions = [policies.get(name)["metadata"]["resourceVersion"]]
    versions += sorted(s.metadata.resource_version for s in policies.key_secrets(name))
    versions.append(policies.core.read_namespaced_config_map(f"{name}-jwks", policies.namespace).metadata.resource_version)
    versions.append(policies.core.read_namespaced_secret(f"{name}-signing", policies.namespace).metadata.resource_version)
    return versions


def test_two_operator_processes_rotate_exactly_once_per_due_time(solo, kubeconfig, tmp_path):
    operators = [
        OperatorProcess(kubeconfig, tmp_path / f"operator-{i}.log", extra_args=["--namespace", solo.namespace]).start()
        for i in range(2)
    ]
    try:
        solo.create("shared", FAST_SPEC)
        solo.wait_ready("shared")
        # Bootstrap and three timer rotations, 12 s apart (with slack for a loaded machine).
        wait_until(lambda: solo.event_reasons("shared").count("KeyActivated") >= 4, 75, "three timer rotations", interval=1)
        # Freeze the timeline before counting: a rotation between reading the metrics and the
        # Events (which kopf posts asynchronously) would make the two disagree.
        solo.objects.patch_namespaced_custom_object(
            "signingkeys.dev", "v1alpha1", solo.namespace, "signingkeypolicies", "shared", {"spec": {"suspend": True}})
        wait_until(lambda: solo.get("shared")["status"]["observedGeneration"] == 2, 15, "the suspension to be seen")
        time.sleep(1)
        metrics = [op.metrics() for op in operators]
        timer_rotations = sum(
            float(match) for text in metrics
            for match in re.findall(r'signing_key_operator_rotations_total\{reason="timer"\} (\S+)', text)
        )
        # Every activation but the bootstrap is counted once across both processes: the Events
        # (one per activation, whichever process made it) catch up with the counters.
        wait_until(lambda: solo.event_reasons("shared").count("KeyActivated") == timer_rotations + 1, 15,
                   f"{timer_rotations + 1:.0f} KeyActivated events, as the counters say", interval=0.5)
        events = solo.events("shared")
        published = [e for e in events if e.reason == "KeyPublished"]
        activated = [e for e in events if e.reason == "KeyActivated"]
    finally:
        for op in operators:
            op.stop()
    kid_pattern = re.compile(r"Key (\S+) \(serial")
    published_kids = [kid_pattern.search(e.message).group(1) for e in published]
    activated_kids = [kid_pattern.search(e.message).group(1) for e in activated]
    assert len(activated_kids) >= 4  # bootstrap + three timer rotations
    assert all(e.count in (None, 1) for e in published + activated)
    assert len(set(published_kids)) == len(published_kids), "a key was published twice"
    assert len(set(activated_kids)) == len(activated_kids), "a key was activated twice"
    assert timer_rotations == len(activated_kids) - 1  # every activation but the bootstrap, counted once
    # One rotation per due time: activations are an interval apart, never two at once.
    times = sorted(e.first_timestamp or e.event_time for e in activated)
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
    assert all(gap >= 10 for gap in gaps), gaps
    # Both processes were live and reconciling the policy, not one idling behind the other.
    assert all("shared" in op_log for op_log in (op.logs() for op in operators))


class VersionRecorder:
    """Every version of one object, in order, as a real watch delivers them: from a given
    resourceVersion the API server sends each change, none skipped, so a version that lasted a
    millisecond is recorded as surely as one that lasted a minute."""

    def __init__(self, list_call, namespace: str, name: str, resource_version: str, read):
        self.versions: list[tuple[str, object]] = []
        self._watch = watch.Watch()
        self._stream = self._watch.stream(
            list_call, namespace, field_selector=f"metadata.name={name}", resource_version=resource_version, timeout_seconds=300
        )
        self._read = read
        self._stopped = False
        self.error: Exception | None = None
        threading.Thread(target=self._record, daemon=True).start()

    def _record(self) -> None:
        try:
            for event in self._stream:
                item = event["object"]
                self.versions.append((item.metadata.resource_version, self._read(item)))
        except Exception as error:  # noqa: BLE001 - a broken watch fails wait_for; one cut after stop() is expected
            if not self._stopped:
                self.error = error

    def wait_for(self, resource_version: str) -> None:
        def delivered() -> bool:
            if self.error is not None:
                raise AssertionError(f"the watch broke: {self.error!r}")
            return any(v == resource_version for v, _ in self.versions)

        wait_until(delivered, 30, f"the watch to deliver version {resource_version}")

    def stop(self) -> None:
        self._stopped = True
        self._watch.stop()


def _reconciles(process: OperatorProcess) -> float:
    """Reconciles the process has finished, whatever their result."""
    return sum(float(n) for n in re.findall(r'signing_key_operator_reconciles_total\{result="[^"]+"\} (\S+)', process.metrics_or_empty()))


def _from_first(values: list, predicate) -> list:
    """The values from the first one that satisfies ``predicate`` on."""
    for index, value in enumerate(values):
        if predicate(value):
            return values[index:]
    return []


def _held_operator(kubeconfig, policies: Policies, tmp_path: Path, name: str, after: str) -> tuple[OperatorProcess, Path]:
    """An operator process that holds its reconcile after the request ``after`` matches, once
    its gate (the Path returned) is armed; see crashing_operator.py."""
    gate = tmp_path / f"{name}-gate"
    gate.mkdir()
    process = OperatorProcess(
        kubeconfig, tmp_path / f"{name}.log", extra_args=["--namespace", policies.namespace], entry=[CRASHING_OPERATOR],
        env={"SKO_PAUSE_GATE": str(gate), "SKO_PAUSE_AFTER": after},
    ).start()
    return process, gate


def _create_contested_policy(policies: Policies) -> str:
    """A policy with no timer work due during a test (only a revocation changes its keys); its kid."""
    policies.create("contested", {**FAST_SPEC, "rotation": {"interval": "1h", "publishAhead": "4s"}})
    first = policies.wait_ready("contested")["status"]["activeKid"]
    wait_until(lambda: _stored_state(policies, "contested")[2] == first and policies.jwks_kids("contested-jwks") == [first],
               30, "the first key to sign and be published")
    return first


def _hold_on_a_nudge(policies: Policies, gate: Path, where: str) -> None:
    """Wake both replicas with an annotation no plan reads; the armed one holds at its gate."""
    (gate / "armed").touch()
    policies.annotate("contested", {"example.com/nudge": "1"})
    wait_until((gate / "paused").exists, 30, f"the stale replica to hold {where}")


def _release(process: OperatorProcess, gate: Path) -> None:
    """Let the held reconcile go on, and wait for it and the one its wake-ups during the hold asked for."""
    finished = _reconciles(process)
    (gate / "resume").touch()
    wait_until(lambda: _reconciles(process) >= finished + 2, 30, "the stale replica to reconcile after the hold", interval=0.2)


def _record_jwks_and_signing(policies: Policies) -> list[VersionRecorder]:
    core = policies.core
    configmap = core.read_namespaced_config_map("contested-jwks", policies.namespace)
    secret = core.read_namespaced_secret("contested-signing", policies.namespace)
    return [
        VersionRecorder(core.list_namespaced_config_map, policies.namespace, "contested-jwks", configmap.metadata.resource_version,
                        lambda cm: [key["kid"] for key in json.loads(cm.data["jwks.json"])["keys"]]),
        VersionRecorder(core.list_namespaced_secret, policies.namespace, "contested-signing", secret.metadata.resource_version,
                        lambda signing: base64.b64decode(signing.data["kid"]).decode()),
    ]


def _wait_converged_and_recorded(policies: Policies, revoked: str, recorders: list[VersionRecorder]) -> None:
    def converged() -> bool:
        active = (policies.get("contested").get("status") or {}).get("activeKid")
        _, published, signing = _stored_state(policies, "contested")
        return active not in (None, revoked) and signing == active and published == [active]

    wait_until(converged, 30, "the replicas to agree on the state after the revocation")
    core = policies.core
    recorders[0].wait_for(core.read_namespaced_config_map("contested-jwks", policies.namespace).metadata.resource_version)
    recorders[1].wait_for(core.read_namespaced_secret("contested-signing", policies.namespace).metadata.resource_version)


def _stop(recorders: list[VersionRecorder], processes: list[OperatorProcess]) -> None:
    for recorder in recorders:
        recorder.stop()
    for process in processes:
        process.stop()


def _assert_revoked_key_never_came_back(recorders: list[VersionRecorder], revoked: str) -> None:
    published_versions = [kids for _, kids in recorders[0].versions]
    signing_versions = [kid for _, kid in recorders[1].versions]
    after_revocation = _from_first(published_versions, lambda kids: revoked not in kids)
    assert after_revocation, f"the watch saw no JWKS without {revoked}: {published_versions}"
    assert all(revoked not in kids for kids in after_revocation), f"{revoked} was published again: {published_versions}"
    after_moving_on = _from_first(signing_versions, lambda kid: kid != revoked)
    assert after_moving_on, f"the watch saw the signing Secret never leave {revoked}: {signing_versions}"
    assert revoked not in after_moving_on, f"the signing Secret pointed at revoked {revoked} again: {signing_versions}"


def test_a_replica_holding_a_view_from_before_a_revocation_never_puts_the_revoked_key_back(solo, kubeconfig, tmp_path):
    """Finding 9: one replica lists the key Secrets and is held there; the other handles an
    emergency revoke-kid completely; then the held one goes on with its old view. No version of
    the JWKS ConfigMap after the revocation may hold the revoked kid again, and the signing
    Secret may never point back at it."""
    stale, gate = _held_operator(kubeconfig, solo, tmp_path, "stale", r"^GET \S*/secrets\?\S*component=key")
    fresh = OperatorProcess(kubeconfig, tmp_path / "fresh.log", extra_args=["--namespace", solo.namespace]).start()
    recorders = []
    try:
        revoked = _create_contested_policy(solo)
        _hold_on_a_nudge(solo, gate, "after listing the key Secrets")
        recorders = _record_jwks_and_signing(solo)
        solo.annotate("contested", {"signingkeys.dev/revoke-kid": revoked})

        def handled_by_the_fresh_replica() -> bool:
            policy = solo.get("contested")
            active = (policy.get("status") or {}).get("activeKid")
            return (policy["metadata"]["annotations"].get(REVOKE_HANDLED_ANNOTATION) == revoked and active not in (None, revoked)
                    and _stored_state(solo, "contested")[2] == active)

        wait_until(handled_by_the_fresh_replica, 30, "the fresh replica to handle the revocation")
        _release(stale, gate)
        _wait_converged_and_recorded(solo, revoked, recorders)
    finally:
        _stop(recorders, [stale, fresh])
    _assert_revoked_key_never_came_back(recorders, revoked)


def test_a_replica_reading_in_the_middle_of_a_revocation_with_an_older_policy_never_puts_the_revoked_key_back(
    solo, kubeconfig, tmp_path,
):
    """Finding 9, the view that no resourceVersion guard catches: the stale replica's policy (from
    its watch) predates the revoke-kid, while its reads fall in the middle of the other replica's
    revocation (after that one published the JWKS without the kid, before it marked the key
    revoked), so it sees the old key still signing beside the emergency key and the JWKS it
    would replace is the newest. It must decide again from the policy as stored, not publish
    the revoked kid."""
    stale, stale_gate = _held_operator(kubeconfig, solo, tmp_path, "stale", r"^GET \S*/tokenrevocations\?")
    revoker, revoker_gate = _held_operator(kubeconfig, solo, tmp_path, "revoker", r"^PUT \S*/configmaps/contested-jwks\?")
    recorders = []
    try:
        revoked = _create_contested_policy(solo)
        _hold_on_a_nudge(solo, stale_gate, "before its reads")
        recorders = _record_jwks_and_signing(solo)
        (revoker_gate / "armed").touch()
        solo.annotate("contested", {"signingkeys.dev/revoke-kid": revoked})
        wait_until((revoker_gate / "paused").exists, 30, "the revoker to hold after publishing the JWKS without the kid")
        _release(stale, stale_gate)
        (revoker_gate / "resume").touch()
        _wait_converged_and_recorded(solo, revoked, recorders)
    finally:
        _stop(recorders, [stale, revoker])
    _assert_revoked_key_never_came_back(recorders, revoked)


def test_no_private_key_material_reaches_configmaps_status_events_or_logs(solo, kubeconfig, api_client, tmp_path, operator):
    """After a full run (create, timer rotation, rotate, revoke, tampered input) nothing but
    Secrets holds private material."""
    from signing_key_operator.core.keys import load_key

    own = OperatorProcess(kubeconfig, tmp_path / "scan.log", extra_args=["--namespace", solo.namespace]).start()
    try:
        solo.create("scanned", {**FAST_SPEC, "algorithm": "RS256", "rsaKeySize": 2048})
        first = solo.wait_ready("scanned")["status"]["activeKid"]
        solo.annotate("scanned", {"signingkeys.dev/rotate": "now"})
        wait_until(lambda: solo.get("scanned")["status"]["activeKid"] != first, 15, "the requested rotation")
        active = solo.get("scanned")["status"]["activeKid"]
        solo.annotate("scanned", {"signingkeys.dev/revoke-kid": active})
        wait_until(lambda: active not in solo.jwks_kids("scanned-jwks"), 10, "the revocation")
        time.sleep(2)
    finally:
        own.stop()

    core = client.CoreV1Api(api_client)
    secrets = core.list_secret_for_all_namespaces(label_selector="signingkeys.dev/component").items
    assert secrets
    needles = set()
    for secret in secrets:
        if "private.pem" not in (secret.data or {}):
            continue  # an HMAC policy's (test_hmac_policy scans those) or a verification Secret
        pem = base64.b64decode(secret.data["private.pem"])
        try:
            private = load_key(pem, base64.b64decode(secret.data["alg"]).decode()).private_jwk()
        except Exception:
            continue  # a test's deliberately tampered Secret
        needles.add(pem.decode().splitlines()[1])  # a line of the PEM body
        needles.update(private[member] for member in ("d", "p", "q", "dp", "dq", "qi") if member in private)

    haystacks = outside_secrets(api_client, **{"operator log (session)": operator.logs(), "operator log (scan)": own.logs(),
                                               "metrics": operator.metrics()})
    leaks = [
        where for where, text in haystacks.items()
        if "PRIVATE KEY" in text or any(needle in text for needle in needles)
    ]
    assert not leaks, leaks
    assert len(needles) >= 10
