"""TokenRevocations against the real API server and the operator process: validation by the API
server, compilation into the revocation document, pruning at the entry's end, statuses, Events,
and the revoke-token command."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import jwt as pyjwt
import pytest
from kubernetes.client.rest import ApiException

from .harness import FAST_SPEC, Policies, Revocations, wait_until

SKEW = 1  # FAST_SPEC clockSkew, seconds
LIFETIME = 5  # FAST_SPEC tokenLifetime, seconds


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


@pytest.fixture(autouse=True)
def _running_operator(operator):
    yield
    assert operator.process.poll() is None, "the operator exited:\n" + operator.logs()[-3000:]


@pytest.fixture
def revocations(api_client, namespace, signingkeypolicy_crd) -> Revocations:
    return Revocations(api_client, namespace)


def _sign(policies: Policies, policy: str, claims: dict) -> str:
    signing = policies.secret_data(f"{policy}-signing")
    return pyjwt.encode(claims, signing["private.pem"], algorithm=signing["alg"].decode(), headers={"kid": signing["kid"].decode()})


def test_a_policy_publishes_an_empty_revocation_document_beside_its_jwks(policies, revocations):
    policies.create("api", FAST_SPEC)
    policy = policies.wait_ready("api")
    assert revocations.document("api-revocations") == {"backend": "configmap", "jti": {}, "sub": {}}
    assert policy["status"]["revocations"] == {"backend": "ConfigMap", "configMapName": "api-revocations", "inForce": 0,
                                               "documentBytes": len(b'{"backend":"configmap","jti":{},"sub":{}}\n')}
    assert policies.condition("api", "RevocationsPublished") == "True"


def test_a_jti_revocation_is_published_until_the_token_expires_then_pruned_with_an_event(policies, revocations):
    policies.create("api", FAST_SPEC)
    policies.wait_ready("api")
    expires = _now() + timedelta(seconds=4)
    revocations.create("stolen", {"policyName": "api", "jti": "token-1", "expiresAt": _iso(expires), "reason": "leaked in a log"})
    until = int(expires.timestamp()) + SKEW

    document = wait_until(lambda: (revocations.document("api-revocations") or {}).get("jti"), 10, "the jti in the document")
    assert document == {"token-1": until}
    wait_until(lambda: revocations.in_force("stolen") == ("True", "Published"), 10, "InForce=True")
    status = revocations.get("stolen")["status"]
    assert status["inForce"] is True and status["until"] == _iso(datetime.fromtimestamp(until, timezone.utc))
    wait_until(lambda: "RevocationPublished" in revocations.event_reasons("stolen"), 10, "a RevocationPublished Event")
    wait_until(lambda: policies.get("api")["status"]["revocations"]["inForce"] == 1, 10, "the policy to count it")

    # Pruned once no verifier could accept the token any more: exp + clockSkew.
    wait_until(lambda: revocations.document("api-revocations")["jti"] == {}, 15, "the entry to be pruned")
    assert time.time() >= until - 0.05, "pruned before the token's end"
    wait_until(lambda: revocations.in_force("stolen") == ("False", "Expired"), 10, "InForce=False, Expired")
    wait_until(lambda: "RevocationExpired" in revocations.event_reasons("stolen"), 10, "a RevocationExpired Event")
    assert revocations.get("stolen")["status"]["inForce"] is False


def test_a_subject_revocation_lasts_token_lifetime_and_skew_past_issued_before(policies, revocations):
    policies.create("api", FAST_SPEC)
    policies.wait_ready("api")
    before = _now() + timedelta(seconds=1)
    revocations.create("alice", {"policyName": "api", "subject": "alice", "issuedBefore": _iso(before)})
    document = wait_until(lambda: (revocations.document("api-revocations") or {}).get("sub"), 10, "the subject in the document")
    start = int(before.timestamp())
    assert document == {"alice": {"issuedBefore": start, "until": start + LIFETIME + SKEW}}
    wait_until(lambda: revocations.in_force("alice") == ("True", "Published"), 10, "InForce=True")
    # A second, later revocation of the same subject widens the entry.
    later = before + timedelta(seconds=2)
    revocations.create("alice-again", {"policyName": "api", "subject": "alice", "issuedBefore": _iso(later)})
    wait_until(lambda: revocations.document("api-revocations")["sub"].get("alice", {}).get("issuedBefore") == start + 2, 10, "the wider entry")
    # Deleting a revocation withdraws it (an un-revoke), leaving the other in force.
    revocations.delete("alice-again")
    wait_until(lambda: revocations.document("api-revocations")["sub"].get("alice", {}).get("issuedBefore") == start, 10, "the narrower entry again")


def test_the_api_server_refuses_contradictory_or_incomplete_revocations_naming_the_field(policies, revocations):
    cases = [
        ({"policyName": "api", "jti": "a"}, "expiresAt"),
        ({"policyName": "api", "subject": "alice"}, "issuedBefore"),
        ({"policyName": "api", "jti": "a", "subject": "b", "expiresAt": _iso(_now())}, "exactly one of jti"),
        ({"policyName": "api"}, "exactly one of jti"),
        ({"policyName": "api", "jti": "has space", "expiresAt": _iso(_now())}, "spec.jti"),
        ({"policyName": "api", "jti": "a", "expiresAt": "tomorrow"}, "spec.expiresAt"),
        ({"policyName": "Not_A_Name", "jti": "a", "expiresAt": _iso(_now())}, "spec.policyName"),
        ({"jti": "a", "expiresAt": _iso(_now())}, "spec.policyName"),
    ]
    for spec, field in cases:
        with pytest.raises(ApiException) as refused:
            revocations.create(f"bad-{uuid.uuid4().hex[:6]}", spec)
        assert refused.value.status == 422, spec
        assert field in json.loads(refused.value.body)["message"], (spec, refused.value.body)
    revocations.create("ok", {"policyName": "api", "jti": "a", "expiresAt": _iso(_now() + timedelta(hours=1))})
    with pytest.raises(ApiException) as refused:
        revocations.objects.patch_namespaced_custom_object(
            "signingkeys.dev", "v1alpha1", revocations.namespace, "tokenrevocations", "ok", {"spec": {"jti": "b"}})
    assert refused.value.status == 422 and "cannot be changed" in refused.value.body


def test_a_revocation_naming_a_missing_policy_is_marked_and_nothing_else_changes(policies, revocations):
    policies.create("api", FAST_SPEC)
    policies.wait_ready("api")
    document = revocations.document("api-revocations")
    revocations.create("orphan", {"policyName": "nope", "jti": "x", "expiresAt": _iso(_now() + timedelta(hours=1))})
    wait_until(lambda: revocations.in_force("orphan") == ("False", "PolicyNotFound"), 10, "PolicyNotFound")
    wait_until(lambda: "PolicyNotFound" in revocations.event_reasons("orphan"), 10, "a PolicyNotFound Event")
    assert revocations.document("api-revocations") == document
    # The policy appearing later picks the revocation up...
    policies.create("nope", FAST_SPEC)
    wait_until(lambda: revocations.in_force("orphan") == ("True", "Published"), 20, "published once the policy exists")
    assert list(revocations.document("nope-revocations")["jti"]) == ["x"]
    # ...and its deletion leaves it marked again.
    policies.delete("nope")
    wait_until(lambda: revocations.in_force("orphan") == ("False", "PolicyNotFound"), 20, "PolicyNotFound after the deletion")


def test_kubectl_lists_revocations_with_their_policy_target_and_state(kubeconfig, policies, revocations):
    from .harness import kubectl

    policies.create("api", FAST_SPEC)
    policies.wait_ready("api")
    until = _now() + timedelta(hours=1)
    revocations.create("by-jti", {"policyName": "api", "jti": "j-1", "expiresAt": _iso(until)})
    revocations.create("by-subject", {"policyName": "api", "subject": "alice", "issuedBefore": _iso(_now())})
    wait_until(lambda: revocations.in_force("by-subject") == ("True", "Published"), 10, "both published")
    listed = kubectl(kubeconfig, "get", "tokrev", "-n", revocations.namespace)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NAME", "POLICY", "JTI", "SUBJECT", "IN", "FORCE", "UNTIL", "AGE"]
    row = next(r.split() for r in rows if r.startswith("by-jti "))  # the empty SUBJECT column prints nothing
    assert row[:5] == ["by-jti", "api", "j-1", "True", _iso(until + timedelta(seconds=SKEW))]
    row = next(r.split() for r in rows if r.startswith("by-subject "))
    assert row[:4] == ["by-subject", "api", "alice", "True"]
    described = kubectl(kubeconfig, "describe", "tokrev", "by-jti", "-n", revocations.namespace).stdout
    assert "RevocationPublished" in described
    assert kubectl(kubeconfig, "get", "signingkeys", "-n", revocations.namespace, "-o", "name").stdout.count("tokenrevocation") == 2


def test_the_revocation_examples_are_accepted_by_the_api_server(kubeconfig, revocations):
    from .harness import REPO, kubectl

    examples = REPO / "examples" / "revocations"
    assert len(list(examples.glob("*.yaml"))) == 3
    # A server-side dry run: schema, CEL rules and defaults, in this test's namespace.
    relocated = "\n---\n".join(p.read_text().replace("namespace: auth", f"namespace: {revocations.namespace}")
                                for p in sorted(examples.glob("*.yaml")))
    applied = kubectl(kubeconfig, "apply", "--dry-run=server", "-f", "-", stdin=relocated)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.count("(server dry run)") == 3, applied.stdout


def test_a_revocation_document_edited_by_hand_is_restored(policies, revocations):
    policies.create("api", FAST_SPEC)
    policies.wait_ready("api")
    revocations.create("r", {"policyName": "api", "jti": "keep-me", "expiresAt": _iso(_now() + timedelta(hours=1))})
    wait_until(lambda: "keep-me" in (revocations.document("api-revocations") or {}).get("jti", {}), 10, "the entry")
    revocations.core.patch_namespaced_config_map("api-revocations", revocations.namespace,
                                                 {"data": {"revocations.json": '{"backend":"configmap","jti":{},"sub":{}}\n'}})
    wait_until(lambda: "keep-me" in revocations.document("api-revocations")["jti"], 10, "the entry restored")


def _revoke_token(kubeconfig, namespace: str, *args: str, token: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "signing_key_operator", "revoke-token", "--kubeconfig", str(kubeconfig), "-n", namespace, *args],
        input=token, capture_output=True, text=True, timeout=60,
    )


def test_revoke_token_verifies_the_token_and_creates_its_revocation_once(kubeconfig, policies, revocations):
    policies.create("api", {**FAST_SPEC, "tokenLifetime": "1h"})
    policies.wait_ready("api")
    now = int(time.time())
    token = _sign(policies, "api", {"sub": "alice", "jti": "j-123", "iat": now, "exp": now + 600})

    done = _revoke_token(kubeconfig, policies.namespace, "--policy", "api", "--reason", "laptop stolen", token=token)
    assert done.returncode == 0, done.stderr
    assert "revoked the token with jti 'j-123'" in done.stdout
    name = done.stdout.split("TokenRevocation ")[1].split()[0].split("/")[1]
    created = revocations.get(name)
    assert created["spec"] == {"policyName": "api", "jti": "j-123", "reason": "laptop stolen",
                               "expiresAt": _iso(datetime.fromtimestamp(now + 600, timezone.utc))}
    wait_until(lambda: "j-123" in revocations.document("api-revocations")["jti"], 10, "the jti published")
    again = _revoke_token(kubeconfig, policies.namespace, "--policy", "api", token=token)
    assert again.returncode == 0 and "already revoked" in again.stdout

    # No jti: refused alone, with the way out said; --by-subject revokes the subject.
    no_jti = _sign(policies, "api", {"sub": "bob", "iat": now, "exp": now + 600})
    refused = _revoke_token(kubeconfig, policies.namespace, "--policy", "api", token=no_jti)
    assert refused.returncode == 1 and "--by-subject" in refused.stderr and "bob" in refused.stderr
    by_subject = _revoke_token(kubeconfig, policies.namespace, "--policy", "api", "--by-subject", token=no_jti)
    assert by_subject.returncode == 0, by_subject.stderr
    wait_until(lambda: "bob" in revocations.document("api-revocations")["sub"], 10, "the subject published")
    assert revocations.document("api-revocations")["sub"]["bob"]["issuedBefore"] > now

    # Expired: nothing to do, nothing created.
    expired = _sign(policies, "api", {"sub": "carol", "jti": "old", "iat": now - 100, "exp": now - 30})
    before = {i["metadata"]["name"] for i in revocations.objects.list_namespaced_custom_object(
        "signingkeys.dev", "v1alpha1", policies.namespace, "tokenrevocations")["items"]}
    stale = _revoke_token(kubeconfig, policies.namespace, "--policy", "api", token=expired)
    assert stale.returncode == 0 and "nothing to revoke" in stale.stdout
    after = {i["metadata"]["name"] for i in revocations.objects.list_namespaced_custom_object(
        "signingkeys.dev", "v1alpha1", policies.namespace, "tokenrevocations")["items"]}
    assert after == before

    # Not signed by this policy: refused, and the token is not echoed.
    from signing_key_operator.core.keys import generate_key

    stranger = generate_key("ES256")
    forged = pyjwt.encode({"sub": "mallory", "jti": "f", "exp": now + 600}, stranger.private, algorithm="ES256",
                          headers={"kid": policies.get("api")["status"]["activeKid"]})
    refused = _revoke_token(kubeconfig, policies.namespace, "--policy", "api", token=forged)
    assert refused.returncode == 1 and "does not verify" in refused.stderr
    assert forged not in refused.stderr and forged.split(".")[1] not in refused.stderr


def test_revoke_token_refuses_a_numeric_jti_and_creates_nothing(kubeconfig, policies, revocations):
    """finding 5: revoke-token stringified a numeric jti, created a revocation of "123" and said
    it had revoked the token, which no verifier matched against the number. Now refused, with
    the way out; --by-subject still revokes the token's subject."""
    policies.create("api", {**FAST_SPEC, "tokenLifetime": "1h"})
    policies.wait_ready("api")
    now = int(time.time())
    numeric = _sign(policies, "api", {"sub": "dave", "jti": 123, "iat": now, "exp": now + 600})

    refused = _revoke_token(kubeconfig, policies.namespace, "--policy", "api", token=numeric)
    assert refused.returncode == 1, refused.stdout
    assert "jti is not a string" in refused.stderr and "--by-subject" in refused.stderr and "dave" in refused.stderr
    assert revocations.objects.list_namespaced_custom_object(
        "signingkeys.dev", "v1alpha1", policies.namespace, "tokenrevocations")["items"] == []

    by_subject = _revoke_token(kubeconfig, policies.namespace, "--policy", "api", "--by-subject", token=numeric)
    assert by_subject.returncode == 0, by_subject.stderr
    wait_until(lambda: "dave" in revocations.document("api-revocations")["sub"], 10, "the subject published")
    assert revocations.document("api-revocations")["jti"] == {}


