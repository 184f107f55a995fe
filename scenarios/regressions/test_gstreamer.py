"""Regressions, GStreamer: v4l2sink's "buffer N was not queued", v4l2src stopping, pipelines
through jpegdec or videoconvert, formats whose buffers are larger than their frames
(upstream reports; reports.toml says which)."""

from __future__ import annotations

import os
import time

import pytest
from lib.clients import Client
from lib.common import need_openers, new_writer_works
from lib.delivery import frames_in_file
from regress import (
    FPS,
    FrameFeeder,
    H,
    MmapCapture,
    W,
    bars_i420,
    frame_size,
    gst_env,
    gst_reader,
    gst_writer,
    i420_size,
    judge_reader_file,
    judge_writer,
    logdir,
    pattern_numbers,
    share_problems,
    wait_visible,
)

from loopqual.guest.programs.infra import need_program

FRAME = W * H * 2
NOT_QUEUED = "was not queued"
NO_FREE = "No free buffer found"
V4L2_DEBUG = "v4l2*:2"  # GStreamer's v4l2 elements' errors and warnings, as the reports show them


def _no_pool_errors(client: Client, what: str) -> None:
    text = client.output(200000)
    for needle in (NOT_QUEUED, NO_FREE):
        lines = [ln for ln in text.splitlines() if needle in ln]
        assert not lines, (f"{what}: GStreamer logged {len(lines)} x \"{needle}\" (an OUTPUT or "
                           f"CAPTURE DQBUF returned a buffer it never queued): {lines[0][-200:]!r}")


@pytest.mark.upstream_report(120)
@pytest.mark.programs("gst-launch-1.0")
@pytest.mark.rules("S6", "K2")
@pytest.mark.timeout(180)
def test_issue_120_v4l2sink_buffer_not_queued(cell, openers, record_property):
    """`gst-launch-1.0 videotestsrc ! v4l2sink` stopped at once: "buffer 2 was not queued, this
    indicate a driver bug", then "Internal data flow error".
    https://github.com/v4l2loopback/v4l2loopback/issues/120
    Judged: v4l2sink (fed numbered frames, so that they can be counted; GST_DEBUG for its v4l2
    elements as the reporter ran it) keeps running, logs no "was not queued", and its frames
    reach a reader (95%, by content)."""
    wr = gst_writer(cell, "120-v4l2sink", debug=V4L2_DEBUG)
    try:
        wr.feed(FRAME, FPS)
        judge_writer(cell, wr, FRAME, "v4l2sink", record_property)
        time.sleep(1.0)
        assert wr.alive(), f"v4l2sink stopped: {wr.output(800)!r}"
    finally:
        wr.stop()
    _no_pool_errors(wr, "v4l2sink")


@pytest.mark.upstream_report(83)
@pytest.mark.programs("gst-launch-1.0")
@pytest.mark.rules("K2", "S6", "D4")
@pytest.mark.timeout(240)
def test_issue_83_v4l2sink_then_v4l2src(cell, openers, record_property):
    """`gst-launch-1.0 videotestsrc ! v4l2sink` failed with "No free buffer found in the pool at
    index 1"; in 2025, with that sink running, `gst-launch-1.0 v4l2src ! autovideosink` failed
    to negotiate ("not-negotiated").
    https://github.com/v4l2loopback/v4l2loopback/issues/83
    Judged: v4l2sink fed numbered frames, then v4l2src reading 40 frames to a file: v4l2src
    negotiates and ends by itself with at least 95% of the frames published from its first to
    its last; v4l2sink logs no pool errors."""
    need_openers(cell, 2)
    out = os.path.join(logdir(cell, "gst"), "83-v4l2src.raw")
    wr = gst_writer(cell, "83-v4l2sink", debug=V4L2_DEBUG)
    rd = None
    try:
        wr.feed(FRAME, FPS)
        wait_visible(cell, wr)
        rd = gst_reader(cell, "83-v4l2src", out, 40, debug=V4L2_DEBUG)
        judge_reader_file(rd, lambda: frames_in_file(out, FRAME), "v4l2src after v4l2sink", record=record_property)
        assert wr.alive(), f"v4l2sink stopped: {wr.output(800)!r}"
    finally:
        for c in (rd, wr):
            if c is not None:
                c.stop()
    _no_pool_errors(wr, "v4l2sink")
    _no_pool_errors(rd, "v4l2src")


