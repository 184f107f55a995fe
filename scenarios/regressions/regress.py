"""Helpers of the regression scenarios (suite regressions): each scenario replays one upstream
v4l2loopback report (reports.toml) on the real device node.

Real programs run through lib/clients.Client (own session, SIGINT then SIGKILL on stop); frames
are counted by content, never by "got some": numbered frames (lib/delivery.pattern, fed to a
writer program's stdin, or lib/v4l2.frame_bytes from loopqual's own writers), or, where a
program re-encodes what it is given (jpegenc, videoconvert), frames whose number is drawn as
eight black or white bars that survive the conversion.

Nothing here touches a device at import time: the host collects these modules.
"""

from __future__ import annotations

import errno
import os
import select
import threading
import time

import pytest
from lib.clients import Client, cell_logdir, fresh, gst_env, read_window, wait_for_writer
from lib.common import Reader, caps_str
from lib.delivery import Feeder, identify, program_problems, span_figures
from lib.v4l2 import (
    CAP,
    CAP_STREAMING,
    CAP_VIDEO_CAPTURE,
    CAP_VIDEO_OUTPUT,
    OUT,
    POLLIN,
    YUYV,
    Device,
    V4L2Error,
    ename,
    fourcc,
    frame_bytes,
    frame_number,
)

from loopqual.guest.programs.infra import InfrastructureProblem, need_program

W, H = 160, 120  # small frames: the guest is one vCPU under TCG
FPS = 15
START_TIMEOUT = 90  # a program's start-up under TCG on a busy host
WINDOW_S = 2.5  # what a reader judges of a writer program
WARMUP = 5  # frames a program passes on while it starts up, not judged (S7 lets it miss them)
MIN_RATIO = 0.95  # D4: one program alone
MIN_RATIO_SEVERAL = 0.90  # D4: each of several readers at once
MIN_FRAMES = 10  # fewer whole frames than this judge nothing

YU12 = 0x32315559  # V4L2_PIX_FMT_YUV420 (I420)
YV12 = 0x32315659  # V4L2_PIX_FMT_YVU420
UYVY = 0x59565955
MJPG = 0x47504A4D


def i420_size(w: int, h: int) -> int:
    """I420's frame size as Chromium's VideoFrame and libwebrtc compute it: chroma planes of
    ceil(w/2) x ceil(h/2)."""
    return w * h + 2 * ((w + 1) // 2) * ((h + 1) // 2)


def logdir(cell, name: str) -> str:
    return cell_logdir(cell, "regressions", name)


def need_exclusive(cell, value: bool, why: str) -> None:
    if bool(cell.exclusive_caps) != value:
        pytest.skip(f"applies to exclusive_caps={int(value)}: {why}; this cell has "
                    f"exclusive_caps={int(cell.exclusive_caps)}")


def skip_with_keep(cell, why: str) -> None:
    if cell.keep_format:
        pytest.skip(f"needs an unpinned device (keep_format=0): {why}")


# -- writer programs ---------------------------------------------------------------------------

def ffmpeg_writer(cell, name: str, w: int = W, h: int = H, pix_fmt: str = "yuyv422",
                  fps: int = FPS) -> Client:
    """ffmpeg's v4l2 output (G_FMT, S_FMT, write() per frame) fed raw frames on its stdin,
    passed through as they come."""
    need_program("ffmpeg")
    return Client(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
                   "-f", "rawvideo", "-pix_fmt", pix_fmt, "-s", f"{w}x{h}", "-r", str(fps),
                   "-i", "pipe:0", "-fps_mode", "passthrough", "-pix_fmt", pix_fmt,
                   "-f", "v4l2", cell.device], name, logdir(cell, "ffmpeg"), stdin_pipe=True)


