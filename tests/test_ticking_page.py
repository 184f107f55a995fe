"""scenarios/lib/ticking.py: the reports of the long-reading browser page, as K6 and the
program bench read them. The lines are recorded from real K6 runs (debian-6.1, OBS writing at
1 fps, 2026-12-03): patched, where both browsers read; and stock 0.13.2, which refused
Chromium as a second reader. Chromium prints the page's console through its log (with its
own prefix and suffix), Firefox prints dump() as is."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scenarios"))

from lib.ticking import TickingBrowser  # noqa: E402

RECORDED = Path(__file__).parent / "fixtures/ticking"


def _fed(name: str, recording: str = "6.1", b: TickingBrowser | None = None) -> TickingBrowser:
    """A TickingBrowser given a recorded log line by line (no browser is started)."""
    if b is None:
        b = TickingBrowser.__new__(TickingBrowser)
        b.name, b.last, b.history, b.marks, b.result, b.t0 = name, {}, [], {}, None, 0.0
        b.refused_since = None
    for line in (RECORDED / f"recorded-k6-{name}-{recording}.log").read_bytes().splitlines():
        b._scan(line)
    return b


def test_each_report_is_kept_in_order_and_the_newest_is_the_state():
    for name, key in (("chromium", "changes"), ("firefox", "presented")):
        b = _fed(name)
        ticks = (RECORDED / f"recorded-k6-{name}-6.1.log").read_text().count("LOOPQUAL_TICK ")
        assert len(b.history) == ticks == 16
        assert "LOOPQUAL_STARTED" in b.marks
        counts = [report[key] for _t, report in b.history]
        assert counts == sorted(counts) and counts[-1] > counts[0], counts
        assert b.last == b.history[-1][1] and b.changes() == b.last["changes"]
        assert b.last["label"].startswith("Dummy video device")


def test_chromiums_suffix_after_the_json_is_not_part_of_the_report():
    b = _fed("chromium")
    assert b.changes() == 228 and b.last["frames"] == 321


def test_a_page_refused_the_camera_counts_how_long_until_it_reads():
    """0.13.2 refused Chromium from its first try: every report carries the error, and the
    refusal's clock runs from the first of them (K6 gives up on it after REFUSED_FOR_S);
    a report without an error stops it."""
    b = _fed("chromium", "refused-0.13.2")
    assert len(b.history) == 8
    assert all("NotReadableError" in report["error"] for _t, report in b.history)
    assert b.refused_since == b.history[0][0] and b.refused_for() > 0
    _fed("chromium", "6.1", b)
    assert b.refused_since is None and b.refused_for() == 0.0 and b.changes() == 228
