"""Regressions, exclusive_caps and the clients that depend on it: OBS's virtual camera
started again, write()-only writers that close, Chromium's listing (upstream reports;
reports.toml says which)."""

from __future__ import annotations

import os
import re

import pytest
from lib.clients import Client
from lib.common import (
    Reader,
    advertises_output_when_idle,
    caps_str,
    need_openers,
    start_proc_writer,
    sysfs_attr,
)
from lib.v4l2 import (
    CAP,
    CAP_VIDEO_CAPTURE,
    CAP_VIDEO_OUTPUT,
    OUT,
    YUYV,
    Device,
    fourcc,
    frame_bytes,
)
from regress import (
    FPS,
    START_TIMEOUT,
    H,
    MmapCapture,
    ObsCamera,
    W,
    chrome_lists,
    chrome_min_size,
    fb_numbers,
    ffmpeg_writer,
    i420_size,
    judge_writer,
    logdir,
    need_exclusive,
    pattern_numbers,
    share_problems,
    wait_visible,
)

from loopqual.guest.programs.infra import need_program


def _no_restart_with_kept_format(cell, who: str) -> None:
    if cell.exclusive_caps and cell.keep_format:
        pytest.skip(f"with exclusive_caps=1 and keep_format=1 the first writer's format is kept and "
                    f"the node shows CAPTURE only (X1): {who} needs OUTPUT to start again, by design")


def _viewer_gets(r: Reader, frame: int, what: str) -> None:
    try:
        r.get_frame(frame, 3.0)
    except OSError as exc:
        pytest.fail(f"{what}: frame {frame} did not reach the viewer: {exc}")


def _v4l2ctl_device_caps(cell) -> str:
    """The "Device Caps" block of `v4l2-ctl -D` (what the reporters looked at)."""
    c = Client(["v4l2-ctl", "-d", cell.device, "-D"], "v4l2-ctl-D", logdir(cell, "v4l2-ctl"))
    rc = c.wait(60)
    c.stop()
    text = c.output(4000)
    assert rc == 0, f"v4l2-ctl -D: exit {rc}: {text!r}"
    m = re.search(r"Device Caps\s*:[^\n]*\n((?:\t\t[^\n]*\n)*)", text)
    assert m, f"v4l2-ctl -D printed no Device Caps block: {text!r}"
    return m[1]


@pytest.mark.upstream_report(442)
@pytest.mark.rules("K3", "X1", "C3")
def test_issue_442_obs_restart_exclusive_caps(cell, openers):
    """With exclusive_caps=1 OBS's virtual camera started once; after "Stop Virtual Camera" a
    second start failed ("Failed to start virtual camera") until the module was reloaded.
    https://github.com/v4l2loopback/v4l2loopback/issues/442
    Judged: OBS 27's calls (QUERYCAP needing OUTPUT, G_FMT, S_PARM, S_FMT YUYV, write() per frame,
    close; no STREAMON) three times in a row: each start finds OUTPUT, its frames reach a viewer,
    and after each stop the idle node offers OUTPUT again."""
    _no_restart_with_kept_format(cell, "OBS")
    need_openers(cell, 2)
    for start in (1, 2, 3):
        obs = ObsCamera(cell.device, streamon=False, what=f"OBS 27 (start {start})")
        try:
            obs.frame()
            r = Reader(openers.fd())
            for _ in range(3):
                _viewer_gets(r, obs.frame(), f"OBS start {start}")
            r.dev.close()
        finally:
            obs.stop()
        advertises_output_when_idle(cell, f"OBS's stop number {start}")


