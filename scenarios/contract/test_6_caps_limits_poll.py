"""X: exclusive_caps, L: limits, P: poll and events."""

from __future__ import annotations

import errno
import os
import time

import pytest
from lib.common import (
    Reader,
    Writer,
    caps_str,
    need_ec,
    need_openers,
    new_writer,
    skip_if_keep,
    write_format,
)
from lib.v4l2 import (
    CAP,
    CAP_VIDEO_CAPTURE,
    CAP_VIDEO_OUTPUT,
    EVENT_PRI_CLIENT_USAGE,
    OUT,
    POLLIN,
    POLLOUT,
    POLLPRI,
    POLLRDNORM,
    POLLWRNORM,
    Device,
    V4L2Error,
    ename,
    err,
    frame_bytes,
)

from loopqual.guest.programs.infra import InfrastructureProblem


def _caps(cell):
    with Device(cell.device) as d:
        return d.device_caps()


@pytest.mark.rules("X1")
def test_x1_caps_flip_with_write_token(cell, openers):
    need_ec(cell, True, "X1")
    skip_if_keep(cell, "X1 (OUTPUT while idle)", "keep_format=1 with a format set shows CAPTURE "
                 "(checked by F5)")
    caps = _caps(cell)
    assert caps & CAP_VIDEO_OUTPUT and not caps & CAP_VIDEO_CAPTURE, (
        f"exclusive_caps=1, no writer: expected device_caps OUTPUT without CAPTURE, got "
        f"{caps_str(caps)}")
    w = openers.fd()
    wr = Writer(w, count=2, streamon=False)
    caps = _caps(cell)
    assert caps & CAP_VIDEO_OUTPUT and not caps & CAP_VIDEO_CAPTURE, (
        f"exclusive_caps=1, writer claimed but not streaming: expected OUTPUT without CAPTURE, "
        f"got {caps_str(caps)}")
    w.streamon(OUT)
    wr.send()
    caps = _caps(cell)
    assert caps & CAP_VIDEO_CAPTURE and not caps & CAP_VIDEO_OUTPUT, (
        f"exclusive_caps=1 while the write token is held: expected CAPTURE without OUTPUT, got "
        f"{caps_str(caps)}")
    w.streamoff(OUT)
    caps = _caps(cell)
    assert caps & CAP_VIDEO_OUTPUT and not caps & CAP_VIDEO_CAPTURE, (
        f"exclusive_caps=1 after the writer's STREAMOFF: expected OUTPUT without CAPTURE again, "
        f"got {caps_str(caps)}")


@pytest.mark.rules("X1", "F5")
def test_x1_keep_format_shows_capture(cell, openers):
    need_ec(cell, True, "X1 with keep_format")
    if not cell.keep_format:
        pytest.skip("this part of X1 applies with keep_format=1; this cell has keep_format=0")
    w = openers.fd()
    wr = Writer(w, count=2, set_format=False)
    wr.send()
    w.close()
    caps = _caps(cell)
    assert caps & CAP_VIDEO_CAPTURE and not caps & CAP_VIDEO_OUTPUT, (
        f"exclusive_caps=1, keep_format=1 with a format set and no writer: expected device_caps "
        f"CAPTURE without OUTPUT, got {caps_str(caps)}")


