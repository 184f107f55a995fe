"""K3 with the real program: Debian's OBS Studio under Xvfb (Mesa's software OpenGL), with the
prepared profile and scene (obs-config/), starts its virtual camera through obs-websocket,
a reader checks what arrives, then the camera is stopped and started again, ten times,
without reloading the module (what broke OBS on v4l2loopback before: obs-studio #4808, #12506;
v4l2loopback #622).

Each session is judged by the scenarios' own reader on the device under test, as a ratio of
what OBS itself wrote: from the reader's first frame until OBS has made WINDOW_FRAMES frames (or
READ_LIMIT_S seconds have passed), the frames the reader got, each checked for the scene's known
content (the orange background) where it looks, against the frames OBS's video output made
meanwhile (GetStats renderTotalFrames: one frame written to the camera per render, a skipped
render sending the frame before again; OBS's log agrees: "Total frames output: 22 | Total drawn
frames: 24"). It must get at least MIN_SHARE of them, less EDGE_SLACK frames for the window's
edges (OBS's counter is read through obs-websocket, answered late when the guest is loaded).
MIN_SHARE is a half: under TCG OBS lags (60-92% of its frames "lagged" in its log) and then
writes the frame before again, back to back, which a reader with two buffers (as this one
asks) cannot all take, on any module (S7: a reader with nothing queued misses frames). Seen in
CI: 18 read of 25 written while OBS drew 12 (debian-6.1), 14 of 22 while it drew 8 (sid).
Frames are counted one by one, not as distinct pictures: OBS's own moving source lags
under TCG, and it then writes the same picture several times (seen on debian-6.12: 21 frames
read of 22 written, 10 of them distinct). D4 itself is judged where the frames carry their
numbers (suite clients). The report gives OBS's version, its start-up time under this
machine, the node it took and every session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import pytest
from lib.clients import read_window
from lib.v4l2 import YUYV, fourcc

from loopqual.guest.programs import crash
from loopqual.guest.programs.obs import (
    OUTPUT_LIMIT_S,
    START_LIMIT_S,
    Obs,
    frames_made,
    fresh_home,
    output_size,
    xvfb,
)

SESSIONS = 11  # the first start, then ten stops and starts
# OBS Studio 29.0.2 has aborted in glibc's heap checks as its virtual camera stopped: "double
# free or corruption (!prev)" after the 10th stop (debian-sid) and "corrupted size
# vs. prev_size while consolidating" in video_scaler_destroy < video_output_disconnect, its own
# frame converter's teardown, at the first stop (debian-6.1). OBS hands the device
# its frames through write() and its settings through ioctls on fixed-size structures: the
# module writes nothing into OBS's heap. So once per scenario such an abort (SIGABRT, glibc's
# malloc_printerr in the crashing thread) is reported (obs_heap_aborts, with the backtrace) and a
# new OBS starts on the same module; the sessions go on until SESSIONS have ended in order, the
# first of them judging that the device takes a new writer after the old one died holding it.
# Any other death, or a second abort, fails the scenario.
HEAP_ABORTS_TOLERATED = 1
DYING_LIMIT_S = 120  # from the camera request OBS did not carry out until OBS has ended
# The reader's window ends once OBS has drawn WINDOW_FRAMES frames in it, or after READ_LIMIT_S.
# How fast they come is OBS's rendering speed, not the module's: alone beside one guest OBS drew
# 15-22 distinct frames in 6 s, but in make test beside two other guests it drew 5 of 493
# attempted frames (average render time 1.6 s) and a 4 s window saw 1 distinct frame.
READ_LIMIT_S = 60.0
WINDOW_FRAMES = 20
# of the frames OBS writes: the reader (Python, beside OBS on the guest's one vCPU, asking OBS for
# its counters every 2 s) keeps two buffers queued, a fifth of a second at 10 fps
MIN_SHARE = 0.5
EDGE_SLACK = 2  # one frame at each edge of the window
MIN_WRITTEN = 3  # fewer frames written in the whole window say nothing of the module
READER_LIMIT_S = 30  # from the output's start to the reader's start
# from the reader's start to the first frame: under TCG, Mesa's llvmpipe compiles the output's
# conversion shaders when the camera starts (OBS's log shows the output's drawn frames)
FIRST_FRAME_LIMIT_S = 120
# The background (RGB 255, 128, 0) in Rec. 709, limited range, as OBS converts it:
# Y = 16 + 219 * (0.2126 R + 0.7152 G + 0.0722 B) / 255, U and V likewise.
BACKGROUND_YUV = (141, 59, 189)
TOLERANCE = 12
# The profile's canvas and output (obs-config/), and where the reader looks: the lower right
# quarter, away from the moving 32x24 pattern in the top left corner.
WIDTH, HEIGHT = output_size()
SAMPLES = [(x, y) for x in range(WIDTH // 2, WIDTH, 8) for y in range(HEIGHT // 2, HEIGHT, 8)]


class BackgroundCheck:
    """Called on each non-blank frame: does the background carry the scene's colour?"""

    def __init__(self):
        self.frames = 0
        self.wrong = 0
        self.first_wrong = ""
        self.seen = None  # the mean (Y, U, V) of the first frame
        self.first_at = None  # time.monotonic() of the first non-blank frame

    def __call__(self, data: memoryview, fmt: dict) -> None:
        self.frames += 1
        self.first_at = self.first_at or time.monotonic()
        if (fmt.get("pixelformat"), fmt.get("width"), fmt.get("height")) != (YUYV, WIDTH, HEIGHT):
            self._wrong(f"format {fourcc(fmt.get('pixelformat', 0))} {fmt.get('width')}x"
                        f"{fmt.get('height')}, expected YUYV {WIDTH}x{HEIGHT}")
            return
        bpl = fmt["bytesperline"] or fmt["width"] * 2
        ys, us, vs = [], [], []
        for x, y in SAMPLES:
            o = y * bpl + (x // 2) * 4
            if o + 3 >= len(data):
                self._wrong(f"a frame of {len(data)} bytes, expected {bpl * fmt['height']}")
                return
            ys.append(data[o])
            us.append(data[o + 1])
            vs.append(data[o + 3])
        mean = tuple(round(sum(v) / len(v)) for v in (ys, us, vs))
        if self.seen is None:
            self.seen = mean
        if any(abs(m - e) > TOLERANCE for m, e in zip(mean, BACKGROUND_YUV, strict=True)):
            self._wrong(f"background Y/U/V {mean}, expected {BACKGROUND_YUV} +-{TOLERANCE}")

    def _wrong(self, why: str) -> None:
        self.wrong += 1
        self.first_wrong = self.first_wrong or why


def heap_abort(obs: Obs, log_dir: str) -> str:
    """After a camera request OBS did not carry out: if OBS has died of glibc's heap checks
    (SIGABRT, malloc_printerr in the crashing thread's backtrace), that backtrace; else "" (OBS
    runs, or died otherwise). OBS is stopped either way when it has died."""
    try:  # a dying OBS writes its core first (about 250 MiB): it may not have ended yet
        obs.p.wait(timeout=DYING_LIMIT_S)
    except subprocess.TimeoutExpired:
        return ""
    obs.stop()
    where = obs.crash_report(log_dir)
    return where if crash.glibc_heap_abort(obs.killed_by, where) else ""


@pytest.mark.rules("K3")
@pytest.mark.programs("obs", "Xvfb")
@pytest.mark.timeout((1 + HEAP_ABORTS_TOLERATED) * START_LIMIT_S + FIRST_FRAME_LIMIT_S
                     + (SESSIONS + HEAP_ABORTS_TOLERATED)
                     * (2 * OUTPUT_LIMIT_S // 3 + READER_LIMIT_S + int(READ_LIMIT_S)))
def test_k3_obs_virtual_camera_stop_and_start(cell, record_property):
    log_dir = os.path.join(cell.work_dir, "apps")
    os.makedirs(log_dir, exist_ok=True)
    home = tempfile.mkdtemp(prefix="loopqual-obs-")
    sessions: list[dict] = []
    aborts: list[dict] = []
    try:
        with xvfb(os.path.join(log_dir, "xvfb.log")) as display, crash.core_dumps(log_dir):
            obs = Obs(fresh_home(home), display, os.path.join(log_dir, "obs.log"))
            try:
                startup_s = obs.wait_ready()
                version = obs.version()
                record_property("program", version)
                record_property("startup_s", startup_s)

                def goes_on_after_heap_abort(s: dict) -> bool:
                    """A camera request OBS did not carry out: True if OBS died of its own heap
                    abort, tolerated once per run, and a new OBS now runs."""
                    nonlocal obs
                    if len(aborts) < HEAP_ABORTS_TOLERATED and (why := heap_abort(obs, log_dir)):
                        obs = _after_heap_abort(obs, why, s, aborts, home, display, log_dir)
                        return True
                    return False

                for n in range(1, SESSIONS + HEAP_ABORTS_TOLERATED + 1):
                    if stopped(sessions) == SESSIONS:
                        break
                    s = {"session": n}
                    sessions.append(s)
                    s["started"], s["start_s"] = obs.set_virtualcam(True)
                    if not s["started"]:
                        if goes_on_after_heap_abort(s):
                            continue
                        break
                    s["nodes"] = obs.video_nodes()
                    s["obs_stats_at_start"] = obs.stats()
                    check = BackgroundCheck()
                    edges: dict[str, dict] = {}
                    t = time.monotonic()
                    w = read_window(
                        cell.device, READ_LIMIT_S, READER_LIMIT_S, on_frame=check,
                        first_frame_timeout=FIRST_FRAME_LIMIT_S,
                        until=lambda e=edges: made(e.get("start"), obs.stats()) >= WINDOW_FRAMES,
                        until_every_s=2.0,
                        on_edge=lambda edge, e=edges: e.__setitem__(edge, obs.stats()))
                    s["frames"], s["distinct"], s["changes"], s["note"] = (
                        w.frames, w.distinct, w.changes, w.note)
                    s["obs_wrote"] = made(edges.get("start"), edges.get("end"))
                    s["obs_drew"] = made(edges.get("start"), edges.get("end"), drawn=True)
                    s["read_s"] = round(time.monotonic() - t, 1)
                    s["first_frame_s"] = round(check.first_at - t, 1) if check.first_at else None
                    s["obs_stats"] = edges.get("end") or obs.stats()
                    s["background"], s["wrong_background"] = check.seen, check.wrong
                    s["first_wrong"] = check.first_wrong
                    s["stopped"], s["stop_s"] = obs.set_virtualcam(False)
                    if (short_of_obs(s) or check.wrong
                            or s["nodes"] != [os.path.realpath(cell.device)]):
                        break
                    if not s["stopped"]:
                        if goes_on_after_heap_abort(s):
                            continue
                        break
            finally:
                record_property("sessions", sessions)
                if aborts:
                    record_property("obs_heap_aborts", aborts)
                ended, stuck = obs.exited(), obs.stuck
                if stuck:
                    record_property("obs_stuck", stuck)
                obs.stop()
                if where_it_died := obs.crash_report(log_dir):
                    ended += f" ({where_it_died})"
                    record_property("obs_crash", where_it_died)
                log_tail = obs.camera_lines()
                obs.keep_files(log_dir)
    finally:
        shutil.rmtree(home, ignore_errors=True)

    record_property("node", (sessions[0].get("nodes") or ["none"])[0] if sessions else "none")
    for s in sessions:
        where = f"{version}, session {s['session']} of {SESSIONS} (OBS started in {startup_s:.0f} s)"
        if s.get("obs_heap_abort") and not s["started"]:
            continue  # OBS's own abort, reported in obs_heap_aborts; a new OBS went on
        assert s["started"], (
            f"{where}: the virtual camera did not start within {OUTPUT_LIMIT_S} s of "
            f"StartVirtualCam{'; ' + ended if ended else ''}; OBS's log about it: {log_tail}"
            f"{'; ' + stuck if stuck else ''}")
        assert s["nodes"] == [os.path.realpath(cell.device)], (
            f"{where}: OBS's virtual camera holds {s['nodes'] or 'no /dev/video node'}, the "
            f"device under test is {cell.device} (OBS takes the first node whose QUERYCAP shows "
            f"OUTPUT)")
        assert not short_of_obs(s), (
            f"{where}: a reader on {cell.device} got {s['frames']} frames ({s['changes']} "
            f"changes, {s['distinct']} distinct) in {s['read_s']:.0f} s while OBS wrote "
            f"{s['obs_wrote']} (drew {s['obs_drew']}): {short_of_obs(s)} "
            f"{('(' + s['note'] + ')') if s['note'] else ''}; OBS's counters then: {s['obs_stats']}"
            f"{'; ' + ended if ended else ''}; OBS's log about it: {log_tail}")
        assert not s["wrong_background"], (
            f"{where}: {s['wrong_background']} of the frames read do not carry the scene's "
            f"content: {s['first_wrong']}")
        if s.get("obs_heap_abort"):
            continue
        assert s["stopped"], (
            f"{where}: the virtual camera did not stop within {OUTPUT_LIMIT_S} s of "
            f"StopVirtualCam{'; ' + ended if ended else ''}; OBS's log about it: {log_tail}"
            f"{'; ' + stuck if stuck else ''}")
    assert stopped(sessions) == SESSIONS, sessions


def made(before: dict | None, after: dict | None, drawn: bool = False) -> int:
    """Frames OBS's video output made (with drawn: drew anew) between two GetStats replies
    (loopqual.guest.programs.obs.frames_made); 0 where OBS did not answer."""
    a, b = frames_made(before, drawn), frames_made(after, drawn)
    return b - a if a is not None and b is not None else 0


def short_of_obs(s: dict) -> str:
    """Why a session's reader falls short of what OBS wrote ("" if it does not): fewer than
    MIN_WRITTEN frames written at all, or fewer frames got than MIN_SHARE of them less
    EDGE_SLACK."""
    if s["obs_wrote"] < MIN_WRITTEN:
        return (f"OBS wrote {s['obs_wrote']} frames in the window, fewer than the {MIN_WRITTEN} "
                f"needed to judge")
    missing = s["obs_wrote"] - s["frames"]
    if missing > (1 - MIN_SHARE) * s["obs_wrote"] + EDGE_SLACK:
        return (f"the reader got {s['frames']} of the {s['obs_wrote']} frames OBS wrote "
                f"({s['frames'] / s['obs_wrote']:.0%}; at least {MIN_SHARE:.0%} less "
                f"{EDGE_SLACK})")
    return ""


def stopped(sessions: list[dict]) -> int:
    """Sessions whose camera stopped when asked."""
    return sum(1 for s in sessions if s.get("stopped"))


def _after_heap_abort(obs: Obs, why: str, session: dict, aborts: list[dict], home: str,
                      display: str, log_dir: str) -> Obs:
    """Report OBS's heap abort in that session, keep the dead OBS's files, and start a new OBS
    (a fresh copy of the prepared configuration) on the same module; it answers or raises."""
    k = len(aborts) + 2  # the new OBS's number
    session["obs_heap_abort"] = why
    aborts.append({"session": session["session"], "obs_log": os.path.basename(obs.log_path),
                   "backtrace": why, "camera_log": obs.camera_lines()})
    obs.keep_files(log_dir)
    new = Obs(fresh_home(os.path.join(home, f"obs-{k}")), display,
              os.path.join(log_dir, f"obs-{k}.log"))
    try:
        aborts[-1]["new_obs_startup_s"] = new.wait_ready()
    except BaseException:
        new.stop()
        raise
    return new
