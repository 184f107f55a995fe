"""Helpers shared by scenarios: skips that depend on the cell, in-process writer/reader."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest

from .v4l2 import (
    CAP,
    CAP_VIDEO_CAPTURE,
    CAP_VIDEO_OUTPUT,
    OUT,
    YUYV,
    Device,
    V4L2Error,
    ename,
    fourcc,
    frame_bytes,
)

W, H = 160, 120  # the standard format of the scenarios (small: TCG is slow)
W2, H2 = 320, 240  # "another" format


def need_openers(cell, n: int) -> None:
    if cell.max_openers < n:
        pytest.skip(f"needs {n} openers at once; max_openers={cell.max_openers} in this cell "
                    f"(L1 is what applies here)")


def need_ec(cell, value: bool, rule: str) -> None:
    if bool(cell.exclusive_caps) != value:
        pytest.skip(f"{rule} applies to exclusive_caps={int(value)}; this cell has "
                    f"exclusive_caps={int(cell.exclusive_caps)}")


def skip_if_keep(cell, rule: str, why: str = "keep_format=1 keeps format and count pinned "
                 "across sessions") -> None:
    if cell.keep_format:
        pytest.skip(f"{rule} needs an unpinned device; {why}")


def advertised(dev: Device) -> list[tuple[int, str]]:
    """The buffer directions QUERYCAP advertises now. With exclusive_caps=1 a node shows only
    one of them, and ioctls for the other type are refused (EINVAL) to openers that do not
    already claim it (v4l2-compliance checks that), so scenarios judge those directions only."""
    caps = dev.device_caps()
    out = []
    if caps & CAP_VIDEO_OUTPUT:
        out.append((OUT, "OUTPUT"))
    if caps & CAP_VIDEO_CAPTURE:
        out.append((CAP, "CAPTURE"))
    return out


def fmt_str(f: dict) -> str:
    return f"{fourcc(f['pixelformat'])} {f['width']}x{f['height']} sizeimage={f['sizeimage']}"


def caps_str(caps: int) -> str:
    parts = []
    if caps & CAP_VIDEO_CAPTURE:
        parts.append("VIDEO_CAPTURE")
    if caps & CAP_VIDEO_OUTPUT:
        parts.append("VIDEO_OUTPUT")
    return "|".join(parts) or "neither CAPTURE nor OUTPUT"


def expect_errno(code: int, want: int, what: str) -> None:
    assert code == want, f"{what}: expected {ename(want)}, got {ename(code)}"


def sysfs_attr(cell, name: str) -> str | None:
    try:
        return (Path("/sys/class/video4linux") / Path(cell.device).name / name).read_text().strip()
    except OSError:
        return None


class Writer:
    """An in-process mmap writer on one opener."""

    def __init__(self, dev: Device, count: int = 2, width: int = W, height: int = H,
                 pixfmt: int = YUYV, streamon: bool = True, set_format: bool = True):
        self.dev = dev
        self.fmt = dev.s_fmt(OUT, width, height, pixfmt) if set_format else dev.g_fmt(OUT)
        self.count = dev.reqbufs(OUT, count)["count"]
        assert self.count >= 1, f"REQBUFS(OUTPUT, {count}) granted 0 buffers"
        for i in range(self.count):
            dev.mmap(OUT, i)
        self.free = list(range(self.count))
        self.n = 0
        self.last_ts = None
        if streamon:
            dev.streamon(OUT)

    def send(self, timeout: float = 3.0) -> dict:
        """Publish the next frame; returns the queued buffer (with its timestamp)."""
        if not self.free:
            try:
                b = self.dev.wait_dqbuf(OUT, timeout)
            except V4L2Error as exc:
                raise AssertionError(f"writer: DQBUF(OUTPUT) to recycle a buffer: {exc}") from None
            self.free.append(b["index"])
        idx = self.free.pop(0)
        now = time.time()
        ts = (int(now), int((now % 1) * 1e6))
        self.dev.put_frame(idx, self.n, self.fmt["sizeimage"], ts=ts)
        self.last_ts = ts
        self.n += 1
        return {"index": idx, "frame": self.n - 1, "ts": ts}


class Reader:
    """An in-process mmap reader on one opener."""

    def __init__(self, dev: Device, count: int = 2, streamon: bool = True):
        self.dev = dev
        self.count = dev.setup_mmap(CAP, count)
        if streamon:
            dev.streamon(CAP)

    def get(self, timeout: float = 3.0) -> dict:
        b = self.dev.wait_dqbuf(CAP, timeout)
        b["frame"] = self.dev.read_frame_number(CAP, b["index"])
        self.dev.qbuf(CAP, b["index"])
        return b

    def get_frame(self, n: int, timeout: float = 3.0) -> dict:
        """Dequeue until frame number n arrives. Frames before it are passed over: the newest
        frame published before the reader started, which it gets first (S7), may be another
        writer's, whose numbers are not this writer's (kept across writers by keep_format,
        F5)."""
        deadline = time.monotonic() + timeout
        while True:
            b = self.get(max(0.05, deadline - time.monotonic()))
            if b["frame"] == n:
                return b
            if time.monotonic() > deadline:
                raise V4L2Error(errno.ETIMEDOUT, f"frame {n} (last got frame {b['frame']})")


# -- exclusive_caps=1 with keep_format=1: later writers come back through write() ---------

KEPT_HOW = ("write() of one frame of the kept format (exclusive_caps=1, keep_format=1 and a "
            "format set: the node shows CAPTURE only, X1, and refuses OUTPUT ioctls to openers "
            "that do not claim, X2; the next writer comes back through write(), W1+F5)")


def kept_capture_only(cell, opener) -> bool:
    """Must a writer on this opener start through write()? True when the loaded parameters say
    exclusive_caps=1 and keep_format=1 and QUERYCAP (as this opener sees it) shows CAPTURE
    without OUTPUT: a format has been set and is kept (X1), so G_FMT/S_FMT/REQBUFS(OUTPUT) by
    an opener that does not claim get EINVAL, and under X1 + F5 the next writer comes back
    through write() (W1: it does REQBUFS + STREAMON(OUTPUT) itself). `opener` is a Device or
    a proc.Worker (both answer device_caps())."""
    if not (cell.exclusive_caps and cell.keep_format):
        return False
    caps = opener.device_caps()
    return bool(caps & CAP_VIDEO_CAPTURE) and not caps & CAP_VIDEO_OUTPUT


def kept_format(opener) -> dict:
    """The kept format, for a writer that must start through write() (kept_capture_only): read
    with G_FMT(CAPTURE), the direction the node offers (X1). A module that shows CAPTURE but
    refuses G_FMT(CAPTURE) breaks X1/F5, which test_f5_keep_format_survives_last_close judges
    with no fallback; here G_FMT(OUTPUT) is tried then, only to learn the frame size, so that
    the calling scenario still judges its own rule. `opener` is a Device or a proc.Worker."""
    try:
        return opener.g_fmt(CAP)
    except OSError as exc:
        try:
            return opener.g_fmt(OUT)
        except OSError:
            raise V4L2Error(exc.errno, "G_FMT(CAPTURE) for the kept format (G_FMT(OUTPUT) "
                                       "refused too)") from None


class FileWriter:
    """An in-process write() writer (W1): the first send() claims OUTPUT and takes the write
    token; each send() publishes one frame (frame_bytes numbering, like Writer)."""

    def __init__(self, dev: Device, fmt: dict, send_first: bool = True):
        self.dev = dev
        self.fmt = fmt
        self.count = None
        self.n = 0
        self.last_ts = None
        if send_first:
            self.send()

    def send(self, timeout: float = 3.0) -> dict:
        try:
            self.dev.write(frame_bytes(self.n, self.fmt["sizeimage"]))
        except V4L2Error as exc:
            raise V4L2Error(exc.errno, f"write() of frame {self.n} ({fmt_str(self.fmt)})") \
                from None
        self.n += 1
        return {"index": None, "frame": self.n - 1, "ts": None}


def write_format(cell, dev: Device) -> dict:
    """The format a write() writer on this opener writes: the kept one where the node shows it
    CAPTURE only (G_FMT on the direction offered), the kept one read on OUTPUT with
    keep_format=1 otherwise, else W x H YUYV set with S_FMT(OUTPUT)."""
    if kept_capture_only(cell, dev):
        return kept_format(dev)
    if cell.keep_format:
        return dev.g_fmt(OUT)
    return dev.s_fmt(OUT, W, H)


def new_writer(cell, dev: Device, count: int = 2):
    """A streaming writer on opener `dev`, started the way the contract allows now: an mmap
    Writer (S_FMT unless keep_format, REQBUFS, STREAMON(OUTPUT)), or, where kept_capture_only(),
    a FileWriter of the kept format (its first write() sets it up). Failures raise V4L2Error
    naming what was tried."""
    if kept_capture_only(cell, dev):
        try:
            fmt = kept_format(dev)
        except V4L2Error as exc:
            raise V4L2Error(exc.errno, f"{exc.op}, before {KEPT_HOW}") from None
        try:
            return FileWriter(dev, fmt)
        except V4L2Error as exc:
            raise V4L2Error(exc.errno, f"{KEPT_HOW}: {exc.op}") from None
    try:
        return Writer(dev, count=count, set_format=not cell.keep_format)
    except V4L2Error as exc:
        how = "G_FMT" if cell.keep_format else "S_FMT"
        raise V4L2Error(exc.errno, f"mmap writer ({how}, REQBUFS, mmap, STREAMON OUTPUT): "
                                   f"{exc.op}") from None


def start_proc_writer(cell, w, mode: str = "mmap", count: int = 2, fps: float = 30,
                      set_format: bool | None = None) -> dict:
    """Start the writer pump of proc.Worker `w` the way the contract allows now: its
    start_writer(mode, ...) as asked, or, where kept_capture_only(), one write() of the kept
    format (G_FMT on CAPTURE, the direction the node shows it) and then a write() pump, whose
    G_FMT(OUTPUT) the claim it now holds allows (X2). Returns start_writer's reply plus "via"."""
    if set_format is None:
        set_format = not cell.keep_format
    if kept_capture_only(cell, w):
        try:
            fmt = kept_format(w)
            w.call("write", frame_bytes(0, fmt["sizeimage"]))
        except V4L2Error as exc:
            raise V4L2Error(exc.errno, f"{w.name}: {KEPT_HOW}: {exc.op}") from None
        info = w.call("start_writer", "write", fps=fps, set_format=False)
        info["via"] = "write"
        return info
    info = w.call("start_writer", mode, count=count, fps=fps, set_format=set_format)
    info["via"] = mode
    return info


