"""Regressions, formats and sizes: odd widths and Chromium's frame length, extreme sizes, G_FMT
of the capture side with no writer (upstream reports; reports.toml says which)."""

from __future__ import annotations

import re

import pytest
from lib.clients import Client
from lib.common import need_openers
from lib.v4l2 import CAP, OUT, YUYV, Device, fourcc
from regress import (
    START_TIMEOUT,
    YU12,
    MmapCapture,
    chrome_lists,
    chrome_min_size,
    ffmpeg_writer,
    judge_writer,
    logdir,
    need_exclusive,
    wait_visible,
)

from loopqual.guest.programs.infra import need_program


@pytest.mark.upstream_report(472)
@pytest.mark.programs("ffmpeg")
@pytest.mark.rules("K4", "F1")
@pytest.mark.timeout(240)
def test_issue_472_chrome_takes_odd_width_i420(cell, openers, record_property):
    """Chrome showed "Camera muted by system" for a loopback fed 853x480 yuv420p by ffmpeg:
    odd widths gave frames shorter than Chrome's size of the format ("Dequeued v4l2 buffer
    contains invalid length").
    https://github.com/v4l2loopback/v4l2loopback/issues/472
    Judged: the reporter's ffmpeg writer (scale=853:480,format=yuv420p) and Chromium's capture
    calls: the node is listed (exclusive_caps=1) and every frame's bytesused is at least
    Chromium's I420 size of the format the device reports (chroma planes of ceil(w/2) x
    ceil(h/2)), five frames in a row."""
    need_program("ffmpeg")
    need_openers(cell, 2)
    c = Client(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi",
                "-i", "color=c=gray:s=640x480:r=10", "-vf", "scale=853:480,format=yuv420p",
                "-pix_fmt", "yuv420p", "-r", "10", "-f", "v4l2", cell.device],
               "ffmpeg-853x480", logdir(cell, "ffmpeg"))
    try:
        wait_visible(cell, c, START_TIMEOUT)
        if cell.exclusive_caps:
            listed, caps = chrome_lists(cell.device)
            assert listed, (f"Chromium's enumeration with ffmpeg writing: expected CAPTURE without "
                            f"OUTPUT, got device_caps {caps:#x}")
        cap = MmapCapture(cell.device, "Chromium")
        try:
            fmt = cap.fmt
            need = chrome_min_size(fmt)
            record_property("format", f"{fourcc(fmt['pixelformat'])} {fmt['width']}x{fmt['height']} "
                                      f"sizeimage {fmt['sizeimage']}, Chromium needs {need}")
            assert fmt["pixelformat"] == YU12, (
                f"G_FMT/S_FMT(CAPTURE) with ffmpeg writing yuv420p: expected YU12, got "
                f"{fourcc(fmt['pixelformat'])}")
            bufs = cap.frames(5)
            short = [b["bytesused"] for b in bufs if b["bytesused"] < need]
            assert not short, (
                f"Chromium: \"Dequeued v4l2 buffer contains invalid length ({short[0]} bytes)\": "
                f"frames of {fmt['width']}x{fmt['height']} YU12 must hold at least {need} bytes "
                f"(Chromium's I420 size; sizeimage says {fmt['sizeimage']}), got {short}")
        finally:
            cap.stop()
        assert c.alive(), f"ffmpeg exited: {c.output(600)!r}"
    finally:
        c.stop()


@pytest.mark.upstream_report(573)
@pytest.mark.programs("ffmpeg")
@pytest.mark.rules("F1", "F4", "K1")
@pytest.mark.timeout(180)
def test_issue_573_resolution_2048x1(cell, openers, record_property):
    """A 2048x1 format could not be set: sizes below 48x32 were refused.
    https://github.com/v4l2loopback/v4l2loopback/issues/573
    Judged: TRY_FMT(OUTPUT, 2048x1 YUYV) keeps 2048x1, and ffmpeg writing 2048x1 YUYV (the
    reporter's producer, fed numbered frames) reaches a reader with that format: at least 95%
    of its frames, whole, counted by content."""
    need_openers(cell, 2)
    if not cell.keep_format:
        with Device(cell.device) as d:
            t = d.try_fmt(OUT, 2048, 1, YUYV)
        assert (t["width"], t["height"]) == (2048, 1), (
            f"TRY_FMT(OUTPUT, 2048x1 YUYV): expected 2048x1 kept, got {t['width']}x{t['height']}")
    c = ffmpeg_writer(cell, "ffmpeg-2048x1", w=2048, h=1)
    try:
        c.feed(4096, 15)
        wait_visible(cell, c, START_TIMEOUT)
        with Device(cell.device) as d:
            f = d.g_fmt(CAP)
        assert (f["width"], f["height"], f["pixelformat"]) == (2048, 1, YUYV), (
            f"G_FMT(CAPTURE) with ffmpeg writing 2048x1 YUYV: got {f['width']}x{f['height']} "
            f"{fourcc(f['pixelformat'])}")
        judge_writer(cell, c, 4096, "ffmpeg writing 2048x1", record_property)
    finally:
        c.stop()


@pytest.mark.upstream_report(436)
@pytest.mark.programs("v4l2-ctl")
@pytest.mark.rules("F1", "X3")
@pytest.mark.timeout(120)
def test_issue_436_get_fmt_video_without_writer(cell, openers):
    """`v4l2-ctl --get-fmt-video` failed with "VIDIOC_G_FMT: failed: Invalid argument" on a
    device with no writer.
    https://github.com/v4l2loopback/v4l2loopback/issues/436
    Judged: with exclusive_caps=0 and no writer, v4l2-ctl --get-fmt-video exits 0 and shows
    the device format, the one G_FMT(OUTPUT) reports (F1)."""
    need_exclusive(cell, False, "an exclusive_caps=1 node with no writer offers OUTPUT only (X1), "
                                "where G_FMT on CAPTURE is refused by design")
    need_program("v4l2-ctl")
    with Device(cell.device) as d:
        out_fmt = d.g_fmt(OUT)
    c = Client(["v4l2-ctl", "-d", cell.device, "--get-fmt-video"], "v4l2-ctl-get-fmt",
               logdir(cell, "v4l2-ctl"))
    rc = c.wait(60)
    c.stop()
    text = c.output(3000)
    assert rc == 0, f"v4l2-ctl --get-fmt-video with no writer: expected exit 0, got {rc}: {text!r}"
    m = re.search(r"Width/Height\s*:\s*(\d+)/(\d+)", text)
    assert m, f"v4l2-ctl --get-fmt-video printed no Width/Height: {text!r}"
    assert (int(m[1]), int(m[2])) == (out_fmt["width"], out_fmt["height"]), (
        f"G_FMT(CAPTURE) shows {m[1]}x{m[2]}, G_FMT(OUTPUT) {out_fmt['width']}x"
        f"{out_fmt['height']}: one device format expected on both directions (F1)")
