"""The harness's failure paths, in a real guest (about two minutes under TCG): a kernel
panic in one cell is recorded as that cell's incomplete result with the panic line, the
guest is booted again, and the next cell runs to the end; a process left holding the device
is reported and killed, and rmmod still succeeds. Run by `make selftest` (part of
`make test`); `make unit` leaves it out."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.guest


def test_panic_is_incomplete_then_reboot_and_stray_opener_is_reported(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "loopqual.cli", "qualify", "--jobs", "1", "--module", "debian-0.15.0",
         "--params", "ec1", "--params", "ec0", "--suite", "selftest", "--out", str(out)],
        capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = json.loads((out / "results.json").read_text())
    assert run["boots"] == 2
    panicked, survivor = run["cells"]
    assert panicked["param_set"] == "ec1" and panicked["status"] == "incomplete"
    assert any("panic" in reason.lower() for reason in panicked["incomplete"]), panicked["incomplete"]
    assert panicked.get("console_tail"), "the incomplete cell keeps the console tail"
    assert survivor["param_set"] == "ec0"
    assert survivor["status"] == "fail", survivor  # the stray opener is a problem of the suite
    # the second scenario: K6's background cgroups on the guest's cgroup v2 tree
    assert [s["status"] for s in survivor["scenarios"]] == ["pass", "pass"], survivor["scenarios"]
    assert any("still had the device open" in x for x in survivor["health"]["left_open"])
    assert survivor["health"]["rmmod"] == "ok"
    junit = (out / "junit.xml").read_text()
    assert "incomplete: kernel panic" in junit