@pytest.mark.upstream_report(470)
@pytest.mark.programs("v4l2-ctl")
@pytest.mark.rules("W1", "C3", "X1")
def test_issue_470_write_without_streamon_keeps_output(cell, openers):
    """A writer that sets the format and write()s frames without VIDIOC_STREAMON, then closes,
    left the device without V4L2_CAP_VIDEO_OUTPUT (`v4l2-ctl -D`): no writer could attach
    again.
    https://github.com/v4l2loopback/v4l2loopback/issues/470
    Judged: the reporter's calls (open O_RDWR|O_CLOEXEC, QUERYCAP, S_FMT YUYV with bytesperline
    and sizeimage, write(), close) twice; after each close `v4l2-ctl -D` lists Video Output
    among the device caps (and, with exclusive_caps=1, not Video Capture), sysfs state reads
    "output", and the second writer's frames reach a reader."""
    _no_restart_with_kept_format(cell, "a second S_FMT writer")
    need_program("v4l2-ctl")
    need_openers(cell, 2)
    for run in (1, 2):
        d = Device(cell.device, os.O_RDWR | os.O_CLOEXEC)
        try:
            d.querycap()
            size = d.s_fmt(OUT, W, H, YUYV, W * H * 2)["sizeimage"]
            d.write(frame_bytes(0, size))
            r = Reader(openers.fd())
            for k in range(1, 4):
                d.write(frame_bytes(k, size))
                _viewer_gets(r, k, f"write() writer, run {run}")
            r.dev.close()
        finally:
            d.close()
        caps = _v4l2ctl_device_caps(cell)
        assert "Video Output" in caps, (f"after write() writer run {run} closed: v4l2-ctl -D "
                                        f"Device Caps without Video Output: {caps!r}")
        if cell.exclusive_caps:
            assert "Video Capture" not in caps, (
                f"exclusive_caps=1 after the writer closed: Device Caps still show Video Capture: "
                f"{caps!r}")
        state = sysfs_attr(cell, "state")
        assert state in (None, "output"), f"sysfs state after the writer closed: {state!r}"


@pytest.mark.upstream_report(525)
@pytest.mark.programs("ffmpeg")
@pytest.mark.rules("K1", "C3", "X1")
@pytest.mark.timeout(300)
def test_issue_525_ffmpeg_writes_again_after_its_first_run(cell, openers, record_property):
    """After one `ffmpeg ... -f v4l2 -pix_fmt yuv420p /dev/video3` reached the end of its input,
    a second identical ffmpeg failed with "ioctl(VIDIOC_G_FMT): Invalid argument" until the
    module was reloaded (exclusive_caps=1).
    https://github.com/v4l2loopback/v4l2loopback/issues/525
    Judged: ffmpeg fed numbered yuv420p frames, its input then ending (stdin closed), twice:
    each run exits 0 after its input ends, and each run's frames reach a reader (95%, by
    content)."""
    _no_restart_with_kept_format(cell, "ffmpeg's G_FMT(OUTPUT)")
    size = i420_size(W, H)
    for run in (1, 2):
        c = ffmpeg_writer(cell, f"ffmpeg-run{run}", pix_fmt="yuv420p")
        try:
            c.feed(size, FPS)
            judge_writer(cell, c, size, f"ffmpeg run {run}", record_property)
            c.feeder.stop()  # the end of its input: ffmpeg finishes as after a file
            rc = c.wait(30)
            assert rc == 0, f"ffmpeg run {run} after the end of its input: exit {rc}: {c.output(600)!r}"
        finally:
            c.stop()
        advertises_output_when_idle(cell, f"ffmpeg run {run} ended")


@pytest.mark.upstream_report(631)
@pytest.mark.rules("W1", "X1", "K4")
@pytest.mark.timeout(120)
def test_issue_631_write_only_writer_listed_by_chromium(cell, openers):
    """A pyfakewebcam writer (open O_WRONLY, G_FMT, S_FMT YUYV, write() per frame) played in
    ffplay but neither Chromium nor Firefox listed the camera (exclusive_caps=1, kernel 6.12).
    https://github.com/v4l2loopback/v4l2loopback/issues/631
    Judged: pyfakewebcam's calls at 320x180, 15 frames a second: with exclusive_caps=1 Chromium's
    enumeration lists the node (CAPTURE without OUTPUT), and its capture gets the frames whole,
    in order, at least 90% of those published, each at least Chromium's YUYV size."""
    need_openers(cell, 2)
    w = openers.proc("pyfakewebcam", flags=os.O_WRONLY | os.O_SYNC)
    w.call("g_fmt", OUT)
    if cell.keep_format:
        info = start_proc_writer(cell, w, "write", fps=FPS)
    else:
        info = w.call("start_writer", "write", width=320, height=180, fps=FPS)
    size = info["format"]["sizeimage"]
    if cell.exclusive_caps:
        listed, caps = chrome_lists(cell.device)
        assert listed, (f"Chromium's enumeration with the write() writer streaming: expected "
                        f"CAPTURE without OUTPUT, got {caps_str(caps)}")
    cap = MmapCapture(cell.device, "Chromium")
    try:
        need = chrome_min_size(cap.fmt)
        bufs = cap.frames(12)
    finally:
        cap.stop()
    short = [b["bytesused"] for b in bufs if b["bytesused"] < need]
    numbers, torn = fb_numbers(bufs, size)
    bad = share_problems(numbers, torn)
    if short:
        bad.append(f"bytesused {short} below Chromium's {need}")
    st = w.call("pump_status")
    assert not bad and st["error"] is None, (f"Chromium capture of a write() writer: "
                                             f"{'; '.join(bad)}; writer error {st['error']}")


