"""K4 with the real browser: Debian's Chromium, headless in the guest, calls getUserMedia on
the loopback device while a writer streams, and counts distinct non-blank frames read with
MediaStreamTrackProcessor. Its own suite: the browser's start-up under TCG takes minutes.

Start-up and capture are measured apart and both recorded (results.json: the scenario's
measurements). The page says when its script starts (the browser is up), when the camera is
open, and what it read. A browser that does not start within START_LIMIT_S says nothing about
the module: the scenario is incomplete, naming the browser and its version. Once it has
started, the time it may take to open the camera and read is derived from how long it took
to start (a machine slow at one is slow at the other), with a wide margin.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time

import pytest
from lib.common import need_openers
from lib.infra import InfrastructureProblem, need_program

from loopqual import procgroup

CAPTURE_S = 10  # the page reads frames for this long
# Chromium 156 took about 150 s to start under TCG here (its on-device model service failing
# to load), Chromium 142 50-70 s; a loaded CI machine is slower by up to 3x.
START_LIMIT_S = 480
OPEN_MARGIN_MIN_S, OPEN_MARGIN_MAX_S = 60, 300  # after start: 2x the start-up, within these


def open_limit(startup_s: float) -> float:
    """Seconds from the page's start to its result: the capture window plus twice what the
    start-up took (at least OPEN_MARGIN_MIN_S, at most OPEN_MARGIN_MAX_S)."""
    return CAPTURE_S + min(OPEN_MARGIN_MAX_S, max(OPEN_MARGIN_MIN_S, 2 * startup_s))


def chromium_version() -> str:
    """Chromium's version from its Debian package (fast; `chromium --version` starts a wrapper)."""
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "chromium"],
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip() or "unknown version"


PAGE = r"""<!doctype html><html><head><title>loopqual</title></head><body><script>
const report = (o) => { const s = "LOOPQUAL_RESULT " + JSON.stringify(o);
  console.log(s); document.title = s; };
console.log("LOOPQUAL_STARTED");
(async () => {
  const out = {label: null, frames: 0, distinct: 0, nonblank: 0, error: null, devices: []};
  try {
    let stream = await navigator.mediaDevices.getUserMedia({video: true});
    const devs = await navigator.mediaDevices.enumerateDevices();
    out.devices = devs.filter(d => d.kind === "videoinput").map(d => d.label);
    const wanted = devs.find(d => d.kind === "videoinput" && d.label.includes(%(card)s));
    if (wanted && stream.getVideoTracks()[0].getSettings().deviceId !== wanted.deviceId) {
      stream.getTracks().forEach(t => t.stop());
      stream = await navigator.mediaDevices.getUserMedia(
        {video: {deviceId: {exact: wanted.deviceId}}});
    }
    const track = stream.getVideoTracks()[0];
    out.label = track.label;
    console.log("LOOPQUAL_OPENED");
    const reader = new MediaStreamTrackProcessor({track}).readable.getReader();
    const seen = new Set();
    const end = performance.now() + %(seconds)d * 1000;
    while (performance.now() < end && out.frames < 300) {
      const r = await Promise.race([reader.read(),
        new Promise(res => setTimeout(() => res({timeout: true}), 5000))]);
      if (r.timeout || r.done) continue;
      const f = r.value;
      out.frames++;
      try {
        const buf = new Uint8Array(f.allocationSize());
        await f.copyTo(buf);
        let h = 0, nz = 0;
        for (let i = 0; i < buf.length; i += 61) { h = (h * 31 + buf[i]) | 0; if (buf[i]) nz++; }
        if (nz > 0) { out.nonblank++; seen.add(h); }
      } catch (e) { out.error = "copyTo: " + e; }
      f.close();
    }
    out.distinct = seen.size;
    track.stop();
  } catch (e) { out.error = String(e); }
  report(out);
})();
</script></body></html>
"""


