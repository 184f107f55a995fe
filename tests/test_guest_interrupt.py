"""SIGTERM (a cancelled CI job) during a real run with two guests at once (--jobs 2): every
guest stops, QEMU included, results.json, junit.xml and report.html are written, the cells
that did not finish are incomplete with the reason, exit 2 with one line and no traceback.
About 15 s: SIGTERM once both guests' QEMU run, a few seconds into their boot."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from loopqual import vm

pytestmark = pytest.mark.guest


def qemu_of(out) -> list[str]:
    """QEMU processes of this run: their command line names one of its guest directories
    (as vng got it: a plain link to it under the cache, see vm.shell_safe_alias)."""
    names = [str(out)] + [str(vm.shell_safe_alias(out / "guest" / "debian-6.1" / lane))
                          for lane in ("", "lane1", "lane2")]
    ps = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True).stdout
    return [ln for ln in ps.splitlines() if any(f"path={n}," in ln for n in names)]


def test_sigterm_stops_every_guest_and_still_writes_results(tmp_path):
    out = tmp_path / "run dir; touch x"  # also: an --out with a space and a ';' (point 13)
    proc = subprocess.Popen(
        [sys.executable, "-m", "loopqual.cli", "qualify", "--jobs", "2", "--module", "patched",
         "--params", "ec0", "--params", "ec1-open2", "--suite", "selftest", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    t0 = time.monotonic()
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "lane 2 booting" in line:
                break
        else:
            pytest.fail("no guest was started:\n" + "".join(lines[-20:]))
        # both guests' QEMU running (and a few seconds into their kernels' boot)
        deadline = time.monotonic() + 60
        while len(running := qemu_of(out)) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(running) == 2, "two QEMU of this run should be running before the signal"
        time.sleep(5)
        sent_at = time.monotonic() - t0
        proc.send_signal(signal.SIGTERM)
        rest_err = proc.stderr.read()
        stdout = proc.stdout.read()
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:  # the test failed early: still leave no guest behind
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    stopped_in = time.monotonic() - t0 - sent_at
    time.sleep(0.5)
    left = qemu_of(out)
    err = "".join(lines) + rest_err
    assert code == 2, err[-3000:] + stdout[-2000:]
    assert "Traceback" not in err + stdout
    assert rest_err.count("interrupted by SIGTERM") == 1, rest_err
    assert left == [], left
    assert not (tmp_path / "x").exists()
    for name in ("results.json", "junit.xml", "report.html"):
        assert (out / name).exists(), name
    run = json.loads((out / "results.json").read_text())
    assert run["interrupted"] == "interrupted by SIGTERM" and run["exit_code"] == 2
    incomplete = [c for c in run["cells"] if c["status"] == "incomplete"]
    assert incomplete and all(
        any("interrupted by SIGTERM" in r for r in c["incomplete"]) for c in incomplete)
    print(f"SIGTERM at {sent_at:.0f} s ({len(running)} qemu running): stopped in "
          f"{stopped_in:.1f} s, {len(left)} qemu left, 3 files written, "
          f"{len(incomplete)}/{len(run['cells'])} cells incomplete")
