"""K: replays of the clients' ioctl sequences (clients.md), so that a failure points at the
exact call. Fast: these run in the clients suite next to the real programs."""

from __future__ import annotations

import errno
import os
import time

import pytest
from lib.common import caps_str, need_openers
from lib.v4l2 import (
    BUF_CAP_SUPPORTS_MMAP,
    CAP,
    CAP_STREAMING,
    CAP_VIDEO_CAPTURE,
    CAP_VIDEO_OUTPUT,
    CID_AUTO_WHITE_BALANCE,
    DMABUF,
    MMAP,
    OUT,
    POLLIN,
    USERPTR,
    YUYV,
    Device,
    V4L2Error,
    ename,
    err,
    frame_bytes,
    frame_number,
)

W, H = 160, 120


def _step(what: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except OSError as exc:
        pytest.fail(f"{what}: expected success, got {ename(exc.errno)}")


class ObsVirtualCam:
    """OBS Studio's virtual camera output (v4l2 plugin): a write() writer. OBS up to 31.0
    (Debian bookworm's 29.0.2) calls STREAMON(OUTPUT) without REQBUFS after S_FMT
    (v4l2loopback #622); later ones only when QUERYCAP showed no OUTPUT."""

    def __init__(self, cell, fps: int = 30, streamon: bool = True):
        self.cell = cell
        d = Device(cell.device, os.O_RDWR)  # OBS opens blocking
        caps = d.device_caps()
        if not caps & CAP_VIDEO_OUTPUT:
            d.close()
            pytest.fail(f"OBS: QUERYCAP device_caps {caps_str(caps)}: OBS needs OUTPUT and skips "
                        f"the node (the virtual camera cannot start)")
        self.dev = d
        _step("OBS: G_FMT(OUTPUT)", d.g_fmt, OUT)
        _step("OBS: S_PARM(OUTPUT, 1/30)", d.s_parm, OUT, 1, fps)
        f = _step(f"OBS: S_FMT(OUTPUT, {W}x{H} YUYV, sizeimage={W * H * 2})", d.s_fmt, OUT, W, H,
                  YUYV, W * H * 2)
        self.size = f["sizeimage"]
        if streamon:
            _step("OBS (up to 31.0): STREAMON(OUTPUT) without REQBUFS", d.streamon, OUT)
        self.n = 0

    def frame(self):
        # O_RDWR without O_NONBLOCK: write() must never block for long; the scenario alarm
        # turns a hang into a failure
        _step(f"OBS: write() of frame {self.n}", self.dev.write, frame_bytes(self.n, self.size))
        self.n += 1

    def stop(self):
        self.dev.close()


MIN_SHARE = 0.9  # D4: a capture call gets 90% of the frames, less one


def _reader_frames(dev: Device, count: int, n_frames: int, what: str, timeout_polls: int = 10):
    """Chromium/Firefox capture loop: poll(POLLIN, 1000 ms), DQBUF, check bytesused, QBUF.
    Each buffer's frame is read by content (the writer pump's numbered frames): "frame" and
    "whole" (every byte is that frame's)."""
    got = []
    timeouts = 0
    while len(got) < n_frames:
        ev = dev.poll(POLLIN, 1.0)
        if not ev & POLLIN:
            timeouts += 1
            if timeouts >= timeout_polls:
                pytest.fail(f"{what}: {timeouts} poll(POLLIN, 1000 ms) timeouts in a row after "
                            f"{len(got)} frames")
            continue
        try:
            b = dev.dqbuf(CAP)
        except V4L2Error as exc:
            if exc.errno != errno.EAGAIN:
                pytest.fail(f"{what}: DQBUF(CAPTURE) after POLLIN: expected a buffer, got "
                            f"{ename(exc.errno)}")
            # the client polls again; a POLLIN that never yields a buffer counts like a timeout
            timeouts += 1
            if timeouts >= timeout_polls:
                pytest.fail(f"{what}: DQBUF(CAPTURE) after POLLIN: expected a buffer, got EAGAIN "
                            f"{timeouts} times in a row after {len(got)} frames")
            continue
        timeouts = 0
        data = bytes(dev.maps[(CAP, b["index"])][:b["bytesused"]])
        b["frame"] = frame_number(data) if len(data) >= 8 else -1
        b["whole"] = len(data) >= 8 and data == frame_bytes(b["frame"], len(data))
        got.append(b)
        _step(f"{what}: QBUF(CAPTURE, {b['index']})", dev.qbuf, CAP, b["index"])
    _judge_share(got, what)
    return got


def _judge_share(got: list[dict], what: str) -> None:
    """The frames one capture call got, counted by content: whole, each once, in order, and
    at least MIN_SHARE of those the writer published from the first to the last, less one
    (a call reads a few frames: one frame is 10-50% of them)."""
    numbers = [b["frame"] for b in got if b["whole"]]
    torn = len(got) - len(numbers)
    span = max(numbers) - min(numbers) + 1 if numbers else 0
    missing = span - len(set(numbers))
    bad = []
    if torn:
        bad.append(f"{torn} torn")
    if len(set(numbers)) != len(numbers) or numbers != sorted(numbers):
        bad.append(f"frames repeated or out of order: {numbers}")
    if missing > max(1, (1 - MIN_SHARE) * span):
        bad.append(f"{len(set(numbers))} of the {span} frames published from its first to its "
                   f"last ({numbers})")
    assert not bad, f"{what}: " + "; ".join(bad)


class ChromiumCapture:
    """Chromium's V4L2 capture delegate (video_capture_device_linux / v4l2_capture_delegate)."""

    def __init__(self, cell, name="Chromium"):
        self.cell = cell
        self.name = name
        # enumeration: every node, QUERYCAP + ENUM_FMT/FRAMESIZES/FRAMEINTERVALS
        with Device(cell.device, os.O_RDONLY) as probe:
            caps = probe.device_caps()
            if cell.exclusive_caps and not (caps & CAP_VIDEO_CAPTURE and
                                            not caps & CAP_VIDEO_OUTPUT):
                pytest.fail(f"{name}: enumeration QUERYCAP device_caps {caps_str(caps)}: Chromium "
                            f"lists only CAPTURE-without-OUTPUT nodes (exclusive_caps=1 with a "
                            f"writer streaming)")
            for fmt in probe.enum_fmt(CAP) or [YUYV]:
                for w, h in probe.enum_framesizes(fmt)[:2]:
                    probe.enum_frameintervals(fmt, w, h)
        self.dev = Device(cell.device, os.O_RDWR | os.O_NONBLOCK)
        try:
            self.dev.s_ctrl(CID_AUTO_WHITE_BALANCE, 1)
        except OSError:
            pass  # no such control: Chromium skips its control reset
        fmt = _step(f"{name}: G_FMT(CAPTURE)", self.dev.g_fmt, CAP)
        self.fmt = _step(f"{name}: S_FMT(CAPTURE)", self.dev.s_fmt, CAP, fmt["width"],
                         fmt["height"], fmt["pixelformat"])
        try:
            self.dev.g_parm(CAP)
            self.dev.s_parm(CAP, 1, 30)
        except OSError:
            pass
        self.start()

    def start(self):
        d = self.dev
        r = _step(f"{self.name}: REQBUFS(CAPTURE, 4, MMAP)", d.reqbufs, CAP, 4)
        self.count = r["count"]
        assert self.count >= 1, f"{self.name}: REQBUFS(CAPTURE, 4) granted 0 buffers"
        for i in range(self.count):
            _step(f"{self.name}: mmap({i})", d.mmap, CAP, i)
            _step(f"{self.name}: QBUF({i})", d.qbuf, CAP, i)
        _step(f"{self.name}: STREAMON(CAPTURE)", d.streamon, CAP)

    def restart(self):
        """What Chromium does on a poll timeout."""
        d = self.dev
        _step(f"{self.name}: STREAMOFF", d.streamoff, CAP)
        d.munmap_all()
        _step(f"{self.name}: REQBUFS(0)", d.reqbufs, CAP, 0)
        self.start()

    def frames(self, n):
        got = _reader_frames(self.dev, self.count, n, self.name)
        short = [b for b in got if b["bytesused"] < self.fmt["sizeimage"]]
        assert not short, (f"{self.name}: frames with bytesused below sizeimage "
                           f"{self.fmt['sizeimage']} are dropped by Chromium: {short[:2]}")
        return got

    def stop(self):
        d = self.dev
        _step(f"{self.name}: STREAMOFF", d.streamoff, CAP)
        d.munmap_all()
        _step(f"{self.name}: REQBUFS(0)", d.reqbufs, CAP, 0)
        d.close()


class FirefoxCapture:
    """Firefox (libwebrtc device_info_v4l2 / video_capture_v4l2)."""

    def __init__(self, cell, name="Firefox"):
        self.name = name
        with Device(cell.device, os.O_RDONLY) as probe:
            probe.querycap()
        d = self.dev = Device(cell.device, os.O_RDWR | os.O_NONBLOCK)
        d.enum_fmt(CAP)
        fmt = _step(f"{name}: G_FMT(CAPTURE)", d.g_fmt, CAP)
        self.fmt = _step(f"{name}: S_FMT(CAPTURE)", d.s_fmt, CAP, fmt["width"], fmt["height"],
                         fmt["pixelformat"])
        try:
            d.g_parm(CAP)
            d.s_parm(CAP, 1, 30)
        except OSError:
            pass
        self.count = _step(f"{name}: REQBUFS(CAPTURE, 4)", d.reqbufs, CAP, 4)["count"]
        for i in range(self.count):
            _step(f"{name}: mmap({i})", d.mmap, CAP, i)
            _step(f"{name}: QBUF({i})", d.qbuf, CAP, i)
        _step(f"{name}: STREAMON", d.streamon, CAP)

    def frames(self, n):
        return _reader_frames(self.dev, self.count, n, self.name)

    def stop(self):
        """munmap all, then STREAMOFF, then close, with no REQBUFS(0)."""
        self.dev.munmap_all()
        _step(f"{self.name}: STREAMOFF", self.dev.streamoff, CAP)
        self.dev.close()


def _writer(openers, cell):
    # 15 fps: a replayed capture that also enumerates and sets up between its calls keeps up
    w = openers.proc("writer")
    w.call("start_writer", "mmap", count=2, fps=15, width=W, height=H,
           set_format=not cell.keep_format)
    return w


@pytest.mark.rules("K3", "C3")
@pytest.mark.timeout(240)
def test_k3_obs_virtual_camera_restarts(cell, openers):
    need_openers(cell, 2)
    for rnd in range(8):
        obs = ObsVirtualCam(cell, streamon=rnd % 2 == 0)
        for _ in range(3):
            obs.frame()
        if rnd % 2 == 0:  # a viewer on every other round
            from lib.common import Reader
            try:
                r = Reader(openers.fd())
            except OSError as exc:
                pytest.fail(f"OBS round {rnd}: a viewer could not start while OBS writes: {exc}")
            obs.frame()
            try:
                r.get(3.0)
            except OSError as exc:
                pytest.fail(f"OBS round {rnd}: the viewer got no frame: {exc}")
            r.dev.close()
        obs.stop()
    # stop/start many times without reloading the module: the 9th start must work too
    ObsVirtualCam(cell).stop()


@pytest.mark.rules("K4")
@pytest.mark.timeout(240)
def test_k4_chromium_capture_sequence(cell, openers):
    need_openers(cell, 2)
    _writer(openers, cell)
    time.sleep(0.3)
    c = ChromiumCapture(cell)
    c.frames(10)
    c.restart()
    c.frames(5)
    c.stop()
    # a second call (Chromium re-opens for every getUserMedia)
    c = ChromiumCapture(cell, "Chromium (second session)")
    c.frames(5)
    c.stop()


@pytest.mark.rules("K5", "C1")
@pytest.mark.timeout(240)
def test_k5_firefox_capture_sequence(cell, openers):
    need_openers(cell, 2)
    w = _writer(openers, cell)
    for rnd in range(3):
        f = FirefoxCapture(cell, f"Firefox (session {rnd})")
        f.frames(5)
        f.stop()
    st = w.call("pump_status")
    assert st["error"] is None, f"writer disturbed by Firefox sessions: {st['error']}"


@pytest.mark.rules("K1")
@pytest.mark.timeout(180)
def test_k1_ffmpeg_replay(cell, openers):
    need_openers(cell, 2)
    # writer: open(O_RDWR); G_FMT(OUTPUT); S_FMT(OUTPUT, sizeimage set); write() per frame
    wd = openers.fd(os.O_RDWR)
    _step("ffmpeg writer: G_FMT(OUTPUT)", wd.g_fmt, OUT)
    f = _step("ffmpeg writer: S_FMT(OUTPUT)", wd.s_fmt, OUT, W, H, YUYV, W * H * 2)
    for n in range(3):
        _step(f"ffmpeg writer: write() frame {n}", wd.write, frame_bytes(n, f["sizeimage"]))
    # reader: QUERYCAP needs CAPTURE + STREAMING; G_INPUT/ENUMINPUT; G_FMT/S_FMT; G_STD; G_PARM;
    # REQBUFS(MMAP, 256) must grant at least 2
    r = openers.fd()
    caps = r.device_caps()
    assert caps & CAP_VIDEO_CAPTURE and caps & CAP_STREAMING, (
        f"ffmpeg reader: QUERYCAP device_caps {caps_str(caps)} (+STREAMING "
        f"{bool(caps & CAP_STREAMING)}): needs CAPTURE and STREAMING")
    _step("ffmpeg reader: G_INPUT", r.g_input)
    _step("ffmpeg reader: ENUMINPUT(0) (ENOTTY is fatal)", r.enuminput, 0)
    rf = _step("ffmpeg reader: G_FMT(CAPTURE)", r.g_fmt, CAP)
    _step("ffmpeg reader: S_FMT(CAPTURE)", r.s_fmt, CAP, rf["width"], rf["height"],
          rf["pixelformat"])
    try:
        r.g_std()
    except OSError as exc:
        assert exc.errno in (errno.ENOTTY, errno.ENODATA, errno.EINVAL), exc
    _step("ffmpeg reader: G_PARM", r.g_parm, CAP)
    n = _step("ffmpeg reader: REQBUFS(CAPTURE, 256)", r.reqbufs, CAP, 256)["count"]
    assert n >= 2, (f"ffmpeg reader: REQBUFS(CAPTURE, 256) granted {n}: ffmpeg needs at least 2 "
                    f"('Insufficient buffer memory')")
    for i in range(n):
        q = r.querybuf(CAP, i)
        assert q["length"] >= rf["sizeimage"], (f"ffmpeg reader: QUERYBUF({i}) length "
                                                f"{q['length']} < sizeimage {rf['sizeimage']}")
        r.mmap(CAP, i)
        r.qbuf(CAP, i)
    _step("ffmpeg reader: STREAMON", r.streamon, CAP)
    for k in range(3, 8):
        wd.write(frame_bytes(k, f["sizeimage"]))
        try:
            b = r.wait_dqbuf(CAP, 3.0)
        except OSError as exc:
            pytest.fail(f"ffmpeg reader: DQBUF after the writer's frame {k}: {exc}")
        r.qbuf(CAP, b["index"])
    r.streamoff(CAP)
    r.munmap_all()
    r.close()
    wd.close()


@pytest.mark.rules("K2", "A1")
def test_k2_gstreamer_probes(cell, openers):
    """GStreamer's pool probes: REQBUFS(0) for MMAP, USERPTR, DMABUF; CREATE_BUFS(0)."""
    d = openers.fd()
    caps = d.device_caps()
    bt = OUT if caps & CAP_VIDEO_OUTPUT else CAP
    r = _step("GStreamer: REQBUFS(count 0, MMAP)", d.reqbufs, bt, 0, MMAP)
    assert r["capabilities"] & BUF_CAP_SUPPORTS_MMAP, (
        f"GStreamer reads REQBUFS(0, MMAP) capabilities: expected SUPPORTS_MMAP, got "
        f"{r['capabilities']:#x}")
    for mem, name in ((USERPTR, "USERPTR"), (DMABUF, "DMABUF")):
        e = err(d.reqbufs, bt, 0, mem)
        assert e == errno.EINVAL, (f"GStreamer probe REQBUFS(count 0, {name}): expected EINVAL "
                                   f"(only MMAP exists, A1), got {ename(e)}")
    try:
        d.create_bufs(bt, 0)
    except OSError as exc:
        assert exc.errno in (errno.ENOTTY, errno.EINVAL), f"CREATE_BUFS(0): {ename(exc.errno)}"
    # then the sink's own sequence on OUTPUT
    if caps & CAP_VIDEO_OUTPUT:
        d.enumoutput(0)
        d.g_output()
        f = d.s_fmt(OUT, W, H, YUYV) if not cell.keep_format else d.g_fmt(OUT)
        d.s_parm(OUT, 1, 30)
        n = _step("v4l2sink: REQBUFS(OUTPUT, 2)", d.reqbufs, OUT, 2)["count"]
        for i in range(n):
            d.mmap(OUT, i)
        _step("v4l2sink: STREAMON(OUTPUT)", d.streamon, OUT)
        queued = []
        for k in range(6):
            idx = k if k < n else None
            if idx is None:
                try:
                    b = d.wait_dqbuf(OUT, 3.0)
                except OSError as exc:
                    pytest.fail(f"v4l2sink: DQBUF(OUTPUT) to recycle: {exc}")
                assert b["index"] in queued, (
                    f"v4l2sink: DQBUF(OUTPUT) returned buffer {b['index']} which was not queued "
                    f"(queued: {queued}): GStreamer's 'buffer N was not queued' (S6)")
                queued.remove(b["index"])
                idx = b["index"]
            d.put_frame(idx, k, f["sizeimage"])
            queued.append(idx)
        d.streamoff(OUT)
        d.munmap_all()
        _step("v4l2sink: REQBUFS(0)", d.reqbufs, OUT, 0)


@pytest.mark.rules("K6", "A3")
@pytest.mark.timeout(240)
def test_k6_chromium_and_firefox_at_once(cell, openers):
    need_openers(cell, 3)
    _writer(openers, cell)
    time.sleep(0.3)
    c = ChromiumCapture(cell)
    # a refused step of its own sequence fails through _step, named after this consumer
    name = "Firefox (K6: second consumer, while Chromium captures)"
    try:
        f = FirefoxCapture(cell, name)
    except OSError as exc:
        pytest.fail(f"{name}: open/QUERYCAP/ENUM_FMT: expected success, got {exc}")
    for _ in range(3):
        c.frames(2)
        f.frames(2)
    f.stop()
    c.frames(3)
    c.stop()
