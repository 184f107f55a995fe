"""C: close() and SIGKILL release everything; the device returns to idle."""

from __future__ import annotations

import os
import time

import pytest
from lib.common import (
    H2,
    W2,
    Reader,
    Writer,
    advertises_output_when_idle,
    caps_str,
    fmt_str,
    need_openers,
    new_writer_works,
    skip_if_keep,
    start_proc_writer,
    sysfs_attr,
    wait_until,
)
from lib.v4l2 import (
    CAP,
    CAP_VIDEO_CAPTURE,
    CAP_VIDEO_OUTPUT,
    OUT,
    REQ_DQBUF,
    YUYV,
    Device,
    V4L2Error,
    ename,
)

# A window is judged over this many frames that the writer publishes (not a fixed time: a
# window ends as soon as they are out, and a busy guest only makes it longer).
WINDOW_FRAMES = 40
# C1 judges that the other openers carry on: a reader gets at least this share of the frames
# its writer publishes meanwhile, counted by content (D1 judges the full rate, with readers that
# provably keep up).
MIN_SHARE = 0.75
# ... and that a writer keeps publishing: at least this share of the frames its pace asks for
# (the pump sleeps a period after each frame, so a busy TCG guest gets well below its pace).
# It bounds a window: WINDOW_FRAMES at this share of the pace.
MIN_PACE_SHARE = 0.3
# C1's writers: paced so that a window takes about a second and a half
C1_FPS = 30


def _window(w, fps: float) -> tuple[int, dict, float]:
    """Wait until writer pump `w`, paced at `fps`, has published WINDOW_FRAMES more frames, or
    for as long as that takes at MIN_PACE_SHARE of its pace. Returns its frame count at the
    start, its status at the end and the seconds waited."""
    t0 = time.monotonic()
    n0 = w.call("pump_status")["frames"]
    limit = WINDOW_FRAMES / (MIN_PACE_SHARE * fps)
    wait_until(lambda: w.call("pump_status")["frames"] - n0 >= WINDOW_FRAMES, limit, step=0.1)
    return n0, w.call("pump_status"), time.monotonic() - t0


def _keeps_publishing(w, fps: float, what: str) -> None:
    """Writer pump `w`, paced at `fps`, publishes WINDOW_FRAMES frames within the time they take
    at MIN_PACE_SHARE of its pace."""
    n0, st, secs = _window(w, fps)
    made = st["frames"] - n0
    assert made >= WINDOW_FRAMES and st["error"] is None, (
        f"{what}: expected {w.name} to keep publishing at {fps:g} fps, it published {made} "
        f"frames in {secs:.1f} s (expected {WINDOW_FRAMES}, at least {MIN_PACE_SHARE:.0%} of "
        f"its pace; error: {st['error']})")


def _carries_on(r, w, fps: float, what: str) -> None:
    """Reader pump `r` (or each of a list of them, over the same window) receives, whole and
    counted by content, at least MIN_SHARE of the frames writer pump `w` (paced at `fps`)
    publishes over a window (the writer numbers its frames 0, 1, ...)."""
    readers = r if isinstance(r, list) else [r]
    s0 = [len(x.call("pump_status")["seen"]) for x in readers]
    w0, ws, secs = _window(w, fps)
    # the window's last frame may still be on its way to a reader
    time.sleep(2.0 / fps)
    published = set(range(w0, ws["frames"]))
    for x, seen0 in zip(readers, s0, strict=True):
        rs = x.call("pump_status")
        new = rs["seen"][seen0:]
        got = {n for n, _seq, _used, whole in new if whole} & published
        torn = sum(1 for *_rest, whole in new if not whole)
        assert published and len(got) >= MIN_SHARE * len(published) and not torn \
            and rs["error"] is None and ws["error"] is None, (
                f"{what}: expected {x.name} to receive at least {MIN_SHARE:.0%} of the frames "
                f"{w.name} published in {secs:.1f} s, whole: it received {len(got)} of "
                f"{len(published)}, {torn} torn (reader error: {rs['error']}, writer error: "
                f"{ws['error']})")


