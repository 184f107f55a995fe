"""Regressions, several openers and closing: readers side by side, one reader's teardown,
a writer killed or replaced under a reader (upstream reports; reports.toml says which)."""

from __future__ import annotations

import os
import time

import pytest
from lib.clients import Client
from lib.common import (
    advertises_output_when_idle,
    need_openers,
    start_proc_writer,
    sysfs_attr,
)
from lib.delivery import frames_in_file, pattern, program_problems, span_figures
from regress import (
    FPS,
    MIN_FRAMES,
    MIN_RATIO,
    MIN_RATIO_SEVERAL,
    START_TIMEOUT,
    WARMUP,
    FrameFeeder,
    H,
    MmapCapture,
    W,
    fb_numbers,
    ffmpeg_reader,
    ffmpeg_writer,
    gst_env,
    gst_reader,
    gst_writer,
    i420_size,
    judge_reader_file,
    judge_writer,
    logdir,
    pattern_numbers,
    share_problems,
    wait_file_frames,
    wait_visible,
)

from loopqual.common import procgroup
from loopqual.guest.programs.infra import need_program

FRAME = W * H * 2
WINDOW = 2.5  # how long a reader is watched after another reader's teardown


@pytest.mark.upstream_report(454)
@pytest.mark.programs("gst-launch-1.0")
@pytest.mark.rules("A5", "C1", "A3")
@pytest.mark.timeout(300)
def test_issue_454_one_v4l2src_ending_spares_the_other(cell, openers, record_property):
    """With a v4l2sink writer and two v4l2src readers, ending one reader (its teardown's
    REQBUFS(0)) also stopped the other: "failed dequeuing a mmap buffer: Invalid argument".
    https://github.com/v4l2loopback/v4l2loopback/issues/454
    Judged: a GStreamer v4l2sink writer (fed numbered frames) and a first v4l2src reading on; a
    second v4l2src reads 20 frames and ends: the first is still running and keeps receiving at
    least 90% of the frames published after the second ended, counted by content."""
    need_openers(cell, 3)
    d = logdir(cell, "gst")
    out1, out2 = os.path.join(d, "454-first.raw"), os.path.join(d, "454-second.raw")
    wr = gst_writer(cell, "454-v4l2sink")
    r1 = r2 = None
    try:
        wr.feed(FRAME, FPS)
        wait_visible(cell, wr)
        r1 = gst_reader(cell, "454-v4l2src-first", out1, 1000000)
        have = wait_file_frames(out1, FRAME, 1, r1, START_TIMEOUT)
        assert have >= 1, f"the first v4l2src got no frame: {r1.output(600)!r}"
        r2 = gst_reader(cell, "454-v4l2src-second", out2, 20)
        judge_reader_file(r2, lambda: frames_in_file(out2, FRAME), "the second v4l2src (20 frames)",
                          MIN_RATIO_SEVERAL, record_property)
        before = os.path.getsize(out1) // FRAME
        time.sleep(WINDOW)
        alive = r1.alive()
    finally:
        for c in (r1, r2, wr):
            if c is not None:
                c.stop()
    fig = span_figures(frames_in_file(out1, FRAME)[before:])
    record_property("first v4l2src after the second ended", fig)
    problems = program_problems(fig, MIN_RATIO_SEVERAL, MIN_FRAMES)
    assert alive and not problems, (
        f"the first v4l2src after the second one's teardown: alive {alive}; "
        f"{'; '.join(problems) or 'frames fine'} [{fig}]. Its output: {r1.output(800)!r}")



@pytest.mark.upstream_report(457)
@pytest.mark.programs("gst-launch-1.0")
@pytest.mark.rules("A3", "S3", "D4")
@pytest.mark.timeout(300)
def test_issue_457_two_v4l2src_readers_at_once(cell, openers, record_property):
    """Two v4l2src pipelines read one device at once; the reporter asked the second to get
    EBUSY by default.
    https://github.com/v4l2loopback/v4l2loopback/issues/457
    Judged as the contract wants (A3, S3: several readers stream at once): the reporter's two
    v4l2src readers of a v4l2sink writer, started together, each end by itself after 30 frames
    with at least 90% of those published from its first to its last, by content."""
    need_openers(cell, 3)
    d = logdir(cell, "gst")
    outs = [os.path.join(d, f"457-reader{i}.raw") for i in (1, 2)]
    wr = gst_writer(cell, "457-v4l2sink")
    readers = []
    try:
        wr.feed(FRAME, FPS)
        wait_visible(cell, wr)
        readers = [gst_reader(cell, f"457-v4l2src-{i + 1}", out, 30) for i, out in enumerate(outs)]
        for i, (rd, out) in enumerate(zip(readers, outs, strict=True)):
            judge_reader_file(rd, lambda o=out: frames_in_file(o, FRAME), f"v4l2src {i + 1} of 2 at once",
                              MIN_RATIO_SEVERAL, record_property)
    finally:
        for c in (*readers, wr):
            c.stop()


