"""Guests: boot a Debian kernel with virtme-ng (the host's root shared, results through a
read-write directory), run the guest runner over a plan of cells, watch it.

One boot serves every cell of a kernel. A hang, panic or module that will not unload ends
that boot: the cell in progress is recorded as incomplete with the console tail, and the
guest is booted again for the remaining cells.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from loopqual.boot import guestroot
from loopqual.boot.console import BootWatch, ConsoleStream, end_reason
from loopqual.common import procgroup
from loopqual.common.errors import LoopqualError
from loopqual.common.paths import REPO, atomic_write, cache_dir

# to the runner's first event; TCG boots in ~20 s on a quiet machine. A kernel that boots slower
# (a debug kernel) says how long it may take in kernels.toml (boot_timeout_s).
BOOT_TIMEOUT_S = 240
CELL_MARGIN_S = 180  # beyond the sum of a cell's step timeouts
CONSOLE_TAIL = 60
# Boots one lane may use beyond one per cell. A boot that reaches a cell settles at least that
# cell (a result file, or incomplete on a hang, panic or stuck rmmod), so a lane of N cells
# needs at most N boots; the extra two pay for a boot that failed and its one retry. A lane
# that still has cells after N + 2 boots is looping, not unlucky: its cells are incomplete.
EXTRA_BOOTS = 2


class GuestError(LoopqualError):
    pass


class Stop:
    """A run-wide stop request (SIGINT, SIGTERM): every guest started through _boot_once is
    registered while it lives; request() kills them all at once (safe in a signal handler)
    and no new guest starts. Lanes then settle their remaining cells as incomplete."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ""
        self.live = procgroup.Registry()

    def request(self, reason: str) -> int:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()
        return self.live.kill_all()

    def is_set(self) -> bool:
        return self.event.is_set()

    def reset(self) -> None:
        self.event.clear()
        self.reason = ""


STOP = Stop()


def venv_bin() -> Path:
    return Path(sys.executable).parent


def vng_path() -> str:
    """vng runs virtme-run by name: the venv's bin must be on PATH (we put it there)."""
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if str(venv_bin()) not in parts:
        os.environ["PATH"] = os.pathsep.join([str(venv_bin()), *parts])
    path = shutil.which("vng")
    if not path:
        raise GuestError("vng (virtme-ng) not found: run `make deps` to install the venv")
    if not shutil.which("qemu-system-x86_64"):
        raise GuestError("qemu-system-x86_64 not found: `apt-get install qemu-system-x86` "
                         "(or `make deps`)")
    return path