@pytest.mark.rules("C1")
def test_c1_close_releases_and_others_carry_on(cell, openers):
    need_openers(cell, 2)
    w = openers.proc("writer")
    w.call("start_writer", "mmap", count=2, fps=C1_FPS, set_format=not cell.keep_format)
    r1 = openers.proc("reader1")
    r1.call("start_reader", "mmap", 2)
    _carries_on(r1, w, C1_FPS, "reader1 with the writer streaming")
    r1.stop()
    _keeps_publishing(w, C1_FPS, "writer after reader1 closed")
    r2 = openers.proc("reader2")
    try:
        r2.call("start_reader", "mmap", 2)
    except OSError as exc:
        pytest.fail(f"a new reader after reader1 closed: expected its claim to succeed (reader1's "
                    f"claim released), got {exc}")
    _carries_on(r2, w, C1_FPS, "reader2")
    w.stop()
    w2 = openers.proc("writer2")
    try:
        start_proc_writer(cell, w2, "mmap", count=2, fps=C1_FPS, set_format=False)
    except OSError as exc:
        pytest.fail(f"a new writer after the first writer closed: expected success, got {exc}")
    _carries_on(r2, w2, C1_FPS, "reader2 after the writer closed and a new one started")


@pytest.mark.rules("C1", "A3")
def test_c1_close_with_three_readers(cell, openers):
    need_openers(cell, 4)
    w = openers.proc("writer")
    w.call("start_writer", "mmap", count=2, fps=C1_FPS, set_format=not cell.keep_format)
    rs = []
    for i in range(3):
        r = openers.proc(f"reader{i}")
        try:
            r.call("start_reader", "mmap", 2)
        except OSError as exc:
            pytest.fail(f"C1 with 3 readers: reader{i} could not start while a writer and {i} "
                        f"reader(s) stream: {exc} (A3)")
        rs.append(r)
    rs[0].stop()
    _carries_on(rs[1:], w, C1_FPS, "after reader0 closed")
    w.kill()
    w2 = openers.proc("writer2")
    try:
        start_proc_writer(cell, w2, "mmap", count=2, fps=C1_FPS, set_format=False)
    except OSError as exc:
        pytest.fail(f"a new writer after the first writer was killed: expected success, got "
                    f"{exc}")
    _carries_on(rs[1:], w2, C1_FPS, "after the writer was killed and a new one started")


# victim, blocked-in, setup: how to block the victim in the named call
KILL_CASES = [
    ("writer", "DQBUF(OUTPUT)"),
    ("writer", "write() streaming"),
    ("writer", "mmap streaming"),
    ("reader", "DQBUF(CAPTURE)"),
    ("reader", "read()"),
    ("reader", "mmap streaming"),
]
KILL_IDS = ["writer-dqbuf", "writer-write", "writer-streaming", "reader-dqbuf", "reader-read",
            "reader-streaming"]


def _prove_blocked(v, call: str, what: str, why: str, request: int | None = None) -> None:
    """Fail unless victim `v` sleeps inside the module in `call` (its pending call): a module
    that does not block there cannot be judged on "SIGKILL while blocked", and must not pass
    it. `why` says why the call must wait (the rule that makes it block)."""
    st = v.blocked_in(call, request, timeout=5.0)
    if st["blocked"]:
        return
    if st["returned"]:
        try:
            got = v.result(5.0)
            got = (f"success (buffer {got['index']})" if isinstance(got, dict) else
                   f"success ({len(got)} bytes)" if isinstance(got, bytes) else "success")
        except V4L2Error as exc:
            got = ename(exc.errno)
        pytest.fail(f"{what}: expected the victim to wait in the module before the SIGKILL "
                    f"({why}), got the call returned at once with {got}")
    pytest.fail(f"{what}: expected the victim asleep inside v4l2loopback in that {call}() "
                f"before the SIGKILL ({why}), got after 5 s: {st['how']}")