def ffmpeg_reader(cell, name: str, out: str, frames: int) -> Client:
    """ffmpeg reading the device (QUERYCAP, S_FMT, REQBUFS 256, mmap, DQBUF/QBUF) and writing
    the raw frames as they come to `out` (time in ms: frames closer than a frame period are
    not merged or dropped)."""
    need_program("ffmpeg")
    return Client(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
                   "-f", "v4l2", "-i", cell.device, "-map", "0:v", "-frames:v", str(frames),
                   "-fps_mode", "passthrough", "-enc_time_base:v", "1:1000", "-c:v", "rawvideo",
                   "-f", "rawvideo", "-y", fresh(out)], name, logdir(cell, "ffmpeg"))


def gst_writer(cell, name: str, fmt: str = "yuy2", w: int = W, h: int = H, fps: str = f"{FPS}/1",
               middle: tuple[str, ...] = (), sink: tuple[str, ...] = ("sync=false",),
               debug: str = "", colorimetry: str = "bt601") -> Client:
    """GStreamer's v4l2sink fed raw frames on its stdin (fdsrc ! rawvideoparse). The
    colorimetry is the one the device reports (BT.601 for a format the module chose):
    without it the caps carry none and v4l2sink's do not meet them. `middle` goes between
    the parser and the sink."""
    need_program("gst-launch-1.0")
    size = frame_size(fmt, w, h)
    dbg = [f"--gst-debug={debug}"] if debug else []
    return Client(["gst-launch-1.0", "-q", *dbg, "fdsrc", "fd=0", f"blocksize={size}", "!",
                   "rawvideoparse", f"format={fmt}", f"width={w}", f"height={h}",
                   f"framerate={fps}", f"colorimetry={colorimetry}", "!", *middle, "v4l2sink",
                   f"device={cell.device}", *sink],
                  name, logdir(cell, "gst"), env=gst_env(cell), stdin_pipe=True)


def gst_reader(cell, name: str, out: str, frames: int, debug: str = "") -> Client:
    need_program("gst-launch-1.0")
    dbg = [f"--gst-debug={debug}"] if debug else []
    return Client(["gst-launch-1.0", "-q", *dbg, "v4l2src", f"device={cell.device}",
                   f"num-buffers={frames}", "!", "filesink", f"location={fresh(out)}"],
                  name, logdir(cell, "gst"), env=gst_env(cell))


def run_program(cell, argv: list[str], name: str, timeout: float = 60.0,
                env: dict | None = None) -> tuple[int | None, str]:
    """Run a short program to its end: (exit code, or None if it did not end in time and was
    stopped; the tail of its output)."""
    need_program(argv[0] if argv[0] != "stdbuf" else argv[2])
    c = Client(argv, name, logdir(cell, argv[0]), env=env)
    rc = c.wait(timeout)
    c.stop()
    return rc, c.output(3000)


def frame_size(fmt: str, w: int, h: int) -> int:
    return w * h * 2 if fmt in ("yuy2", "uyvy", "yuyv422", "uyvy422") else w * h * 3 // 2


def FrameFeeder(pipe, make_frame, fps: float) -> Feeder:
    """lib/delivery's Feeder with frames of make_frame(n) (bars that survive a conversion, or
    pattern frames numbered from an offset)."""
    return Feeder(pipe, 0, fps, make=make_frame)


# -- frames whose number survives a conversion ---------------------------------------------

BAR_BITS = 8


