"""Regressions, keep_format (and the sustain_framerate and timeout controls that go with it):
a format set once and writers coming and going (upstream reports; reports.toml says which)."""

from __future__ import annotations

import time

import pytest
from lib.common import (
    FileWriter,
    Reader,
    Writer,
    advertises_output_when_idle,
    need_openers,
)
from lib.delivery import pattern, program_problems, span_figures
from lib.v4l2 import (
    CAP,
    CAP_VIDEO_CAPTURE,
    CAP_VIDEO_OUTPUT,
    CID_KEEP_FORMAT,
    CID_SUSTAIN_FRAMERATE,
    CID_TIMEOUT,
    OUT,
    Device,
    fourcc,
)
from regress import (
    FPS,
    MIN_FRAMES,
    MIN_RATIO,
    MIN_RATIO_SEVERAL,
    START_TIMEOUT,
    UYVY,
    WARMUP,
    FrameFeeder,
    ThreadReader,
    ffmpeg_writer,
    gst_env,
    gst_writer,
    need_exclusive,
    run_program,
)

from loopqual.guest.programs.infra import need_program

TS_MONOTONIC = 0x2000  # V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC (mask 0xe000)
MAX_LAG_S = 1.5  # below the 2 s gap the bug adds as delay, above a TCG guest's usual stalls


def _restore_controls(cell, timeout: bool = False) -> None:
    """Put the controls back to the cell's own values (keep_format) and off (the others)."""
    with Device(cell.device) as d:
        d.s_ctrl(CID_SUSTAIN_FRAMERATE, 0)
        if timeout:
            d.s_ctrl(CID_TIMEOUT, 0)
        d.s_ctrl(CID_KEEP_FORMAT, 0)
        if cell.keep_format:
            d.s_ctrl(CID_KEEP_FORMAT, 1)