@pytest.mark.rules("X2")
def test_x2_claimants_keep_direction_across_flip(cell, openers):
    need_ec(cell, True, "X2")
    need_openers(cell, 2)
    w = openers.fd()
    wr = Writer(w, count=2)
    r = Reader(openers.fd())
    wr.send()
    r.get()
    w.streamoff(OUT)  # caps flip back to OUTPUT (unless keep_format)
    for op, fn in (("STREAMOFF(CAPTURE)", lambda: r.dev.streamoff(CAP)),
                   ("QBUF(CAPTURE, 0)", lambda: r.dev.qbuf(CAP, 0)),
                   ("STREAMON(CAPTURE)", lambda: r.dev.streamon(CAP))):
        e = err(fn)
        assert e == 0, (f"reader's {op} after the writer's STREAMOFF flipped the caps: expected "
                        f"success, got {ename(e)}")
    for i in range(1, r.count):
        r.dev.qbuf(CAP, i)
    e = err(w.streamon, OUT)
    assert e == 0, f"writer STREAMON(OUTPUT) again: expected success, got {ename(e)}"
    f = wr.send()
    try:
        b = r.get_frame(f["frame"])
    except OSError as exc:
        pytest.fail(f"reader after the caps flipped twice: expected frame {f['frame']}, got "
                    f"{ename(exc.errno)}")
    assert b["frame"] == f["frame"]


@pytest.mark.rules("X3")
def test_x3_both_directions_without_exclusive_caps(cell, openers):
    need_ec(cell, False, "X3")
    want = CAP_VIDEO_CAPTURE | CAP_VIDEO_OUTPUT
    caps = _caps(cell)
    assert caps & want == want, f"exclusive_caps=0, idle: expected CAPTURE|OUTPUT, got " \
                                f"{caps_str(caps)}"
    w = openers.fd()
    wr = Writer(w, count=2)
    wr.send()
    caps = _caps(cell)
    assert caps & want == want, (f"exclusive_caps=0, writer streaming: expected CAPTURE|OUTPUT, "
                                 f"got {caps_str(caps)}")
    w.close()
    caps = _caps(cell)
    assert caps & want == want, (f"exclusive_caps=0, after the writer closed: expected "
                                 f"CAPTURE|OUTPUT, got {caps_str(caps)}")


@pytest.mark.rules("L1")
def test_l1_max_openers(cell, openers):
    mo = cell.max_openers
    if mo > 900:
        # the limit is the module's own rule (L1), but this scenario cannot open that many:
        # nothing of L1 is judged, which is the harness's limit, not the rule's absence
        raise InfrastructureProblem(f"max_openers={mo} is too many to open in a scenario "
                                    f"(at most 900): L1 not judged in this cell")
    devs = []
    for i in range(mo):
        try:
            devs.append(openers.fd())
        except OSError as exc:
            pytest.fail(f"open() number {i + 1} of max_openers={mo}: expected success, got "
                        f"{ename(exc.errno)}")
    try:
        extra = Device(cell.device)
    except OSError as exc:
        assert exc.errno == errno.EBUSY, (f"open() number {mo + 1} beyond max_openers={mo}: "
                                          f"expected EBUSY, got {ename(exc.errno)}")
    else:
        extra.close()
        pytest.fail(f"open() number {mo + 1} beyond max_openers={mo}: expected EBUSY, it "
                    f"succeeded")
    devs[0].close()
    try:
        again = openers.fd()
    except OSError as exc:
        pytest.fail(f"open() after closing one of {mo} openers: expected success, got "
                    f"{ename(exc.errno)}")
    again.querycap()


@pytest.mark.rules("P1")
def test_p1_writer_polls_out(cell, openers):
    w = openers.fd()
    wr = Writer(w, count=2)
    wr.send()
    wr.send()
    ev = w.poll(POLLOUT | POLLWRNORM, 2.0)
    assert ev & (POLLOUT | POLLWRNORM) == POLLOUT | POLLWRNORM, (
        f"mmap writer after queueing all its buffers (consumed at once, so one can be dequeued "
        f"and queued again): expected POLLOUT|POLLWRNORM within 2 s, got revents {ev:#x}")
    w.close()
    w2 = openers.fd()
    # the kept format where exclusive_caps=1 + keep_format=1 show CAPTURE only (X1, W1)
    size = write_format(cell, w2)["sizeimage"]
    w2.write(frame_bytes(0, size))
    ev = w2.poll(POLLOUT | POLLWRNORM, 1.0)
    assert ev & (POLLOUT | POLLWRNORM) == POLLOUT | POLLWRNORM, (
        f"write() writer: expected POLLOUT|POLLWRNORM, got revents {ev:#x}")