def bars_i420(n: int, w: int = W, h: int = H) -> bytes:
    """An I420 frame showing n mod 256 as eight horizontal bars, black (0) or white (1): they
    survive JPEG and colour conversions that change every byte of a numbered pattern."""
    bar = h // BAR_BITS
    y = bytearray([16]) * (w * h)
    for i in range(BAR_BITS):
        if (n >> i) & 1:
            y[i * bar * w:(i + 1) * bar * w] = b"\xeb" * (bar * w)
    return bytes(y) + b"\x80" * (2 * ((w + 1) // 2) * ((h + 1) // 2))


def bars_number(data, fmt: dict) -> int | None:
    """n mod 256 read back from the bars of a captured frame in any 8-bit format the device
    reports (packed YUV, planar YUV's Y plane, RGB): the mean byte of a row in the middle of
    each bar is far below or far above 128. None if a row is neither."""
    h = fmt["height"]
    bpl = fmt["bytesperline"] or len(data) // max(h, 1)
    bar = h // BAR_BITS
    n = 0
    for i in range(BAR_BITS):
        start = (i * bar + bar // 2) * bpl
        row = bytes(data[start:start + bpl])
        if len(row) < bpl or not row:
            return None
        mean = sum(row) / len(row)
        if 96 <= mean <= 160:
            return None
        n |= (mean > 128) << i
    return n


def unwrap_mod256(numbers: list[int]) -> list[int]:
    """Absolute frame numbers from numbers mod 256 seen in order (a reader misses far fewer
    than 256 frames in a row)."""
    out: list[int] = []
    for n in numbers:
        out.append(n if not out else out[-1] + ((n - out[-1]) % 256))
    return out


# -- judging a writer program through loopqual's reader ---------------------------------------

def judge_writer(cell, client: Client, size: int, what: str, record=None,
                 seconds: float = WINDOW_S, bars: bool = False) -> dict:
    """A writer program's frames read by loopqual's reader (lib/clients.read_window, which
    waits for the writer to stream) over `seconds` from the first frame: at least MIN_RATIO of
    those published from its first to its last, whole, in order (D4). `bars`: frames carry
    their number as bars (bars_i420) instead of a numbered pattern."""
    frames: list[tuple[int, bool]] = []
    raw: list[int] = []

    def on_frame(data, fmt):
        if bars:
            n = bars_number(data, fmt)
            if n is None:
                frames.append((-1, False))
            else:
                raw.append(n)
        else:
            frames.append(identify(data, size) if len(data) >= size else (-1, False))

    note = read_window(cell.device, seconds, START_TIMEOUT, client, on_frame=on_frame,
                       first_frame_timeout=START_TIMEOUT).note
    if bars:
        frames += [(n, True) for n in unwrap_mod256(raw)]
    fig = span_figures(frames, WARMUP)
    if record is not None:
        record(what, fig)
    problems = program_problems(fig, MIN_RATIO, MIN_FRAMES)
    feeder = getattr(client, "feeder", None)
    if feeder is not None and feeder.error:
        problems.append(f"feeding it failed: {feeder.error}")
    if not client.alive():
        problems.append(f"it exited ({client.p.returncode})")
    assert not problems, (f"{what}: {'; '.join(problems)} [{fig}]. {note} Its output: "
                          f"{client.output(800)!r}")
    return fig


def judge_reader_file(client: Client, frames_of, what: str, min_ratio: float = MIN_RATIO,
                      record=None, timeout: float = START_TIMEOUT):
    """A reader program that ends by itself: exit 0, and the frames it wrote (frames_of(),
    called once it has ended: (number, whole) in the order it wrote them) at least min_ratio
    of those published from its first to its last."""
    rc = client.wait(timeout)
    if rc is None:
        client.stop()
    fig = span_figures(frames_of(), WARMUP)
    if record is not None:
        record(what, fig)
    problems = program_problems(fig, min_ratio, MIN_FRAMES)
    if rc is None:
        problems.append(f"it did not end within {timeout:.0f} s (killed)")
    elif rc != 0:
        problems.append(f"it exited {rc}")
    assert not problems, f"{what}: {'; '.join(problems)} [{fig}]. Output: {client.output(800)!r}"
    return fig


def frames_fb(data: bytes, size: int) -> list[tuple[int, bool]]:
    """(number, whole) of each lib/v4l2.frame_bytes frame of `size` bytes in a raw file."""
    out = []
    for off in range(0, len(data) - size + 1, size):
        chunk = data[off:off + size]
        n = frame_number(chunk)
        out.append((n, chunk == frame_bytes(n, size)))
    return out


def file_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def wait_file_frames(path: str, size: int, n: int, client: Client, timeout: float) -> int:
    """Wait until a reader program's output file holds n frames of `size` bytes (or it exits,
    or the timeout passes); the frames it holds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            have = os.path.getsize(path) // size
        except OSError:
            have = 0
        if have >= n or not client.alive() or time.monotonic() > deadline:
            return have
        time.sleep(0.2)


def wait_visible(cell, client: Client | None = None, timeout: float = START_TIMEOUT) -> None:
    """Wait for a writer to stream (CAPTURE advertised, input with signal), else fail naming
    why (a writer program that exited is the module's or the program's failure, reported)."""
    why = wait_for_writer(cell.device, timeout, client)
    assert not why, why


# -- readers in this process ---------------------------------------------------------------------

class ThreadReader:
    """An mmap reader on its own opener that dequeues in a thread for as long as it lives,
    recording for each buffer: dequeue time (CLOCK_MONOTONIC), the buffer's timestamp and
    flags, and the frame it holds (lib/delivery.identify). For a reader that must stay open
    across writers coming and going."""

    def __init__(self, path: str, count: int = 2):
        self.dev = Device(path)
        try:
            self.fmt = self.dev.g_fmt(CAP)
            self.reader = Reader(self.dev, count=count)
        except OSError:
            self.dev.close()
            raise
        self.size = self.fmt["sizeimage"]
        self.got: list[dict] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        d = self.dev
        try:
            while not self._stop.is_set():
                try:
                    b = d.wait_dqbuf(CAP, 0.3)
                except V4L2Error as exc:
                    if exc.errno == errno.ETIMEDOUT:
                        continue
                    raise
                now = time.monotonic()
                data = bytes(d.maps[(CAP, b["index"])][:self.size])
                n, whole = identify(data, self.size)
                self.got.append({"t": now, "ts": b["ts"], "flags": b["flags"], "n": n,
                                 "whole": whole, "bytesused": b["bytesused"]})
                d.qbuf(CAP, b["index"])
        except Exception as exc:  # reported through .error, judged by the scenario
            self.error = f"{type(exc).__name__}: {exc}"

    def mark(self) -> int:
        return len(self.got)

    def close(self) -> None:
        self._stop.set()
        self._t.join(3)
        self.dev.close()


# -- replayed capture clients --------------------------------------------------------------------

def chrome_min_size(fmt: dict) -> int:
    """The smallest bytesused Chromium's capture delegate accepts for a format (below it:
    "Dequeued v4l2 buffer contains invalid length" and the capture stops); 0 if it checks none."""
    w, h, pf = fmt["width"], fmt["height"], fmt["pixelformat"]
    if pf in (YU12, YV12):
        return i420_size(w, h)
    if pf in (YUYV, UYVY):
        return ((w + 1) // 2) * 2 * 2 * h
    return 0


def chrome_lists(path: str) -> tuple[bool, int]:
    """Chromium's enumeration: it opens every node read-only and lists it only when QUERYCAP's
    device_caps show CAPTURE without OUTPUT."""
    with Device(path, os.O_RDONLY) as d:
        caps = d.device_caps()
        if caps & CAP_VIDEO_CAPTURE:
            for pf in d.enum_fmt(CAP)[:4]:
                for w, h in d.enum_framesizes(pf)[:2]:
                    d.enum_frameintervals(pf, w, h)
    return bool(caps & CAP_VIDEO_CAPTURE and not caps & CAP_VIDEO_OUTPUT), caps


class MmapCapture:
    """A capture client's calls (Chromium's delegate by default; `name` says whose): open
    O_RDWR|O_NONBLOCK, G_FMT, S_FMT of that format, G_PARM/S_PARM, REQBUFS(count), QUERYBUF +
    mmap + QBUF each, STREAMON; then poll(POLLIN, 1000 ms) + DQBUF + QBUF."""

    def __init__(self, path: str, name: str = "Chromium", count: int = 4):
        self.name = name
        self.dev = Device(path, os.O_RDWR | os.O_NONBLOCK)
        try:
            caps = self.dev.device_caps()
            if not (caps & CAP_VIDEO_CAPTURE and caps & CAP_STREAMING):
                pytest.fail(f"{name}: QUERYCAP device_caps {caps_str(caps)}: needs CAPTURE and "
                            f"STREAMING")
            f = self._step("G_FMT(CAPTURE)", self.dev.g_fmt, CAP)
            self.fmt = self._step(f"S_FMT(CAPTURE, {f['width']}x{f['height']} "
                                  f"{fourcc(f['pixelformat'])})", self.dev.s_fmt, CAP,
                                  f["width"], f["height"], f["pixelformat"])
            try:
                self.dev.g_parm(CAP)
                self.dev.s_parm(CAP, 1, 30)
            except OSError:
                pass  # the clients go on without a frame rate
            self.count = self._step(f"REQBUFS(CAPTURE, {count})", self.dev.reqbufs, CAP,
                                    count)["count"]
            assert self.count >= 1, f"{name}: REQBUFS(CAPTURE, {count}) granted 0 buffers"
            for i in range(self.count):
                self._step(f"QUERYBUF+mmap({i})", self.dev.mmap, CAP, i)
                self._step(f"QBUF({i})", self.dev.qbuf, CAP, i)
            self._step("STREAMON(CAPTURE)", self.dev.streamon, CAP)
        except BaseException:
            self.dev.close()
            raise

    def _step(self, what: str, fn, *args):
        try:
            return fn(*args)
        except OSError as exc:
            pytest.fail(f"{self.name}: {what}: expected success, got {ename(exc.errno)}")

    def frames(self, n: int, timeout_polls: int = 10) -> list[dict]:
        """n buffers, each {"index", "bytesused", "data"} (data: bytesused bytes)."""
        got: list[dict] = []
        misses = 0
        while len(got) < n:
            if not self.dev.poll(POLLIN, 1.0) & POLLIN:
                misses += 1
            else:
                try:
                    b = self.dev.dqbuf(CAP)
                except V4L2Error as exc:
                    if exc.errno != errno.EAGAIN:
                        pytest.fail(f"{self.name}: DQBUF(CAPTURE) after POLLIN: expected a "
                                    f"buffer, got {ename(exc.errno)}")
                    misses += 1
                else:
                    misses = 0
                    used = b["bytesused"]
                    b["data"] = bytes(self.dev.maps[(CAP, b["index"])][:used])
                    got.append(b)
                    self._step(f"QBUF({b['index']})", self.dev.qbuf, CAP, b["index"])
            if misses >= timeout_polls:
                pytest.fail(f"{self.name}: {misses} poll(POLLIN, 1000 ms) in a row without a "
                            f"frame after {len(got)} frames")
        return got

    def drain(self) -> int:
        """Dequeue and queue again, unjudged, the frames already waiting (those that filled its
        buffers while another client was being set up); how many."""
        n = 0
        while self.dev.poll(POLLIN, 0.0) & POLLIN:
            try:
                b = self.dev.dqbuf(CAP)
            except V4L2Error as exc:
                if exc.errno == errno.EAGAIN:
                    break
                raise
            self._step(f"QBUF({b['index']})", self.dev.qbuf, CAP, b["index"])
            n += 1
        return n

    def stop(self, rude: bool = False) -> None:
        """Chromium: STREAMOFF, munmap, REQBUFS(0), close. rude (Firefox): munmap, STREAMOFF,
        close."""
        d = self.dev
        try:
            if rude:
                d.munmap_all()
                d.streamoff(CAP)
            else:
                d.streamoff(CAP)
                d.munmap_all()
                d.reqbufs(CAP, 0)
        finally:
            d.close()


def share_problems(numbers: list[int], torn: int, min_share: float = MIN_RATIO_SEVERAL) -> list[str]:
    """What is wrong with the frames one replayed capture got, counted by content: torn,
    repeated or out of order, or fewer than min_share of those published from its first to its
    last, less one (a replayed capture reads a few frames: one is 5-10% of them)."""
    bad = []
    if torn:
        bad.append(f"{torn} torn")
    if len(set(numbers)) != len(numbers) or numbers != sorted(numbers):
        bad.append(f"frames repeated or out of order: {numbers}")
    span = max(numbers) - min(numbers) + 1 if numbers else 0
    if not numbers:
        bad.append("no whole frame")
    elif span - len(set(numbers)) > max(1, (1 - min_share) * span):
        bad.append(f"{len(set(numbers))} of the {span} frames published from its first to its "
                   f"last ({numbers})")
    return bad


def fb_numbers(bufs: list[dict], size: int) -> tuple[list[int], int]:
    """Frame numbers of lib/v4l2.frame_bytes frames in captured buffers, and how many were not
    whole."""
    numbers, torn = [], 0
    for b in bufs:
        data = b["data"]
        n = frame_number(data) if len(data) >= 8 else -1
        if len(data) >= size and data[:size] == frame_bytes(n, size):
            numbers.append(n)
        else:
            torn += 1
    return numbers, torn


def pattern_numbers(bufs: list[dict], size: int) -> tuple[list[int], int]:
    """The same for lib/delivery.pattern frames (what Client.feed() gives a writer program)."""
    numbers, torn = [], 0
    for b in bufs:
        data = b["data"]
        n, whole = identify(data, size) if len(data) >= size else (-1, False)
        if whole:
            numbers.append(n)
        else:
            torn += 1
    return numbers, torn


class ObsCamera:
    """OBS Studio's virtual camera output (plugins/linux-v4l2, v4l2-output.c): open O_RDWR,
    QUERYCAP (it needs OUTPUT, else it skips the node), G_FMT(OUTPUT), S_PARM(OUTPUT, 1/fps),
    S_FMT(OUTPUT, WxH YUYV, sizeimage W*H*2), STREAMON(OUTPUT) without REQBUFS from OBS 27.1 to
    31.0 (`streamon`), one write() per frame; stop = close()."""

    def __init__(self, path: str, w: int = W, h: int = H, fps: int = 30, streamon: bool = True,
                 what: str = "OBS"):
        self.what = what
        d = self.dev = Device(path, os.O_RDWR)
        try:
            caps = d.device_caps()
            if not caps & CAP_VIDEO_OUTPUT:
                pytest.fail(f"{what}: QUERYCAP device_caps {caps_str(caps)}: OBS needs OUTPUT and "
                            f"skips the node (\"Failed to start virtual camera\")")
            self._step("G_FMT(OUTPUT)", d.g_fmt, OUT)
            self._step(f"S_PARM(OUTPUT, 1/{fps})", d.s_parm, OUT, 1, fps)
            self.fmt = self._step(f"S_FMT(OUTPUT, {w}x{h} YUYV)", d.s_fmt, OUT, w, h, YUYV,
                                  w * h * 2)
            if streamon:
                self._step("STREAMON(OUTPUT) without REQBUFS", d.streamon, OUT)
        except BaseException:
            d.close()
            raise
        self.size = self.fmt["sizeimage"]
        self.n = 0

    def _step(self, what: str, fn, *args):
        try:
            return fn(*args)
        except OSError as exc:
            pytest.fail(f"{self.what}: {what}: expected success, got {ename(exc.errno)}")

    def frame(self) -> int:
        self._step(f"write() of frame {self.n}", self.dev.write, frame_bytes(self.n, self.size))
        self.n += 1
        return self.n - 1

    def stop(self) -> None:
        self.dev.close()


def select_readable(fd: int, timeout: float) -> bool:
    r, _, _ = select.select([fd], [], [], timeout)
    return bool(r)


def incomplete_unless(cond: bool, why: str) -> None:
    """The guest was too busy to judge (too few frames made at all): incomplete, never
    passed."""
    if not cond:
        raise InfrastructureProblem(why)