@pytest.mark.upstream_report(78)
@pytest.mark.rules("X1", "K4")
def test_issue_78_chromium_lists_loopback_with_writer(cell, openers):
    """Chrome/Chromium did not list the loopback device, while ffmpeg, ffplay and VLC used it.
    https://github.com/v4l2loopback/v4l2loopback/issues/78
    Judged (the maintainer's answer, exclusive_caps=1): idle, the node is not a camera for
    Chromium (OUTPUT only); with a writer streaming, Chromium's enumeration lists it and its
    capture gets the frames whole and in order (90%); when the writer has gone, the node is
    OUTPUT only again, and a new writer is listed again."""
    need_exclusive(cell, True, "with exclusive_caps=0 the node is CAPTURE and OUTPUT at once, "
                               "which Chromium never lists (X3)")
    if cell.keep_format:
        pytest.skip("keep_format=1 shows CAPTURE with a kept format and no writer (X1)")
    need_openers(cell, 2)
    listed, caps = chrome_lists(cell.device)
    assert not listed and caps & CAP_VIDEO_OUTPUT, (
        f"idle node: expected OUTPUT only (no camera yet), got {caps_str(caps)}")
    for run in (1, 2):
        w = openers.proc(f"writer-{run}")
        info = w.call("start_writer", "mmap", count=2, fps=FPS)
        listed, caps = chrome_lists(cell.device)
        assert listed, (f"writer {run} streaming: Chromium lists only CAPTURE-without-OUTPUT nodes, "
                        f"got {caps_str(caps)}")
        cap = MmapCapture(cell.device, "Chromium")
        try:
            bufs = cap.frames(10)
        finally:
            cap.stop()
        numbers, torn = fb_numbers(bufs, info["format"]["sizeimage"])
        bad = share_problems(numbers, torn)
        assert not bad, f"Chromium capture, writer {run}: {'; '.join(bad)}"
        w.stop()
        advertises_output_when_idle(cell, f"writer {run} closed")


@pytest.mark.upstream_report(591)
@pytest.mark.programs("ffmpeg")
@pytest.mark.rules("K4", "X1", "K1")
@pytest.mark.timeout(240)
def test_issue_591_chrome_detects_ffmpeg_camera(cell, openers, record_property):
    """Chrome did not detect a loopback fed by `ffmpeg -loop 1 -re -i foo.jpg -f v4l2 -vcodec
    rawvideo -pix_fmt yuv420p /dev/video2`, though ffplay showed it (module loaded without
    options).
    https://github.com/v4l2loopback/v4l2loopback/issues/591
    Judged with exclusive_caps=1: ffmpeg writing yuv420p 320x240 (fed numbered frames instead of
    a looped still, so frames can be counted) is listed by Chromium's enumeration, and Chromium's
    capture gets frames of at least its I420 size, whole, in order, 90% of those published."""
    need_exclusive(cell, True, "with exclusive_caps=0 the node shows CAPTURE and OUTPUT at once "
                               "and Chromium lists no such node; the contract keeps both "
                               "directions there (X3)")
    need_openers(cell, 2)
    size = i420_size(320, 240)
    c = ffmpeg_writer(cell, "ffmpeg-yuv420p", w=320, h=240, pix_fmt="yuv420p")
    try:
        c.feed(size, FPS)
        wait_visible(cell, c, START_TIMEOUT)
        listed, caps = chrome_lists(cell.device)
        assert listed, (f"Chromium's enumeration with ffmpeg writing: expected CAPTURE without "
                        f"OUTPUT, got {caps_str(caps)}")
        cap = MmapCapture(cell.device, "Chromium")
        try:
            need = chrome_min_size(cap.fmt)
            bufs = cap.frames(12)
        finally:
            cap.stop()
        short = [b["bytesused"] for b in bufs if b["bytesused"] < need]
        numbers, torn = pattern_numbers(bufs, size)
        bad = share_problems(numbers, torn)
        if short:
            bad.append(f"bytesused {short} below Chromium's {need}")
        assert not bad and c.alive(), (f"Chromium capture of ffmpeg's camera: {'; '.join(bad)}; "
                                       f"ffmpeg alive {c.alive()}: {c.output(600)!r}")
    finally:
        c.stop()


