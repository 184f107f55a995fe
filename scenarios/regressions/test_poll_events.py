"""Regressions, poll/select/epoll and events (upstream reports; reports.toml says which)."""

from __future__ import annotations

import errno
import os
import re
import select
import threading
import time

import pytest
from lib.clients import Client
from lib.common import Reader, Writer, need_openers, start_proc_writer
from lib.v4l2 import (
    OUT,
    POLLIN,
    POLLRDNORM,
    YUYV,
    V4L2Error,
    ename,
    frame_bytes,
    frame_number,
)
from regress import FPS, logdir, select_readable, share_problems

from loopqual.guest.programs.infra import need_program

_select = select_readable


def _first_read(rd, publish, size: int, what: str) -> bytes:
    """A read() opener's first frame: its first read() sets it up (W3) and gives EAGAIN
    (non-blocking) until a frame published after it arrives; publish() (if given) publishes
    one meanwhile. Frames already waiting are drained, so that the next select() has nothing
    to report."""
    deadline = time.monotonic() + 3.0
    data = None
    while data is None:
        try:
            data = rd.read(size)
        except V4L2Error as exc:
            if exc.errno != errno.EAGAIN:
                pytest.fail(f"{what}: first read(): {exc}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: no frame from read() within 3 s of frames being published")
            if publish is not None:
                publish()
            time.sleep(0.1)
    while True:
        try:
            data = rd.read(size)
        except V4L2Error as exc:
            if exc.errno == errno.EAGAIN:
                return data
            raise


@pytest.mark.upstream_report(56)
@pytest.mark.rules("P2", "W3")
def test_issue_56_select_waits_for_a_frame(cell, openers):
    """select() on the device, as V4L2's capture example uses it, always returned at once
    (readable) with no frame; for an opener using read() it never reported a frame at all.
    https://github.com/v4l2loopback/v4l2loopback/issues/56
    Judged: an mmap reader: select() times out with no frame published, then reports the
    frame the writer publishes; a read() reader (after its first read(), which set it up):
    select() times out until the next frame, then reports it, and read() returns that frame."""
    need_openers(cell, 3)
    wr = Writer(openers.fd(), count=2, set_format=not cell.keep_format)
    size = wr.fmt["sizeimage"]
    r = Reader(openers.fd())
    if not cell.keep_format:  # keep_format=1: an earlier writer's kept frame may be there
        assert not _select(r.dev.fd, 0.5), ("mmap reader, streaming, no frame published yet: "
                                            "select() reported it readable")
    f = wr.send()
    assert _select(r.dev.fd, 2.0), "mmap reader: select() did not report the frame published"
    r.get_frame(f["frame"])
    assert not _select(r.dev.fd, 0.5), ("mmap reader that dequeued the only frame: select() "
                                        "reported it readable again with no new frame")
    r.dev.close()
    rd = openers.fd()
    _first_read(rd, wr.send, size, "read() reader")
    assert not _select(rd.fd, 0.5), ("read() reader that has read the newest frame: select() "
                                     "reported it readable with no new frame")
    f = wr.send()
    assert _select(rd.fd, 2.0), ("read() reader: select() did not report the frame published "
                                 "(the capture example would wait forever)")
    data = rd.read(size)
    assert frame_number(data) == f["frame"] and data == frame_bytes(f["frame"], size), (
        f"read() after select(): expected frame {f['frame']} whole, got frame "
        f"{frame_number(data)} ({len(data)} bytes)")


@pytest.mark.upstream_report(601)
@pytest.mark.rules("P2")
def test_issue_601_epoll_wakes_after_a_readable_first_poll(cell, openers):
    """A reader's poll hung forever when its first poll found the device readable (the
    driver's poll() then skipped poll_wait): epoll never woke again (linuxpy's async capture
    stopped after one frame).
    https://github.com/v4l2loopback/v4l2loopback/issues/601
    Judged: a streaming reader registers with epoll while a frame is ready (the first poll
    readable), dequeues it; each of three later frames, published 0.3 s into an epoll wait of
    up to 2 s, wakes it."""
    need_openers(cell, 2)
    wr = Writer(openers.fd(), count=2, set_format=not cell.keep_format)
    r = Reader(openers.fd())
    f = wr.send()
    assert r.dev.poll(POLLIN | POLLRDNORM, 2.0) & POLLIN, "no POLLIN for the first frame"
    ep = select.epoll()
    try:
        ep.register(r.dev.fd, select.EPOLLIN)
        assert ep.poll(0.5), "epoll registered while a frame was ready: no event"
        r.get_frame(f["frame"])
        for k in range(3):
            sent = {}
            t = threading.Timer(0.3, lambda s=sent: s.update(wr.send()))
            t.start()
            t0 = time.monotonic()
            events = ep.poll(2.0)
            waited = time.monotonic() - t0
            t.join()
            assert events, (f"round {k}: epoll did not wake within 2 s for a frame published "
                            f"after 0.3 s (its first poll had found the device readable)")
            b = r.get(2.0)
            assert b["frame"] == sent.get("frame"), (f"round {k}: after the wake-up ({waited:.2f} s) "
                                                     f"expected frame {sent.get('frame')}, got "
                                                     f"{b['frame']}")
    finally:
        ep.close()


