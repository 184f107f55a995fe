"""A real program that dies of a signal in a scenario (OBS Studio's glibc abort "double free or
corruption" after a virtual camera stop, stop 18) leaves its core dump and gdb's backtrace of
it beside the scenario's logs, and the failure message names the frames where it died: the
report says where the program broke, not only that it did.

The kernel writes the core (core_pattern, set for the guest while the scenario runs and put
back afterwards) into the scenario's log directory on the host's disk, not into the guest's
memory; only anonymous private memory (heap and stacks) and ELF headers are dumped. gdb reads
it in batch mode with the program's own binaries (the guest shares the host's root), then the
core is deleted and the backtrace kept.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import signal
import subprocess
from collections.abc import Iterator

from loopqual.guest.programs.infra import need_program
from loopqual.guest.programs.kernelwait import describe_wait, in_module, kernel_wait

CORE_PATTERN = "/proc/sys/kernel/core_pattern"
# coredump_filter bits: 0x01 anonymous private memory, 0x10 ELF headers (no shared memory:
# the X server's and the GL driver's buffers are large and tell nothing of the crash)
CORE_FILTER = "0x11"
GDB_LIMIT_S = 300
# a frame: "#N  [0xADDR in ]FUNCTION (ARGS)[ at FILE:LINE| from LIBRARY]"; a C++ FUNCTION has
# its own parentheses and spaces ("QRasterPaintEngine::drawRects(QRectF const*, int) ()")
FRAME = re.compile(r"^#(\d+)\s+(?:0x[0-9a-f]+ in )?(.+?) \(.*\)(?: (?:at|from) (\S+))?$")


def core_limit_prefix() -> list[str]:
    """The command prefix that lets the program dump core (RLIMIT_CORE unlimited)."""
    return [need_program("prlimit"), "--core=unlimited"]


@contextlib.contextmanager
def core_dumps(directory: str) -> Iterator[None]:
    """While open, a process of this guest that dies of a signal and may dump core (see
    core_limit_prefix) writes core.<comm>.<pid> into directory. The kernel's pattern is
    limited to 127 characters: a short link under /tmp leads to directory. Where the pattern
    cannot be set (not root), programs dump core as the system says: the scenario goes on, a
    crash's report then says there is no core."""
    # the guest's /tmp is the host's, shared by every guest at once (their pids alike)
    link = f"/tmp/loopqual-cores-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.makedirs(directory, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        os.symlink(os.path.abspath(directory), link)
        with open(CORE_PATTERN) as f:
            old_pattern = f.read().rstrip("\n")
        with open("/proc/self/coredump_filter") as f:
            old_filter = f.read().strip()
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            with open(CORE_PATTERN, "w") as f:
                f.write(f"{link}/core.%e.%p")
            with open("/proc/self/coredump_filter", "w") as f:  # inherited by the programs
                f.write(CORE_FILTER)
        yield
    finally:
        with contextlib.suppress(OSError):
            with open("/proc/self/coredump_filter", "w") as f:
                f.write(old_filter)
        with contextlib.suppress(OSError):
            with open(CORE_PATTERN, "w") as f:
                f.write(old_pattern)
        with contextlib.suppress(OSError):
            os.unlink(link)


def backtrace(program: str, pid: int, directory: str) -> str:
    """After `program` (pid) died of a signal: gdb's backtrace of its core, kept in
    directory as backtrace.<pid>.txt, summed up in one line (the crashing thread's frames,
    innermost first); or why there is none. Never raises: it only adds to a failure."""
    cores = sorted(glob.glob(os.path.join(directory, f"core.*.{pid}")))
    if not cores:
        return f"no core dump of pid {pid} in {directory}"
    out_path = os.path.join(directory, f"backtrace.{pid}.txt")
    try:
        size_mb = os.path.getsize(cores[0]) / 2**20
    except OSError as exc:
        return f"the core {cores[0]} cannot be read: {exc}"
    cmd = ["gdb", "-batch", "-nx", "-q", "-iex", "set debuginfod enabled off",
           "-ex", "set pagination off", "-ex", "bt 30", "-ex", "info threads",
           "-ex", "thread apply all bt 15", program, cores[0]]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                              timeout=GDB_LIMIT_S)
        text = done.stdout + done.stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"gdb could not read the core {cores[0]}: {exc}"
    with contextlib.suppress(OSError):
        with open(out_path, "w") as f:
            f.write(f"$ {' '.join(cmd)}\n{text}")
    for core in cores:
        with contextlib.suppress(OSError):
            os.unlink(core)
    return f"backtrace ({os.path.basename(out_path)}, from a {size_mb:.0f} MiB core): " \
           f"{summary(text)}"


