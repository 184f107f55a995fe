"""Where a task of the guest waits in the kernel, from /proc: its state, wchan, kernel stack
and the system call it sleeps in, and whether that is inside the module. Used on the openers
the scenarios fork (scenarios/lib/proc.py), on real programs that stall (crash.py) and on a
delivery writer that does not return (scenarios/lib/delivery.py).
"""

from __future__ import annotations

import platform

MODULE = "v4l2loopback"
# syscall numbers as /proc/<pid>/syscall shows them
SYSCALLS = {"x86_64": {"read": 0, "write": 1, "ioctl": 16},
            "aarch64": {"read": 63, "write": 64, "ioctl": 29}}


def _module_symbols(module: str = MODULE) -> set[str]:
    names = set()
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                if line.rstrip().endswith(f"[{module}]"):
                    names.add(line.split()[2])
    except OSError:
        pass
    return names


def kernel_wait(pid: int | str) -> dict:
    """Where task `pid` (the main thread of a worker, which runs its Device calls; or any
    thread, as "PID/task/TID") is now:
    the state letter of /proc/<pid>/stat, /proc/<pid>/wchan, the frames of /proc/<pid>/stack
    ("function [module]"), and /proc/<pid>/syscall ("running", or the number and arguments of
    the system call it sleeps in). Any of them may be "" where the kernel does not say."""
    def read(name: str) -> str:
        try:
            with open(f"/proc/{pid}/{name}") as f:
                return f.read()
        except OSError:
            return ""
    stat = read("stat")
    state = stat[stat.rfind(")") + 2:][:1] if ")" in stat else ""
    frames = []
    for line in read("stack").splitlines():
        parts = line.split()
        if len(parts) >= 2:  # "[<0>] vidioc_dqbuf+0x1a/0x2b0 [v4l2loopback]"
            frames.append(" ".join([parts[1].split("+")[0], *parts[2:]]))
    return {"state": state, "wchan": read("wchan").strip(), "stack": frames,
            "syscall": read("syscall").split()}


def in_module(info: dict, module: str = MODULE) -> bool:
    """Is the task sleeping inside the module (or the videobuf2 it may use)? Judged on the
    kernel stack where /proc/<pid>/stack is readable, else on wchan against the module's
    symbols in /proc/kallsyms."""
    tags = (f"[{module}]", "[videobuf2_common]", "[videobuf2_v4l2]")
    if info["stack"]:
        return any(f.endswith(tags) or f.startswith("vb2_") for f in info["stack"])
    w = info["wchan"]
    return bool(w) and w not in ("0",) and (w.startswith("vb2_") or w in _module_symbols(module))


def describe_wait(info: dict) -> str:
    sc = info["syscall"]
    nr = sc[0] if sc else "?"
    names = {str(v): k for k, v in SYSCALLS.get(platform.machine(), {}).items()}
    call = names.get(nr, f"syscall {nr}") if nr != "running" else "running"
    args = f"({', '.join(sc[1:3])})" if len(sc) > 2 else ""
    stack = " < ".join(info["stack"][:6]) or "unreadable"
    return (f"state {info['state'] or '?'}, in {call}{args}, wchan {info['wchan'] or '?'}, "
            f"kernel stack {stack}")
