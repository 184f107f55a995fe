"""Real browsers in the guest: headless Chromium or Firefox ESR with a fresh profile on a
local page, its output logged and read line by line for the page's marks: LOOPQUAL_STARTED when
its script runs (the browser is up), LOOPQUAL_OPENED when the camera is open, LOOPQUAL_RESULT
{json} at the end. The pages themselves are their users' (the scenarios' capture pages,
ticking.py's long-reading page).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time

from loopqual.common import procgroup

MARKS = (b"LOOPQUAL_STARTED", b"LOOPQUAL_OPENED", b"LOOPQUAL_RESULT ")


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
    return CAMERA_BY_LABEL_JS % {"card": json.dumps(card[:20])}


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


class BrowserRun:
    """A browser in its own session, its output logged to a file (unbuffered: a scenario cut
    short still leaves it) and read line by line for the page's marks."""

    def __init__(self, argv: list[str], env: dict, log_path: str):
        self.log = open(log_path, "wb", buffering=0)
        self.t0 = time.monotonic()
        self.p = procgroup.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env)
        self.marks: dict[str, float] = {}  # mark -> seconds since launch
        self.result: dict | None = None
        self.tail = b""
        self._buf = b""

    def wait_for(self, mark: str, limit: float) -> bool:
        """Read the browser's output until the page printed `mark` (True) or `limit` seconds
        since launch passed or the browser ended (False)."""
        while mark not in self.marks and time.monotonic() - self.t0 < limit:
            r, _, _ = select.select([self.p.stdout], [], [], 1.0)
            if not r:
                if self.p.poll() is not None:
                    return False
                continue
            chunk = os.read(self.p.stdout.fileno(), 65536)
            if not chunk:
                return False
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
            self.marks.setdefault(mark.decode().strip(), round(time.monotonic() - self.t0, 1))
            if mark == b"LOOPQUAL_RESULT ":
                js = line[i + len(mark):].decode(errors="replace")
                self.result = json.loads(js[: js.rfind("}") + 1])

    def stop(self) -> None:
        procgroup.stop(self.p, grace=5.0)
        self.log.close()

    def output_tail(self, n: int = 1200) -> str:
        return self.tail.decode(errors="replace")[-n:]
