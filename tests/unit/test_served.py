"""Judging a served JWK Set against what the policy publishes (core/served.py): pure, clock passed in."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from signing_key_operator.core.served import (
    ACTIVE_KEY_NOT_SERVED, INVALID_DOCUMENT, NEXT_KEY_NOT_SERVED, REMOVED_KEY_STILL_SERVED, REVOKED_KEY_STILL_SERVED,
    SERVED, UNREACHABLE, Observation, PublishedView, judge_url, served_condition, served_everywhere,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
GRACE = timedelta(minutes=3)
URL = "https://jwks.example.test/.well-known/jwks.json"
VIEW = PublishedView(published=("old", "signing", "next"), active="signing", active_since=NOW - timedelta(days=1),
                     next_kid="next", next_since=NOW - timedelta(seconds=30), revoked={"leaked": NOW - timedelta(minutes=1)})


def seen(*kids: str) -> Observation:
    return Observation(URL, NOW, kids=kids, etag='"x"')


def test_the_published_set_is_served():
    verdict = judge_url(seen("old", "signing", "next"), VIEW, {}, GRACE, NOW)
    assert (verdict.reason, verdict.in_sync, verdict.alarming) == (SERVED, True, ())
    assert served_condition([verdict])[:2] == ("True", SERVED)


def test_a_missing_next_key_only_holds_rotation_back():
    verdict = judge_url(seen("old", "signing"), VIEW, {}, GRACE, NOW)
    assert (verdict.reason, verdict.in_sync, verdict.alarming) == (NEXT_KEY_NOT_SERVED, False, ())
    assert "next key next" in verdict.message


def test_a_revoked_kid_is_news_within_the_grace_and_an_alarm_after_it():
    within = judge_url(seen("old", "signing", "next", "leaked"), VIEW, {}, GRACE, NOW)
    assert within.reason == REVOKED_KEY_STILL_SERVED and within.alarming == ()
    later = NOW + GRACE
    after = judge_url(seen("old", "signing", "next", "leaked"), VIEW, {}, GRACE, later)
    assert after.alarming == ((REVOKED_KEY_STILL_SERVED, "leaked"),) and "past the 3m" in after.message


def test_a_removed_kid_counts_from_when_it_left():
    left = {"gone": NOW - GRACE - timedelta(seconds=1)}
    verdict = judge_url(seen("old", "signing", "next", "gone"), VIEW, left, GRACE, NOW)
    assert verdict.reason == REMOVED_KEY_STILL_SERVED and verdict.alarming == ((REMOVED_KEY_STILL_SERVED, "gone"),)


def test_the_worst_problem_names_the_reason():
    verdict = judge_url(seen("old", "leaked"), VIEW, {}, GRACE, NOW)
    assert verdict.reason == REVOKED_KEY_STILL_SERVED
    assert "signing key signing" in verdict.message and "next key next" in verdict.message
    assert (ACTIVE_KEY_NOT_SERVED, "signing") in verdict.alarming  # published a day ago: verifiers fail now


def test_a_missing_retired_key_is_an_alarm_at_once():
    verdict = judge_url(seen("signing", "next"), VIEW, {}, GRACE, NOW)
    assert verdict.reason == ACTIVE_KEY_NOT_SERVED and (ACTIVE_KEY_NOT_SERVED, "old") in verdict.alarming


def test_failed_checks_say_why():
    unreachable = judge_url(Observation(URL, NOW, error="answered HTTP 503"), VIEW, {}, GRACE, NOW)
    invalid = judge_url(Observation(URL, NOW, error="not a valid public JWK Set", invalid_document=True), VIEW, {}, GRACE, NOW)
    assert (unreachable.reason, invalid.reason) == (UNREACHABLE, INVALID_DOCUMENT)
    status, reason, message = served_condition([judge_url(seen("old", "signing"), VIEW, {}, GRACE, NOW), invalid, unreachable])
    assert (status, reason) == ("False", UNREACHABLE) and message.index("HTTP 503") < message.index("next key")


def test_served_everywhere_is_what_every_url_serves():
    other = Observation("https://cdn.example.test/jwks.json", NOW, kids=("old", "signing"))
    assert served_everywhere([seen("old", "signing", "next"), other]) == {"old", "signing"}
    assert served_everywhere([seen("signing"), Observation(URL, NOW, error="down")]) == frozenset()
    assert served_everywhere([]) == frozenset()


def test_the_condition_message_is_bounded():
    verdicts = [judge_url(Observation(f"https://jwks{i}.example.test/" + "p" * 1900, NOW, error="x" * 300), VIEW, {}, GRACE, NOW) for i in range(8)]
    assert len(served_condition(verdicts)[2]) <= 2048


def test_an_observation_is_the_same_whatever_its_time():
    assert seen("a").same_as(Observation(URL, NOW + timedelta(hours=1), kids=("a",), etag='"x"'))
    assert not seen("a").same_as(Observation(URL, NOW, kids=("a",), etag='"y"'))
