"""Regressions, buffers: REQBUFS counts, which buffer DQBUF hands back, QBUF that blocks,
frames overwritten while a reader holds them (upstream reports; reports.toml says which)."""

from __future__ import annotations

import errno
import os
import time
from collections import deque

import pytest
from lib.clients import Client
from lib.common import Reader, Writer, need_openers, start_proc_writer
from lib.v4l2 import CAP, OUT, V4L2Error, ename, err
from regress import (
    MJPG,
    START_TIMEOUT,
    YU12,
    H,
    W,
    incomplete_unless,
    logdir,
    skip_with_keep,
    wait_visible,
)

from loopqual.guest.programs.infra import need_program


@pytest.mark.upstream_report(9)
@pytest.mark.rules("S6", "S7", "C3")
def test_issue_9_mmap_writer_qbuf_does_not_block(cell, openers):
    """A writer's QBUF on its mmap buffer blocked on a first run; on a second run QBUF went
    through but no frame reached the readers.
    https://github.com/v4l2loopback/v4l2loopback/issues/9
    Judged: a blocking writer with one YU12 buffer (REQBUFS 1, as reported) queues each frame
    without QBUF waiting, gets the buffer back by DQBUF once it is consumed, and each frame
    reaches a reader; the same again on a second run with a new opener."""
    skip_with_keep(cell, "each run sets YU12 160x120, the reporter's format")
    need_openers(cell, 2)
    for run in (1, 2):
        w = openers.proc(f"writer-run{run}", flags=os.O_RDWR)
        size = w.call("s_fmt", OUT, W, H, YU12)["sizeimage"]
        n = w.call("reqbufs", OUT, 1)["count"]
        assert n >= 1, f"run {run}: REQBUFS(OUTPUT, 1) granted {n} buffers"
        w.call("mmap", OUT, 0)
        w.call("streamon", OUT)
        r = Reader(openers.fd())
        for k in range(3):
            if k:
                b = w.call("dqbuf", OUT, timeout=3.0)
                assert b["index"] == 0, (f"run {run}: DQBUF(OUTPUT) with buffer 0 the only one "
                                         f"queued: expected index 0, got {b['index']}")
            # a hang here is the report's "QBUF ioctl is blocking"
            w.call("put_frame", 0, k, size, timeout=3.0)
            try:
                r.get_frame(k, 3.0)
            except OSError as exc:
                pytest.fail(f"run {run}: frame {k} the writer queued did not reach the reader: "
                            f"{exc}")
        r.dev.close()
        w.stop()


@pytest.mark.upstream_report(60)
@pytest.mark.rules("S7", "S5")
def test_issue_60_capture_dqbuf_returns_a_queued_buffer(cell, openers):
    """With a queue of 4 buffers of which the reader keeps only 1 or 2 queued, DQBUF returned
    an index the reader had not queued.
    https://github.com/v4l2loopback/v4l2loopback/issues/60
    Judged: a reader asking 4 buffers that keeps one, then two, queued at a time: every DQBUF
    hands back the oldest buffer it queued, holding the frame the writer published into it."""
    need_openers(cell, 2)
    wr = Writer(openers.fd(), count=2, set_format=not cell.keep_format)
    d = openers.fd()
    n = d.reqbufs(CAP, 4)["count"]
    for i in range(n):
        d.mmap(CAP, i)
    queued: deque[int] = deque([0])
    d.qbuf(CAP, 0)
    free = list(range(1, n))
    d.streamon(CAP)
    for step in range(12):
        f = wr.send()
        try:
            b = d.wait_dqbuf(CAP, 3.0)
        except V4L2Error as exc:
            pytest.fail(f"step {step}: DQBUF(CAPTURE) with buffers {list(queued)} queued and frame "
                        f"{f['frame']} published: expected a buffer, got {exc}")
        want = queued.popleft()
        got = d.read_frame_number(CAP, b["index"]) if b["index"] < n else None
        assert b["index"] == want and got == f["frame"], (
            f"step {step}: DQBUF(CAPTURE) with buffers {[want, *queued]} queued (oldest first): "
            f"expected buffer {want} holding frame {f['frame']}, got buffer {b['index']} holding "
            f"{got}")
        free.append(b["index"])
        target = 1 if step % 2 == 0 else min(2, n)
        while len(queued) < target and free:
            i = free.pop(0)
            d.qbuf(CAP, i)
            queued.append(i)
        if not queued:
            i = free.pop(0)
            d.qbuf(CAP, i)
            queued.append(i)


