"""The SigningKeyPolicy CRD on a real API server: defaults, validation, status, printer columns.

Everything here is decided by the API server from crds/signingkeypolicies.yaml alone (no
operator runs): what users get from `kubectl apply` before the operator sees anything.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from signing_key_operator.devcluster.crd import install_crd

from .harness import kubectl

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "signingkeypolicies.yaml"
CRD_NAME = "signingkeypolicies.signingkeys.dev"
GROUP, VERSION, PLURAL = "signingkeys.dev", "v1alpha1", "signingkeypolicies"

DEFAULTS = {
    "algorithm": "ES256",
    "rotation": {"interval": "720h", "publishAhead": "1h"},
    "tokenLifetime": "1h",
    "clockSkew": "1m",
    "jwks": {"maxAge": "60s"},
    "suspend": False,
    "revocation": {"backend": "ConfigMap"},
}


@pytest.fixture(scope="module")
def crd(api_client):
    return install_crd(api_client, CRD_FILE)


@pytest.fixture
def namespace(api_client):
    """A namespace per test outside the session operator's ``t-*`` pattern. No operator acts
    here, and none should: in a full run the session operator starts right after this module,
    while its ~60 namespaces are still terminating with their policies in them, and had them
    all to look at while test_name_conflicts waited for its own policy (that wait ran out at 30 s
    in 2 of 3 full runs on 2026-12-01; the policy's first event came 30 s late)."""
    name = f"crd-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture
def objects(api_client, crd):
    return client.CustomObjectsApi(api_client)


def _policy(name: str, spec: dict | None) -> dict:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SigningKeyPolicy", "metadata": {"name": name}}
    if spec is not None:
        body["spec"] = spec
    return body


def _create(objects, namespace, name, spec):
    return objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _policy(name, spec))


def _causes(error: ApiException) -> list[dict]:
    return json.loads(error.body).get("details", {}).get("causes", [])


# --- accepted specs and defaults -------------------------------------------------------------

def test_full_policy_is_stored_as_written(objects, namespace):
    spec = {
        "algorithm": "PS384",
        "rsaKeySize": 4096,
        "rotation": {"interval": "168h", "publishAhead": "2h30m"},
        "tokenLifetime": "15m",
        "clockSkew": "30s",
        "jwks": {"maxAge": "300s"},
        "signingSecretName": "api-tokens-signing",
        "jwksConfigMapName": "api-tokens.jwks",
        "suspend": True,
        "revocation": {
            "backend": "Redis",
            "configMapName": "api-tokens.revoked",
            "redis": {"url": "rediss://redis.auth.svc:6380/2", "keyPrefix": "tokens:",
                      "passwordSecretRef": {"name": "redis-auth", "key": "pw"}},
        },
    }
    created = _create(objects, namespace, "full", spec)
    assert created["spec"] == spec
    assert objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "full")["spec"] == spec


def test_empty_spec_gets_every_default(objects, namespace):
    created = _create(objects, namespace, "minimal", {})
    assert created["spec"] == DEFAULTS
    assert "rsaKeySize" not in created["spec"]  # the operator picks 3072 for RSA; none here


def test_missing_spec_gets_every_default(objects, namespace):
    assert _create(objects, namespace, "nospec", None)["spec"] == DEFAULTS


def test_partly_written_objects_get_the_rest_defaulted(objects, namespace):
    created = _create(objects, namespace, "partial", {"rotation": {"interval": "24h"}, "jwks": {}})
    assert created["spec"]["rotation"] == {"interval": "24h", "publishAhead": "1h"}
    assert created["spec"]["jwks"] == {"maxAge": "60s"}


