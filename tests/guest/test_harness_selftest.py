"""Guest-side self-test of the harness's failure paths, run by tests/test_guest_failure_paths.py
through `loopqual qualify --suite selftest`. Not a judgement of any module.

In the cell whose parameter set is `ec1` it panics the kernel (sysrq 'c'): the host must
record that cell as incomplete with the panic and boot again for the next cell. In every
other cell it leaves a process holding the device open: the runner must report it, kill
it, and still unload the module."""

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