class BrowserRun:
    """A browser in its own session, its stderr logged to a file (unbuffered: a scenario cut
    short still leaves it) and read line by line for the page's marks."""

    def __init__(self, argv: list[str], env: dict, log_path: str):
        self.log = open(log_path, "wb", buffering=0)
        self.t0 = time.monotonic()
        self.p = procgroup.spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL, env=env)
        self.marks: dict[str, float] = {}  # mark -> seconds since launch
        self.result: dict | None = None
        self.tail = b""
        self._buf = b""

    def wait_for(self, mark: str, limit: float) -> bool:
        """Read the browser's output until the page printed `mark` (True) or `limit` seconds
        since launch passed or the browser ended (False)."""
        while mark not in self.marks and time.monotonic() - self.t0 < limit:
            r, _, _ = select.select([self.p.stderr], [], [], 1.0)
            if not r:
                if self.p.poll() is not None:
                    return False
                continue
            chunk = os.read(self.p.stderr.fileno(), 65536)
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
        for mark in (b"LOOPQUAL_STARTED", b"LOOPQUAL_OPENED", b"LOOPQUAL_RESULT "):
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

    def stderr_tail(self, n: int = 1200) -> str:
        return self.tail.decode(errors="replace")[-n:]


@pytest.mark.rules("K4")
@pytest.mark.timeout(START_LIMIT_S + open_limit(START_LIMIT_S) + 60)
def test_k4_chromium_get_user_media(cell, openers, record_property):
    if not cell.exclusive_caps:
        pytest.skip("Chromium lists only CAPTURE-without-OUTPUT nodes: K4 in the browser needs "
                    "exclusive_caps=1; this cell has exclusive_caps=0")
    chromium = need_program("chromium")
    version = f"Chromium {chromium_version()}"
    record_property("browser", version)
    need_openers(cell, 2)
    w = openers.proc("writer")
    w.call("start_writer", "mmap", count=2, fps=15, set_format=not cell.keep_format)
    with open(f"/sys/class/video4linux/{os.path.basename(cell.device)}/name") as f:
        card = f.read().strip()
    tmp = tempfile.mkdtemp(prefix="loopqual-chromium-")
    page = os.path.join(tmp, "page.html")
    with open(page, "w") as f:
        f.write(PAGE % {"card": json.dumps(card[:20]), "seconds": CAPTURE_S})
    profile = os.path.join(tmp, "profile")
    argv = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
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
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
            f"file://{page}"]
    log_dir = os.path.join(cell.work_dir, "browser")
    os.makedirs(log_dir, exist_ok=True)
    # the guest's root (and so $HOME) is the host's, read-only: Chromium dies at once (crashpad)
    # unless HOME and the XDG directories point somewhere writable; no D-Bus in the guest
    env = dict(os.environ, HOME=tmp, XDG_CONFIG_HOME=os.path.join(tmp, "config"),
               XDG_CACHE_HOME=os.path.join(tmp, "cache"), DBUS_SESSION_BUS_ADDRESS="disabled:")
    run = BrowserRun(argv, env, os.path.join(log_dir, "chromium.log"))
    try:
        started = run.wait_for("LOOPQUAL_STARTED", START_LIMIT_S)
        startup_s = run.marks.get("LOOPQUAL_STARTED")
        record_property("startup_s", startup_s)
        if not started:
            raise InfrastructureProblem(
                f"{version} did not start within {START_LIMIT_S} s of launch (exit "
                f"{run.p.poll()}): the browser, not the module, is too slow or broken here; "
                f"stderr tail: {run.stderr_tail(600)}")
        limit = startup_s + open_limit(startup_s)
        run.wait_for("LOOPQUAL_RESULT", limit)
    finally:
        run.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    opened = run.marks.get("LOOPQUAL_OPENED")
    record_property("open_s", round(opened - startup_s, 1) if opened else None)
    done = run.marks.get("LOOPQUAL_RESULT")
    record_property("capture_s", round(done - (opened or startup_s), 1) if done else None)
    result = run.result
    assert result is not None, (
        f"{version} started in {startup_s:.0f} s, then gave no result within "
        f"{limit - startup_s:.0f} s (camera {'opened' if opened else 'never opened'}; exit "
        f"{run.p.returncode}); stderr tail: {run.stderr_tail()}")
    assert not result.get("error"), (f"{version} getUserMedia on {cell.device} ({card}): "
                                     f"{result['error']}; video inputs {result['devices']}")
    assert card[:20] in (result["label"] or ""), (
        f"{version} opened {result['label']!r}, expected the loopback device {card!r}; video "
        f"inputs: {result['devices']}")
    assert result["distinct"] >= 3, (
        f"{version} on {result['label']!r}: expected at least 3 distinct non-blank frames in "
        f"{CAPTURE_S} s, got {result['frames']} frames, {result['nonblank']} non-blank, "
        f"{result['distinct']} distinct (started in {startup_s:.0f} s)")
    st = w.call("pump_status")
    assert st["error"] is None, f"writer disturbed by Chromium: {st['error']}"
