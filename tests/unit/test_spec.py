from dataclasses import replace
from datetime import timedelta

import pytest

from signing_key_operator.core.spec import (
    DEFAULT_SECRET_PROPAGATION,
    PolicySpec,
    SpecError,
    SpecWarning,
    timeline_warnings,
)
from signing_key_operator.core.verifier_clients import VERIFIER_CLIENTS


def test_defaults():
    spec = PolicySpec.from_resource("billing", {})
    assert spec == PolicySpec(
        name="billing",
        algorithm="ES256",
        rsa_key_size=3072,
        rotation_interval=timedelta(hours=720),
        publish_ahead=timedelta(hours=1),
        token_lifetime=timedelta(hours=1),
        clock_skew=timedelta(minutes=1),
        jwks_max_age=timedelta(seconds=60),
        signing_secret_name="billing-signing",
        jwks_config_map_name="billing-jwks",
        suspend=False,
        secret_propagation=timedelta(minutes=2),
    )
    assert PolicySpec.from_resource("billing", None) == spec


def test_default_publish_ahead_covers_every_common_client_cache():
    spec = PolicySpec.from_resource("billing", {})
    assert all(spec.publish_ahead >= client.minimum_publish_ahead for client in VERIFIER_CLIENTS)
    assert timeline_warnings(spec) == ()


def test_default_publish_ahead_follows_a_long_max_age():
    spec = PolicySpec.from_resource("billing", {"jwks": {"maxAge": "2h"}})
    assert spec.publish_ahead == timedelta(hours=2)


def test_full_spec_is_parsed_from_camel_case():
    spec = PolicySpec.from_resource(
        "billing",
        {
            "algorithm": "PS384",
            "rsaKeySize": 4096,
            "rotation": {"interval": "168h", "publishAhead": "2h30m"},
            "tokenLifetime": "15m",
            "clockSkew": "30s",
            "jwks": {"maxAge": "5m"},
            "signingSecretName": "billing-signer",
            "jwksConfigMapName": "billing-public-keys",
            "suspend": True,
            "unknownFieldsArePrunedByTheApiServer": 1,
        },
        secret_propagation=timedelta(minutes=3),
    )
    assert (spec.algorithm, spec.rsa_key_size, spec.suspend) == ("PS384", 4096, True)
    assert spec.rotation_interval == timedelta(days=7)
    assert spec.publish_ahead == timedelta(hours=2, minutes=30)
    assert spec.token_lifetime == timedelta(minutes=15)
    assert spec.clock_skew == timedelta(seconds=30)
    assert spec.jwks_max_age == timedelta(minutes=5)
    assert (spec.signing_secret_name, spec.jwks_config_map_name) == ("billing-signer", "billing-public-keys")
    assert spec.retention == timedelta(minutes=15) + timedelta(seconds=30) + timedelta(minutes=3)


def test_lifetime_classes_are_parsed_in_name_order_and_leave_retention_to_token_lifetime():
    spec = PolicySpec.from_resource("billing", {"tokenLifetime": "2h", "tokenLifetimes": [
        {"name": "service", "lifetime": "2h"}, {"name": "admin", "lifetime": "10m"}]})
    assert spec.token_lifetime_classes == (("admin", timedelta(minutes=10)), ("service", timedelta(hours=2)))
    assert spec.retention == PolicySpec.from_resource("billing", {"tokenLifetime": "2h"}).retention
    assert PolicySpec.from_resource("billing", {}).token_lifetime_classes == ()


def test_retention_is_derived():
    spec = PolicySpec.from_resource("billing", {"tokenLifetime": "2h", "clockSkew": "5m"})
    assert spec.retention == timedelta(hours=2, minutes=5) + DEFAULT_SECRET_PROPAGATION


def test_rsa_key_size_is_accepted_and_ignored_for_other_algorithms():
    assert PolicySpec.from_resource("billing", {"algorithm": "EdDSA", "rsaKeySize": 2048}).algorithm == "EdDSA"


