"""S: streaming (STREAMON/STREAMOFF tokens, QBUF/DQBUF rules, per-reader frames)."""

from __future__ import annotations

import errno
import os
import time

import pytest
from lib.common import (
    KEPT_HOW,
    FileWriter,
    Reader,
    Writer,
    kept_capture_only,
    kept_format,
    need_openers,
    start_proc_writer,
    write_format,
)
from lib.v4l2 import BUF_FLAG_QUEUED, CAP, OUT, ename, err, frame_bytes


@pytest.mark.rules("S1")
def test_s1_streamon_without_claim(cell, openers):
    d = openers.fd()
    e = err(d.streamon, CAP)
    assert e == errno.EINVAL, f"STREAMON(CAPTURE) without a claim: expected EINVAL, got {ename(e)}"
    # an opener that asked for buffers (REQBUFS, even of count 0: v4l2-compliance's check)
    for bt, name in ((OUT, "OUTPUT"), (CAP, "CAPTURE")):
        r0 = err(d.reqbufs, bt, 0)
        e = err(d.streamon, bt)
        assert e == errno.EINVAL, (f"STREAMON({name}) without a claim after REQBUFS({name}, 0) "
                                   f"(which gave {ename(r0)}): expected EINVAL, got {ename(e)}")
    # a claim on the other direction does not count
    d.s_fmt(OUT, 160, 120)
    d.reqbufs(OUT, 2)
    e = err(d.streamon, CAP)
    assert e == errno.EINVAL, (f"STREAMON(CAPTURE) by an opener that claims only OUTPUT: "
                               f"expected EINVAL, got {ename(e)}")


@pytest.mark.rules("S1", "W1", "K3")
def test_s1_streamon_output_by_an_opener_that_never_asked_for_buffers(cell, openers):
    """OBS Studio up to 31.0: S_FMT(OUTPUT), STREAMON(OUTPUT) without REQBUFS, then write()
    per frame (v4l2loopback #622). The STREAMON sets the opener up as its first write() would
    (W1): it takes the write token, its write()s reach a reader, and it is a write() opener
    from then on (REQBUFS is EBUSY, W4)."""
    need_openers(cell, 2)
    d = openers.fd()
    fmt = write_format(cell, d)
    e = err(d.streamon, OUT)
    assert e == 0, (f"STREAMON(OUTPUT) by an opener that set the format and never called "
                    f"REQBUFS nor write() (OBS Studio up to 31.0): expected success, set up as its "
                    f"first write() would be (W1), got {ename(e)}")
    w = FileWriter(d, fmt, send_first=False)
    w.send()
    r = Reader(openers.fd())
    f = w.send()
    try:
        b = r.get_frame(f["frame"])
    except OSError as exc:
        pytest.fail(f"a reader after a STREAMON(OUTPUT)-without-REQBUFS writer's write(): "
                    f"expected its frame, got {exc}")
    assert b["frame"] == f["frame"], (f"reader got frame {b['frame']}, the writer wrote "
                                      f"{f['frame']}")
    e = err(d.reqbufs, OUT, 2)
    assert e == errno.EBUSY, (f"REQBUFS(OUTPUT, 2) by the opener STREAMON set up for write(): "
                              f"expected EBUSY (W4), got {ename(e)}")


@pytest.mark.rules("S2")
def test_s2_one_write_token(cell, openers):
    need_openers(cell, 2)
    a = openers.proc("writer-a")
    b = openers.proc("writer-b")
    a.call("s_fmt", OUT, 160, 120)
    a.call("reqbufs", OUT, 2)
    if kept_capture_only(cell, b):
        _s2_second_writer_through_write(a, b)
        return
    # both claim OUTPUT before anyone streams: with exclusive_caps=1 OUTPUT is hidden from
    # non-claimants once the write token is taken
    e = b.err("reqbufs", OUT, 2)
    assert e == 0, (f"S2 needs a second OUTPUT claimant: REQBUFS(OUTPUT, 2) by a second opener "
                    f"while the first claims: expected success (A3), got {ename(e)}")
    e = a.err("streamon", OUT)
    assert e == 0, f"STREAMON(OUTPUT) by the first claimant: expected success, got {ename(e)}"
    e = b.err("streamon", OUT)
    assert e == errno.EBUSY, (f"STREAMON(OUTPUT) by a second opener while the write token is "
                              f"held: expected EBUSY, got {ename(e)}")
    e = a.err("streamon", OUT)
    assert e == 0, f"STREAMON(OUTPUT) again by the token holder: expected 0, got {ename(e)}"
    a.call("streamoff", OUT)
    e = b.err("streamon", OUT)
    assert e == 0, (f"STREAMON(OUTPUT) by the second opener after the holder's STREAMOFF: "
                    f"expected success, got {ename(e)}")


