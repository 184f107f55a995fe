"""A: REQBUFS (memory types, first and later claims, reallocation, REQBUFS(0), unpinning)."""

from __future__ import annotations

import errno

import pytest
from lib.common import (
    H2,
    KEPT_HOW,
    W2,
    Reader,
    Writer,
    advertised,
    fmt_str,
    kept_capture_only,
    kept_format,
    need_openers,
    skip_if_keep,
)
from lib.v4l2 import (
    BUF_CAP_SUPPORTS_MMAP,
    CAP,
    DMABUF,
    MMAP,
    OUT,
    OVERLAY,
    USERPTR,
    YUYV,
    ename,
    err,
    frame_bytes,
)


@pytest.mark.rules("A1")
def test_a1_only_mmap_and_capabilities(openers):
    d = openers.fd()
    d.s_fmt(OUT, 160, 120)
    for mem, name in ((USERPTR, "USERPTR"), (DMABUF, "DMABUF"), (OVERLAY, "OVERLAY"),
                      (77, "memory=77")):
        e = err(d.reqbufs, OUT, 2, mem)
        assert e == errno.EINVAL, f"REQBUFS(OUTPUT, 2, {name}): expected EINVAL, got {ename(e)}"
    r0 = d.reqbufs(OUT, 0, MMAP)  # GStreamer's probe
    assert r0["capabilities"] & BUF_CAP_SUPPORTS_MMAP, (
        f"REQBUFS(OUTPUT, 0, MMAP) reply capabilities={r0['capabilities']:#x}: expected "
        f"V4L2_BUF_CAP_SUPPORTS_MMAP (0x1) set")
    r = d.reqbufs(OUT, 2, MMAP)
    assert r["count"] >= 1, f"REQBUFS(OUTPUT, 2, MMAP): expected buffers, got count {r['count']}"
    assert r["capabilities"] & BUF_CAP_SUPPORTS_MMAP, (
        f"REQBUFS(OUTPUT, 2, MMAP) reply capabilities={r['capabilities']:#x}: expected "
        f"V4L2_BUF_CAP_SUPPORTS_MMAP (0x1) set")


@pytest.mark.rules("A2", "A7", "L2")
def test_a2_first_claim_clamped_and_allocated(cell, openers):
    skip_if_keep(cell, "A2")
    mx = cell.max_buffers
    d = openers.fd()
    f = d.s_fmt(OUT, 160, 120)
    for req, want in ((1, 1), (mx, mx), (mx + 3, mx), (1000, mx)):
        r = d.reqbufs(OUT, req)
        assert r["count"] == want, (
            f"first claim REQBUFS(OUTPUT, {req}) with max_buffers={mx}: expected count {want}, "
            f"got {r['count']}")
        for i in range(r["count"]):
            q = d.querybuf(OUT, i)
            assert q["length"] >= f["sizeimage"], (
                f"QUERYBUF(OUTPUT, {i}) after REQBUFS: length {q['length']} smaller than the "
                f"format's sizeimage {f['sizeimage']}")
        d.reqbufs(OUT, 0)
    # the first claim pins the format: another opener cannot change it
    d.reqbufs(OUT, 2)
    o = openers.fd()
    err(o.s_fmt, OUT, W2, H2)  # refused or answered with the pinned format (F2 judges which)
    got = o.g_fmt(OUT)
    assert (got["width"], got["height"]) == (160, 120), (
        f"S_FMT(OUTPUT, {W2}x{H2}) by another opener after the first claim: expected the "
        f"format to stay pinned at 160x120, G_FMT now says {fmt_str(got)}")


