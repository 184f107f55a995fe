"""F: formats (unpinned S_FMT, pinned S_FMT, claimant S_FMT, TRY_FMT, keep_format)."""

from __future__ import annotations

import errno

import pytest
from lib.common import (
    H2,
    KEPT_HOW,
    W2,
    FileWriter,
    Reader,
    Writer,
    advertised,
    fmt_str,
    kept_capture_only,
    need_openers,
    skip_if_keep,
)
from lib.v4l2 import CAP, OUT, YUYV, ename, err


def _dims(f):
    return (f["width"], f["height"], f["pixelformat"])


@pytest.mark.rules("F1")
def test_f1_unpinned_s_fmt_sets_device_format(cell, openers):
    skip_if_keep(cell, "F1", "keep_format=1 pins the format")
    d = openers.fd()
    t = d.try_fmt(OUT, 321, 241, YUYV)
    s = d.s_fmt(OUT, 321, 241, YUYV)
    assert _dims(s) == _dims(t), (f"S_FMT(OUTPUT, 321x241) unpinned: expected the TRY_FMT "
                                  f"adjustment {fmt_str(t)}, got {fmt_str(s)}")
    o = openers.fd()
    for bt, _name in advertised(o):
        try:
            g = o.g_fmt(bt)
        except OSError as exc:
            pytest.fail(f"G_FMT({'OUTPUT' if bt == OUT else 'CAPTURE'}) after S_FMT(OUTPUT): "
                        f"expected the format, got {ename(exc.errno)}")
        assert _dims(g) == _dims(s), (f"G_FMT({'OUTPUT' if bt == OUT else 'CAPTURE'}) by another "
                                      f"opener after S_FMT(OUTPUT): expected {fmt_str(s)}, got "
                                      f"{fmt_str(g)}")
    if (CAP, "CAPTURE") not in advertised(d):
        return  # exclusive_caps=1 without a writer: CAPTURE is not offered
    try:
        s2 = d.s_fmt(CAP, 176, 144, YUYV)
    except OSError as exc:
        pytest.fail(f"S_FMT(CAPTURE, 176x144) on an unpinned device: expected success, got "
                    f"{ename(exc.errno)}")
    g = o.g_fmt(OUT)
    assert (s2["width"], s2["height"]) == (176, 144) and _dims(g) == _dims(s2), (
        f"S_FMT(CAPTURE, 176x144) unpinned: expected the device format to become 176x144 on "
        f"both directions, got S_FMT reply {fmt_str(s2)} and G_FMT(OUTPUT) {fmt_str(g)}")


@pytest.mark.rules("F2")
def test_f2_pinned_s_fmt_returns_pinned_format(cell, openers):
    need_openers(cell, 2)
    a, b = openers.fd(), openers.fd()
    Writer(a, count=2, streamon=False)
    pinned = a.g_fmt(OUT)
    for bt, name in advertised(b):
        try:
            got = b.s_fmt(bt, W2 if pinned["width"] != W2 else 176, H2 if pinned["height"] != H2
                          else 144, YUYV)
        except OSError as exc:
            pytest.fail(f"S_FMT({name}, other size) by an opener without a claim while another "
                        f"claims: expected success with the pinned format, got {ename(exc.errno)}")
        assert _dims(got) == _dims(pinned), (
            f"S_FMT({name}, other size) while pinned by another opener's claim: expected the "
            f"pinned {fmt_str(pinned)} back, got {fmt_str(got)}")
    g = a.g_fmt(OUT)
    assert _dims(g) == _dims(pinned), f"pinned format changed: {fmt_str(pinned)} -> {fmt_str(g)}"


@pytest.mark.rules("F3")
def test_f3_claimant_s_fmt_busy_unless_same(cell, openers):
    a = openers.fd()
    Writer(a, count=2, streamon=False)
    cur = a.g_fmt(OUT)
    e = err(a.s_fmt, OUT, cur["width"], cur["height"], cur["pixelformat"])
    assert e == 0, f"S_FMT(OUTPUT) with the same format by the claimant: expected success, got " \
                   f"{ename(e)}"
    e = err(a.s_fmt, OUT, cur["width"] * 2, cur["height"] * 2, cur["pixelformat"])
    assert e == errno.EBUSY, (f"S_FMT(OUTPUT) with a different size by an opener that claims: "
                              f"expected EBUSY, got {ename(e)}")