@pytest.mark.upstream_report(116)
@pytest.mark.programs("gst-launch-1.0")
@pytest.mark.rules("K2", "S6")
@pytest.mark.timeout(240)
def test_issue_116_jpegdec_into_v4l2sink(cell, openers, record_property):
    """`... ! jpegenc ! jpegdec ! v4l2sink` failed with "Internal data flow error" and "No free
    buffer found in the pool at index 1", where the same source straight into v4l2sink worked.
    https://github.com/v4l2loopback/v4l2loopback/issues/116
    Judged: I420 frames carrying their number as bars, through jpegenc ! jpegdec into v4l2sink
    (a videoconvert after jpegdec turns JPEG's full-range colorimetry into the device's, which
    GStreamer 1.22 negotiates and 2016's did not; v4l2sink's pool is still the one upstream
    elements fill): it keeps running without pool errors and its frames reach a reader, at
    least 95% of those published from the first to the last (numbers read from the bars)."""
    need_openers(cell, 2)
    wr = gst_writer(cell, "116-jpeg-v4l2sink", fmt="i420",
                    middle=("jpegenc", "!", "jpegdec", "!", "videoconvert", "!"), debug=V4L2_DEBUG)
    try:
        wr.feeder = FrameFeeder(wr.p.stdin, bars_i420, FPS)
        judge_writer(cell, wr, 0, "jpegenc ! jpegdec ! v4l2sink", record_property, bars=True)
    finally:
        wr.stop()
    _no_pool_errors(wr, "v4l2sink after jpegdec")


@pytest.mark.upstream_report(166)
@pytest.mark.programs("gst-launch-1.0")
@pytest.mark.rules("S7", "K2", "D4")
@pytest.mark.timeout(240)
def test_issue_166_v4l2src_yv12_buffer_not_queued(cell, openers, record_property):
    """A v4l2src reading YV12 from a loopback fed by a v4l2src ! v4l2sink pipeline (max_buffers=8)
    stopped at once: "buffer 1 was not queued, this indicate a driver bug", "Failed to allocate
    a buffer".
    https://github.com/v4l2loopback/v4l2loopback/issues/166
    Judged: v4l2sink writing YV12 320x180 at 30 frames a second (numbered frames), v4l2src
    reading 40 frames: it ends by itself, no "was not queued", at least 95% of the frames
    published from its first to its last, by content."""
    need_openers(cell, 2)
    size = frame_size("yv12", 320, 180)
    out = os.path.join(logdir(cell, "gst"), "166-v4l2src.raw")
    wr = gst_writer(cell, "166-v4l2sink-yv12", fmt="yv12", w=320, h=180, fps="30/1")
    rd = None
    try:
        wr.feed(size, 30)
        wait_visible(cell, wr)
        rd = gst_reader(cell, "166-v4l2src-yv12", out, 40, debug=V4L2_DEBUG)
        judge_reader_file(rd, lambda: frames_in_file(out, size), "v4l2src reading YV12", record=record_property)
    finally:
        for c in (rd, wr):
            if c is not None:
                c.stop()
    _no_pool_errors(rd, "v4l2src")


@pytest.mark.upstream_report(383)
@pytest.mark.programs("gst-launch-1.0")
@pytest.mark.rules("S2", "S6", "X1")
@pytest.mark.timeout(180)
def test_issue_383_two_v4l2sinks_on_one_device(cell, openers):
    """A pipeline teeing videotestsrc into two v4l2sinks on the same loopback device printed
    "buffer 0 was not queued, this indicate a driver bug" endlessly.
    https://github.com/v4l2loopback/v4l2loopback/issues/383
    Judged: the reporter's pipeline for up to 8 s: one writer at a time, the other refused, so
    the pipeline ends by itself with an error, never a "was not queued"; the refusal is S2's
    EBUSY at STREAMON, or with exclusive_caps=1 X1's EINVAL at REQBUFS when the first sink
    already streams (which sink comes first is GStreamer's race, and what it prints differs:
    "failed to start streaming", "Failed to allocated required memory"); afterwards the device
    takes a new writer and reader (C1)."""
    need_program("gst-launch-1.0")
    need_openers(cell, 2)
    sink = ("v4l2sink", f"device={cell.device}")
    c = Client(["gst-launch-1.0", f"--gst-debug={V4L2_DEBUG}", "videotestsrc", "is-live=true",
                "!", f"video/x-raw,format=YUY2,width={W},height={H},framerate={FPS}/1", "!",
                "tee", "name=t", "!", "queue", "!", *sink, "t.", "!", "queue", "!", *sink],
               "383-tee-two-v4l2sinks", logdir(cell, "gst"), env=gst_env(cell))
    try:
        rc = c.wait(8.0)
    finally:
        c.stop()
    _no_pool_errors(c, "two v4l2sinks on one device")
    text = c.output(20000)
    assert rc not in (None, 0) and "ERROR: from element" in text and "v4l2sink" in text, (
        f"two v4l2sinks streaming to one device: expected one of them refused (STREAMON EBUSY, "
        f"S2{'; or REQBUFS(OUTPUT) EINVAL once the other streams, X1' if cell.exclusive_caps else ''}"
        f") and the pipeline to end with that error within 8 s; it "
        f"{'still ran' if rc is None else f'exited {rc}'}; GStreamer said: {text[-800:]!r}")
    new_writer_works(cell, openers, "the two-sink pipeline stopped")


