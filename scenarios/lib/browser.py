"""Real browsers in the guest: start one on a local page that captures the loopback device,
read what the page reports, measure start-up and capture apart.

The page prints marks on the browser's output: LOOPQUAL_STARTED when its script runs (the
browser is up), LOOPQUAL_OPENED when the camera is open, LOOPQUAL_RESULT {json} at the end
(the browser itself, its profile and its output: loopqual.guest.programs.browser).
A browser that does not start within START_LIMIT_S says nothing about the module: the
scenario is incomplete, naming the browser and its version. Once started, the time it may
take to open the camera and read is derived from how long it took to start (a machine slow
at one is slow at the other), with a wide margin.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from loopqual.guest.programs.browser import BrowserRun
from loopqual.guest.programs.infra import InfrastructureProblem, need_program, package_version

from .common import (
    H,
    W,
    caps_str,
    fmt_str,
    kept_capture_only,
    kept_format,
    need_openers,
    wait_until,
)
from .v4l2 import (
    CAP,
    CAP_VIDEO_OUTPUT,
    CID_KEEP_FORMAT,
    CID_SUSTAIN_FRAMERATE,
    OUT,
    Device,
    ename,
    fourcc,
    frame_bytes,
)

CAPTURE_S = 10  # the page reads frames for this long
# Under TCG here Chromium 156 took 82-117 s to start (4 minutes or a hang before its
# start-up was trimmed), Firefox ESR 153 71-72 s; a loaded machine is slower by up to 3x.
# Beside a debug-kernel guest that held a core, Chromium took up to 480 s (docs/ci-time.md).
START_LIMIT_S = 900
OPEN_MARGIN_MIN_S, OPEN_MARGIN_MAX_S = 60, 300  # after start: 2x the start-up, within these


def open_limit(startup_s: float, capture_s: float = CAPTURE_S) -> float:
    """Seconds from the page's start to its result: the capture window plus twice what the
    start-up took (at least OPEN_MARGIN_MIN_S, at most OPEN_MARGIN_MAX_S)."""
    return capture_s + min(OPEN_MARGIN_MAX_S, max(OPEN_MARGIN_MIN_S, 2 * startup_s))


def scenario_timeout(capture_s: float = CAPTURE_S) -> int:
    """The scenario's own wall-clock limit: the longest start-up and open it may allow."""
    return int(START_LIMIT_S + open_limit(START_LIMIT_S, capture_s) + 60)


@dataclass
class Capture:
    """What a browser's run of the capture page gave: its result (None if it gave none), the
    seconds from launch to the page's start, to the camera open and to the result."""
    version: str
    result: dict | None
    startup_s: float
    opened_s: float | None
    done_s: float | None
    limit_s: float
    exit_code: int | None
    tail: str


def run_capture_page(version: str, argv: list[str], env: dict, log_path: str, record_property,
                     capture_s: float = CAPTURE_S) -> Capture:
    """Start the browser on the capture page and wait for its result, within the limits
    above; the start-up, open and capture seconds are recorded as the scenario's
    measurements. A browser that does not start in time raises InfrastructureProblem."""
    record_property("browser", version)
    run = BrowserRun(argv, env, log_path)
    try:
        started = run.wait_for("LOOPQUAL_STARTED", START_LIMIT_S)
        startup_s = run.marks.get("LOOPQUAL_STARTED")
        record_property("startup_s", startup_s)
        if not started:
            raise InfrastructureProblem(
                f"{version} did not start within {START_LIMIT_S} s of launch (exit "
                f"{run.p.poll()}): the browser, not the module, is too slow or broken here; "
                f"its output's tail: {run.output_tail(600)}")
        limit = startup_s + open_limit(startup_s, capture_s)
        run.wait_for("LOOPQUAL_RESULT", limit)
    finally:
        run.stop()
    opened = run.marks.get("LOOPQUAL_OPENED")
    done = run.marks.get("LOOPQUAL_RESULT")
    record_property("open_s", round(opened - startup_s, 1) if opened else None)
    record_property("capture_s", round(done - (opened or startup_s), 1) if done else None)
    return Capture(version, run.result, startup_s, opened, done, limit - startup_s,
                   run.p.returncode, run.output_tail())


