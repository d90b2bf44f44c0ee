"""A policy's keys as a timeline: what `kubectl signingkeys status` draws.

A key lifecycle is a sequence of phases in time (published and waiting, signing, retired but
still published, removed), so the picture is a row per key with its phases drawn to scale, a
mark for now and one for the next rotation. It is built from the policy's status alone (the
operator's view of the key Secrets), and the clock is passed in, so the same status and the same
``now`` always give the same picture (tests/unit/test_key_timeline.py keeps a snapshot of it).

Phases in the future are drawn where the status says they will happen: the next key signs at
``nextRotationTime`` and the active key retires then; a retired key is removed at its
``removalDue``. Two renderings share one layout: plain text (colour optional) and SVG.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from ..k8s.objects import parse_time

PHASES = ("published", "signing", "retired")
"""A key's phases in order: published (waiting to sign), signing, retired (still published)."""

GLYPHS = {"published": ".", "signing": "#", "retired": "="}
COLOURS = {"published": "\x1b[36m", "signing": "\x1b[32m", "retired": "\x1b[33m", "revoked": "\x1b[31m"}
SVG_FILL = {"published": "#7fb8d8", "signing": "#3c9a4a", "retired": "#e0b040"}
SVG_MARK = {"removal": "#333333", "revoked": "#c03030"}
"""Colours of the line that ends a row: its removal, or its revocation."""
MONOSPACE_WIDTH = 7.8
"""Width of a character of the SVG's 13 px monospace font, to lay the legend out."""
RESET = "\x1b[0m"
KID_WIDTH = 10
STATE_WIDTH = 8
MIN_CHART_WIDTH = 20


@dataclass(frozen=True)
class Span:
    phase: str
    start: datetime
    end: datetime
    open_ended: bool = False
    """True when the phase goes on past anything the status says (the active key after the last
    known time): drawn up to the edge with a continuation mark."""


@dataclass(frozen=True)
class KeyRow:
    kid: str
    state: str
    spans: tuple[Span, ...]
    ends: str
    """How the row ends: "removal" (its removalDue), "revoked", or "" (it goes on)."""
    note: str
    """What the key is doing or waiting for, in words."""


@dataclass(frozen=True)
class Timeline:
    rows: tuple[KeyRow, ...]
    now: datetime
    next_rotation: datetime | None
    start: datetime
    end: datetime


def _time(value: str | None) -> datetime | None:
    return parse_time(value) if value else None


