"""Guest side of `loopqual bench --startup`: how long the programs loopqual's cells start take
to be useful, each started twice in the same boot (the second start shows what a page cache
keeps). The host boots this once per guest root (9p, virtiofs) and puts the figures side by
side.

- runner: a fresh Python that imports what the guest runner imports before its first cell;
- chromium, firefox: headless, on programs/ticking.py's page reading the device while ffmpeg
  writes into it: to the page's first report, and to its first frame;
- obs: OBS Studio under Xvfb with K3's configuration: to obs-websocket answering, and to its
  virtual camera making the device stream.

Run as: python -m loopqual.guest.bench_startup PLAN.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from loopqual.guest.bench_device import load_fresh
from loopqual.guest.bench_programs import (
    DESKTOP_START_LIMIT_S,
    BrowserReader,
    ObsWriter,
    ProgramWriter,
    device_streams,
    wait,
)
from loopqual.guest.runner import emit, rmmod, root_fs

RUNNER_IMPORTS = ("import linuxpy.video.raw, pytest; from loopqual.common import compliance, health; "
                  "from loopqual.guest import recorder")


def runner_start() -> dict:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", RUNNER_IMPORTS], capture_output=True, text=True,
                          timeout=600)
    out = {"ready_s": round(time.monotonic() - t0, 2)}
    if proc.returncode != 0:
        out["error"] = proc.stderr.strip()[-500:]
    return out


def browser_start(kind: str, device: str, log_dir: Path) -> dict:
    b = BrowserReader(kind, device, log_dir, run_s=int(DESKTOP_START_LIMIT_S + 60))
    out: dict = {}
    try:
        wait(lambda: b.first_frame() is not None or b.p.poll() is not None, DESKTOP_START_LIMIT_S)
        first_report = b.b.history[0][0] if b.b.history else None
        first = b.first_frame()
        if first_report is not None:
            out["page_s"] = round(first_report - b.t0, 1)
        if first is None:
            out["error"] = f"no frame within {DESKTOP_START_LIMIT_S} s: {b.tail()}"[:800]
        else:
            out["ready_s"] = round(first - b.t0, 1)
    finally:
        b.stop()
    return out


def obs_start(device: str, log_dir: Path) -> dict:
    w = ObsWriter(log_dir)
    out: dict = {}
    try:
        why = w.start_camera()
        out["answers_s"] = w.startup_s
        if why:
            out["error"] = why[:800]
        elif wait(lambda: device_streams(device), DESKTOP_START_LIMIT_S):
            out["ready_s"] = round(time.monotonic() - w.t0, 1)
        else:
            out["error"] = f"the device did not stream within {DESKTOP_START_LIMIT_S} s"
    finally:
        w.stop()
    return out


def main(argv: list[str]) -> int:
    plan = json.loads(Path(argv[0]).read_text())
    out = Path(plan["out"])
    emit("boot", release=os.uname().release, cells=1, root_fs=root_fs())
    result: dict = {"release": os.uname().release, "root_fs": root_fs(), "programs": {}}
    emit("cell-start", cell="startup")
    device, error = load_fresh(plan["ko"], {"exclusive_caps": 1})
    if device is None:
        result["error"] = f"the module did not load: {error}"
    else:
        for run in (1, 2):
            emit("step", cell="startup", step=f"run {run}: the runner's imports")
            result["programs"].setdefault("runner", []).append(runner_start())
            for kind in ("chromium", "firefox"):
                emit("step", cell="startup", step=f"run {run}: {kind} reads the device")
                log_dir = out / f"{kind}-{run}"
                log_dir.mkdir(parents=True, exist_ok=True)
                writer = ProgramWriter("ffmpeg", device, plan, log_dir)
                try:
                    if not wait(lambda: device_streams(device), plan["start_limit_s"]):
                        entry = {"error": f"the ffmpeg writer did not stream: {writer.tail()}"}
                    else:
                        entry = browser_start(kind, device, log_dir)
                except Exception as exc:  # a program that cannot start: said, not raised
                    entry = {"error": f"{type(exc).__name__}: {exc}"[:800]}
                finally:
                    writer.stop()
                result["programs"].setdefault(kind, []).append(entry)
            emit("step", cell="startup", step=f"run {run}: OBS's virtual camera")
            log_dir = out / f"obs-{run}"
            log_dir.mkdir(parents=True, exist_ok=True)
            try:
                entry = obs_start(device, log_dir)
            except Exception as exc:
                entry = {"error": f"{type(exc).__name__}: {exc}"[:800]}
            result["programs"].setdefault("obs", []).append(entry)
        rmmod()
    (out / "bench-startup-guest.json").write_text(json.dumps(result, indent=1))
    emit("cell-end", cell="startup", complete=True)
    emit("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
