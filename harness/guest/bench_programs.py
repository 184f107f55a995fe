"""Guest side of `loopqual bench --programs`: frames per second that real programs pass
through the device, each module of the plan loaded afresh for each pair.

A pair is a real writer (ffmpeg's v4l2 output, GStreamer's v4l2sink) and a real reader
(ffmpeg's v4l2 input, GStreamer's v4l2src). For each pair and module: the writer starts on a
test pattern at the plan's size and rate (paced as a camera is); once the device streams the
reader starts; once the reader has its first frame and the warm-up has passed, the window
opens. What each program printed is timestamped as it arrives, so that the figures cover
the window only and not the programs' start-up (under TCG, seconds to tens of seconds):
- the reader's frames in the window (ffmpeg: distinct frames by their MD5, -f framemd5;
  GStreamer: buffers through an identity element), per second;
- the writer's frames in the window (ffmpeg's frame= counter; GStreamer: buffers through an
  identity element before v4l2sink), per second, and the frames the writer itself reports as
  dropped over the whole run (ffmpeg's drop=, v4l2sink's QoS messages).

Run as: python -m loopqual.guest.bench_programs PLAN.json
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .. import procgroup
from .bench import load_fresh
from .runner import emit, rmmod

CAP_VIDEO_CAPTURE = 0x1
# ffmpeg's progress line ("frame=  11 fps=0.0 q=-0.0 size=N/A time=... speed=0.719x") names
# dup= and drop= only once they are not zero
FFMPEG_FRAME = re.compile(r"^frame=\s*(\d+)")
FFMPEG_DROP = re.compile(r"\bdrop=\s*(\d+)")
GST_QOS_DROPPED = re.compile(r"dropped=\(guint64\)(\d+)")
GST_CHAIN = re.compile(r"GstIdentity:(\w+): last-message = chain")
FRAMEMD5 = re.compile(r"^\d+,\s*-?\d+,\s*-?\d+,\s*-?\d+,\s*\d+,\s*([0-9a-f]{32})\s*$")


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


def measure(device: str, pair: dict, plan: dict, log_dir: Path) -> dict:
    w_kind, r_kind = pair["writer"], pair["reader"]
    row = {"writer": w_kind, "reader": r_kind}
    limit = plan["start_limit_s"]
    writer = Watched(writer_argv(w_kind, device, plan["width"], plan["height"], plan["fps"]),
                     log_dir / "writer.log")
    reader = None
    try:
        if not wait(lambda: device_streams(device), limit):
            row["error"] = (f"the {w_kind} writer did not make the device stream within {limit} s "
                            f"(exit {writer.p.poll()}): {writer.tail()}")
            return row
        row["writer_streaming_s"] = round(time.monotonic() - writer.t0, 1)
        reader = Watched(reader_argv(r_kind, device), log_dir / "reader.log")
        t_reader = time.monotonic()
        wait(lambda: reader_frames(r_kind, reader.lines) or reader.p.poll() is not None, limit)
        first = reader_frames(r_kind, reader.lines)
        if not first:
            row["error"] = (f"the {r_kind} reader got no frame within {limit} s (exit "
                            f"{reader.p.poll()}): {reader.tail()}; writer: {writer.tail(3)}")
            return row
        row["reader_first_frame_s"] = round(first[0][0] - t_reader, 1)
        start = time.monotonic() + plan["warmup_s"]
        end = start + plan["window_s"]
        time.sleep(max(0.0, end - time.monotonic()) + 0.5)
        got = [(t, k) for t, k in reader_frames(r_kind, reader.lines) if start <= t < end]
        row["reader_frames"] = len(got)
        row["reader_distinct"] = len({k for _t, k in got})
        row["reader_fps"] = round(row["reader_distinct"] / plan["window_s"], 2)
        samples, _dropped = writer_counts(w_kind, writer.lines)
        row["writer_fps"] = in_window(samples, start, end)
        for name, proc in (("reader", reader), ("writer", writer)):
            if proc.p.poll() is not None:
                row.setdefault("notes", []).append(f"the {name} ended during the window "
                                                   f"(exit {proc.p.returncode}): {proc.tail(3)}")
    finally:
        if reader is not None:
            reader.stop()
        writer.stop()
        _samples, row["writer_dropped"] = writer_counts(w_kind, writer.lines)
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
