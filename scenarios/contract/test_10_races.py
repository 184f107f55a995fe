"""Races between processes: read() and write() against other openers' S_FMT, REQBUFS(0),
STREAMOFF and close(); mmap/munmap against REQBUFS; SIGKILL of readers blocked in read() and
DQBUF while the writer goes away.

Every race is bounded (RACE_S seconds of racing, LOOPQUAL_RACE_SECONDS) and ends the same
way: every process must have finished (a hang fails), every opener closed, the device idle
and reusable (a new writer streams to a new reader; an exclusive_caps=1 node shows OUTPUT
again), and the kernel log clean (judged around every scenario, and over the whole cell by
the runner: a report there breaks H1 whichever scenario it came in). The races are not marked
H1 themselves: a module that refuses a racing call (EBUSY where the contract wants success)
fails them for the contract rules they name, which says nothing of the kernel's health. Each
side runs in its own process, so a kernel BUG kills only that process and the scenario says
which one.
"""

from __future__ import annotations

import errno
import os

import pytest
from lib.common import (
    advertised,
    advertises_output_when_idle,
    kept_capture_only,
    need_openers,
    new_writer_works,
)
from lib.fuzz import claim_loop, disturb_loop, map_vs_reqbufs, rw_loop, rw_start
from lib.proc import Hang
from lib.v4l2 import CAP, OUT, REQ_DQBUF, ename

RACE_S = float(os.environ.get("LOOPQUAL_RACE_SECONDS", "1.5"))
DISTURB = ["s_fmt", "reqbufs0", "streamoff", "close"]


def _results(workers, what: str) -> dict:
    """Each worker's reply to its pending call, within the race's time and a margin: a worker
    that does not answer hangs (in the kernel, or the module lost a wake-up), one that died
    was killed (a kernel BUG kills the task in its system call)."""
    out, failed = {}, []
    for w in workers:
        try:
            out[w.name] = w.result(RACE_S + 15)
        except (Hang, AssertionError, OSError) as exc:
            failed.append(f"{w.name}: {exc}")
    if failed:
        pytest.fail(f"{what}: " + "; ".join(failed))
    return out


def _finish(cell, openers, what: str) -> None:
    """Every opener closed (none stuck), then the device idle and reusable (C1-C3)."""
    stuck = openers.close_all()
    assert not stuck, f"{what}: openers stuck in the kernel after the race: {stuck}"
    new_writer_works(cell, openers, what)
    openers.close_all()
    advertises_output_when_idle(cell, what)


def _writer_how(cell, w) -> str:
    if kept_capture_only(cell, w):
        return "g_fmt_cap"
    return "g_fmt_out" if cell.keep_format else "s_fmt"


@pytest.mark.rules("W1", "W2", "W3", "F2", "A5", "S4", "C1")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", DISTURB)
def test_race_rw_against(cell, openers, kind):
    """One process writes (write(), holding the write token) and reads (read() on a second
    opener, in a thread) while another opener, in another process, keeps doing `kind` (S_FMT
    on both directions; REQBUFS(CAPTURE, n) + mmap + REQBUFS(0); STREAMON/STREAMOFF(CAPTURE)
    and STREAMOFF(OUTPUT) without the token; claim, close, open again). The writer's write()s must
    all succeed (W1/W2), the reader must get whole frames (W3), the disturber's calls must
    answer as the contract says (see lib.fuzz.disturb_loop)."""
    need_openers(cell, 3)  # the writer, its reader, the disturber
    rw = openers.proc("reader-writer")
    other = openers.proc(f"{kind}-opener")
    try:
        fmt = rw.call("fn", rw_start, _writer_how(cell, rw))
    except OSError as exc:
        pytest.fail(f"the writer's first write() (W1, with nobody else claiming): expected "
                    f"success, got {exc}")
    what = f"read()/write() racing another process's {kind} for {RACE_S:.1f} s"
    rw.send("fn", rw_loop, RACE_S, fmt["sizeimage"])
    other.send("fn", disturb_loop, RACE_S, kind, seed=7,
               pinned=(fmt["width"], fmt["height"]))
    res = _results([rw, other], what)
    rwr, dr = res[rw.name], res[other.name]
    bad = [f"{rw.name}: {b}" for b in rwr["bad"]] + [f"{other.name}: {b}" for b in dr["bad"]]
    assert not bad, (f"{what}: " + "; ".join(bad) + f" (writer: {rwr['ok']} {rwr['errors']}, "
                     f"reader: {rwr['reads']}, {kind}: {dr['ok']} {dr['errors']})")
    done = sum(dr["ok"].values())
    assert done, (f"{what}: the disturbing opener's {kind} never succeeded (errors "
                  f"{dr['errors']}): the race was not run")
    _finish(cell, openers, what)