@pytest.mark.parametrize(
    ("spec", "field_path", "fragment"),
    [
        ({"algorithm": "HS1"}, "spec.algorithm", "must be one of RS256"),
        ({"algorithm": "HS384", "hmacKeySize": 256}, "spec.hmacKeySize", "from 384 to 1024 for HS384 (got 256)"),
        ({"algorithm": "HS256", "hmacKeySize": 1024}, "spec.hmacKeySize", "from 256 to 512 for HS256"),
        ({"algorithm": "HS256", "hmacKeySize": 300}, "spec.hmacKeySize", "must be a multiple of 8"),
        ({"algorithm": "HS256", "hmacKeySize": "256"}, "spec.hmacKeySize", "must be an integer"),
        ({"algorithm": "ES256", "hmacKeySize": 256}, "spec.hmacKeySize", "only to the HMAC algorithms"),
        ({"algorithm": "RS256", "verificationSecretName": "x"}, "spec.verificationSecretName", "only to the HMAC algorithms"),
        ({"algorithm": "HS256", "jwksConfigMapName": "api-jwks"}, "spec.jwksConfigMapName", "an HMAC policy publishes none"),
        ({"algorithm": "HS256", "jwks": {"servedAt": ["http://jwks.test/"]}}, "spec.jwks.servedAt", "an HMAC policy publishes none"),
        ({"algorithm": "HS256", "jwks": {"caBundleRef": {"configMapName": "ca"}}}, "spec.jwks.caBundleRef", "publishes none"),
        ({"algorithm": "HS256", "jwks": {"maxAge": "2m"}, "rotation": {"publishAhead": "1h"}}, "spec.jwks.maxAge", "publishes none"),
        ({"algorithm": 256}, "spec.algorithm", "must be a string"),
        ({"rsaKeySize": 1024}, "spec.rsaKeySize", "must be one of 2048, 3072, 4096"),
        ({"rsaKeySize": "3072"}, "spec.rsaKeySize", "must be an integer"),
        ({"rsaKeySize": True}, "spec.rsaKeySize", "must be an integer"),
        ({"rotation": "720h"}, "spec.rotation", "must be an object"),
        ({"jwks": ["60s"]}, "spec.jwks", "must be an object"),
        ({"rotation": {"interval": "30d"}}, "spec.rotation.interval", "unknown unit 'd'"),
        ({"rotation": {"interval": 3600}}, "spec.rotation.interval", "expected a string"),
        ({"rotation": {"interval": "0s"}}, "spec.rotation.interval", "must be positive"),
        ({"rotation": {"publishAhead": "-1h"}}, "spec.rotation.publishAhead", "must be positive"),
        (
            {"rotation": {"interval": "1h", "publishAhead": "1h"}},
            "spec.rotation.publishAhead",
            "must be below spec.rotation.interval (1h >= 1h)",
        ),
        (
            {"rotation": {"publishAhead": "2m"}, "jwks": {"maxAge": "5m"}},
            "spec.rotation.publishAhead",
            "must not be below spec.jwks.maxAge (2m < 5m)",
        ),
        ({"jwks": {"maxAge": "-1s"}}, "spec.jwks.maxAge", "must not be negative"),
        ({"tokenLifetime": "0s"}, "spec.tokenLifetime", "must be positive"),
        ({"tokenLifetime": "an hour"}, "spec.tokenLifetime", "invalid duration 'an hour'"),
        ({"clockSkew": "-5s"}, "spec.clockSkew", "must not be negative"),
        ({"suspend": "yes"}, "spec.suspend", "must be true or false"),
        ({"signingSecretName": "Not_Valid"}, "spec.signingSecretName", "not a valid object name"),
        ({"signingSecretName": 7}, "spec.signingSecretName", "must be a string"),
        ({"jwksConfigMapName": "x" * 254}, "spec.jwksConfigMapName", "at most 253"),
        ({"signingSecretName": "billing-key-3"}, "spec.signingSecretName", "collides"),
        ({"tokenLifetimes": {"admin": "10m"}}, "spec.tokenLifetimes", "must be a list of {name, lifetime}"),
        ({"tokenLifetimes": ["admin"]}, "spec.tokenLifetimes[0]", "must be an object"),
        ({"tokenLifetimes": [{"lifetime": "10m"}]}, "spec.tokenLifetimes[0].name", "is required"),
        ({"tokenLifetimes": [{"name": "admin", "lifetime": "ten"}]}, "spec.tokenLifetimes[0].lifetime", "invalid duration"),
        ({"tokenLifetimes": [{"name": "admin"}]}, "spec.tokenLifetimes", "the lifetime must be positive"),
        ({"tokenLifetimes": [{"name": "Admin", "lifetime": "10m"}]}, "spec.tokenLifetimes", "DNS labels"),
        ({"tokenLifetimes": [{"name": "admin", "lifetime": "2h"}]}, "spec.tokenLifetimes",
         "class admin must not outlive spec.tokenLifetime (2h > 1h)"),
        ({"tokenLifetimes": [{"name": "a", "lifetime": "1m"}, {"name": "a", "lifetime": "2m"}]}, "spec.tokenLifetimes",
         "names a class twice"),
        ({"tokenLifetimes": [{"name": f"c{n}", "lifetime": "1m"} for n in range(9)]}, "spec.tokenLifetimes",
         "at most 8 classes"),
    ],
)
def test_invalid_specs_name_the_field(spec, field_path, fragment):
    with pytest.raises(SpecError) as error:
        PolicySpec.from_resource("billing", spec)
    assert error.value.field_path == field_path
    assert str(error.value).startswith(f"{field_path}: ")
    assert fragment in error.value.message