def wait_until(pred, timeout: float = 3.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


def new_writer_works(cell, openers, what: str):
    """After `what`, a new writer must stream and a reader get its frame (C1-C3: the device is
    reusable)."""
    d = openers.fd()
    try:
        wr = new_writer(cell, d, count=2)
    except OSError as exc:
        pytest.fail(f"after {what}: expected a new writer to start, it failed: {exc}")
    try:
        r = Reader(openers.fd())
    except OSError as exc:
        pytest.fail(f"after {what}: a reader (REQBUFS CAPTURE, STREAMON) failed with a new "
                    f"writer streaming: {exc}")
    f = wr.send()
    try:
        b = r.get_frame(f["frame"], 5.0)
    except OSError as exc:
        pytest.fail(f"after {what}: the new writer's frame did not reach a reader: {exc}")
    assert b["frame"] == f["frame"]
    r.dev.close()
    d.close()


def advertises_output_when_idle(cell, what: str):
    if not cell.exclusive_caps or cell.keep_format:
        return
    with Device(cell.device) as d:
        caps = wait_until(lambda: d.device_caps() if d.device_caps() & CAP_VIDEO_OUTPUT else 0,
                          3.0) or d.device_caps()
    assert caps & CAP_VIDEO_OUTPUT and not caps & CAP_VIDEO_CAPTURE, (
        f"exclusive_caps=1, after {what} and every opener closed: expected device_caps OUTPUT "
        f"(not CAPTURE), got {caps_str(caps)}")
