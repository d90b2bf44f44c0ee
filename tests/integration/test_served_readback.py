"""The served-JWKS read-back on the real control plane: an operator of its own, the sidecar serving
each policy's ConfigMap, and tests/served_endpoint.py in front of it as the URL verifiers fetch
(lagging, stuck, or broken in every way a check must survive)."""

from __future__ import annotations

import re
import socket
import time
import uuid
from datetime import timedelta

import pytest
from kubernetes import client

from signing_key_operator.core.planner import REVOKE_ANNOTATION, ROTATE_ANNOTATION
from signing_key_operator.k8s.objects import parse_time

from tests.conformance.driver import Sidecar
from tests.served_endpoint import (
    INVALID_JSON, NOT_A_JWKS, OVERSIZED, REDIRECT_LOOP, RESET, SLOW, STATUS_500, LaggingEndpoint, ServingTls,
)

from .harness import OperatorProcess, Policies, wait_until

PUBLISH_AHEAD_S = 4
SPEC = {
    "algorithm": "ES256",
    "rotation": {"interval": "12s", "publishAhead": f"{PUBLISH_AHEAD_S}s"},
    "tokenLifetime": "5s",
    "clockSkew": "1s",
    "jwks": {"maxAge": "2s"},
}
RELOAD_S = 2
GRACE_S = RELOAD_S + 2  # --jwks-server-reload-time + jwks.maxAge
OPERATOR_ARGS = ["--served-check-interval", "0.3s", "--served-check-idle-interval", "2s", "--jwks-server-reload-time", f"{RELOAD_S}s"]


def _fresh_namespace(api_client, prefix: str):
    """A namespace outside the session operator's `t-*`, deleted afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="module")
def served_namespace(api_client, signingkeypolicy_crd):
    yield from _fresh_namespace(api_client, "served")


@pytest.fixture(scope="module")
def served_operator(kubeconfig, served_namespace, tmp_path_factory):
    process = OperatorProcess(
        kubeconfig, tmp_path_factory.mktemp("served-operator") / "operator.log", extra_args=["--namespace", served_namespace, *OPERATOR_ARGS],
    ).start().wait_serving()
    yield process
    process.stop()


@pytest.fixture
def served(api_client, served_namespace, served_operator) -> Policies:
    """The module's namespace; the test's policies are deleted after it, so the operator's
    write counter measures one test's policies alone."""
    policies = Policies(api_client, served_namespace)
    yield policies
    for item in policies.objects.list_namespaced_custom_object("signingkeys.dev", "v1alpha1", served_namespace, "signingkeypolicies")["items"]:
        policies.delete(item["metadata"]["name"])


@pytest.fixture
def serving(kubeconfig, served_namespace, tmp_path):
    """Start a sidecar for a policy's ConfigMap and an endpoint in front of it; stopped after the test."""
    started = []

    def start(policy: str, lag: float = 0.0) -> LaggingEndpoint:
        sidecar = Sidecar(kubeconfig, served_namespace, f"{policy}-jwks", tmp_path / f"{policy}-sidecar.log")
        endpoint = LaggingEndpoint(sidecar.url, lag=lag)
        started.append((sidecar, endpoint))
        return endpoint.start()

    yield start
    for sidecar, endpoint in started:
        endpoint.stop()
        sidecar.stop()


def _spec(*urls: str, **changes) -> dict:
    spec = {**SPEC, "jwks": {**SPEC["jwks"], "servedAt": list(urls)}}
    spec.update(changes)
    return spec


def _status(policies: Policies, name: str) -> dict:
    return policies.get(name).get("status") or {}


def _condition(policies: Policies, name: str, kind: str) -> dict:
    return next((c for c in _status(policies, name).get("conditions") or [] if c["type"] == kind), {})


def _keys(policies: Policies, name: str) -> dict[str, dict]:
    """kid -> lifecycle annotations of its key Secret (the record the planner decides from)."""
    return {
        secret.metadata.annotations["signingkeys.dev/kid"]: {
            "state": secret.metadata.labels["signingkeys.dev/state"],
            **{key.split("/", 1)[1]: value for key, value in secret.metadata.annotations.items() if key.startswith("signingkeys.dev/")},
        }
        for secret in policies.key_secrets(name)
    }


def _metric(operator: OperatorProcess, name: str, **labels: str) -> float | None:
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    for line in operator.metrics().splitlines():
        if line.startswith(name + "{") and all(label in line for label in wanted):
            return float(line.rsplit(" ", 1)[1])
        if line.startswith(name + " ") and not wanted:
            return float(line.rsplit(" ", 1)[1])
    return None