@pytest.mark.upstream_report(622)
@pytest.mark.rules("S1", "K3", "C3")
def test_issue_622_obs_streamon_without_reqbufs(cell, openers):
    """From 0.14.0 OBS's virtual camera no longer started: its VIDIOC_STREAMON(OUTPUT), issued
    after S_FMT without REQBUFS, got EINVAL.
    https://github.com/v4l2loopback/v4l2loopback/issues/622
    Judged: OBS up to 31.0's calls (QUERYCAP, G_FMT, S_PARM, S_FMT YUYV, STREAMON(OUTPUT) without
    REQBUFS, write() per frame, close), twice: STREAMON succeeds (S1's exception for an opener
    that never asked for buffers), frames reach a viewer, and the camera starts again."""
    _no_restart_with_kept_format(cell, "OBS")
    need_openers(cell, 2)
    for start in (1, 2):
        obs = ObsCamera(cell.device, streamon=True, what=f"OBS 31.0 (start {start})")
        try:
            obs.frame()
            r = Reader(openers.fd())
            for _ in range(3):
                _viewer_gets(r, obs.frame(), f"OBS 31.0 start {start}")
            r.dev.close()
        finally:
            obs.stop()
        advertises_output_when_idle(cell, f"OBS's stop number {start}")


@pytest.mark.upstream_report(642)
@pytest.mark.rules("S1", "X1", "K3")
def test_issue_642_obs_camera_shows_capture(cell, openers):
    """With 0.15.0 and OBS 31.0.3 the virtual camera did not start and the node kept showing
    "Video Output" only (908x512 YUYV set): no camera with Video Capture appeared.
    https://github.com/v4l2loopback/v4l2loopback/issues/642
    Judged: OBS 31.0's calls at the reporter's 908x512 YUYV: once it writes, a new opener's
    QUERYCAP shows CAPTURE (and, with exclusive_caps=1, not OUTPUT), G_FMT(CAPTURE) is 908x512
    YUYV, and frames reach a viewer."""
    _no_restart_with_kept_format(cell, "OBS")
    need_openers(cell, 2)
    obs = ObsCamera(cell.device, 908, 512, streamon=True, what="OBS 31.0.3")
    try:
        obs.frame()
        with Device(cell.device) as probe:
            caps = probe.device_caps()
            assert caps & CAP_VIDEO_CAPTURE, (f"OBS writing: a new opener sees {caps_str(caps)}: "
                                              f"no Video Capture, no camera")
            if cell.exclusive_caps:
                assert not caps & CAP_VIDEO_OUTPUT, (
                    f"exclusive_caps=1 with OBS writing: expected CAPTURE only, got "
                    f"{caps_str(caps)}")
            f = probe.g_fmt(CAP)
        assert (f["width"], f["height"], f["pixelformat"]) == (908, 512, YUYV), (
            f"G_FMT(CAPTURE) with OBS writing 908x512 YUYV: got {f['width']}x{f['height']} "
            f"{fourcc(f['pixelformat'])}")
        r = Reader(openers.fd())
        for _ in range(3):
            _viewer_gets(r, obs.frame(), "OBS 31.0.3")
        r.dev.close()
    finally:
        obs.stop()