@pytest.mark.rules("F4")
def test_f4_try_fmt_changes_nothing(cell, openers):
    need_openers(cell, 2)
    a, b = openers.fd(), openers.fd()
    before = a.g_fmt(OUT)
    other = (W2, H2) if before["width"] != W2 else (176, 144)
    for bt in (OUT, CAP):
        e = err(a.try_fmt, bt, *other, YUYV)
        assert e != errno.EBUSY, f"TRY_FMT on an idle device: expected no EBUSY, got {ename(e)}"
    after = a.g_fmt(OUT)
    assert _dims(after) == _dims(before), (f"TRY_FMT changed the device format: "
                                           f"{fmt_str(before)} -> {fmt_str(after)}")
    Writer(a, count=2)
    pinned = a.g_fmt(OUT)
    for d, who in ((a, "the claimant"), (b, "another opener")):
        for bt in (OUT, CAP):
            e = err(d.try_fmt, bt, *other, YUYV)
            assert e != errno.EBUSY, (f"TRY_FMT({'OUTPUT' if bt == OUT else 'CAPTURE'}) by {who} "
                                      f"while pinned: expected no EBUSY, got {ename(e)}")
    after = a.g_fmt(OUT)  # the claimant keeps its direction (X2)
    assert _dims(after) == _dims(pinned), (f"TRY_FMT changed the pinned format: "
                                           f"{fmt_str(pinned)} -> {fmt_str(after)}")


@pytest.mark.rules("F5")
def test_f5_keep_format_survives_last_close(cell, openers):
    if not cell.keep_format:
        pytest.skip("F5 applies with keep_format=1; this cell has keep_format=0")
    a = openers.fd()
    wr = Writer(a, count=2, set_format=True)
    kept = a.g_fmt(OUT)
    wr.send()
    a.close()
    b = openers.fd()
    if kept_capture_only(cell, b):
        _f5_kept_capture_only(cell, openers, b, kept, wr.count)
        return
    g = b.g_fmt(OUT)
    assert _dims(g) == _dims(kept), (f"keep_format=1, after the last close: expected the kept "
                                     f"format {fmt_str(kept)}, got {fmt_str(g)}")
    n = b.reqbufs(OUT, 1)["count"]
    assert n == wr.count, (f"keep_format=1: REQBUFS(OUTPUT, 1) by the next writer: expected the "
                           f"kept count {wr.count}, got {n}")
    b.reqbufs(OUT, 0)
    # a reader can still capture the kept format with a new writer
    w2 = Writer(b, count=2, set_format=False)
    r = Reader(openers.fd())
    f = w2.send()
    assert r.get()["frame"] == f["frame"]


def _f5_kept_capture_only(cell, openers, b, kept: dict, kept_count: int) -> None:
    """F5 where exclusive_caps=1 shows the kept format as CAPTURE only (X1): the kept format is
    read on CAPTURE, the first claim after the last close (a reader's) gets the kept count,
    and the next writer comes back through write() (W1) with the kept format."""
    try:
        g = b.g_fmt(CAP)
    except OSError as exc:
        pytest.fail(f"keep_format=1, exclusive_caps=1, after the last close the node shows "
                    f"CAPTURE only: expected G_FMT(CAPTURE) to report the kept format "
                    f"{fmt_str(kept)}, got {ename(exc.errno)}")
    assert _dims(g) == _dims(kept), (f"keep_format=1, after the last close: expected the kept "
                                     f"format {fmt_str(kept)} on CAPTURE, got {fmt_str(g)}")
    try:
        r = Reader(openers.fd(), count=1)
    except OSError as exc:
        pytest.fail(f"keep_format=1, exclusive_caps=1: a reader's REQBUFS(CAPTURE, 1)+STREAMON "
                    f"after the last writer closed (the node shows CAPTURE): expected success, "
                    f"got {ename(exc.errno)}")
    assert r.count == kept_count, (
        f"keep_format=1: REQBUFS(CAPTURE, 1), the first claim after the last close: expected the "
        f"kept count {kept_count}, got {r.count}")
    try:
        w2 = FileWriter(b, g)
        f = w2.send()
    except OSError as exc:
        pytest.fail(f"keep_format=1: the next writer by {KEPT_HOW}: expected success, got {exc}")
    try:
        got = r.get_frame(f["frame"])
    except OSError as exc:
        pytest.fail(f"keep_format=1: frame {f['frame']} written in the kept format: expected a "
                    f"reader to capture it, got {ename(exc.errno)}")
    assert got["frame"] == f["frame"], (f"keep_format=1: expected the next writer's frame "
                                        f"{f['frame']}, got frame {got['frame']}")
    assert got["bytesused"] == kept["sizeimage"], (
        f"keep_format=1: frame of the kept format: expected bytesused {kept['sizeimage']}, got "
        f"{got['bytesused']}")
