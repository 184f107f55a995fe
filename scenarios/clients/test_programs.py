"""K: the real client programs in the guest (ffmpeg, GStreamer, v4l2-ctl), judged by the
frames they move, started, stopped and restarted several times, and two consumers at once.

Frames are counted by content (D4): a writer program is fed numbered frames
(lib/delivery.pattern) through its stdin at FPS, and a reader program reads them from a paced
writer of loopqual's own; each frame the program passed on says its number and whether it is
whole, so its ratio is the distinct whole frames it passed on over the frames published from its
first to its last, its first WARMUP_FRAMES left out (start-up). A program reading alone must get
at least MIN_RATIO of them, each of two at once MIN_RATIO_SEVERAL (D4's "several readers at
once"); both are at least what any module can give (a stock module's share is at most all of
them), so they hold D4 on the patched module by themselves. A program's exit status and a
writer's liveness are checked, not assumed.

Slow under TCG (ffmpeg alone can take 20 s to start): its own suite, generous timeouts.
"""

from __future__ import annotations

import os
import time

import pytest
from lib.clients import Client, cell_logdir, fresh, gst_env, read_window
from lib.common import need_openers
from lib.delivery import (
    PacedWriter,
    frames_in_file,
    identify,
    program_problems,
    span_figures,
)
from lib.v4l2 import OUT, YUYV, Device

from loopqual.guest.programs.infra import need_program

W, H = 160, 120
FRAME = W * H * 2
FPS = 15
START_TIMEOUT = 90  # ffmpeg/gst-launch start-up under TCG on a busy host
MIN_RATIO = 0.95  # D4: one program reading (or writing) alone
MIN_RATIO_SEVERAL = 0.90  # D4: each of several readers at once
READ_FRAMES = 40  # what a reader program reads each round (2.7 s at FPS)
# The first frames a program passes on are not judged: ffmpeg holds both of its buffers while it
# opens its encoders (9 frames, 0.6 s, lost so on sid's kernel: a capture device drops what no
# queued buffer can take, S7), gst-launch while it prerolls.
WARMUP_FRAMES = 10


def _logdir(cell, name: str) -> str:
    return cell_logdir(cell, "clients", name)


def _ffmpeg_writer(cell, name: str) -> Client:
    """ffmpeg's v4l2 output fed numbered raw frames on its stdin (frames passed through as
    they come: no frame dropped or duplicated to keep a rate)."""
    need_program("ffmpeg")
    return Client(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
                   "-f", "rawvideo", "-pix_fmt", "yuyv422", "-s", f"{W}x{H}", "-r", str(FPS),
                   "-i", "pipe:0", "-fps_mode", "passthrough", "-pix_fmt", "yuyv422",
                   "-f", "v4l2", cell.device], name, _logdir(cell, "ffmpeg"), stdin_pipe=True)


def _ffmpeg_reader(cell, name: str, out: str, frames: int = READ_FRAMES) -> Client:
    """ffmpeg reading the device as a recorder does: it encodes what it reads (MPEG-4 Part 2,
    thrown away) and also writes the raw frames as they come (no frame duplicated or dropped to
    keep a rate), which are counted. Both outputs count time in milliseconds: in ffmpeg's
    default 1/fps two frames that came less than a frame period apart (a writer's jitter under
    TCG) get the same timestamp, which the encoder and the muxer refuse (ffmpeg exits)."""
    need_program("ffmpeg")
    return Client(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "v4l2",
                   "-i", cell.device, "-map", "0:v", "-frames:v", str(frames),
                   "-fps_mode", "passthrough", "-enc_time_base:v", "1:1000", "-c:v", "rawvideo",
                   "-f", "rawvideo", "-y", fresh(out), "-map", "0:v", "-frames:v", str(frames),
                   "-enc_time_base:v", "1:1000", "-c:v", "mpeg4", "-f", "null", "-"],
                  name, _logdir(cell, "ffmpeg"))


def _gst_writer(cell, name: str) -> Client:
    """GStreamer's v4l2sink fed numbered raw frames on its stdin. rawvideoparse states the
    colorimetry the device reports for YUYV (SMPTE 170M, BT.601): without it its caps carry
    none and v4l2sink's do not meet them (not-negotiated)."""
    need_program("gst-launch-1.0")
    return Client(["gst-launch-1.0", "-q", "fdsrc", "fd=0", f"blocksize={FRAME}", "!",
                   "rawvideoparse", "format=yuy2", f"width={W}", f"height={H}",
                   f"framerate={FPS}/1", "colorimetry=bt601", "!", "v4l2sink",
                   f"device={cell.device}", "sync=false"],
                  name, _logdir(cell, "gst"), env=gst_env(cell), stdin_pipe=True)