def _wait_frames(reader: ThreadReader, since: int, want: int, client, timeout: float,
                 first: int = 0) -> None:
    """Until the reader has `want` whole frames numbered from `first` after index `since`, the
    writer program exits, or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and client.alive():
        got = [g for g in reader.got[since:] if g["whole"] and g["n"] >= first]
        if len(got) >= want:
            return
        time.sleep(0.2)


@pytest.mark.upstream_report(568)
@pytest.mark.programs("v4l2-ctl", "gst-launch-1.0")
@pytest.mark.rules("F5", "C3", "X1")
@pytest.mark.timeout(240)
def test_issue_568_set_caps_leaves_device_usable(cell, openers):
    """`v4l2loopback-ctl set-caps "video/x-raw,format=UYVY,width=640,height=480" /dev/video0`
    (0.12.7 on Debian bookworm) ended with "Caught SIGSEGV" and the device was unusable until
    reboot.
    https://github.com/v4l2loopback/v4l2loopback/issues/568
    Judged: what 0.12.7's set-caps does (keep_format=1 and sustain_framerate=1 with v4l2-ctl,
    then a GStreamer pipeline writing UYVY 640x480 and ending): the pipeline ends cleanly; the
    format is kept (F5) and a reader gets frames of it; a new writer through the kept format
    reaches the reader; with the controls back the idle node offers OUTPUT again."""
    need_program("v4l2-ctl")
    need_program("gst-launch-1.0")
    need_openers(cell, 2)
    try:
        rc, out = run_program(cell, ["v4l2-ctl", "-d", cell.device, "-c", "keep_format=1",
                                     "-c", "sustain_framerate=1"], "v4l2-ctl-set-controls")
        assert rc == 0, f"v4l2-ctl -c keep_format=1 -c sustain_framerate=1: exit {rc}: {out!r}"
        rc, out = run_program(cell, ["gst-launch-1.0", "videotestsrc", "num-buffers=2", "!",
                                     "video/x-raw,format=UYVY,width=640,height=480", "!",
                                     "v4l2sink", f"device={cell.device}"], "gst-set-caps",
                              timeout=START_TIMEOUT, env=gst_env(cell))
        assert rc == 0 and "SIGSEGV" not in out, (
            f"set-caps' GStreamer pipeline (UYVY 640x480, 2 frames): expected a clean end, got exit "
            f"{rc}: {out[-800:]!r}")
        with Device(cell.device) as probe:
            caps = probe.device_caps()
            f = probe.g_fmt(CAP) if caps & CAP_VIDEO_CAPTURE else probe.g_fmt(OUT)
        assert (f["width"], f["height"], f["pixelformat"]) == (640, 480, UYVY), (
            f"keep_format=1 after the writer ended: expected UYVY 640x480 kept (F5), got "
            f"{f['width']}x{f['height']} {fourcc(f['pixelformat'])}")
        r = Reader(openers.fd())
        try:
            b = r.get(3.0)
        except OSError as exc:
            pytest.fail(f"a reader of the kept format (sustain_framerate=1): expected the kept "
                        f"frame, got {exc}")
        assert b["bytesused"] == f["sizeimage"], (
            f"kept frame: bytesused {b['bytesused']}, sizeimage {f['sizeimage']}")
        wd = openers.fd()
        caps = wd.device_caps()
        if caps & CAP_VIDEO_CAPTURE and not caps & CAP_VIDEO_OUTPUT:
            fw = FileWriter(wd, f)  # the node shows CAPTURE only (X1): write() of the kept format
        else:
            fw = Writer(wd, count=2, set_format=False)
            fw.send()
        sent = fw.send()
        try:
            r.get_frame(sent["frame"], 3.0)
        except OSError as exc:
            pytest.fail(f"a new writer of the kept format: its frame did not reach the reader: {exc}")
    finally:
        openers.close_all()
        _restore_controls(cell)
    advertises_output_when_idle(cell, "set-caps' writer and the reader left, keep_format put back")


@pytest.mark.upstream_report(610)
@pytest.mark.programs("v4l2-ctl", "gst-launch-1.0")
@pytest.mark.rules("F5", "C1", "X2")
@pytest.mark.timeout(300)
def test_issue_610_restarting_writers_keep_the_reader(cell, openers, record_property):
    """examples/restarting-writer.sh (set-caps UYVY:640x480@25/1, sustain_framerate=0, then
    GStreamer writers started one after the other) ended in "Caught SIGSEGV".
    https://github.com/v4l2loopback/v4l2loopback/issues/610
    Judged: the script's set-up with v4l2-ctl (UYVY 320x240, keep_format=1, sustain_framerate=0),
    one reader that stays open, and three GStreamer v4l2sink writers in turn, each fed numbered
    frames: every writer's frames reach the same reader, whole and in order (95%)."""
    need_exclusive(cell, False, "with exclusive_caps=1 a kept format shows the node CAPTURE only "
                                "(X1) and v4l2sink, which needs OUTPUT, cannot write again by "
                                "design; the example runs with the module's defaults")
    need_program("v4l2-ctl")
    need_openers(cell, 3)
    size = 320 * 240 * 2
    rd = None
    try:
        # v4l2-ctl keeps the colorimetry of the format before (colorspace, transfer function,
        # encoding, range): all named, so that v4l2sink is offered the same whatever ran before
        rc, out = run_program(cell, ["v4l2-ctl", "-d", cell.device, "--set-fmt-video-out=width=320,"
                                     "height=240,pixelformat=UYVY,colorspace=srgb,xfer=srgb,"
                                     "ycbcr=601,quantization=lim-range"],
                              "v4l2-ctl-set-fmt")
        assert rc == 0, f"v4l2-ctl --set-fmt-video-out: exit {rc}: {out!r}"
        # the example's set-caps UYVY:640x480@25/1 sets the output rate too: a kept format
        # offers v4l2sink that rate only
        rc, out = run_program(cell, ["v4l2-ctl", "-d", cell.device, f"--set-output-parm={FPS}"],
                              "v4l2-ctl-parm")
        assert rc == 0, f"v4l2-ctl --set-output-parm={FPS}: exit {rc}: {out!r}"
        rc, out = run_program(cell, ["v4l2-ctl", "-d", cell.device, "-c", "keep_format=1",
                                     "-c", "sustain_framerate=0"], "v4l2-ctl-controls")
        assert rc == 0, f"v4l2-ctl -c keep_format=1 -c sustain_framerate=0: exit {rc}: {out!r}"
        rd = ThreadReader(cell.device)
        assert (rd.fmt["width"], rd.fmt["height"], rd.fmt["pixelformat"]) == (320, 240, UYVY), (
            f"the reader's G_FMT(CAPTURE): expected the format set, UYVY 320x240, got {rd.fmt}")
        for k in range(3):
            time.sleep(0.5)  # the last writer's frames are dequeued before its successor's count
            since = rd.mark()
            # that colorimetry as GStreamer names it (range:matrix:transfer:primaries)
            c = gst_writer(cell, f"v4l2sink-{k}", fmt="uyvy", w=320, h=240, colorimetry="2:4:7:1")
            try:
                c.feed(size, 15)
                _wait_frames(rd, since, 30, c, START_TIMEOUT)
                alive = c.alive()
            finally:
                c.stop()
            frames = [(g["n"], g["whole"]) for g in rd.got[since:]]
            fig = span_figures(frames, WARMUP)
            record_property(f"writer {k}", fig)
            problems = program_problems(fig, MIN_RATIO, MIN_FRAMES)
            if not alive:
                problems.append("the writer exited before the reader had 30 of its frames")
            if rd.error:
                problems.append(f"the reader failed: {rd.error}")
            assert not problems, (f"writer {k} of 3 (the reader stays open): {'; '.join(problems)} "
                                  f"[{fig}]. v4l2sink: {c.output(600)!r}")
    finally:
        if rd is not None:
            rd.close()
        _restore_controls(cell)


