"""K6 with the real programs: OBS Studio's virtual camera writes while headless Chromium,
headless Firefox ESR and ffmpeg read the same device at once. Then the readers stop in turn
and the others carry on, and OBS stops and starts its camera while two readers stay open:
both must receive frames again.

Timeline (each window WINDOW_S seconds, judged per reader by the new frames it received in
that window, frames that differ from the frame before them, against the frames OBS's graphics
thread drew over the same span (GetStats, sampled through the window: rendered less skipped; a
skipped render repeats the frame before): each reader must see at least MIN_SHARE of them, less
EDGE_SLACK frames for the span's edges (below D4's 90% for several readers: a browser counts the
frames its page was shown, and with OBS and two other readers on the guest's one vCPU Firefox
showed 16 of 19 drawn, Chromium 19 and ffmpeg 21 of 22; D4 itself is judged where the frames
carry their numbers, suite clients); the scene's moving
pattern repeats itself, so a count of frames never seen before stops growing after a minute or
two: ffmpeg had seen all 89 of its contents after about 90 s at 1 fps):
  an ffmpeg writer starts in OBS's own format (YUYV at the profile's output size, OBS_FPS
  frames per second); ffmpeg joins as a reader, then Chromium and Firefox start at once and
  read it; each must have opened the loopback device by its label (K4, K5)
  Firefox's page begins with FIREFOX_SESSIONS sessions, each ended the rude way (the tracks
  stopped, nothing else) once it has seen SESSION_DISTINCT distinct non-blank frames,
  then opens the camera again and reads on (K5's "again and again", Chromium and ffmpeg
  reading beside it)
  OBS starts (Xvfb, software OpenGL, the prepared scene at OBS_FPS frames per second), its
  camera off; the ffmpeg writer stops and OBS's camera takes over with the three readers
  open: each receives OBS's frames (Chromium ends a capture that gets no frame for 10 s and
  its page opens the camera again: the step camera_opened counts the openings)
  window 1  every reader
  Chromium is killed (a rude stop)
  window 2  Firefox and ffmpeg carry on
  OBS stops its camera and starts it again (the readers stay open)
  window 3  Firefox and ffmpeg receive frames again
  ffmpeg stops (SIGINT, as a user's Ctrl-C)
  window 4  Firefox carries on
Why this order: a browser's start under TCG is what the scenario costs, and OBS takes 35-40% of
the guest's vCPU while it runs. With OBS writing first and the readers joining it one at a
time, Firefox took 300 s to start beside OBS and a reading Chromium (112-130 s in suite
browser) and K6 took 702 s (debian-6.1, two guests on the machine); with Firefox first and
Chromium after the hand-over, Chromium took 320 s beside OBS and a reading Firefox (705 s,
debian-6.12, one guest). So the browsers start before OBS, on a writer that costs little,
and a writer handing its readers over to another is judged on the way. And they start earlier
still: the guest runner starts both when the cell begins, in a cgroup of the lowest weight, on
pages that wait to be told to read (suites.toml's prestart; the cell runs this suite last),
and K6 takes them over (guest/programs/prestart.py); one that is not running is launched here,
and steps["prestart"] says which happened.
The browsers' pages report what they received every TICK_S seconds (LOOPQUAL_TICK {json}):
frames, non-blank frames, distinct non-blank frames and changes (a non-blank frame unlike the
one before) so far; ffmpeg writes each frame's MD5 (-f framemd5), flushed per frame. A
program that is missing or does not start in time makes the scenario incomplete, never a pass
or a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time

import pytest
from lib.browser import START_LIMIT_S, assert_idle_shows_output
from lib.clients import Client, wait_for_writer
from lib.common import need_openers
from lib.load import guest_load
from lib.ticking import SESSIONS_LIMIT_S, judge_labels_and_sessions

from loopqual.guest.programs import crash, prestart, ticking
from loopqual.guest.programs.infra import InfrastructureProblem, need_program, package_version
from loopqual.guest.programs.obs import OUTPUT_LIMIT_S, Obs, frames_made, fresh_home, output_size, xvfb
from loopqual.guest.programs.ticking import FIREFOX_SESSIONS

OBS_FPS = 1
WINDOW_S = 20
MIN_SHARE = 0.75  # of OBS's draws each reader sees change: see the module's docstring
# frames a reader may lack at a span's edges: a browser's counts come with its page's reports
# (every TICK_S), OBS's with GetStats, and a frame drawn just before an edge arrives after it
EDGE_SLACK = 2
MIN_DRAWN = 3  # fewer frames drawn in a window say nothing of the module
TICK_S = 2
# from StartVirtualCam to each reader's first frame of OBS's (llvmpipe compiles the output's
# conversion shaders on the camera's first start: 12.6 s seen alone)
FIRST_FRAME_LIMIT_S = 180
# from the last launch until every reader has its first frame
READY_LIMIT_S = START_LIMIT_S + 300
# A started page that keeps failing to open the camera (getUserMedia again every 3 s) for
# this long ends the wait: stock 0.13.2 refused Chromium as a second reader from its first
# try ("NotReadableError: Could not start video source"), and K6 waited out READY_LIMIT_S.
REFUSED_FOR_S = 180
# how long the pages keep reading: the browsers' start, OBS's, the windows and the camera's steps
RUN_S = (2 * READY_LIMIT_S + SESSIONS_LIMIT_S + 2 * FIRST_FRAME_LIMIT_S + 8 * WINDOW_S
         + 4 * OUTPUT_LIMIT_S)
TIMEOUT_S = START_LIMIT_S + RUN_S + 300


def ffmpeg_writer(device: str, log_dir: str) -> Client:
    """ffmpeg writing a test pattern to the device in OBS's own format (the readers that join
    it pin that format, and OBS's camera must be able to take over): YUYV at the profile's
    output size, OBS_FPS frames per second, in real time."""
    width, height = output_size()
    return Client(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re",
                   "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={OBS_FPS}",
                   "-pix_fmt", "yuyv422", "-f", "v4l2", device], "ffmpeg-writer", log_dir)


_MD5 = re.compile(r"[0-9a-f]{32}")


class FfmpegReader:
    """ffmpeg reading the device, each frame's MD5 flushed to a file as it arrives."""

    def __init__(self, device: str, log_dir: str):
        self.name = "ffmpeg"
        self.out = os.path.join(log_dir, "ffmpeg-framemd5.txt")
        self.client = Client(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
                              "-f", "v4l2", "-i", device, "-f", "framemd5", "-flush_packets", "1",
                              "-y", self.out], "ffmpeg-reader", log_dir)

    def digests(self) -> list[str]:
        """The MD5 of each frame line ffmpeg has finished writing: a line read while ffmpeg
        writes it counts as a change, and then no longer (a wait on debian-sid in CI saw
        ffmpeg's new frame, and the check right after it did not)."""
        try:
            with open(self.out) as f:
                lines = [ln.rsplit(",", 1)[-1].strip() for ln in f
                         if ln[:1].isdigit() and ln.endswith("\n")]
        except OSError:
            return []
        return [h for h in lines if _MD5.fullmatch(h)]

    def changes(self) -> int:
        d = self.digests()
        return sum(1 for i, x in enumerate(d) if i == 0 or x != d[i - 1])

    def state(self) -> str:
        d = self.digests()
        alive = "running" if self.client.alive() else f"exited ({self.client.p.returncode})"
        return (f"{len(d)} frames, {len(set(d))} distinct, {self.changes()} changes, {alive}; "
                f"{self.client.output(300)!r}")