def test_second_scale_timeline_is_accepted(objects, namespace):
    spec = {
        "algorithm": "EdDSA",
        "rotation": {"interval": "30s", "publishAhead": "10s"},
        "jwks": {"maxAge": "5s"},
        "tokenLifetime": "20s",
        "clockSkew": "0s",
    }
    assert _create(objects, namespace, "fast", spec)["spec"] == {**spec, "suspend": False, "revocation": {"backend": "ConfigMap"}}


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"algorithm": "RS256", "rsaKeySize": 2048}, id="rsa-2048"),
        pytest.param({"algorithm": "PS512", "rsaKeySize": 3072}, id="pss-3072"),
        pytest.param({"algorithm": "ES512"}, id="es512-without-key-size"),
        pytest.param({"tokenLifetime": "2000h"}, id="token-lifetime-longer-than-interval"),
        pytest.param({"rotation": {"interval": "1h30m", "publishAhead": "1.5m"}}, id="compound-and-decimal-durations"),
        pytest.param({"rotation": {"publishAhead": "60s"}, "jwks": {"maxAge": "60s"}}, id="publish-ahead-equal-to-max-age"),
        pytest.param({"jwks": {"maxAge": "0"}, "clockSkew": "0"}, id="bare-zero-max-age-and-skew"),
        pytest.param({"jwks": {"maxAge": "24h"}, "rotation": {"publishAhead": "25h"}}, id="max-age-one-day"),
        pytest.param({"signingSecretName": "a" * 253}, id="secret-name-253-chars"),
        pytest.param({"tokenLifetimes": [{"name": "admin", "lifetime": "10m"}, {"name": "service", "lifetime": "1h"}]},
                     id="lifetime-classes-up-to-token-lifetime"),
        pytest.param({"tokenLifetimes": [{"name": f"class-{n}", "lifetime": "1m"} for n in range(8)]},
                     id="eight-lifetime-classes"),
        pytest.param({"algorithm": "HS256"}, id="hs256"),
        pytest.param({"algorithm": "HS384", "hmacKeySize": 1024, "verificationSecretName": "api-verifiers"},
                     id="hs384-largest-key-named-secret"),
        pytest.param({"algorithm": "HS512", "hmacKeySize": 512, "jwks": {"maxAge": "1m"}}, id="hs512-default-max-age-written"),
        pytest.param({"tokenLifetime": "2h", "tokenLifetimes": [{"name": "a" * 63, "lifetime": "90m"}]},
                     id="lifetime-class-name-63-chars"),
    ],
)
def test_edge_specs_are_accepted(objects, namespace, spec):
    created = _create(objects, namespace, "edge", spec)
    for key, value in spec.items():
        if isinstance(value, dict):
            assert created["spec"][key].items() >= value.items()
        else:
            assert created["spec"][key] == value


# --- refused specs -----------------------------------------------------------------------------

