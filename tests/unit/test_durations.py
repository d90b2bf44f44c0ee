from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signing_key_operator.core.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", timedelta(0)),
        ("0s", timedelta(0)),
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1h30m0s", timedelta(hours=1, minutes=30)),
        ("720h", timedelta(days=30)),
        ("1.5h", timedelta(minutes=90)),
        (".5s", timedelta(milliseconds=500)),
        ("1.s", timedelta(seconds=1)),
        ("500ms", timedelta(milliseconds=500)),
        ("250us", timedelta(microseconds=250)),
        ("250µs", timedelta(microseconds=250)),
        ("250μs", timedelta(microseconds=250)),
        ("1000ns", timedelta(microseconds=1)),
        ("2h45m30.5s", timedelta(hours=2, minutes=45, seconds=30.5)),
        ("+5m", timedelta(minutes=5)),
        ("-1.5h", -timedelta(minutes=90)),
        ("1h1h", timedelta(hours=2)),
    ],
)
def test_parse_duration_accepts_go_syntax(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("", "empty"),
        ("-", "empty"),
        ("1", "missing unit"),
        ("1h30", "missing unit"),
        ("h", "expected a number"),
        (".h", "expected a number"),
        ("1d", "unknown unit 'd'"),
        ("1x", "unknown unit"),
        (" 1h", "expected a number"),
        ("1 h", "unknown unit"),
        ("1.5.5h", "missing unit"),
        ("--1h", "expected a number"),
        ("1e3s", "unknown unit"),
        ("1ns", "finer than one microsecond"),
        ("1.0000001s", "finer than one microsecond"),
        ("99999999999999999h", "too large"),
    ],
)
def test_parse_duration_names_the_bad_text(text, hint):
    with pytest.raises(ValueError) as error:
        parse_duration(text)
    assert repr(text) in str(error.value)
    assert hint in str(error.value)


@pytest.mark.parametrize("value", [5, 1.5, None, b"1h"])
def test_parse_duration_refuses_non_strings(value):
    with pytest.raises(ValueError, match="expected a string"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "go", "compact"),
    [
        (timedelta(0), "0s", "0s"),
        (timedelta(microseconds=1), "1µs", "1µs"),
        (timedelta(microseconds=1500), "1.5ms", "1.5ms"),
        (timedelta(milliseconds=500), "500ms", "500ms"),
        (timedelta(seconds=1), "1s", "1s"),
        (timedelta(seconds=1.5), "1.5s", "1.5s"),
        (timedelta(seconds=90), "1m30s", "1m30s"),
        (timedelta(minutes=1), "1m0s", "1m"),
        (timedelta(hours=1, minutes=30), "1h30m0s", "1h30m"),
        (timedelta(hours=1, seconds=0.25), "1h0m0.25s", "1h0.25s"),
        (timedelta(days=30), "720h0m0s", "720h"),
        (-timedelta(hours=1), "-1h0m0s", "-1h"),
    ],
)
def test_format_duration_go_and_compact(value, go, compact):
    assert format_duration(value) == go
    assert format_duration(value, compact=True) == compact


@settings(max_examples=300)
@given(st.timedeltas())
def test_format_then_parse_round_trips(value):
    assert parse_duration(format_duration(value)) == value
    assert parse_duration(format_duration(value, compact=True)) == value


_UNIT_SECONDS = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=10_000), st.sampled_from(sorted(_UNIT_SECONDS))),
        min_size=1,
        max_size=5,
    )
)
def test_parse_sums_components_in_any_order(components):
    text = "".join(f"{amount}{unit}" for amount, unit in components)
    expected = sum(
        (timedelta(milliseconds=amount) if unit == "ms" else timedelta(seconds=amount * _UNIT_SECONDS[unit])
         for amount, unit in components),
        timedelta(0),
    )
    assert parse_duration(text) == expected
    assert parse_duration(format_duration(expected)) == expected