@pytest.mark.rules("P2")
def test_p2_reader_polls_in_for_unseen_frame(cell, openers):
    need_openers(cell, 2)
    wr = Writer(openers.fd(), count=2)
    r = Reader(openers.fd())
    if not cell.keep_format:  # keep_format=1: the kept frame of an earlier writer may be there
        ev = r.dev.poll(POLLIN | POLLRDNORM, 0.3)
        assert not ev & POLLIN, (f"streaming reader, no frame published yet: expected no "
                                 f"POLLIN, got revents {ev:#x}")
    wr.send()
    ev = r.dev.poll(POLLIN | POLLRDNORM, 2.0)
    assert ev & (POLLIN | POLLRDNORM) == POLLIN | POLLRDNORM, (
        f"streaming reader after a frame was published: expected POLLIN|POLLRDNORM, got "
        f"revents {ev:#x}")
    r.get()
    ev = r.dev.poll(POLLIN | POLLRDNORM, 0.3)
    assert not ev & POLLIN, (f"streaming reader that has dequeued the only frame: expected no "
                             f"POLLIN until a new one, got revents {ev:#x}")
    wr.send()
    ev = r.dev.poll(POLLIN | POLLRDNORM, 2.0)
    assert ev & POLLIN, f"after a second frame: expected POLLIN, got revents {ev:#x}"


def _last_usage(watcher, what: str) -> int:
    ev = watcher.poll(POLLPRI, 2.0)
    assert ev & POLLPRI, f"{what}: expected POLLPRI (CLIENT_USAGE event pending), got {ev:#x}"
    last = None
    for _ in range(64):
        try:
            last = watcher.dqevent()
        except V4L2Error:
            break
    assert last is not None, f"{what}: POLLPRI set but DQEVENT returned nothing"
    assert last["type"] == EVENT_PRI_CLIENT_USAGE, f"{what}: event type {last['type']:#x}"
    return last["u32"]


@pytest.mark.rules("P3")
def test_p3_client_usage_event(cell, openers):
    need_openers(cell, 4)
    watcher = openers.fd()
    try:
        watcher.subscribe(EVENT_PRI_CLIENT_USAGE)
    except OSError as exc:
        pytest.fail(f"SUBSCRIBE_EVENT(V4L2_EVENT_PRI_CLIENT_USAGE): expected success, got "
                    f"{ename(exc.errno)}")
    wr = Writer(openers.fd(), count=2)
    wr.send()
    r1 = Reader(openers.fd())
    r1.get()
    n = _last_usage(watcher, "one reader started streaming")
    assert n == 1, f"CLIENT_USAGE with 1 streaming reader: expected count 1, got {n}"
    try:
        r2 = Reader(openers.fd())
    except OSError as exc:
        pytest.fail(f"P3 needs a second streaming reader: its REQBUFS/STREAMON(CAPTURE) got "
                    f"{ename(exc.errno)} (A3)")
    wr.send()
    r2.get()
    n = _last_usage(watcher, "a second reader started streaming")
    assert n == 2, f"CLIENT_USAGE with 2 streaming readers: expected count 2, got {n}"
    r1.dev.close()
    n = _last_usage(watcher, "one of two readers closed")
    assert n == 1, f"CLIENT_USAGE after one of two readers closed: expected count 1, got {n}"


