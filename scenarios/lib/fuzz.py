"""Seeded random walk of legal and illegal calls by one opener (runs in a worker process)."""

from __future__ import annotations

import os
import random
import time

from .v4l2 import (
    CAP,
    CID_KEEP_FORMAT,
    EVENT_PRI_CLIENT_USAGE,
    MMAP,
    OUT,
    RGB24,
    UYVY,
    YUYV,
    Device,
)

TYPES = [OUT, OUT, CAP, CAP, 0, 3, 9, 0xFFFFFFFF]
COUNTS = [0, 0, 1, 2, 3, 4, 8, 32, 33, 1000, 0xFFFFFFFF]
# sizes stay small: 4 openers x max_buffers x 8192x8192 would exhaust a 1 GB guest (OOM)
SIZES = [(160, 120), (160, 120), (320, 240), (1, 1), (0, 0), (640, 480), (161, 121)]
FORMATS = [YUYV, YUYV, RGB24, UYVY, 0, 0x12345678]


def walk(dev: Device, seed: int, duration: float) -> dict:
    rnd = random.Random(seed)
    stats: dict[str, list[int]] = {}
    end = time.monotonic() + duration
    path = dev.path

    def t():
        return rnd.choice(TYPES)

    def idx():
        return rnd.choice([0, 0, 1, 2, 3, 31, 32, 0xFFFFFFFF])

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
        dev.close()
        for _ in range(50):
            try:
                dev.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
                return
            except OSError:
                time.sleep(0.01)
        raise OSError(16, "reopen failed")

    actions = [
        ("s_fmt", lambda: dev.s_fmt(t(), *rnd.choice(SIZES), rnd.choice(FORMATS))),
        ("try_fmt", lambda: dev.try_fmt(t(), *rnd.choice(SIZES), rnd.choice(FORMATS))),
        ("g_fmt", lambda: dev.g_fmt(t())),
        ("reqbufs", lambda: dev.reqbufs(t(), rnd.choice(COUNTS), rnd.choice([MMAP] * 5 + [2, 4])),
         ),
        ("querybuf", lambda: dev.querybuf(t(), idx())),
        ("mmap", lambda: dev.mmap(rnd.choice([OUT, CAP]), idx())),
        ("munmap", lambda: dev.munmap_all()),
        ("qbuf", lambda: dev.qbuf(t(), idx(), rnd.choice([0, 1, 100, 38400, 0xFFFFFFFF]))),
        ("dqbuf", lambda: dev.dqbuf(t())),
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
    ]
    while time.monotonic() < end:
        name, fn = rnd.choice(actions)
        st = stats.setdefault(name, [0, 0])
        try:
            fn()
            st[0] += 1
        except OSError:
            st[1] += 1
        except (ValueError, IndexError, OverflowError):
            st[1] += 1
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