@pytest.mark.rules("A3")
def test_a3_later_claims_get_pinned_count(cell, openers):
    need_openers(cell, 4)
    w = openers.proc("writer")
    w.call("s_fmt", OUT, 160, 120)
    pinned = w.call("reqbufs", OUT, 2)["count"]
    w.call("mmap", OUT, 0)
    w.call("streamon", OUT)
    readers = [openers.proc(f"reader{i}") for i in range(3)]
    for i, r in enumerate(readers):
        req = (4, 1, 32)[i]
        try:
            got = r.call("reqbufs", CAP, req)["count"]
        except OSError as exc:
            pytest.fail(f"REQBUFS(CAPTURE, {req}) by reader{i} while a writer claims: expected "
                        f"success with the pinned count {pinned}, got {ename(exc.errno)}")
        assert got == pinned, (
            f"REQBUFS(CAPTURE, {req}) by reader{i} while a writer claims: expected the pinned "
            f"count {pinned}, got {got}")
    for i, r in enumerate(readers):
        e = r.err("streamon", CAP)
        assert e == 0, f"STREAMON(CAPTURE) by reader{i} after its claim: expected success, got " \
                       f"{ename(e)}"


@pytest.mark.rules("A3")
def test_a3_second_output_claim_gets_pinned_count(cell, openers):
    need_openers(cell, 2)
    a, b = openers.fd(), openers.fd()
    a.s_fmt(OUT, 160, 120)
    # with exclusive_caps=1 + keep_format=1 the second writer may have to claim through
    # write(), which asks for its own count: pin 1 there so that the pinned count shows
    pinned = a.reqbufs(OUT, 1 if cell.exclusive_caps and cell.keep_format else 2)["count"]
    if kept_capture_only(cell, b):
        # X1: the format a set is kept, the node shows b CAPTURE only; b's OUTPUT claim is its
        # write() (W1 does REQBUFS + STREAMON(OUTPUT) itself): a later claim, so A3 applies
        size = kept_format(b)["sizeimage"]
        e = err(b.write, frame_bytes(0, size))
        assert e == 0, (f"second OUTPUT claim by {KEPT_HOW}, while the first opener claims "
                        f"OUTPUT ({pinned} buffer(s), not streaming): expected success with the "
                        f"pinned count {pinned}, got {ename(e)}")
        # its granted count, as S5 shows it: indexes below the granted count only
        e_in, e_out = err(b.querybuf, OUT, pinned - 1), err(b.querybuf, OUT, pinned)
        assert e_in == 0 and e_out == errno.EINVAL, (
            f"OUTPUT claim by write() of a second opener while the first claims {pinned} "
            f"buffer(s): expected the pinned count {pinned} granted (QUERYBUF(OUTPUT, "
            f"{pinned - 1}) success, QUERYBUF(OUTPUT, {pinned}) EINVAL), got {ename(e_in)} and "
            f"{ename(e_out)}")
        return
    try:
        got = b.reqbufs(OUT, 1)["count"]
    except OSError as exc:
        pytest.fail(f"REQBUFS(OUTPUT, 1) by a second opener while the first claims OUTPUT: "
                    f"expected success with the pinned count {pinned}, got {ename(exc.errno)}")
    assert got == pinned, (f"REQBUFS(OUTPUT, 1) by a second opener: expected the pinned count "
                           f"{pinned}, got {got}")


@pytest.mark.rules("A4")
def test_a4_sole_claimant_reallocates_unless_mapped(cell, openers):
    skip_if_keep(cell, "A4 reallocation")
    mx = cell.max_buffers
    d = openers.fd()
    d.s_fmt(OUT, 160, 120)
    n = d.reqbufs(OUT, mx)["count"]
    assert n == mx, f"REQBUFS(OUTPUT, {mx}): expected {mx}, got {n}"
    n1 = d.reqbufs(OUT, 1)["count"]
    assert n1 == 1, (f"REQBUFS(OUTPUT, 1) again by the only claimant with nothing mmapped: "
                     f"expected reallocation to 1, got {n1}")
    d.mmap(OUT, 0)
    e = err(d.reqbufs, OUT, mx)
    assert e == errno.EBUSY, (f"REQBUFS(OUTPUT, {mx}) by the only claimant while buffer 0 is "
                              f"mmapped: expected EBUSY, got {ename(e)}")
    d.munmap(OUT, 0)
    n2 = d.reqbufs(OUT, mx)["count"]
    assert n2 == mx, (f"REQBUFS(OUTPUT, {mx}) after munmap: expected reallocation to {mx}, "
                      f"got {n2}")


