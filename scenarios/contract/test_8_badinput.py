"""Bad input: huge counts, bad indexes, types, memory types, user pointers, wrong states.

The module must refuse with an error (never crash, never succeed on nonsense) and the kernel
log must stay clean (H1 is judged around every scenario by the autouse fixture; these
scenarios are marked with the rules whose refusals they check).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import time

import pytest
from lib.common import KEPT_HOW, Writer, kept_capture_only, need_openers, new_writer
from lib.v4l2 import (
    CAP,
    OUT,
    POLLERR,
    POLLIN,
    POLLOUT,
    USERPTR,
    V4L2Error,
    _req,
    ename,
    err,
    raw,
)

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
libc.read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
libc.write.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
libc.read.restype = libc.write.restype = ctypes.c_ssize_t

BAD_PTRS = (0x1, 0xFFFF_FFFF_FFFF_F000, 0x0000_7FFF_FFFF_0000)


def _raw_ioctl(fd, ioc, ptr) -> int:
    r = libc.ioctl(fd, _req(ioc), ptr)
    return 0 if r == 0 else ctypes.get_errno()


@pytest.mark.rules("A7", "L2")
def test_bad_huge_counts(cell, openers):
    d = openers.fd()
    for req in (0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 65536):
        try:
            n = d.reqbufs(OUT, req)["count"]
        except V4L2Error as exc:
            pytest.fail(f"REQBUFS(OUTPUT, {req:#x}): expected a clamped count, got "
                        f"{ename(exc.errno)}")
        assert 1 <= n <= cell.max_buffers, (f"REQBUFS(OUTPUT, {req:#x}): expected 1.."
                                            f"{cell.max_buffers}, got {n}")


@pytest.mark.rules("S5", "S1")
def test_bad_indexes_and_types(cell, openers):
    d = openers.fd()
    wr = Writer(d, count=2)
    n = wr.count
    for idx in (n, 31, 32, 33, 1 << 31, 0xFFFFFFFF):
        for op, fn in (("QUERYBUF", d.querybuf), ("QBUF", d.qbuf)):
            e = err(fn, OUT, idx)
            assert e == errno.EINVAL, f"{op}(OUTPUT, {idx:#x}): expected EINVAL, got {ename(e)}"
    for bt in (0, 3, 4, 9, 10, 13, 100, 0xFFFFFFFF):
        for op, fn in (("REQBUFS", lambda t: d.reqbufs(t, 2)), ("QUERYBUF", lambda t:
                       d.querybuf(t, 0)), ("QBUF", lambda t: d.qbuf(t, 0)),
                       ("DQBUF", lambda t: d.dqbuf(t)), ("STREAMON", d.streamon)):
            e = err(fn, bt)
            assert e != 0, f"{op}(buffer type {bt:#x}): expected an error, it succeeded"
        # not contract rules, only robustness (H1 is judged around every scenario)
        err(d.streamoff, bt)
        err(d.g_fmt, bt)
        err(d.try_fmt, bt, 160, 120)


@pytest.mark.rules("A1")
def test_bad_memory_types(cell, openers):
    d = openers.fd()
    for mem in (0, USERPTR, 3, 4, 5, 0xFFFFFFFF):
        e = err(d.reqbufs, OUT, 2, mem)
        assert e == errno.EINVAL, f"REQBUFS(OUTPUT, 2, memory={mem:#x}): expected EINVAL, got " \
                                  f"{ename(e)}"
    Writer(d, count=2)
    # QBUF with another memory type than the buffers': must not succeed as USERPTR
    for mem in (USERPTR, 0xFFFFFFFF):
        e = err(d.qbuf, OUT, 0, 100, mem)
        assert e != 0, (f"QBUF(OUTPUT, 0, memory={mem:#x}) on MMAP buffers: "
                                       f"expected an error, it succeeded")


@pytest.mark.rules("W1", "W3")
def test_bad_user_pointers_read_write(cell, openers):
    need_openers(cell, 2)
    w = openers.fd()
    size = (w.s_fmt(OUT, 160, 120) if not cell.keep_format else w.g_fmt(OUT))["sizeimage"]
    for p in BAD_PTRS:
        r = libc.write(w.fd, p, size)
        e = ctypes.get_errno()
        assert r < 0 and e == errno.EFAULT, (f"write(fd, {p:#x}, {size}) from an unmapped "
                                             f"address: expected EFAULT, got "
                                             f"{r if r >= 0 else ename(e)}")
    good = (ctypes.c_char * size)()
    r = libc.write(w.fd, good, size)
    assert r == size, f"write() of a valid frame after bad ones: expected {size}, got " \
                      f"{r if r >= 0 else ename(ctypes.get_errno())}"
    rd = openers.fd()
    got = []
    for p in BAD_PTRS:
        libc.write(w.fd, good, size)
        r = libc.read(rd.fd, p, size)
        e = ctypes.get_errno()
        got.append(r if r >= 0 else ename(e))
        assert r < 0 and e in (errno.EFAULT, errno.EAGAIN), (
            f"read(fd, {p:#x}, {size}) into an unmapped address: expected EFAULT, got "
            f"{r if r >= 0 else ename(e)}")
    # EAGAIN is allowed where the reader's first read() has not seen a frame yet, but a frame is
    # written before each read(): an EAGAIN every time means the copy was never tried
    assert "EFAULT" in got, (f"read() into unmapped addresses {[hex(p) for p in BAD_PTRS]}, "
                             f"each after a write() of a frame: expected EFAULT at least once, "
                             f"got {got}")
    # short and huge lengths must not crash
    libc.write(w.fd, good, 1)
    big = mmap.mmap(-1, size * 4)
    buf = ctypes.c_char.from_buffer(big)
    libc.write(w.fd, ctypes.addressof(buf), size * 4)
    libc.read(rd.fd, ctypes.addressof(buf), size * 4)
    del buf
    big.close()


@pytest.mark.rules("S5")
def test_bad_ioctl_argument_pointers(cell, openers):
    d = openers.fd()
    for name in ("QUERYCAP", "G_FMT", "S_FMT", "TRY_FMT", "REQBUFS", "QUERYBUF", "QBUF",
                 "DQBUF", "STREAMON", "STREAMOFF", "G_PARM", "S_PARM", "G_CTRL", "S_CTRL",
                 "SUBSCRIBE_EVENT", "DQEVENT", "ENUM_FMT", "ENUM_FRAMESIZES"):
        ioc = getattr(raw.IOC, name)
        for p in BAD_PTRS:
            e = _raw_ioctl(d.fd, ioc, p)
            if name == "DQEVENT" and e == errno.ENOENT:
                continue  # no event pending: nothing is copied out, ENOENT is right
            assert e == errno.EFAULT, f"VIDIOC_{name} with argument pointer {p:#x}: expected " \
                                      f"EFAULT, got {ename(e)}"
    d.querycap()


@pytest.mark.rules("S1", "S4", "S5", "S6")
def test_bad_wrong_state_sequences(cell, openers):
    d = openers.fd()
    e = err(d.qbuf, OUT, 0)
    assert e == errno.EINVAL, f"QBUF(OUTPUT) before REQBUFS: expected EINVAL, got {ename(e)}"
    e = err(d.streamoff, OUT)
    assert e in (0, errno.EINVAL), f"STREAMOFF(OUTPUT) without a claim: got {ename(e)}"
    wr = Writer(d, count=2, streamon=False)
    e = err(d.streamoff, OUT)
    assert e == 0, f"STREAMOFF(OUTPUT) by a claimant that never streamed: expected 0 " \
                   f"(idempotent), got {ename(e)}"
    wr_count = wr.count
    d.streamon(OUT)
    d.qbuf(OUT, 0, 10)
    second = err(d.qbuf, OUT, 0, 10)  # queued twice: refused, or at least not duplicated
    got = []
    for _ in range(2 * wr_count + 2):
        try:
            got.append(d.wait_dqbuf(OUT, 0.5)["index"])
        except OSError:
            break
    assert len(got) == len(set(got)) and len(got) <= wr_count, (
        f"QBUF(OUTPUT, 0) twice (second QBUF: {ename(second)}), then DQBUF(OUTPUT) until empty: "
        f"expected each buffer back at most once, got indexes {got}")
    d.streamoff(OUT)
    e = err(d.mmap, OUT, 99)
    assert e == errno.EINVAL, f"mmap of buffer 99 (QUERYBUF index out of range): got {ename(e)}"
    off = d.querybuf(OUT, 0)["offset"]
    for bad_off, length in ((off + 4096 * 1024, 4096), (off, 1 << 30)):
        try:
            m = mmap.mmap(d.fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                          offset=bad_off)
        except OSError:
            continue
        m.close()
        pytest.fail(f"mmap(offset={bad_off:#x}, length={length:#x}) past the buffers: expected "
                    f"an error, it succeeded")
    e = err(d.streamon, CAP)
    assert e == errno.EINVAL, f"STREAMON(CAPTURE) by an OUTPUT claimant: expected EINVAL, got " \
                              f"{ename(e)}"


@pytest.mark.rules("W3", "C1")
def test_bad_read_after_writer_released_buffers(cell, openers):
    """A reader that was open all along read()s after the writer freed the buffers: EAGAIN
    (or a frame), never a kernel splat (0.13.2 hit a usercopy BUG here in the random walk).
    The read() runs in a separate process so a kernel BUG kills only that process."""
    need_openers(cell, 2)
    r = openers.proc("reader")
    w = openers.fd()
    wr = Writer(w, count=2, set_format=not cell.keep_format)
    wr.send()
    wr.send()
    size = wr.fmt["sizeimage"]
    err(w.streamoff, OUT)
    w.munmap_all()
    err(w.reqbufs, OUT, 0)  # refused by some modules (A5 judges that); closing releases anyway
    w.close()
    for _ in range(3):
        try:
            e = r.err("read", size, timeout=10)
        except AssertionError as exc:  # Hang or the process died in the kernel
            pytest.fail(f"read({size}) by a reader open since before the writer released its "
                        f"buffers: {exc}")
        assert e in (0, errno.EAGAIN), (
            f"read({size}) after the writer released the buffers: expected EAGAIN (or a "
            f"frame), got {ename(e)}")


@pytest.mark.rules("H1", "F3")
@pytest.mark.timeout(60)
def test_race_read_against_format_changes(cell, openers):
    """Readers in read() while the writer keeps changing the format (the spec refuses the
    writer's S_FMT with EBUSY once it claims, F3). 0.13.2 hit a usercopy BUG (copy from a
    freed image) in the random walk; this scenario aims at that race. Each side runs in its
    own process, so a kernel BUG kills only that process and the scenario reports it."""
    need_openers(cell, 3)
    from lib.fuzz import read_loop, resize_write_loop

    if cell.keep_format:
        pytest.skip("keep_format=1 pins the format: no reallocation race to provoke")
    w = openers.proc("resizing-writer")
    readers = [openers.proc(f"reader{i}") for i in range(2)]
    w.send("fn", resize_write_loop, 6.0)
    for r in readers:
        r.send("fn", read_loop, 6.0)
    for p in [w, *readers]:
        try:
            res = p.result(30)
        except AssertionError as exc:
            pytest.fail(f"{p.name} during the read/resize race: {exc} (killed by a kernel BUG?)")
        assert isinstance(res, dict)


# REQBUFS counts at the edges, each followed by QUERYBUF/QBUF/DQBUF at, just past and far past
# the granted count: (id, count as a function of max_buffers)
EDGE_COUNTS = [("0", lambda mx: 0), ("1", lambda mx: 1), ("max", lambda mx: mx),
               ("max+1", lambda mx: mx + 1), ("0x7fffffff", lambda mx: 0x7FFFFFFF),
               ("0xffffffff", lambda mx: 0xFFFFFFFF)]
EDGE_CASES = [(bt, c) for bt in (OUT, CAP) for c in EDGE_COUNTS]
EDGE_IDS = [f"{'OUTPUT' if bt == OUT else 'CAPTURE'}-{c[0]}" for bt, c in EDGE_CASES]


def _bad_indexes(n: int, mx: int) -> list[int]:
    """Indexes a claimant of n buffers must be refused: the count itself, just past it, where
    max_buffers and VIDEO_MAX_FRAME (32) end, far past, and the top of the u32 range."""
    return sorted({n, n + 1, mx, mx + 1, 32, 33, 1000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF}
                  - set(range(n)))


def _dqbuf_preset(d, bt: int, preset: int, timeout: float) -> dict:
    """DQBUF with `preset` left in v4l2_buffer.index (the driver must ignore it), waiting up
    to `timeout` for a buffer (non-blocking opener: EAGAIN, poll, again)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return d.dqbuf(bt, index=preset)
        except V4L2Error as exc:
            if exc.errno != errno.EAGAIN or time.monotonic() > deadline:
                raise
        d.poll((POLLIN if bt == CAP else POLLOUT) | POLLERR, 0.1)


