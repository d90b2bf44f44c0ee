"""The operator process against the real API server, with second-scale timelines."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from .harness import FAST_SPEC, Policies, kubectl, wait_until

PUBLISH_AHEAD = timedelta(seconds=4)
RETENTION = timedelta(seconds=5 + 1 + 2)  # tokenLifetime + clockSkew + secret propagation


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _signing_kid(policies: Policies, name: str) -> str | None:
    data = policies.secret_data(f"{name}-signing")
    return data["kid"].decode() if data else None


@pytest.fixture(autouse=True)
def _running_operator(operator):
    yield
    assert operator.process.poll() is None, "the operator exited:\n" + operator.logs()[-3000:]


def test_policy_becomes_ready_with_its_key_published_and_the_signing_secret_matching(policies):
    policies.create("api", {"algorithm": "ES384"})
    policy = policies.wait_ready("api")
    status = policy["status"]
    active = status["activeKid"]
    assert policies.jwks_kids("api-jwks") == [active]
    signing = policies.secret_data("api-signing")
    assert signing["kid"].decode() == active and signing["alg"] == b"ES384"
    key = serialization.load_pem_private_key(signing["private.pem"], password=None)
    assert key.curve.name == "secp384r1"
    assert status["observedGeneration"] == policy["metadata"]["generation"]
    assert [k["state"] for k in status["keys"]] == ["active"]
    configmap = policies.core.read_namespaced_config_map("api-jwks", policies.namespace)
    assert configmap.data["max-age"] == "60"
    assert configmap.metadata.owner_references[0].name == "api"


def test_the_signing_secret_tells_signers_the_lifetimes_and_follows_a_spec_change(policies):
    policies.create("lives", {"tokenLifetime": "30m", "clockSkew": "20s",
                              "tokenLifetimes": [{"name": "admin", "lifetime": "5m"}]})
    policies.wait_ready("lives")
    lifetimes = json.loads(policies.secret_data("lives-signing")["lifetimes.json"])
    assert lifetimes == {"tokenLifetimeSeconds": 1800, "clockSkewSeconds": 20, "classes": {"admin": 300}}
    kid = _signing_kid(policies, "lives")
    policies.objects.patch_namespaced_custom_object(
        "signingkeys.dev", "v1alpha1", policies.namespace, "signingkeypolicies", "lives",
        {"spec": {"tokenLifetime": "10m", "tokenLifetimes": [{"name": "admin", "lifetime": "2m"},
                                                             {"name": "service", "lifetime": "10m"}]}},
    )
    expected = {"tokenLifetimeSeconds": 600, "clockSkewSeconds": 20, "classes": {"admin": 120, "service": 600}}
    wait_until(lambda: json.loads(policies.secret_data("lives-signing")["lifetimes.json"]) == expected, 30,
               "the signing Secret to carry the new lifetimes")
    assert _signing_kid(policies, "lives") == kid, "a lifetime change moves no signer to another key"

    def told() -> list[str]:  # the Event follows the write
        return [e.message for e in policies.events("lives")
                if e.reason == "SigningSecretUpdated" and "tells signers" in e.message and '"service":600' in e.message]

    wait_until(told, 10, "the SigningSecretUpdated Event saying what signers are told now")


def test_kubectl_users_see_whole_second_times_and_events_from_signing_key_operator(policies, kubeconfig):
    """What `kubectl get` and `kubectl describe` show: status times as Kubernetes writes its own
    (RFC 3339, whole seconds), and Events from the operator by name, not from its framework."""
    policies.create("shown", {**FAST_SPEC, "rotation": {"interval": "1h", "publishAhead": "4s"}})
    policies.wait_ready("shown")
    policies.annotate("shown", {"signingkeys.dev/rotate": "now-please"})
    wait_until(lambda: policies.get("shown")["status"].get("nextKid"), 15, "a next key")
    status = policies.get("shown")["status"]
    times = [status["nextRotationTime"]] + [c["lastTransitionTime"] for c in status["conditions"]]
    times += [value for key in status["keys"] for name, value in key.items() if name in ("created", "activated")]
    assert len(times) >= 5, status
    for text in times:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text), f"{text!r} is not RFC 3339 in whole seconds"

    events = policies.events("shown")
    assert events, "the operator posted no Event"
    assert {(e.source.component, e.reporting_component) for e in events} == {("signing-key-operator", "signing-key-operator")}
    described = kubectl(kubeconfig, "describe", "skp/shown", "-n", policies.namespace)
    assert described.returncode == 0, described.stderr
    event_lines = described.stdout.split("Events:", 1)[1].splitlines()
    assert any("signing-key-operator" in line and "KeyPublished" in line for line in event_lines), described.stdout
    assert not any(" kopf " in f" {line} " for line in event_lines), described.stdout


def test_timer_rotation_publishes_ahead_and_keeps_retired_keys_for_their_retention(policies):
    policies.create("timed", FAST_SPEC)
    policies.wait_ready("timed")
    first_seen_published: dict[str, float] = {}
    first_seen_signing: dict[str, float] = {}
    last_seen_published: dict[str, float] = {}
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        now = time.time()
        kids = policies.jwks_kids("timed-jwks")
        signing = _signing_kid(policies, "timed")
        for kid in kids:
            first_seen_published.setdefault(kid, now)
            last_seen_published[kid] = now
        first_seen_signing.setdefault(signing, now)
        # Invariant 1, as observed from outside: whatever signs is published.
        assert signing in kids
        time.sleep(0.2)

    keys = policies.get("timed")["status"]["keys"]
    timer_keys = [k for k in keys if k["reason"] == "timer" and "activated" in k]
    assert len(timer_keys) >= 2, keys
    for key in timer_keys:
        assert _time(key["activated"]) - _time(key["created"]) >= PUBLISH_AHEAD
        assert first_seen_published[key["kid"]] < first_seen_signing[key["kid"]]
    removed = [kid for kid in first_seen_published if kid not in {k["kid"] for k in keys}]
    assert removed, "no key was removed within 40 s"
    for kid in removed:
        # Seen published from (at the latest) when it was first seen signing, until retired + retention.
        assert last_seen_published[kid] - first_seen_signing[kid] >= (12 + RETENTION.total_seconds()) - 1.0


def test_rotate_annotation_rotates_once_per_value(policies):
    policies.create("manual", {**FAST_SPEC, "rotation": {"interval": "1h", "publishAhead": "4s"}})
    first = policies.wait_ready("manual")["status"]["activeKid"]

    policies.annotate("manual", {"signingkeys.dev/rotate": "2026-11-23T10:00:00Z"})
    new_kid = wait_until(lambda: policies.get("manual")["status"].get("nextKid"), 15, "a next key")
    assert new_kid in policies.jwks_kids("manual-jwks")
    assert _signing_kid(policies, "manual") == first
    wait_until(lambda: policies.get("manual")["status"]["activeKid"] == new_kid, 10, "the next key to activate")
    keys = policies.get("manual")["status"]["keys"]
    activated = next(k for k in keys if k["kid"] == new_kid)
    assert _time(activated["activated"]) - _time(activated["created"]) >= PUBLISH_AHEAD
    assert wait_until(lambda: _signing_kid(policies, "manual") == new_kid, 15, "the signing Secret to follow")

    # The same value again (re-delivery, an unrelated edit) rotates nothing.
    policies.annotate("manual", {"unrelated": "edit"})
    time.sleep(3)
    status = policies.get("manual")["status"]
    assert status["activeKid"] == new_kid and status.get("nextKid") is None
    assert len(policies.key_secrets("manual")) == 2
    assert policies.get("manual")["metadata"]["annotations"]["signingkeys.dev/rotate-handled"] == "2026-11-23T10:00:00Z"


def test_revoking_the_active_key_unpublishes_it_and_signs_with_a_fresh_key(policies):
    policies.create("revoked", {**FAST_SPEC, "rotation": {"interval": "1h", "publishAhead": "4s"}})
    victim = policies.wait_ready("revoked")["status"]["activeKid"]
    policies.annotate("revoked", {"signingkeys.dev/revoke-kid": victim})
    wait_until(lambda: victim not in policies.jwks_kids("revoked-jwks"), 10, "the revoked kid to leave the JWKS")
    # The status is the reconcile's last write, a moment after the ConfigMap.
    status = wait_until(lambda: (lambda s: s if s["activeKid"] != victim else None)(policies.get("revoked")["status"]),
                        10, "the status to show the fresh key")
    assert status["activeKid"] in policies.jwks_kids("revoked-jwks")
    wait_until(lambda: _signing_kid(policies, "revoked") == status["activeKid"], 15, "the signing Secret to follow")
    states = {k["kid"]: k["state"] for k in status["keys"]}
    assert states[victim] == "revoked"
    wait_until(lambda: "KeyRevoked" in policies.event_reasons("revoked"), 15, "the KeyRevoked event")


@pytest.mark.parametrize("value", ["NoSuchKidAnywhereAAAAAAAAAAAAAAAAAAAAAAAAAA", "not a kid!"])
def test_revoking_an_unknown_or_garbage_kid_warns_and_changes_nothing(policies, value):
    policies.create("careful", {**FAST_SPEC, "rotation": {"interval": "1h", "publishAhead": "4s"}})
    before = policies.wait_ready("careful")["status"]
    policies.annotate("careful", {"signingkeys.dev/revoke-kid": value})
    wait_until(lambda: "RevokeRefused" in policies.event_reasons("careful"), 15, "a RevokeRefused event")
    warning = next(e for e in policies.events("careful") if e.reason == "RevokeRefused")
    assert warning.type == "Warning"
    after = policies.get("careful")["status"]
    assert after["activeKid"] == before["activeKid"] and after["keys"] == before["keys"]
    assert policies.jwks_kids("careful-jwks") == [before["activeKid"]]


def test_deleting_the_policy_garbage_collects_its_secrets_and_configmap(policies):
    policies.create("doomed", {})
    policies.wait_ready("doomed")
    policies.delete("doomed")
    wait_until(lambda: not policies.key_secrets("doomed") and policies.secret_data("doomed-signing") is None
               and policies.jwks("doomed-jwks") is None, 60, "garbage collection")


def test_edited_or_deleted_configmap_and_signing_secret_are_restored_from_the_key_secrets(policies):
    policies.create("drift", {})
    kid = policies.wait_ready("drift")["status"]["activeKid"]
    policies.core.patch_namespaced_config_map("drift-jwks", policies.namespace, {"data": {"jwks.json": '{"keys":[]}'}})
    wait_until(lambda: policies.jwks_kids("drift-jwks") == [kid], 15, "the ConfigMap to be restored")
    policies.core.delete_namespaced_config_map("drift-jwks", policies.namespace)
    wait_until(lambda: policies.jwks_kids("drift-jwks") == [kid], 15, "the ConfigMap to be recreated")
    policies.core.delete_namespaced_secret("drift-signing", policies.namespace)
    wait_until(lambda: _signing_kid(policies, "drift") == kid, 15, "the signing Secret to be recreated")
    wait_until(lambda: "JwksRestored" in policies.event_reasons("drift"), 15, "the JwksRestored event")


def test_tampered_key_secret_is_reported_and_left_in_place(policies):
    policies.create("tampered", {"algorithm": "ES256"})
    kid = policies.wait_ready("tampered")["status"]["activeKid"]
    (secret,) = policies.key_secrets("tampered")
    policies.core.patch_namespaced_secret(secret.metadata.name, policies.namespace, {"stringData": {"private.pem": "garbage"}})

    wait_until(lambda: policies.condition("tampered", "Degraded") == "True", 10, "Degraded=True")
    assert policies.condition("tampered") == "False"
    event = wait_until(lambda: next((e for e in policies.events("tampered") if e.reason == "KeySecretInvalid"), None),
                       15, "the KeySecretInvalid event")
    assert event.type == "Warning" and secret.metadata.name in event.message
    time.sleep(2)
    left = policies.core.read_namespaced_secret(secret.metadata.name, policies.namespace)
    assert left.data["private.pem"] == "Z2FyYmFnZQ=="  # still the user's bytes, not overwritten
    assert policies.jwks_kids("tampered-jwks") == [kid]  # nothing unpublished around it


def test_an_idle_policy_makes_no_writes(policies, operator):
    policies.create("idle", {})
    policies.wait_ready("idle")
    time.sleep(1)

    def versions():
        objects = [policies.get("idle")["metadata"]["resourceVersion"]]
        objects += [s.metadata.resource_version for s in policies.key_secrets("idle")]
        objects.append(policies.core.read_namespaced_config_map("idle-jwks", policies.namespace).metadata.resource_version)
        objects.append(policies.core.read_namespaced_secret("idle-signing", policies.namespace).metadata.resource_version)
        return objects

    before = versions()
    time.sleep(5)
    assert versions() == before


def test_metrics_report_rotations_and_key_age(policies, operator):
    policies.create("measured", {**FAST_SPEC, "rotation": {"interval": "1h", "publishAhead": "4s"}})
    policies.wait_ready("measured")
    policies.annotate("measured", {"signingkeys.dev/revoke-kid": policies.get("measured")["status"]["activeKid"]})
    wait_until(lambda: 'signing_key_operator_rotations_total{reason="emergency"}' in operator.metrics(), 10, "the emergency rotation metric")
    text = operator.metrics()
    assert f'signing_key_operator_active_key_age_seconds{{namespace="{policies.namespace}",policy="measured"}}' in text
    assert "signing_key_operator_api_writes_total" in text
