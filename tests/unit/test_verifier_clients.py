"""The client table: one source for the default timeline, the ShortTimeline warning and the docs.

README.md and docs/design.md carry core.verifier_clients.markdown_table() between their
client-table markers; SKO_UPDATE_README=1 rewrites both sections instead of failing (the
convention of tests/conformance/test_algorithm_matrix.py). The CRD's static defaults are the
values spec.py derives from the table, since the API server fills them in before the operator
sees a policy.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from signing_key_operator.core.durations import parse_duration
from signing_key_operator.core.spec import DEFAULT_CLOCK_SKEW, DEFAULT_MINIMUM_PUBLISH_AHEAD
from signing_key_operator.core.verifier_clients import VERIFIER_CLIENTS, markdown_table
from tests.conformance.clients import CLIENTS

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "signingkeypolicies.yaml"
README = REPO / "README.md"
DESIGN = REPO / "docs" / "design.md"
START, END = "<!-- client-table:start -->", "<!-- client-table:end -->"
README_HEADING = "## Verifier caches"


def _client(name: str):
    (client,) = [client for client in VERIFIER_CLIENTS if client.name == name]
    return client


def _section(text: str) -> tuple[int, int] | None:
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        return None
    return start + len(START), end


@pytest.mark.parametrize("document", [README, DESIGN], ids=lambda path: path.name)
def test_the_document_carries_the_generated_table(document):
    generated = markdown_table()
    text = document.read_text()
    span = _section(text)
    if os.environ.get("SKO_UPDATE_README") == "1":
        if span is None and document == README:
            text = text.rstrip("\n") + f"\n\n{README_HEADING}\n\n{START}\n{END}\n"
            span = _section(text)
        assert span is not None, f"{document.name} has no {START} ... {END} section: put the markers where it belongs"
        document.write_text(text[: span[0]] + "\n" + generated + text[span[1]:])
        return
    assert span is not None, f"{document.name} has no {START} ... {END} section"
    assert text[span[0]: span[1]].strip("\n") == generated.strip("\n"), (
        f"{document.name}'s client table differs from core/verifier_clients.py's; "
        "rerun with SKO_UPDATE_README=1 to rewrite it"
    )


def _crd_spec_properties() -> dict:
    crd = yaml.safe_load(CRD_FILE.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]


def test_the_crds_default_publish_ahead_is_the_one_the_table_gives():
    publish_ahead = _crd_spec_properties()["rotation"]["properties"]["publishAhead"]["default"]
    assert parse_duration(publish_ahead) == DEFAULT_MINIMUM_PUBLISH_AHEAD


def test_the_crds_default_clock_skew_is_the_longest_exp_leeway():
    assert parse_duration(_crd_spec_properties()["clockSkew"]["default"]) == DEFAULT_CLOCK_SKEW


def test_the_default_publish_ahead_is_go_keyfuncs_hour():
    assert DEFAULT_MINIMUM_PUBLISH_AHEAD == timedelta(hours=1)
    (longest,) = [c for c in VERIFIER_CLIENTS if c.minimum_publish_ahead == DEFAULT_MINIMUM_PUBLISH_AHEAD]
    assert longest.name == "Go keyfunc"


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