@pytest.mark.rules("A2", "A3", "A5", "A7", "L2", "S5", "S7")
@pytest.mark.parametrize("bt,edge", EDGE_CASES, ids=EDGE_IDS)
def test_bad_count_edges(cell, openers, bt, edge):
    """REQBUFS(MMAP) with a count at an edge (0, 1, max_buffers, max_buffers+1, 0x7fffffff,
    0xffffffff) on one direction, then QUERYBUF, QBUF and DQBUF at the granted count, just
    past it and far past it. Expected from the contract: count 0 is REQBUFS(0) without a claim
    (A5: 0, count 0), and every buffer ioctl after it is EINVAL (S5: no claim); any other count
    is clamped, never refused (A7/L2): a first claim gets the request clamped into
    1..max_buffers (A2), a later claim the pinned count (A3); indexes below the granted count
    work, every index from it on is EINVAL (S5); DQBUF ignores the index the caller leaves in
    the struct and hands back the buffer that was queued."""
    mx = cell.max_buffers
    req = edge[1](mx)
    dname = "OUTPUT" if bt == OUT else "CAPTURE"
    d = openers.fd()
    writer = None
    if bt == OUT:
        if kept_capture_only(cell, d):
            pytest.skip(f"REQBUFS(OUTPUT) by a new opener is impossible here: {KEPT_HOW}; the "
                        f"count edges are judged on CAPTURE in this cell")
        size = (d.g_fmt(OUT) if cell.keep_format else d.s_fmt(OUT, 160, 120))["sizeimage"]
        how, pinned = "the first claim (no other opener claims)", None
    else:
        need_openers(cell, 2)
        if cell.exclusive_caps:
            # X1: CAPTURE is offered only while a writer holds the write token
            writer = new_writer(cell, openers.fd(), count=2)
            how, pinned = "a reader's claim while a writer streams (a later claim)", writer.count
        else:
            how, pinned = "a reader's claim with no writer (the first claim)", None
        size = d.g_fmt(CAP)["sizeimage"]
    what = f"REQBUFS({dname}, {req:#x}) as {how}, max_buffers={mx}"
    try:
        n = d.reqbufs(bt, req)["count"]
    except V4L2Error as exc:
        pytest.fail(f"{what}: expected success (A5 for 0, else a clamped count, A7), got "
                    f"{ename(exc.errno)}")
    if req == 0:
        want = "0 (A5)"
        ok = n == 0
    elif pinned is not None:
        want, ok = f"the pinned count {pinned} (A3)", n == pinned
    elif cell.keep_format:
        # keep_format=1 pins format and count (F5): the request may meet a kept count
        want, ok = f"a count in 1..{mx} (keep_format=1 pins the count, F5)", 1 <= n <= mx
    else:
        clamped = min(max(req, 1), mx)
        want, ok = f"{clamped} (clamped into 1..{mx}, A2/A7)", n == clamped
    assert ok, f"{what}: expected count {want}, got {n}"
    wrong = []
    for idx in ([0, 1, mx, 0xFFFFFFFF] if n == 0 else _bad_indexes(n, mx)):
        for op, fn in (("QUERYBUF", lambda i: d.querybuf(bt, i)),
                       ("QBUF", lambda i: d.qbuf(bt, i, size if bt == OUT else 0))):
            e = err(fn, idx)
            if e != errno.EINVAL:
                wrong.append(f"{op}({dname}, {idx:#x}): {ename(e)}")
        e = err(d.dqbuf, bt, index=idx)  # nothing queued, not streaming
        if e == 0:
            wrong.append(f"DQBUF({dname}) with index {idx:#x} preset, nothing queued: success")
    assert not wrong, (f"{what} granted {n}: expected EINVAL for every index from {n} on "
                       f"(S5{', no claim' if n == 0 else ''}) and DQBUF refused with nothing "
                       f"queued, got " + "; ".join(wrong))
    if n == 0:
        e = err(d.streamon, bt)
        assert e == errno.EINVAL, (f"{what}: STREAMON({dname}) without a claim: expected EINVAL "
                                   f"(S1), got {ename(e)}")
        return
    # the last granted buffer works: QUERYBUF, QBUF, STREAMON, and DQBUF hands it back
    q = d.querybuf(bt, n - 1)
    assert q["length"] >= size, (f"{what}: QUERYBUF({dname}, {n - 1}): length {q['length']} "
                                 f"smaller than sizeimage {size}")
    d.qbuf(bt, n - 1, size if bt == OUT else 0)
    d.streamon(bt)
    if bt == OUT:
        try:
            b = _dqbuf_preset(d, bt, 0xFFFFFFFF, 5.0)
        except V4L2Error as exc:
            pytest.fail(f"{what} granted {n}: QBUF(OUTPUT, {n - 1}), STREAMON, then DQBUF with "
                        f"index 0xffffffff preset: expected buffer {n - 1} back (S6), got "
                        f"{ename(exc.errno)}")
    else:
        if writer is None:  # exclusive_caps=0: a writer now, after the reader's first claim
            writer = Writer(openers.fd(), count=2, set_format=not cell.keep_format)
        # S7: the next frame published goes into the one buffer the reader queued, whichever
        # index that is (its own buffer, not a slot it shares with the writer)
        writer.send()
        try:
            b = _dqbuf_preset(d, bt, 0xFFFFFFFF, 3.0)
        except V4L2Error as exc:
            pytest.fail(f"{what} granted {n}: QBUF(CAPTURE, {n - 1}) alone, STREAMON, one frame "
                        f"written, then DQBUF with index 0xffffffff preset: expected buffer "
                        f"{n - 1} back with that frame within 3 s (S7), got {ename(exc.errno)}")
    assert b["index"] == n - 1, (f"{what} granted {n}: DQBUF with index 0xffffffff preset after "
                                 f"QBUF of buffer {n - 1} alone: expected index {n - 1}, got "
                                 f"{b['index']:#x}")
    r0 = d.reqbufs(bt, 0)["count"]
    e = err(d.querybuf, bt, 0)
    assert r0 == 0 and e == errno.EINVAL, (f"{what}: REQBUFS({dname}, 0) after: expected count 0 "
                                           f"and QUERYBUF({dname}, 0) EINVAL (claim released, "
                                           f"A5/S5), got count {r0} and {ename(e)}")
