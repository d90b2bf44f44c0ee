"""The client table's rules: what a client's figures mean for a policy's timeline."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from signing_key_operator.core.verifier_clients import VERIFIER_CLIENTS, markdown_table
from tests.conformance.clients import CLIENTS


def _client(name: str):
    (client,) = [client for client in VERIFIER_CLIENTS if client.name == name]
    return client


def test_a_client_whose_set_expires_needs_its_cache_time_whatever_its_refetch():
    """Spring refetches on every unknown kid without a cooldown, yet its minimum is its cache
    time like every client whose set expires by itself; Envoy never refetches."""
    assert _client("Spring NimbusJwtDecoder.withJwkSetUri").minimum_publish_ahead == timedelta(minutes=5)
    assert _client("Envoy jwt_authn").minimum_publish_ahead == timedelta(minutes=10)
    assert _client("istiod").minimum_publish_ahead == timedelta(minutes=20)


def test_a_set_that_never_expires_with_an_unconditional_refetch_needs_no_publish_ahead():
    oauth2_proxy = _client("oauth2-proxy")
    assert oauth2_proxy.default_cache is None and oauth2_proxy.unknown_kid_cooldown is None
    assert oauth2_proxy.minimum_publish_ahead == timedelta(0)


def test_a_client_that_could_never_learn_a_key_is_refused():
    oauth2_proxy = _client("oauth2-proxy")
    with pytest.raises(ValueError, match="never expires"):
        dataclasses.replace(oauth2_proxy, unknown_kid_cooldown=timedelta(seconds=30))
    with pytest.raises(ValueError, match="never expires"):
        dataclasses.replace(oauth2_proxy, refetch_on_unknown_kid=False)
    with pytest.raises(ValueError, match="cooldown without"):
        dataclasses.replace(_client("Envoy jwt_authn"), unknown_kid_cooldown=timedelta(seconds=30))


def test_minimum_retention_is_the_token_lifetime_plus_the_exp_leeway():
    assert _client("Envoy jwt_authn").minimum_retention(timedelta(hours=1)) == timedelta(hours=1, minutes=1)
    assert _client("oauth2-proxy").minimum_retention(timedelta(hours=1)) == timedelta(hours=1)


def test_every_client_the_conformance_suite_runs_has_a_row():
    named = {name for client in VERIFIER_CLIENTS for name in client.conformance}
    assert {client.name for client in CLIENTS} <= named


def test_every_row_names_its_source_and_the_table_shows_each_figure():
    table = markdown_table()
    for client in VERIFIER_CLIENTS:
        assert client.source.startswith("https://") and client.source in table
        assert f"| {client.name} ({client.version}) | {client.kind} |" in table
    assert "| 2 per 30s (`rateLimited(minTimeInterval)`) |" in table  # Nimbus lets two through
    assert "| never expires |" in table and "| documented, not run |" in table