BAD_SPECS = [
    # (id, spec, field path the refusal must name, fragment of the message)
    ("algorithm-none", {"algorithm": "none"}, "spec.algorithm", "supported values"),
    ("algorithm-hs1", {"algorithm": "HS1"}, "spec.algorithm", "supported values"),
    ("hmac-key-size-below-hs384-hash", {"algorithm": "HS384", "hmacKeySize": 256}, "spec.hmacKeySize",
     "at least the hash size of HS384 (384 bits"),
    ("hmac-key-size-below-hs512-hash", {"algorithm": "HS512", "hmacKeySize": 384}, "spec.hmacKeySize",
     "at least the hash size of HS512 (512 bits"),
    ("hmac-key-size-below-any-hash", {"algorithm": "HS256", "hmacKeySize": 128}, "spec.hmacKeySize",
     "greater than or equal to 256"),
    ("hmac-key-size-beyond-hs256-block", {"algorithm": "HS256", "hmacKeySize": 1024}, "spec.hmacKeySize",
     "at most 512 for HS256"),
    ("hmac-key-size-not-whole-bytes", {"algorithm": "HS256", "hmacKeySize": 260}, "spec.hmacKeySize", "multiple of 8"),
    ("hmac-key-size-with-es256", {"algorithm": "ES256", "hmacKeySize": 256}, "spec.hmacKeySize",
     "only to the HMAC algorithms"),
    ("hmac-key-size-with-default-algorithm", {"hmacKeySize": 256}, "spec.hmacKeySize", "not to ES256"),
    ("rsa-key-size-with-hs256", {"algorithm": "HS256", "rsaKeySize": 2048}, "spec.rsaKeySize", "not to HS256"),
    ("verification-secret-with-es256", {"algorithm": "ES256", "verificationSecretName": "api-keys"},
     "spec.verificationSecretName", "only to the HMAC algorithms"),
    ("verification-secret-name-uppercase", {"algorithm": "HS256", "verificationSecretName": "Api"},
     "spec.verificationSecretName", "should match"),
    ("jwks-configmap-with-hs256", {"algorithm": "HS256", "jwksConfigMapName": "api-jwks"}, "spec.jwksConfigMapName",
     "an HMAC policy publishes none"),
    ("served-at-with-hs256", {"algorithm": "HS256", "jwks": {"servedAt": ["https://auth.example.com/jwks.json"]}},
     "spec.jwks.servedAt", "an HMAC policy publishes none"),
    ("ca-bundle-with-hs512", {"algorithm": "HS512", "jwks": {"caBundleRef": {"configMapName": "kube-root-ca.crt"}}},
     "spec.jwks.caBundleRef", "an HMAC policy publishes none"),
    ("max-age-with-hs256", {"algorithm": "HS256", "jwks": {"maxAge": "5m"}, "rotation": {"publishAhead": "1h"}},
     "spec.jwks.maxAge", "an HMAC policy publishes none"),
    ("rsa-key-size-with-es256", {"algorithm": "ES256", "rsaKeySize": 2048}, "spec.rsaKeySize",
     "only to the RSA algorithms"),
    ("rsa-key-size-with-default-algorithm", {"rsaKeySize": 3072}, "spec.rsaKeySize", "not to ES256"),
    ("rsa-key-size-with-eddsa", {"algorithm": "EdDSA", "rsaKeySize": 4096}, "spec.rsaKeySize", "not to EdDSA"),
    ("rsa-key-size-1024", {"algorithm": "RS256", "rsaKeySize": 1024}, "spec.rsaKeySize", "supported values"),
    ("rsa-key-size-as-string", {"algorithm": "RS256", "rsaKeySize": "2048"}, "spec.rsaKeySize", "integer"),
    ("interval-zero", {"rotation": {"interval": "0s"}}, "spec.rotation.interval", "must be a positive duration"),
    ("interval-negative", {"rotation": {"interval": "-5m"}}, "spec.rotation.interval", "must be a positive duration"),
    ("interval-in-days", {"rotation": {"interval": "30d"}}, "spec.rotation.interval", "should match"),
    ("interval-in-words", {"rotation": {"interval": "5 minutes"}}, "spec.rotation.interval", "should match"),
    ("interval-as-number", {"rotation": {"interval": 3600}}, "spec.rotation.interval", "must be of type"),
    ("interval-too-long", {"rotation": {"interval": "1" * 40 + "h"}}, "spec.rotation.interval", "Too long"),
    ("publish-ahead-zero", {"rotation": {"publishAhead": "0s"}}, "spec.rotation.publishAhead",
     "must be a positive duration"),
    ("publish-ahead-equal-to-interval", {"rotation": {"interval": "1h", "publishAhead": "1h"}},
     "spec.rotation.publishAhead", "must be shorter than rotation.interval"),
    ("publish-ahead-beyond-default-interval", {"rotation": {"publishAhead": "800h"}},
     "spec.rotation.publishAhead", "must be shorter than rotation.interval"),
    ("publish-ahead-below-default-max-age", {"rotation": {"publishAhead": "30s"}},
     "spec.rotation.publishAhead", "must be at least jwks.maxAge"),
    ("publish-ahead-below-max-age", {"rotation": {"publishAhead": "1h"}, "jwks": {"maxAge": "2h"}},
     "spec.rotation.publishAhead", "must be at least jwks.maxAge"),
    ("token-lifetime-zero", {"tokenLifetime": "0"}, "spec.tokenLifetime", "must be a positive duration"),
    ("token-lifetime-negative", {"tokenLifetime": "-1h"}, "spec.tokenLifetime", "must be a positive duration"),
    ("clock-skew-negative", {"clockSkew": "-1s"}, "spec.clockSkew", "must not be negative"),
    ("max-age-negative", {"jwks": {"maxAge": "-1s"}}, "spec.jwks.maxAge", "between 0s and 24h"),
    ("max-age-over-a-day", {"jwks": {"maxAge": "25h"}, "rotation": {"publishAhead": "26h"}},
     "spec.jwks.maxAge", "between 0s and 24h"),
    ("max-age-fraction-of-a-second", {"jwks": {"maxAge": "1500ms"}}, "spec.jwks.maxAge", "whole number of seconds"),
    ("signing-secret-name-uppercase", {"signingSecretName": "Api_Tokens"}, "spec.signingSecretName", "should match"),
    ("signing-secret-name-254-chars", {"signingSecretName": "a" * 254}, "spec.signingSecretName", "Too long"),
    ("jwks-configmap-name-empty", {"jwksConfigMapName": ""}, "spec.jwksConfigMapName", "at least 1 chars"),
    ("jwks-configmap-name-with-slash", {"jwksConfigMapName": "ns/jwks"}, "spec.jwksConfigMapName", "should match"),
    ("revocation-backend-unknown", {"revocation": {"backend": "Memcached"}}, "spec.revocation.backend", "supported values"),
    ("redis-backend-without-redis", {"revocation": {"backend": "Redis"}}, "spec.revocation.redis", "redis.url is required"),
    ("redis-url-with-password", {"revocation": {"backend": "Redis", "redis": {"url": "redis://:pw@redis:6379"}}},
     "spec.revocation.redis.url", "should match"),
    ("redis-url-not-redis", {"revocation": {"backend": "Redis", "redis": {"url": "http://redis:6379"}}},
     "spec.revocation.redis.url", "should match"),
    ("suspend-as-string", {"suspend": "yes"}, "spec.suspend", "must be of type boolean"),
    ("rotation-as-string", {"rotation": "720h"}, "spec.rotation", "must be of type object"),
    ("lifetime-class-longer-than-token-lifetime", {"tokenLifetimes": [{"name": "admin", "lifetime": "2h"}]},
     "spec.tokenLifetimes", "at most tokenLifetime"),
    ("lifetime-class-longer-than-a-shorter-token-lifetime",
     {"tokenLifetime": "15m", "tokenLifetimes": [{"name": "user", "lifetime": "1h"}]}, "spec.tokenLifetimes",
     "at most tokenLifetime"),
    ("nine-lifetime-classes", {"tokenLifetimes": [{"name": f"class-{n}", "lifetime": "1m"} for n in range(9)]},
     "spec.tokenLifetimes", "must have at most 8 items"),
    ("lifetime-class-named-twice",
     {"tokenLifetimes": [{"name": "admin", "lifetime": "10m"}, {"name": "admin", "lifetime": "50m"}]},
     "spec.tokenLifetimes[1]", "Duplicate value"),
    ("lifetime-class-name-uppercase", {"tokenLifetimes": [{"name": "Admin", "lifetime": "10m"}]},
     "spec.tokenLifetimes[0].name", "should match"),
    ("lifetime-class-name-64-chars", {"tokenLifetimes": [{"name": "a" * 64, "lifetime": "10m"}]},
     "spec.tokenLifetimes[0].name", "Too long"),
    ("lifetime-class-zero", {"tokenLifetimes": [{"name": "admin", "lifetime": "0s"}]},
     "spec.tokenLifetimes[0].lifetime", "positive duration"),
    ("lifetime-class-not-a-duration", {"tokenLifetimes": [{"name": "admin", "lifetime": "ten minutes"}]},
     "spec.tokenLifetimes[0].lifetime", "should match"),
    ("lifetime-class-without-lifetime", {"tokenLifetimes": [{"name": "admin"}]},
     "spec.tokenLifetimes[0].lifetime", "Required value"),
    ("lifetime-classes-as-a-map", {"tokenLifetimes": {"admin": "10m"}}, "spec.tokenLifetimes", "must be of type array"),
]


