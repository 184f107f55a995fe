"""What the guest was busy with while a long scenario ran: memory left, major page faults
(under 9p every one is a file read through QEMU), CPU time and the processes that took it.

    with guest_load(os.path.join(log_dir, "guest-load.log")) as load:
        ...
    record_property("guest_load", load.summary())

A thread samples /proc every `every` seconds and writes one line per sample; summary() gives
the smallest MemAvailable, the largest fault rate and each program's CPU seconds over the run.
It only reads /proc: it judges nothing.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def meminfo() -> dict[str, int]:
    """/proc/meminfo in KiB by field."""
    out: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0])
    return out


def vmstat_field(name: str) -> int:
    with open("/proc/vmstat") as f:
        for line in f:
            key, _, value = line.partition(" ")
            if key == name:
                return int(value)
    return 0


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) ticks of the whole guest from /proc/stat's first line."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def process_ticks() -> dict[str, int]:
    """CPU ticks (user + system) so far of every process, summed by command name."""
    out: dict[str, int] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.find("(") + 1: stat.rfind(")")]
        rest = stat[stat.rfind(")") + 2:].split()
        try:
            out[name] = out.get(name, 0) + int(rest[11]) + int(rest[12])
        except (IndexError, ValueError):
            continue
    return out


class LoadSampler:
    def __init__(self, path: str, every: float):
        self.path = path
        self.every = every
        self.samples: list[dict] = []
        self.cpu_s: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="guest-load", daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        busy0, total0 = cpu_ticks()
        faults0 = vmstat_field("pgmajfault")
        procs0 = process_ticks()
        last = t0
        with open(self.path, "w") as log:
            log.write("# t_s mem_available_mib cached_mib major_faults_per_s cpu_busy_pct "
                      "top_programs(cpu_s_in_interval)\n")
            while not self._stop.wait(self.every):
                now = time.monotonic()
                mem = meminfo()
                busy, total = cpu_ticks()
                faults = vmstat_field("pgmajfault")
                procs = process_ticks()
                delta = {n: (t - procs0.get(n, 0)) / CLOCK_TICKS for n, t in procs.items()
                         if t > procs0.get(n, 0)}
                for n, s in delta.items():
                    self.cpu_s[n] = self.cpu_s.get(n, 0.0) + s
                sample = {
                    "t_s": round(now - t0, 1),
                    "mem_available_mib": mem.get("MemAvailable", 0) // 1024,
                    "cached_mib": mem.get("Cached", 0) // 1024,
                    "major_faults_per_s": round((faults - faults0) / max(now - last, 0.001), 1),
                    "cpu_busy_pct": round(100 * (busy - busy0) / max(total - total0, 1)),
                }
                self.samples.append(sample)
                top = sorted(delta.items(), key=lambda kv: -kv[1])[:4]
                log.write(" ".join(str(v) for v in sample.values()) + " "
                          + ",".join(f"{n}:{s:.1f}" for n, s in top) + "\n")
                log.flush()
                busy0, total0, faults0, procs0, last = busy, total, faults, procs, now

    def summary(self) -> dict:
        if not self.samples:
            return {}
        top = sorted(self.cpu_s.items(), key=lambda kv: -kv[1])[:8]
        return {
            "samples": len(self.samples),
            "min_mem_available_mib": min(s["mem_available_mib"] for s in self.samples),
            "max_major_faults_per_s": max(s["major_faults_per_s"] for s in self.samples),
            "mean_cpu_busy_pct": round(sum(s["cpu_busy_pct"] for s in self.samples)
                                       / len(self.samples)),
            "cpu_s_by_program": {n: round(s, 1) for n, s in top},
        }


@contextmanager
def guest_load(path: str, every: float = 10.0) -> Iterator[LoadSampler]:
    sampler = LoadSampler(path, every)
    sampler._thread.start()
    try:
        yield sampler
    finally:
        sampler._stop.set()
        sampler._thread.join(timeout=5)