# ---------------------------------------------------------------- Redis backend


def _redis(url: str):
    import redis

    return redis.Redis.from_url(url, decode_responses=True)


def test_redis_backend_mirrors_each_entry_with_its_end_and_rebuilds_them_after_a_restart(policies, revocations, redis_server):
    ns = policies.namespace
    policies.create("api", {**FAST_SPEC, "tokenLifetime": "1h", "revocation": {"backend": "Redis", "redis": {"url": redis_server.url}}})
    policies.wait_ready("api")
    assert revocations.document("api-revocations") == {"backend": "redis", "jti": {}, "sub": {}}
    expires = _now() + timedelta(minutes=30)
    revocations.create("one", {"policyName": "api", "jti": "j-1", "expiresAt": _iso(expires)})
    revocations.create("alice", {"policyName": "api", "subject": "alice", "issuedBefore": _iso(_now())})
    store = _redis(redis_server.url)
    jti_key, subject_key = f"signingkeys:{ns}/api:jti:j-1", f"signingkeys:{ns}/api:sub:alice"
    wait_until(lambda: store.exists(jti_key, subject_key) == 2, 10, "both entries in Redis")
    # Each key expires at its entry's end: the token's exp + clockSkew; issuedBefore + 1h + 1s.
    assert abs(store.expiretime(jti_key) - (int(expires.timestamp()) + SKEW)) <= 1
    assert abs(store.expiretime(subject_key) - (int(_now().timestamp()) + 3600 + SKEW)) <= 3
    wait_until(lambda: revocations.in_force("one") == ("True", "Published"), 10, "InForce=True")
    assert revocations.get("one")["status"]["backend"] == "Redis"

    # Redis dies (no persistence): the policy says so, a revocation made meanwhile waits...
    redis_server.kill()
    wait_until(lambda: policies.condition("api", "RevocationsPublished") == "False", 15, "RevocationsPublished=False")
    revocations.create("two", {"policyName": "api", "jti": "j-2", "expiresAt": _iso(expires)})
    wait_until(lambda: revocations.in_force("two") == ("False", "RedisUnavailable"), 15, "the new one pending")
    # ...and once Redis is back, empty, every entry comes back from the TokenRevocations.
    redis_server.start()
    store = _redis(redis_server.url)
    wait_until(lambda: store.exists(jti_key, subject_key, f"signingkeys:{ns}/api:jti:j-2") == 3, 30, "every entry back in Redis")
    wait_until(lambda: revocations.in_force("two") == ("True", "Published"), 15, "the pending one published")
    wait_until(lambda: policies.condition("api", "RevocationsPublished") == "True", 15, "RevocationsPublished=True")

    # Withdrawing a revocation (deleting it) removes its key.
    revocations.delete("alice")
    wait_until(lambda: not store.exists(subject_key), 10, "the withdrawn entry's key gone")
    assert store.exists(jti_key)