@pytest.mark.parametrize(("spec", "field", "fragment"), [pytest.param(*case[1:], id=case[0]) for case in BAD_SPECS])
def test_bad_spec_is_refused_naming_the_field(objects, namespace, spec, field, fragment):
    with pytest.raises(ApiException) as refused:
        _create(objects, namespace, "bad", spec)
    assert refused.value.status == 422, refused.value.body
    causes = _causes(refused.value)
    named = [cause for cause in causes if cause.get("field") == field]
    assert named, f"no cause names {field}: {causes}"
    assert any(fragment in cause.get("message", "") for cause in named), named
    assert field in json.loads(refused.value.body)["message"]
    assert objects.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"] == []


@pytest.mark.parametrize(("before", "after"), [("ES256", "HS256"), ("HS384", "RS256"), ("HS256", "EdDSA")])
def test_a_switch_between_hmac_and_public_key_algorithms_is_refused(objects, namespace, before, after):
    """Verifiers of an HMAC policy read its keys from the verification Secret, those of the others
    from the JWK Set: no rotation could carry tokens across, so the switch is refused."""
    _create(objects, namespace, "switch", {"algorithm": before})
    with pytest.raises(ApiException) as refused:
        objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "switch", {"spec": {"algorithm": after}})
    assert refused.value.status == 422
    (cause,) = [cause for cause in _causes(refused.value) if cause.get("field") == "spec.algorithm"]
    assert "cannot switch between an HMAC algorithm (HS*) and a public-key one" in cause["message"]
    assert objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "switch")["spec"]["algorithm"] == before


