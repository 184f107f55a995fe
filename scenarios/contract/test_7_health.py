"""H: kernel health (log splats around every scenario, rmmod while open, leaks)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from lib.common import Reader, Writer, kept_capture_only, need_openers, new_writer
from lib.v4l2 import CAP, OUT, Device, err

KMEMLEAK = Path("/sys/kernel/debug/kmemleak")


@pytest.mark.rules("H1")
def test_h1_lifecycle_leaves_clean_log(cell, openers, request):
    """A full writer/reader lifecycle; the autouse kernel_health fixture judges the log."""
    need_openers(cell, 2)
    assert os.path.exists("/dev/kmsg"), "H1 needs /dev/kmsg to read the kernel log"
    for _ in range(2):
        w, rd = openers.fd(), openers.fd()
        if kept_capture_only(cell, w):
            # the second round with exclusive_caps=1 + keep_format=1: the kept format shows
            # CAPTURE only (X1), the writer comes back through write() (W1)
            wr = new_writer(cell, w, count=2)
        else:
            wr = Writer(w, count=2)
        r = Reader(rd)
        for _ in range(3):
            f = wr.send()
            assert r.get_frame(f["frame"])["frame"] == f["frame"]
        rd.streamoff(CAP)
        if isinstance(wr, Writer):
            w.streamoff(OUT)
        rd.close()
        w.close()


@pytest.mark.rules("H2")
def test_h2_rmmod_while_open_is_refused(cell, openers):
    d = openers.fd()
    try:  # a streaming writer if the module allows one; H2 is about the open node either way
        wr = Writer(d, count=2, set_format=not cell.keep_format)
        wr.send()
    except (OSError, AssertionError):
        wr = None
    p = subprocess.run(["rmmod", "v4l2loopback"], capture_output=True, text=True, timeout=30)
    loaded = Path("/sys/module/v4l2loopback").exists()
    assert loaded and p.returncode != 0, (
        f"rmmod v4l2loopback while a writer has the device open: expected it refused (EBUSY, "
        f"module in use), got exit {p.returncode}, module {'still' if loaded else 'NOT'} loaded: "
        f"{p.stderr.strip()}")
    assert "in use" in p.stderr or "busy" in p.stderr.lower(), (
        f"rmmod while open: expected 'in use'/'busy', got {p.stderr.strip()!r}")
    try:
        d.querycap()
        if wr is not None:
            wr.send()
    except OSError as exc:
        pytest.fail(f"device after a refused rmmod: expected it to keep working, got {exc}")


def _shrink_slabs() -> None:
    """Give freed slab memory back before a reading: per-CPU partial slabs, and on a KASAN
    kernel its quarantine of freed objects (megabytes after 1,000 cycles: a leak that is not
    one, seen on debian-6.12-debug)."""
    for shrink in Path("/sys/kernel/slab").glob("*/shrink"):
        try:
            shrink.write_text("1\n")
        except OSError:
            pass  # a cache that cannot shrink: the reading is only less tight


def _meminfo() -> dict[str, int]:
    _shrink_slabs()
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = int(v.split()[0])
    return out


def _cycle(path: str, keep: bool, i: int) -> int:
    """One open/S_FMT/REQBUFS/mmap/STREAMON/close round; errors are tolerated (other rules
    judge them); returns how many buffers were mapped."""
    mapped = 0
    with Device(path) as d:
        if not keep:
            err(d.s_fmt, OUT, 160 + 16 * (i % 4), 120)
        try:
            n = d.reqbufs(OUT, 2)["count"]
            for j in range(n):
                d.mmap(OUT, j)
                mapped += 1
            d.streamon(OUT)
            d.put_frame(0, i, 64)
            d.streamoff(OUT)
        except OSError:
            pass
        d.munmap_all()
        err(d.reqbufs, OUT, 0)
    with Device(path) as r:
        try:
            r.setup_mmap(CAP, 2, queue=False)
            mapped += 1
        except OSError:
            pass
        # closed with buffers mapped and no REQBUFS(0): Firefox does this
    return mapped


LEAK_TOLERANCE_KB = 1024  # over CYCLES cycles: < ~1 kB per cycle
CYCLES = 1000


@pytest.mark.rules("H3")
@pytest.mark.timeout(180)
def test_h3_no_leak_over_cycles(cell, openers):
    keep = bool(cell.keep_format)
    for i in range(30):  # warm-up: caches, first allocations
        _cycle(cell.device, keep, i)
    before = _meminfo()
    t0 = time.monotonic()
    mapped = 0
    for i in range(CYCLES):
        mapped += _cycle(cell.device, keep, i)
    dt = time.monotonic() - t0
    time.sleep(0.5)
    after = _meminfo()
    grew = {k: after[k] - before[k] for k in ("SUnreclaim", "VmallocUsed", "Slab")
            if k in before and k in after}
    total = grew.get("SUnreclaim", 0) + grew.get("VmallocUsed", 0)
    assert mapped >= CYCLES, (f"{CYCLES} cycles mapped only {mapped} buffers: the cycle does not "
                              f"exercise allocation on this module (see the A/S rules)")
    assert total < LEAK_TOLERANCE_KB, (
        f"{CYCLES} open/S_FMT/REQBUFS/mmap/STREAMON/close cycles ({dt:.1f} s): expected "
        f"SUnreclaim+VmallocUsed to grow by less than {LEAK_TOLERANCE_KB} kB, grew {total} kB "
        f"({grew})")


@pytest.mark.rules("H3")
@pytest.mark.needs_kernel_config("CONFIG_DEBUG_KMEMLEAK")
def test_h3_kmemleak_clean(cell, openers):
    if not KMEMLEAK.exists():
        pytest.skip("/sys/kernel/debug/kmemleak is absent: this kernel has no kmemleak "
                    "(CONFIG_DEBUG_KMEMLEAK off, as in Debian), or debugfs is not mounted")
    KMEMLEAK.write_text("clear\n")
    for i in range(50):
        _cycle(cell.device, bool(cell.keep_format), i)
    KMEMLEAK.write_text("scan\n")
    time.sleep(1)
    KMEMLEAK.write_text("scan\n")
    report = KMEMLEAK.read_text()
    ours = [b for b in report.split("unreferenced object") if "v4l2loopback" in b]
    assert not ours, (f"kmemleak after 50 cycles: expected no leak in v4l2loopback, got "
                      f"{len(ours)}:\n{ours[0][:1500]}")
