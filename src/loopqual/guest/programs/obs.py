"""OBS Studio in the guest: a virtual X server (Xvfb), Mesa's software OpenGL, a prepared
configuration (scenarios/apps/obs-config), and obs-websocket to start and stop the virtual
camera, as a user's remote control or stream deck does.

OBS looks for v4l2loopback in /proc/modules when it starts (without the module loaded it
disables its virtual camera), then on each start takes the first /dev/video* (in version
order) whose QUERYCAP shows OUTPUT. Which node it took is read from its open files.
A program that is missing, or an OBS or Xvfb that does not come up, makes the scenario
incomplete with the program's own output, never a skip and never a K3 failure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from loopqual.common import procgroup
from loopqual.common.paths import SCENARIOS_DIR
from loopqual.guest.programs import crash
from loopqual.guest.programs.infra import InfrastructureProblem, need_program

CONFIG = SCENARIOS_DIR / "apps" / "obs-config"
WEBSOCKET_PORT = 4455  # global.ini's [OBSWebSocket] ServerPort
# Under TCG Chromium took 82-117 s to start and Firefox 71-72 s; OBS is measured by the
# scenario (startup_s). A loaded machine is slower by up to 3x.
START_LIMIT_S = 900  # as the browsers' (scenarios/lib/browser.py): a loaded machine is slower by 3x and more
XVFB_LIMIT_S = 60
OUTPUT_LIMIT_S = 60  # from StartVirtualCam/StopVirtualCam to the output's new state


@contextlib.contextmanager
def xvfb(log_path: str) -> Iterator[str]:
    """A virtual X server on a free display: its name (":N"), from Xvfb's own -displayfd
    answer (it writes the number once it accepts clients). Stopped afterwards."""
    program = need_program("Xvfb")
    rfd, wfd = os.pipe()
    log = open(log_path, "wb")
    p = procgroup.spawn([program, "-displayfd", str(wfd), "-nolisten", "tcp", "-screen", "0",
                         "640x480x24"], stdout=log, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, pass_fds=(wfd,))
    os.close(wfd)
    try:
        number = b""
        deadline = time.monotonic() + XVFB_LIMIT_S
        os.set_blocking(rfd, False)
        while not number.endswith(b"\n") and time.monotonic() < deadline and p.poll() is None:
            try:
                chunk = os.read(rfd, 16)
            except BlockingIOError:
                time.sleep(0.1)
                continue
            if not chunk:
                break
            number += chunk
        if not number.strip().isdigit():
            log.flush()
            raise InfrastructureProblem(
                f"Xvfb did not come up within {XVFB_LIMIT_S} s (exit {p.poll()}): "
                f"{Path(log_path).read_text(errors='replace')[-800:]}")
        yield f":{number.strip().decode()}"
    finally:
        os.close(rfd)
        procgroup.stop(p, grace=3.0)
        log.close()


def profile_ini(config: Path) -> Path:
    """The prepared profile's settings file (basic.ini) in a configuration directory."""
    return config / "obs-studio" / "basic" / "profiles" / "loopqual" / "basic.ini"


def output_size() -> tuple[int, int]:
    """The prepared profile's output size (basic.ini's OutputCX, OutputCY): the width and
    height of the YUYV frames OBS's virtual camera writes."""
    ini = profile_ini(CONFIG)
    text = ini.read_text()
    size = [re.search(rf"(?m)^{key}=(\d+)$", text) for key in ("OutputCX", "OutputCY")]
    if not all(size):
        raise InfrastructureProblem(f"{ini}: no OutputCX= or OutputCY= line")
    return int(size[0].group(1)), int(size[1].group(1))