def _activations(keys: dict[str, dict]) -> list[dict]:
    return sorted((k for k in keys.values() if k.get("activated") and k.get("reason") != "bootstrap"), key=lambda k: k["activated"])


def test_a_key_signs_publish_ahead_after_it_is_served_not_after_it_is_written(served, serving):
    endpoint = serving("lagging", lag=3.0)
    served.create("lagging", _spec(endpoint.url))
    first_seen: dict[str, float] = {}

    def two_rotations():
        for kid in endpoint.served_kids():
            first_seen.setdefault(kid, time.time())
        activated = _activations(_keys(served, "lagging"))
        return activated if len(activated) >= 2 else None

    activated = wait_until(two_rotations, 90, "two rotations through an endpoint lagging 3 s", interval=0.1)
    for key in activated:
        created, seen, signed = (parse_time(key[field]) for field in ("created", "first-served", "activated"))
        # Not before the endpoint served it (its lag, less the sidecar's own), and publishAhead after.
        assert seen - created >= timedelta(seconds=2.5), key
        assert first_seen[key["kid"]] <= seen.timestamp() + 0.5, (key, first_seen)
        assert signed - seen >= timedelta(seconds=PUBLISH_AHEAD_S), key
    status = _status(served, "lagging")
    assert [entry["url"] for entry in status["servedAt"]] == [endpoint.url]
    assert {k["kid"]: k.get("firstServed") for k in status["keys"] if k["state"] != "next"}
    reasons = served.event_reasons("lagging")
    # Served (3 s) before it would have signed without the read-back (4 s): no false alarm.
    assert "KeyServed" in reasons and "ActivationHeld" not in reasons


def test_a_stuck_endpoint_holds_rotation_until_it_serves_the_key(served, serving, served_operator):
    endpoint = serving("stuck")
    served.create("stuck", _spec(endpoint.url))
    wait_until(lambda: _condition(served, "stuck", "JWKSServed").get("status") == "True", 30, "JWKSServed True")
    signing = _status(served, "stuck")["activeKid"]
    endpoint.stick()
    wait_until(lambda: _status(served, "stuck").get("nextKid"), 30, "a next key to be published")
    # Past the interval (12 s): the key would have signed; it waits, and the policy says why.
    wait_until(lambda: _condition(served, "stuck", "Degraded").get("reason") == "RotationOverdue", 30, "Degraded RotationOverdue")
    status = _status(served, "stuck")
    assert status["activeKid"] == signing
    assert _condition(served, "stuck", "JWKSServed")["reason"] == "NextKeyNotServed"
    assert status["nextKid"] in _condition(served, "stuck", "JWKSServed")["message"]
    assert "ActivationHeld" in served.event_reasons("stuck")
    assert _metric(served_operator, "signing_key_operator_rotation_overdue_seconds", policy="stuck") > 0
    assert _metric(served_operator, "signing_key_operator_jwks_served_lag_seconds", policy="stuck") >= 3  # since the next key was published, 4 s before the interval ended
    waiting = status["nextKid"]
    endpoint.unstick()
    wait_until(lambda: _status(served, "stuck")["activeKid"] == waiting, 20, "the held key to sign once served")
    wait_until(lambda: _condition(served, "stuck", "Degraded").get("status") == "False", 20, "Degraded False again")


def test_a_revoked_kid_still_served_is_reported_with_how_long_it_stayed(served, serving):
    endpoint = serving("revoked")
    served.create("revoked", _spec(endpoint.url))
    wait_until(lambda: _condition(served, "revoked", "JWKSServed").get("status") == "True", 30, "JWKSServed True")
    kid = _status(served, "revoked")["activeKid"]
    endpoint.stick()
    revoked_at = time.time()
    served.annotate("revoked", {REVOKE_ANNOTATION: kid})
    # The emergency key signs at once: a revocation never waits for an endpoint.
    wait_until(lambda: _status(served, "revoked")["activeKid"] != kid, 10, "a fresh key to sign")
    assert time.time() - revoked_at < 5
    wait_until(lambda: _condition(served, "revoked", "JWKSServed").get("reason") == "RevokedKeyStillServed", 20, "RevokedKeyStillServed")
    wait_until(lambda: "JWKSNotServed" in served.event_reasons("revoked"), 20, "a Warning once past the grace")
    assert _condition(served, "revoked", "Degraded")["status"] == "True"
    time.sleep(2)
    endpoint.unstick()
    entry = wait_until(lambda: (_status(served, "revoked")["servedAt"][0].get("revokedKid")), 20, "the revoked kid reported gone")
    assert entry["kid"] == kid
    assert GRACE_S <= entry["servedForSeconds"] <= time.time() - revoked_at + 1
    assert "RevokedKeyUnserved" in served.event_reasons("revoked")


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/.well-known/jwks.json"