def _s2_second_writer_through_write(a, b) -> None:
    """S2 where exclusive_caps=1 + keep_format=1 show b CAPTURE only once a set the format (X1):
    b cannot claim OUTPUT with REQBUFS, so it streams through write(), which does REQBUFS +
    STREAMON(OUTPUT) itself (W1) and so meets the write token the same way."""
    size = kept_format(b)["sizeimage"]
    e = a.err("streamon", OUT)
    assert e == 0, f"STREAMON(OUTPUT) by the first claimant: expected success, got {ename(e)}"
    e = b.err("write", frame_bytes(0, size))
    assert e == errno.EBUSY, (f"second writer's write() (its own STREAMON(OUTPUT), W1; "
                              f"exclusive_caps=1 + keep_format=1 show it CAPTURE only) while the "
                              f"write token is held: expected EBUSY, got {ename(e)}")
    e = a.err("streamon", OUT)
    assert e == 0, f"STREAMON(OUTPUT) again by the token holder: expected 0, got {ename(e)}"
    a.call("streamoff", OUT)
    e = b.err("write", frame_bytes(1, size))
    assert e == 0, (f"second writer's write() (its own STREAMON(OUTPUT)) after the holder's "
                    f"STREAMOFF: expected success (token released), got {ename(e)}")
    e = a.err("streamon", OUT)
    assert e == errno.EBUSY, (f"STREAMON(OUTPUT) by the first claimant while the second writer "
                              f"holds the write token (taken by its write()): expected EBUSY, "
                              f"got {ename(e)}")


@pytest.mark.rules("S3")
def test_s3_readers_stream_without_writer(cell, openers):
    need_openers(cell, 4)
    w = openers.proc("writer")
    if cell.exclusive_caps:
        # exclusive_caps=1 offers CAPTURE only while a writer holds the token: the writer
        # streams but sends no frame yet
        fmt = w.call("g_fmt", OUT) if cell.keep_format else w.call("s_fmt", OUT, 160, 120)
        assert fmt["sizeimage"] > 0
        w.call("reqbufs", OUT, 2)
        w.call("streamon", OUT)
    readers = [openers.proc(f"reader{i}") for i in range(3)]
    for i, r in enumerate(readers):
        try:
            r.call("setup_mmap", CAP, 2)
        except OSError as exc:
            pytest.fail(f"reader{i}: REQBUFS(CAPTURE, 2)+QBUF with no writer: expected success, "
                        f"got {ename(exc.errno)}")
        e = r.err("streamon", CAP)
        assert e == 0, (f"reader{i}: STREAMON(CAPTURE) with no writer yet: expected success, got "
                        f"{ename(e)}")
    for i, r in enumerate(readers):
        if cell.keep_format:
            break  # keep_format=1: the kept frame may be there already
        e = r.err("dqbuf", CAP)
        assert e == errno.EAGAIN, (f"reader{i}: DQBUF(CAPTURE, O_NONBLOCK) before any frame: "
                                   f"expected EAGAIN, got {ename(e)}")
    if cell.exclusive_caps:
        w.stop()
        w = openers.proc("writer2")
    try:
        info = start_proc_writer(cell, w, "mmap", count=2, set_format=False)
    except OSError as exc:
        pytest.fail(f"a writer after {len(readers)} readers started streaming: expected it to "
                    f"start, got {exc}")
    assert info["via"] == "write" or info["count"] >= 1
    for i, r in enumerate(readers):
        try:
            b = r.call("wait_dqbuf", CAP, 8.0, timeout=15)
        except OSError as exc:
            pytest.fail(f"reader{i} (streaming since before the writer): expected a frame once "
                        f"the writer streams, got {ename(exc.errno)}")
        assert b["bytesused"] > 0, (f"reader{i}: DQBUF(CAPTURE) once the writer streams: "
                                    f"expected bytesused > 0, got {b['bytesused']}")


