"""procgroup: one way to start, stop and reap a child with everything it started, on real
processes (sh, sleep, a child that leaves its group but not its session)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from loopqual.common import procgroup


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def spawn_family() -> tuple[subprocess.Popen, list[int]]:
    """sh -> (sleep in sh's group, python that moved to a group of its own); their pids."""
    code = ("import os, time; os.setpgid(0, 0); print(os.getpid(), flush=True); time.sleep(300)")
    proc = procgroup.spawn(["sh", "-c", f'sleep 300 & echo $!; {sys.executable} -c "{code}" & wait'],
                           stdout=subprocess.PIPE, text=True)
    pids = [int(proc.stdout.readline()), int(proc.stdout.readline())]
    return proc, pids


def test_stop_ends_the_group_and_the_session_members_that_left_it():
    proc, pids = spawn_family()
    assert os.getpgid(pids[1]) == pids[1] != proc.pid  # left the group, still in the session
    assert sorted(procgroup.session_members(proc.pid)) == sorted([proc.pid, *pids])
    code = procgroup.stop(proc, grace=2)
    assert code == -signal.SIGTERM
    time.sleep(0.2)
    assert not any(alive(p) for p in pids)


def test_kill_from_a_registry_reaches_every_live_group():
    reg = procgroup.Registry()
    procs = [spawn_family() for _ in range(2)]
    for proc, _ in procs:
        reg.add(proc.pid)
    assert reg.kill_all() == 2
    for proc, _pids in procs:
        assert proc.wait(timeout=10) == -signal.SIGKILL
        reg.discard(proc.pid)
    time.sleep(0.2)
    assert not any(alive(p) for _, pids in procs for p in pids)
    assert reg.pids() == []


def test_reap_gives_the_exit_code_or_none_on_timeout():
    pid = os.fork()
    if pid == 0:
        time.sleep(0.3)
        os._exit(7)
    assert procgroup.reap(pid, 0.05) is None
    assert procgroup.reap(pid, 10) == 7


def test_a_shell_string_is_refused():
    with pytest.raises(TypeError):
        procgroup.spawn("sleep 1; touch /tmp/x")