def glibc_heap_abort(signal_number: int | None, where: str) -> bool:
    """Did a program die of glibc's own heap checks? SIGABRT, raised from malloc_printerr in the
    crashing thread (where: backtrace()'s line, or summary() of gdb's output): the program found
    its own heap corrupted (a double free, an overrun into a chunk's header)."""
    return signal_number == signal.SIGABRT and "malloc_printerr" in where


def summary(gdb_output: str, frames: int = 12) -> str:
    """The first backtrace of gdb's output (the thread that got the signal) as
    'function (library) < caller < ...', innermost first."""
    out = []
    for line in gdb_output.splitlines():
        m = FRAME.match(line.strip())
        if not m:  # gdb's lines between the frame it names on loading and the backtrace
            if len(out) > 1:
                break
            continue
        n = int(m.group(1))
        if n == 0 and len(out) == 1:  # gdb names the current frame on loading, then bt
            out = []
        elif n != len(out):  # a second backtrace began
            break
        where = os.path.basename(m.group(3)) if m.group(3) else ""
        out.append(f"{m.group(2)}{f' ({where})' if where else ''}")
    if not out:
        return "gdb printed no frame (see the backtrace file)"
    more = "" if len(out) <= frames else f" < ... {len(out) - frames} more"
    return " < ".join(out[:frames]) + more


def live_threads(pid: int, directory: str, label: str) -> str:
    """While a real program (pid) runs but does not do what it was asked (OBS Studio silent
    after StartVirtualCam): where each of its threads waits, from the kernel's side (state,
    system call, kernel stack: is any of them asleep inside the module?) and from gdb's
    (every thread's backtrace of the live process, attached and detached again), kept in
    directory as threads.<pid>.<label>.txt and summed up in one line. Never raises: it only
    adds to a failure."""
    out_path = os.path.join(directory, f"threads.{pid}.{label}.txt")
    lines, in_mod = [], []
    try:
        tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except OSError as exc:
        return f"pid {pid} has no threads to look at ({exc.strerror})"
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        info = kernel_wait(f"{pid}/task/{tid}")
        waits = describe_wait(info)
        lines.append(f"{tid} {comm}: {waits}")
        if in_module(info):
            in_mod.append(f"{comm} ({tid}): {waits}")
    cmd = ["gdb", "-batch", "-nx", "-q", "-iex", "set debuginfod enabled off",
           "-ex", "set pagination off", "-ex", "thread apply all bt 15", "-p", str(pid)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                              timeout=GDB_LIMIT_S)
        gdb_text = done.stdout + done.stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        gdb_text = f"gdb could not attach: {exc}"
    with contextlib.suppress(OSError):
        with open(out_path, "w") as f:
            f.write("# each thread's kernel wait (/proc/PID/task/TID)\n" + "\n".join(lines)
                    + f"\n\n$ {' '.join(cmd)}\n{gdb_text}")
    main = lines[0] if lines else "the main thread is gone"
    where = (f"{len(in_mod)} of {len(lines)} thread(s) asleep in the module: "
             + "; ".join(in_mod[:4])) if in_mod else (
        f"none of its {len(lines)} thread(s) asleep in the module; main thread {main}")
    return f"{where}; gdb, first thread: {summary(gdb_text, 8)} ({os.path.basename(out_path)})"