@pytest.mark.upstream_report(191)
@pytest.mark.rules("S8", "S7")
@pytest.mark.timeout(60)
def test_issue_191_no_half_written_frames_at_high_rate(cell, openers):
    """An mmap writer at high frame rates produced half-written frames at the reader.
    https://github.com/v4l2loopback/v4l2loopback/issues/191
    Judged: an mmap writer publishing as fast as the guest lets it for 3 s, a reader dequeuing
    throughout: every frame the reader gets is whole (all its bytes that frame's) and the frames
    come in the order they were published."""
    need_openers(cell, 2)
    w = openers.proc("writer")
    start_proc_writer(cell, w, "mmap", count=2, fps=500)
    r = openers.proc("reader")
    r.call("start_reader", "mmap", 2)
    time.sleep(3.0)
    rs = r.call("stop_pump")
    ws = w.call("stop_pump")
    assert rs["error"] is None and ws["error"] is None, (
        f"reader error: {rs['error']}; writer error: {ws['error']}")
    seen = rs["seen"]
    incomplete_unless(len(seen) >= 30, f"the reader got {len(seen)} frames in 3 s while the "
                                       f"writer made {ws['frames']}: too few to judge tearing")
    torn = [n for n, _seq, _used, whole in seen if not whole]
    numbers = [n for n, _seq, _used, whole in seen if whole]
    assert not torn, (f"{len(torn)} of {len(seen)} frames the reader got were half-written "
                      f"(first: frame {torn[:5]}) while the writer published {ws['frames']}")
    assert numbers == sorted(set(numbers)), (
        f"frames repeated or out of order at the reader: {numbers[:40]}")


@pytest.mark.upstream_report(304)
@pytest.mark.rules("S6", "S7")
def test_issue_304_dqbuf_hands_back_the_oldest_queued(cell, openers):
    """In a sequence of QBUF/DQBUF by a source and a sink, the source's DQBUF(OUTPUT) and then
    the sink's DQBUF(CAPTURE) returned buffer 1, which the sink still owned, where buffer 0 was
    the one queued.
    https://github.com/v4l2loopback/v4l2loopback/issues/304
    Judged: the report's interleaving (the sink queueing before the source publishes): the
    source gets back its oldest queued buffer (S6) and the sink the only buffer it queued,
    holding the frame just published (S7)."""
    need_openers(cell, 2)
    src = openers.fd()
    size = (src.g_fmt(OUT) if cell.keep_format else src.s_fmt(OUT, W, H))["sizeimage"]
    n = src.reqbufs(OUT, 2)["count"]
    incomplete_unless(n >= 2, f"the report's sequence needs two buffers; REQBUFS(OUTPUT, 2) "
                              f"granted {n} (max_buffers={cell.max_buffers})")
    for i in range(2):
        src.mmap(OUT, i)
    src.streamon(OUT)
    sink = openers.fd()
    m = sink.reqbufs(CAP, 2)["count"]
    assert m == n, f"the sink's REQBUFS(CAPTURE, 2) while the source claims {n}: got {m} (A3)"
    for i in range(2):
        sink.mmap(CAP, i)
    sink.streamon(CAP)

    def sink_gets(expect: int, frame: int, step: str):
        try:
            b = sink.wait_dqbuf(CAP, 3.0)
        except V4L2Error as exc:
            pytest.fail(f"{step}: sink DQBUF: expected buffer {expect}, got {exc}")
        got = sink.read_frame_number(CAP, b["index"])
        assert (b["index"], got) == (expect, frame), (
            f"{step}: sink DQBUF with only buffer {expect} queued: expected buffer {expect} "
            f"holding frame {frame}, got buffer {b['index']} holding {got}")

    sink.qbuf(CAP, 0)
    src.put_frame(0, 0, size)
    sink_gets(0, 0, "sink QBUF 0, source QBUF 0")
    sink.qbuf(CAP, 1)
    src.put_frame(1, 1, size)
    sink_gets(1, 1, "sink QBUF 1, source QBUF 1")
    sink.qbuf(CAP, 0)
    try:
        b = src.wait_dqbuf(OUT, 3.0)
    except V4L2Error as exc:
        pytest.fail(f"source DQBUF(OUTPUT) with buffers 0 then 1 queued and consumed: expected "
                    f"buffer 0, got {exc}")
    assert b["index"] == 0, (f"source DQBUF(OUTPUT) with buffers 0 then 1 queued: expected the "
                             f"oldest, 0, got {b['index']}")
    src.put_frame(b["index"], 2, size)
    sink_gets(0, 2, "sink QBUF 0, source QBUF again")


