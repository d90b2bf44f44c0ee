"""The chart as users install it: `helm install` with the image built from the Dockerfile, the
operator and the JWKS server running as pods on a real kubelet, the operator with nothing but its
in-cluster identity (the projected ServiceAccount token and KUBERNETES_SERVICE_HOST), the served
JWK Set read through its Service as verifiers fetch it.

One release per session (conftest.py: namespace `sko-system`, enforcing the restricted Pod
Security Standard), reconfigured by each test with `helm upgrade` to the values it needs, so every
test also works on its own.
"""

from __future__ import annotations

import json
import time

import pytest

from signing_key_operator.k8s.objects import parse_time

from tests.integration.harness import wait_until

from .chart_release import FILE_MODE_TIMEOUT, NAMESPACE, POLICY, REFUSAL, RELEASE, Kube, Release, served_kids, wait_served

def _proc_status(kube: Kube, pod: str) -> dict[str, str]:
    text = kube.exec(NAMESPACE, pod, "cat", "/proc/1/status").stdout
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_helm_install_runs_both_deployments_with_the_identity_and_security_the_chart_promises(release, kube):
    release.configure()
    operators, servers = kube.pods(NAMESPACE, "operator"), kube.pods(NAMESPACE, "jwks-server")
    assert operators and servers
    for pod in operators + servers:
        name = pod["metadata"]["name"]
        assert pod["status"]["phase"] == "Running", name
        assert all(status["ready"] for status in pod["status"]["containerStatuses"]), f"{name} not ready"
        status = _proc_status(kube, name)
        assert status["Uid"].split() == ["65532"] * 4, f"{name} runs as {status['Uid']}"
        assert status["Gid"].split() == ["65532"] * 4, f"{name} runs with group {status['Gid']}"
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, f"{name} has capabilities {status['CapEff']}"
        assert status["NoNewPrivs"].strip() == "1", f"{name} may gain privileges"
        write = kube.exec(NAMESPACE, name, "sh", "-c", "echo x > /opt/probe", check=False)
        assert write.returncode != 0 and "Read-only file system" in write.stderr, f"{name}'s root file system is writable: {write.stderr}"

    # The operator reconciled with its in-cluster identity: no kubeconfig anywhere in the pod,
    # the API server through the `kubernetes` Service, the chart's ServiceAccount.
    pod = operators[0]
    container = pod["spec"]["containers"][0]
    assert not any("kubeconfig" in argument for argument in container.get("args", []))
    environment = kube.exec(NAMESPACE, pod["metadata"]["name"], "env").stdout
    assert "KUBERNETES_SERVICE_HOST=10.0.0.1" in environment
    assert pod["spec"]["serviceAccountName"] == release.fullname
    assert release.policy()["status"]["conditions"], "the operator wrote the policy's status"
    assert served_kids(release.jwks_url) == release.published_kids(), "the Service serves the published set"

    logs = release.operator_logs()
    assert "Traceback" not in logs, logs[-3000:]
    assert "kube-probe" not in logs, "every kubelet probe is logged:\n" + logs[-1500:]
    refusals = [line for line in logs.splitlines() if REFUSAL.search(line)]
    assert not refusals, "\n".join(refusals[:10])
    for pod in operators + servers:
        restarts = sum(status["restartCount"] for status in pod["status"]["containerStatuses"])
        assert restarts == 0, f"{pod['metadata']['name']} restarted {restarts} times:\n{kube.logs(NAMESPACE, pod['metadata']['name'], previous=True)[-2000:]}"


