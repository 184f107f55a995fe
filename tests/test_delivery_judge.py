"""scenarios/lib/delivery.py: frames counted by content, judged on what real runs recorded.

The *.raw.gz fixtures are what GStreamer's `v4l2src ! queue ! identity sleep-time=40000 !
filesink` wrote in suite clients on debian-6.12, cell ec1 (2026-12-06), reading 45 frames of
loopqual's paced writer (160x120 YUYV, 15 fps): through the patched module, and through stock
0.13.2 in the same boot. The *.json.gz fixture is what the writer and four readers of suite
delivery reported in make test (debian-6.1, cell ec1, patched)."""

from __future__ import annotations

import gzip
import sys
import time
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


def test_span_figures_leave_out_a_programs_start_up():
    # the shape of sid's ffmpeg reader in CI (round 0): frames 61-69 lost while it opened its
    # encoders, then every frame; judged after the warm-up it holds D4
    frames = [(60, True), *[(n, True) for n in range(70, 109)]]
    assert program_problems(span_figures(frames), 0.95, 10)
    fig = span_figures(frames, warmup=10)
    assert (fig["first"], fig["span"], fig["ratio"], fig["warmup"]) == (79, 30, 1.0, 10)
    assert program_problems(fig, 0.95, 10) == []


def _recorded_run() -> dict:
    """What the writer (QBUF, 30 fps) and four readers of test_d2_four_readers_hold_buffers_back
    reported through the patched module in cell ec1 of debian-6.1 (make test, 2026-12-06)."""
    import json

    return json.loads(gzip.decompress(
        (RECORDED / "recorded-6.1-patched-ec1-d2-four-readers-qbuf.json.gz").read_bytes()))


def test_figures_of_four_recorded_readers_through_patched():
    from lib.delivery import figures, keeps_up_problems

    run = _recorded_run()
    for name, rep in run["readers"].items():
        fig = figures(run["writer"], rep)
        assert fig["published"] >= 150 and fig["owed"] == fig["published"], name
        assert fig["ratio"] == 1.0 and fig["sequence_consistent"] is True, name
        assert keeps_up_problems(fig, 0.99) == [], name


def test_figures_count_a_lost_frame_a_torn_one_and_one_out_of_order():
    from lib.delivery import figures, keeps_up_problems

    run = _recorded_run()
    rep = run["readers"]["holds N-1, gives back oldest first"]
    writer = run["writer"]
    start = writer["began"].index(next(b for b in writer["began"] if b >= rep["start"]))
    got = [g for g in rep["got"] if g[0] != start + 20]  # frame start+20 lost
    got[30][1] = False  # torn
    got[40], got[41] = got[41], got[40]  # two frames the other way round
    fig = figures(writer, {**rep, "got": got})
    assert fig["received"] == fig["owed"] - 2  # the lost and the torn one
    assert (fig["torn"], fig["out_of_order"]) == (1, 1)
    problems = keeps_up_problems(fig, 0.999)
    assert any("1 torn" in p for p in problems) and any("out of order" in p for p in problems)


def test_a_frame_published_while_the_reader_held_every_buffer_is_not_owed():
    """S7 lets a reader with no buffer queued miss frames. One buffer, frames 0..9 published at
    t = 0..9; the reader starts at 0.5, gives its buffer back right after frames 1, 2 and from 7
    on, but holds it from frame 3 until 6.5, when it gets the newest frame (6) at once: frames
    4, 5 and 6 came while it held its only buffer and are not owed; it got every owed frame."""
    from lib.delivery import figures

    writer = {"began": [float(t) for t in range(10)],
              "returned": [t + 0.01 for t in range(10)]}
    got = [[1, True, 0, 1.02], [2, True, 1, 2.02], [3, True, 2, 3.02], [6, True, 5, 6.52],
           [7, True, 6, 7.02], [8, True, 7, 8.02], [9, True, 8, 9.02]]
    queued = [0.5, 1.03, 2.03, 6.5, 6.53, 7.03, 8.03, 9.03]
    reader = {"start": 0.5, "stop": 9.5, "count": 1, "got": got, "queued": queued}
    fig = figures(writer, reader)
    assert (fig["published"], fig["owed"], fig["received"]) == (9, 6, 6)
    assert fig["ratio"] == 1.0 and fig["kept_up"] == round(6 / 9, 4)
    # lose frame 8 as well: now one owed frame is missing
    fig = figures(writer, {**reader, "got": [g for g in got if g[0] != 8]})
    assert (fig["owed"], fig["received"]) == (6, 5)


def _late_starter(window, delay: float) -> dict:
    time.sleep(delay)
    window.started()
    while time.monotonic() < window.stop():
        time.sleep(0.01)
    return {"stop": window.stop()}


def _fails_before_streaming(window) -> dict:
    raise OSError(16, "Device or resource busy")


def test_the_window_ends_a_fixed_time_after_the_last_reader_started():
    """Real forked children: the window waits for the slowest starter, not the first, and a
    child that fails before it streams does not hold the others up until STARTUP_S."""
    from lib.delivery import Child, Window

    window = Window()
    try:
        t0 = time.monotonic()
        children = [Child("quick", _late_starter, window, 0.0),
                    Child("slow", _late_starter, window, 0.6),
                    Child("failing", _fails_before_streaming, window)]
        took = window.await_readers(children, 0.3)
        assert 0.3 <= took < 5.0
        stop = window.stop()
        assert stop >= t0 + 0.6 + 0.3
        results = [c.collect(time.monotonic() + 10) for c in children]
        assert results[0]["stop"] == results[1]["stop"] == stop
        assert "Device or resource busy" in results[2]["error"]
    finally:
        window.close()


def _counting_reader(window, slot: int, every: float) -> dict:
    window.started()
    n = 0
    while time.monotonic() < window.stop():
        time.sleep(every)
        n += 1
        window.received(slot, n)
    return {"frames": n}


def test_the_window_is_held_open_for_a_slow_reader_up_to_its_cap():
    """A judged reader that receives a frame every 50 ms keeps a 0.3 s window open until it
    has 20 frames; a reader that is not judged holds nothing; a count that is never reached
    ends at the cap; a judged reader that failed holds nothing open."""
    from lib.delivery import Child, Window

    for need, cap, lo, hi, failing in ((20, 10.0, 0.9, 3.0, False),
                                       (10_000, 1.5, 1.2, 1.6, False),
                                       (10_000, 10.0, 0.2, 0.6, True)):
        window = Window(2)
        try:
            judged = (Child("failing", _fails_before_streaming, window) if failing else
                      Child("slow", _counting_reader, window, 0, 0.05))
            children = [judged, Child("not judged", _counting_reader, window, 1, 1.0)]
            window.await_readers(children, 0.3)
            opened = time.monotonic()
            window.hold_open({0: judged}, need, opened + cap)
            held = window.stop() - opened
            assert lo <= held <= hi, (need, held)
            results = [c.collect(time.monotonic() + 10) for c in children]
            if need == 20:
                assert results[0]["frames"] >= 20
        finally:
            window.close()