def test_a_switch_within_a_family_is_accepted(objects, namespace):
    _create(objects, namespace, "within", {"algorithm": "HS256"})
    patched = objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "within", {"spec": {"algorithm": "HS512"}})
    assert patched["spec"]["algorithm"] == "HS512"


def test_contradictions_are_refused_on_update_too(objects, namespace):
    _create(objects, namespace, "updated", {"rotation": {"interval": "2h", "publishAhead": "1h"}})
    with pytest.raises(ApiException) as refused:
        objects.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "updated", {"spec": {"rotation": {"interval": "30m"}}}
        )
    assert refused.value.status == 422
    assert "spec.rotation.publishAhead" in {cause.get("field") for cause in _causes(refused.value)}
    stored = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "updated")
    assert stored["spec"]["rotation"]["interval"] == "2h"


def test_policy_name_leaves_room_for_derived_names(objects, namespace):
    _create(objects, namespace, "n" * 40, {})
    with pytest.raises(ApiException) as refused:
        _create(objects, namespace, "n" * 41, {})
    assert refused.value.status == 422
    causes = _causes(refused.value)
    assert any(c.get("field") == "metadata.name" and "at most 40 characters" in c.get("message", "") for c in causes)


# --- status subresource, printer columns, kubectl ----------------------------------------------