FAULT_ERRORS = {
    STATUS_500: ("Unreachable", r"HTTP 500"),
    REDIRECT_LOOP: ("Unreachable", r"more than 3 redirects"),
    OVERSIZED: ("InvalidDocument", r"over the 1048576-byte limit"),
    INVALID_JSON: ("InvalidDocument", r"not a valid public JWK Set: .*JSON"),
    NOT_A_JWKS: ("InvalidDocument", r"not a valid public JWK Set"),
    SLOW: ("Unreachable", r"no complete answer within 5s"),
    RESET: ("Unreachable", r"(Disconnected|reset|Connection)"),
}


def test_unreachable_and_lying_endpoints_are_reported_and_change_nothing_else(served, served_operator, request):
    closed = _closed_port_url()
    endpoints = {fault: LaggingEndpoint(closed) for fault in FAULT_ERRORS}  # only the fault ever answers
    for fault, endpoint in endpoints.items():
        endpoint.fault(fault)
        endpoint.start()
    request.addfinalizer(lambda: [endpoint.stop() for endpoint in endpoints.values()])
    urls = [endpoint.url for endpoint in endpoints.values()] + [closed]
    served.create("faults", _spec(*urls, rotation={"interval": "8s", "publishAhead": f"{PUBLISH_AHEAD_S}s"}))
    served.wait_ready("faults")

    def all_reported():
        entries = {e["url"]: e for e in _status(served, "faults").get("servedAt") or []}
        return entries if len(entries) == len(urls) and all(e.get("lastError") for e in entries.values()) else None

    entries = wait_until(all_reported, 60, "every URL's error in status.servedAt")
    for fault, (_, pattern) in FAULT_ERRORS.items():
        assert re.search(pattern, entries[endpoints[fault].url]["lastError"]), (fault, entries[endpoints[fault].url])
        assert "kids" not in entries[endpoints[fault].url]
    assert re.search(r"Connect|refused", entries[closed]["lastError"]), entries[closed]
    condition = _condition(served, "faults", "JWKSServed")
    assert condition["status"] == "False" and condition["reason"] in ("Unreachable", "InvalidDocument")
    signing = _status(served, "faults")["activeKid"]
    wait_until(lambda: _status(served, "faults").get("nextKid"), 30, "a next key to be published")
    time.sleep(10)  # past the interval (8 s): the next key is never seen, so the signing key stays
    status = _status(served, "faults")
    assert status["activeKid"] == signing and status.get("nextKid")
    assert _condition(served, "faults", "Ready")["status"] == "True"
    assert served_operator.process.poll() is None
    assert _metric(served_operator, "signing_key_operator_jwks_served_checks_total", result="invalid") > 0
    assert _metric(served_operator, "signing_key_operator_jwks_served_checks_total", result="unreachable") > 0
    # Fixed: rotation resumes.
    served.objects.patch_namespaced_custom_object(
        "signingkeys.dev", "v1alpha1", served.namespace, "signingkeypolicies", "faults", {"spec": {"jwks": {"servedAt": None}}}
    )
    waiting = status["nextKid"]
    wait_until(lambda: _status(served, "faults")["activeKid"] == waiting, 30, "the next key to sign once servedAt is gone")
    assert "servedAt" not in _status(served, "faults")
    assert _condition(served, "faults", "JWKSServed") == {}
    assert _metric(served_operator, "signing_key_operator_jwks_served_lag_seconds", policy="faults") is None


def test_https_endpoints_are_verified_against_the_ca_bundle(served, serving, served_namespace, tmp_path):
    trusted_tls = ServingTls.generate(tmp_path / "trusted")
    untrusted_tls = ServingTls.generate(tmp_path / "untrusted", trusted=False)
    sidecar_url = serving("tls").url  # plain http, lag 0, in front of policy tls's sidecar
    trusted = LaggingEndpoint(sidecar_url, tls=trusted_tls).start()
    untrusted = LaggingEndpoint(sidecar_url, tls=untrusted_tls).start()
    try:
        served.core.create_namespaced_config_map(
            served_namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="private-ca"), data={"ca.crt": trusted_tls.ca_pem})
        )
        spec = _spec(trusted.url, untrusted.url)
        spec["jwks"]["caBundleRef"] = {"configMapName": "private-ca"}
        served.create("tls", spec)

        def reported():
            entries = {e["url"]: e for e in _status(served, "tls").get("servedAt") or []}
            return entries if entries.get(trusted.url, {}).get("kids") and entries.get(untrusted.url, {}).get("lastError") else None

        entries = wait_until(reported, 30, "the trusted URL served and the untrusted one refused")
        assert entries[trusted.url]["kids"] == [_status(served, "tls")["activeKid"]]
        assert "TLS" in entries[untrusted.url]["lastError"] and "certificate verify failed" in entries[untrusted.url]["lastError"]
        assert _condition(served, "tls", "JWKSServed")["reason"] == "Unreachable"
    finally:
        trusted.stop()
        untrusted.stop()