@pytest.mark.upstream_report(598)
@pytest.mark.rules("A4")
def test_issue_598_reqbufs_changes_count_after_streamoff(cell, openers):
    """REQBUFS could not change the number of buffers again, even with every buffer unmapped.
    https://github.com/v4l2loopback/v4l2loopback/issues/598
    Judged: REQBUFS(OUTPUT, 2), mmap, STREAMON, STREAMOFF, munmap, then REQBUFS(OUTPUT, 1) by the
    only claimant: 1 buffer granted, buffer 1 gone (QUERYBUF EINVAL), buffer 0 usable."""
    skip_with_keep(cell, "keep_format=1 keeps the count (F5)")
    incomplete_unless(cell.max_buffers >= 2, f"needs max_buffers >= 2, the cell has "
                                             f"{cell.max_buffers}")
    d = openers.fd()
    d.s_fmt(OUT, W, H)
    n = d.reqbufs(OUT, 2)["count"]
    assert n == 2, f"REQBUFS(OUTPUT, 2) on an idle device: expected 2, got {n} (A2)"
    for i in range(n):
        d.mmap(OUT, i)
    d.streamon(OUT)
    d.streamoff(OUT)
    d.munmap_all()
    try:
        n2 = d.reqbufs(OUT, 1)["count"]
    except V4L2Error as exc:
        pytest.fail(f"REQBUFS(OUTPUT, 1) after STREAMOFF and munmap by the only claimant: "
                    f"expected 1 buffer, got {ename(exc.errno)}")
    assert n2 == 1, f"REQBUFS(OUTPUT, 1) after STREAMOFF and munmap: expected 1, got {n2}"
    e = err(d.querybuf, OUT, 1)
    assert e == errno.EINVAL, f"QUERYBUF(OUTPUT, 1) with 1 buffer granted: expected EINVAL, got {ename(e)}"
    d.mmap(OUT, 0)
    d.streamon(OUT)


@pytest.mark.upstream_report(607)
@pytest.mark.rules("S6", "S8")
@pytest.mark.timeout(60)
def test_issue_607_writer_gets_its_buffers_back_in_turn(cell, openers):
    """The producer got the same buffer back from every DQBUF(OUTPUT), and the consumer saw it
    overwritten while it read it (upstream's tests/producer and tests/consumer too).
    https://github.com/v4l2loopback/v4l2loopback/issues/607
    Judged: a writer asking 4 buffers queues them all, then recycles: each DQBUF(OUTPUT) returns
    the oldest it queued (every buffer in turn); a reader gets the frames whole and in order."""
    need_openers(cell, 2)
    d = openers.fd()
    size = (d.g_fmt(OUT) if cell.keep_format else d.s_fmt(OUT, W, H))["sizeimage"]
    n = d.reqbufs(OUT, 4)["count"]
    for i in range(n):
        d.mmap(OUT, i)
    d.streamon(OUT)
    r = openers.proc("consumer")
    r.call("start_reader", "mmap", 2)
    order: deque[int] = deque()
    for k in range(n):
        d.put_frame(k, k, size)
        order.append(k)
    got_back = []
    for k in range(n, 40):
        try:
            b = d.wait_dqbuf(OUT, 3.0)
        except V4L2Error as exc:
            pytest.fail(f"DQBUF(OUTPUT) with buffers {list(order)} queued: {exc}")
        want = order.popleft()
        got_back.append(b["index"])
        assert b["index"] == want, (f"DQBUF(OUTPUT) with buffers {[want, *order]} queued (oldest "
                                    f"first): expected {want}, got {b['index']}; so far "
                                    f"{got_back}")
        d.put_frame(b["index"], k, size)
        order.append(b["index"])
        time.sleep(1 / 30)
    time.sleep(0.3)
    rs = r.call("stop_pump")
    seen = rs["seen"]
    torn = [n for n, _s, _u, whole in seen if not whole]
    numbers = [n for n, _s, _u, whole in seen if whole]
    assert rs["error"] is None and not torn, (
        f"reader: {len(torn)} of {len(seen)} frames overwritten while it read them ({torn[:5]}); "
        f"error {rs['error']}")
    assert numbers == sorted(set(numbers)), f"reader: frames repeated or out of order: {numbers}"
    incomplete_unless(len(numbers) >= 10, f"the reader got {len(numbers)} frames of 40")


