"""scenarios/lib/load.py: the sampler of what the guest was busy with, run against this
host's real /proc (the guest's has the same format): a busy child process must show up as a
program that took CPU time, and every sample must be written to its log."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scenarios"))

from lib.load import guest_load, meminfo, process_ticks  # noqa: E402


def test_a_busy_program_is_named_with_its_cpu_time(tmp_path):
    log = tmp_path / "guest-load.log"
    busy = "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass\n"
    with guest_load(str(log), every=0.4) as load:
        subprocess.run([sys.executable, "-c", busy, "loopqual-busy"], check=True)
        time.sleep(0.5)
    summary = load.summary()
    lines = log.read_text().splitlines()
    assert lines[0].startswith("# t_s mem_available_mib")
    assert len(lines) - 1 == summary["samples"] >= 3
    assert 0 < summary["min_mem_available_mib"] <= meminfo()["MemTotal"] // 1024
    cpu = summary["cpu_s_by_program"]
    assert cpu.get(Path(sys.executable).name[:15], 0) >= 0.5, cpu


def test_process_ticks_sums_by_command_name():
    ticks = process_ticks()
    assert ticks and all(v >= 0 for v in ticks.values())
    assert any(name.startswith("python") for name in ticks)
