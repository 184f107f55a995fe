"""scenarios/lib/delivery.py: frames counted by content, judged on what real runs recorded.

The *.raw.gz fixtures are what GStreamer's `v4l2src ! queue ! identity sleep-time=40000 !
filesink` wrote in suite clients on debian-6.12, cell ec1 (2026-12-06), reading 45 frames of
loopqual's paced writer (160x120 YUYV, 15 fps): through the patched module, and through stock
0.13.2 in the same boot."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scenarios"))

from lib.delivery import (  # noqa: E402
    first_difference,
    frames_in_file,
    identify,
    pattern,
    program_problems,
    span_figures,
)

RECORDED = Path(__file__).parent / "fixtures/delivery"
FRAME = 160 * 120 * 2


def _frames(tmp_path: Path, name: str) -> list[tuple[int, bool]]:
    raw = tmp_path / "frames.raw"
    raw.write_bytes(gzip.decompress((RECORDED / name).read_bytes()))
    return frames_in_file(str(raw), FRAME)


def test_a_pattern_frame_is_whole_and_a_changed_byte_anywhere_tears_it():
    frame = bytearray(pattern(41, FRAME))
    assert identify(frame, FRAME) == (41, True)
    for at in (3, 8, FRAME // 2, FRAME - 1):
        torn = bytearray(frame)
        torn[at] ^= 0x40
        n, whole = identify(torn, FRAME)
        assert not whole, at
    # half of frame 41 and half of frame 42 (a writer overwriting a buffer being read)
    mixed = pattern(41, FRAME)[:FRAME // 2] + pattern(42, FRAME)[FRAME // 2:]
    assert identify(mixed, FRAME) == (41, False)
    assert first_difference(mixed, FRAME)["differs_at"] == FRAME // 2


def test_gstreamer_with_a_queue_gets_every_frame_from_patched(tmp_path):
    fig = span_figures(_frames(tmp_path, "recorded-6.12-patched-ec1-gst-v4l2src-queue-slow-element.raw.gz"))
    assert fig["received"] == fig["span"] == 45 and fig["ratio"] == 1.0
    assert (fig["torn"], fig["repeated"], fig["out_of_order"]) == (0, 0, 0)
    assert fig["first"] == 10 and fig["last"] == 54
    assert program_problems(fig, 0.95, 10) == []


def test_gstreamer_with_a_queue_gets_no_whole_frame_from_stock_0_13_2(tmp_path):
    frames = _frames(tmp_path, "recorded-6.12-stock-0.13.2-ec1-gst-v4l2src-queue-slow-element.raw.gz")
    fig = span_figures(frames)
    assert len(frames) == 45 and fig["torn"] == 45 and fig["received"] == 0
    problems = program_problems(fig, 0.95, 10)
    assert problems[0].startswith("it passed on 0 whole frames") and "45 torn" in problems


def test_span_figures_count_losses_repeats_and_order():
    frames = [(5, True), (6, True), (8, True), (8, True), (7, True), (9, False), (10, True)]
    fig = span_figures(frames)
    assert fig["span"] == 6 and fig["received"] == 5  # 5..10, frame 9 torn
    assert (fig["repeated"], fig["out_of_order"], fig["torn"]) == (1, 1, 1)
    assert fig["ratio"] == round(5 / 6, 4)
    assert any("5 of the 6 frames" in p for p in program_problems(fig, 0.95, 3))