def detect_accel(vmlinuz: Path, timeout: float = 20) -> str:
    """'kvm' if a KVM guest really starts this kernel here, else 'tcg'. /dev/kvm can exist
    and still fail (nested setups: QEMU asserts on an MSR), so start one and watch it print.
    LOOPQUAL_ACCEL=kvm|tcg overrides; the answer is cached per kernel and QEMU binary."""
    forced = os.environ.get("LOOPQUAL_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    # an archive kernel's image is .../modules/<release>/vmlinuz.unsigned: name it by release
    name = vmlinuz.name if vmlinuz.name.startswith("vmlinuz-") else \
        f"vmlinuz-{vmlinuz.parent.name}-{hashlib.sha256(str(vmlinuz).encode()).hexdigest()[:8]}"
    stamp = cache_dir() / "accel" / f"{name}-{int(Path(qemu).stat().st_mtime)}"
    try:
        known = stamp.read_text().strip()
    except OSError:
        known = ""
    if known in ("kvm", "tcg"):  # anything else (a damaged stamp): probe again
        return known
    cmd = [qemu, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults", "-display",
           "none", "-no-reboot", "-serial", "stdio", "-kernel", str(vmlinuz),
           "-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1"]
    proc = procgroup.spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    result, deadline, seen = "tcg", time.monotonic() + timeout, b""
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([proc.stdout], [], [], 0.5)
            if r:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                seen += chunk
                if b"Linux version" in seen:
                    result = "kvm"
                    break
            elif proc.poll() is not None:
                break
    finally:
        procgroup.stop(proc, grace=0)
    atomic_write(stamp, result + "\n")
    return result


@dataclass
class GuestRun:
    """What the host saw of one kernel's guest runs."""
    boots: int = 0
    accel: str = ""
    console: list[str] = field(default_factory=list)  # every boot's console, in order
    host_incomplete: dict[str, dict] = field(default_factory=dict)  # cell id -> reason, tail
    boot_seconds: list[float] = field(default_factory=list)
    root_fs: list[str] = field(default_factory=list)  # each boot's / as the guest saw it


GUEST_MEMORY_GIB = 2  # each guest's --memory unless LOOPQUAL_GUEST_MEMORY_GIB says otherwise


def guest_memory_gib() -> int:
    """GiB of memory per guest: GUEST_MEMORY_GIB unless LOOPQUAL_GUEST_MEMORY_GIB says otherwise."""
    value = os.environ.get("LOOPQUAL_GUEST_MEMORY_GIB", str(GUEST_MEMORY_GIB))
    if not value.isdigit() or not 1 <= int(value) <= 256:
        raise GuestError(f"LOOPQUAL_GUEST_MEMORY_GIB={value!r}: give a whole number of GiB from 1 to 256")
    return int(value)


def machine_jobs(cpus: int | None = None, mem_kib: int | None = None) -> int:
    """How many guests this machine carries at once: one per host core (a guest keeps one
    core busy under TCG, and uses about one with KVM), and guest_memory_gib() of memory each
    with one guest's worth left for the host."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) or 1
    if mem_kib is None:
        mem_kib = _meminfo_kib("MemTotal")
    by_memory = mem_kib // (guest_memory_gib() * 1024 * 1024) - 1 if mem_kib else 1
    return max(1, min(cpus, by_memory, 16))


def _meminfo_kib(key: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def guest_cpus() -> int:
    """vCPUs per guest: 1 unless LOOPQUAL_GUEST_CPUS says otherwise (one boots faster under TCG)."""
    value = os.environ.get("LOOPQUAL_GUEST_CPUS", "1")
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise GuestError(f"LOOPQUAL_GUEST_CPUS={value!r}: give a whole number from 1 to 64")
    return int(value)


# virtme-ng-init (1.42) starts udevd, triggers a coldplug of every device and waits up to
# 300 s for it to settle whenever it finds /usr/lib/systemd/systemd-udevd, and has no option
# to skip it. Where a kernel says guest_udev = false, vng runs in a private mount namespace of
# its own in which /usr/lib/systemd is an empty tmpfs: QEMU's 9p export of / then has no
# udevd to find (the host's own tree is untouched), and virtme-ng-init skips udev. The guest
# still has devtmpfs (the kernel makes /dev/videoN itself; the runner waits for it), and the
# script's I/O falls back to the console.
WITHOUT_UDEV = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount -t tmpfs -o mode=0755 loopqual-no-udev /usr/lib/systemd && exec "$@"', "sh"]


# The CPU a TCG guest is given: vng's "max" without ERMS and FSRM. With them Linux copies
# (copy_to_user, memcpy) and clears pages with `rep movsb` / `rep stosb`, which QEMU 7.2's TCG
# runs at about 350 MB/s; without them in 8-byte words: 1.2-1.7 GB/s for the same reads of a
# tmpfs file in a debian-6.1 guest, and Python's imports a quarter faster (docs/ci-time.md).
# Every module and program in one run sees the same CPU.
TCG_CPU = "max,erms=off,fsrm=off"
CPU_MODEL = re.compile(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.=-]+)*")


def tcg_cpu() -> str:
    """QEMU's -cpu for TCG guests: TCG_CPU, or LOOPQUAL_TCG_CPU (e.g. "max" for vng's own)."""
    value = os.environ.get("LOOPQUAL_TCG_CPU", TCG_CPU)
    if not CPU_MODEL.fullmatch(value):
        raise GuestError(f"LOOPQUAL_TCG_CPU={value!r}: give a QEMU CPU model with its options, "
                         f"such as {TCG_CPU!r}")
    return value


def guest_cpu(accel: str) -> str:
    """The -cpu a guest with this accelerator gets (recorded in results.json)."""
    return "host (vng, KVM)" if accel == "kvm" else tcg_cpu()


# Every guest's kernel command line (a kernel's guest_append comes after it): a panic ends
# the guest at once, every printk reaches /dev/kmsg, and no transparent huge pages. With THP
# (Debian's default "always") khugepaged, at nice 19, copies pages into huge ones inside an
# RCU read-side section; in a guest whose one vCPU the browsers and OBS keep busy under TCG it
# was preempted there and not run again for 21 s, and the kernel reported an RCU stall (H1)
# in K6 (the same task in copy_mc_enhanced_fast_string, no module frame; docs/ci-time.md).
# The guests' workloads need no huge pages; the module's own splats are caught as before.
GUEST_APPEND = "panic=-1 printk.devkmsg=on transparent_hugepage=never"


def vng_command(vmlinuz: Path, rwdir: Path, plan: Path | None, accel: str,
                memory: str | None = None,
                cpus: int | None = None, exec_cmd: str | None = None,
                guest_module: str = "loopqual.guest.runner", udev: bool = True,
                append: str = "", root: guestroot.GuestRoot | None = None) -> list[str]:
    """root: how the guest sees the host's / (guestroot.prepare() when not given)."""
    cpus = cpus or guest_cpus()
    vng = vng_path()  # first: it puts the venv's bin on PATH, which the prefix passes on
    before, root_opts = guestroot.vng_prefix(root or guestroot.prepare())
    memory = memory or f"{guest_memory_gib()}G"
    alias = shell_safe_alias(rwdir)
    if plan is not None and plan.is_relative_to(rwdir):
        plan = alias / plan.relative_to(rwdir)
    cmd = [*before, vng, *root_opts, "--verbose", "--cpus", str(cpus), "--memory", memory,
           "-r", str(vmlinuz), "--rwdir", str(alias),
           "--append", " ".join([GUEST_APPEND, append]).strip()]
    if accel != "kvm":
        cmd.append("--disable-kvm")
        # vng gives TCG guests "-cpu max"; a later -cpu wins
        cmd.append(f"--qemu-opts=-cpu {tcg_cpu()}")
    if exec_cmd is None:
        exec_cmd = guest_exec(guest_module, plan)
    if exec_cmd:
        cmd += ["--exec", exec_cmd]
    return cmd if udev else [*WITHOUT_UDEV, *cmd]


