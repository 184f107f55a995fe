"""Seeded randomized sequences: several openers (processes) drive random legal and illegal
calls for a bounded time; afterwards the device must be idle and the kernel log clean.

Reproduce a run with LOOPQUAL_SEED=<seed> (printed in every message).
"""

from __future__ import annotations

import os
import random
import time

import pytest
from lib.common import H2, W2, Reader, Writer, caps_str, fmt_str
from lib.fuzz import walk
from lib.proc import Hang
from lib.v4l2 import CAP_VIDEO_CAPTURE, CAP_VIDEO_OUTPUT, OUT, Device

from loopqual.guest.programs.infra import InfrastructureProblem

DURATION = float(os.environ.get("LOOPQUAL_FUZZ_SECONDS", "15"))


LAST = {"tag": "no random walk ran before this scenario", "calls": 0}


@pytest.mark.rules("H1")
@pytest.mark.timeout(int(DURATION) + 90)
def test_random_sequences_kernel_health(cell, openers):
    """The walk itself: every opener must finish (no hang, no process killed by the kernel);
    the kernel log is judged by the autouse fixture (H1)."""
    seed = int(os.environ.get("LOOPQUAL_SEED", "0")) or random.SystemRandom().randrange(1, 1 << 31)
    tag = f"seed={seed} (rerun with LOOPQUAL_SEED={seed})"
    LAST["tag"] = tag + " (the walk did not complete)"
    LAST["started"] = True
    n = max(1, min(4, cell.max_openers))
    workers = [openers.proc(f"fuzz{i}") for i in range(n)]
    for i, w in enumerate(workers):
        w.send("fn", walk, seed + i, DURATION, max_buffers=cell.max_buffers)
    # One deadline for all: the walks run side by side, so a hung module costs the wait once.
    deadline = time.monotonic() + DURATION + 20
    stats, hung = {}, []
    for i, w in enumerate(workers):
        try:
            stats[i] = w.result(max(1.0, deadline - time.monotonic()))
        except Hang as exc:
            hung.append(f"fuzz{i}: {exc}")
    if hung:
        pytest.fail(f"{tag}: {len(hung)} of {n} openers did not finish their {DURATION:.0f} s walk "
                    f"within {DURATION + 20:.0f} s: " + "; ".join(hung))
    # one opener killed mid-walk, too
    victim = openers.proc("fuzz-killed")
    victim.send("fn", walk, seed + 99, 30.0, max_buffers=cell.max_buffers)
    time.sleep(min(3.0, DURATION / 3))
    assert victim.kill(), f"{tag}: SIGKILL of a fuzzing opener: it did not exit within 5 s"
    openers.close_all()
    LAST["tag"] = tag
    LAST["calls"] = sum(sum(v) for s in stats.values() for v in s.values())


@pytest.mark.rules("C1", "C2", "C3")
@pytest.mark.timeout(60)
def test_random_sequences_leave_device_idle(cell, openers):
    """After the walk (the scenario above) and every opener closed or killed: idle again."""
    tag, calls = LAST["tag"], LAST["calls"]
    if not LAST.get("started"):
        # a selection (-k) without the walk: this scenario could judge nothing of the module
        raise InfrastructureProblem(
            f"C1-C3 after the random walk: test_random_sequences_kernel_health must run first in "
            f"the same session (its openers closed or killed), got {tag}: an idle device alone "
            f"judges nothing of C2 here; select both scenarios")
    with Device(cell.device) as d:
        if cell.exclusive_caps and not cell.keep_format:
            caps = d.device_caps()
            assert caps & CAP_VIDEO_OUTPUT and not caps & CAP_VIDEO_CAPTURE, (
                f"{tag}: after {calls} random calls and every opener closed: expected "
                f"device_caps OUTPUT (idle), got {caps_str(caps)}")
        if not cell.keep_format:
            got = d.s_fmt(OUT, W2, H2)
            assert (got["width"], got["height"]) == (W2, H2), (
                f"{tag}: after the random walk, S_FMT(OUTPUT, {W2}x{H2}) on the idle device: "
                f"expected it, got {fmt_str(got)} (still pinned?)")
    # and it streams
    wd = openers.fd()
    try:
        wr = Writer(wd, count=2, set_format=not cell.keep_format)
        r = Reader(openers.fd())
        f = wr.send()
        b = r.get_frame(f["frame"], 5.0)
    except OSError as exc:
        pytest.fail(f"{tag}: after {calls} random calls: a writer/reader round trip failed: {exc}")
    assert b["frame"] == f["frame"], f"{tag}: reader got frame {b['frame']}, expected {f['frame']}"