def _gst_reader(cell, name: str, out: str, frames: int = READ_FRAMES,
                downstream: tuple[str, ...] = ()) -> Client:
    need_program("gst-launch-1.0")
    return Client(["gst-launch-1.0", "-q", "v4l2src", f"device={cell.device}",
                   f"num-buffers={frames}", "!", *downstream, "filesink",
                   f"location={fresh(out)}"], name, _logdir(cell, "gst"), env=gst_env(cell))


def _python_writer(cell) -> PacedWriter:
    """loopqual's own paced writer: numbered frames by QBUF at FPS (lib/delivery.py)."""
    return PacedWriter(cell.device, FPS, "qbuf", count=2)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# A writer program is judged by loopqual's reader over this window of its frames (from the
# reader's first frame); a writer of loopqual's own (v4l2-ctl writes its own pattern) only by
# whether frames reach the reader at all.
WRITER_WINDOW_S = 3.0


def _judge_writer(cell, client: Client, rnd: int, record=None):
    """A writer program fed numbered frames (client.feeder): loopqual's reader must get at
    least MIN_RATIO of them, whole, in order, counted from its first to its last (D4)."""
    frames: list[tuple[int, bool]] = []
    note = read_window(
        cell.device, WRITER_WINDOW_S, START_TIMEOUT, client,
        on_frame=lambda data, fmt: frames.append(identify(data, FRAME)) if len(data) >= FRAME
        else frames.append((-1, False)), first_frame_timeout=START_TIMEOUT).note
    fig = span_figures(frames, WARMUP_FRAMES)
    if record is not None:
        record(f"{client.name} as writer", fig)
    problems = program_problems(fig, MIN_RATIO, 10)
    feeder = getattr(client, "feeder", None)
    if feeder is not None and feeder.error:
        problems.append(f"feeding it failed: {feeder.error}")
    if not client.alive():
        problems.append(f"it exited ({client.p.returncode})")
    assert not problems, (
        f"{client.name} (round {rnd}) as writer, fed {FPS} numbered frames a second: "
        f"{'; '.join(problems)}. {note} Client output: {client.output(800)!r}")


def _judge_reader_file(client: Client, out: str, rnd: int, size: int,
                       min_ratio: float = MIN_RATIO, record=None, want: int = READ_FRAMES):
    """A reader program that wrote `want` raw frames of `size` bytes (the paced writer's
    sizeimage) to `out` and exited 0: its frames after the first WARMUP_FRAMES, counted by
    content, must be at least min_ratio of those published from its first to its last (D4)."""
    rc = client.wait(START_TIMEOUT + 30)
    if rc is None:
        client.stop()
    fig = span_figures(frames_in_file(out, size), WARMUP_FRAMES)
    if record is not None:
        record(f"{client.name} as reader", fig)
    problems = program_problems(fig, min_ratio, min(want - WARMUP_FRAMES, 10))
    if rc is None:
        problems.append(f"it did not end within {START_TIMEOUT + 30} s (killed)")
    elif rc != 0:
        problems.append(f"it exited {rc}")
    assert not problems, (
        f"{client.name} (round {rnd}) as reader of {FPS} frames a second: {'; '.join(problems)} "
        f"[{fig}]. Output: {client.output(800)!r}")


def _idle_output_again(cell, what: str):
    if not cell.exclusive_caps or cell.keep_format:
        return
    with Device(cell.device) as d:
        caps = d.device_caps()
    assert caps & 0x2, (f"exclusive_caps=1 after {what} stopped: expected OUTPUT advertised "
                        f"again (so the writer can restart), got device_caps {caps:#x}")


@pytest.mark.programs("ffmpeg")
@pytest.mark.rules("K1", "D4")
@pytest.mark.timeout(600)
def test_k1_ffmpeg_writer_restarts(cell, openers, record_property):
    for rnd in range(3):
        c = _ffmpeg_writer(cell, f"ffmpeg-writer-{rnd}")
        try:
            c.feed(FRAME, FPS)
            _judge_writer(cell, c, rnd, record_property)
        finally:
            c.stop()
        _idle_output_again(cell, "ffmpeg -f v4l2")


@pytest.mark.programs("ffmpeg")
@pytest.mark.rules("K1", "D4")
@pytest.mark.timeout(600)
def test_k1_ffmpeg_reader_restarts(cell, openers, record_property):
    """ffmpeg reads (and encodes) READ_FRAMES frames, three times, from a paced writer."""
    with _python_writer(cell) as w:
        for rnd in range(3):
            out = os.path.join(_logdir(cell, "ffmpeg"), f"reader-{rnd}.raw")
            c = _ffmpeg_reader(cell, f"ffmpeg-reader-{rnd}", out)
            _judge_reader_file(c, out, rnd, w.size, record=record_property)
    assert "error" not in w.report, f"the writer, disturbed by the ffmpeg readers: {w.report}"