@pytest.mark.rules("L2", "A7")
def test_l2_counts_clamped(cell, openers):
    """L2 applies in every cell, on both directions. OUTPUT: the first opener's REQBUFS. CAPTURE:
    with exclusive_caps=0 a reader claims with no writer (the first claim, or the kept count
    with keep_format=1); with exclusive_caps=1 CAPTURE is offered only while a writer holds
    the token (X1), so a writer streams first and the reader's claim is a later one (A3). The
    granted count must be in 1..max_buffers either way."""
    need_openers(cell, 2)
    mx = cell.max_buffers
    assert mx <= 32, f"max_buffers={mx}: the contract caps it at 32 (A7)"
    d = openers.fd()
    if not cell.keep_format:
        d.s_fmt(OUT, 160, 120)
    for req in (mx + 1, 33, 1 << 20, 0x7FFFFFFF, 0xFFFFFFFF):
        try:
            n = d.reqbufs(OUT, req)["count"]
        except OSError as exc:
            pytest.fail(f"REQBUFS(OUTPUT, {req}) with max_buffers={mx}: expected a clamped "
                        f"count, got {ename(exc.errno)}")
        assert 1 <= n <= mx, (f"REQBUFS(OUTPUT, {req}) with max_buffers={mx}: expected a count "
                              f"in 1..{mx}, got {n}")
    d.reqbufs(OUT, 0)
    if cell.exclusive_caps:
        how = "by a reader while a writer streams (exclusive_caps=1)"
        new_writer(cell, d, count=2)
    else:
        how = "by a reader with no writer (exclusive_caps=0)"
        d.close()
    r = openers.fd()
    try:
        n = r.reqbufs(CAP, 1000)["count"]
    except OSError as exc:
        pytest.fail(f"REQBUFS(CAPTURE, 1000) {how}, max_buffers={mx}: expected a clamped count, "
                    f"got {ename(exc.errno)}")
    assert 1 <= n <= mx, (f"REQBUFS(CAPTURE, 1000) {how}: expected a count in 1..{mx}, "
                          f"got {n}")



QUERYCAP_RACE_S = 2.0
BOTH = CAP_VIDEO_CAPTURE | CAP_VIDEO_OUTPUT


def _ask_querycap(dev, seconds: float) -> int:
    """In a child process: QUERYCAP on `dev` again and again; exit 0 if every answer showed
    exactly one of CAPTURE and OUTPUT, 3 if one did not, 1 on an error."""
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            caps = dev.device_caps() & BOTH
            if caps not in (CAP_VIDEO_CAPTURE, CAP_VIDEO_OUTPUT):
                code = 3
    except BaseException:
        code = 1
    os._exit(code)


@pytest.mark.rules("X1", "H1")
def test_x1_querycap_while_the_caps_flip(cell, openers):
    """With exclusive_caps=1 the caps flip with the write token (X1). Two openers asking
    QUERYCAP from two processes while a writer takes and gives back the token again and again
    must each get one direction, and the V4L2 core's check after vidioc_querycap() (the
    device_caps handed out equal vdev->device_caps, which vidioc_querycap() sets) must never
    warn: the H1 fixture fails the scenario on any kernel log splat. Seen on Debian sid's 7.2
    in the random walk (WARNING in v4l_querycap) before the series serialised QUERYCAP."""
    need_ec(cell, True, "X1")
    skip_if_keep(cell, "X1 (the caps flip with the write token)",
                 "keep_format=1 with a format set keeps CAPTURE (checked by F5)")
    need_openers(cell, 3)
    w = openers.fd()
    Writer(w, count=2, streamon=False)
    askers = [openers.fd(), openers.fd()]
    pids = [_ask_querycap(dev, QUERYCAP_RACE_S) for dev in askers]
    flips = 0
    end = time.monotonic() + QUERYCAP_RACE_S
    try:
        while time.monotonic() < end:
            w.streamon(OUT)
            w.streamoff(OUT)
            flips += 2
    finally:
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    assert 3 not in codes, ("QUERYCAP while the write token came and went: an answer showed "
                            "both CAPTURE and OUTPUT, or neither")
    assert codes == [0, 0], f"QUERYCAP in the child processes failed (exits {codes})"
    assert flips >= 20, f"the writer flipped the caps only {flips} times in {QUERYCAP_RACE_S} s"
