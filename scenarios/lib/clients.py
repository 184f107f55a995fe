"""Running real client programs with hard timeouts, and judging them by the frames they move."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from loopqual.common import procgroup

from .common import Reader
from .v4l2 import CAP_VIDEO_CAPTURE, IN_ST_NO_SIGNAL, Device, V4L2Error

ENV = dict(os.environ, LC_ALL="C")


class Client:
    """A program in its own session (process group), so stop() reaches it and its children."""

    def __init__(self, argv: list[str], name: str, log_dir: str, env: dict | None = None,
                 stdin_pipe: bool = False):
        self.argv = argv
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.log = open(self.log_path, "wb")
        self.p = procgroup.spawn(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                                 env=env or ENV)
        self.started = time.monotonic()
        self.feeder = None

    def feed(self, size: int, fps: float) -> None:
        """Feed numbered frames (lib/delivery.pattern) into its stdin at fps from now on."""
        from .delivery import Feeder

        self.feeder = Feeder(self.p.stdin, size, fps)

    def alive(self) -> bool:
        return self.p.poll() is None

    def wait(self, timeout: float) -> int | None:
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGINT (clean stop, as a user's Ctrl-C), then SIGKILL to the whole session."""
        if self.feeder is not None:
            self.feeder.stop()
        procgroup.stop(self.p, grace=grace, sig=signal.SIGINT, reap_s=5.0)
        if self.feeder is not None:
            self.feeder.stop()  # a feeder blocked on a program that stopped reading ends now
        self.log.close()
        return self.p.returncode

    def output(self, tail: int = 1500) -> str:
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
        except OSError:
            return ""
        return data[-tail:].decode(errors="replace")


def cell_logdir(cell, suite: str, name: str) -> str:
    """The cell's own directory for one program's logs and outputs (cells of a guest share
    work_dir: an output file left by an earlier cell must never count for this one)."""
    d = os.path.join(cell.work_dir, suite, cell.id, name)
    os.makedirs(d, exist_ok=True)
    return d


def fresh(path: str) -> str:
    """An output path with no file behind it yet: a program that writes nothing leaves nothing."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return path


def gst_env(cell) -> dict:
    env = dict(os.environ, LC_ALL="C")
    # one plugin registry per guest, kept across cells and suites: scanning it again costs
    # minutes under TCG
    env["GST_REGISTRY"] = os.path.join(cell.work_dir, "gst-registry.bin")
    return env


def digest(data) -> str:
    return hashlib.blake2b(bytes(data), digest_size=8).hexdigest()


def wait_for_writer(dev_path: str, timeout: float, client: Client | None = None) -> str:
    """Wait until a writer streams into the device, as a new opener sees it: QUERYCAP shows
    CAPTURE (exclusive_caps=1 shows it only then) and input 0 has a signal (ENUMINPUT
    status without NO_SIGNAL; sources that never set that flag pass at once). "" once it
    does, else why not. A reader that claimed before the writer would pin the device's
    current format and judge the reader's timing, not the writer."""
    deadline = time.monotonic() + timeout
    why = "no answer"
    while time.monotonic() < deadline:
        if client is not None and not client.alive():
            return f"{client.name} exited ({client.p.returncode}): {client.output(600)}"
        try:
            with Device(dev_path) as d:
                if not d.device_caps() & CAP_VIDEO_CAPTURE:
                    why = "QUERYCAP shows no CAPTURE (no writer streaming)"
                elif d.input_status(0) & IN_ST_NO_SIGNAL:
                    why = "ENUMINPUT(0) status NO_SIGNAL (no writer streaming)"
                else:
                    return ""
        except OSError as exc:
            why = str(exc)
        time.sleep(0.25)
    return f"no writer became visible within {timeout:.0f} s: {why}"


@dataclass
class Window:
    """What a reader got in its window: frames, distinct non-blank frames, changes (non-blank
    frames unlike the frame before them), and why it got nothing ("" if it did)."""

    frames: int = 0
    distinct: int = 0
    changes: int = 0
    note: str = ""


def read_window(dev_path: str, seconds: float, setup_timeout: float = 60.0,
                client: Client | None = None,
                on_frame: Callable[[memoryview, dict], None] | None = None,
                first_frame_timeout: float = 0.0,
                until: Callable[[], bool] | None = None, until_every_s: float = 0.5,
                on_edge: Callable[[str], None] | None = None) -> Window:
    """Wait for a writer to stream (wait_for_writer), open a reader (retrying while the
    writer starts up), collect frames for `seconds`; on_frame(data, format) sees each
    non-blank frame (the reader's G_FMT(CAPTURE)), to judge its content. With
    first_frame_timeout, the window starts at the first frame, awaited that long (a writer
    that streams before it renders, as OBS under software OpenGL). With until, the window
    ends early once it returns True (asked every until_every_s seconds; the reader does not
    dequeue while it is asked). on_edge("start") and on_edge("end") are called as the window
    opens and closes (to read the writer's own counters at the same moments)."""
    deadline = time.monotonic() + setup_timeout
    why = wait_for_writer(dev_path, setup_timeout, client)
    if why:
        return Window(note=why)
    last_err = ""
    d = None
    r = None
    while time.monotonic() < deadline:
        if client is not None and not client.alive():
            return Window(note=f"{client.name} exited ({client.p.returncode}): "
                               f"{client.output(600)}")
        try:
            d = Device(dev_path)
            r = Reader(d, count=2)
            break
        except OSError as exc:
            last_err = str(exc)
            if d is not None:
                d.close()
                d = None
            time.sleep(0.5)
    if r is None:
        return Window(note=f"no reader could start within {setup_timeout:.0f} s: {last_err}")
    fmt = d.g_fmt(0x1) if on_frame is not None else {}
    w = Window()
    seen = set()
    last = None
    if first_frame_timeout > 0:
        try:
            b = d.wait_dqbuf(0x1, first_frame_timeout)
            d.qbuf(0x1, b["index"])
        except V4L2Error as exc:
            d.close()
            return Window(note=f"no frame within {first_frame_timeout:.0f} s of the reader's "
                               f"start: {exc}")
    end = time.monotonic() + seconds
    asked = 0.0
    if on_edge is not None:
        on_edge("start")
    # frames published before the reader started may be returned first: collect for a while
    try:
        while time.monotonic() < end:
            if until is not None and time.monotonic() - asked >= until_every_s:
                asked = time.monotonic()
                if until():
                    break
            try:
                b = d.wait_dqbuf(0x1, max(0.1, min(0.5, end - time.monotonic())))
            except V4L2Error:
                continue
            data = d.maps[(0x1, b["index"])][: b["bytesused"] or None]
            if any(data[::97]):
                key = digest(data)
                seen.add(key)
                w.changes += key != last
                last = key
                if on_frame is not None:
                    on_frame(data, fmt)
            w.frames += 1
            d.qbuf(0x1, b["index"])
    finally:
        if on_edge is not None:
            on_edge("end")
        d.close()
    w.distinct = len(seen)
    return w