def test_publish_ahead_error_reads_like_the_design():
    with pytest.raises(SpecError) as error:
        PolicySpec.from_resource("billing", {"rotation": {"interval": "24h", "publishAhead": "48h"}})
    assert str(error.value) == (
        "spec.rotation.publishAhead: must be below spec.rotation.interval (48h >= 24h)"
    )


def test_replace_validates_too():
    spec = PolicySpec.from_resource("billing", {})
    with pytest.raises(SpecError, match="spec.rotation.publishAhead"):
        replace(spec, publish_ahead=spec.rotation_interval)
    with pytest.raises(SpecError, match="secretPropagation"):
        replace(spec, secret_propagation=timedelta(seconds=-1))


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)


def test_publish_ahead_below_one_hour_warns_about_go_keyfunc():
    spec = PolicySpec.from_resource("billing", {"rotation": {"publishAhead": "30m"}})
    (warning,) = timeline_warnings(spec)
    assert isinstance(warning, SpecWarning)
    assert warning.field_path == "spec.rotation.publishAhead"
    assert "Go keyfunc" in warning.message
    assert "PyJWT" not in warning.message and "Nimbus" not in warning.message
    assert str(warning).startswith("spec.rotation.publishAhead: 30m is shorter than")


def test_publish_ahead_of_four_minutes_warns_about_every_library_and_gateway_that_caches():
    """Seven clients, grouped by how long they need, longest first; oauth2-proxy (which
    refetches on every failed verification) is not among them."""
    spec = PolicySpec.from_resource("billing", {"rotation": {"publishAhead": "4m"}})
    (warning,) = timeline_warnings(spec)
    assert str(warning) == (
        "spec.rotation.publishAhead: 4m is shorter than the JWKS cache of Go keyfunc (1h); "
        "istiod (20m); Node jose createRemoteJWKSet and Envoy jwt_authn (10m); PyJWT PyJWKClient, "
        "Nimbus JWKSourceBuilder and Spring NimbusJwtDecoder.withJwkSetUri (5m). With default "
        "settings these verifiers may reject tokens signed by a new key (kid not found) until "
        "they refresh."
    )
    assert "oauth2-proxy" not in warning.message


def test_publish_ahead_equal_to_a_cache_time_does_not_warn_about_that_client():
    spec = PolicySpec.from_resource("billing", {"rotation": {"publishAhead": "10m"}})
    (warning,) = timeline_warnings(spec)
    assert "Go keyfunc" in warning.message and "istiod" in warning.message
    assert "jose" not in warning.message and "Envoy" not in warning.message


def test_the_warning_names_the_gateways_too():
    spec = PolicySpec.from_resource("billing", {"rotation": {"publishAhead": "6m"}})
    (warning,) = timeline_warnings(spec)
    assert "Envoy jwt_authn (10m)" in warning.message and "istiod (20m)" in warning.message
    assert "PyJWT" not in warning.message


@pytest.mark.parametrize(("algorithm", "bits"), [("HS256", 256), ("HS384", 384), ("HS512", 512)])
def test_an_hmac_policy_defaults_to_the_hash_size_and_names_its_verification_secret(algorithm, bits):
    spec = PolicySpec.from_resource("api", {"algorithm": algorithm})
    assert (spec.is_shared_secret, spec.hmac_key_size, spec.key_size) == (True, bits, bits)
    assert spec.verification_secret_name == spec.published_set_name == "api-verification"
    named = PolicySpec.from_resource("api", {"algorithm": algorithm, "verificationSecretName": "keys", "hmacKeySize": 512})
    assert (named.published_set_name, named.hmac_key_size) == ("keys", 512)


def test_a_public_key_policy_has_no_hmac_settings():
    spec = PolicySpec.from_resource("api", {"algorithm": "RS256"})
    assert (spec.is_shared_secret, spec.hmac_key_size, spec.verification_secret_name) == (False, None, "")
    assert (spec.published_set_name, spec.key_size) == ("api-jwks", 3072)
    assert PolicySpec.from_resource("api", {}).key_size is None  # ES256: the curve decides


def test_a_switch_between_hmac_and_public_key_algorithms_cannot_be_built_either():
    with pytest.raises(SpecError, match="spec.hmacKeySize: applies only to the HMAC algorithms"):
        replace(PolicySpec.from_resource("api", {"algorithm": "HS256"}), algorithm="ES256")


def test_an_hmac_policy_warns_when_publish_ahead_is_below_the_secret_propagation():
    short = PolicySpec.from_resource("api", {"algorithm": "HS256", "rotation": {"interval": "1h", "publishAhead": "90s"}})
    (warning,) = timeline_warnings(short)
    assert warning.field_path == "spec.rotation.publishAhead"
    assert "shorter than the time a changed Secret takes to reach the pods that mount it (2m" in str(warning)
    long_enough = PolicySpec.from_resource("api", {"algorithm": "HS256", "rotation": {"interval": "1h", "publishAhead": "2m"}})
    assert timeline_warnings(long_enough) == ()