def _buffers(d, bt: int, n: int) -> list:
    """(length, offset) of buffers 0..n-1 as QUERYBUF shows them, and the answer for index n
    (EINVAL where the granted count is n, S5)."""
    out = []
    for i in range(n):
        try:
            q = d.querybuf(bt, i)
            out.append((q["length"], q["offset"]))
        except OSError as exc:
            out.append(ename(exc.errno))
    out.append(ename(err(d.querybuf, bt, n)))
    return out


@pytest.mark.rules("A4")
def test_a4_other_claimants_keep_count(cell, openers):
    need_openers(cell, 2)
    a, b = openers.fd(), openers.fd()
    a.s_fmt(OUT, 160, 120)
    pinned = a.reqbufs(OUT, 2)["count"]
    a.streamon(OUT)  # exclusive_caps=1: CAPTURE exists only while the write token is held
    nb = b.reqbufs(CAP, 2)["count"]
    a.streamoff(OUT)
    before = {"format": fmt_str(a.g_fmt(OUT)), "OUTPUT buffers of the caller":
              _buffers(a, OUT, pinned), "CAPTURE buffers of the other claimant":
              _buffers(b, CAP, nb)}
    other = 1 if pinned != 1 else 2
    try:
        got = a.reqbufs(OUT, other)["count"]
    except OSError as exc:
        pytest.fail(f"REQBUFS(OUTPUT, {other}) again while another opener claims: expected the "
                    f"pinned count {pinned} back and nothing changed, got {ename(exc.errno)}")
    after = {"format": fmt_str(a.g_fmt(OUT)), "OUTPUT buffers of the caller":
             _buffers(a, OUT, pinned), "CAPTURE buffers of the other claimant":
             _buffers(b, CAP, nb)}
    changed = [f"count {got}"] if got != pinned else []
    changed += [f"{k} {before[k]} -> {after[k]}" for k in before if before[k] != after[k]]
    assert not changed, (
        f"REQBUFS(OUTPUT, {other}) again while another opener claims: expected the pinned count "
        f"{pinned} back and nothing changed (QUERYBUF (length, offset) of buffers 0..{pinned - 1} "
        f"and the answer for index {pinned}), got " + "; ".join(changed))


@pytest.mark.rules("A4", "A5")
def test_a4_reqbufs_again_after_streamoff(cell, openers):
    """upstream #598: REQBUFS after STREAMOFF (+munmap) must work again."""
    d = openers.fd()
    wr = Writer(d, count=2)
    wr.send()
    d.streamoff(OUT)
    d.munmap_all()
    try:
        n = d.reqbufs(OUT, 2)["count"]
    except OSError as exc:
        pytest.fail(f"REQBUFS(OUTPUT, 2) after STREAMOFF and munmap: expected success, got "
                    f"{ename(exc.errno)}")
    assert n >= 1, f"REQBUFS(OUTPUT, 2) after STREAMOFF and munmap: expected buffers, got count {n}"
    r0 = err(d.reqbufs, OUT, 0)
    assert r0 == 0, f"REQBUFS(OUTPUT, 0) after STREAMOFF: expected 0, got {ename(r0)}"
    try:
        n = d.reqbufs(OUT, 2)["count"]
    except OSError as exc:
        pytest.fail(f"REQBUFS(OUTPUT, 2) after REQBUFS(0): expected success, got "
                    f"{ename(exc.errno)}")
    for i in range(n):
        d.mmap(OUT, i)
    e = err(d.streamon, OUT)
    assert e == 0, f"STREAMON(OUTPUT) after re-REQBUFS: expected success, got {ename(e)}"