def fresh_home(root: str, fps: int | None = None) -> dict:
    """The prepared configuration copied into root (a fresh, writable home); OBS's
    environment: software OpenGL, no D-Bus session (there is none in the guest).

    Mesa's llvmpipe is held to SSE4.1: with the AVX2 code it generates by default (also when
    held to 128-bit vectors), OBS's graphics thread rendered 0.5-0.6 frames per second under
    TCG and died of a segfault in the generated code (a vpgatherdd) once the virtual camera's
    conversion started (seen on debian-6.12: the kernel log's "libobs: graphic[...]:
    segfault")."""
    config = os.path.join(root, "config")
    shutil.copytree(CONFIG, config, ignore=shutil.ignore_patterns("README.md"))
    if fps is not None:  # the profile's frame rate (FPSType=1: an integer rate) changed
        ini = profile_ini(Path(config))
        text = ini.read_text()
        if "FPSInt=" not in text:
            raise InfrastructureProblem(f"{ini}: no FPSInt= line to set {fps} frames per second")
        ini.write_text(re.sub(r"(?m)^FPSInt=\d+$", f"FPSInt={fps}", text))
    return {"HOME": root, "XDG_CONFIG_HOME": config, "XDG_CACHE_HOME": os.path.join(root, "cache"),
            "LIBGL_ALWAYS_SOFTWARE": "1", "GALLIUM_OVERRIDE_CPU_CAPS": "sse4.1", "QT_QPA_PLATFORM": "xcb",
            "DBUS_SESSION_BUS_ADDRESS": "disabled:", "LC_ALL": "C.UTF-8"}



def frames_made(stats: dict | None, drawn: bool = False) -> int | None:
    """OBS's frames so far from a GetStats reply: renderTotalFrames (one frame written to the
    camera per render), or with drawn those its graphics thread drew anew (less the skipped
    renders, which send the frame before again). None where OBS did not answer."""
    try:
        return int(stats["renderTotalFrames"]) - (int(stats["renderSkippedFrames"]) if drawn
                                                   else 0)
    except (KeyError, TypeError, ValueError):
        return None

