"""SIGTERM (a cancelled CI job) during a real run with two guests at once (--jobs 2), and
SIGINT (Ctrl-C) with one: every guest stops, QEMU included, results.json, junit.xml and
report.html are written, the cells that did not finish are incomplete with the reason,
exit 2 with one line and no traceback.
About 10 s each: the signal once every guest's QEMU runs, a few seconds into their boot."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from loopqual.boot import vm

pytestmark = pytest.mark.guest


def qemu_of(out) -> list[str]:
    """QEMU processes of this run (pgrep -af lines), on either guest root: over 9p QEMU's own
    command line names one of its guest directories (as vng got it: a plain link to it under
    the cache, see vm.shell_safe_alias); over virtiofs a virtiofsd shares that directory, and
    QEMU names the virtiofsd's socket."""
    return [ln for ln in _of_run(out) if "qemu-system" in ln]


def _alive(pid: str) -> bool:
    """A process that still runs (an exited one waiting to be reaped, Z, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _of_run(out) -> list[str]:
    """The QEMU and virtiofsd processes of this run."""
    names = [str(out)] + [str(vm.shell_safe_alias(out / "guest" / "debian-6.1" / lane))
                          for lane in ("", "lane1", "lane2")]
    ps = subprocess.run(["pgrep", "-af", "qemu-system|virtiofsd"], capture_output=True,
                        text=True).stdout.splitlines()
    daemons = [ln for ln in ps if "virtiofsd" in ln and "qemu-system" not in ln
               and any(f"--shared-dir {n} " in ln for n in names)]
    sockets = [ln.split("--socket-path ", 1)[1].split()[0] for ln in daemons
               if "--socket-path " in ln]
    qemus = [ln for ln in ps if "qemu-system" in ln
             and (any(f"path={n}," in ln for n in names) or any(f"path={s}" in ln for s in sockets))]
    return qemus + daemons


@pytest.mark.parametrize("sig,jobs", [(signal.SIGTERM, 2), (signal.SIGINT, 1)])
def test_a_signal_stops_every_guest_and_still_writes_results(tmp_path, sig, jobs):
    name = signal.Signals(sig).name
    out = tmp_path / "run dir; touch x"  # also: an --out with a space and a ';' (point 13)
    proc = subprocess.Popen(
        [sys.executable, "-m", "loopqual.cli", "qualify", "--jobs", str(jobs), "--module", "patched",
         "--params", "ec0", "--params", "ec1-open2", "--suite", "selftest", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    t0 = time.monotonic()
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if sum("booting" in ln for ln in lines) == jobs:
                break
        else:
            pytest.fail("no guest was started:\n" + "".join(lines[-20:]))
        # every guest's QEMU running (and a few seconds into its kernel's boot)
        deadline = time.monotonic() + 60
        while len(running := qemu_of(out)) < jobs and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(running) == jobs, f"{jobs} QEMU of this run should run before the signal"
        time.sleep(5)
        sent_at = time.monotonic() - t0
        proc.send_signal(sig)
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
    left = _of_run(out) + [pid for pid in (ln.split()[0] for ln in running) if _alive(pid)]
    err = "".join(lines) + rest_err
    assert code == 2, err[-3000:] + stdout[-2000:]
    assert "Traceback" not in err + stdout
    assert rest_err.count(f"interrupted by {name}") == 1, rest_err
    assert left == [], left
    assert not (tmp_path / "x").exists()
    for f in ("results.json", "junit.xml", "report.html"):
        assert (out / f).exists(), f
    run = json.loads((out / "results.json").read_text())
    assert run["interrupted"] == f"interrupted by {name}" and run["exit_code"] == 2
    seed = f"LOOPQUAL_SEED={run['seed']}"  # the whole run's and each cell's line replay it
    for line in [run["command"]] + [c["reproduce"] for c in run["cells"]]:
        words = shlex.split(line)
        assert seed in words[:words.index("loopqual")], line
    incomplete = [c for c in run["cells"] if c["status"] == "incomplete"]
    assert incomplete and all(
        any(f"interrupted by {name}" in r for r in c["incomplete"]) for c in incomplete)
    print(f"{name} (--jobs {jobs}) at {sent_at:.0f} s ({len(running)} qemu running): stopped in "
          f"{stopped_in:.1f} s, {len(left)} qemu left, 3 files written, "
          f"{len(incomplete)}/{len(run['cells'])} cells incomplete")