STATUS = {
    "activeKid": "kid-active",
    "nextKid": "kid-next",
    "nextRotationTime": "2030-01-02T03:04:05Z",
    "observedGeneration": 1,
    "keys": [
        {"kid": "kid-active", "state": "active", "algorithm": "ES256", "created": "2029-12-01T00:00:00Z",
         "activated": "2029-12-01T01:00:00Z"},
        {"kid": "kid-next", "state": "next", "algorithm": "ES256", "created": "2030-01-02T02:04:05Z"},
        {"kid": "kid-old", "state": "retired", "algorithm": "ES256", "created": "2029-11-01T00:00:00Z",
         "activated": "2029-11-01T01:00:00Z", "retired": "2029-12-01T01:00:00Z",
         "removalDue": "2029-12-01T02:01:00Z"},
        {"kid": "kid-leaked", "state": "revoked", "algorithm": "ES256", "revoked": "2029-11-15T00:00:00Z",
         "reason": "leaked in a log"},
    ],
    "conditions": [
        {"type": "Ready", "status": "True", "reason": "KeysPublished", "message": "kid-active signs",
         "lastTransitionTime": "2029-12-01T01:00:00Z", "observedGeneration": 1},
        {"type": "JWKSServed", "status": "False", "reason": "NextKeyNotServed", "message": "kid-next not yet served",
         "lastTransitionTime": "2030-01-02T02:04:06Z", "observedGeneration": 1},
    ],
    "servedAt": [
        {"url": "https://jwks.example.test/.well-known/jwks.json", "kids": ["kid-old", "kid-active"], "etag": '"abc"',
         "observedAt": "2030-01-02T02:04:06Z",
         "revokedKid": {"kid": "kid-leaked", "revoked": "2029-11-15T00:00:00Z", "goneBy": "2029-11-15T00:00:41Z", "servedForSeconds": 41}},
        {"url": "http://jwks.jwks.svc/.well-known/jwks.json", "lastError": "answered HTTP 503 Service Unavailable",
         "observedAt": "2030-01-02T02:04:06Z"},
    ],
}


def test_status_is_written_only_through_the_status_subresource(objects, namespace):
    created = _create(objects, namespace, "stat", {})
    assert "status" not in created

    # The main endpoint ignores status...
    objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "stat", {"status": {"activeKid": "x"}})
    assert "status" not in objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "stat")

    # ...the status endpoint takes it, without bumping the generation...
    patched = objects.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "stat", {"status": STATUS})
    assert patched["status"] == STATUS
    assert patched["metadata"]["generation"] == created["metadata"]["generation"] == 1

    # ...and ignores spec.
    objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "stat", {"spec": {"algorithm": "RS256"}, "status": {"nextKid": "other"}}
    )
    stored = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "stat")
    assert stored["spec"]["algorithm"] == "ES256"
    assert stored["status"]["nextKid"] == "other"


@pytest.mark.parametrize(
    ("status", "field"),
    [
        pytest.param({"keys": [{"kid": "k", "state": "expired"}]}, "status.keys[0].state", id="unknown-key-state"),
        pytest.param({"nextRotationTime": "tomorrow"}, "status.nextRotationTime", id="time-not-rfc3339"),
        pytest.param({"conditions": [{"type": "Ready", "status": "Yes", "reason": "R", "message": "",
                                      "lastTransitionTime": "2030-01-01T00:00:00Z"}]},
                     "status.conditions[0].status", id="condition-status-not-true-false-unknown"),
        pytest.param({"conditions": [{"type": "Ready", "status": "True"}]},
                     "status.conditions[0].reason", id="condition-without-reason"),
    ],
)
def test_status_is_validated(objects, namespace, status, field):
    _create(objects, namespace, "stat", {})
    with pytest.raises(ApiException) as refused:
        objects.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "stat", {"status": status})
    assert refused.value.status == 422
    assert field in {cause.get("field") for cause in _causes(refused.value)}, refused.value.body


def test_status_has_no_room_for_unknown_fields(objects, namespace):
    _create(objects, namespace, "stat", {})
    patched = objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "stat", {"status": {"activeKid": "k", "kopf": {"progress": {}}}}
    )
    assert patched["status"] == {"activeKid": "k"}  # pruned, not stored