def judge_capture(cap: Capture, device: str, card: str, min_distinct: int = 3,
                  context: str = "") -> None:
    """What every browser scenario asks of a capture: a result, no error, the loopback
    device (by its label), at least min_distinct distinct non-blank frames. context: what
    the scenario knows of the device's state, added to a failure's message."""
    try:
        _judge_capture(cap, device, card, min_distinct)
    except AssertionError as exc:
        if context:
            raise AssertionError(f"{exc}; {context}") from None
        raise


def _judge_capture(cap: Capture, device: str, card: str, min_distinct: int) -> None:
    result = cap.result
    assert result is not None, (
        f"{cap.version} started in {cap.startup_s:.0f} s, then gave no result within "
        f"{cap.limit_s:.0f} s (camera {'opened' if cap.opened_s else 'never opened'}; exit "
        f"{cap.exit_code}); output tail: {cap.tail}")
    assert not result.get("error"), (f"{cap.version} getUserMedia on {device} ({card}): "
                                     f"{result['error']}; video inputs {result.get('devices')}")
    assert card[:20] in (result.get("label") or ""), (
        f"{cap.version} opened {result.get('label')!r}, expected the loopback device {card!r}; "
        f"video inputs: {result.get('devices')}")
    assert result["distinct"] >= min_distinct, (
        f"{cap.version} on {result['label']!r}: expected at least {min_distinct} distinct "
        f"non-blank frames, got {result['frames']} frames, {result['nonblank']} non-blank, "
        f"{result['distinct']} distinct (started in {cap.startup_s:.0f} s)")


@dataclass
class BrowserSetUp:
    """What a browser scenario starts from: the program and its version, a writer streaming
    into the device, the device's card name, a writable home holding the page, where the
    browser's log goes, and the browser's environment."""
    program: str
    version: str
    # one_frame: what an enumerating client saw once the one-frame writer had gone
    seen_after_writer: str
    writer: object
    card: str
    home: str
    page_url: str
    log_path: str
    env: dict


# Mozilla's set-up: the page reads for ONE_FRAME_S and must receive the one frame written again
# and again (sustain_framerate repeats it at the device's rate): at least one frame every two
# seconds, where a module that does not repeat it gives one. Headless Firefox under TCG
# presented about one frame a second of it (9 in 8 s).
ONE_FRAME_S = 8
ONE_FRAME_MIN_FRAMES = ONE_FRAME_S // 2
ONE_FRAME_CONTROLS = {CID_KEEP_FORMAT: "keep_format", CID_SUSTAIN_FRAMERATE: "sustain_framerate"}
IDLE_LIMIT_S = 10


def enumeration_view(path: str) -> str:
    """What a browser's device enumeration sees on a new opener: QUERYCAP (capabilities and
    device_caps), ENUM_FMT(CAPTURE), and the first format's frame sizes and interval."""
    parts = []
    try:
        with Device(path) as d:
            q = d.querycap()
            parts.append(f"capabilities {caps_str(q['capabilities'])}, device_caps "
                         f"{caps_str(q['device_caps'])}")
            fmts = d.enum_fmt(CAP)
            parts.append("ENUM_FMT(CAPTURE) " + (", ".join(fourcc(f) for f in fmts) or "empty"))
            if fmts:
                sizes = d.enum_framesizes(fmts[0])
                parts.append(f"ENUM_FRAMESIZES({fourcc(fmts[0])}) {sizes[:3]}")
                if sizes:
                    parts.append(f"ENUM_FRAMEINTERVALS {d.enum_frameintervals(fmts[0], *sizes[0])}")
    except OSError as exc:
        parts.append(f"then {exc}")
    return "; ".join(parts)


def one_frame_writer(cell, openers) -> dict:
    """What Mozilla's own test harness does before its browser tests: keep_format=1 and
    sustain_framerate=1, then a writer process sets a format, writes one frame and exits at
    once. The controls' previous values, to restore_controls() afterwards."""
    ctl = openers.fd()
    before = {cid: ctl.g_ctrl(cid) for cid in ONE_FRAME_CONTROLS}
    for cid in ONE_FRAME_CONTROLS:
        ctl.s_ctrl(cid, 1)
    w = openers.proc("one-frame-writer")
    if cell.keep_format and kept_capture_only(cell, w):
        fmt = kept_format(w)
    else:
        fmt = w.call("s_fmt", OUT, W, H)
    e = w.err("write", frame_bytes(0, fmt["sizeimage"]))
    assert e == 0, f"the one-frame writer's write() ({fmt_str(fmt)}): expected success, got {ename(e)}"
    w.stop()  # the process exits: its close() is the writer leaving
    return before


