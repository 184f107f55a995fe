"""Seeded random walk of legal and illegal calls by one opener (runs in a worker process)."""

from __future__ import annotations

import errno
import mmap
import os
import random
import threading
import time

from .v4l2 import (
    CAP,
    CID_KEEP_FORMAT,
    EVENT_PRI_CLIENT_USAGE,
    MMAP,
    OUT,
    POLLIN,
    RGB24,
    UYVY,
    YUYV,
    Device,
    frame_bytes,
)

TYPES = [OUT, OUT, CAP, CAP, 0, 3, 9, 0xFFFFFFFF]
COUNTS = [0, 0, 1, 2, 3, 4, 8, 32, 33, 1000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
# sizes stay small: 4 openers x max_buffers x 8192x8192 would exhaust a 1 GB guest (OOM)
SIZES = [(160, 120), (160, 120), (320, 240), (1, 1), (0, 0), (640, 480), (161, 121)]
FORMATS = [YUYV, YUYV, RGB24, UYVY, 0, 0x12345678]


def walk(dev: Device, seed: int, duration: float, max_buffers: int = 2) -> dict:
    """One opener's seeded random walk for `duration` seconds: single legal and illegal calls
    (counts at the edges: 0, 1, max_buffers, max_buffers+1, 0x7fffffff, 0xffffffff; indexes
    at, just past and far past the granted count), legal sequences (an mmap writer or reader
    streaming a few frames, write()/read() of a few frames), and races inside the opener: a
    thread that read()s/write()s, or mmaps/munmaps, while the walk goes on with S_FMT,
    REQBUFS (0 among them), STREAMOFF and close/reopen. Several walkers run at once in their
    own processes, so each one's calls also race the others'. The sequence of calls is the
    seed's; only the interleaving with the threads and the other walkers is the machine's.
    Returns {action: [succeeded, failed]}."""
    rnd = random.Random(seed)
    stats: dict[str, list[int]] = {}
    end = time.monotonic() + duration
    path = dev.path
    mx = max_buffers
    counts = COUNTS + [mx, mx + 1]
    granted = {OUT: 0, CAP: 0}
    bg: dict = {"thread": None, "stop": threading.Event()}

    def t():
        return rnd.choice(TYPES)

    def idx():
        n = granted.get(OUT if rnd.random() < 0.5 else CAP, 0)
        return rnd.choice([0, 0, 1, 2, 3, n, n + 1, max(n - 1, 0), mx, mx + 1, 31, 32, 33,
                           1000, 0x80000000, 0xFFFFFFFF])

    def act_reqbufs():
        bt = t()
        r = dev.reqbufs(bt, rnd.choice(counts), rnd.choice([MMAP] * 5 + [2, 4]))
        granted[bt] = r["count"]

    def act_write_map():
        maps = list(dev.maps.values())
        if maps:
            m = rnd.choice(maps)
            if m.closed or not len(m):
                return
            try:
                m[0:8] = os.urandom(8)
            except TypeError:
                pass  # read-only capture mapping

    def act_reopen():
        stop_bg()
        dev.close()
        granted.update({OUT: 0, CAP: 0})
        for _ in range(50):
            try:
                dev.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
                return
            except OSError:
                time.sleep(0.01)
        raise OSError(16, "reopen failed")

    def seq_mmap_writer():
        w, h = rnd.choice(SIZES[:3])
        dev.s_fmt(OUT, w, h, YUYV)
        n = dev.reqbufs(OUT, rnd.choice([1, 2, mx, mx + 1]))["count"]
        granted[OUT] = n
        for i in range(n):
            dev.mmap(OUT, i)
        dev.streamon(OUT)
        size = dev.g_fmt(OUT)["sizeimage"]
        free = list(range(n))
        for k in range(rnd.randint(1, 6)):
            if not free:
                free.append(dev.wait_dqbuf(OUT, 0.3)["index"])
            dev.put_frame(free.pop(0), k, size)

    def seq_mmap_reader():
        n = dev.setup_mmap(CAP, rnd.choice([1, 2, mx, mx + 1, 0xFFFFFFFF]))
        granted[CAP] = n
        dev.streamon(CAP)
        for _ in range(rnd.randint(1, 4)):
            b = dev.wait_dqbuf(CAP, 0.2)
            dev.qbuf(CAP, b["index"])

    def seq_write():
        size = dev.g_fmt(OUT)["sizeimage"]
        for k in range(rnd.randint(1, 6)):
            dev.write(frame_bytes(k, size))

    def seq_read():
        size = dev.g_fmt(CAP)["sizeimage"]
        for _ in range(rnd.randint(1, 4)):
            dev.wait_read(size, 0.2)

    def stop_bg():
        th = bg["thread"]
        if th is not None:
            bg["stop"].set()
            th.join(5)
            bg["thread"] = None

    def start_bg(kind: str):
        """A thread on this opener, racing what the walk does next on it."""
        stop_bg()
        stop = bg["stop"] = threading.Event()
        brnd = random.Random(rnd.random())
        span = time.monotonic() + brnd.uniform(0.1, 0.5)

        def run():
            while not stop.is_set() and time.monotonic() < span:
                try:
                    if kind == "rw":
                        if brnd.random() < 0.5:
                            dev.write(b"\x80" * brnd.choice([38400, 153600]))
                        else:
                            dev.read(1 << 20)
                    else:  # map: QUERYBUF + mmap + touch + munmap, racing REQBUFS
                        bt = brnd.choice([OUT, CAP])
                        q = dev.querybuf(bt, brnd.randrange(0, mx + 1))
                        m = mmap.mmap(dev.fd, q["length"], mmap.MAP_SHARED, mmap.PROT_READ,
                                      offset=q["offset"])
                        _ = m[0]
                        m.close()
                except (OSError, ValueError, OverflowError):
                    time.sleep(0.002)

        th = bg["thread"] = threading.Thread(target=run, daemon=True)
        th.start()

    actions = [
        ("s_fmt", lambda: dev.s_fmt(t(), *rnd.choice(SIZES), rnd.choice(FORMATS))),
        ("try_fmt", lambda: dev.try_fmt(t(), *rnd.choice(SIZES), rnd.choice(FORMATS))),
        ("g_fmt", lambda: dev.g_fmt(t())),
        ("reqbufs", act_reqbufs),
        ("reqbufs0", lambda: dev.reqbufs(rnd.choice([OUT, CAP]), 0)),
        ("querybuf", lambda: dev.querybuf(t(), idx())),
        ("mmap", lambda: dev.mmap(rnd.choice([OUT, CAP]), idx())),
        ("munmap", lambda: dev.munmap_all()),
        ("qbuf", lambda: dev.qbuf(t(), idx(), rnd.choice([0, 1, 100, 38400, 0xFFFFFFFF]))),
        ("dqbuf", lambda: dev.dqbuf(t(), index=idx())),
        ("streamon", lambda: dev.streamon(t())),
        ("streamoff", lambda: dev.streamoff(t())),
        ("read", lambda: dev.read(rnd.choice([0, 1, 38400, 1 << 20]))),
        ("write", lambda: dev.write(b"\x80" * rnd.choice([0, 1, 38400, 38401]))),
        ("poll", lambda: dev.poll(timeout=0.01)),
        ("querycap", lambda: dev.querycap()),
        ("subscribe", lambda: dev.subscribe(EVENT_PRI_CLIENT_USAGE)),
        ("dqevent", lambda: dev.dqevent()),
        ("g_ctrl", lambda: dev.g_ctrl(CID_KEEP_FORMAT)),
        ("s_ctrl_bad", lambda: dev.s_ctrl(0x00980900 + rnd.randrange(0, 0xF000), 1)),
        ("s_parm", lambda: dev.s_parm(t(), rnd.choice([0, 1]), rnd.choice([0, 30, 1000]))),
        ("touch_map", act_write_map),
        ("reopen", act_reopen),
        # legal sequences, twice as likely as a single call
        ("seq_mmap_writer", seq_mmap_writer), ("seq_mmap_writer", seq_mmap_writer),
        ("seq_mmap_reader", seq_mmap_reader), ("seq_mmap_reader", seq_mmap_reader),
        ("seq_write", seq_write), ("seq_write", seq_write),
        ("seq_read", seq_read), ("seq_read", seq_read),
        # a thread on this opener races the next calls
        ("bg_read_write", lambda: start_bg("rw")),
        ("bg_mmap_munmap", lambda: start_bg("map")),
    ]
    try:
        while time.monotonic() < end:
            name, fn = rnd.choice(actions)
            st = stats.setdefault(name, [0, 0])
            try:
                fn()
                st[0] += 1
            except OSError:
                st[1] += 1
            except (ValueError, IndexError, OverflowError, KeyError):
                st[1] += 1
    finally:
        stop_bg()
    dev.close()
    return stats


def read_loop(dev: Device, duration: float) -> dict:
    """read() frames as fast as they come (non-blocking + poll) for `duration` seconds."""
    got = errs = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        try:
            dev.read(1 << 20)
            got += 1
        except OSError:
            errs += 1
            dev.poll(timeout=0.005)
    return {"frames": got, "errors": errs}


def resize_write_loop(dev: Device, duration: float) -> dict:
    """A writer that keeps changing the frame size between write()s (each size change makes
    some modules reallocate the image while readers are inside read())."""
    sizes = [(160, 120), (320, 240), (176, 144), (640, 480)]
    n = ok = errs = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        w, h = sizes[n % len(sizes)]
        n += 1
        try:
            f = dev.s_fmt(OUT, w, h, YUYV)
            dev.write(b"\x80" * f["sizeimage"])
            ok += 1
        except OSError:
            errs += 1
    return {"writes": ok, "errors": errs}


# -- races between processes (scenarios/contract/test_10_races.py and the walk) ----------------
# Each runs in a worker process for `duration` seconds and returns counts: "ok" per call, the
# errors per call and errno name, and "bad": what the contract does not allow, in words.

def _tally(res: dict, call: str, code: int) -> None:
    if code:
        key = f"{call} {errno.errorcode.get(code, code)}"
        res["errors"][key] = res["errors"].get(key, 0) + 1
    else:
        res["ok"][call] = res["ok"].get(call, 0) + 1


def _result() -> dict:
    return {"ok": {}, "errors": {}, "bad": []}


def rw_start(dev: Device, how: str = "s_fmt") -> dict:
    """The writer of rw_loop takes its claim and the write token with one write() (W1): of
    160x120 YUYV set with S_FMT(OUTPUT) (how="s_fmt"), or of the kept format as G_FMT(OUTPUT)
    or G_FMT(CAPTURE) shows it (keep_format=1). Returns the format."""
    if how == "s_fmt":
        fmt = dev.s_fmt(OUT, 160, 120, YUYV)
    else:
        fmt = dev.g_fmt(OUT if how == "g_fmt_out" else CAP)
    dev.write(frame_bytes(0, fmt["sizeimage"]))
    return fmt


def rw_loop(dev: Device, duration: float, size: int) -> dict:
    """read() and write() in one process: write() of `size`-byte frames on this worker's opener
    (set up by rw_start) and read() on a second opener of the same process in a thread (W3),
    as fast as they go, for `duration` seconds. bad: the holder's write() refused or short
    (W1/W2: its stream goes on whatever the others do), a read() that returns a partial frame
    or fails otherwise than EAGAIN, or no frame read at all."""
    res = _result()
    stop = threading.Event()
    reader = {"frames": 0, "errors": {}, "short": 0}

    def read_thread():
        try:
            rd = Device(dev.path)
        except OSError as exc:
            reader["errors"][f"open {errno.errorcode.get(exc.errno)}"] = 1
            return
        try:
            while not stop.is_set():
                try:
                    got = rd.read(size)
                except OSError as exc:
                    k = errno.errorcode.get(exc.errno, str(exc.errno))
                    reader["errors"][k] = reader["errors"].get(k, 0) + 1
                    rd.poll(POLLIN, 0.02)
                    continue
                reader["frames"] += 1
                if len(got) != size:
                    reader["short"] += 1
        finally:
            rd.close()

    t = threading.Thread(target=read_thread, daemon=True)
    t.start()
    n = 1
    end = time.monotonic() + duration
    while time.monotonic() < end:
        try:
            w = dev.write(frame_bytes(n, size))
            _tally(res, "write", 0)
            if w != size:
                res["bad"].append(f"write() of {size} bytes by the write token's holder wrote {w}")
        except OSError as exc:
            _tally(res, "write", exc.errno)
            if exc.errno != errno.EAGAIN:
                res["bad"].append(f"write() of frame {n} by the write token's holder: "
                                  f"{errno.errorcode.get(exc.errno, exc.errno)} (W1/W2: its "
                                  f"stream goes on)")
        n += 1
        time.sleep(0.005)
    stop.set()
    t.join(5)
    if t.is_alive():
        res["bad"].append("the read() thread did not return within 5 s of the end (blocked?)")
    res["reads"] = reader
    odd = {k: v for k, v in reader["errors"].items() if k != "EAGAIN"}
    if odd:
        res["bad"].append(f"read() by a second opener of the writer's process: errors {odd} "
                          f"(W3: a frame or EAGAIN)")
    if reader["short"]:
        res["bad"].append(f"read({size}) returned a partial frame {reader['short']} times")
    if not reader["frames"]:
        res["bad"].append(f"read() by a second opener of the writer's process: no frame in "
                          f"{duration:.1f} s of writes")
    res["bad"] = res["bad"][:5]
    return res


def disturb_loop(dev: Device, duration: float, kind: str, seed: int = 1,
                 pinned: tuple[int, int] | None = None) -> dict:
    """Another opener (its own process) disturbing a reader and writer for `duration` s:
      s_fmt     S_FMT on both directions with other sizes: the device is pinned by the writer's
                claim, so a success must answer the pinned format (`pinned`, width x height),
                and EBUSY is wrong (F2);
                EINVAL is what a direction the node does not offer now gets (X1)
      reqbufs0  REQBUFS(CAPTURE, 1..4) + mmap + munmap + REQBUFS(0), over and over (A3, A5)
      streamoff an mmap reader: STREAMON/DQBUF/QBUF/STREAMOFF(CAPTURE), and STREAMOFF(OUTPUT)
                without the write token (S4: it touches nobody else)
      close     read() once, or REQBUFS(CAPTURE)+mmap, then close() without releasing, and
                open again (C1)"""
    rnd = random.Random(seed)
    res = _result()
    end = time.monotonic() + duration
    sizes = [(320, 240), (176, 144), (640, 480), (160, 120)]
    while time.monotonic() < end:
        try:
            if kind == "s_fmt":
                bt = rnd.choice([OUT, CAP])
                try:
                    f = dev.s_fmt(bt, *rnd.choice(sizes))
                    got = (f["width"], f["height"])
                    if pinned and got != tuple(pinned):
                        res["bad"].append(f"S_FMT answered {got[0]}x{got[1]}, the device is "
                                          f"pinned at {pinned[0]}x{pinned[1]} (F2)")
                    _tally(res, "S_FMT", 0)
                except OSError as exc:
                    _tally(res, "S_FMT", exc.errno)
                    if exc.errno == errno.EBUSY:
                        res["bad"].append("S_FMT by an opener without a claim: EBUSY (F2)")
            elif kind == "reqbufs0":
                n = dev.reqbufs(CAP, rnd.randint(1, 4))["count"]
                _tally(res, "REQBUFS(CAPTURE, n)", 0)
                if n and rnd.random() < 0.5:
                    dev.mmap(CAP, 0)
                    dev.munmap_all()
                r = dev.reqbufs(CAP, 0)["count"]
                _tally(res, "REQBUFS(CAPTURE, 0)", 0)
                if r != 0:
                    res["bad"].append(f"REQBUFS(CAPTURE, 0) answered count {r} (A5)")
            elif kind == "streamoff":
                if not dev.maps:
                    dev.setup_mmap(CAP, 2)
                dev.streamon(CAP)
                for _ in range(rnd.randint(0, 3)):
                    try:
                        b = dev.dqbuf(CAP)
                        dev.qbuf(CAP, b["index"])
                    except OSError:
                        time.sleep(0.005)
                dev.streamoff(CAP)
                _tally(res, "STREAMON/STREAMOFF(CAPTURE)", 0)
                for i in range(len(dev.maps)):
                    dev.qbuf(CAP, i)  # S4 handed them back: queue them again
                try:
                    dev.streamoff(OUT)
                    _tally(res, "STREAMOFF(OUTPUT) without the token", 0)
                except OSError as exc:
                    _tally(res, "STREAMOFF(OUTPUT) without the token", exc.errno)
            elif kind == "close":
                if dev.fd < 0:
                    dev.fd = os.open(dev.path, os.O_RDWR | os.O_NONBLOCK)
                if rnd.random() < 0.5:
                    try:
                        dev.read(1 << 20)
                    except OSError as exc:
                        if exc.errno != errno.EAGAIN:
                            raise
                elif dev.reqbufs(CAP, 2)["count"]:
                    dev.mmap(CAP, 0)
                dev.close()  # with the claim (and a mapping) still held: C1
                _tally(res, "claim+close+open", 0)
            else:
                raise ValueError(kind)
        except OSError as exc:
            _tally(res, kind, exc.errno)
            if exc.errno not in (errno.EAGAIN, errno.EINVAL):
                res["bad"].append(f"{kind}: {exc}")
    res["bad"] = res["bad"][:5]
    return res


def map_vs_reqbufs(dev: Device, duration: float, bt: int, max_buffers: int,
                   seed: int = 1) -> dict:
    """One opener, two threads: one mmaps, touches and munmaps its buffers (QUERYBUF + mmap
    by offset) while the other asks REQBUFS with counts 0..max_buffers+1. A4: reallocation
    while a buffer is mapped is EBUSY; a mapping that mmap() returned stays usable until
    munmap (touching it must not fault). bad: any other REQBUFS error, QUERYBUF/mmap errors
    other than EINVAL (a buffer gone between the two calls), a REQBUFS(0) with count != 0.
    The opener has claimed bt already (its format set, unless kept)."""
    rnd = random.Random(seed)
    res = _result()
    stop = threading.Event()
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if bt == OUT else 0)

    def mapper():
        while not stop.is_set():
            i = rnd.randrange(0, max_buffers + 1)
            try:
                q = dev.querybuf(bt, i)
            except OSError as exc:
                _tally(res, "QUERYBUF", exc.errno)
                if exc.errno != errno.EINVAL:
                    res["bad"].append(f"QUERYBUF({i}): {exc}")
                continue
            try:
                m = mmap.mmap(dev.fd, q["length"], mmap.MAP_SHARED, prot, offset=q["offset"])
            except OSError as exc:
                _tally(res, "mmap", exc.errno)
                if exc.errno != errno.EINVAL:
                    res["bad"].append(f"mmap of buffer {i}: {exc}")
                continue
            _tally(res, "mmap", 0)
            _ = m[0] + m[len(m) - 1]
            if bt == OUT:
                m[0] = 1
            time.sleep(rnd.random() * 0.01)
            m.close()

    t = threading.Thread(target=mapper, daemon=True)
    t.start()
    end = time.monotonic() + duration
    while time.monotonic() < end:
        req = rnd.choice([0, 1, 2, max_buffers, max_buffers + 1])
        try:
            n = dev.reqbufs(bt, req)["count"]
            _tally(res, f"REQBUFS({req})", 0)
            if req == 0 and n != 0:
                res["bad"].append(f"REQBUFS(0) answered count {n} (A5)")
            if req and not 1 <= n <= max_buffers:
                res["bad"].append(f"REQBUFS({req}) granted {n}, not in 1..{max_buffers} (A7)")
        except OSError as exc:
            _tally(res, f"REQBUFS({req})", exc.errno)
            if exc.errno != errno.EBUSY:
                res["bad"].append(f"REQBUFS({req}) while another thread maps: {exc}")
        time.sleep(rnd.random() * 0.01)
    stop.set()
    t.join(5)
    if t.is_alive():
        res["bad"].append("the mmap thread did not return within 5 s of the end")
    try:
        n = dev.reqbufs(bt, 0)["count"]
        if n != 0:
            res["bad"].append(f"REQBUFS(0) at the end, nothing mapped: count {n} (A5)")
    except OSError as exc:
        res["bad"].append(f"REQBUFS(0) at the end, nothing mapped: {exc} (A5)")
    res["bad"] = res["bad"][:5]
    return res