# ---------------------------------------------------------------- end to end: sidecar + verifier


def test_the_verifier_refuses_a_revoked_token_and_accepts_the_others_through_a_rotation(kubeconfig, policies, revocations, tmp_path):
    from signing_key_operator.verify import RevokedToken, Verifier

    from .harness import free_port, terminate

    ns = policies.namespace
    policies.create("api", FAST_SPEC)
    first = policies.wait_ready("api")["status"]["activeKid"]
    port = free_port()
    with open(tmp_path / "sidecar.log", "wb") as log:
        sidecar = subprocess.Popen(
            [sys.executable, "-m", "signing_key_operator", "serve", "--kubeconfig", str(kubeconfig),
             "--configmap", f"{ns}/api-jwks", "--revocations-configmap", f"{ns}/api-revocations",
             "--host", "127.0.0.1", "--port", str(port), "--shutdown-delay", "0"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        verifier = Verifier(f"{base}/.well-known/jwks.json", revocations_url=f"{base}/revocations.json",
                            leeway=SKEW, unknown_kid_cooldown=1)
        now = int(time.time())
        stolen = _sign(policies, "api", {"sub": "alice", "jti": "stolen", "iat": now, "exp": now + LIFETIME})
        kept = _sign(policies, "api", {"sub": "alice", "jti": "kept", "iat": now, "exp": now + LIFETIME})
        wait_until(lambda: _accepts(verifier, stolen), 15, "the sidecar to serve and the token to verify")
        revocations.create("stolen", {"policyName": "api", "jti": "stolen",
                                      "expiresAt": _iso(datetime.fromtimestamp(now + LIFETIME, timezone.utc))})
        # Refused within the document's max-age (2 s) of its publication; the other token is not.
        wait_until(lambda: _refused_as_revoked(verifier, stolen, RevokedToken), 8, "the revoked token refused")
        verifier.verify(kept)

        # Fresh tokens from whatever key signs, verified without a failure through a rotation.
        kids, verified, deadline = set(), 0, time.monotonic() + 30
        while time.monotonic() < deadline and len(kids) < 2:
            signing = policies.secret_data("api-signing")
            kid = signing["kid"].decode()
            issued = int(time.time())
            token = _sign(policies, "api", {"sub": "bob", "jti": uuid.uuid4().hex, "iat": issued, "exp": issued + LIFETIME})
            assert verifier.verify(token)["sub"] == "bob"
            kids.add(kid)
            verified += 1
            time.sleep(0.3)
        assert len(kids) == 2 and first in kids, f"no rotation seen in 30 s ({verified} tokens verified)"
    finally:
        terminate(sidecar, grace=10)


def _accepts(verifier, token) -> bool:
    from signing_key_operator.verify import TokenRejected

    try:
        verifier.verify(token)
        return True
    except TokenRejected:
        return False


def _refused_as_revoked(verifier, token, revoked) -> bool:
    try:
        verifier.verify(token)
    except revoked:
        return True
    return False


# ---------------------------------------------------------------- a full document


def test_at_the_document_limit_nothing_is_dropped_and_the_policy_says_to_use_redis(api_client, kubeconfig, tmp_path):
    """The limit is 1 MiB in production (bench/revocation_bench.py capacity fills it for real);
    here an operator of its own is given a 300-byte limit so a few entries fill it."""
    from kubernetes import client

    from .harness import OperatorProcess

    namespace = f"solo-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    process = OperatorProcess(kubeconfig, tmp_path / "operator.log",
                              extra_args=["--namespace", namespace, "--revocation-document-limit", "300"]).start()
    try:
        policies, revocations = Policies(api_client, namespace), Revocations(api_client, namespace)
        policies.create("api", FAST_SPEC)
        policies.wait_ready("api")
        expires = _iso(_now() + timedelta(hours=1))
        for n in range(4):  # each entry adds some 60 bytes to the 41 of the empty document
            revocations.create(f"r{n}", {"policyName": "api", "jti": f"jti-number-{n:040d}", "expiresAt": expires})
            if n < 3:
                wait_until(lambda n=n: revocations.in_force(f"r{n}") == ("True", "Published"), 10, f"r{n} published")
        wait_until(lambda: revocations.in_force("r3") == ("False", "DocumentFull"), 10, "r3 marked DocumentFull")
        # What was published stays published; the policy tells the user what to do.
        assert sorted(revocations.document("api-revocations")["jti"]) == [f"jti-number-{n:040d}" for n in range(3)]
        assert [revocations.in_force(f"r{n}") for n in range(3)] == [("True", "Published")] * 3
        wait_until(lambda: policies.condition("api", "RevocationsPublished") == "False", 10, "RevocationsPublished=False")
        condition = next(c for c in policies.get("api")["status"]["conditions"] if c["type"] == "RevocationsPublished")
        assert condition["reason"] == "DocumentFull" and "backend: Redis" in condition["message"]
        wait_until(lambda: "RevocationsTooLarge" in policies.event_reasons("api"), 10, "a RevocationsTooLarge Event")
        wait_until(lambda: "RevocationNotPublished" in revocations.event_reasons("r3"), 10, "an Event on r3")
        metrics = process.metrics()
        assert f'signing_key_operator_revocations_unpublished{{namespace="{namespace}",policy="api"}} 1.0' in metrics
        assert f'signing_key_operator_revocations_in_force{{namespace="{namespace}",policy="api"}} 4.0' in metrics
        # Room again (one withdrawn): the pending entry is published.
        revocations.delete("r0")
        wait_until(lambda: revocations.in_force("r3") == ("True", "Published"), 10, "r3 published once there is room")
        wait_until(lambda: policies.condition("api", "RevocationsPublished") == "True", 10, "RevocationsPublished=True")
        assert process.process.poll() is None
    finally:
        process.stop()
        core.delete_namespace(namespace)