@pytest.mark.upstream_report(671)
@pytest.mark.programs("v4l2-ctl", "ffmpeg")
@pytest.mark.rules("S7", "F5")
@pytest.mark.timeout(300)
def test_issue_671_timestamps_grow_through_timeout_frames(cell, openers, record_property):
    """With keep_format=1, timeout=100 and sustain_framerate=1, the frames shown while no writer
    streams kept the same timestamp; ffplay then added the gap's length as a delay once ffmpeg
    wrote again, more at each gap.
    https://github.com/v4l2loopback/v4l2loopback/issues/671
    Judged: the reporter's v4l2-ctl set-up (160x120 YUYV, output parm 25), ffmpeg writing 2 s,
    a 2 s gap, ffmpeg writing again, one reader throughout (ffplay's calls): buffer timestamps
    grow at every frame, timeout frames included; no frame reaches the reader more than 1.5 s
    after its timestamp (the reported delay is the gap's length, 2 s here); the second writer's
    frames arrive (90%, by content)."""
    need_exclusive(cell, False, "with exclusive_caps=1 the kept format shows the node CAPTURE only "
                                "(X1) and ffmpeg's G_FMT(OUTPUT) is refused there by design; the "
                                "report's set-up is an exclusive_caps=0 one")
    need_program("v4l2-ctl")
    need_openers(cell, 3)
    size = 160 * 120 * 2
    rd = None
    try:
        for argv, name in (
                (["-c", "keep_format=0"], "keep0"),
                (["--set-fmt-video-out=width=160,height=120,pixelformat=YUYV"], "set-fmt"),
                (["-c", "timeout=100", "-c", "sustain_framerate=1"], "timeout"),
                (["--set-output-parm=25"], "parm"),
                (["-c", "keep_format=1"], "keep1")):
            rc, out = run_program(cell, ["v4l2-ctl", "-d", cell.device, *argv], f"v4l2-ctl-{name}")
            assert rc == 0, f"v4l2-ctl {' '.join(argv)}: exit {rc}: {out!r}"
        rd = ThreadReader(cell.device)
        marks = {}
        for run, base in ((1, 0), (2, 100000)):
            if run == 2:
                time.sleep(2.0)  # no writer: timeout frames
            marks[run] = rd.mark()
            c = ffmpeg_writer(cell, f"ffmpeg-run{run}", fps=25)
            try:
                c.feeder = FrameFeeder(c.p.stdin, lambda n, b=base: pattern(n + b, size), 25)
                _wait_frames(rd, marks[run], 40, c, START_TIMEOUT, first=base)
            finally:
                c.stop()
        time.sleep(0.5)
    finally:
        if rd is not None:
            rd.close()
        _restore_controls(cell, timeout=True)
    got = rd.got
    assert rd.error is None, f"the reader failed: {rd.error}"
    stamps = [g["ts"][0] + g["ts"][1] / 1e6 for g in got]
    back = [(i, stamps[i - 1], stamps[i]) for i in range(1, len(stamps)) if stamps[i] <= stamps[i - 1]]
    lags = [g["t"] - (g["ts"][0] + g["ts"][1] / 1e6) for g in got
            if g["flags"] & 0xE000 == TS_MONOTONIC]
    second = [(g["n"], True) for g in got[marks[2]:] if g["whole"] and g["n"] >= 100000]
    fig = span_figures(second, WARMUP)
    record_property("second writer", fig)
    record_property("max lag s", round(max(lags), 3) if lags else None)
    problems = []
    if back:
        problems.append(f"{len(back)} timestamps not after the one before (first at buffer "
                        f"{back[0][0]}: {back[0][1]:.6f} then {back[0][2]:.6f})")
    if lags and max(lags) > MAX_LAG_S:
        problems.append(f"a frame reached the reader {max(lags):.2f} s after its timestamp")
    # sustain_framerate=1 repeats the newest frame whenever ffmpeg is late: that is the
    # control at work, not a loss; each repeat's timestamp is judged above
    problems += program_problems({**fig, "repeated": 0}, MIN_RATIO_SEVERAL, MIN_FRAMES)
    assert not problems, (f"{len(got)} buffers through two writers and a 2 s gap: "
                          f"{'; '.join(problems)} [{fig}]")
