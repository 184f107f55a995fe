"""Browsers started in the background when a cell begins, for a later suite to take over.

K6 (suite together) reads the device with Chromium and Firefox, whose start under TCG takes
minutes of CPU, while the suites before it leave the guest's vCPU idle much of the time (they
wait on paced writers and timeouts). A suite that names them in `prestart` (scenarios/
suites.toml) has the guest runner start them when the cell begins, at the lowest priority:
the idle scheduling class (SCHED_IDLE: any other task that wakes takes the vCPU from them;
nice alone did not do it, Chromium raises some of its threads to -8 itself), nice 19, and
nice 19 for their session's autogroup where the kernel groups by session. Their pages wait for go.js
(ticking.py) and open no device before it. The scenario takes one over (take_over): gives it
back its priority, writes go.js and follows its log. One that died or never came up is
launched afresh by the scenario, which records what it found. At the cell's end the runner
stops and reaps whatever is left.

Each browser has its folder under the cell's: home/ (profile, page, go.js), output.log and
started.json (pid, launch time on the guest's monotonic clock and by its wall clock, the
program)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from loopqual.common import procgroup
from loopqual.guest.programs import ticking

BACKGROUND_NICE = 19


def folder(work_dir: str, cell_id: str) -> Path:
    """Where a cell's prestarted browsers live."""
    return Path(work_dir) / f"{cell_id}-prestarted"


@dataclass
class Prestarted:
    name: str
    dir: Path
    proc: subprocess.Popen | None
    why_not: str = ""  # when it could not be started


def start(names: list[str], where: Path) -> list[Prestarted]:
    """Start each named browser ("chromium", "firefox") in the background on its waiting
    page. A program that is missing is left out with the reason (the scenario that needs it
    finds it missing too, and says so)."""
    out = []
    for name in names:
        d = where / name
        program = shutil.which(ticking.PROGRAMS.get(name, name))
        if name not in ticking.PROGRAMS or program is None:
            out.append(Prestarted(name, d, None, f"no program {ticking.PROGRAMS.get(name, name)}"))
            continue
        shutil.rmtree(d, ignore_errors=True)
        (d / "home").mkdir(parents=True)
        argv, env = ticking.browser_command(name, program, str(d / "home"))
        with open(d / "output.log", "wb") as log:
            t0, epoch0 = time.monotonic(), time.time()
            proc = procgroup.spawn(["chrt", "--idle", "0", "nice", "-n", str(BACKGROUND_NICE),
                                    *argv], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        set_autogroup_nice(proc.pid, BACKGROUND_NICE)
        (d / "started.json").write_text(json.dumps({"pid": proc.pid, "t0": t0, "epoch0": epoch0,
                                                    "program": program}))
        out.append(Prestarted(name, d, proc))
    return out


def set_autogroup_nice(pid: int, nice: int) -> None:
    """The nice value of pid's session autogroup (a kernel without autogroups has no file)."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
    except OSError:
        pass


def give_back_priority(pid: int) -> None:
    """The normal scheduling class for every thread of the browser's session, nice 0 for
    those still at the background's nice (Chromium sets some of its threads' priority
    itself: they keep it) and for its autogroup."""
    set_autogroup_nice(pid, 0)
    for member in procgroup.session_members(pid):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{member}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                if os.sched_getscheduler(tid) == os.SCHED_IDLE:
                    os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                if os.getpriority(os.PRIO_PROCESS, tid) == BACKGROUND_NICE:
                    os.setpriority(os.PRIO_PROCESS, tid, 0)
            except OSError:
                pass


def stop_all(started: list[Prestarted]) -> None:
    """Stop what is left of them (a scenario may have stopped some) and reap each."""
    for s in started:
        if s.proc is not None:
            procgroup.stop(s.proc, grace=2.0)


def take_over(name: str, where: Path, log_dir: str, card: str, run_s: int, tick_s: int = 2,
              sessions: int = 0) -> tuple[ticking.TickingBrowser | None, str]:
    """The prestarted browser `name`, told to read (go.js), at full priority: (browser, what
    was found), or (None, why not) when there is none running to take over."""
    d = where / name
    try:
        info = json.loads((d / "started.json").read_text())
    except (OSError, ValueError):
        return None, "not prestarted"
    pid = int(info["pid"])
    status = procgroup.exit_status(pid)
    if status is not None:
        return None, f"prestarted, exited ({status}) before its scenario"
    give_back_priority(pid)
    b = ticking.TickingBrowser.follow_named(name, pid, str(d / "output.log"), float(info["t0"]),
                                            float(info["epoch0"]))
    b.pump(0.1)
    up = "up" if "LOOPQUAL_STARTED" in b.marks else "still starting"
    ticking.write_go(str(d / "home"), card, run_s, tick_s, sessions)
    # the scenario's own log folder gets a pointer to the output it follows
    with open(os.path.join(log_dir, f"{name}.log"), "w") as f:
        f.write(f"prestarted: its output is {d / 'output.log'}\n")
    return b, f"prestarted {time.monotonic() - b.t0:.0f} s before, {up}"
