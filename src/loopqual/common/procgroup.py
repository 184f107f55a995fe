"""Process groups: start a command in a session of its own, stop the whole of it, reap it.

One helper for every place that runs a child it may have to kill (the host's guests, the
benchmark, the guest runner's suites and clients). Standard library only: the guest imports
it too.

- spawn(cmd, **popen_kw): Popen in a new session (so the child's group id is its pid and a
  terminal's Ctrl-C does not reach it: the caller decides when it stops).
- stop(pid, grace=..., sig=SIGTERM): signal the group (and any process that stayed in the
  session under another group), wait `grace` seconds, then SIGKILL what is left.
- kill(pid): SIGKILL the group and session at once (safe from a signal handler).
- reap(pid, timeout): wait for one child up to `timeout` seconds; its exit code or None.
- stop_foreign(pid, grace=...): stop() for a group another process started (and reaps).
- exit_status(pid): a process's exit code once it has ended, read from /proc (any parent).
- Registry: the live groups of a run, so a signal handler can stop every one of them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path


def spawn(cmd: list[str], **popen_kw) -> subprocess.Popen:
    """Start cmd (an argument list, never a shell string) in a session and group of its own."""
    if isinstance(cmd, str):
        raise TypeError("procgroup.spawn takes an argument list, not a string")
    return subprocess.Popen(cmd, start_new_session=True, **popen_kw)


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state is the first), None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def exit_status(pid: int) -> int | None:
    """None while pid runs; its exit code (negative: signal) while it is a zombie; -1 once
    it is gone (reaped by its parent: the code is lost)."""
    fields = _stat_fields(pid)
    if fields is None:
        return -1
    if fields[0] != "Z":
        return None
    try:  # exit_code, field 52 of the whole line (Linux 3.5 and later)
        return os.waitstatus_to_exitcode(int(fields[49]))
    except (IndexError, ValueError):
        return -1


def live_members(sid: int) -> list[int]:
    """session_members(sid) that have not ended (zombies left out)."""
    return [p for p in session_members(sid) if (f := _stat_fields(p)) and f[0] != "Z"]


def session_members(sid: int) -> list[int]:
    """Pids whose session is sid (a child that moved to a group of its own stays in it)."""
    pids = []
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return pids
    for proc in entries:
        if not proc.name.isdigit():
            continue
        fields = _stat_fields(int(proc.name))
        if fields is not None and len(fields) > 3 and int(fields[3]) == sid:  # state ppid pgrp session ...
            pids.append(int(proc.name))
    return pids


def signal_group(pid: int, sig: int) -> None:
    """Send sig to the process group pid and to every other member of session pid."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for member in session_members(pid):
        try:
            os.kill(member, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill(pid: int) -> None:
    """SIGKILL everything started by spawn() as pid. No waiting: safe in a signal handler."""
    signal_group(pid, signal.SIGKILL)


def reap(pid: int, timeout: float, poll: float = 0.1) -> int | None:
    """Wait up to timeout seconds for child pid; its exit code (negative: signal), or None
    if it is still there (stuck in the kernel) or not our child any more."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll)


def stop(proc: subprocess.Popen | int, grace: float = 5.0, sig: int = signal.SIGTERM,
         reap_s: float = 15.0) -> int | None:
    """Stop a spawned group: sig, up to grace seconds to go, then SIGKILL; reap the leader.
    grace=0 goes straight to SIGKILL. Returns the leader's exit code or None."""
    pid = proc.pid if isinstance(proc, subprocess.Popen) else proc

    def leader_gone() -> bool:
        if isinstance(proc, subprocess.Popen):
            return proc.poll() is not None
        return False

    if grace > 0 and not leader_gone():
        signal_group(pid, sig)
        end = time.monotonic() + grace
        while time.monotonic() < end and not leader_gone() and session_members(pid):
            time.sleep(0.1)
    kill(pid)
    if isinstance(proc, subprocess.Popen):
        try:
            return proc.wait(timeout=reap_s)
        except subprocess.TimeoutExpired:
            return None
    return reap(pid, reap_s)


def stop_foreign(pid: int, grace: float = 5.0, sig: int = signal.SIGTERM,
                 wait_s: float = 15.0) -> bool:
    """stop() for a group this process did not start (it cannot reap it): sig, up to grace
    seconds, SIGKILL, then up to wait_s seconds until every member has ended. True if none
    is left running."""
    if grace > 0 and live_members(pid):
        signal_group(pid, sig)
        end = time.monotonic() + grace
        while time.monotonic() < end and live_members(pid):
            time.sleep(0.1)
    kill(pid)
    end = time.monotonic() + wait_s
    while live_members(pid):
        if time.monotonic() >= end:
            return False
        time.sleep(0.1)
    return True


class Registry:
    """The live process groups of one run, for a signal handler to stop them all."""

    def __init__(self) -> None:
        self._pids: set[int] = set()
        self._lock = threading.Lock()

    def add(self, pid: int) -> None:
        with self._lock:
            self._pids.add(pid)

    def discard(self, pid: int) -> None:
        with self._lock:
            self._pids.discard(pid)

    def pids(self) -> list[int]:
        with self._lock:
            return sorted(self._pids)

    def kill_all(self) -> int:
        """SIGKILL every registered group (no lock taken: callable from a signal handler
        that interrupted a thread holding it); the number of groups signalled."""
        pids = list(self._pids)
        for pid in pids:
            kill(pid)
        return len(pids)