def interpolate(samples: list[tuple[float, float | None]], t: float) -> float:
    """A counter sampled at times, at time t (linear between the samples around it)."""
    pts = [(ts, v) for ts, v in samples if v is not None]
    if not pts:
        return 0.0
    if t <= pts[0][0]:
        return pts[0][1]
    for (t0, v0), (t1, v1) in zip(pts, pts[1:], strict=False):
        if t <= t1:
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1
    return pts[-1][1]


def reader_span(reader, ffmpeg_at: list[tuple[float, int]], start: float, end: float):
    """((from, to), changes at from, changes at to) over a window: for ffmpeg, its frames'
    MD5s read at the window's samples; for a browser, its page's reports that arrived in the
    window (the first and the last of them). None if there are not two."""
    if isinstance(reader, FfmpegReader):
        pts = ffmpeg_at
    else:
        pts = [(t, int(r.get("changes") or 0)) for t, r in reader.history if start <= t <= end]
    if len(pts) < 2:
        return None
    return (pts[0][0], pts[-1][0]), pts[0][1], pts[-1][1]


def short_of_obs(g: dict | None) -> str:
    """Why a reader's window falls short of what OBS drew ("" if it does not)."""
    if g is None:
        return "no two reports of it in the window"
    if g["obs_drew"] < MIN_DRAWN:
        return f"OBS drew {g['obs_drew']} frames over its span, fewer than {MIN_DRAWN} to judge"
    missing = g["obs_drew"] - g["new_frames"]
    if missing > max(EDGE_SLACK, (1 - MIN_SHARE) * g["obs_drew"]):
        return (f"it saw {g['new_frames']} new frames of the {g['obs_drew']} OBS drew over its "
                f"span")
    return ""