class Obs:
    """OBS Studio in its own session, its output in a file, driven through obs-websocket."""

    def __init__(self, env: dict, display: str, log_path: str):
        self.program = need_program("obs")
        try:
            import obsws_python
        except ImportError as exc:
            raise InfrastructureProblem(
                f"the obs-websocket client (obsws-python) is not in loopqual's venv ({exc}): "
                f"`make venv` installs it") from exc
        # The client logs every refused request with a traceback; the scenario reports them.
        logging.getLogger("obsws_python").setLevel(logging.CRITICAL)
        self._ws = obsws_python
        self.log_path = log_path
        self.config_dir = env["XDG_CONFIG_HOME"]  # fresh_home's copy of the configuration
        self.log = open(log_path, "wb")
        self.t0 = time.monotonic()
        # OBS logs through stdio, block-buffered into a file: line-buffered, a line that
        # explains a failure is in the log when the scenario reads it
        # it may dump core: a crash is reported with its backtrace (crash.py)
        self.p = procgroup.spawn(
            [*crash.core_limit_prefix(), "stdbuf", "-oL", "-eL", self.program, "--multi",
             "--profile", "loopqual", "--collection", "loopqual"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(os.environ, DISPLAY=display, **env), cwd=env["HOME"])
        self.client = None
        self.startup_s: float | None = None
        self.killed_by: int | None = None  # the signal OBS died of before stop()
        # where OBS's threads waited when it last did not reach a camera state it was asked for
        self.stuck = ""
        self.requests = 0

    def output(self, tail: int = 1500) -> str:
        try:
            return Path(self.log_path).read_bytes()[-tail:].decode(errors="replace")
        except OSError:
            return ""

    def camera_lines(self, limit: int = 12) -> str:
        """OBS's log lines about its virtual camera and the device (what a failure needs)."""
        try:
            lines = Path(self.log_path).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        keep = [ln.strip() for ln in lines
                if any(k in ln.lower() for k in ("virtual", "v4l2", "/dev/video", "streaming"))]
        return " | ".join(keep[-limit:]) or "(no line about the virtual camera)"

    def wait_ready(self) -> float:
        """Seconds from launch until obs-websocket answers (OBS has loaded its scene and
        plugins); InfrastructureProblem when it does not within START_LIMIT_S."""
        last = ""
        while time.monotonic() - self.t0 < START_LIMIT_S:
            if self.p.poll() is not None:
                raise InfrastructureProblem(
                    f"OBS Studio exited ({self.p.returncode}) before its websocket answered: "
                    f"{self.output()}")
            try:
                self.client = self._ws.ReqClient(host="127.0.0.1", port=WEBSOCKET_PORT,
                                                 password="", timeout=30)
                self.client.get_version()
                self.startup_s = round(time.monotonic() - self.t0, 1)
                return self.startup_s
            except (OSError, self._ws.error.OBSSDKError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                self.client = None
                time.sleep(1.0)
        raise InfrastructureProblem(
            f"OBS Studio did not answer on its websocket within {START_LIMIT_S} s of launch "
            f"({last}): OBS, not the module, is too slow or broken here; its output: "
            f"{self.output()}")

    def version(self) -> str:
        v = self.client.get_version()
        return f"OBS Studio {v.obs_version} (obs-websocket {v.obs_web_socket_version})"

    def exited(self) -> str:
        """"" while OBS runs, else how it ended (a negative code is the signal that killed it)."""
        code = self.p.poll()
        if code is None:
            return ""
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return f"OBS Studio ended ({how})"

    def crash_report(self, dest: str) -> str:
        """Where OBS died, when it had died of a signal before stop() (not of stop's own
        SIGTERM): gdb's backtrace of its core (in dest, within crash.core_dumps(dest));
        else ""."""
        if self.killed_by is None:
            return ""
        return crash.backtrace(self.program, self.p.pid, dest)

    def stats(self) -> dict:
        """OBS's own counters (GetStats): frames rendered and skipped by its graphics thread,
        frames the outputs took and skipped, the render time per frame in ms; {} if OBS no
        longer answers."""
        try:
            s = self.client.send("GetStats", raw=True)
        except Exception as exc:  # the client raises several kinds once OBS is gone
            return {"error": f"{type(exc).__name__}: {exc}"[:200]}
        keys = ("renderTotalFrames", "renderSkippedFrames", "outputTotalFrames",
                "outputSkippedFrames", "averageFrameRenderTime", "activeFps")
        return {k: round(s[k], 1) if isinstance(s.get(k), float) else s.get(k) for k in keys}

    def keep_files(self, dest: str) -> None:
        """OBS's own log files and crash reports, kept beside the scenario's logs."""
        for sub in ("logs", "crashes"):
            src = os.path.join(self.config_dir, "obs-studio", sub)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(dest, f"obs-{sub}"), dirs_exist_ok=True)

    def virtualcam_active(self) -> bool:
        try:
            return bool(self.client.get_virtual_cam_status().output_active)
        except self._ws.error.OBSSDKRequestError as exc:
            raise InfrastructureProblem(
                f"OBS Studio offers no virtual camera ({exc}): it looks for v4l2loopback in "
                f"/proc/modules at start; its output: {self.output()}") from exc

    def set_virtualcam(self, on: bool) -> tuple[bool, float]:
        """StartVirtualCam / StopVirtualCam, then wait for the output's state: (reached,
        seconds). OBS answers the request at once and starts the output on its own, so a
        start that failed in the module shows only as an output that never becomes active."""
        t = time.monotonic()
        self.requests += 1
        if self.exited():
            return False, 0.0
        try:
            if on:
                self.client.start_virtual_cam()
            else:
                self.client.stop_virtual_cam()
        except OSError:  # the websocket broke: OBS has ended (the caller reports exited())
            return False, round(time.monotonic() - t, 2)
        while time.monotonic() - t < OUTPUT_LIMIT_S:
            try:
                if self.virtualcam_active() == on:
                    return True, round(time.monotonic() - t, 2)
            except OSError:
                break
            if self.p.poll() is not None:
                break
            time.sleep(0.2)
        waited = round(time.monotonic() - t, 2)
        if self.p.poll() is None:  # OBS runs but did not do it: where do its threads wait?
            self.stuck = "where OBS's threads waited then: " + crash.live_threads(
                self.p.pid, os.path.dirname(self.log_path),
                f"{'start' if on else 'stop'}-{self.requests}")
        return False, waited

    def video_nodes(self) -> list[str]:
        """The /dev/video* nodes OBS holds open (the virtual camera's device while it runs)."""
        nodes = []
        fd_dir = f"/proc/{self.p.pid}/fd"
        with contextlib.suppress(OSError):
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    target = os.readlink(os.path.join(fd_dir, fd))
                    if target.startswith("/dev/video"):
                        nodes.append(target)
        return sorted(set(nodes))

    def stop(self) -> None:
        code = self.p.poll()
        if code is not None and code < 0:
            self.killed_by = -code
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.disconnect()
        procgroup.stop(self.p, grace=5.0)
        self.log.close()

