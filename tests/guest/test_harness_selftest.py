"""Guest-side self-test of the harness's failure paths, run by tests/test_guest_failure_paths.py
through `loopqual qualify --suite selftest`. Not a judgement of any module.

In the cell whose parameter set is `ec1` it panics the kernel (sysrq 'c'): the host must
record that cell as incomplete with the panic and boot again for the next cell. In every
other cell it leaves a process holding the device open: the runner must report it, kill
it, and still unload the module. There it also checks the cgroups that K6's prestarted browsers
start in (prestart.py) on the guest's real cgroup v2 tree, which the host does not have."""

import json
import os
import subprocess
import time


def cell():
    # Never on a real machine: only in a virtme-ng guest started by loopqual.
    with open("/proc/cmdline") as fh:
        assert "virtme" in fh.read(), "refusing to run outside a loopqual guest"
    with open(os.environ["LOOPQUAL_CELL"]) as fh:
        return json.load(fh)


def test_failure_path():
    c = cell()
    if c["param_set"] == "ec1":
        with open("/proc/sysrq-trigger", "w") as fh:
            fh.write("c")
        time.sleep(60)  # not reached: the kernel is gone
        raise AssertionError("sysrq-trigger c did not panic the kernel")
    # A stray opener in its own session, which outlives this pytest process.
    subprocess.Popen(["sleep", "600"], stdin=open(c["device"], "rb"), start_new_session=True)
    time.sleep(0.5)


def _cgroup_of(pid):
    with open(f"/proc/{pid}/cgroup") as fh:
        return fh.read().strip()


def _wait(pred, secs=10.0):
    deadline = time.monotonic() + secs
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.1)
    return pred()


def test_background_group_holds_moves_and_kills():
    """K6's prestarted browsers, on this guest's real cgroup v2 tree (the host has v1): a
    program spawned into a background group runs there at the lowest weight with what it
    forks; leave_group empties the group into the root cgroup and removes it; kill_group ends
    everything in a group."""
    cell()
    from loopqual.guest.programs import prestart

    group, why = prestart.background_group("selftest")
    assert group is not None, why
    moved_out, p = [], None
    try:
        assert (group / "cpu.weight").read_text().strip() == str(prestart.BACKGROUND_WEIGHT)
        p = prestart.spawn_in_group(group, ["sh", "-c", "sleep 600 & sleep 600 & wait"],
                                    stdin=subprocess.DEVNULL)
        procs = group / "cgroup.procs"
        assert _wait(lambda: len(procs.read_text().split()) == 3), procs.read_text()
        members = procs.read_text().split()
        assert str(p.pid) in members, (p.pid, members)  # joined before it ran anything
        moved, gone = prestart.leave_group(group)
        moved_out = members
        assert (moved, gone) == (3, True) and not group.exists(), (moved, gone)
        assert all(_cgroup_of(pid) == "0::/" for pid in members), [_cgroup_of(x) for x in members]

        group, why = prestart.background_group("selftest")
        assert group is not None, why
        q = prestart.spawn_in_group(group, ["sh", "-c", "sleep 600 & sleep 600 & wait"],
                                    stdin=subprocess.DEVNULL)
        assert _wait(lambda: len((group / "cgroup.procs").read_text().split()) == 3)
        prestart.kill_group(group)
        assert not group.exists()
        assert q.wait(timeout=10) == -9, q.returncode
    finally:
        for pid in moved_out:
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        if p is not None:
            p.wait(timeout=10)
        if group is not None and group.exists():
            prestart.kill_group(group)
