"""loopqual bench --startup's table, from the guests' figures of a real run (debian-6.12, one
boot on 9p and one on virtiofs, each program started twice)."""

from __future__ import annotations

import json
from pathlib import Path

from loopqual.run import bench

FIXTURE = Path(__file__).parent / "fixtures" / "bench" / "recorded-startup-6.12.json"


def test_each_program_gets_both_roots_both_starts_and_their_ratios():
    doc = json.loads(FIXTURE.read_text())
    rows = {r["what"]: r for r in bench.startup_rows(doc["guests"])}
    chromium = rows["Chromium to its page's first frame"]
    assert chromium["9p"] == [57.7, 27.4] and chromium["virtiofs"] == [31.2, 22.6]
    assert chromium["ratio"] == [round(57.7 / 31.2, 2), round(27.4 / 22.6, 2)]
    assert rows["boot to the runner's first event"]["ratio"] == [round(17.8 / 13.7, 2)]
    assert not any(r.get("errors") for r in rows.values())
    text = bench.render_startup(list(rows.values()), {**doc, "release": doc["release"]})
    assert "ratio = 9p / virtiofs" in text and "OBS to its virtual camera streaming" in text