@pytest.mark.rules("A4", "A5", "A7", "C1")
@pytest.mark.timeout(60)
def test_race_mmap_against_reqbufs(cell, openers):
    """One opener whose two threads race: one QUERYBUF + mmap + touch + munmap of its buffers,
    the other REQBUFS with counts 0..max_buffers+1 (EBUSY while a buffer is mapped, A4); a
    second process claims and releases the same direction meanwhile (A3/A5), so the first is
    now the only claimant, now not. A mapping mmap() returned must stay usable until munmap
    (a fault kills the process); see lib.fuzz.map_vs_reqbufs for what else is judged."""
    need_openers(cell, 2)
    a = openers.proc("mapper")
    dirs = advertised(a)
    if not dirs:
        pytest.fail("QUERYCAP of a new opener on the idle device shows neither CAPTURE nor "
                    "OUTPUT")
    bt, dname = dirs[0]
    b = openers.proc("claimer")
    what = f"mmap/munmap racing REQBUFS({dname}) for {RACE_S:.1f} s"
    # the mapper claims before the claimer starts: were the claimer's claim the first, with
    # exclusive_caps=1 and keep_format=1 it would pin (and keep) the format, and the mapper,
    # which did not set it, would see a CAPTURE-only node (X1) and its first REQBUFS(OUTPUT)
    # would be EINVAL (seen on 6.1, cell ec1-keep)
    if not cell.keep_format:
        a.call("s_fmt", bt, 160, 120)
    a.call("reqbufs", bt, 2)
    a.send("fn", map_vs_reqbufs, RACE_S, bt, cell.max_buffers)
    # exclusive_caps=1 + keep_format=1: the mapper's claim pins the format and the kept
    # format shows CAPTURE only to an opener that did not set it (X1), so the claimer's OUTPUT
    # REQBUFS is EINVAL from then on (seen on 6.1 ec1-keep when the walk before left the
    # format unset: the claimer never got OUTPUT)
    hides = bool(cell.exclusive_caps and cell.keep_format and bt == OUT)
    b.send("fn", claim_loop, RACE_S, bt, hides)
    res = _results([a, b], what)
    bad = [f"{k}: {x}" for k, r in res.items() for x in r["bad"]]
    assert not bad, (f"{what}: " + "; ".join(bad) + " (" + "; ".join(
        f"{k}: {r['ok']} {r['errors']}" for k, r in res.items()) + ")")
    maps = res[a.name]["ok"].get("mmap", 0)
    assert maps, (f"{what}: no mmap succeeded (errors {res[a.name]['errors']}): the race was "
                  f"not run")
    _finish(cell, openers, what)


@pytest.mark.rules("C2", "C1", "S3", "W3", "A5")
@pytest.mark.timeout(60)
def test_race_sigkill_blocked_readers_while_writer_leaves(cell, openers):
    """Two readers in their own processes, one blocked in DQBUF(CAPTURE), one in read(), both
    waiting for a first frame (S3, W3) of a writer that streams but sends none; the writer
    then does STREAMOFF, REQBUFS(0) and close() under them. The readers must not crash (a
    wake-up on a released queue), then die at once on SIGKILL (C2), and the device must be
    reusable. (test_c2_sigkill judges SIGKILL while blocked with the writer still there.)"""
    need_openers(cell, 3)
    w = openers.proc("writer")
    if kept_capture_only(cell, w):
        pytest.skip("a writer that streams without sending a frame is impossible here: with "
                    "exclusive_caps=1 and keep_format=1 and a format kept the node offers "
                    "CAPTURE only (X1), so a new writer starts with write(), which publishes a "
                    "frame (W1), and no reader would wait")
    if not cell.keep_format:
        w.call("s_fmt", OUT, 160, 120)
    w.call("reqbufs", OUT, 2)
    w.call("streamon", OUT)
    size = w.call("g_fmt", OUT)["sizeimage"]
    rq = openers.proc("reader-dqbuf", flags=os.O_RDWR)
    rr = openers.proc("reader-read", flags=os.O_RDWR)
    rq.call("setup_mmap", CAP, 2)
    rq.call("streamon", CAP)
    rq.send("dqbuf", CAP)
    rr.send("read", size)
    for v, call, req in ((rq, "ioctl", REQ_DQBUF), (rr, "read", None)):
        st = v.blocked_in(call, req, timeout=5.0)
        assert st["blocked"], (f"{v.name}: expected it asleep in the module in {call}() waiting "
                               f"for a first frame (S3/W3) before the writer leaves, got "
                               f"{st['how']}")
    w.call("streamoff", OUT)
    w.call("munmap_all")
    e = w.err("reqbufs", OUT, 0)
    assert e == 0, f"the writer's REQBUFS(OUTPUT, 0) under two blocked readers: got {ename(e)}"
    w.stop()
    # they may go on waiting (no writer) or return an error; dying is wrong (a kernel BUG)
    for v, call in ((rq, "DQBUF(CAPTURE)"), (rr, "read()")):
        if v.done(0.3):
            try:
                got = v.result(1)
                pytest.fail(f"{v.name}: {call} returned success ({got!r:.80}) once the writer "
                            f"left, though no frame was ever written")
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EINVAL, errno.EPIPE, errno.EIO,
                                     errno.ENODEV):
                    pytest.fail(f"{v.name}: {call} returned {ename(exc.errno)} once the "
                                f"writer left")
            except Hang as exc:
                pytest.fail(f"{v.name} after the writer left under it: {exc}")
    for v in (rq, rr):
        assert v.kill(), (f"{v.name}: SIGKILL after the writer left: expected the process to "
                          f"exit within 5 s, it is stuck in the kernel")
    _finish(cell, openers, "SIGKILL of readers blocked in DQBUF and read() after the writer "
                           "left under them")