SHELL_SAFE = re.compile(r"[A-Za-z0-9_./-]+")


def shell_safe_alias(path: Path) -> Path:
    """path itself if every character of it is plain; else a symlink to it under the cache
    whose name is. vng (virtme-ng 1.42) hands --rwdir to virtme-run through `sh -c` without
    quoting it: a directory named 'out; touch x' would run `touch x` on the host, and one with
    a space would be cut in two. The alias is what vng sees; the guest mounts the real
    directory (mount follows the link), so files land where the caller asked."""
    if SHELL_SAFE.fullmatch(str(path)):
        return path
    real = path.resolve()
    links = cache_dir() / "rw"
    links.mkdir(parents=True, exist_ok=True)
    alias = links / hashlib.sha256(str(real).encode()).hexdigest()[:16]
    if not SHELL_SAFE.fullmatch(str(alias)):
        raise GuestError(f"the cache directory {cache_dir()} has characters vng cannot take in a "
                         f"--rwdir path; set LOOPQUAL_CACHE to a plain path")
    if not (alias.is_symlink() and alias.resolve() == real):
        tmp = links / f".{alias.name}.{os.getpid()}.{threading.get_ident()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(real)
        tmp.replace(alias)  # atomic: a concurrent run sees the old link or the new one
    return alias


def guest_exec(guest_module: str, plan: Path) -> str:
    """The shell line vng's --exec runs in the guest (virtme-ng takes a shell string there):
    every piece quoted, so a path with a space or a ';' stays one argument and runs nothing."""
    return (f"cd {shlex.quote(str(REPO))} && exec "
            + shlex.join([str(venv_bin() / "python"), "-m", guest_module, str(plan)]))


def cell_budget(cell: dict) -> float:
    total = CELL_MARGIN_S
    for suite in cell["suites"]:
        if suite.get("not_applicable"):
            continue
        if suite["kind"] == "pytest":
            total += suite["timeout_s"] + 20
        else:
            total += sum(p["timeout_s"] + 50 for p in suite["profiles"]
                         if not p.get("not_applicable"))
    return total


def _settle(gr: GuestRun, cells: list[dict], reason: str, tail: list[str]) -> None:
    """Cells the lane gives up on: incomplete, with the reason."""
    for c in cells:
        gr.host_incomplete[c["id"]] = {"reason": reason, "console_tail": tail}


def _settle_cell_in_progress(gr: GuestRun, current: str | None, cells_dir: Path, reason: str,
                             tail: list[str], on_event) -> None:
    """The cell a boot ended in, without its result file: incomplete, with the boot's reason."""
    if current is None or (cells_dir / f"{current}.json").exists():
        return
    why = reason or "the guest ended during this cell"
    gr.host_incomplete[current] = {"reason": why, "console_tail": tail}
    on_event({"event": "cell-end", "cell": current, "complete": False, "host": True,
              "incomplete": [why]})


