"""Real browsers in the guest: headless Chromium or Firefox ESR with a fresh profile on a
local page, its output logged and read line by line for the page's marks: LOOPQUAL_STARTED when
its script runs (the browser is up), LOOPQUAL_GO when the page was told to read (ticking.py),
LOOPQUAL_OPENED when the camera is open, LOOPQUAL_RESULT {json} at the end. The pages
themselves are their users' (the scenarios' capture pages, ticking.py's long-reading page).
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import time

from loopqual.common import procgroup

_AT = re.compile(rb" ?at=(\d+)")
MARKS = (b"LOOPQUAL_STARTED", b"LOOPQUAL_GO", b"LOOPQUAL_OPENED", b"LOOPQUAL_RESULT ")


# A page's function cameraByLabel(stream, out): given the stream of a first getUserMedia (a
# page sees the cameras' labels only once one was granted), the stream of the camera whose
# label holds the card's name (its first 20 characters), opened by its deviceId if the first
# was another; the video inputs' labels go to out.devices.
CAMERA_BY_LABEL_JS = r"""const cameraByLabel = async (stream, out) => {
  const devs = await navigator.mediaDevices.enumerateDevices();
  out.devices = devs.filter(d => d.kind === "videoinput").map(d => d.label);
  const wanted = devs.find(d => d.kind === "videoinput" && d.label.includes(%(card)s));
  if (!wanted || stream.getVideoTracks()[0].getSettings().deviceId === wanted.deviceId) return stream;
  stream.getTracks().forEach(t => t.stop());
  return await navigator.mediaDevices.getUserMedia({video: {deviceId: {exact: wanted.deviceId}}});
};
"""


def camera_by_label_js(card: str) -> str:
    """CAMERA_BY_LABEL_JS for the loopback device whose card name is `card`."""
    return camera_by_label_js_of(json.dumps(card[:20]))


def camera_by_label_js_of(expr: str) -> str:
    """CAMERA_BY_LABEL_JS looking for the card name a JavaScript expression gives."""
    return CAMERA_BY_LABEL_JS % {"card": expr}


def chromium_argv(program: str, home: str, page_url: str) -> list[str]:
    """Headless Chromium on a page, with a fresh profile under home."""
    return [program, "--headless=new", "--no-sandbox", "--disable-gpu",
            "--use-fake-ui-for-media-stream", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            "--disable-extensions", "--mute-audio", "--autoplay-policy=no-user-gesture-required",
            # no field trials (their testing configuration turns experimental features on)
            "--disable-field-trial-config",
            # Chromium 156 classifies the machine's performance for on-device models at each
            # launch with a fresh profile: a service that tries the GPU through Vulkan and
            # SwiftShader and, under TCG, holds the only vCPU for minutes before it gives up
            # (its log: "on_device_model service disconnect ... Error loading backend"). A
            # given class skips the evaluation; 8 is "GPU blocked", true of a guest without one.
            "--optimization-guide-performance-class=8",
            # Fewer child processes that must connect to the browser within 15 s or end
            # themselves: under TCG on a busy machine the network service missed that, was
            # restarted, and the page never loaded (seen twice, 480 s without a start). The
            # network service and the GPU's work run in the browser process instead.
            "--enable-features=NetworkServiceInProcess2", "--in-process-gpu",
            f"--user-data-dir={home}/profile", "--enable-logging=stderr", "--v=0",
            page_url]


# A fresh profile's settings: the camera without a prompt, V4L2 directly (no fake streams,
# no PipeWire portal), the page's dump() on the browser's output, and none of a desktop
# browser's own network chatter (the guest has no network).
FIREFOX_PREFS = {
    "media.navigator.permission.disabled": True,
    "media.navigator.streams.fake": False,
    "media.webrtc.camera.allow-pipewire": False,
    "media.autoplay.default": 0,
    "browser.dom.window.dump.enabled": True,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.aboutwelcome.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "app.update.auto": False,
    "extensions.update.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    # Fewer processes, each of which costs its start-up under TCG: no WebExtensions process
    # (the built-in add-ons load in the browser's), no socket process, no content process
    # started ahead or per site, no preloaded new-tab page (a "Privileged Content" process
    # that used 16-27% of the vCPU for minutes in K6 on debian-sid). On debian-6.12, one guest,
    # the K5 page alone: 65 CPU-s in Firefox's processes against 75 without these (87 on the
    # boot's first, cold start).
    "extensions.webextensions.remote": False,
    "network.process.enabled": False,
    "dom.ipc.processPrelaunch.enabled": False,
    "dom.ipc.processCount": 1,
    "fission.autostart": False,
    "browser.newtab.preload": False,
    "browser.newtabpage.enabled": False,
    "browser.startup.page": 0,
    "app.normandy.enabled": False,
    "extensions.pocket.enabled": False,
    "extensions.systemAddon.update.enabled": False,
}


def firefox_argv(program: str, home: str, page_url: str) -> list[str]:
    """Headless Firefox on a page, with a fresh profile of FIREFOX_PREFS under home (run it
    with MOZ_HEADLESS=1)."""
    profile = os.path.join(home, "profile")
    os.makedirs(profile)
    with open(os.path.join(profile, "user.js"), "w") as f:
        for name, value in FIREFOX_PREFS.items():
            f.write(f"user_pref({json.dumps(name)}, {json.dumps(value)});\n")
    return [program, "--headless", "--no-remote", "--profile", profile, page_url]


class AdoptedProcess:
    """A browser another process started (the guest runner, ahead of the suite: prestart.py),
    followed by its pid: poll() as Popen's, the exit status read from /proc while it is a
    zombie (its parent reaps it later); -1 once it is gone without one."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = procgroup.exit_status(self.pid)
        return self.returncode