def _is_jpeg(data: bytes) -> bool:
    return len(data) > 4 and data[:2] == b"\xff\xd8" and b"\xff\xd9" in data[-8:]


@pytest.mark.upstream_report(329)
@pytest.mark.programs("ffmpeg")
@pytest.mark.rules("S5", "A3", "S7")
@pytest.mark.timeout(180)
def test_issue_329_mjpg_streamer_querybuf_within_granted_count(cell, openers):
    """mjpg-streamer failed with "Unable to query buffer: Invalid argument" on a loopback
    device fed MJPEG by ffmpeg (-vcodec copy).
    https://github.com/v4l2loopback/v4l2loopback/issues/329
    Judged: with ffmpeg writing MJPEG, mjpg-streamer's input_uvc calls (S_FMT 640x480 MJPG,
    REQBUFS 4, QUERYBUF 0..3): REQBUFS grants the pinned count, QUERYBUF works for every granted
    index and is EINVAL past it (S5: mjpg-streamer must use the count it was granted), and with
    the granted buffers every frame dequeued is a whole JPEG, with a growing sequence."""
    need_program("ffmpeg")
    need_openers(cell, 2)
    skip_with_keep(cell, "the writer sets MJPG 160x120")
    c = Client(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi",
                "-i", f"testsrc=size={W}x{H}:rate=15", "-c:v", "mjpeg", "-f", "v4l2", cell.device],
               "ffmpeg-mjpeg", logdir(cell, "ffmpeg"))
    try:
        wait_visible(cell, c, START_TIMEOUT)
        d = openers.fd()
        f = d.s_fmt(CAP, 640, 480, MJPG)
        assert f["pixelformat"] == MJPG, f"S_FMT(CAPTURE, MJPG) while ffmpeg writes MJPG: got {f}"
        g = d.reqbufs(CAP, 4)["count"]
        assert 1 <= g <= cell.max_buffers, (f"REQBUFS(CAPTURE, 4) while a writer claims: expected "
                                            f"its count, 1..{cell.max_buffers}, got {g}")
        for i in range(4):
            e = err(d.querybuf, CAP, i)
            if i < g:
                assert e == 0, f"QUERYBUF(CAPTURE, {i}) with {g} granted: expected success, got {ename(e)}"
            else:
                assert e == errno.EINVAL, (f"QUERYBUF(CAPTURE, {i}) with {g} granted: expected "
                                           f"EINVAL (S5), got {ename(e)}")
        for i in range(g):
            d.mmap(CAP, i)
            d.qbuf(CAP, i)
        d.streamon(CAP)
        seqs = []
        for k in range(10):
            try:
                b = d.wait_dqbuf(CAP, 5.0)
            except V4L2Error as exc:
                pytest.fail(f"MJPEG frame {k}: DQBUF(CAPTURE): {exc}. ffmpeg: {c.output(600)!r}")
            data = bytes(d.maps[(CAP, b["index"])][:b["bytesused"]])
            assert _is_jpeg(data), (f"MJPEG frame {k} ({b['bytesused']} bytes): expected a whole "
                                    f"JPEG (SOI ... EOI), got {data[:4].hex()}...{data[-4:].hex()}")
            seqs.append(b["sequence"])
            d.qbuf(CAP, b["index"])
        assert seqs == sorted(set(seqs)), f"sequence numbers not growing: {seqs}"
        assert c.alive(), f"ffmpeg exited: {c.output(600)!r}"
    finally:
        c.stop()