@pytest.mark.upstream_report(612)
@pytest.mark.rules("P2", "W3")
@pytest.mark.timeout(60)
def test_issue_612_select_before_read_gets_frames(cell, openers):
    """upstream's tests/consumer --read (select, then read) with tests/producer writing printed
    "select timeout" and got no frame.
    https://github.com/v4l2loopback/v4l2loopback/issues/612
    Judged: an mmap writer at 15 frames a second (the producer) and a read() consumer that,
    once its first read() has set it up (W3), select()s before each read: every select wakes
    within 2 s and the 12 frames read are whole, in order, at least 90% of those published
    meanwhile."""
    need_openers(cell, 2)
    w = openers.proc("producer")
    info = start_proc_writer(cell, w, "mmap", count=2, fps=FPS)
    size = info["format"]["sizeimage"]
    rd = openers.fd()
    _first_read(rd, None, size, "consumer --read")  # the producer publishes on its own
    numbers, torn = [], 0
    for k in range(12):
        if not _select(rd.fd, 2.0):
            pytest.fail(f"consumer --read: select timeout before read {k} ({len(numbers)} frames "
                        f"read so far)")
        try:
            data = rd.read(size)
        except V4L2Error as exc:
            if exc.errno == errno.EAGAIN:
                pytest.fail(f"read {k}: select() said readable, read() gave EAGAIN")
            raise
        n = frame_number(data)
        if data == frame_bytes(n, size):
            numbers.append(n)
        else:
            torn += 1
    bad = share_problems(numbers, torn)
    assert not bad, f"consumer --read: {'; '.join(bad)}"


EVENT_LINE = re.compile(r"event\s+\d+,\s*pending", re.IGNORECASE)


def _holds_device(pid: int, path: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                return True
        except OSError:
            continue
    return False


@pytest.mark.upstream_report(553)
@pytest.mark.programs("v4l2-ctl")
@pytest.mark.rules("P3", "A2", "S2")
@pytest.mark.timeout(120)
def test_issue_553_producer_streams_beside_an_event_watcher(cell, openers):
    """With `v4l2-ctl --poll-for-event=283115521` (CLIENT_USAGE) watching the device, upstream's
    tests/producer got "VIDIOC_STREAMON error 22, Invalid argument" (max_buffers=8).
    https://github.com/v4l2loopback/v4l2loopback/issues/553
    Judged: v4l2-ctl polling for CLIENT_USAGE holds an opener; the producer's calls (G_FMT,
    S_FMT 640x480 YUYV, REQBUFS 4, mmap, STREAMON, QBUF) succeed, its frame reaches a reader,
    and v4l2-ctl prints the event raised when the reader starts streaming."""
    need_program("v4l2-ctl")
    need_openers(cell, 3)
    ev = Client(["stdbuf", "-oL", "v4l2-ctl", "-d", cell.device, "--poll-for-event=283115521"],
                "553-v4l2-ctl-poll-for-event", logdir(cell, "v4l2-ctl"))
    try:
        deadline = time.monotonic() + 30
        while not _holds_device(ev.p.pid, cell.device) and ev.alive() \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ev.alive() and _holds_device(ev.p.pid, cell.device), (
            f"v4l2-ctl --poll-for-event did not open the device: {ev.output(600)!r}")
        time.sleep(0.5)  # its SUBSCRIBE_EVENT follows the open
        d = openers.fd()
        size = (d.g_fmt(OUT) if cell.keep_format else d.s_fmt(OUT, 640, 480, YUYV))["sizeimage"]
        n = d.reqbufs(OUT, 4)["count"]
        for i in range(n):
            d.mmap(OUT, i)
        try:
            d.streamon(OUT)
        except V4L2Error as exc:
            pytest.fail(f"producer STREAMON(OUTPUT) with v4l2-ctl watching for events: expected "
                        f"success, got {ename(exc.errno)}")
        d.put_frame(0, 0, size)
        r = Reader(openers.fd())
        d.put_frame(1 if n > 1 else d.wait_dqbuf(OUT, 3.0)["index"], 1, size)
        r.get_frame(1, 3.0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not EVENT_LINE.search(ev.output(4000)):
            time.sleep(0.2)
        text = ev.output(4000)
    finally:
        ev.stop()
    assert EVENT_LINE.search(text), (f"v4l2-ctl --poll-for-event=283115521 printed no event after "
                                     f"a reader started streaming: {text!r}")

