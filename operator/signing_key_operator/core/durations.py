"""Go-style durations ("90s", "1h30m", "720h", "1.5h", "500ms"), as Kubernetes users write them.

The CRD takes durations as strings in the syntax of Go's ``time.ParseDuration`` because that is
what every other Kubernetes API (cert-manager ``duration``/``renewBefore``, ``metav1.Duration``)
accepts, so users do not have to learn a second notation.

``timedelta`` counts whole microseconds; a duration finer than that (e.g. "1ns") is refused
instead of being rounded silently, so what the operator uses is exactly what the user wrote.
"""

from __future__ import annotations

import re
from datetime import timedelta
from fractions import Fraction
from types import MappingProxyType

__all__ = ["format_duration", "parse_duration"]

_NANOSECONDS_PER_UNIT = MappingProxyType(
    {
        "ns": 1,
        "us": 1_000,
        "µs": 1_000,  # U+00B5 MICRO SIGN, what Go prints
        "μs": 1_000,  # U+03BC GREEK SMALL LETTER MU, which Go also accepts
        "ms": 1_000_000,
        "s": 1_000_000_000,
        "m": 60_000_000_000,
        "h": 3_600_000_000_000,
    }
)

_COMPONENT = re.compile(r"(?P<whole>[0-9]*)(?:\.(?P<fraction>[0-9]*))?(?P<unit>[^0-9.]*)")

_MICROSECONDS_PER_SECOND = 1_000_000
_MICROSECONDS_PER_MINUTE = 60 * _MICROSECONDS_PER_SECOND
_MICROSECONDS_PER_HOUR = 60 * _MICROSECONDS_PER_MINUTE


def parse_duration(text: str) -> timedelta:
    """Parse a Go duration string such as ``"1h30m"`` into a ``timedelta``.

    Accepts what ``time.ParseDuration`` accepts: an optional sign, then one or more decimal
    numbers each followed by a unit (ns, us/µs, ms, s, m, h); a bare ``"0"`` is also valid.
    Raises ``ValueError`` whose message quotes the offending text.
    """
    if not isinstance(text, str):
        raise ValueError(
            f"invalid duration {text!r}: expected a string such as '90s', '15m' or '1h30m', "
            f"got {type(text).__name__}"
        )
    body = text
    negative = False
    if body[:1] in ("-", "+"):
        negative = body[0] == "-"
        body = body[1:]
    if body == "0":
        return timedelta(0)
    if not body:
        raise ValueError(f"invalid duration {text!r}: empty (write e.g. '90s', '15m' or '1h30m')")

    total_nanoseconds = Fraction(0)
    position = 0
    while position < len(body):
        component = _COMPONENT.match(body, position)
        assert component is not None  # every group is optional, so the pattern always matches
        whole, fraction, unit = component["whole"], component["fraction"], component["unit"]
        if not whole and not fraction:
            raise ValueError(f"invalid duration {text!r}: expected a number at {body[position:]!r}")
        if not unit:
            raise ValueError(
                f"invalid duration {text!r}: missing unit after {body[position:component.end()]!r}"
                " (use ns, us, ms, s, m or h)"
            )
        if unit not in _NANOSECONDS_PER_UNIT:
            raise ValueError(
                f"invalid duration {text!r}: unknown unit {unit!r} (use ns, us, ms, s, m or h)"
            )
        value = Fraction(int(whole or "0"))
        if fraction:
            value += Fraction(int(fraction), 10 ** len(fraction))
        total_nanoseconds += value * _NANOSECONDS_PER_UNIT[unit]
        position = component.end()

    microseconds = total_nanoseconds / 1_000
    if microseconds.denominator != 1:
        raise ValueError(f"invalid duration {text!r}: finer than one microsecond is not supported")
    try:
        result = timedelta(microseconds=int(microseconds))
    except OverflowError:
        raise ValueError(f"invalid duration {text!r}: too large") from None
    return -result if negative else result


def format_duration(value: timedelta, *, compact: bool = False) -> str:
    """Render a ``timedelta`` the way Go's ``Duration.String`` does (``"1h30m0s"``, ``"500ms"``).

    With ``compact=True`` zero components are left out (``"1h30m"``, ``"720h"``), which reads
    better in status and events. Both forms parse back to the same value with
    :func:`parse_duration`.
    """
    total = value // timedelta(microseconds=1)
    if total == 0:
        return "0s"
    sign = "-" if total < 0 else ""
    total = abs(total)

    if total < 1_000:
        return f"{sign}{total}µs"
    if total < _MICROSECONDS_PER_SECOND:
        return f"{sign}{_decimal(total, 1_000)}ms"

    hours, rest = divmod(total, _MICROSECONDS_PER_HOUR)
    minutes, rest = divmod(rest, _MICROSECONDS_PER_MINUTE)
    seconds = _decimal(rest, _MICROSECONDS_PER_SECOND)
    if compact:
        parts = [
            f"{hours}h" if hours else "",
            f"{minutes}m" if minutes else "",
            f"{seconds}s" if rest else "",
        ]
        return sign + "".join(parts)
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{sign}{minutes}m{seconds}s"
    return f"{sign}{seconds}s"


def _decimal(amount: int, scale: int) -> str:
    """``amount / scale`` as a decimal without trailing zeros (Go prints "1.5s", not "1.500000s")."""
    whole, fraction = divmod(amount, scale)
    if not fraction:
        return str(whole)
    digits = len(str(scale)) - 1
    return f"{whole}.{str(fraction).zfill(digits).rstrip('0')}"