@pytest.mark.upstream_report(448)
@pytest.mark.programs("gst-launch-1.0")
@pytest.mark.rules("S7", "K2", "K5")
@pytest.mark.timeout(180)
def test_issue_448_i420_frame_length_for_webrtc(cell, openers):
    """libwebrtc (webrtc-streamer, Firefox) rejected frames from a GStreamer-fed I420 1280x720
    loopback ("Wrong incoming frame length": 1384448 bytes where 1382400 were expected), while
    640x512 worked.
    https://github.com/v4l2loopback/v4l2loopback/issues/448
    Judged: v4l2sink writing I420 320x240 (whose frame, 115200 bytes, is not a whole number of
    pages; numbered frames) and libwebrtc's capture calls: every frame's bytesused is exactly
    the I420 size libwebrtc computes, and the frames are whole and in order (90%)."""
    need_openers(cell, 2)
    size = i420_size(320, 240)
    wr = gst_writer(cell, "448-v4l2sink-i420", fmt="i420", w=320, h=240)
    try:
        wr.feed(size, FPS)
        wait_visible(cell, wr)
        cap = MmapCapture(cell.device, "Firefox (libwebrtc)")
        try:
            bufs = cap.frames(12)
        finally:
            cap.stop(rude=True)
    finally:
        wr.stop()
    wrong = sorted({b["bytesused"] for b in bufs if b["bytesused"] != size})
    numbers, torn = pattern_numbers(bufs, size)
    bad = share_problems(numbers, torn)
    if wrong:
        bad.insert(0, f"\"Wrong incoming frame length\": bytesused {wrong}, I420 320x240 is {size}")
    assert not bad, f"libwebrtc capture of v4l2sink's I420: {'; '.join(bad)}"


@pytest.mark.upstream_report(521)
@pytest.mark.programs("gst-launch-1.0")
@pytest.mark.rules("K2")
@pytest.mark.timeout(180)
def test_issue_521_v4l2sink_with_framerate_0(cell, openers, record_property):
    """A pipeline whose caps carry framerate 0/1 (multipart JPEG from an IP camera through
    jpegdec) failed to negotiate with v4l2sink: the device offered 1 fps at least.
    https://github.com/v4l2loopback/v4l2loopback/issues/521
    Judged: v4l2sink given caps with framerate=0/1 (numbered frames fed at 15 a second):
    negotiation succeeds and the frames reach a reader (95%, by content)."""
    wr = gst_writer(cell, "521-v4l2sink-0fps", fps="0/1")
    try:
        wr.feed(FRAME, FPS)
        judge_writer(cell, wr, FRAME, "v4l2sink with framerate 0/1", record_property)
    finally:
        wr.stop()


@pytest.mark.upstream_report(535)
@pytest.mark.rules("S7", "K2")
@pytest.mark.programs("gst-launch-1.0")
@pytest.mark.timeout(180)
def test_issue_535_vlc_keeps_getting_frames(cell, openers):
    """With `videotestsrc ! v4l2sink` writing (max_buffers=8), VLC showed the first frame and
    froze (a regression of ff4e9ee, the write and read positions taken modulo).
    https://github.com/v4l2loopback/v4l2loopback/issues/535
    Judged: v4l2sink fed numbered frames and VLC's mmap capture calls reading 30 frames: they
    keep coming, whole and in order, at least 90% of those published meanwhile."""
    need_openers(cell, 2)
    wr = gst_writer(cell, "535-v4l2sink")
    try:
        wr.feed(FRAME, FPS)
        wait_visible(cell, wr)
        vlc = MmapCapture(cell.device, "VLC")
        try:
            bufs = vlc.frames(30)
        finally:
            vlc.stop()
    finally:
        wr.stop()
    numbers, torn = pattern_numbers(bufs, FRAME)
    bad = share_problems(numbers, torn)
    assert not bad, f"VLC reading v4l2sink's frames: {'; '.join(bad)}"


@pytest.mark.upstream_report(657)
@pytest.mark.programs("gst-launch-1.0")
@pytest.mark.rules("K2")
@pytest.mark.timeout(180)
def test_issue_657_videoconvert_into_v4l2sink(cell, openers, record_property):
    """After a system update `gst-launch-1.0 videotestsrc ! videoconvert ! v4l2sink` failed at
    once with "Internal data stream error" (and v4l2-relayd crashed), while the same source to
    autovideosink worked.
    https://github.com/v4l2loopback/v4l2loopback/issues/657
    Judged: frames carrying their number as bars through videoconvert into v4l2sink (which
    picks the format it likes): v4l2sink runs and its frames reach a reader, at least 95% of
    those published from the first to the last (numbers read from the bars)."""
    wr = gst_writer(cell, "657-videoconvert-v4l2sink", fmt="i420", middle=("videoconvert", "!"))
    try:
        wr.feeder = FrameFeeder(wr.p.stdin, bars_i420, FPS)
        judge_writer(cell, wr, 0, "videoconvert ! v4l2sink", record_property, bars=True)
    finally:
        wr.stop()
    text = wr.output(20000)
    assert "Internal data stream error" not in text, f"v4l2sink: {text[-600:]!r}"
