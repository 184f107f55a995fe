"""Guest side of `loopqual bench`: frames and bytes per second through the device.

For each module of the plan (loaded with the plan's parameters), each frame size (YUYV) and
each producer kind (write() or mmap streaming on OUTPUT, as fast as it can or paced at a
camera's frame rate), with 1 or N
readers (mmap streaming on CAPTURE, separate processes): the writer starts, the readers
start, everyone counts for the measuring window, everyone stops. Plus the guest's memcpy
bandwidth as the physical reference. Results: one JSON file in the shared directory.

Run as: python -m loopqual.guest.bench_device PLAN.json
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import mmap
import os
import select
import signal
import sys
import time
from pathlib import Path

from linuxpy.video import raw

from loopqual.common import procgroup
from loopqual.guest.runner import emit, insmod, module_loaded, rmmod, set_output_yuyv, video_nodes, wait_nodes

OUT, CAP = raw.BufType.VIDEO_OUTPUT, raw.BufType.VIDEO_CAPTURE


def _reqbufs(fd: int, buftype: int, count: int) -> int:
    req = raw.v4l2_requestbuffers()
    req.type, req.memory, req.count = buftype, raw.Memory.MMAP, count
    fcntl.ioctl(fd, raw.IOC.REQBUFS, req)
    return req.count


def _buffer(buftype: int, index: int = 0) -> raw.v4l2_buffer:
    b = raw.v4l2_buffer()
    b.type, b.memory, b.index = buftype, raw.Memory.MMAP, index
    return b


def _map_all(fd: int, buftype: int, count: int) -> list[tuple[raw.v4l2_buffer, mmap.mmap]]:
    out = []
    for i in range(count):
        b = _buffer(buftype, i)
        fcntl.ioctl(fd, raw.IOC.QUERYBUF, b)
        out.append((b, mmap.mmap(fd, b.length, offset=b.m.offset)))
    return out


def writer(device: str, kind: str, width: int, height: int, stop_at: float,
           pace_fps: float | None = None) -> dict:
    """As fast as it can, or one frame every 1/pace_fps seconds (a camera's rate)."""
    fd = os.open(device, os.O_RDWR)
    size = set_output_yuyv(fd, width, height)
    frames = 0
    t0 = time.monotonic()
    slot = [t0]

    def wait_slot() -> None:
        if pace_fps:
            slot[0] += 1.0 / pace_fps
            delay = slot[0] - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    if kind == "write":
        frame = bytearray(size)
        while time.monotonic() < stop_at:
            wait_slot()
            frame[:4] = frames.to_bytes(4, "little")
            os.write(fd, frame)
            frames += 1
    else:
        count = _reqbufs(fd, OUT, 4)
        bufs = _map_all(fd, OUT, count)
        for b, _m in bufs:
            b.bytesused = size
            fcntl.ioctl(fd, raw.IOC.QBUF, b)
        fcntl.ioctl(fd, raw.IOC.STREAMON, ctypes.c_int(OUT))
        while time.monotonic() < stop_at:
            wait_slot()
            b = _buffer(OUT)
            fcntl.ioctl(fd, raw.IOC.DQBUF, b)
            bufs[b.index][1][:4] = frames.to_bytes(4, "little")
            b.bytesused = size
            fcntl.ioctl(fd, raw.IOC.QBUF, b)
            frames += 1
    elapsed = time.monotonic() - t0
    os.close(fd)
    return {"frames": frames, "seconds": round(elapsed, 3), "size": size}


def reader(device: str, start_at: float, stop_at: float) -> dict:
    fd = os.open(device, os.O_RDWR | os.O_NONBLOCK)
    count = _reqbufs(fd, CAP, 4)
    bufs = _map_all(fd, CAP, count)
    for b, _m in bufs:
        fcntl.ioctl(fd, raw.IOC.QBUF, b)
    fcntl.ioctl(fd, raw.IOC.STREAMON, ctypes.c_int(CAP))
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    frames = nbytes = repeats = 0
    last = None
    counting = False
    t_count = start_at
    while True:
        now = time.monotonic()
        if now >= stop_at:
            break
        if not counting and now >= start_at:
            counting, frames, nbytes, repeats, t_count = True, 0, 0, 0, now
        if not poller.poll(500):
            continue
        b = _buffer(CAP)
        try:
            fcntl.ioctl(fd, raw.IOC.DQBUF, b)
        except BlockingIOError:
            continue
        # A frame counts once, by content (the writer's counter in its first 4 bytes): a
        # buffer that holds the frame before it again (a slow writer's last frame, repeated)
        # is counted apart.
        number = bytes(bufs[b.index][1][:4])
        if number != last:
            frames += 1
            nbytes += b.bytesused
            last = number
        else:
            repeats += 1
        fcntl.ioctl(fd, raw.IOC.QBUF, b)
    elapsed = time.monotonic() - t_count
    os.close(fd)
    return {"frames": frames, "bytes": nbytes, "repeats": repeats, "seconds": round(elapsed, 3)}


def _in_child(fn, *args) -> tuple[int, int]:
    """Fork; the child runs fn and sends its JSON result (or error) through a pipe."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        try:
            res = fn(*args)
        except BaseException as exc:
            res = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(wfd, json.dumps(res).encode())
        os._exit(0)
    os.close(wfd)
    return pid, rfd


def _collect(pid: int, rfd: int, timeout: float) -> dict:
    ready, _, _ = select.select([rfd], [], [], timeout)
    data = os.read(rfd, 65536) if ready else b""
    os.close(rfd)
    if not ready:
        os.kill(pid, signal.SIGKILL)
    if procgroup.reap(pid, 15) is None and not ready:  # stuck in the kernel: do not hang here
        return {"error": f"no result within {timeout:.0f} s; SIGKILL did not end it (stuck in the kernel)"}
    return json.loads(data) if data else {"error": f"no result within {timeout:.0f} s (killed)"}


def measure(device: str, kind: str, width: int, height: int, readers: int,
            warmup: float, window: float, pace_fps: float | None = None) -> dict:
    t0 = time.monotonic()
    start_at, stop_at = t0 + warmup, t0 + warmup + window
    wpid, wfd = _in_child(writer, device, kind, width, height, stop_at + 0.5, pace_fps)
    time.sleep(min(1.0, warmup / 2))  # readers need the writer streaming (exclusive_caps=1)
    rs = [_in_child(reader, device, start_at, stop_at) for _ in range(readers)]
    res_readers = [_collect(p, f, warmup + window + 60) for p, f in rs]
    res_writer = _collect(wpid, wfd, warmup + window + 60)
    row = {"size": f"{width}x{height}", "producer": kind, "readers": readers, "pace_fps": pace_fps,
           "writer": res_writer, "reader_results": res_readers}
    errors = [r["error"] for r in [res_writer, *res_readers] if "error" in r]
    if errors:
        row["error"] = "; ".join(errors)
    else:
        fps = [r["frames"] / r["seconds"] for r in res_readers]
        bps = [r["bytes"] / r["seconds"] for r in res_readers]
        row.update(reader_fps=[round(x, 2) for x in fps], mean_reader_fps=round(sum(fps) / len(fps), 2),
                   min_reader_fps=round(min(fps), 2),
                   reader_bytes_per_s=round(sum(bps) / len(bps)),
                   writer_fps=round(res_writer["frames"] / res_writer["seconds"], 2))
    return row


def memcpy_bandwidth(size: int = 64 << 20, seconds: float = 1.5) -> float:
    src, dst = ctypes.create_string_buffer(size), ctypes.create_string_buffer(size)
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        ctypes.memmove(dst, src, size)
        n += 1
    return n * size / (time.monotonic() - t0)


def load_fresh(ko: str, params: dict) -> tuple[str | None, str]:
    """Unload whatever module is loaded, load ko with params: (its first node, "") or
    (None, why not)."""
    if module_loaded():
        rmmod()
    before = video_nodes()
    ok, msg = insmod(ko, params)
    devices = wait_nodes(before) if ok else []
    if not devices:
        return None, msg if not ok else "no device node appeared"
    return devices[0], ""


def main(argv: list[str]) -> int:
    plan = json.loads(Path(argv[0]).read_text())
    out = Path(plan["out"])
    emit("boot", release=os.uname().release, cells=len(plan["modules"]))
    result = {"release": os.uname().release, "memcpy_bytes_per_s": round(memcpy_bandwidth()),
              "modules": {}}
    for mod in plan["modules"]:
        result["modules"][mod["name"]] = {"ko": mod["ko"], "rows": [], "errors": []}
    # Modules alternate measurement by measurement (each loaded afresh), so that a change in
    # the machine's load during the run falls on both alike.
    for i, m in enumerate(plan["measurements"]):
        emit("cell-start", cell=f"m{i}")
        for mod in plan["modules"]:
            if m["readers"] > 1 and mod["name"] not in plan["multi_reader_modules"]:
                continue
            entry = result["modules"][mod["name"]]
            pace = m.get("pace_fps")
            emit("step", cell=f"m{i}", step=f"{mod['name']} {m['width']}x{m['height']} "
                                            f"{m['producer']} x{m['readers']} reader(s)"
                                            + (f" paced {pace:g} fps" if pace else "")
                                            + f" (round {m.get('round', 1)})")
            device, error = load_fresh(mod["ko"], plan["params"])
            if device is None:
                entry["errors"].append(error)
                continue
            entry["rows"].append(measure(device, m["producer"], m["width"], m["height"],
                                         m["readers"], plan["warmup_s"], plan["window_s"], pace))
            status = rmmod()
            if status != "ok":
                entry["errors"].append(f"rmmod after a measurement: {status}")
        emit("cell-end", cell=f"m{i}", complete=True)
    (out / "bench-guest.json").write_text(json.dumps(result, indent=1))
    emit("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
