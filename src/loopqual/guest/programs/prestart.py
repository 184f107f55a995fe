"""Browsers started in the background when a cell begins, for a later suite to take over.

K6 (suite together) reads the device with Chromium and Firefox, whose start under TCG takes
minutes of CPU, while the suites before it leave the guest's vCPU idle much of the time (they
wait on paced writers and timeouts). A suite that names them in `prestart` (scenarios/
suites.toml) has the guest runner start them when the cell begins, each in a cgroup of its own
with the lowest weight (cgroup v2 cpu.weight=1: the whole browser, whatever nice its threads
set themselves, shares the vCPU about as one task at nice 19 does). Not nice 19 per thread: Chromium
raises some of its threads to -8 and took most of a busy guest. Not the idle class (SCHED_IDLE
or cpu.idle): on debian-sid's preemptible kernel a background Chromium thread was preempted
inside an RCU read-side section and not run again for 21 s (an RCU stall: the kernel log
detector fails the scenario); a weight, however low, still runs it now and then.
Their pages wait for go.js (ticking.py) and open no device before it. The scenario takes one
over (take_over): moves every process of its group back to the root cgroup until the group is
empty (a process forked meanwhile is born in the group and goes with the next round; a sweep
of the threads' scheduling classes missed those, and a Firefox taken over while still
starting then read at a fraction of OBS's rate), writes go.js and follows its log. One that
died or never came up is launched afresh by the scenario, which records what it found. At the
cell's end the runner stops and reaps whatever is left and kills what stayed in a group.

Each browser has its folder under the cell's: home/ (profile, page, go.js), output.log and
started.json (pid, launch time on the guest's monotonic clock and by its wall clock, the
program, its cgroup)."""

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

CGROUPS = Path("/sys/fs/cgroup")
GROUP_PREFIX = "loopqual-prestarted-"
BACKGROUND_WEIGHT = 1  # cgroup v2 cpu.weight: 1-10000, 100 by default


def folder(work_dir: str, cell_id: str) -> Path:
    """Where a cell's prestarted browsers live."""
    return Path(work_dir) / f"{cell_id}-prestarted"


@dataclass
class Prestarted:
    name: str
    dir: Path
    proc: subprocess.Popen | None
    why_not: str = ""  # when it could not be started
    group: Path | None = None  # its background cgroup, until taken over


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
        group, why = background_group(name)
        if group is None:
            out.append(Prestarted(name, d, None, why))
            continue
        shutil.rmtree(d, ignore_errors=True)
        (d / "home").mkdir(parents=True)
        argv, env = ticking.browser_command(name, program, str(d / "home"))
        with open(d / "output.log", "wb") as log:
            t0, epoch0 = time.monotonic(), time.time()
            proc = spawn_in_group(group, argv, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env)
        (d / "started.json").write_text(json.dumps({"pid": proc.pid, "t0": t0, "epoch0": epoch0,
                                                    "program": program, "cgroup": str(group)}))
        out.append(Prestarted(name, d, proc, group=group))
    return out


def background_group(name: str) -> tuple[Path | None, str]:
    """A fresh cgroup for `name` at the lowest CPU weight: (its folder, ""), or (None, why)
    where the guest has no cgroup v2 cpu controller for it."""
    try:
        if "cpu" not in (CGROUPS / "cgroup.controllers").read_text().split():
            return None, f"no cgroup v2 cpu controller in {CGROUPS} to start it in the background"
        control = CGROUPS / "cgroup.subtree_control"
        if "cpu" not in control.read_text().split():
            control.write_text("+cpu")
        group = CGROUPS / f"{GROUP_PREFIX}{name}"
        if group.exists():
            kill_group(group)  # a former cell's, whose runner did not get to its end
        group.mkdir()
        (group / "cpu.weight").write_text(f"{BACKGROUND_WEIGHT}")
        return group, ""
    except OSError as e:
        return None, f"could not make a cgroup to start it in the background: {e}"


def spawn_in_group(group: Path, argv: list[str], **popen) -> subprocess.Popen:
    """Start `argv` (in a session of its own) as a member of cgroup `group`: a shell joins the
    group and then becomes the program, so nothing of it runs outside the group."""
    return procgroup.spawn(["sh", "-c", 'echo $$ > "$0" && exec "$@"',
                            str(group / "cgroup.procs"), *argv], **popen)


def leave_group(group: Path, rounds: int = 50) -> tuple[int, bool]:
    """Move every process of `group` to the root cgroup, round after round until it is empty
    (a process forked meanwhile is born in the group), and remove the group: (processes
    moved, whether the group is gone)."""
    moved = 0
    for _ in range(rounds):
        try:
            pids = (group / "cgroup.procs").read_text().split()
        except OSError:
            return moved, True  # no group (any more)
        if not pids:
            break
        for pid in pids:
            try:
                (CGROUPS / "cgroup.procs").write_text(pid)
                moved += 1
            except OSError:
                pass  # ended meanwhile
    try:
        group.rmdir()
    except OSError:
        return moved, False
    return moved, True


def kill_group(group: Path, wait_s: float = 10.0) -> None:
    """Kill whatever is still in `group` (cgroup.kill, Linux 5.14 and later) and remove it."""
    try:
        if not (group / "cgroup.procs").read_text().split():
            group.rmdir()
            return
        (group / "cgroup.kill").write_text("1")
    except OSError:
        return
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.1)


def stop_all(started: list[Prestarted]) -> None:
    """Stop what is left of them (a scenario may have stopped some) and reap each."""
    for s in started:
        if s.proc is not None:
            procgroup.stop(s.proc, grace=2.0)
        if s.group is not None:
            kill_group(s.group)  # one that left the browser's session (a crash handler)


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
    group = Path(info["cgroup"]) if info.get("cgroup") else None
    moved, gone = leave_group(group) if group else (0, True)
    if not gone:  # a browser left in the background would be judged starved: launch afresh
        procgroup.stop_foreign(pid, grace=2.0)
        kill_group(group)
        return None, f"prestarted, but its background cgroup did not empty after {moved} moves"
    b = ticking.TickingBrowser.follow_named(name, pid, str(d / "output.log"), float(info["t0"]),
                                            float(info["epoch0"]))
    b.pump(0.1)
    up = "up" if "LOOPQUAL_STARTED" in b.marks else "still starting"
    ticking.write_go(str(d / "home"), card, run_s, tick_s, sessions)
    # the scenario's own log folder gets a pointer to the output it follows
    with open(os.path.join(log_dir, f"{name}.log"), "w") as f:
        f.write(f"prestarted: its output is {d / 'output.log'}\n")
    return b, (f"prestarted {time.monotonic() - b.t0:.0f} s before, {up}; {moved} process(es) "
               f"moved out of the background group")
