"""Guest side of the detectors selftest (issue 12): each scenario loads loopqual's own test
module (tests/kmod) with one trigger, so that the debug kernel's detector for it reports a
bug, and unloads it. The scenario itself only loads and unloads: the verdict is the kernel-log
check around it (kernel_health, see conftest.py), which must fail it with the right splat
class; tests/test_guest_detectors.py asserts that from the host. Trigger `none` must stay
clean. Each scenario also keeps the kernel log of its trigger in the cell's work directory
(detectors-TRIGGER.log), the source of tests/fixtures/health/recorded-*.log.

Order matters, and is this file's: lockdep reports once and then turns itself off (so does a
KASAN report, which taints the kernel "lock debugging unreliable"), and KASAN reports only
its first bug per boot; PROVE_RCU needs lockdep on. So rcu comes first and kasan last.

Never on a real machine: the module makes real memory-safety bugs."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from loopqual.common import health
from loopqual.common.kmsg import KmsgReader

MODULE = "loopqual_detectors"
TRIGGERS = ["none", "rcu", "ubsan", "odebug", "list", "kfence", "leak", "lockdep", "kasan"]
# The module's two other lockdep classes each need a boot of their own (lockdep reports once
# per boot): LOOPQUAL_DETECTORS_TRIGGERS="none lockdep_recursive" (or lockdep_inconsistent)
# runs those instead. tests/test_guest_detectors.py runs the list above.
TRIGGERS = os.environ.get("LOOPQUAL_DETECTORS_TRIGGERS", " ".join(TRIGGERS)).split()
KMEMLEAK = Path(health.KMEMLEAK_FILE)
# KFENCE guards one allocation per sample interval (100 ms by default), the first after its
# timer fires; for the kfence trigger the interval is 1 ms, then set back.
KFENCE_INTERVAL = Path("/sys/module/kfence/parameters/sample_interval")


def _guard() -> dict:
    with open("/proc/cmdline") as fh:
        assert "virtme" in fh.read(), "refusing to run outside a loopqual guest"
    assert KMEMLEAK.exists(), (
        f"{KMEMLEAK} is missing: suite detectors needs a debug kernel (KASAN, lockdep, "
        f"kmemleak...: --kernel debian-6.12-debug), this is {os.uname().release}")
    with open(os.environ["LOOPQUAL_CELL"]) as fh:
        return json.load(fh)


@pytest.mark.parametrize("trigger", TRIGGERS)
def test_detector(trigger):
    cell = _guard()
    ko = os.environ.get("LOOPQUAL_DETECTORS_KO")
    assert ko and Path(ko).is_file(), (
        f"LOOPQUAL_DETECTORS_KO={ko!r}: the host must build tests/kmod for this kernel and "
        f"give the .ko's path")
    work = Path(cell["work_dir"])
    kmsg = KmsgReader()
    interval = None
    try:
        if trigger == "kfence":
            assert KFENCE_INTERVAL.exists(), f"{KFENCE_INTERVAL} is missing: no KFENCE here"
            interval = KFENCE_INTERVAL.read_text().strip()
            KFENCE_INTERVAL.write_text("1")
        proc = subprocess.run(["insmod", ko, f"trigger={trigger}"], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, f"insmod {MODULE} trigger={trigger}: {proc.stderr.strip()}"
        if trigger == "leak":
            time.sleep(health.KMEMLEAK_MIN_AGE_S + 1)
            report = health.kmemleak_report()
            (work / "detectors-leak-kmemleak.txt").write_text(report)
        rm = subprocess.run(["rmmod", MODULE], capture_output=True, text=True, timeout=60)
        assert rm.returncode == 0, f"rmmod {MODULE}: {rm.stderr.strip()}"
    finally:
        if interval is not None:
            KFENCE_INTERVAL.write_text(interval)
            stats = Path("/sys/kernel/debug/kfence/stats")
            if stats.exists():  # the pool's state, kept beside the trigger's kernel log
                (work / "detectors-kfence-stats.txt").write_text(stats.read_text())
        lines = kmsg.drain()
        kmsg.close()
        (work / f"detectors-{trigger}.log").write_text("".join(f"{x}\n" for x in lines))