@pytest.mark.programs("gst-launch-1.0")
@pytest.mark.rules("K2", "D4")
@pytest.mark.timeout(600)
def test_k2_gstreamer_sink_to_src_restarts(cell, openers, record_property):
    """GStreamer's v4l2sink, fed numbered frames, to GStreamer's v4l2src, three times."""
    for rnd in range(3):
        wr = _gst_writer(cell, f"gst-v4l2sink-{rnd}")
        try:
            wr.feed(FRAME, FPS)
            _judge_writer(cell, wr, rnd, record_property)
            out = os.path.join(_logdir(cell, "gst"), f"v4l2src-{rnd}.raw")
            rd = _gst_reader(cell, f"gst-v4l2src-{rnd}", out)
            _judge_reader_file(rd, out, rnd, FRAME, record=record_property)
            assert wr.alive(), (f"gst v4l2sink (round {rnd}) died while v4l2src read: "
                                f"{wr.output(800)!r}")
        finally:
            wr.stop()
        _idle_output_again(cell, "gst-launch v4l2sink")


@pytest.mark.programs("gst-launch-1.0")
@pytest.mark.rules("D4", "K2", "S9")
@pytest.mark.timeout(300)
def test_d4_gstreamer_reader_with_a_queue_and_a_slow_element(cell, openers, record_property):
    """GStreamer's v4l2src ! queue ! identity sleep-time=40 ms ! filesink from a paced writer:
    the slow element (60% of a frame period) keeps up, but buffers wait in the queue and go back
    to v4l2src in the order the pipeline finishes with them (the pipeline of issue 24: 1.07 of
    34 frames a second, where readers shared the writer's buffers). It must get at least
    MIN_RATIO of the frames, counted by content."""
    slow = ("queue", "max-size-buffers=0", "max-size-bytes=0", "max-size-time=0", "!",
            "identity", f"sleep-time={int(0.6 * 1e6 / FPS)}", "!")
    with _python_writer(cell) as w:
        out = os.path.join(_logdir(cell, "gst"), "v4l2src-queue.raw")
        rd = _gst_reader(cell, "gst-v4l2src-queue", out, frames=2 * READ_FRAMES, downstream=slow)
        _judge_reader_file(rd, out, 0, w.size, record=record_property, want=2 * READ_FRAMES)


@pytest.mark.programs("gst-launch-1.0", "v4l2-ctl")
@pytest.mark.rules("K2", "S6")
@pytest.mark.timeout(300)
def test_k2_v4l2sink_alone(cell, openers, record_property):
    """v4l2sink must not die with "buffer N was not queued" (OUTPUT DQBUF of an unqueued buffer)."""
    wr = _gst_writer(cell, "gst-v4l2sink-alone")
    try:
        wr.feed(FRAME, FPS)
        _judge_writer(cell, wr, 0, record_property)
        time.sleep(3)
        assert wr.alive(), f"gst v4l2sink stopped by itself: {wr.output(800)!r}"
        assert "was not queued" not in wr.output(), wr.output(800)
    finally:
        wr.stop()


def _v4l2ctl_reader(cell, d: str, rnd: int, size: int, record=None) -> None:
    out = os.path.join(d, f"in-{rnd}.raw")
    rd = Client(["v4l2-ctl", "-d", cell.device, "--stream-mmap=2",
                 f"--stream-count={READ_FRAMES}", f"--stream-to={fresh(out)}"],
                f"v4l2-ctl-in-{rnd}", d)
    _judge_reader_file(rd, out, rnd, size, record=record)