def test_the_restricted_pod_security_standard_admits_both_deployments_and_is_enforced(release, kube):
    release.configure()
    labels = kube.json("get", "namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for deployment in (release.fullname, release.jwks_service):
        status = kube.json("get", "deployment", "-n", NAMESPACE, deployment)["status"]
        assert status.get("availableReplicas", 0) == status["replicas"], (deployment, status)
    # The label is enforced here (so admitting the chart's pods means something): a pod that
    # runs as root is refused.
    refused = kube.run("run", "root-probe", "-n", NAMESPACE, "--image", release.image, "--dry-run=server",
                       "--overrides", '{"spec":{"securityContext":{"runAsUser":0}}}')
    assert refused.returncode != 0 and 'violates PodSecurity "restricted:latest"' in refused.stderr, refused.stderr


@pytest.mark.parametrize("mode", ["watch", "file"])
def test_the_jwks_served_through_the_service_follows_a_rotation_and_a_revoke_kid(release, kube, mode):
    release.configure(**{"jwksServer.mode": mode})
    release.wait_ready()
    timeout = FILE_MODE_TIMEOUT if mode == "file" else 30
    url = release.jwks_url
    wait_served(url, lambda kids: kids == release.published_kids(), timeout, "the served set to match the ConfigMap")

    kid = release.rotate()
    _, seconds = wait_served(url, lambda kids: kid in kids, timeout, f"{kid} served through the Service ({mode} mode)")
    print(f"[{mode}] new key {kid} served through the Service {seconds:.1f}s after it was written")
    wait_until(lambda: release.signing_kid() == kid, 60, f"{kid} to sign", interval=0.5)

    release.annotate("signingkeys.dev/revoke-kid", kid)
    _, seconds = wait_served(url, lambda kids: kid not in kids and kids, timeout, f"revoked {kid} gone from the Service ({mode} mode)")
    print(f"[{mode}] revoked key {kid} gone from the Service {seconds:.1f}s after the annotation")
    # Revoked, or already removed (a revoked key is kept only for its record).
    assert release.keys_by_state().get(kid, "removed") in ("revoked", "removed")
    fresh = wait_until(lambda: (lambda k: k if k != kid else None)(release.signing_kid()), 60, "a fresh key to sign")
    wait_served(url, lambda kids: fresh in kids, timeout, f"the fresh key {fresh} served")


def test_the_operator_pod_reads_the_set_back_through_the_service_before_a_key_signs(release, kube):
    """spec.jwks.servedAt names the JWKS Service's ClusterIP URL: the operator, in its pod, checks
    it through kube-proxy as a verifier pod would, and the new key's publishAhead starts only once
    the Service serves it: in file mode, once the kubelet has delivered the ConfigMap volume, about
    a minute after the write. (Watch mode, where it is served within milliseconds, is read back on
    the control plane in tests/integration/test_served_readback.py; one mode here keeps the
    module's Deployment switches as few as they were.)"""
    mode = "file"
    release.configure(**{"jwksServer.mode": mode, "operator.servedCheckInterval": "1s"})
    release.wait_ready()
    url = release.jwks_url
    timeout = FILE_MODE_TIMEOUT
    kube.kubectl("patch", "-n", NAMESPACE, "signingkeypolicy", POLICY, "--type=merge",
                 "-p", json.dumps({"spec": {"jwks": {"servedAt": [url]}}}))
    try:
        wait_until(lambda: _condition(release, "JWKSServed") == ("True", "Served"), timeout, "JWKSServed True", interval=0.5)
        kid = release.rotate()
        _, seconds = wait_served(url, lambda kids: kid in kids, timeout, f"{kid} served through the Service ({mode} mode)")
        record = wait_until(lambda: (lambda a: a if a.get("signingkeys.dev/activated") else None)(_annotations(release, kid)),
                            timeout + 30, f"{kid} to sign", interval=0.5)
        created, first_served, activated = (parse_time(record[f"signingkeys.dev/{field}"]) for field in ("created", "first-served", "activated"))
        seen = (first_served - created).total_seconds()
        print(f"[{mode}] {kid}: served through the Service {seconds:.1f}s after it was written (test's poll), "
              f"seen by the operator's pod after {seen:.1f}s, signing {(activated - first_served).total_seconds():.1f}s after that")
        # Not before the Service served it (the test polls every 0.2 s, the operator every 1 s)...
        assert seen >= seconds - 1.5, (seen, seconds, kube.kubectl("get", "pods,endpointslices", "-n", NAMESPACE, "-o", "wide"),
                                       [line for line in release.operator_logs().splitlines() if "Served" in line or "Held" in line][-6:])
        # ...and publishAhead (5 s) after it was seen, however late that was.
        assert (activated - first_served).total_seconds() >= 5
        if seen > 7:  # served after it would have signed without the read-back: the hold was reported
            assert "ActivationHeld" in _event_reasons(kube)
    finally:
        kube.kubectl("patch", "-n", NAMESPACE, "signingkeypolicy", POLICY, "--type=merge", "-p", '{"spec":{"jwks":{"servedAt":null}}}')


def _condition(release: Release, kind: str) -> tuple[str, str] | None:
    for condition in release.policy().get("status", {}).get("conditions", []):
        if condition["type"] == kind:
            return condition["status"], condition["reason"]
    return None


def _annotations(release: Release, kid: str) -> dict[str, str]:
    return next((s["metadata"]["annotations"] for s in release.key_secrets() if s["metadata"]["annotations"]["signingkeys.dev/kid"] == kid), {})


def _event_reasons(kube: Kube) -> list[str]:
    events = kube.json("get", "events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={POLICY}")["items"]
    return [event["reason"] for event in events]


def test_deleting_the_operator_pod_mid_rotation_converges_and_keeps_the_invariants(release, kube):
    release.configure(**{"jwksServer.mode": "watch"})
    release.wait_ready()
    # The one running pod (a pod of an earlier configuration may still be terminating).
    (old_pod,) = [p["metadata"]["name"] for p in kube.pods(NAMESPACE, "operator") if not p["metadata"].get("deletionTimestamp")]
    kid = release.rotate()
    kube.kubectl("delete", "pod", "-n", NAMESPACE, old_pod, "--wait=false")
    seen_signing: set[str] = set()

    def converged() -> bool:
        signing = release.signing_kid()
        seen_signing.add(signing)
        published = release.published_kids()
        keys = release.keys_by_state()
        # The invariants, at every look: the signing key is published, every published kid has
        # its key Secret, and at most one key is active.
        assert signing in published, f"signing key {signing} not published: {published}"
        assert set(published) <= set(keys), (published, keys)
        assert list(keys.values()).count("active") <= 1, keys
        pods = kube.pods(NAMESPACE, "operator")
        fresh = [p for p in pods if p["metadata"]["name"] != old_pod and p["status"].get("phase") == "Running"]
        return bool(fresh) and signing == kid and keys.get(kid) == "active"

    wait_until(converged, 120, f"a new operator pod and {kid} active", interval=0.5)
    release.wait_ready()
    assert kid in served_kids(release.jwks_url)
    assert "Traceback" not in release.operator_logs()


def test_two_replicas_publish_and_activate_every_key_once(release, kube):
    release.configure(replicaCount=2, **{"jwksServer.mode": "watch"})
    release.wait_ready()
    assert len(kube.pods(NAMESPACE, "operator")) == 2
    kids = []
    for _ in range(3):
        kid = release.rotate()
        wait_until(lambda: release.signing_kid() == kid, 60, f"{kid} to sign", interval=0.5)
        kids.append(kid)
    time.sleep(5)  # room for a second replica's duplicate, were there one
    events = kube.json("get", "events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={POLICY}")["items"]
    for kid in kids:
        for reason in ("KeyPublished", "KeyActivated"):
            matching = [e for e in events if e["reason"] == reason and kid in e["message"]]
            assert sum(e.get("count", 1) for e in matching) == 1, f"{reason} for {kid}: {[e['message'] for e in matching]}"
    serials = [s["metadata"]["name"] for s in release.key_secrets()]
    assert len(serials) == len(set(serials)) and len(release.keys_by_state()) == len(set(release.keys_by_state()))
    release.configure(replicaCount=1)


def test_helm_upgrade_and_uninstall_keep_the_policies_and_their_key_secrets(release, kube):
    release.configure()
    release.wait_ready()

    def live_keys() -> dict[str, str]:
        # Active and next keys only: a retired one may leave on its own when its retention ends.
        return {s["metadata"]["name"]: s["metadata"]["uid"] for s in release.key_secrets()
                if s["metadata"]["labels"]["signingkeys.dev/state"] in ("active", "next")}

    def still_there(keys: dict[str, str]) -> dict[str, str]:
        return {s["metadata"]["name"]: s["metadata"]["uid"] for s in release.key_secrets() if s["metadata"]["name"] in keys}

    before = live_keys()
    assert before
    policy_uid = release.policy()["metadata"]["uid"]
    release.configure(**{"operator.verbose": "true", "jwksServer.replicaCount": 2})
    release.wait_ready()
    assert still_there(before) == before, "helm upgrade deleted or replaced key Secrets"
    assert release.policy()["metadata"]["uid"] == policy_uid

    before = live_keys()
    kube.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait")
    wait_until(lambda: not kube.pods(NAMESPACE, "operator"), 60, "the operator pods gone")
    assert release.policy()["metadata"]["uid"] == policy_uid, "uninstall deleted the policy"
    assert still_there(before) == before, "uninstall deleted or replaced key Secrets"
    kube.kubectl("get", "crd", "signingkeypolicies.signingkeys.dev")
    release.configure()  # back for the module's teardown
