"""W: read() and write()."""

from __future__ import annotations

import errno

import pytest
from lib.common import Reader, Writer, caps_str, need_openers
from lib.v4l2 import (
    CAP,
    CAP_VIDEO_CAPTURE,
    CAP_VIDEO_OUTPUT,
    OUT,
    Device,
    ename,
    err,
    frame_bytes,
    frame_number,
)


@pytest.mark.rules("W1")
def test_w1_write_sets_itself_up(cell, openers):
    need_openers(cell, 2)
    w = openers.fd()
    f = w.s_fmt(OUT, 160, 120) if not cell.keep_format else w.g_fmt(OUT)
    size = f["sizeimage"]
    try:
        n = w.write(frame_bytes(0, size))
    except OSError as exc:
        pytest.fail(f"first write() of a whole frame by an opener without a claim: expected it "
                    f"to set itself up, got {ename(exc.errno)}")
    assert n == size, f"write() returned {n}, expected {size}"
    if cell.exclusive_caps:
        with Device(cell.device) as probe:
            caps = probe.device_caps()
        assert caps & CAP_VIDEO_CAPTURE and not caps & CAP_VIDEO_OUTPUT, (
            f"exclusive_caps=1 after a write(): expected CAPTURE without OUTPUT (write token "
            f"held), got {caps_str(caps)}")
    other = openers.fd()
    e = err(other.write, frame_bytes(50, size))
    assert e == errno.EBUSY, (f"write() by another opener while a write() writer holds the "
                              f"token: expected EBUSY, got {ename(e)}")
    other.close()
    try:
        r = Reader(openers.fd())
    except OSError as exc:
        pytest.fail(f"an mmap reader while a write() writer streams: REQBUFS/STREAMON(CAPTURE) "
                    f"got {ename(exc.errno)}")
    for k in range(1, 4):
        w.write(frame_bytes(k, size))
        try:
            b = r.get_frame(k)
        except OSError as exc:
            pytest.fail(f"reader after write() of frame {k}: expected it, got {ename(exc.errno)}")
        assert b["frame"] == k, f"expected frame {k} published by write(), got {b['frame']}"


@pytest.mark.rules("W2")
def test_w2_second_writer_busy(cell, openers):
    need_openers(cell, 3)
    wr = Writer(openers.fd(), count=2)
    r = Reader(openers.fd())
    wr.send()
    size = wr.fmt["sizeimage"]
    b = openers.fd()
    e = err(b.write, frame_bytes(99, size))
    assert e == errno.EBUSY, (f"write() by a second opener while an mmap writer streams: "
                              f"expected EBUSY, got {ename(e)}")
    f = wr.send()
    got = r.get_frame(f["frame"])
    assert got["frame"] == f["frame"], (f"after the refused write(), the reader got frame "
                                        f"{got['frame']}: expected the holder's {f['frame']}")
    # and against a write() holder
    wr.dev.close()
    w1 = openers.fd()
    w1.write(frame_bytes(200, size))
    e = err(b.write, frame_bytes(300, size))
    assert e == errno.EBUSY, (f"write() by a second opener while a write() writer holds the "
                              f"token: expected EBUSY, got {ename(e)}")


@pytest.mark.rules("W3")
def test_w3_read_sets_itself_up(cell, openers):
    need_openers(cell, 2)
    r = openers.fd()
    if not cell.keep_format:  # with keep_format=1 the kept frame may be there already
        e = err(r.read, 160 * 120 * 2)
        assert e == errno.EAGAIN, (f"read(O_NONBLOCK) with no writer yet: expected EAGAIN, got "
                                   f"{ename(e)}")
    w = openers.proc("writer")
    info = w.call("start_writer", "mmap", count=2, fps=20, set_format=not cell.keep_format)
    size = info["format"]["sizeimage"]
    seen = []
    for _ in range(4 if cell.keep_format else 3):
        try:
            data = r.wait_read(size, 5.0)
        except OSError as exc:
            pytest.fail(f"read() of a frame while a writer streams: expected a frame, got "
                        f"{ename(exc.errno)} after {len(seen)} frames")
        assert len(data) == size, f"read() returned {len(data)} bytes, expected one frame {size}"
        seen.append(frame_number(data))
    if cell.keep_format:
        seen = seen[1:]  # the first read() may return the kept frame of an earlier writer
    assert seen == sorted(seen) and len(set(seen)) == len(seen), (
        f"successive read()s: expected successive distinct frames, got frame numbers {seen}")
    st = w.call("pump_status")
    assert st["error"] is None, f"writer stream disturbed by a read() reader: {st['error']}"


@pytest.mark.rules("W4")
def test_w4_mmap_and_rw_exclude_each_other(cell, openers):
    need_openers(cell, 2)
    a = openers.fd()
    Writer(a, count=2, streamon=False, set_format=not cell.keep_format)
    size = a.g_fmt(OUT)["sizeimage"]
    e = err(a.write, frame_bytes(0, size))
    assert e == errno.EBUSY, (f"write() by an opener that chose mmap (REQBUFS OUTPUT): expected "
                              f"EBUSY, got {ename(e)}")
    a.close()
    b = openers.fd()
    b.write(frame_bytes(1, size))
    e = err(b.reqbufs, OUT, 2)
    assert e == errno.EBUSY, (f"REQBUFS(OUTPUT, 2) by an opener that used write(): expected "
                              f"EBUSY, got {ename(e)}")
    r = openers.fd()
    r.reqbufs(CAP, 2)
    e = err(r.read, size)
    assert e == errno.EBUSY, (f"read() by an opener that chose mmap (REQBUFS CAPTURE): expected "
                              f"EBUSY, got {ename(e)}")
    r.close()
    r2 = openers.fd()
    b.write(frame_bytes(2, size))
    try:
        r2.wait_read(size, 3.0)
    except OSError as exc:
        pytest.fail(f"read() by a fresh opener while a write() writer streams: {ename(exc.errno)}")
    e = err(r2.reqbufs, CAP, 2)
    assert e == errno.EBUSY, (f"REQBUFS(CAPTURE, 2) by an opener that used read(): expected "
                              f"EBUSY, got {ename(e)}")