def test_the_crd_refuses_credentials_and_too_many_urls(served):
    for urls, field in (
        (["https://user:secret@jwks.example.test/jwks.json"], "spec.jwks.servedAt[0]"),
        (["ftp://jwks.example.test/jwks.json"], "spec.jwks.servedAt[0]"),
        ([f"https://jwks{i}.example.test/" for i in range(9)], "spec.jwks.servedAt"),
    ):
        with pytest.raises(client.ApiException) as refused:
            served.create(f"refused-{uuid.uuid4().hex[:6]}", _spec(*urls))
        assert refused.value.status == 422 and field in refused.value.body, refused.value.body


def test_an_idle_policy_whose_endpoints_agree_makes_no_api_writes(served, serving, served_operator):
    endpoint = serving("idle")
    served.create("idle", _spec(endpoint.url, rotation={"interval": "1h", "publishAhead": "10m"}))
    wait_until(lambda: _condition(served, "idle", "JWKSServed").get("status") == "True", 30, "JWKSServed True")
    time.sleep(3)  # the last status write lands
    writes = _metric(served_operator, "signing_key_operator_api_writes_total", object="SigningKeyPolicy")
    version = served.get("idle")["metadata"]["resourceVersion"]
    requests = endpoint.requests
    time.sleep(10)
    assert served.get("idle")["metadata"]["resourceVersion"] == version
    assert _metric(served_operator, "signing_key_operator_api_writes_total", object="SigningKeyPolicy") == writes
    checks = endpoint.requests - requests
    assert 3 <= checks <= 7, checks  # the idle interval (2 s here) over 10 s
    assert endpoint.user_agents["signing-key-operator (served JWKS read-back)"] >= checks


@pytest.fixture
def own_namespace(api_client, signingkeypolicy_crd):
    """A namespace the module's operator does not watch, for a test that kills its operator."""
    yield from _fresh_namespace(api_client, "served-own")


def test_a_restart_while_a_key_waits_keeps_when_it_was_first_served(kubeconfig, api_client, own_namespace, tmp_path):
    """The wait lives in the key Secret: an operator killed during publishAhead neither forgets
    when the key was first served nor starts the publishAhead over."""
    policies = Policies(api_client, own_namespace)
    operator = OperatorProcess(kubeconfig, tmp_path / "operator.log", extra_args=["--namespace", own_namespace, *OPERATOR_ARGS]).start()
    sidecar = Sidecar(kubeconfig, own_namespace, "restart-jwks", tmp_path / "sidecar.log")
    endpoint = LaggingEndpoint(sidecar.url).start()
    try:
        policies.create("restart", _spec(endpoint.url, rotation={"interval": "1h", "publishAhead": "10s"}))
        wait_until(lambda: _condition(policies, "restart", "JWKSServed").get("status") == "True", 60, "JWKSServed True")
        policies.annotate("restart", {ROTATE_ANNOTATION: "now"})

        def first_served():
            waiting = [k for k in _keys(policies, "restart").values() if k["state"] == "next"]
            return waiting[0] if waiting and waiting[0].get("first-served") else None

        waiting = wait_until(first_served, 20, "the next key first served")
        seen = parse_time(waiting["first-served"])
        operator.kill()
        time.sleep(3)
        restarted = time.time()
        operator.start().wait_serving()
        wait_until(lambda: _keys(policies, "restart")[waiting["kid"]]["state"] == "active", 30, "the key to sign")
        key = _keys(policies, "restart")[waiting["kid"]]
        assert parse_time(key["first-served"]) == seen
        activated = parse_time(key["activated"])
        assert activated - seen >= timedelta(seconds=10)
        # Counted from the recorded moment, not from the restart (which would be >= restart + 10 s).
        assert activated.timestamp() < restarted + 10, (activated, restarted)
    finally:
        endpoint.stop()
        sidecar.stop()
        operator.stop()