@pytest.mark.rules("C2", "C1")
@pytest.mark.timeout(90)
@pytest.mark.parametrize("victim,state", KILL_CASES, ids=KILL_IDS)
def test_c2_sigkill(cell, openers, victim, state):
    """SIGKILL while blocked (DQBUF, read()) or streaming (the victim's pump thread running):
    first proved from /proc (blocked: state S/D in that very system call on the victim's
    opener, kernel stack in the module; streaming: its frame count grows), then the kill."""
    need_openers(cell, 2)
    other = None
    what = f"SIGKILL of a {victim} in {state}"
    if victim == "writer":
        v = openers.proc("victim-writer", flags=os.O_RDWR)
        if state == "DQBUF(OUTPUT)":
            v.call("s_fmt", OUT, 160, 120) if not cell.keep_format else None
            n = v.call("reqbufs", OUT, 2)["count"]
            for i in range(n):
                v.call("mmap", OUT, i)
            v.call("streamon", OUT)
            v.send("dqbuf", OUT)
            _prove_blocked(v, "ioctl", what, "blocking DQBUF(OUTPUT) with no buffer queued by "
                           "the application waits, S6", REQ_DQBUF)
        elif state == "write() streaming":
            v.call("start_writer", "write", fps=50, set_format=not cell.keep_format)
        else:
            v.call("start_writer", "mmap", count=2, fps=50, set_format=not cell.keep_format)
        other = openers.proc("reader")
        try:
            other.call("start_reader", "mmap", 2)
        except OSError:
            other.stop()
            other = None
        if state != "DQBUF(OUTPUT)":
            _keeps_publishing(v, 50, f"{what}, before the kill")
    else:
        w = openers.proc("writer")
        v = openers.proc("victim-reader", flags=os.O_RDWR)
        # a writer that streams but sends no frame: the reader waits
        fmt = w.call("s_fmt", OUT, 160, 120) if not cell.keep_format else w.call("g_fmt", OUT)
        if state != "mmap streaming":
            w.call("reqbufs", OUT, 2)
            w.call("streamon", OUT)
        if state == "DQBUF(CAPTURE)":
            v.call("setup_mmap", CAP, 2)
            v.call("streamon", CAP)
            v.send("dqbuf", CAP)
            _prove_blocked(v, "ioctl", what, "blocking DQBUF(CAPTURE) with no frame published "
                           "waits for the first frame, S3", REQ_DQBUF)
        elif state == "read()":
            v.send("read", fmt["sizeimage"])
            _prove_blocked(v, "read", what, "a blocking read() with no frame published waits "
                           "for one, W3")
        else:
            w.call("start_writer", "mmap", count=2, fps=50, set_format=False)
            v.call("start_reader", "mmap", 2)
            _carries_on(v, w, 50, f"{what}, before the kill")
        other = w
    gone = v.kill()
    assert gone, f"{what}: expected the process to exit within 5 s, got it stuck in the kernel"
    if other is not None:
        other.stop()
    new_writer_works(cell, openers, what)
    openers.close_all()
    advertises_output_when_idle(cell, what)


@pytest.mark.rules("C3")
def test_c3_idle_after_last_close(cell, openers):
    skip_if_keep(cell, "C3", "keep_format=1 keeps the device pinned after the last close")
    need_openers(cell, 2)
    wd = openers.fd()
    wr = Writer(wd, count=2)
    r = Reader(openers.fd())
    wr.send()
    r.get()
    openers.close_all()
    with Device(cell.device) as d:
        if cell.exclusive_caps:
            caps = d.device_caps()
            assert caps & CAP_VIDEO_OUTPUT and not caps & CAP_VIDEO_CAPTURE, (
                f"exclusive_caps=1 after the last close: expected device_caps OUTPUT without "
                f"CAPTURE, got {caps_str(caps)}")
        state = sysfs_attr(cell, "state")
        if state is not None:
            assert state == "output", (f"sysfs state after the last close: expected 'output', "
                                       f"got {state!r}")
        got = d.s_fmt(OUT, W2, H2, YUYV)
        assert (got["width"], got["height"]) == (W2, H2), (
            f"S_FMT(OUTPUT, {W2}x{H2}) after the last close: expected it to be taken, got "
            f"{fmt_str(got)}")
        n = d.reqbufs(OUT, 1)["count"]
        assert n == 1, f"REQBUFS(OUTPUT, 1) after the last close: expected 1, got {n}"
        d.reqbufs(OUT, 0)
