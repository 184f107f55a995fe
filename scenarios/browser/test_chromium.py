"""K4 with the real browser: Debian's Chromium, headless in the guest, calls getUserMedia on
the loopback device while a writer streams, and counts distinct non-blank frames read with
MediaStreamTrackProcessor. About 50-70 s of start-up under TCG: its own suite.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
from lib.common import need_openers

CHROMIUM = "/usr/bin/chromium"
RESULT_TIMEOUT = 240  # start-up (50-70 s under TCG, x3 on a shared machine) + capture

PAGE = r"""<!doctype html><html><head><title>loopqual</title></head><body><script>
const report = (o) => { const s = "LOOPQUAL_RESULT " + JSON.stringify(o);
  console.log(s); document.title = s; };
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


def _kill_group(p: subprocess.Popen):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(5)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.mark.rules("K4")
@pytest.mark.timeout(RESULT_TIMEOUT + 60)
def test_k4_chromium_get_user_media(cell, openers):
    if not cell.exclusive_caps:
        pytest.skip("Chromium lists only CAPTURE-without-OUTPUT nodes: K4 in the browser needs "
                    "exclusive_caps=1; this cell has exclusive_caps=0")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed in the guest")
    need_openers(cell, 2)
    w = openers.proc("writer")
    w.call("start_writer", "mmap", count=2, fps=15, set_format=not cell.keep_format)
    with open(f"/sys/class/video4linux/{os.path.basename(cell.device)}/name") as f:
        card = f.read().strip()
    tmp = tempfile.mkdtemp(prefix="loopqual-chromium-")
    page = os.path.join(tmp, "page.html")
    with open(page, "w") as f:
        f.write(PAGE % {"card": json.dumps(card[:20]), "seconds": 10})
    profile = os.path.join(tmp, "profile")
    argv = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
            "--use-fake-ui-for-media-stream", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            "--disable-extensions", "--mute-audio", "--autoplay-policy=no-user-gesture-required",
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
            f"file://{page}"]
    log_dir = os.path.join(cell.work_dir, "browser")
    os.makedirs(log_dir, exist_ok=True)
    log = open(os.path.join(log_dir, "chromium.log"), "wb")
    t0 = time.monotonic()
    # the guest's root (and so $HOME) is the host's, read-only: Chromium dies at once (crashpad)
    # unless HOME and the XDG directories point somewhere writable
    env = dict(os.environ, HOME=tmp, XDG_CONFIG_HOME=os.path.join(tmp, "config"),
               XDG_CACHE_HOME=os.path.join(tmp, "cache"))
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    result = None
    tail = b""
    try:
        buf = b""
        while time.monotonic() - t0 < RESULT_TIMEOUT and result is None:
            r, _, _ = select.select([p.stderr], [], [], 1.0)
            if not r:
                if p.poll() is not None:
                    break
                continue
            chunk = os.read(p.stderr.fileno(), 65536)
            if not chunk:
                break
            log.write(chunk)
            buf += chunk
            tail = (tail + chunk)[-3000:]
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                i = line.find(b"LOOPQUAL_RESULT ")
                if i >= 0:
                    js = line[i + len(b"LOOPQUAL_RESULT "):].decode(errors="replace")
                    js = js[: js.rfind("}") + 1]
                    result = json.loads(js)
    finally:
        _kill_group(p)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - t0
    assert result is not None, (
        f"Chromium gave no result within {RESULT_TIMEOUT} s (exit {p.returncode}); stderr "
        f"tail: {tail.decode(errors='replace')[-1200:]}")
    assert not result.get("error"), (f"Chromium getUserMedia on {cell.device} ({card}): "
                                     f"{result['error']}; video inputs {result['devices']}")
    assert card[:20] in (result["label"] or ""), (
        f"Chromium opened {result['label']!r}, expected the loopback device {card!r}; video "
        f"inputs: {result['devices']}")
    assert result["distinct"] >= 3, (
        f"Chromium on {result['label']!r}: expected at least 3 distinct non-blank frames in "
        f"10 s, got {result['frames']} frames, {result['nonblank']} non-blank, "
        f"{result['distinct']} distinct (after {elapsed:.0f} s)")
    st = w.call("pump_status")
    assert st["error"] is None, f"writer disturbed by Chromium: {st['error']}"