class BrowserRun:
    """A browser in its own session, its output logged to a file (unbuffered: a scenario cut
    short still leaves it) and read line by line for the page's marks. Or, made by follow(), a
    browser another process started with its output going to a file: that file is read."""

    def __init__(self, argv: list[str], env: dict, log_path: str):
        self.log = open(log_path, "wb", buffering=0)
        self.t0, self.epoch0 = time.monotonic(), time.time()
        self.p = procgroup.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env)
        self._source = None  # the pipe: self.p.stdout
        self._reset()

    def _reset(self) -> None:
        self.marks: dict[str, float] = {}  # mark -> seconds since launch
        self.result: dict | None = None
        self.tail = b""
        self._buf = b""

    @classmethod
    def follow(cls, pid: int, log_path: str, t0: float, epoch0: float):
        """The browser `pid` (not a child of this process) whose output goes to log_path,
        launched at monotonic time t0 (the clock is the guest's, shared by its processes),
        epoch0 by the wall clock."""
        self = cls.__new__(cls)
        self.p, self.t0, self.epoch0 = AdoptedProcess(pid), t0, epoch0
        self.log = self._source = open(log_path, "rb")
        self._reset()
        return self

    def _read(self, timeout: float) -> bytes | None:
        """New output within timeout (b"" if none came), None once the output has ended."""
        if self._source is None:
            r, _, _ = select.select([self.p.stdout], [], [], timeout)
            if not r:
                return None if self.p.poll() is not None else b""
            return os.read(self.p.stdout.fileno(), 65536) or None
        chunk = self._source.read(65536)
        if chunk:
            return chunk
        if self.p.poll() is not None:
            return self._source.read(65536) or None
        time.sleep(min(timeout, 0.2))
        return b""

    def wait_for(self, mark: str, limit: float) -> bool:
        """Read the browser's output until the page printed `mark` (True) or `limit` seconds
        since launch passed or the browser ended (False)."""
        while mark not in self.marks and time.monotonic() - self.t0 < limit:
            chunk = self._read(1.0)
            if chunk is None:
                return False
            if not chunk:
                continue
            if self._source is None:
                self.log.write(chunk)
            self.tail = (self.tail + chunk)[-3000:]
            self._buf += chunk
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                self._scan(line)
        return mark in self.marks

    def _scan(self, line: bytes) -> None:
        for mark in MARKS:
            i = line.find(mark)
            if i < 0:
                continue
            # a page that says when (at=<ms since the epoch>) is timed by it: a followed
            # browser's log is read long after the page wrote it
            at = _AT.match(line, i + len(mark))
            since = (int(at.group(1)) / 1000 - self.epoch0 if at
                     else time.monotonic() - self.t0)
            self.marks.setdefault(mark.decode().strip(), round(since, 1))
            if mark == b"LOOPQUAL_RESULT ":
                js = line[i + len(mark):].decode(errors="replace")
                self.result = json.loads(js[: js.rfind("}") + 1])

    def stop(self) -> None:
        if isinstance(self.p, AdoptedProcess):
            procgroup.stop_foreign(self.p.pid, grace=5.0)
        else:
            procgroup.stop(self.p, grace=5.0)
        self.log.close()

    def output_tail(self, n: int = 1200) -> str:
        return self.tail.decode(errors="replace")[-n:]