def test_crd_declares_the_printer_columns(crd, api_client):
    stored = client.ApiextensionsV1Api(api_client).read_custom_resource_definition(CRD_NAME)
    (version,) = stored.spec.versions
    columns = [(c.name, c.type, c.json_path) for c in version.additional_printer_columns]
    assert columns == [
        ("Algorithm", "string", ".spec.algorithm"),
        ("Active Kid", "string", ".status.activeKid"),
        # not "date": a date column prints a timestamp's age, and "<invalid>" for a future time
        ("Next Rotation", "string", ".status.nextRotationTime"),
        ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status'),
        ("Served", "string", '.status.conditions[?(@.type=="JWKSServed")].status'),
        ("Age", "date", ".metadata.creationTimestamp"),
    ]
    assert stored.spec.names.short_names == ["skp"]
    assert stored.spec.names.categories == ["signingkeys"]
    assert version.subresources.status is not None


def test_kubectl_shows_the_columns_and_waits_for_ready(objects, namespace, kubeconfig):
    _create(objects, namespace, "shown", {"algorithm": "RS384"})
    objects.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "shown", {"status": STATUS})

    listed = kubectl(kubeconfig, "get", "skp", "-n", namespace)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "ALGORITHM", "ACTIVE", "KID", "NEXT", "ROTATION", "READY", "SERVED", "AGE"]
    assert row.split()[:4] == ["shown", "RS384", "kid-active", "2030-01-02T03:04:05Z"]  # the time, not "<invalid>"
    assert row.split()[4:6] == ["True", "False"]

    by_category = kubectl(kubeconfig, "get", "signingkeys", "-n", namespace, "-o", "name")
    assert by_category.stdout.split() == [f"signingkeypolicy.{GROUP}/shown"], by_category.stderr

    waited = kubectl(kubeconfig, "wait", "--for=condition=Ready", "skp/shown", "-n", namespace, "--timeout=10s")
    assert waited.returncode == 0, waited.stderr


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param("rotation:\n    interval: 10m\n    publishAhead: 10m\n",
                     ["spec.rotation.publishAhead", "must be shorter than rotation.interval"], id="cel-rule"),
        pytest.param("algorithm: ES256\n  rsaKeySize: 2048\n",
                     ["spec.rsaKeySize", "applies only to the RSA algorithms"], id="rsa-size-on-ec"),
        pytest.param("rotation:\n    intervall: 10m\n", ['unknown field "spec.rotation.intervall"'], id="typo-in-field-name"),
    ],
)
def test_kubectl_apply_of_a_bad_policy_fails_naming_the_field(crd, namespace, kubeconfig, tmp_path, spec, expected):
    manifest = tmp_path / "policy.yaml"
    manifest.write_text(
        f"apiVersion: {GROUP}/{VERSION}\nkind: SigningKeyPolicy\nmetadata:\n  name: api-tokens\nspec:\n  {spec}",
        encoding="utf-8",
    )
    applied = kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(manifest))
    assert applied.returncode != 0, applied.stdout
    for text in expected:
        assert text in applied.stderr, applied.stderr
    missing = kubectl(kubeconfig, "get", "skp", "api-tokens", "-n", namespace)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def test_kubectl_apply_of_the_documented_example_succeeds(crd, namespace, kubeconfig):
    example = """
apiVersion: signingkeys.dev/v1alpha1
kind: SigningKeyPolicy
metadata:
  name: api-tokens
spec:
  algorithm: ES256
  rotation:
    interval: 720h
    publishAhead: 1h
  tokenLifetime: 1h
  clockSkew: 1m
  jwks:
    maxAge: 60s
  signingSecretName: api-tokens-signing
  jwksConfigMapName: api-tokens-jwks
  suspend: false
"""
    applied = kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=example)
    assert applied.returncode == 0, applied.stderr
    assert "signingkeypolicy.signingkeys.dev/api-tokens created" in applied.stdout


