"""Proof that the debug kernel's detectors are wired (issue 12): in one real guest of
kernel debian-6.12-debug, loopqual's own test module (tests/kmod, built by qualify for that
kernel: suite detectors' kmod) is loaded once per trigger by suite `detectors`
(tests/detectors) in a cell of parameter set `detectors`; each bug must come back in
results.json as a kernel-health failure of its own class, and the scenario without a
trigger must stay clean.

With LOOPQUAL_DETECTORS_RESULTS=DIR the proof is read from a run that already has such a
cell: `make gate` runs it after the sanitizer lane's own cell, in the same boot of the debug
kernel (one boot instead of two), and then runs this test on results/gate-sanitizer. Without
it (`make selftest`) the test boots its own guest. `make unit` leaves it out.

Set LOOPQUAL_RECORD_DETECTORS=DIR to keep each trigger's kernel log there (the source of
tests/fixtures/health/recorded-*-debian-6.12-debug.log)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loopqual.common import health

pytestmark = pytest.mark.guest

KERNEL = "debian-6.12-debug"
# trigger -> the splat class (kernel/splats.toml deny entry) that must judge it
EXPECTED = {
    "rcu": "rcu_suspicious",
    "ubsan": "ubsan",
    "odebug": "debug_objects",
    "list": "list_corruption",
    "kfence": "kfence",
    "leak": "kmemleak",  # the scenario's own kmemleak scan prints "N new suspected memory leaks"
    "lockdep": "lockdep_circular",
    "kasan": "kasan",
}
# Classes a report brings along besides its own: the WARN() around it and its trace.
GENERIC = {"warning", "bug", "call_trace"}


def _scenario(cell: dict, trigger: str) -> dict:
    found = [s for s in cell["scenarios"] if s["id"].endswith(f"test_detector[{trigger}]")]
    assert len(found) == 1, [s["id"] for s in cell["scenarios"]]
    return found[0]


def _run_own_guest(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "loopqual.cli", "qualify", "--jobs", "1", "--kernel", KERNEL,
         "--module", "debian-0.15.4", "--params", "detectors", "--suite", "detectors",
         "--out", str(out)],
        capture_output=True, text=True, timeout=2400,
    )
    # 0: a cell that runs only suite detectors is not gated, so its failure does not fail the
    # run (1 would say a gated one failed, 2 that a result is incomplete)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_each_detector_reports_its_own_class(tmp_path):
    given = os.environ.get("LOOPQUAL_DETECTORS_RESULTS")
    out = Path(given) if given else _run_own_guest(tmp_path)
    run = json.loads((out / "results.json").read_text())
    assert run["boots"] == 1, "the detectors' cell and any cell before it share one boot"
    cells = [c for c in run["cells"] if c["param_set"] == "detectors"]
    assert len(cells) == 1, [(c["kernel"], c["param_set"]) for c in run["cells"]]
    cell = cells[0]
    assert cell["kernel"] == KERNEL and not cell["gated"], (cell["kernel"], cell["gated"])
    assert cell["status"] == "fail", cell.get("incomplete")
    # the last cell of its boot: the cells before it ran before any trigger fired
    assert run["cells"][-1]["id"] == cell["id"], [c["id"] for c in run["cells"]]

    logs = {p.name: p for p in out.rglob("detectors-*")}
    keep = os.environ.get("LOOPQUAL_RECORD_DETECTORS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for p in logs.values():  # detectors-kasan.log -> recorded-kasan-debian-6.12-debug.log
            name = p.name.removeprefix("detectors-").rsplit(".", 1)[0]
            shutil.copy(p, Path(keep) / f"recorded-{name}-{KERNEL}.log")

    clean = _scenario(cell, "none")
    assert clean["status"] == "pass", clean
    assert health.find_splats(logs["detectors-none.log"].read_text().splitlines()) == []

    for trigger, cls in EXPECTED.items():
        sc = _scenario(cell, trigger)
        # the scenario's kernel-log check (scenarios/conftest.py kernel_health) names the
        # class; it runs in the fixture's teardown, so the scenario is recorded as an error
        assert sc["status"] == "error", (trigger, sc)
        assert f"H1: kernel log splat during the scenario ({cls}): " in sc["message"], (
            trigger, sc["message"])
        # and the trigger's own kernel log holds that class and no other detector's
        splats = health.find_splats(logs[f"detectors-{trigger}.log"].read_text().splitlines())
        assert splats and splats[0]["pattern"] == cls, (trigger, splats[:1])
        assert {s["pattern"] for s in splats} <= {cls} | GENERIC, (trigger, splats)

    # the cell's own health check (runner.py health_stage) saw each class too
    cell_classes = {s["pattern"] for s in cell["health"]["splats"]}
    assert set(EXPECTED.values()) <= cell_classes, cell_classes
    # the leaked object's backtrace names the module (kmemleak's report, read in the guest)
    assert "[loopqual_detectors]" in logs["detectors-leak-kmemleak.txt"].read_text()
