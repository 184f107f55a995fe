"""`loopqual bench --programs`: its parsers and its table, from what one real run recorded
(debian-6.1 under TCG, 2026-12-03: 640x480 YUYV at 30 fps, 15 s windows, stock 0.13.2 and
0.15.4 against patched). The logs are the guest's own (each line "arrival-seconds text", as
bench_programs.Watched writes them): ffmpeg writing to and reading from patched, and
GStreamer's v4l2src reading from patched."""

from __future__ import annotations

import json
import re
from pathlib import Path

from loopqual.guest import bench_programs as bp
from loopqual.run import bench

RECORDED = Path(__file__).parent / "fixtures/bench/recorded-programs-6.1"


def _lines(name: str) -> list[tuple[float, str]]:
    out = []
    for raw in (RECORDED / name).read_text().splitlines():
        t, _, text = raw.partition(" ")
        out.append((float(t), text))
    return out


def test_ffmpeg_reader_frames_are_its_framemd5_lines():
    lines = _lines("patched-ffmpeg-reader.log")
    frames = bp.reader_frames("ffmpeg", lines)
    rows = [x for _t, x in lines if re.match(r"^0,\s", x)]
    assert frames and len(frames) == len(rows)
    assert all(re.fullmatch(r"[0-9a-f]{32}", key) for _t, key in frames)
    # the arrival times are the log's, in order
    assert [t for t, _k in frames] == sorted(t for t, _k in frames)


def test_gstreamer_reader_frames_are_the_identity_elements_chain_messages():
    lines = _lines("patched-gst-reader.log")
    frames = bp.reader_frames("gst", lines)
    chains = [x for _t, x in lines if "GstIdentity:read: last-message = chain" in x]
    assert len(frames) == len(chains) > 0
    assert len({k for _t, k in frames}) == len(frames)  # each buffer counts once


def test_ffmpeg_writer_progress_without_a_drop_field_still_counts_frames():
    """ffmpeg 5.1 prints drop= only once a frame was dropped: none here, and the writer's
    frames must still be counted (the first run's parser wanted drop= and saw no frames)."""
    lines = _lines("patched-ffmpeg-writer.log")
    assert not any("drop=" in x for _t, x in lines)
    samples, dropped = bp.writer_counts("ffmpeg", lines)
    assert dropped == 0
    counts = [n for _t, n in samples]
    assert len(counts) > 10 and counts == sorted(counts) and counts[-1] > 300
    start, end = samples[2][0], samples[-2][0]
    fps = bp.in_window(samples, start, end)
    assert fps == round((samples[-2][1] - samples[2][1]) / (end - start), 2)
    assert 10 < fps < 40  # paced at 30 fps (-re)


def test_a_window_before_the_first_sample_is_not_measured():
    samples, _ = bp.writer_counts("ffmpeg", _lines("patched-ffmpeg-writer.log"))
    assert bp.in_window(samples, samples[0][0] - 10, samples[0][0] - 1) is None


def test_rows_and_ratios_come_from_the_recorded_guest_result():
    guest = json.loads((RECORDED / "guest.json").read_text())
    names = bench.PROGRAM_MODULES
    rows = bench.program_rows(guest, names)
    assert [(r["writer"], r["reader"]) for r in rows] == bench.PROGRAM_PAIRS
    ff = rows[0]
    p, s = ff["modules"]["patched"]["reader_fps"], ff["modules"]["debian-0.13.2"]["reader_fps"]
    assert ff["ratios"]["debian-0.13.2"] == round(p / s, 2)
    # 0.15.4 refused GStreamer's writer in that run: an error, and no ratio
    gst_gst = next(r for r in rows if (r["writer"], r["reader"]) == ("gst", "gst"))
    assert "error" in gst_gst["modules"]["debian-0.15.4"]
    assert gst_gst["ratios"]["debian-0.15.4"] is None
    doc = {"size": "640x480", "fps": 30, "window_s": 15.0, "release": guest["release"],
           "accel": "tcg", "versions": guest["versions"], "guest": guest}
    text = bench.render_programs(rows, names, doc)
    assert "ffmpeg -> ffmpeg" in text and "gst -> gst" in text
    assert "Not measured / errors:" in text and "debian-0.15.4" in text