@pytest.mark.programs("v4l2-ctl")
@pytest.mark.rules("K1", "K2")
@pytest.mark.timeout(300)
def test_v4l2ctl_stream_out_and_in(cell, openers):
    """v4l2-ctl as writer (--stream-out-mmap, as fast as it can, its own pattern: judged by
    frames reaching a reader) and, while it writes, as reader (--stream-mmap), twice."""
    need_program("v4l2-ctl")
    if not cell.exclusive_caps:
        pytest.skip("v4l2-ctl --stream-out-mmap streams on the first buffer type the node "
                    "advertises (CAPTURE before OUTPUT, for any node that is not mem-to-mem): "
                    "with exclusive_caps=0 it cannot be a writer on any module; its reader "
                    "side is judged by test_v4l2ctl_reader_with_python_writer")
    d = _logdir(cell, "v4l2-ctl")
    for rnd in range(2):
        wr = Client(["v4l2-ctl", "-d", cell.device,
                     f"--set-fmt-video-out=width={W},height={H},pixelformat=YUYV",
                     "--stream-out-mmap=2", "--stream-count=1000000"],
                    f"v4l2-ctl-out-{rnd}", d)
        try:
            got = read_window(cell.device, 2.0, START_TIMEOUT, wr,
                              first_frame_timeout=START_TIMEOUT)
            assert got.frames > 0 and wr.alive(), (
                f"v4l2-ctl --stream-out-mmap (round {rnd}): expected its frames to reach a "
                f"reader, got {got.frames} in 2 s (alive: {wr.alive()}). {got.note} "
                f"Output: {wr.output(800)!r}")
            out = os.path.join(d, f"in-{rnd}.raw")
            rd = Client(["v4l2-ctl", "-d", cell.device, "--stream-mmap=2", "--stream-count=10",
                         f"--stream-to={fresh(out)}"], f"v4l2-ctl-in-{rnd}", d)
            rc = rd.wait(START_TIMEOUT + 30)
            if rc is None:
                rd.stop()
            assert rc == 0 and _size(out) >= 10 * FRAME, (
                f"v4l2-ctl --stream-mmap (round {rnd}) while v4l2-ctl writes: expected 10 "
                f"frames of {FRAME} bytes and exit 0, got {_size(out)} bytes, exit {rc}: "
                f"{rd.output(800)!r}")
        finally:
            wr.stop()
        _idle_output_again(cell, "v4l2-ctl --stream-out-mmap")


@pytest.mark.programs("v4l2-ctl")
@pytest.mark.rules("K1", "K2", "D4")
@pytest.mark.timeout(300)
def test_v4l2ctl_reader_with_python_writer(cell, openers, record_property):
    """v4l2-ctl --stream-mmap as reader, twice, from a paced writer (every cell)."""
    need_program("v4l2-ctl")
    d = _logdir(cell, "v4l2-ctl-reader")
    with _python_writer(cell) as w:
        for rnd in range(2):
            _v4l2ctl_reader(cell, d, rnd, w.size, record_property)


@pytest.mark.programs("ffmpeg", "gst-launch-1.0")
@pytest.mark.rules("K6", "A3", "D4")
@pytest.mark.timeout(600)
def test_k6_two_consumers_ffmpeg_and_gstreamer(cell, openers, record_property):
    """ffmpeg reads (and encodes) on, GStreamer's v4l2src joins it for 60 frames: each gets at
    least MIN_RATIO_SEVERAL of the frames published meanwhile, counted by content."""
    need_openers(cell, 3)
    d = _logdir(cell, "k6")
    out1, out2 = os.path.join(d, "ffmpeg.raw"), os.path.join(d, "gst.raw")
    with _python_writer(cell) as w:
        c1 = _ffmpeg_reader(cell, "k6-ffmpeg", out1, frames=100000)
        c2 = None
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while _size(out1) < w.size and c1.alive() and time.monotonic() < deadline:
                time.sleep(0.5)
            assert _size(out1) >= w.size, (f"K6: the first consumer (ffmpeg) got no frame "
                                           f"within {START_TIMEOUT} s: {c1.output(800)!r}")
            before = _size(out1) // w.size
            c2 = _gst_reader(cell, "k6-v4l2src", out2, frames=60)
            _judge_reader_file(c2, out2, 0, w.size, MIN_RATIO_SEVERAL, record_property, want=60)
            alive = c1.alive()
        finally:
            c1.stop()
            if c2:
                c2.stop()
    both = frames_in_file(out1, w.size)[before:]
    fig = span_figures(both)
    record_property("k6-ffmpeg while v4l2src read", fig)
    problems = program_problems(fig, MIN_RATIO_SEVERAL, 20)
    assert alive and not problems, (
        f"K6: while the second consumer (gst v4l2src) read 60 frames, the first (ffmpeg): "
        f"{'; '.join(problems) or 'fine'}, alive {alive}: expected both to receive the "
        f"frames. ffmpeg: {c1.output(600)!r}")


@pytest.mark.rules("K1")
def test_clients_leave_device_idle(cell, openers):
    openers.close_all()
    with Device(cell.device) as dv:
        if not cell.keep_format:
            f = dv.s_fmt(OUT, 176, 144, YUYV)
            assert (f["width"], f["height"]) == (176, 144), (
                f"after the client scenarios: expected an idle, unpinned device, S_FMT got "
                f"{f['width']}x{f['height']}")