def run_plan(plan: dict, vmlinuz: Path, rwdir: Path, on_event, accel: str, boot=None,
             boot_timeout_s: float = BOOT_TIMEOUT_S, udev: bool = True,
             append: str = "") -> GuestRun:
    """Boot as often as needed to give every cell a result file (or a host-side verdict).

    boot(plan_path) -> (cell in progress when the guest ended or None, reason, console tail)
    is one guest boot over the cells that plan_path lists; by default a real one (vng).
    A boot that settles no cell (too slow to come up, died before its first cell) is
    retried once; the second in a row marks the remaining cells incomplete. A lane boots at
    most len(cells) + EXTRA_BOOTS times. A stop request (STOP) ends the lane: its unsettled
    cells are incomplete with the stop's reason. boot_timeout_s: the kernel's own limit to the
    runner's first event (kernels.toml boot_timeout_s)."""
    gr = GuestRun(accel=accel)
    rwdir = rwdir.absolute()  # vng runs in the repository: a relative --out would miss
    cells_dir = rwdir / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    by_id = {c["id"]: c for c in plan["cells"]}
    on_event = _with_cell_outcome(on_event, cells_dir)
    if boot is None:
        def boot(plan_path: Path):
            cmd = vng_command(vmlinuz, rwdir, plan_path, accel, udev=udev, append=append)
            return _boot_once(gr, cmd,
                              lambda cid: cell_budget(by_id[cid]), on_event, boot_timeout_s)

    def pending() -> list[dict]:
        return [c for c in plan["cells"]
                if not (cells_dir / f"{c['id']}.json").exists() and c["id"] not in gr.host_incomplete]

    max_boots = len(plan["cells"]) + EXTRA_BOOTS
    failed_in_a_row, last_reason, last_tail = 0, "", []
    while remaining := pending():
        if STOP.is_set():
            _settle(gr, remaining, STOP.reason, [])
            break
        if gr.boots >= max_boots:
            _settle(gr, remaining, f"reboot limit: {gr.boots} boots for {len(plan['cells'])} "
                    f"cell(s) (at most cells + {EXTRA_BOOTS}); last: {last_reason or 'no reason'}",
                    last_tail)
            break
        plan_path = rwdir / f"plan-boot{gr.boots + 1}.json"
        plan_path.write_text(json.dumps({**plan, "cells": remaining, "out": str(rwdir)}, indent=1))
        gr.boots += 1
        current, reason, tail = boot(plan_path)
        last_reason, last_tail = reason, tail
        if STOP.is_set():
            reason = STOP.reason
        _settle_cell_in_progress(gr, current, cells_dir, reason, tail, on_event)
        if len(pending()) < len(remaining) or STOP.is_set():
            failed_in_a_row = 0
            continue
        failed_in_a_row += 1  # this boot settled no cell: it never got to one
        why = reason or "the guest ended before its first cell"
        if failed_in_a_row == 1:
            on_event({"event": "boot-retry", "reason": why})
        else:
            _settle(gr, pending(), f"{why} (on a retry too)", tail)
    return gr


def _with_cell_outcome(on_event, cells_dir: Path):
    """Add to each guest cell-end event what the cell's result file says (its incomplete
    suites and errors), so progress shows what really happened, not just 'complete'."""
    def handler(ev: dict) -> None:
        if ev.get("event") == "cell-end" and not ev.get("host") and "incomplete" not in ev:
            try:
                res = json.loads((cells_dir / f"{ev.get('cell')}.json").read_text())
                ev = {**ev, "incomplete": list(res.get("incomplete") or []),
                      "errors": list(res.get("errors") or [])}
            except (OSError, ValueError, AttributeError):
                pass
        on_event(ev)
    return handler


def _boot_once(gr: GuestRun, cmd: list[str], budget, on_event,
               boot_timeout_s: float = BOOT_TIMEOUT_S):
    """One boot. budget(cell id) is how long that cell may go without ending; boot_timeout_s
    how long the boot (and the runner between cells) may.
    Returns (cell in progress when it ended or None, reason, console tail)."""
    lines: deque[str] = deque(maxlen=4000)
    watch = BootWatch(time.monotonic(), boot_timeout_s, budget)
    reason = ""
    if STOP.is_set():
        return None, STOP.reason, []
    proc = procgroup.spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, cwd=REPO)
    STOP.live.add(proc.pid)
    stream = ConsoleStream()
    try:
        while True:
            if STOP.is_set():  # also when the stop came before this guest was registered
                reason = STOP.reason
                break
            r, _, _ = select.select([proc.stdout], [], [], 1.0)
            if r:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                for line, ev in stream.feed(chunk):
                    if ev is None:
                        lines.append(line)
                        continue
                    booted = watch.booted
                    watch.event(ev, time.monotonic())
                    if watch.booted and not booted:
                        gr.boot_seconds.append(watch.boot_s)
                        gr.root_fs.append(watch.root_fs)
                    on_event(ev)
            elif proc.poll() is not None:
                break
            reason = watch.overdue(time.monotonic())
            if reason:
                break
    finally:
        # The whole session: vng, virtme-run and QEMU (a dead vng must not leave QEMU running).
        procgroup.stop(proc, grace=0)
        STOP.live.discard(proc.pid)
    gr.console.extend(lines)
    tail = list(lines)[-CONSOLE_TAIL:]
    return watch.current, reason or end_reason(list(lines), proc.returncode, watch), tail


def boot_once(cmd: list[str], budget_s: float, on_event) -> tuple[GuestRun, str, list[str]]:
    """One boot for a single job (the benchmark): (what was seen, why it ended badly or '', tail)."""
    gr = GuestRun(boots=1)
    _current, reason, tail = _boot_once(gr, cmd, lambda _cid: budget_s, on_event)
    return gr, reason, tail
