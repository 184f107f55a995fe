"""loopqual.guest.programs.ticking: the reports of the long-reading browser page, as K6 and
the program bench read them, and K6's judgement of them (scenarios/lib/ticking.py). The lines
are recorded from real K6 runs (debian-6.1, OBS writing at 1 fps, 2026-12-03): patched, where
both browsers read; and stock 0.13.2, which refused Chromium as a second reader. The
*-sessions-6.12 lines: a K6 run on debian-6.12 (patched, an ffmpeg writer at 1 fps,
2026-12-04) whose Firefox page began with three rude-stop sessions of 3 distinct frames each.
Chromium prints the page's console through its log (with its own prefix and suffix), Firefox
prints dump() as is."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from loopqual.guest.programs.ticking import TickingBrowser

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scenarios"))

from lib.ticking import judge_labels_and_sessions  # noqa: E402

RECORDED = Path(__file__).parent / "fixtures/ticking"


def _fed(name: str, recording: str = "6.1", b: TickingBrowser | None = None,
         lines: int | None = None) -> TickingBrowser:
    """A TickingBrowser given a recorded log line by line (no browser is started); lines: only
    the first so many."""
    if b is None:
        b = TickingBrowser.__new__(TickingBrowser)
        b.name, b.last, b.history, b.marks, b.result, b.t0 = name, {}, [], {}, None, 0.0
        b.refused_since = None
    for line in (RECORDED / f"recorded-k6-{name}-{recording}.log").read_bytes().splitlines()[:lines]:
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


def _judge(firefox: TickingBrowser, chromium: TickingBrowser, card: str) -> dict:
    """K6's judgement of the browsers' labels and Firefox's rude-stop sessions, on browsers fed
    recorded lines whose logs are closed (nothing more to read: the judge does not wait)."""
    for b in (firefox, chromium):
        b.log = io.BytesIO()
        b.log.close()
    steps: dict = {}
    judge_labels_and_sessions([firefox, chromium], firefox, card, "Firefox ESR (recorded)", steps)
    return steps


CARD = "Dummy video device (0x0000)"


def test_k6_judges_firefoxs_three_rude_stop_sessions_from_a_real_run():
    """Recorded from a real K6 run (debian-6.12, patched, an ffmpeg writer at 1 fps,
    2026-12-04): Firefox's page read three sessions of 3 distinct frames (in 2.8, 2.8 and
    1.4 s), each ended the rude way, then opened the camera a fourth time; both browsers read
    the loopback device by its label."""
    steps = _judge(_fed("firefox", "sessions-6.12"), _fed("chromium", "sessions-6.12"), CARD)
    assert [(s["distinct"], s["s"]) for s in steps["firefox_sessions"]] == [
        (3, 2.8), (3, 2.8), (3, 1.4)]
    assert steps["labels"] == {"firefox": CARD, "chromium": CARD}


def test_k6_fails_when_firefox_ends_fewer_sessions_than_it_should():
    """The same recording cut off after Firefox's second opening (one session ended) and the
    browser gone: the judge fails and says how many sessions it saw."""
    firefox = _fed("firefox", "sessions-6.12", lines=20)
    assert len(firefox.last["sessions"]) == 1
    with pytest.raises(AssertionError, match="had ended 1"):
        _judge(firefox, _fed("chromium", "sessions-6.12"), CARD)


def test_k6_fails_when_a_browser_opened_another_camera():
    with pytest.raises(AssertionError, match="expected the loopback device"):
        _judge(_fed("firefox", "sessions-6.12"), _fed("chromium", "sessions-6.12"),
               "loopqual's other card")
