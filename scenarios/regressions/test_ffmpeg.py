"""Regressions, ffmpeg as writer and as reader (upstream reports; reports.toml says which)."""

from __future__ import annotations

import os
import time

import pytest
from lib.common import need_openers
from lib.delivery import PacedWriter, frames_in_file, identify, program_problems, span_figures
from lib.v4l2 import OUT, Device
from regress import (
    FPS,
    MIN_FRAMES,
    MIN_RATIO_SEVERAL,
    START_TIMEOUT,
    YU12,
    H,
    W,
    ffmpeg_reader,
    ffmpeg_writer,
    file_bytes,
    frames_fb,
    gst_writer,
    i420_size,
    judge_reader_file,
    judge_writer,
    logdir,
    need_exclusive,
    wait_file_frames,
    wait_visible,
)

FRAME = W * H * 2
EXPECTED_BYTES = "were expected"  # ffmpeg: "Dequeued v4l2 buffer contains X bytes, but Y were expected"


@pytest.mark.upstream_report(190)
@pytest.mark.programs("gst-launch-1.0", "ffmpeg")
@pytest.mark.rules("K1", "K2", "S7")
@pytest.mark.timeout(240)
def test_issue_190_ffmpeg_reads_gstreamer_yv12(cell, openers, record_property):
    """ffmpeg reading a loopback fed YV12 1920x1080 by GStreamer's v4l2sink failed: "Dequeued
    v4l2 buffer contains 3112960 bytes, but 3110400 were expected" (v4l2sink sets bytesused
    to the page-rounded buffer length).
    https://github.com/v4l2loopback/v4l2loopback/issues/190
    Judged: v4l2sink writing YV12 160x120 (28800 bytes, not a whole number of pages; numbered
    frames) and ffmpeg reading 40 frames: ffmpeg ends by itself, never complains of the byte
    count, and writes at least 95% of the frames published from its first to its last."""
    need_openers(cell, 2)
    size = i420_size(W, H)
    out = os.path.join(logdir(cell, "ffmpeg"), "190-ffmpeg.raw")
    wr = gst_writer(cell, "190-v4l2sink-yv12", fmt="yv12")
    rd = None
    try:
        wr.feed(size, FPS)
        wait_visible(cell, wr)
        rd = ffmpeg_reader(cell, "190-ffmpeg-reader", out, 40)
        judge_reader_file(rd, lambda: yv12_frames_from_ffmpeg(out, W, H),
                          "ffmpeg reading v4l2sink's YV12", record=record_property)
    finally:
        for c in (rd, wr):
            if c is not None:
                c.stop()
    assert EXPECTED_BYTES not in rd.output(20000), f"ffmpeg: {rd.output(600)!r}"


