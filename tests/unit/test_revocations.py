"""core/revocations.py: parsing TokenRevocations, compiling them (property tests with an
injected clock), the served document's canonical form and its refusals."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signing_key_operator.core.revocations import (
    InvalidRevocationDocument,
    RedisLayout,
    Revocation,
    RevocationDocument,
    RevocationError,
    SubjectEntry,
    compile_revocations,
    parse_revocation,
    parse_revocation_document,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
LIFETIME, SKEW = timedelta(hours=1), timedelta(minutes=1)


def compile_at(revocations, now=NOW, backend="ConfigMap"):
    return compile_revocations(revocations, token_lifetime=LIFETIME, clock_skew=SKEW, now=now, backend=backend)


@pytest.mark.parametrize("spec, field", [
    ({"jti": "a", "expiresAt": "2026-11-23T12:00:00Z"}, "spec.policyName"),
    ({"policyName": "p"}, "spec"),
    ({"policyName": "p", "jti": "a", "subject": "b"}, "spec"),
    ({"policyName": "p", "jti": "a"}, "spec.expiresAt"),
    ({"policyName": "p", "jti": "a b", "expiresAt": "2026-11-23T12:00:00Z"}, "spec.jti"),
    ({"policyName": "p", "jti": "x" * 257, "expiresAt": "2026-11-23T12:00:00Z"}, "spec.jti"),
    ({"policyName": "p", "jti": "a", "expiresAt": "soon"}, "spec.expiresAt"),
    ({"policyName": "p", "subject": "alice"}, "spec.issuedBefore"),
    ({"policyName": "p", "subject": "", "issuedBefore": "2026-11-23T12:00:00Z"}, "spec.subject"),
])
def test_parse_refuses_incomplete_or_contradictory_specs_naming_the_field(spec, field):
    with pytest.raises(RevocationError) as refused:
        parse_revocation("r", spec)
    assert refused.value.field_path == field


def test_entries_end_when_no_verifier_accepts_the_token_any_more():
    by_jti = parse_revocation("a", {"policyName": "p", "jti": "j", "expiresAt": "2026-11-23T12:30:00Z"})
    by_subject = parse_revocation("b", {"policyName": "p", "subject": "alice", "issuedBefore": "2026-11-23T11:00:00Z"})
    assert by_jti.until(LIFETIME, SKEW) == datetime(2026, 11, 23, 12, 31, tzinfo=timezone.utc)
    assert by_subject.until(LIFETIME, SKEW) == datetime(2026, 11, 23, 12, 1, tzinfo=timezone.utc)


def test_compile_merges_a_subject_into_its_widest_entry_and_prunes_ended_ones():
    revocations = [
        Revocation("a", "p", subject="alice", issued_before=NOW - timedelta(minutes=30)),
        Revocation("b", "p", subject="alice", issued_before=NOW - timedelta(minutes=10)),
        Revocation("c", "p", jti="j1", expires_at=NOW + timedelta(minutes=5)),
        Revocation("d", "p", jti="gone", expires_at=NOW - timedelta(minutes=2)),
    ]
    compiled = compile_at(revocations)
    assert [r.name for r, _ in compiled.expired] == ["d"]
    later = int((NOW - timedelta(minutes=10)).timestamp())
    assert compiled.document.sub == {"alice": SubjectEntry(later, later + 3660)}
    assert dict(compiled.document.jti) == {"j1": int((NOW + timedelta(minutes=6)).timestamp())}
    assert compiled.next_expiry == NOW + timedelta(minutes=6)  # j1: its exp + clockSkew comes first


def test_the_redis_backend_publishes_a_document_without_entries():
    compiled = compile_at([Revocation("c", "p", jti="j1", expires_at=NOW + timedelta(minutes=5))], backend="Redis")
    assert compiled.document.render() == b'{"backend":"redis","jti":{},"sub":{}}\n'
    assert list(compiled.entries.jti) == ["j1"]


revocation_strategy = st.one_of(
    st.builds(lambda n, j, m: Revocation(f"r{n}", "p", jti=f"j{j}", expires_at=NOW + timedelta(seconds=m)),
              st.integers(0, 50), st.integers(0, 5), st.integers(-7200, 7200)),
    st.builds(lambda n, s, m: Revocation(f"s{n}", "p", subject=f"user{s}", issued_before=NOW + timedelta(seconds=m)),
              st.integers(0, 50), st.integers(0, 5), st.integers(-7200, 600)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(revocation_strategy, max_size=20, unique_by=lambda r: r.name), st.integers(0, 3 * 3600))
def test_compiled_document_refuses_exactly_the_tokens_a_revocation_in_force_covers(revocations, seconds_later):
    now = NOW + timedelta(seconds=seconds_later)
    compiled = compile_at(revocations, now)
    document = parse_revocation_document(compiled.document.render())
    assert document == compiled.document  # what is served parses back to what was compiled
    for revocation in revocations:
        in_force = revocation.until(LIFETIME, SKEW) > now
        if revocation.jti is not None:
            verdict = document.revokes({"jti": revocation.jti, "sub": "someone"})
            assert (verdict is not None) == (in_force or any(
                r.jti == revocation.jti and r.until(LIFETIME, SKEW) > now for r in revocations))
        else:
            older = int(revocation.issued_before.timestamp()) - 1
            verdict = document.revokes({"sub": revocation.subject, "iat": older})
            if in_force:
                assert verdict is not None
    # Nothing is revoked that no revocation in force names.
    assert document.revokes({"jti": "unrelated", "sub": "nobody", "iat": 0}) is None
    # The wake-up is the first end still to come.
    ends = [r.until(LIFETIME, SKEW) for r in revocations if r.until(LIFETIME, SKEW) > now]
    assert compiled.next_expiry == (min(ends) if ends else None)


def test_a_subjects_newer_tokens_stay_valid_and_tokens_without_iat_are_refused():
    document = RevocationDocument(sub={"alice": SubjectEntry(1000, 5000)})
    assert document.revokes({"sub": "alice", "iat": 999})
    assert document.revokes({"sub": "alice", "iat": 1000}) is None
    assert document.revokes({"sub": "alice"})
    assert document.revokes({"sub": "alice", "iat": True})


@pytest.mark.parametrize("content, reason", [
    (b"not json", "not_json"),
    (b"[]", "not_an_object"),
    (b'{"backend":"configmap","jti":{}}', "missing_members"),
    (b'{"backend":"memcached","jti":{},"sub":{}}', "bad_backend"),
    (b'{"backend":"configmap","jti":{"a b":1},"sub":{}}', "bad_entry"),
    (b'{"backend":"configmap","jti":{"a":"1"},"sub":{}}', "bad_entry"),
    (b'{"backend":"configmap","jti":{},"sub":{"x":{"until":1}}}', "bad_entry"),
    (b'{"backend":"configmap","jti":{"a":1,"a":2},"sub":{}}', "not_json"),
    (b'{"backend":"configmap","jti":{},"sub":{}, "x":NaN}', "not_json"),
    (b"[" * 100_000 + b"]" * 100_000, "not_json"),  # too deep for the parser: refused, not a crash
    (b'{"backend":"redis","jti":{"a":1},"sub":{}}', "bad_backend"),
    (b'{"backend":"configmap","jti":{},"sub":{},"keys":[]}', "unknown_members"),
    (b'{"backend":"configmap","jti":{},"sub":{}}' + b" " * (1024 * 1024), "too_large"),
])
def test_content_the_operator_could_not_have_written_is_refused(content, reason):
    with pytest.raises(InvalidRevocationDocument) as refused:
        parse_revocation_document(content)
    assert refused.value.reason == reason


_EMPTY = '{"backend":"configmap","jti":{},"sub":{}}'


@pytest.mark.parametrize("content, reason", [
    (b'{"backend":"configmap","jti":{},"sub":{},"d":"c2VjcmV0"}', "unknown_members"),
    (b'{"backend":"configmap","jti":{"j":{"d":"c2VjcmV0"}},"sub":{}}', "bad_entry"),
    (b'{"backend":"configmap","jti":{},"sub":{"s":{"issuedBefore":1,"until":2,"d":"c2VjcmV0"}}}', "bad_entry"),
    (b'{"backend":"configmap","jti":{"j\\n":1},"sub":{}}', "bad_entry"),
    (_EMPTY.encode("utf-16"), "not_utf8"),
    (_EMPTY.encode("utf-32"), "not_utf8"),
    (b"\xef\xbb\xbf" + _EMPTY.encode(), "not_json"),
], ids=["top-level member", "object as a jti entry", "extra member in a subject entry", "jti ending in a newline",
        "UTF-16", "UTF-32", "byte order mark"])
def test_only_what_the_operator_writes_is_served_as_a_revocation_document(content, reason):
    """finding 4, the revocation document: it is served byte for byte, so nothing passes that the
    operator could not have written. Every member was already on an allow-list (the first three
    cases held before); a jti ending in a newline (the pattern's "$") and UTF-16/UTF-32 bodies
    (json.loads detects them) passed."""
    with pytest.raises(InvalidRevocationDocument) as refused:
        parse_revocation_document(content)
    assert refused.value.reason == reason
    assert "c2VjcmV0" not in str(refused.value)


def test_the_document_is_canonical():
    document = RevocationDocument(jti={"b": 2, "a": 1}, sub={"z": SubjectEntry(1, 2)})
    body = document.render()
    assert body == b'{"backend":"configmap","jti":{"a":1,"b":2},"sub":{"z":{"issuedBefore":1,"until":2}}}\n'
    assert json.loads(body)


def test_redis_layout_names_one_key_per_entry_under_the_policy_prefix():
    layout = RedisLayout.for_policy("auth", "api")
    assert layout.jti_key("j") == "signingkeys:auth/api:jti:j"
    assert layout.subject_key("alice") == "signingkeys:auth/api:sub:alice"
    assert RedisLayout.for_policy("auth", "api", "custom:").digest_key == "custom:digest"
    assert layout.revokes({"jti": "j"}, "123", None)
    assert layout.revokes({"sub": "alice", "iat": 5}, None, "10")
    assert layout.revokes({"sub": "alice", "iat": 10}, None, "10") is None


def test_a_full_document_keeps_the_oldest_entries_that_fit_and_names_the_rest():
    revocations = [
        Revocation(f"r{n}", "p", jti=f"jti-{n:03d}", expires_at=NOW + timedelta(minutes=5), created=NOW - timedelta(seconds=100 - n))
        for n in range(50)
    ]
    whole = compile_at(revocations)
    limit = len(whole.document.render()) // 2
    half = compile_revocations(revocations, token_lifetime=LIFETIME, clock_skew=SKEW, now=NOW, max_document_bytes=limit)
    kept = sorted(half.document.jti)
    assert len(half.document.render()) <= limit
    assert kept == [f"jti-{n:03d}" for n in range(len(kept))]  # the oldest
    assert [r.jti for r in half.left_out] == [f"jti-{n:03d}" for n in range(len(kept), 50)]
    # One more entry would not have fitted: the document is as full as it can be.
    one_more = RevocationDocument(jti={**half.document.jti, half.left_out[0].jti: 1795000000})
    assert len(one_more.render()) > limit
    assert half.entries == whole.entries  # Redis would get them all