def claim_loop(dev, duration: float, bt: int, kept_format_hides_output: bool = False) -> dict:
    """REQBUFS(bt, 1..4) then REQBUFS(bt, 0), over and over (a later claim gets the pinned
    count, A3; REQBUFS(0) answers count 0, A5). kept_format_hides_output: exclusive_caps=1
    with keep_format=1 and bt OUTPUT, where once the other opener's claim has pinned (and so
    kept) the format, this opener, which did not set it, sees a CAPTURE-only node (X1): its
    OUTPUT REQBUFS is EINVAL then, counted as that refusal."""
    res = _result()
    end = time.monotonic() + duration
    n = 0

    def refused_by_x1(exc: OSError) -> bool:
        return kept_format_hides_output and exc.errno == errno.EINVAL

    while time.monotonic() < end:
        n += 1
        try:
            dev.reqbufs(bt, 1 + n % 4)
            _tally(res, "REQBUFS(n)", 0)
        except OSError as exc:
            _tally(res, "REQBUFS(n)", exc.errno)
            if exc.errno != errno.EBUSY and not refused_by_x1(exc):  # EBUSY: the sole
                # claimant with a buffer mapped (A4)
                res["bad"].append(f"REQBUFS({1 + n % 4}) by a second claimant: {exc} (A3)")
        try:
            r = dev.reqbufs(bt, 0)["count"]
            _tally(res, "REQBUFS(0)", 0)
            if r:
                res["bad"].append(f"REQBUFS(0) answered count {r} (A5)")
        except OSError as exc:
            _tally(res, "REQBUFS(0)", exc.errno)
            if not refused_by_x1(exc):
                res["bad"].append(f"REQBUFS(0) with nothing mapped: {exc} (A5)")
        time.sleep(0.003)
    res["bad"] = res["bad"][:5]
    return res