def restore_controls(cell, openers, before: dict) -> None:
    """Put the controls back and check the device is idle again for the cell's next scenario:
    with keep_format back at 0 and nobody open, an exclusive_caps=1 node shows OUTPUT (X1, C3)."""
    ctl = openers.fd()
    for cid, value in before.items():
        ctl.s_ctrl(cid, value)
    ctl.close()
    if before.get(CID_KEEP_FORMAT):
        return
    assert_idle_shows_output(cell.device, "keep_format back to 0 after the one-frame writer and "
                                          "the browser closed")


def assert_idle_shows_output(device: str, after: str) -> None:
    """Nobody holds the device any more: an idle exclusive_caps=1 node shows OUTPUT again
    (X1, C3), within IDLE_LIMIT_S (a closing program's last close may come late)."""
    def caps_now() -> int:
        with Device(device) as d:
            return d.device_caps()

    wait_until(lambda: caps_now() & CAP_VIDEO_OUTPUT, IDLE_LIMIT_S, 0.2)
    caps = caps_now()
    assert caps & CAP_VIDEO_OUTPUT, (
        f"{after}: expected the idle exclusive_caps=1 node to show OUTPUT again (X1, C3), "
        f"QUERYCAP shows {caps_str(caps)}")


@contextlib.contextmanager
def browser_set_up(cell, openers, name: str, package: str, page: Callable[[str], str],
                   one_frame: bool = False) -> Iterator[BrowserSetUp]:
    """Skip unless the cell has exclusive_caps=1 (browsers list only CAPTURE-without-OUTPUT
    nodes), need the program (missing: incomplete), start a writer (streaming; or, with
    one_frame, Mozilla's one frame from a writer that has left, controls restored afterwards),
    write page(card) into a fresh home, removed afterwards. The guest's root (and so $HOME) is
    the host's, read-only: browsers die at once unless HOME and the XDG directories point
    somewhere writable; there is no D-Bus in the guest."""
    if not cell.exclusive_caps:
        pytest.skip(f"{name} lists only CAPTURE-without-OUTPUT nodes: it needs exclusive_caps=1; "
                    f"this cell has exclusive_caps=0")
    program = need_program(package)
    version = f"{name} {package_version(package)}"
    need_openers(cell, 2)
    controls_before = None
    if one_frame:
        writer = None
        controls_before = one_frame_writer(cell, openers)
    else:
        writer = openers.proc("writer")
        writer.call("start_writer", "mmap", count=2, fps=15, set_format=not cell.keep_format)
    with open(f"/sys/class/video4linux/{os.path.basename(cell.device)}/name") as f:
        card = f.read().strip()
    home = tempfile.mkdtemp(prefix=f"loopqual-{package}-")
    log_dir = os.path.join(cell.work_dir, "browser")
    os.makedirs(log_dir, exist_ok=True)
    try:
        page_path = os.path.join(home, "page.html")
        with open(page_path, "w") as f:
            f.write(page(card))
        env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=os.path.join(home, "config"),
                   XDG_CACHE_HOME=os.path.join(home, "cache"), DBUS_SESSION_BUS_ADDRESS="disabled:")
        seen = enumeration_view(cell.device) if one_frame else ""
        yield BrowserSetUp(program, version, seen, writer, card, home, f"file://{page_path}",
                           os.path.join(log_dir, f"{package}{'-one-frame' if one_frame else ''}.log"),
                           env)
    finally:
        shutil.rmtree(home, ignore_errors=True)
        if controls_before is not None:
            restore_controls(cell, openers, controls_before)


def judge_writer(setup: BrowserSetUp) -> None:
    st = setup.writer.call("pump_status")
    assert st["error"] is None, f"writer disturbed by {setup.version}: {st['error']}"
