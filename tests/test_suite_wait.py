"""The guest runner's wait for a suite's pytest process, with real forked processes on the
host: a process that finished its session but cannot exit is killed after the grace time and
described (not waited for until the suite's timeout); a normal exit gives its status."""

from __future__ import annotations

import os
import time

from loopqual.guest import runner


def _fork(body) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            body()
        finally:
            os._exit(0)
    return pid


def test_a_process_that_will_not_exit_after_finishing_is_killed_and_described(tmp_path):
    finished = tmp_path / "x-scenarios.finished"

    def body():
        finished.write_text("finished\n")
        time.sleep(60)

    t0 = time.monotonic()
    status, timed_out, stuck = runner.wait_suite(_fork(body), 120, finished, grace=1.0)
    assert time.monotonic() - t0 < 15
    assert status is None and not timed_out
    assert len(stuck) == 1 and "had not exited 1 s after pytest finished" in stuck[0]
    assert "state S" in stuck[0]  # the sleeping process, seen before the kill


def test_a_normal_exit_gives_its_status(tmp_path):
    pid = _fork(lambda: os._exit(1))
    assert runner.wait_suite(pid, 30, tmp_path / "never", grace=1.0) == (1, False, [])


def test_the_suite_timeout_still_applies_before_pytest_finishes(tmp_path):
    pid = _fork(lambda: time.sleep(60))
    status, timed_out, stuck = runner.wait_suite(pid, 1.0, tmp_path / "never", grace=1.0)
    assert status is None and timed_out and stuck == []