@pytest.mark.rules("S4")
def test_s4_streamoff_keeps_claim_and_returns_buffers(cell, openers):
    need_openers(cell, 2)
    wr = Writer(openers.fd(), count=2)
    r1 = Reader(openers.fd())
    f = wr.send()
    r1.get()
    e = err(r1.dev.streamoff, CAP)
    assert e == 0, f"STREAMOFF(CAPTURE) by a streaming reader: expected 0, got {ename(e)}"
    for i in range(r1.count):
        q = r1.dev.querybuf(CAP, i)
        assert not q["flags"] & BUF_FLAG_QUEUED, (f"after STREAMOFF(CAPTURE), buffer {i} still "
                                                  f"has V4L2_BUF_FLAG_QUEUED (flags "
                                                  f"{q['flags']:#x}): expected it returned")
    e = err(r1.dev.streamoff, CAP)
    assert e == 0, f"second STREAMOFF(CAPTURE): expected 0 (idempotent), got {ename(e)}"
    for _ in range(3):
        try:
            wr.send()
        except (OSError, AssertionError) as exc:
            pytest.fail(f"writer after a reader's STREAMOFF: expected it undisturbed, got {exc}")
    # claim kept: QBUF + STREAMON work again without REQBUFS
    for i in range(r1.count):
        e = err(r1.dev.qbuf, CAP, i)
        assert e == 0, f"QBUF(CAPTURE, {i}) after STREAMOFF (claim kept): expected 0, got " \
                       f"{ename(e)}"
    e = err(r1.dev.streamon, CAP)
    assert e == 0, f"STREAMON(CAPTURE) after STREAMOFF: expected 0, got {ename(e)}"
    f = wr.send()
    got = r1.get_frame(f["frame"])
    assert got["frame"] == f["frame"], (f"reader after STREAMOFF + QBUF + STREAMON: expected "
                                        f"frame {f['frame']}, got {got['frame']}")
    # writer STREAMOFF releases the write token
    r1.dev.close()
    e = err(wr.dev.streamoff, OUT)
    assert e == 0, f"STREAMOFF(OUTPUT) by the streaming writer: expected 0, got {ename(e)}"
    other = openers.fd()
    if kept_capture_only(cell, other):
        # exclusive_caps=1 + keep_format=1: the node shows `other` CAPTURE only (X1), so it
        # takes the token through write() (W1: its own REQBUFS + STREAMON(OUTPUT))
        e = err(other.write, frame_bytes(0, kept_format(other)["sizeimage"]))
        assert e == 0, (f"another opener's {KEPT_HOW}, after the writer's STREAMOFF: expected "
                        f"success (token released), got {ename(e)}")
        return
    other.reqbufs(OUT, 2)
    e = err(other.streamon, OUT)
    assert e == 0, (f"STREAMON(OUTPUT) by another opener after the writer's STREAMOFF: expected "
                    f"success (token released), got {ename(e)}")


@pytest.mark.rules("S5")
def test_s5_buffer_ioctls_need_claim_and_index(cell, openers):
    d = openers.fd()
    for bt, name in ((OUT, "OUTPUT"), (CAP, "CAPTURE")):
        for op, fn in (("QUERYBUF", lambda t: d.querybuf(t, 0)), ("QBUF", lambda t: d.qbuf(t, 0)),
                       ("DQBUF", lambda t: d.dqbuf(t))):
            e = err(fn, bt)
            assert e == errno.EINVAL, f"{op}({name}, 0) without a claim: expected EINVAL, got " \
                                      f"{ename(e)}"
    d.s_fmt(OUT, 160, 120)
    n = d.reqbufs(OUT, 2)["count"]
    for idx in (n, n + 1, 32, 0xFFFFFFFF):
        for op, fn in (("QUERYBUF", d.querybuf), ("QBUF", d.qbuf)):
            e = err(fn, OUT, idx)
            assert e == errno.EINVAL, (f"{op}(OUTPUT, index {idx}) with {n} buffers granted: "
                                       f"expected EINVAL, got {ename(e)}")
    for op, fn in (("QUERYBUF", d.querybuf), ("QBUF", d.qbuf)):
        e = err(fn, CAP, 0)
        assert e == errno.EINVAL, (f"{op}(CAPTURE, 0) by an opener that claims only OUTPUT: "
                                   f"expected EINVAL, got {ename(e)}")


