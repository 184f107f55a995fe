"""K4 with the real browser: Debian's Chromium, headless in the guest, calls getUserMedia on
the loopback device while a writer streams, and counts distinct non-blank frames read with
MediaStreamTrackProcessor. Its own suite: the browser's start-up under TCG takes minutes.
Start-up, camera open and capture are measured apart (lib/browser.py), and a browser that
does not start in time makes the scenario incomplete, not a K4 failure.
"""

from __future__ import annotations

import pytest
from lib.browser import (
    CAPTURE_S,
    ONE_FRAME_MIN_FRAMES,
    ONE_FRAME_S,
    browser_set_up,
    judge_capture,
    judge_writer,
    run_capture_page,
    scenario_timeout,
)

from loopqual.guest.programs.browser import camera_by_label_js, chromium_argv

PAGE = r"""<!doctype html><html><head><title>loopqual</title></head><body><script>
%(by_label)s
const report = (o) => { const s = "LOOPQUAL_RESULT " + JSON.stringify(o);
  console.log(s); document.title = s; };
console.log("LOOPQUAL_STARTED");
(async () => {
  const out = {label: null, frames: 0, distinct: 0, nonblank: 0, error: null, devices: []};
  try {
    const stream = await cameraByLabel(
      await navigator.mediaDevices.getUserMedia({video: true}), out);
    const track = stream.getVideoTracks()[0];
    out.label = track.label;
    console.log("LOOPQUAL_OPENED");
    const reader = new MediaStreamTrackProcessor({track}).readable.getReader();
    const seen = new Set();
    const end = performance.now() + %(seconds)d * 1000;
    // one read() outstanding at a time: reads given up still take the next frames, in order,
    // and nobody would count or close them (K6's page lost every frame that way at 1 fps)
    let pending = null;
    while (performance.now() < end && out.frames < 300) {
      if (!pending) pending = reader.read();
      const r = await Promise.race([pending,
        new Promise(res => setTimeout(() => res({timeout: true}), 5000))]);
      if (r.timeout) continue;
      pending = null;
      if (r.done) break;
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


@pytest.mark.rules("K4")
@pytest.mark.programs("chromium")
@pytest.mark.timeout(scenario_timeout())
def test_k4_chromium_get_user_media(cell, openers, record_property):
    def page(card: str) -> str:
        return PAGE % {"by_label": camera_by_label_js(card), "seconds": CAPTURE_S}

    with browser_set_up(cell, openers, "Chromium", "chromium", page) as s:
        argv = chromium_argv(s.program, s.home, s.page_url)
        cap = run_capture_page(s.version, argv, s.env, s.log_path, record_property)
    judge_capture(cap, cell.device, s.card)
    judge_writer(s)


@pytest.mark.rules("K4", "F5")
@pytest.mark.programs("chromium")
@pytest.mark.timeout(scenario_timeout(ONE_FRAME_S))
def test_k4_chromium_after_a_one_frame_writer_left(cell, openers, record_property):
    """Mozilla's own set-up (keep_format=1, sustain_framerate=1, one frame from a writer that
    exits at once): Chromium opens the device after the writer has gone and must keep receiving
    that frame, repeated at the device's frame rate, for the whole window."""
    def page(card: str) -> str:
        return PAGE % {"by_label": camera_by_label_js(card), "seconds": ONE_FRAME_S}

    with browser_set_up(cell, openers, "Chromium", "chromium", page, one_frame=True) as s:
        argv = chromium_argv(s.program, s.home, s.page_url)
        cap = run_capture_page(s.version, argv, s.env, s.log_path, record_property,
                               capture_s=ONE_FRAME_S)
    record_property("seen_after_writer", s.seen_after_writer)
    judge_capture(cap, cell.device, s.card, min_distinct=1,
                  context=f"after the one-frame writer left, a new opener saw: {s.seen_after_writer}")
    record_property("frames", cap.result["frames"])
    assert cap.result["frames"] >= ONE_FRAME_MIN_FRAMES, (
        f"{s.version}, one frame written by a writer that then exited (keep_format=1, "
        f"sustain_framerate=1): expected the frame repeated, at least {ONE_FRAME_MIN_FRAMES} "
        f"frames in {ONE_FRAME_S} s, got {cap.result['frames']}")