@pytest.mark.rules("K6", "K3", "K4", "K5")
@pytest.mark.programs("obs", "Xvfb", "chromium", "firefox-esr", "ffmpeg")
@pytest.mark.timeout(TIMEOUT_S)
def test_k6_obs_writes_while_chromium_firefox_and_ffmpeg_read(cell, record_property):
    if not cell.exclusive_caps:
        pytest.skip("the browsers list only CAPTURE-without-OUTPUT nodes: K6 with them needs "
                    "exclusive_caps=1; this cell has exclusive_caps=0")
    need_openers(cell, 4)
    programs = {p: need_program(p) for p in ("chromium", "firefox-esr", "ffmpeg")}
    versions = {"chromium": f"Chromium {package_version('chromium')}",
                "firefox": f"Firefox ESR {package_version('firefox-esr')}",
                "ffmpeg": f"ffmpeg {package_version('ffmpeg')}"}
    with open(f"/sys/class/video4linux/{os.path.basename(cell.device)}/name") as f:
        card = f.read().strip()
    log_dir = os.path.join(cell.work_dir, "together")
    os.makedirs(log_dir, exist_ok=True)
    home = tempfile.mkdtemp(prefix="loopqual-k6-")
    windows: list[dict] = []
    steps: dict[str, object] = {}
    browsers: list[ticking.TickingBrowser] = []
    ffmpeg = None
    writer = None
    obs = None
    readers: dict = {}

    def ready(names: list[str], since: dict[str, int], limit: float, what: str) -> None:
        """Pump until each named reader has a new frame more than `since`, or limit, or a
        started page has reported the same kind of failure to open the camera for
        REFUSED_FOR_S (a module that refuses the reader: waiting longer shows nothing more)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            ticking.pump_all(browsers, 2.0)
            if all(readers[n].changes() > since.get(n, 0) for n in names):
                break
            if any(readers[n].refused_for() > REFUSED_FOR_S for n in names
                   if isinstance(readers[n], ticking.TickingBrowser)):
                break
        steps[f"{what}_s"] = round(time.monotonic() - t0, 1)
        not_started = [b for b in browsers if b.name in names and "LOOPQUAL_STARTED" not in b.marks]
        if not_started:
            raise InfrastructureProblem(
                "; ".join(f"{versions[b.name]} did not start within {steps[f'{what}_s']:.0f} s "
                          f"(exit {b.p.poll()}): {b.output_tail(400)}" for b in not_started))
        waiting = {n: readers[n].state() for n in names if readers[n].changes() <= since.get(n, 0)}
        assert not waiting, (f"{what}: not every reader received a new frame within "
                             f"{steps[f'{what}_s']:.0f} s (limit {limit:.0f} s; a page whose "
                             f"camera stays refused for {REFUSED_FOR_S} s ends the wait): "
                             f"{waiting}" + (f"; OBS: {obs.stats()} {obs.exited()}" if obs else ""))

    def launch(name: str) -> ticking.TickingBrowser:
        """The browser the guest runner started ahead in the background (suites.toml's
        prestart), told to read now; launched here if there is none running."""
        sessions = FIREFOX_SESSIONS if name == "firefox" else 0
        b, steps.setdefault("prestart", {})[name] = prestart.take_over(
            name, prestart.folder(cell.work_dir, cell.id), log_dir, card, RUN_S, TICK_S,
            sessions=sessions)
        if b is None:
            b = ticking.launch(name, programs[ticking.PROGRAMS[name]], home, log_dir, card,
                               RUN_S, TICK_S, sessions=sessions)
        browsers.append(b)
        readers[name] = b
        return b

    load = None
    try:
        with (guest_load(os.path.join(log_dir, "guest-load.log")) as load,
              xvfb(os.path.join(log_dir, "xvfb.log")) as display, crash.core_dumps(log_dir)):
            # the first writer, and every reader before OBS starts (see "Why this order")
            writer = ffmpeg_writer(cell.device, log_dir)
            why = wait_for_writer(cell.device, FIRST_FRAME_LIMIT_S, writer)
            assert not why, f"{versions['ffmpeg']} as the first writer, in OBS's format: {why}"
            readers["ffmpeg"] = ffmpeg = FfmpegReader(cell.device, log_dir)
            ready(["ffmpeg"], {}, FIRST_FRAME_LIMIT_S, "ffmpeg_ready")
            firefox, chromium = launch("firefox"), launch("chromium")
            ready(["firefox", "chromium"], {}, READY_LIMIT_S, "browsers_ready")
            # seconds since each browser's launch (by the runner, in the background, when
            # prestarted): its page up, told to read, the camera open
            steps["browser_startup_s"] = {b.name: b.marks.get("LOOPQUAL_STARTED") for b in browsers}
            steps["browser_go_s"] = {b.name: b.marks.get("LOOPQUAL_GO") for b in browsers}
            steps["browser_open_s"] = {b.name: b.marks.get("LOOPQUAL_OPENED") for b in browsers}
            judge_labels_and_sessions(browsers, firefox, card, versions["firefox"], steps)
            obs = Obs(fresh_home(os.path.join(home, "obs"), fps=OBS_FPS), display,
                      os.path.join(log_dir, "obs.log"))
            try:
                steps["obs_startup_s"] = obs.wait_ready()
                versions["obs"] = obs.version()
                steps["writer_handover_stop_exit"] = writer.stop()
                before = {n: readers[n].changes() for n in readers}
                started, steps["obs_camera_start_s"] = obs.set_virtualcam(True)
                assert started, (f"{versions['obs']}: the virtual camera did not start within "
                                 f"{OUTPUT_LIMIT_S} s of StartVirtualCam, the ffmpeg writer gone "
                                 f"and Chromium, Firefox and ffmpeg open; {obs.exited()} "
                                 f"{obs.camera_lines()} {obs.stuck}")
                steps["obs_nodes"] = obs.video_nodes()
                assert steps["obs_nodes"] == [os.path.realpath(cell.device)], (
                    f"OBS's camera holds {steps['obs_nodes']}, the device under test is {cell.device}")
                ready(list(readers), before, FIRST_FRAME_LIMIT_S, "obs_takes_over_first_frames")
                # how often each page opened the camera: Chromium ends a capture that got no
                # frame for 10 s, and its page opens it again (the writers' hand-over took
                # OBS's first camera start, 12 s alone, and its first frames)
                steps["camera_opened"] = {b.name: b.last.get("opened") for b in browsers}

                def window(n: int, names: list[str], before: str) -> None:
                    drew = [(time.monotonic(), frames_made(obs.stats(), drawn=True))]
                    ffmpeg_at = [(drew[0][0], ffmpeg.changes())] if "ffmpeg" in names else []
                    end = time.monotonic() + WINDOW_S
                    while (left := end - time.monotonic()) > 0:
                        ticking.pump_all(browsers, min(TICK_S, left))
                        now = time.monotonic()
                        drew.append((now, frames_made(obs.stats(), drawn=True)))
                        if ffmpeg_at:
                            ffmpeg_at.append((now, ffmpeg.changes()))
                    spans = {nm: reader_span(readers[nm], ffmpeg_at, drew[0][0], end + TICK_S)
                             for nm in names}
                    got = {nm: {"new_frames": sp[2] - sp[1], "obs_drew": round(
                        interpolate(drew, sp[0][1]) - interpolate(drew, sp[0][0]), 1)}
                           if sp else None for nm, sp in spans.items()}
                    windows.append({"window": n, "after": before, "readers": got,
                                    "obs": obs.stats()})
                    short = {nm: short_of_obs(g) or "" for nm, g in got.items()}
                    short = {nm: f"{why}; {readers[nm].state()}" for nm, why in short.items()
                             if why}
                    assert not short, (
                        f"window {n} ({before}): expected every open reader to see at least "
                        f"{MIN_SHARE:.0%} of the frames {versions['obs']} drew at {OBS_FPS} fps "
                        f"(less {EDGE_SLACK}), each unlike the one before; got {got}; the short "
                        f"ones: {short}; OBS: {obs.stats()} {obs.exited()}")

                window(1, ["chromium", "firefox", "ffmpeg"], "every reader open")
                chromium.stop()
                window(2, ["firefox", "ffmpeg"], "Chromium killed")
                stopped, steps["obs_camera_stop_s"] = obs.set_virtualcam(False)
                assert stopped, (f"OBS's camera did not stop within {OUTPUT_LIMIT_S} s; "
                                 f"{obs.camera_lines()} {obs.stuck}")
                ticking.pump_all([firefox], 3.0)
                before = {n: readers[n].changes() for n in ("firefox", "ffmpeg")}
                started, steps["obs_camera_restart_s"] = obs.set_virtualcam(True)
                assert started, (f"OBS's camera did not start again within {OUTPUT_LIMIT_S} s "
                                 f"with Firefox and ffmpeg open; {obs.camera_lines()} {obs.stuck}")
                ready(["firefox", "ffmpeg"], before, FIRST_FRAME_LIMIT_S, "obs_restart_first_frames")
                window(3, ["firefox", "ffmpeg"], "OBS's camera stopped and started again")
                ffmpeg.client.stop()
                window(4, ["firefox"], "ffmpeg stopped")
            finally:
                if obs.stuck:
                    record_property("obs_stuck", obs.stuck)
                obs.stop()
                if where_it_died := obs.crash_report(log_dir):
                    record_property("obs_crash", where_it_died)
                obs.keep_files(log_dir)
    finally:
        record_property("programs", versions)
        record_property("steps", steps)
        record_property("windows", windows)
        if load is not None:
            record_property("guest_load", load.summary())
        for b in browsers:
            b.stop()
        if ffmpeg is not None and ffmpeg.client.alive():
            ffmpeg.client.stop()
        if writer is not None and writer.alive():
            writer.stop()
        shutil.rmtree(home, ignore_errors=True)
    assert len(windows) == 4, windows
    assert_idle_shows_output(cell.device, "OBS, Chromium, Firefox and ffmpeg have all closed the device")