@pytest.mark.rules("S6")
def test_s6_output_dqbuf_only_queued_oldest_first(cell, openers):
    d = openers.fd()
    if cell.max_buffers < 2:
        pytest.skip(f"the order of two queued buffers needs 2 OUTPUT buffers; max_buffers="
                    f"{cell.max_buffers} in this cell")
    wr = Writer(d, count=2)
    if wr.count < 2:
        # a sole claimant's REQBUFS(2) gets 2 (A2/A4) unless keep_format=1 keeps an earlier
        # writer's count (F5): only that makes the rule's two-buffer order unjudgeable here
        if not cell.keep_format:
            pytest.fail(f"REQBUFS(OUTPUT, 2) by the only opener with max_buffers="
                        f"{cell.max_buffers}: expected 2 buffers, got {wr.count}")
        pytest.skip(f"keep_format=1 keeps an earlier writer's count of {wr.count} (F5): the order "
                    f"of two queued buffers needs 2")
    e = err(d.dqbuf, OUT)
    assert e == errno.EAGAIN, (f"DQBUF(OUTPUT, O_NONBLOCK) with no buffer queued by the "
                               f"application: expected EAGAIN, got {ename(e)}")
    wr.dev.put_frame(1, 0, wr.fmt["sizeimage"])
    wr.dev.put_frame(0, 1, wr.fmt["sizeimage"])
    got = []
    for _ in range(2):
        try:
            got.append(d.wait_dqbuf(OUT, 3.0)["index"])
        except OSError as exc:
            pytest.fail(f"DQBUF(OUTPUT) after queueing buffers 1 then 0: expected them back, got "
                        f"{ename(exc.errno)} after {got}")
    assert got == [1, 0], f"DQBUF(OUTPUT) order after QBUF 1 then 0: expected [1, 0], got {got}"
    e = err(d.dqbuf, OUT)
    assert e == errno.EAGAIN, (f"DQBUF(OUTPUT, O_NONBLOCK) after both were dequeued: expected "
                               f"EAGAIN, got {ename(e)}")


@pytest.mark.rules("S6")
def test_s6_blocking_output_dqbuf_ended_by_streamoff(cell, openers):
    w = openers.proc("writer", flags=os.O_RDWR)
    w.call("s_fmt", OUT, 160, 120)
    n = w.call("reqbufs", OUT, 2)["count"]
    for i in range(n):
        w.call("mmap", OUT, i)
    w.call("streamon", OUT)
    w.call("bg", "dqbuf", OUT)
    time.sleep(1.0)
    st = w.call("bg_result", 0)
    assert not st["done"], (f"blocking DQBUF(OUTPUT) with nothing queued: expected it to wait, "
                            f"it returned at once with "
                            f"{ename(st['errno']) if st['errno'] else st['value']}")
    w.call("streamoff", OUT)
    st = w.call("bg_result", 3.0, timeout=6)
    assert st["done"], ("blocking DQBUF(OUTPUT): STREAMOFF by the same opener did not end the "
                        "wait within 3 s")


def _check_frames(wr, readers, rounds=4):
    last_seq = [None] * len(readers)
    for k in range(rounds):
        f = wr.send()
        for i, r in enumerate(readers):
            try:
                b = r.get_frame(f["frame"])
            except OSError as exc:
                pytest.fail(f"reader{i}: frame {f['frame']} published: expected DQBUF(CAPTURE) to "
                            f"return it, got {ename(exc.errno)}")
            assert b["frame"] == f["frame"], (f"reader{i}: expected the newest frame "
                                              f"{f['frame']}, got frame {b['frame']}")
            assert b["bytesused"] == wr.fmt["sizeimage"], (
                f"reader{i}: bytesused {b['bytesused']}, expected {wr.fmt['sizeimage']}")
            assert b["ts"] == f["ts"], (f"reader{i}: timestamp {b['ts']}, expected the writer's "
                                        f"{f['ts']}")
            if last_seq[i] is not None:
                assert b["sequence"] > last_seq[i], (
                    f"reader{i}: sequence {b['sequence']} after {last_seq[i]}: expected it to "
                    f"increase")
            last_seq[i] = b["sequence"]
        time.sleep(0.05 * k)


@pytest.mark.rules("S7")
def test_s7_reader_frame_metadata(cell, openers):
    need_openers(cell, 2)
    wr = Writer(openers.fd(), count=2)
    _check_frames(wr, [Reader(openers.fd())])


@pytest.mark.rules("S7", "A3")
def test_s7_three_readers_independent(cell, openers):
    need_openers(cell, 4)
    wr = Writer(openers.fd(), count=2)
    readers = []
    for i in range(3):
        try:
            readers.append(Reader(openers.fd()))
        except OSError as exc:
            pytest.fail(f"S7 with 3 readers: reader{i} REQBUFS/STREAMON(CAPTURE) while a writer "
                        f"and {i} reader(s) stream: expected success, got {ename(exc.errno)} (A3)")
    _check_frames(wr, readers)
    # a reader that stops dequeuing does not hold back the others
    readers[0].dev.streamoff(CAP)
    _check_frames(wr, readers[1:], 2)