@pytest.mark.upstream_report(566)
@pytest.mark.rules("A3", "S3")
def test_issue_566_second_vlc_starts_streaming(cell, openers):
    """A second VLC on the same loopback device failed with "cannot start streaming: Device or
    resource busy" while the first one played.
    https://github.com/v4l2loopback/v4l2loopback/issues/566
    Judged: two VLC-style mmap captures (QUERYCAP, G_FMT/S_FMT, REQBUFS 4, mmap, QBUF,
    STREAMON, poll + DQBUF) of one writer: the second STREAMON succeeds and both get the frames
    whole and in order, at least 90% of those published while each read."""
    need_openers(cell, 3)
    w = openers.proc("writer")
    info = start_proc_writer(cell, w, "mmap", count=2, fps=FPS)
    size = info["format"]["sizeimage"]
    first = MmapCapture(cell.device, "VLC (first)")
    second = None
    try:
        second = MmapCapture(cell.device, "VLC (second, while the first plays)")
        first.drain()
        second.drain()
        got1, got2 = [], []
        for _ in range(12):  # one frame each in turn: neither holds both its buffers full long
            got1 += first.frames(1)
            got2 += second.frames(1)
    finally:
        first.stop()
        if second is not None:
            second.stop()
    for name, got in (("first VLC", got1), ("second VLC", got2)):
        numbers, torn = fb_numbers(got, size)
        bad = share_problems(numbers, torn)
        assert not bad, f"{name}: {'; '.join(bad)}"


@pytest.mark.upstream_report(310)
@pytest.mark.programs("ffmpeg")
@pytest.mark.rules("K6", "A3", "D4")
@pytest.mark.timeout(300)
def test_issue_310_three_consumers_of_one_loopback(cell, openers, record_property):
    """A browser, a videoconferencing application and an ffmpeg recording read one
    exclusive_caps=1 loopback fed by `ffmpeg ... -codec copy -f v4l2` at once, without "device
    or resource busy" (reported as working, asking why).
    https://github.com/v4l2loopback/v4l2loopback/issues/310
    Judged: ffmpeg writing (fed numbered frames), ffmpeg recording 40 frames, and Chromium's and
    Firefox's capture calls reading meanwhile: each consumer gets at least 90% of the frames
    published while it read, whole and in order."""
    need_openers(cell, 4)
    out = os.path.join(logdir(cell, "ffmpeg"), "310-recorder.raw")
    wr = ffmpeg_writer(cell, "310-ffmpeg-writer")
    rec = None
    try:
        wr.feed(FRAME, FPS)
        wait_visible(cell, wr)
        rec = ffmpeg_reader(cell, "310-ffmpeg-recorder", out, 40)
        have = wait_file_frames(out, FRAME, 1, rec, START_TIMEOUT)
        assert have >= 1, f"the ffmpeg recorder got no frame: {rec.output(600)!r}"
        chrome = MmapCapture(cell.device, "Chromium (second consumer)")
        firefox = None
        try:
            firefox = MmapCapture(cell.device, "Firefox (third consumer)")
            chrome.drain()
            firefox.drain()
            got_c, got_f = [], []
            for _ in range(12):  # one frame each in turn: neither holds both its buffers full long
                got_c += chrome.frames(1)
                got_f += firefox.frames(1)
        finally:
            chrome.stop()
            if firefox is not None:
                firefox.stop(rude=True)
        for name, got in (("Chromium", got_c), ("Firefox", got_f)):
            numbers, torn = pattern_numbers(got, FRAME)
            bad = share_problems(numbers, torn)
            assert not bad, f"{name} beside ffmpeg's recording: {'; '.join(bad)}"
        judge_reader_file(rec, lambda: frames_in_file(out, FRAME), "the ffmpeg recording",
                          MIN_RATIO_SEVERAL, record_property)
        assert wr.alive(), f"the ffmpeg writer exited: {wr.output(600)!r}"
    finally:
        for c in (rec, wr):
            if c is not None:
                c.stop()


