"""Regressions, kernel health: warnings and oopses that clients' probes set off (upstream
reports; reports.toml says which). The kernel log around every scenario is judged by the
autouse kernel_health fixture (H1); these scenarios make the probes the reports describe."""

from __future__ import annotations

import os
import re

import pytest
from lib.common import caps_str, need_openers, start_proc_writer
from lib.v4l2 import (
    CAP,
    CAP_VIDEO_CAPTURE,
    CAP_VIDEO_OUTPUT,
    OUT,
    Device,
    V4L2Error,
    fourcc,
)
from regress import (
    FPS,
    MmapCapture,
    ObsCamera,
    chrome_lists,
    run_program,
)

from loopqual.guest.programs.infra import need_program

BOTH = CAP_VIDEO_CAPTURE | CAP_VIDEO_OUTPUT


def _caps_consistent(cell, caps: int, what: str) -> None:
    """X1: an exclusive_caps=1 node shows exactly one direction."""
    if cell.exclusive_caps:
        assert caps & BOTH in (CAP_VIDEO_CAPTURE, CAP_VIDEO_OUTPUT), (
            f"{what}: exclusive_caps=1 node shows {caps_str(caps)}: expected exactly one direction")
    else:
        assert caps & BOTH == BOTH, f"{what}: exclusive_caps=0 node shows {caps_str(caps)} (X3)"


def _v4l2ctl_all(cell, what: str) -> None:
    rc, out = run_program(cell, ["v4l2-ctl", "-d", cell.device, "--all"], "v4l2-ctl-all")
    assert rc is not None and "Driver name" in out, f"v4l2-ctl --all ({what}): exit {rc}: {out!r}"
    m = re.search(r"Device Caps\s*:\s*(0x[0-9a-fA-F]+)", out)
    assert m, f"v4l2-ctl --all ({what}) printed no Device Caps: {out!r}"
    _caps_consistent(cell, int(m[1], 16), f"v4l2-ctl --all ({what})")


@pytest.mark.upstream_report(257)
@pytest.mark.programs("v4l2-ctl")
@pytest.mark.rules("H1", "X1")
@pytest.mark.timeout(180)
def test_issue_257_querycap_without_kernel_warning(cell, openers):
    """Loading the module with exclusive_caps=1 flooded the journal with call traces: "WARNING
    ... at drivers/media/v4l2-core/v4l2-ioctl.c v4l_querycap" at every QUERYCAP.
    https://github.com/v4l2loopback/v4l2loopback/issues/257
    Judged: `v4l2-ctl --all` (QUERYCAP and the rest) on the idle node, while a writer streams
    and after it left: every answer shows one direction with exclusive_caps=1 (both with 0),
    and the kernel log stays free of warnings (H1, the autouse fixture)."""
    need_program("v4l2-ctl")
    _v4l2ctl_all(cell, "idle node")
    w = openers.proc("writer")
    start_proc_writer(cell, w, "mmap", count=2, fps=FPS)
    _v4l2ctl_all(cell, "writer streaming")
    w.stop()
    _v4l2ctl_all(cell, "after the writer left")


@pytest.mark.upstream_report(276)
@pytest.mark.rules("H1", "X1", "K4")
@pytest.mark.timeout(120)
def test_issue_276_browser_probes_without_kernel_warning(cell, openers):
    """With OBS's v4l2sink writing, Chromium and Firefox could not open the camera, and each
    of their attempts wrote "WARNING ... v4l_querycap" traces to the kernel log (VLC opened it,
    with the same traces).
    https://github.com/v4l2loopback/v4l2loopback/issues/276
    Judged: a write() writer (OBS's calls) streaming while the browsers probe the node ten times
    each (Chromium: O_RDONLY, QUERYCAP, ENUM_FMT/FRAMESIZES/FRAMEINTERVALS; Firefox: O_RDONLY,
    QUERYCAP) and then capture three frames each: every QUERYCAP consistent (X1), the captures
    get frames, and the kernel log stays free of warnings (H1)."""
    need_openers(cell, 3)
    obs = ObsCamera(cell.device, streamon=False, what="OBS's v4l2sink")
    try:
        obs.frame()
        for k in range(10):
            obs.frame()
            _listed, caps = chrome_lists(cell.device)
            _caps_consistent(cell, caps, f"Chromium's probe {k}")
            with Device(cell.device, os.O_RDONLY) as probe:
                _caps_consistent(cell, probe.device_caps(), f"Firefox's probe {k}")
        for name, rude in (("Chromium", False), ("Firefox", True)):
            cap = MmapCapture(cell.device, name)
            try:
                for _ in range(3):
                    obs.frame()
                    cap.frames(1)
            finally:
                cap.stop(rude=rude)
    finally:
        obs.stop()


def _pipewire_probe(dev_path: str, what: str) -> int:
    """PipeWire's V4L2 monitor on a node: open, QUERYCAP, ENUM_FMT on every buffer type the
    node offers (until EINVAL), ENUM_FRAMESIZES of each format, G_FMT; the formats it saw."""
    seen = 0
    with Device(dev_path) as d:
        caps = d.device_caps()
        for bt, name, flag in ((CAP, "CAPTURE", CAP_VIDEO_CAPTURE), (OUT, "OUTPUT", CAP_VIDEO_OUTPUT)):
            if not caps & flag:
                continue
            fmts = d.enum_fmt(bt)
            assert fmts, f"{what}: ENUM_FMT({name}) on a node offering {name}: no format at all"
            assert all(fourcc(f).isprintable() for f in fmts), f"{what}: ENUM_FMT({name}) gave {fmts}"
            for f in fmts[:16]:
                d.enum_framesizes(f)
            try:
                d.g_fmt(bt)
            except V4L2Error as exc:
                pytest.fail(f"{what}: G_FMT({name}) on a node offering {name}: {exc}")
            seen += len(fmts)
    return seen


@pytest.mark.upstream_report(653)
@pytest.mark.rules("H1")
@pytest.mark.timeout(120)
def test_issue_653_format_enumeration_without_oops(cell, openers):
    """On Linux 6.18, right after `modprobe v4l2loopback` (0.15.2), PipeWire's probe crashed the
    kernel: "BUG: unable to handle page fault ... RIP: vidioc_enum_fmt_vid+0x4e", and
    `modprobe -r` then hung.
    https://github.com/v4l2loopback/v4l2loopback/issues/653
    Judged: PipeWire's probe (QUERYCAP, ENUM_FMT of every offered type, ENUM_FRAMESIZES,
    G_FMT) five times on the idle node and five times while a writer streams: each offered
    direction lists formats, every call answers, and the kernel log stays clean (H1)."""
    need_openers(cell, 2)
    for k in range(5):
        _pipewire_probe(cell.device, f"PipeWire's probe {k}, idle node")
    w = openers.proc("writer")
    start_proc_writer(cell, w, "mmap", count=2, fps=FPS)
    for k in range(5):
        _pipewire_probe(cell.device, f"PipeWire's probe {k}, writer streaming")