@pytest.mark.rules("A5")
def test_a5_reqbufs0_writer_and_reader(cell, openers):
    need_openers(cell, 2)
    wd = openers.fd()
    wr = Writer(wd, count=2)
    r1 = Reader(openers.fd())
    f = wr.send()
    got = r1.get()["frame"]
    assert got == f["frame"], f"reader DQBUF(CAPTURE): expected frame {f['frame']}, got {got}"
    # reader REQBUFS(0): implicit STREAMOFF, writer undisturbed
    r1.dev.munmap_all()
    r = r1.dev.reqbufs(CAP, 0)
    assert r["count"] == 0, f"REQBUFS(CAPTURE, 0) by a streaming reader: expected count 0, got " \
                            f"{r['count']}"
    e = err(r1.dev.streamon, CAP)
    assert e == errno.EINVAL, (f"STREAMON(CAPTURE) after REQBUFS(0): expected EINVAL (no claim), "
                               f"got {ename(e)}")
    for _ in range(3):
        try:
            wr.send()
        except (OSError, AssertionError) as exc:
            pytest.fail(f"writer after a reader's REQBUFS(0): expected it to keep streaming, got "
                        f"{exc}")
    # the reader claims again, then the writer REQBUFS(0): the reader's buffers stay intact
    r1 = Reader(r1.dev)
    f = wr.send()
    r1.get_frame(f["frame"])
    wd.munmap_all()
    assert wd.reqbufs(OUT, 0)["count"] == 0
    for i in range(r1.count):
        try:
            q = r1.dev.querybuf(CAP, i)
        except OSError as exc:
            pytest.fail(f"reader QUERYBUF(CAPTURE, {i}) after the writer's REQBUFS(0): expected "
                        f"its buffers intact, got {ename(exc.errno)}")
        assert q["length"] > 0, (f"reader QUERYBUF(CAPTURE, {i}) after the writer's REQBUFS(0): "
                                 f"expected its buffer intact, got length {q['length']}")
    e = err(r1.dev.streamoff, CAP)
    assert e == 0, f"reader STREAMOFF after the writer's REQBUFS(0): got {ename(e)}"
    # without a claim (the writer released its own above): harmless 0, on every direction
    # the node advertises now
    for bt, name in advertised(wd):
        e = err(wd.reqbufs, bt, 0)
        assert e == 0, f"REQBUFS({name}, 0) without a claim: expected 0, got {ename(e)}"


@pytest.mark.rules("A5", "A3")
def test_a5_reqbufs0_spares_other_readers(cell, openers):
    need_openers(cell, 4)
    wr = Writer(openers.fd(), count=2)
    readers = []
    for i in range(3):
        try:
            readers.append(Reader(openers.fd()))
        except OSError as exc:
            pytest.fail(f"A5 with 3 readers: reader{i} REQBUFS/STREAMON(CAPTURE) while a writer "
                        f"and {i} reader(s) claim: expected success, got {ename(exc.errno)} (A3)")
    f = wr.send()
    for r in readers:
        r.get_frame(f["frame"])
    readers[0].dev.munmap_all()
    readers[0].dev.reqbufs(CAP, 0)
    f = wr.send()
    for i, r in enumerate(readers[1:], 1):
        try:
            got = r.get_frame(f["frame"])
        except OSError as exc:
            pytest.fail(f"reader{i} after reader0's REQBUFS(0): expected frame {f['frame']}, got "
                        f"{ename(exc.errno)}")
        assert got["frame"] == f["frame"]


@pytest.mark.rules("A6")
def test_a6_unpinned_after_last_release(cell, openers):
    skip_if_keep(cell, "A6")
    need_openers(cell, 2)
    a, b = openers.fd(), openers.fd()
    Writer(a, count=2).send()
    b.setup_mmap(CAP, 2)
    for d, t in ((a, OUT), (b, CAP)):
        d.munmap_all()
        d.reqbufs(t, 0)
    got = b.s_fmt(OUT, W2, H2, YUYV)
    assert (got["width"], got["height"]) == (W2, H2), (
        f"S_FMT(OUTPUT, {W2}x{H2}) after every claim was released with REQBUFS(0): expected the "
        f"new format, got {fmt_str(got)}")
    n = b.reqbufs(OUT, 1)["count"]
    assert n == 1, f"REQBUFS(OUTPUT, 1) after the device was released: expected 1, got {n}"
    b.reqbufs(OUT, 0)
    a.close()
    b.close()
    c = openers.fd()
    got = c.s_fmt(OUT, 176, 144, YUYV)
    assert (got["width"], got["height"]) == (176, 144), (
        f"S_FMT(OUTPUT, 176x144) by a new opener after all closed: expected it, got "
        f"{fmt_str(got)}")
