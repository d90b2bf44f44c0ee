"""The key timeline of `kubectl signingkeys status` (cli/key_timeline.py), from a known status and
an injected clock: the plain picture is kept as a snapshot (tests/unit/snapshots/), the SVG is
checked as a document, and the phases are checked one rule at a time.

SKO_UPDATE_SNAPSHOTS=1 rewrites the snapshot; read the diff before committing it.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from datetime import datetime, timezone
from pathlib import Path

from signing_key_operator.cli.key_timeline import build_timeline, render_svg, render_text

SNAPSHOT = Path(__file__).parent / "snapshots" / "key-timeline.txt"
NOW = datetime(2026, 12, 2, 12, 10, 0, tzinfo=timezone.utc)
# Two rotations and a revoke-kid: the first key retired at the first rotation, the second was
# revoked while it signed, the third (the revoke's fresh key) signs now, and a next key waits.
STATUS = {
    "nextRotationTime": "2026-12-02T12:14:00Z",
    "keys": [
        {"kid": "thirdKey-fresh-after-the-revoke-00000000000", "state": "active",
         "created": "2026-12-02T12:08:00Z", "activated": "2026-12-02T12:08:00Z"},
        {"kid": "fourthKey-next-000000000000000000000000000", "state": "next",
         "created": "2026-12-02T12:09:00Z", "firstServed": "2026-12-02T12:09:01Z"},
        {"kid": "firstKey-retired-0000000000000000000000000", "state": "retired",
         "created": "2026-12-02T12:00:00Z", "activated": "2026-12-02T12:02:00Z",
         "retired": "2026-12-02T12:06:00Z", "removalDue": "2026-12-02T12:13:00Z"},
        {"kid": "secondKey-revoked-000000000000000000000000", "state": "revoked",
         "created": "2026-12-02T12:04:00Z", "activated": "2026-12-02T12:06:00Z",
         "revoked": "2026-12-02T12:08:00Z", "reason": "revoked by annotation"},
    ],
}


def test_the_plain_timeline_matches_its_snapshot():
    text = render_text(build_timeline(STATUS, NOW), width=100) + "\n"
    if os.environ.get("SKO_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(text)
    assert text == SNAPSHOT.read_text()


def test_the_plain_timeline_fits_the_width_and_has_no_colour():
    for width in (60, 100, 160):
        text = render_text(build_timeline(STATUS, NOW), width=width)
        chart_lines = text.split("\n\n")[0].splitlines()
        assert max(len(line) for line in chart_lines[:6]) <= width, (width, chart_lines)
        assert "\x1b[" not in text


def test_colour_adds_escapes_and_nothing_else():
    timeline = build_timeline(STATUS, NOW)
    coloured = render_text(timeline, width=100, colour=True)
    assert "\x1b[32m" in coloured  # signing is green
    import re

    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == render_text(timeline, width=100)


def test_rows_run_in_the_order_the_keys_were_made_and_say_what_each_waits_for():
    rows = build_timeline(STATUS, NOW).rows
    assert [row.kid.split("-")[0] for row in rows] == ["firstKey", "secondKey", "thirdKey", "fourthKey"]
    notes = {row.state: row.note for row in rows}
    assert notes["next"] == "published 12:09:00; signs at 12:14:00 (served everywhere since 12:09:01)"
    assert notes["active"] == "signing since 12:08:00; retires at the next rotation, 12:14:00"
    assert notes["retired"].endswith("removed at 12:13:00")
    assert notes["revoked"] == "revoked 12:08:00, served no more (revoked by annotation)"


def test_a_next_key_not_yet_served_says_it_waits_to_be_served():
    status = {"keys": [{"kid": "k", "state": "next", "created": "2026-12-02T12:09:00Z"}]}
    (row,) = build_timeline(status, NOW).rows
    assert row.note == "published 12:09:00; waits to be served before it signs"


def test_the_active_key_retires_at_the_next_rotation_and_the_next_key_signs_from_then():
    rows = {row.state: row for row in build_timeline(STATUS, NOW).rows}
    rotation = datetime(2026, 12, 2, 12, 14, 0, tzinfo=timezone.utc)
    assert [(span.phase, span.end) for span in rows["active"].spans][0] == ("signing", rotation)
    assert rows["active"].spans[-1].phase == "retired" and rows["active"].spans[-1].open_ended
    assert [(span.phase, span.start) for span in rows["next"].spans][-1] == ("signing", rotation)


def test_the_svg_is_a_document_with_a_bar_per_phase_and_the_marks():
    svg = render_svg(build_timeline(STATUS, NOW), "demo/api-tokens")
    root = ElementTree.fromstring(svg)
    namespace = "{http://www.w3.org/2000/svg}"
    bars = [rect for rect in root.iter(f"{namespace}rect") if rect.get("class")]
    assert sorted({bar.get("class") for bar in bars}) == ["published", "retired", "signing"]
    assert len(bars) == sum(len(row.spans) for row in build_timeline(STATUS, NOW).rows)
    lines = {line.get("class") for line in root.iter(f"{namespace}line")}
    assert {"now", "next-rotation", "removal", "revoked"} <= lines
    texts = [text.text for text in root.iter(f"{namespace}text")]
    legend = ["published, waiting", "signing", "retired, still published", "removal", "revoked"]
    assert texts[-len(legend):] == legend, "the legend names every bar and both marks"
    legend_x = [float(text.get("x")) for text in root.iter(f"{namespace}text")][-len(legend):]
    assert legend_x == sorted(legend_x) and legend_x[-1] + 7.8 * len("revoked") < float(root.get("width"))


def test_the_readme_shows_the_snapshot():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    chart = SNAPSHOT.read_text().split("\n\n")[0]
    assert f"```\n{chart}\n```" in readme, "README's timeline picture differs from tests/unit/snapshots/key-timeline.txt"