def yv12_frames_from_ffmpeg(path: str, w: int, h: int) -> list[tuple[int, bool]]:
    """(number, whole) of each frame ffmpeg wrote from a YV12 device: ffmpeg decodes YV12 to
    its yuv420p (U before V), so the two chroma planes come back in the writer's order first."""
    size, y, c = i420_size(w, h), w * h, ((w + 1) // 2) * ((h + 1) // 2)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return []
    frames = (data[off:off + size] for off in range(0, len(data) - size + 1, size))
    return [identify(f[:y] + f[y + c:y + 2 * c] + f[y:y + c], size) for f in frames]


@pytest.mark.upstream_report(459)
@pytest.mark.programs("ffmpeg")
@pytest.mark.rules("A3", "A4", "K6")
@pytest.mark.timeout(300)
def test_issue_459_second_ffmpeg_reader_spares_the_first(cell, openers, record_property):
    """Two ffmpeg processes reading one loopback device: the second one's REQBUFS reset the
    buffers under the first, whose DQBUF then failed with "Invalid argument".
    https://github.com/v4l2loopback/v4l2loopback/issues/459
    Judged: a paced writer, a first ffmpeg reading on, a second ffmpeg reading 30 frames and
    ending: the second ends by itself with 90% of its frames; the first is still running and
    got at least 90% of the frames published from the second's start on, by content."""
    need_openers(cell, 3)
    d = logdir(cell, "ffmpeg")
    out1, out2 = os.path.join(d, "459-first.raw"), os.path.join(d, "459-second.raw")
    r1 = r2 = None
    with PacedWriter(cell.device, FPS, "qbuf", count=2) as w:
        try:
            r1 = ffmpeg_reader(cell, "459-ffmpeg-first", out1, 1000000)
            have = wait_file_frames(out1, w.size, 5, r1, START_TIMEOUT)
            assert have >= 5, f"the first ffmpeg got {have} frames: {r1.output(600)!r}"
            r2 = ffmpeg_reader(cell, "459-ffmpeg-second", out2, 30)
            before = os.path.getsize(out1) // w.size
            judge_reader_file(r2, lambda: frames_in_file(out2, w.size), "the second ffmpeg (30 frames)",
                              MIN_RATIO_SEVERAL, record_property)
            time.sleep(1.0)
            alive = r1.alive()
        finally:
            for c in (r2, r1):
                if c is not None:
                    c.stop()
        fig = span_figures(frames_in_file(out1, w.size)[before:])
    record_property("first ffmpeg from the second's start", fig)
    problems = program_problems(fig, MIN_RATIO_SEVERAL, MIN_FRAMES)
    assert alive and not problems, (
        f"the first ffmpeg while a second one started and ended: alive {alive}; "
        f"{'; '.join(problems) or 'frames fine'} [{fig}]. Its output: {r1.output(800)!r}")
    assert "error" not in w.report, f"the writer: {w.report.get('error')}"


@pytest.mark.upstream_report(484)
@pytest.mark.programs("ffmpeg")
@pytest.mark.rules("W1", "K1")
@pytest.mark.timeout(180)
def test_issue_484_ffmpeg_writer_without_streamon(cell, openers, record_property):
    """After commit 3312a6d (write() only by openers that STREAMON first) `ffmpeg -i file -f
    v4l2 /dev/video2` could no longer write: ffmpeg's writer never calls STREAMON.
    https://github.com/v4l2loopback/v4l2loopback/issues/484
    Judged: ffmpeg writing yuv420p (G_FMT, S_FMT, write() per frame; fed numbered frames):
    its frames reach a reader, at least 95% of them, by content (W1: write() sets itself up)."""
    size = i420_size(W, H)
    c = ffmpeg_writer(cell, "484-ffmpeg-writer", pix_fmt="yuv420p")
    try:
        c.feed(size, FPS)
        judge_writer(cell, c, size, "ffmpeg writing yuv420p", record_property)
    finally:
        c.stop()


@pytest.mark.upstream_report(540)
@pytest.mark.programs("ffmpeg")
@pytest.mark.rules("S1", "W1", "S7", "D4")
@pytest.mark.timeout(180)
def test_issue_540_reader_not_stuck_on_first_frame(cell, openers, record_property):
    """A writer doing S_FMT(YU12), STREAMON(OUTPUT) and a write() every 33 ms: ffplay showed a
    single frame and never animated, and Chromium's getUserMedia track ended at once.
    https://github.com/v4l2loopback/v4l2loopback/issues/540
    Judged: the reporter's writer calls (320x240 YU12, STREAMON without REQBUFS, write() per
    frame at 15 a second) and ffmpeg reading 40 frames (ffplay's demuxer): ffmpeg ends by
    itself with at least 95% of the frames published from its first to its last, by content
    (a reader stuck on one frame repeats it)."""
    need_openers(cell, 2)
    w = openers.proc("540-writer", flags=os.O_RDWR)
    if cell.keep_format:
        size = w.call("g_fmt", OUT)["sizeimage"]
    else:
        f = w.call("s_fmt", OUT, 320, 240, YU12)
        assert f["pixelformat"] == YU12, f"S_FMT(OUTPUT, 320x240 YU12): got {f}"
        size = f["sizeimage"]
    w.call("streamon", OUT)
    w.call("start_writer", "write", fps=FPS, set_format=False)
    out = os.path.join(logdir(cell, "ffmpeg"), "540-ffmpeg.raw")
    rd = ffmpeg_reader(cell, "540-ffmpeg-reader", out, 40)
    try:
        judge_reader_file(rd, lambda: frames_fb(file_bytes(out), size), "ffmpeg reading the write() writer",
                          record=record_property)
    finally:
        rd.stop()
    st = w.call("stop_pump")
    assert st["error"] is None, f"the writer: {st['error']}"


@pytest.mark.upstream_report(663)
@pytest.mark.programs("ffmpeg")
@pytest.mark.rules("S3", "K1")
@pytest.mark.timeout(240)
def test_issue_663_reader_before_any_writer(cell, openers, record_property):
    """`ffplay /dev/video100` with no writer failed: first "ioctl(VIDIOC_DQBUF): Invalid
    argument", after 24cc1e8 "Insufficient buffer memory", on current main STREAMON gave
    "Input/output error" (0.12.7 waited for a writer).
    https://github.com/v4l2loopback/v4l2loopback/issues/663
    Judged with exclusive_caps=0: ffmpeg (ffplay's demuxer) opened with no writer is still
    waiting after 3 s; once a writer streams it gets the frames (95%, by content) and ends by
    itself (S3: a reader may stream before any writer; DQBUF waits)."""
    need_exclusive(cell, False, "an exclusive_caps=1 node with no writer offers no CAPTURE at all "
                                "(X1): no reader can start there")
    need_openers(cell, 2)
    if not cell.keep_format:
        with Device(cell.device) as d:
            d.s_fmt(OUT, W, H)  # small frames under TCG; the reader's claim pins this (A2)
    out = os.path.join(logdir(cell, "ffmpeg"), "663-ffmpeg.raw")
    rd = ffmpeg_reader(cell, "663-ffmpeg-no-writer", out, 30)
    try:
        time.sleep(3.0)
        assert rd.alive(), (f"ffmpeg opened with no writer exited ({rd.p.returncode}) instead of "
                            f"waiting for frames: {rd.output(600)!r}")
        with PacedWriter(cell.device, FPS, "qbuf", count=2) as w:
            judge_reader_file(rd, lambda: frames_in_file(out, w.size), "ffmpeg started before the writer",
                              record=record_property)
    finally:
        rd.stop()