def clock(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%H:%M:%S")


def stamp(value: datetime, now: datetime) -> str:
    """A time as people read it beside ``now``: the clock alone on the same day, else the date too."""
    value, now = value.astimezone(timezone.utc), now.astimezone(timezone.utc)
    return clock(value) if value.date() == now.date() else value.strftime("%Y-%m-%d %H:%M:%S")


def build_timeline(status: dict, now: datetime) -> Timeline:
    """The rows of ``status.keys`` (the operator lists the signing and the next key first, then
    the newest others), laid out between the first key's creation and the last time any of
    them names (or ``now``)."""
    next_rotation = _time(status.get("nextRotationTime"))
    rows = []
    for key in status.get("keys") or []:
        rows.append(_row(key, now, next_rotation))
    times = [now] + ([next_rotation] if next_rotation else [])
    times += [moment for row in rows for span in row.spans for moment in (span.start, span.end)]
    start, end = min(times), max(times)
    if end - start < timedelta(seconds=10):
        end = start + timedelta(seconds=10)
    end += (end - start) / 20  # room for the continuation marks
    rows.sort(key=lambda row: row.spans[0].start if row.spans else now)
    return Timeline(tuple(rows), now, next_rotation, start, end)


def _row(key: dict, now: datetime, next_rotation: datetime | None) -> KeyRow:
    state = key.get("state", "")
    created = _time(key.get("created")) or now
    activated, retired = _time(key.get("activated")), _time(key.get("retired"))
    removal, revoked = _time(key.get("removalDue")), _time(key.get("revoked"))
    spans: list[Span] = []
    if state == "next":
        signs_at = next_rotation if next_rotation and next_rotation > now else None
        spans.append(Span("published", created, signs_at or now, open_ended=signs_at is None))
        if signs_at:
            spans.append(Span("signing", signs_at, signs_at, open_ended=True))
            note = f"published {stamp(created, now)}; signs at {stamp(signs_at, now)}"
        else:
            note = f"published {stamp(created, now)}; waits to be served before it signs" if not key.get("firstServed") \
                else f"published {stamp(created, now)}; due to sign"
        if key.get("firstServed"):
            note += f" (served everywhere since {stamp(_time(key['firstServed']), now)})"
        return KeyRow(key["kid"], state, tuple(spans), "", note)
    if activated and activated > created:  # an emergency key signs the moment it is made
        spans.append(Span("published", created, activated))
    if state == "active":
        note = f"signing since {stamp(activated or created, now)}"
        if next_rotation and next_rotation > now:
            spans.append(Span("signing", activated or created, next_rotation))
            spans.append(Span("retired", next_rotation, next_rotation, open_ended=True))
            note += f"; retires at the next rotation, {stamp(next_rotation, now)}"
        else:
            spans.append(Span("signing", activated or created, now, open_ended=True))
        return KeyRow(key["kid"], state, tuple(spans), "", note)
    if state == "revoked":
        end = revoked or now
        if activated:
            spans.append(Span("signing", activated, retired or end))
        if retired and retired < end:
            spans.append(Span("retired", retired, end))
        if not spans:
            spans.append(Span("published", created, end))
        reason = f" ({key['reason']})" if key.get("reason") else ""
        return KeyRow(key["kid"], state, tuple(spans), "revoked", f"revoked {stamp(end, now)}, served no more{reason}")
    # retired
    retired = retired or now
    spans.append(Span("signing", activated or created, retired))
    spans.append(Span("retired", retired, removal or now, open_ended=removal is None))
    note = f"retired {stamp(retired, now)}; still published for the tokens it signed"
    if removal:
        note += f", removed at {stamp(removal, now)}"
    return KeyRow(key["kid"], state, tuple(spans), "removal" if removal else "", note)


# -- plain text --------------------------------------------------------------------------------

def render_text(timeline: Timeline, width: int = 100, colour: bool = False) -> str:
    """The picture in ``width`` columns: an axis, a row per key, the now and next-rotation
    marks, a legend, and each key's note."""
    chart = max(MIN_CHART_WIDTH, width - KID_WIDTH - STATE_WIDTH - 2)
    span_s = (timeline.end - timeline.start).total_seconds()

    def column(moment: datetime) -> int:
        fraction = (moment - timeline.start).total_seconds() / span_s
        return min(chart - 1, max(0, round(fraction * (chart - 1))))

    now_column = column(timeline.now)
    lines = []
    left, right = clock(timeline.start), clock(timeline.end)
    lines.append(" " * (KID_WIDTH + STATE_WIDTH + 2) + left + right.rjust(chart - len(left)))
    for row in timeline.rows:
        cells = [" "] * chart
        phases: list[str | None] = [None] * chart
        for span in row.spans:
            first, last = column(span.start), column(span.end)
            if span.open_ended and span.end >= timeline.now:
                last = chart - 2
            for index in range(first, max(first, last) + 1):
                cells[index], phases[index] = GLYPHS[span.phase], span.phase
            if span.open_ended and span.end >= timeline.now:
                cells[chart - 1], phases[chart - 1] = ">", span.phase
        if row.ends and row.spans:
            end_column = min(chart - 1, column(row.spans[-1].end))
            cells[end_column], phases[end_column] = ("R", "revoked") if row.ends == "revoked" else ("x", row.spans[-1].phase)
        cells[now_column] = "|"
        drawn = _coloured(cells, phases) if colour else "".join(cells)
        lines.append(f"{_short(row.kid):<{KID_WIDTH}}{row.state:<{STATE_WIDTH}}  {drawn}".rstrip())
    marks = [" "] * chart
    marks[now_column] = "^"
    legend_parts = [f"^ now {clock(timeline.now)}"]
    if timeline.next_rotation:
        rotation_column = column(timeline.next_rotation)
        if marks[rotation_column] == " ":
            marks[rotation_column] = "*"
        legend_parts.append(f"* next rotation {stamp(timeline.next_rotation, timeline.now)}")
    lines.append(" " * (KID_WIDTH + STATE_WIDTH + 2) + "".join(marks).rstrip())
    lines.append("  ".join(legend_parts))
    lines.append(". published, waiting  # signing  = retired, still published  x removal  R revoked  > goes on")
    lines.append("")
    for row in timeline.rows:
        lines.append(f"{row.kid} ({row.state}): {row.note}")
    return "\n".join(lines)


def _coloured(cells: list[str], phases: list[str | None]) -> str:
    """One colour escape per run of a phase, not per cell."""
    out, current = [], None
    for cell, phase in zip(cells, phases):
        if phase != current:
            out.append(RESET if current else "")
            out.append(COLOURS[phase] if phase else "")
            current = phase
        out.append(cell)
    out.append(RESET if current else "")
    return "".join(out)


def _short(kid: str) -> str:
    return kid if len(kid) <= KID_WIDTH - 2 else kid[: KID_WIDTH - 3] + "…"


# -- SVG ---------------------------------------------------------------------------------------

def render_svg(timeline: Timeline, title: str) -> str:
    """The same picture as an SVG document (for a runbook or a ticket)."""
    label_width, chart_width, row_height, top = 200, 760, 28, 60
    height = top + row_height * len(timeline.rows) + 70
    span_s = (timeline.end - timeline.start).total_seconds()

    def x(moment: datetime) -> float:
        return label_width + (moment - timeline.start).total_seconds() / span_s * chart_width

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_width + chart_width + 20}" height="{height}" '
        'font-family="monospace" font-size="13">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="22" font-size="15" font-weight="bold">{html.escape(title)}</text>',
        f'<text x="{label_width}" y="{top - 10}">{clock(timeline.start)}</text>',
        f'<text x="{label_width + chart_width}" y="{top - 10}" text-anchor="end">{clock(timeline.end)}</text>',
    ]
    for index, row in enumerate(timeline.rows):
        y = top + index * row_height
        parts.append(f'<text x="10" y="{y + 18}">{html.escape(_short(row.kid))} {html.escape(row.state)}</text>')
        for span in row.spans:
            end = timeline.end if span.open_ended and span.end >= timeline.now else span.end
            parts.append(f'<rect class="{span.phase}" x="{x(span.start):.1f}" y="{y + 5}" '
                         f'width="{max(1.0, x(end) - x(span.start)):.1f}" height="{row_height - 10}" '
                         f'fill="{SVG_FILL[span.phase]}"><title>{html.escape(row.note)}</title></rect>')
        if row.ends and row.spans:
            mark = x(row.spans[-1].end)
            parts.append(f'<line class="{row.ends}" x1="{mark:.1f}" y1="{y + 2}" x2="{mark:.1f}" y2="{y + row_height - 2}" '
                         f'stroke="{SVG_MARK[row.ends]}" stroke-width="3"/>')
    bottom = top + row_height * len(timeline.rows)
    parts.append(f'<line class="now" x1="{x(timeline.now):.1f}" y1="{top - 5}" x2="{x(timeline.now):.1f}" y2="{bottom}" '
                 'stroke="black" stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{x(timeline.now):.1f}" y="{bottom + 16}" text-anchor="middle">now {clock(timeline.now)}</text>')
    if timeline.next_rotation:
        rotation = x(timeline.next_rotation)
        parts.append(f'<line class="next-rotation" x1="{rotation:.1f}" y1="{top - 5}" x2="{rotation:.1f}" y2="{bottom}" '
                     'stroke="#3c9a4a" stroke-dasharray="2 2"/>')
        anchor = "end" if rotation > label_width + chart_width * 0.8 else "middle"
        parts.append(f'<text x="{rotation:.1f}" y="{bottom + 32}" text-anchor="{anchor}">next rotation '
                     f'{stamp(timeline.next_rotation, timeline.now)}</text>')
    legend_y, legend_x = height - 12, 10
    phase_words = {"published": "published, waiting", "signing": "signing", "retired": "retired, still published"}
    for kind, words in [*((phase, phase_words[phase]) for phase in PHASES), ("removal", "removal"), ("revoked", "revoked")]:
        if kind in SVG_FILL:
            parts.append(f'<rect x="{legend_x}" y="{legend_y - 11}" width="14" height="12" fill="{SVG_FILL[kind]}"/>')
        else:
            parts.append(f'<line x1="{legend_x + 7}" y1="{legend_y - 12}" x2="{legend_x + 7}" y2="{legend_y + 2}" '
                         f'stroke="{SVG_MARK[kind]}" stroke-width="3"/>')
        parts.append(f'<text x="{legend_x + 20}" y="{legend_y}">{words}</text>')
        legend_x += 20 + len(words) * MONOSPACE_WIDTH + 24
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
