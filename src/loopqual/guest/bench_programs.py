"""Guest side of `loopqual bench --programs`: frames per second that real programs pass
through the device, each module of the plan loaded afresh for each pair.

A pair is a real writer (ffmpeg's v4l2 output, GStreamer's v4l2sink, OBS Studio's virtual
camera) and a real reader (ffmpeg's v4l2 input, GStreamer's v4l2src, headless Chromium or
Firefox ESR through getUserMedia). For each pair and module: the writer starts (ffmpeg and
GStreamer on a test pattern at the plan's size and rate, paced as a camera is; OBS with the
K3 scenario's configuration: its 128x96 scene at its own 10 fps, under Xvfb); once the device
streams the reader starts; once the reader has its first frame and the warm-up has passed, the
window opens. What each program reported is timestamped as it arrives, so that the figures
cover the window only and not the programs' start-up (under TCG, seconds to minutes):
- the reader's frames in the window, per second: ffmpeg's frames that differ from the frame
  before them (by MD5, -f framemd5); GStreamer's buffers through an identity element; a
  browser page's frames that differ from the frame before them (programs/ticking.py's page,
  which reports every second);
- the writer's frames in the window (ffmpeg's frame= counter; GStreamer: buffers through an
  identity element before v4l2sink; OBS: frames its graphics thread rendered, from
  obs-websocket's GetStats each second), per second, and the frames the writer itself
  reports as dropped over the whole run (ffmpeg's drop=, v4l2sink's QoS messages, OBS's
  skipped renders).

Run as: python -m loopqual.guest.bench_programs PLAN.json
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from loopqual.common import procgroup
from loopqual.guest.bench_device import load_fresh
from loopqual.guest.programs import ticking
from loopqual.guest.programs.infra import need_program
from loopqual.guest.programs.obs import Obs, fresh_home, xvfb
from loopqual.guest.runner import emit, rmmod

CAP_VIDEO_CAPTURE = 0x1
# ffmpeg's progress line ("frame=  11 fps=0.0 q=-0.0 size=N/A time=... speed=0.719x") names
# dup= and drop= only once they are not zero
FFMPEG_FRAME = re.compile(r"^frame=\s*(\d+)")
FFMPEG_DROP = re.compile(r"\bdrop=\s*(\d+)")
GST_QOS_DROPPED = re.compile(r"dropped=\(guint64\)(\d+)")
GST_CHAIN = re.compile(r"GstIdentity:(\w+): last-message = chain")
FRAMEMD5 = re.compile(r"^\d+,\s*-?\d+,\s*-?\d+,\s*-?\d+,\s*\d+,\s*([0-9a-f]{32})\s*$")
BROWSERS = ticking.PROGRAMS  # reader kind -> program
# Under TCG here OBS answered after 30-165 s and the browsers started in 70-120 s alone.
DESKTOP_START_LIMIT_S = 600


def writer_argv(kind: str, device: str, width: int, height: int, fps: int) -> list[str]:
    if kind == "ffmpeg":
        return ["ffmpeg", "-hide_banner", "-nostdin", "-stats", "-loglevel", "error", "-re",
                "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}",
                "-pix_fmt", "yuyv422", "-f", "v4l2", device]
    if kind == "gst":
        return ["gst-launch-1.0", "-v", "-m", "videotestsrc", "is-live=true", "pattern=ball", "!",
                f"video/x-raw,format=YUY2,width={width},height={height},framerate={fps}/1", "!",
                "identity", "name=written", "silent=false", "!", "v4l2sink", f"device={device}",
                "qos=true"]
    raise ValueError(f"unknown writer {kind}")


def reader_argv(kind: str, device: str) -> list[str]:
    if kind == "ffmpeg":
        return ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "v4l2",
                "-i", device, "-f", "framemd5", "-flush_packets", "1", "-"]
    if kind == "gst":
        return ["gst-launch-1.0", "-v", "v4l2src", f"device={device}", "!", "identity",
                "name=read", "silent=false", "!", "fakesink", "sync=false"]
    raise ValueError(f"unknown reader {kind}")


class Watched:
    """A program in its own session; every line it prints (split at \\n and \\r: ffmpeg's
    progress) is kept with the time it arrived, and written to its log."""

    def __init__(self, argv: list[str], log_path: Path):
        self.argv = argv
        self.lines: list[tuple[float, str]] = []
        self.log = open(log_path, "w")
        self.t0 = time.monotonic()
        self.p = procgroup.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        buf = b""
        while True:
            chunk = os.read(self.p.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            parts = re.split(rb"[\r\n]", buf)
            buf = parts.pop()
            now = time.monotonic()
            for raw in parts:
                if raw.strip():
                    line = raw.decode(errors="replace")
                    self.lines.append((now, line))
                    self.log.write(f"{now:.3f} {line}\n")
        if buf.strip():
            self.lines.append((time.monotonic(), buf.decode(errors="replace")))

    def stop(self) -> int | None:
        procgroup.stop(self.p, grace=5.0, sig=signal.SIGINT, reap_s=5.0)
        self._t.join(timeout=10)
        self.log.close()
        return self.p.returncode

    def tail(self, n: int = 6) -> str:
        return " | ".join(line for _t, line in self.lines[-n:])


def reader_frames(kind: str, lines: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """(arrival, frame key) per frame the reader got: ffmpeg's MD5 of the frame, GStreamer's
    buffer (a key of its own: v4l2src hands each buffer once)."""
    out = []
    for t, line in lines:
        if kind == "ffmpeg":
            m = FRAMEMD5.match(line)
            if m:
                out.append((t, m.group(1)))
        elif GST_CHAIN.search(line):
            out.append((t, f"buffer{len(out)}"))
    return out


def writer_counts(kind: str, lines: list[tuple[float, str]]) -> tuple[list[tuple[float, int]], int]:
    """((arrival, frames written so far) samples, frames the writer reported as dropped)."""
    samples, dropped = [], 0
    for t, line in lines:
        if kind == "ffmpeg":
            m = FFMPEG_FRAME.search(line)
            if m:
                samples.append((t, int(m.group(1))))
                d = FFMPEG_DROP.search(line)
                dropped = int(d.group(1)) if d else dropped
        else:
            if GST_CHAIN.search(line):
                samples.append((t, len(samples) + 1))
            m = GST_QOS_DROPPED.search(line)
            if m:
                dropped = max(dropped, int(m.group(1)))
    return samples, dropped


def in_window(samples: list[tuple[float, int]], start: float, end: float) -> float | None:
    """Frames per second from a counter's samples between start and end (the last sample at
    or before each)."""
    before = [n for t, n in samples if t <= start]
    upto = [(t, n) for t, n in samples if t <= end]
    if not before or not upto:
        return None
    return round((upto[-1][1] - before[-1]) / (end - start), 2)


def device_streams(device: str) -> bool:
    """An exclusive_caps=1 node shows CAPTURE once a writer streams into it."""
    import fcntl

    from linuxpy.video import raw

    try:
        fd = os.open(device, os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        cap = raw.v4l2_capability()
        fcntl.ioctl(fd, raw.IOC.QUERYCAP, cap)
        return bool(cap.device_caps & CAP_VIDEO_CAPTURE)
    except OSError:
        return False
    finally:
        os.close(fd)


def wait(pred, limit: float, step: float = 0.5) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def changes(frames: list[tuple[float, str]]) -> int:
    """Frames that differ from the frame before them."""
    return sum(1 for i, (_t, k) in enumerate(frames) if i == 0 or k != frames[i - 1][1])


class ProgramWriter(Watched):
    """ffmpeg or GStreamer writing a test pattern."""

    def __init__(self, kind: str, device: str, plan: dict, log_dir: Path):
        super().__init__(writer_argv(kind, device, plan["width"], plan["height"], plan["fps"]),
                         log_dir / "writer.log")
        self.kind = kind
        self.start_limit_s = plan["start_limit_s"]

    def counts(self) -> tuple[list[tuple[float, int]], int]:
        return writer_counts(self.kind, self.lines)


class ObsWriter:
    """OBS Studio under Xvfb with the K3 scenario's configuration (scenarios/apps/obs-config),
    its virtual camera started through obs-websocket. Written frames: what its graphics thread
    drew (GetStats each second: its frames less the renders it skipped); dropped: the renders
    it skipped."""

    kind = "obs"

    def __init__(self, log_dir: Path):
        self.start_limit_s = DESKTOP_START_LIMIT_S
        self.home = tempfile.mkdtemp(prefix="loopqual-bench-obs-")
        self.stack = contextlib.ExitStack()
        self.samples: list[tuple[float, int]] = []
        self.skipped: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            display = self.stack.enter_context(xvfb(str(log_dir / "xvfb.log")))
            self.obs = Obs(fresh_home(os.path.join(self.home, "obs")), display,
                           str(log_dir / "writer.log"))
        except BaseException:
            self.stack.close()
            shutil.rmtree(self.home, ignore_errors=True)
            raise
        self.p = self.obs.p
        self.t0 = self.obs.t0
        self.startup_s: float | None = None

    def start_camera(self) -> str:
        """"" once the virtual camera runs, else why it does not."""
        self.startup_s = self.obs.wait_ready()
        started, _s = self.obs.set_virtualcam(True)
        if not started:
            return f"OBS's virtual camera did not start: {self.obs.exited()} {self.obs.camera_lines()}"
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return ""

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            st = self.obs.stats()
            if "error" in st:
                return
            skipped = int(st.get("renderSkippedFrames") or 0)
            # renderTotalFrames counts the skipped renders too: what was drawn is the rest
            self.samples.append((time.monotonic(), int(st.get("renderTotalFrames") or 0) - skipped))
            self.skipped.append(skipped)

    def counts(self) -> tuple[list[tuple[float, int]], int]:
        dropped = self.skipped[-1] - self.skipped[0] if self.skipped else 0
        return self.samples, dropped

    def tail(self, n: int = 6) -> str:
        return self.obs.exited() + " " + " | ".join(self.obs.output(600).splitlines()[-n:])

    def stop(self) -> int | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.obs.stop()
        finally:
            self.stack.close()
            shutil.rmtree(self.home, ignore_errors=True)
        return self.p.returncode


class ProgramReader(Watched):
    """ffmpeg or GStreamer reading the device."""

    def __init__(self, kind: str, device: str, log_dir: Path):
        super().__init__(reader_argv(kind, device), log_dir / "reader.log")
        self.kind = kind

    def first_frame(self) -> float | None:
        frames = reader_frames(self.kind, self.lines)
        return frames[0][0] if frames else None

    def window(self, start: float, end: float) -> dict:
        got = [(t, k) for t, k in reader_frames(self.kind, self.lines) if start <= t < end]
        return {"reader_frames": len(got), "reader_distinct": len({k for _t, k in got}),
                "reader_fps": round(changes(got) / (end - start), 2)}


class BrowserReader:
    """Headless Chromium or Firefox ESR on programs/ticking.py's page, which reports every second
    what it has received; a thread reads its output. Chromium's page reads every frame
    (MediaStreamTrackProcessor): its frames unlike the one before count. Firefox's page looks
    at its <video> element only every 100 ms: the frames the element presented count
    (requestVideoFrameCallback)."""

    COUNTER = {"chromium": "changes", "firefox": "presented"}

    def __init__(self, kind: str, device: str, log_dir: Path, run_s: int):
        self.kind = kind
        with open(f"/sys/class/video4linux/{os.path.basename(device)}/name") as f:
            card = f.read().strip()
        self.home = tempfile.mkdtemp(prefix=f"loopqual-bench-{kind}-")
        self.b = ticking.launch(kind, need_program(BROWSERS[kind]), self.home, str(log_dir), card,
                                run_s, tick_s=1)
        self.p = self.b.p
        self.t0 = self.b.t0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while not self._stop.is_set() and not self.b.log.closed and self.p.poll() is None:
            self.b.pump(0.5)

    def counts(self) -> list[tuple[float, int]]:
        key = self.COUNTER[self.kind]
        return [(t, int(report.get(key) or 0)) for t, report in self.b.history]

    def first_frame(self) -> float | None:
        return next((t for t, n in self.counts() if n > 0), None)

    def window(self, start: float, end: float) -> dict:
        fps = in_window(self.counts(), start, end)
        return {"reader_frames": round(fps * (end - start)) if fps is not None else 0,
                "reader_fps": fps if fps is not None else 0.0,
                "reader_page": self.b.last}

    def tail(self, n: int = 6) -> str:
        return f"page: {self.b.state()}; output: {self.b.output_tail(400)}"

    def stop(self) -> int | None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.b.stop()
        shutil.rmtree(self.home, ignore_errors=True)
        return self.p.returncode


def start_writer(kind: str, device: str, plan: dict, log_dir: Path):
    if kind == "obs":
        return ObsWriter(log_dir)
    return ProgramWriter(kind, device, plan, log_dir)


def start_reader(kind: str, device: str, plan: dict, log_dir: Path):
    if kind in BROWSERS:
        return BrowserReader(kind, device, log_dir,
                             run_s=int(DESKTOP_START_LIMIT_S + plan["warmup_s"] + plan["window_s"] + 60))
    return ProgramReader(kind, device, log_dir)


def reader_limit(kind: str, plan: dict) -> float:
    return DESKTOP_START_LIMIT_S if kind in BROWSERS else plan["start_limit_s"]


def measure(device: str, pair: dict, plan: dict, log_dir: Path) -> dict:
    w_kind, r_kind = pair["writer"], pair["reader"]
    row = {"writer": w_kind, "reader": r_kind}
    writer = reader = None
    try:
        writer = start_writer(w_kind, device, plan, log_dir)
        if isinstance(writer, ObsWriter):
            why = writer.start_camera()
            row["writer_startup_s"] = writer.startup_s
            if why:
                row["error"] = why
                return row
        limit = writer.start_limit_s
        if not wait(lambda: device_streams(device), limit):
            row["error"] = (f"the {w_kind} writer did not make the device stream within {limit} s "
                            f"(exit {writer.p.poll()}): {writer.tail()}")
            return row
        row["writer_streaming_s"] = round(time.monotonic() - writer.t0, 1)
        reader = start_reader(r_kind, device, plan, log_dir)
        limit = reader_limit(r_kind, plan)
        wait(lambda: reader.first_frame() is not None or reader.p.poll() is not None, limit)
        first = reader.first_frame()
        if first is None:
            row["error"] = (f"the {r_kind} reader got no frame within {limit} s (exit "
                            f"{reader.p.poll()}): {reader.tail()}; writer: {writer.tail(3)}")
            return row
        row["reader_first_frame_s"] = round(first - reader.t0, 1)
        start = time.monotonic() + plan["warmup_s"]
        end = start + plan["window_s"]
        time.sleep(max(0.0, end - time.monotonic()) + 1.5)
        row.update(reader.window(start, end))
        samples, _dropped = writer.counts()
        row["writer_fps"] = in_window(samples, start, end)
        for name, proc in (("reader", reader), ("writer", writer)):
            if proc.p.poll() is not None:
                row.setdefault("notes", []).append(f"the {name} ended during the window "
                                                   f"(exit {proc.p.returncode}): {proc.tail(3)}")
    except Exception as exc:  # a program that cannot start (InfrastructureProblem): said, not raised
        row["error"] = f"{type(exc).__name__}: {exc}"[:1500]
    finally:
        if reader is not None:
            reader.stop()
        if writer is not None:
            writer.stop()
            _samples, row["writer_dropped"] = writer.counts()
    return row


def main(argv: list[str]) -> int:
    plan = json.loads(Path(argv[0]).read_text())
    out = Path(plan["out"])
    emit("boot", release=os.uname().release, cells=len(plan["modules"]))
    result = {"release": os.uname().release, "modules": {}, "versions": plan.get("versions", {})}
    for mod in plan["modules"]:
        result["modules"][mod["name"]] = {"ko": mod["ko"], "rows": [], "errors": []}
    # Modules alternate pair by pair (each loaded afresh), so that a change in the machine's
    # load falls on every module alike.
    for i, pair in enumerate(plan["pairs"]):
        emit("cell-start", cell=f"p{i}")
        for mod in plan["modules"]:
            entry = result["modules"][mod["name"]]
            emit("step", cell=f"p{i}", step=f"{mod['name']}: {pair['writer']} writes, "
                                            f"{pair['reader']} reads")
            device, error = load_fresh(mod["ko"], plan["params"])
            if device is None:
                entry["errors"].append(error)
                continue
            log_dir = out / f"{mod['name']}-{pair['writer']}-to-{pair['reader']}"
            log_dir.mkdir(parents=True, exist_ok=True)
            entry["rows"].append(measure(device, pair, plan, log_dir))
            status = rmmod()
            if status != "ok":
                entry["errors"].append(f"rmmod after {pair['writer']} -> {pair['reader']}: {status}")
        emit("cell-end", cell=f"p{i}", complete=True)
    (out / "bench-programs-guest.json").write_text(json.dumps(result, indent=1))
    emit("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
