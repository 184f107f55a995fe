"""K5 with the real browser: Debian's Firefox ESR, headless in the guest, with a fresh profile
that lets a page open a V4L2 camera directly (no permission prompt, no fake streams, no
PipeWire), captures the loopback device while a writer streams, stops the rude way (the
tracks stopped, nothing else), and does it again: three sessions in one browser, each of
which must see distinct non-blank frames (read through a <video> element into a canvas).
Start-up, camera open and capture are measured apart (lib/browser.py); a browser that does
not start in time makes the scenario incomplete, not a K5 failure.
"""

from __future__ import annotations

import pytest
from lib.browser import (
    ONE_FRAME_MIN_FRAMES,
    ONE_FRAME_S,
    browser_set_up,
    judge_capture,
    judge_writer,
    run_capture_page,
    scenario_timeout,
)

from loopqual.guest.programs.browser import camera_by_label_js, firefox_argv

SESSIONS = 3
SESSION_S = 4

PAGE = r"""<!doctype html><html><head><title>loopqual</title></head><body>
<video id="v" muted playsinline></video><canvas id="c" width="64" height="48"></canvas><script>
%(by_label)s
const say = (s) => { dump(s + "\n"); };
say("LOOPQUAL_STARTED");
const sleep = (ms) => new Promise(r => setTimeout(r, ms));
(async () => {
  const out = {label: null, frames: 0, distinct: 0, nonblank: 0, error: null, devices: [],
               sessions: []};
  try {
    const v = document.getElementById("v"), c = document.getElementById("c");
    const ctx = c.getContext("2d", {willReadFrequently: true});
    const seenAll = new Set();
    for (let s = 0; s < %(sessions)d; s++) {
      const stream = await cameraByLabel(
        await navigator.mediaDevices.getUserMedia({video: true}), out);
      const track = stream.getVideoTracks()[0];
      out.label = track.label;
      if (s === 0) say("LOOPQUAL_OPENED");
      v.srcObject = stream;
      await v.play();
      // frames the element presented (each new frame from the device, repeated or not)
      let presented = 0, counting = true;
      const onFrame = () => { presented++; if (counting) v.requestVideoFrameCallback(onFrame); };
      if (v.requestVideoFrameCallback) v.requestVideoFrameCallback(onFrame);
      const seen = new Set();
      let frames = 0, nonblank = 0;
      const end = performance.now() + %(seconds)d * 1000;
      while (performance.now() < end) {
        await sleep(100);
        if (!v.videoWidth) continue;
        ctx.drawImage(v, 0, 0, c.width, c.height);
        const px = ctx.getImageData(0, 0, c.width, c.height).data;
        let h = 0, nz = 0;
        for (let i = 0; i < px.length; i += 7) { h = (h * 31 + px[i]) | 0; if (px[i]) nz++; }
        frames++;
        if (nz > 0) { nonblank++; seen.add(h); seenAll.add(h); }
      }
      counting = false;
      out.sessions.push({frames, nonblank, distinct: seen.size, presented});
      out.frames += frames; out.nonblank += nonblank;
      // the rude stop: the tracks go, nothing is released in order
      track.stop();
      v.srcObject = null;
    }
    out.distinct = seenAll.size;
  } catch (e) { out.error = String(e); }
  say("LOOPQUAL_RESULT " + JSON.stringify(out));
})();
</script></body></html>
"""


def _firefox(s, record_property, seconds: float):
    """Firefox on the set-up's page with a fresh profile of FIREFOX_PREFS; what the page reported."""
    return run_capture_page(s.version, firefox_argv(s.program, s.home, s.page_url),
                            {**s.env, "MOZ_HEADLESS": "1"}, s.log_path, record_property,
                            capture_s=seconds)


@pytest.mark.rules("K5")
@pytest.mark.programs("firefox-esr")
@pytest.mark.timeout(scenario_timeout(SESSIONS * SESSION_S))
def test_k5_firefox_get_user_media_again_and_again(cell, openers, record_property):
    def page(card: str) -> str:
        return PAGE % {"by_label": camera_by_label_js(card), "seconds": SESSION_S, "sessions": SESSIONS}

    with browser_set_up(cell, openers, "Firefox ESR", "firefox-esr", page) as s:
        cap = _firefox(s, record_property, SESSIONS * SESSION_S)
    judge_capture(cap, cell.device, s.card)
    sessions = cap.result["sessions"]
    assert len(sessions) == SESSIONS and all(x["distinct"] >= 2 for x in sessions), (
        f"{s.version}: each of {SESSIONS} capture sessions after a rude stop should see at least "
        f"2 distinct non-blank frames in {SESSION_S} s, got {sessions}")
    judge_writer(s)


@pytest.mark.rules("K5", "F5")
@pytest.mark.programs("firefox-esr")
@pytest.mark.timeout(scenario_timeout(ONE_FRAME_S))
def test_k5_firefox_after_a_one_frame_writer_left(cell, openers, record_property):
    """Mozilla's own set-up (keep_format=1, sustain_framerate=1, one frame from a writer that
    exits at once): Firefox opens the device after the writer has gone and must keep receiving
    that frame, repeated at the device's frame rate, for the whole window."""
    def page(card: str) -> str:
        return PAGE % {"by_label": camera_by_label_js(card), "seconds": ONE_FRAME_S, "sessions": 1}

    with browser_set_up(cell, openers, "Firefox ESR", "firefox-esr", page, one_frame=True) as s:
        cap = _firefox(s, record_property, ONE_FRAME_S)
    record_property("seen_after_writer", s.seen_after_writer)
    judge_capture(cap, cell.device, s.card, min_distinct=1,
                  context=f"after the one-frame writer left, a new opener saw: {s.seen_after_writer}")
    session = cap.result["sessions"][0]
    record_property("presented", session["presented"])
    assert session["presented"] >= ONE_FRAME_MIN_FRAMES, (
        f"{s.version}, one frame written by a writer that then exited (keep_format=1, "
        f"sustain_framerate=1): expected the frame repeated, at least {ONE_FRAME_MIN_FRAMES} "
        f"frames presented in {ONE_FRAME_S} s, got {session}")