@pytest.mark.upstream_report(675)
@pytest.mark.programs("gst-launch-1.0")
@pytest.mark.rules("C2", "C3", "X1")
@pytest.mark.timeout(240)
def test_issue_675_killed_writer_releases_the_device(cell, openers, record_property):
    """A GStreamer v4l2sink writer killed with SIGKILL left the device in state "capture" with
    no opener: any later writer failed "Device is not a output device" until the module was
    reloaded.
    https://github.com/v4l2loopback/v4l2loopback/issues/675
    Judged: the reporter's writer (videotestsrc is-live, YUY2 640x480, at 10 frames a second)
    killed with SIGKILL once it streams: it is gone within 5 s, sysfs state reads "output", an
    exclusive_caps=1 node offers OUTPUT again, and a new v4l2sink writer of another format
    reaches a reader (95%, by content)."""
    need_program("gst-launch-1.0")
    need_openers(cell, 2)
    victim = Client(["gst-launch-1.0", "-q", "videotestsrc", "is-live=true", "!",
                     "video/x-raw,format=YUY2,width=640,height=480,framerate=10/1", "!",
                     "v4l2sink", f"device={cell.device}"], "675-victim", logdir(cell, "gst"),
                    env=gst_env(cell))
    try:
        wait_visible(cell, victim)
        procgroup.kill(victim.p.pid)
        rc = victim.wait(5)
        assert rc is not None, "the SIGKILLed writer did not exit within 5 s (stuck in the kernel)"
    finally:
        victim.stop()
    time.sleep(1.0)
    state = sysfs_attr(cell, "state")
    assert state in (None, "output"), (f"sysfs state after the writer was killed and nobody holds "
                                       f"the device: expected 'output', got {state!r}")
    advertises_output_when_idle(cell, "the writer was SIGKILLed")
    wr = gst_writer(cell, "675-new-v4l2sink")
    try:
        wr.feed(FRAME, FPS)
        judge_writer(cell, wr, FRAME, "the writer after the killed one", record_property)
    finally:
        wr.stop()


@pytest.mark.upstream_report(283)
@pytest.mark.programs("ffmpeg")
@pytest.mark.rules("C1", "X2", "K1")
@pytest.mark.timeout(300)
def test_issue_283_recorder_survives_switching_producers(cell, openers, record_property):
    """An ffmpeg recording of the device crashed ("Dequeued v4l2 buffer contains 385024 bytes,
    but 384000 were expected") when its producer, an ffmpeg writing yuv420p, was stopped and
    another ffmpeg writer started.
    https://github.com/v4l2loopback/v4l2loopback/issues/283
    Judged: ffmpeg writer A (yuv420p, numbered frames), an ffmpeg recorder, A stopped with
    Ctrl-C, writer B started with the same format: the recorder is still running and records at
    least 95% of B's frames from its first to its last, whole, by content."""
    need_openers(cell, 3)
    size = i420_size(W, H)
    out = os.path.join(logdir(cell, "ffmpeg"), "283-recorder.raw")
    wa = ffmpeg_writer(cell, "283-writer-A", pix_fmt="yuv420p")
    rec = wb = None
    try:
        wa.feed(size, FPS)
        wait_visible(cell, wa)
        rec = ffmpeg_reader(cell, "283-recorder", out, 1000000)
        have = wait_file_frames(out, size, 10, rec, START_TIMEOUT)
        assert have >= 10, f"the recorder got {have} frames of writer A: {rec.output(600)!r}"
        wa.stop()  # SIGINT, as Ctrl-C
        time.sleep(0.5)
        k = os.path.getsize(out) // size
        wb = ffmpeg_writer(cell, "283-writer-B", pix_fmt="yuv420p")
        # B's frames are numbered from 100000: told apart from A's in the recording
        wb.feeder = FrameFeeder(wb.p.stdin, lambda n: pattern(n + 100000, size), FPS)
        deadline = time.monotonic() + START_TIMEOUT
        b_frames = []
        while time.monotonic() < deadline and rec.alive() and wb.alive():
            b_frames = [(n, w) for n, w in frames_in_file(out, size)[k:] if n >= 100000 or not w]
            if len([1 for _n, w in b_frames if w]) >= 30 + WARMUP:
                break
            time.sleep(0.3)
        alive = rec.alive()
    finally:
        for c in (rec, wb, wa):
            if c is not None:
                c.stop()
    fig = span_figures(b_frames, WARMUP)
    record_property("recorder, writer B", fig)
    problems = program_problems(fig, MIN_RATIO, MIN_FRAMES)
    assert alive and not problems, (
        f"the ffmpeg recorder after its producer was replaced: alive {alive}; "
        f"{'; '.join(problems) or 'frames fine'} [{fig}]. Recorder: {rec.output(800)!r}")
