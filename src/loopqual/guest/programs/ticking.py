"""A browser that reads the loopback device for a long time and reports as it goes: a page
that opens the camera by its label (getUserMedia again every 3 s until it succeeds) and prints
what it has received so far every `tick_s` seconds (LOOPQUAL_TICK {json}): frames, non-blank
frames, distinct non-blank frames and changes (a non-blank frame unlike the one before).
Chromium reads frames through MediaStreamTrackProcessor, Firefox draws each frame its <video>
element was presented into a canvas (looked for every 100 ms). A page whose track ends opens
the camera again (counted in `opened`). Firefox's page can begin with sessions (K5's "again and
again"): each of its first `sessions` openings reads until it has seen `session_distinct`
distinct non-blank frames and ends the rude way (the tracks stopped, nothing else), each
session's own counts and seconds reported in out.sessions; then it
opens the camera again and reads as before. Used by K6 (suite together) and by `loopqual bench --programs`
(browsers as readers).
"""

from __future__ import annotations

import json
import os
import time

from loopqual.guest.programs.browser import BrowserRun, camera_by_label_js_of, chromium_argv, firefox_argv

# Firefox's rude-stop sessions (K5): each reads until it has seen SESSION_DISTINCT distinct
# non-blank frames (in K6, of a writer at 1 fps), then stops the rude way. Sessions of a fixed
# 8-10 s saw 6-9 distinct frames, but 3 and once 1 where the busy guest starved Firefox's page
# (debian-sid and debian-6.12 in make test): how fast frames come is the guest's
# speed; that they come again after each rude stop is the module's part, and a session that
# gets none does not end (K6's SESSIONS_LIMIT_S judges it: scenarios/lib/ticking.py).
FIREFOX_SESSIONS = 3
SESSION_DISTINCT = 3

PROGRAMS = {"chromium": "chromium", "firefox": "firefox-esr"}  # page's browser -> its program

# Both pages: getUserMedia again every 3 s until it succeeds (a tick reports each failure),
# then the loopback device by its label; `until` is when the page stops reading. A page whose
# track ends (Chromium ends a capture that got no frame for 10 s: 10 poll timeouts of 1 s) opens
# the camera again the same way and counts it (out.opened: 1 after the first opening).
OPEN_JS = r"""      let stream = null;
      while (!stream && performance.now() < until) {
        try { stream = await navigator.mediaDevices.getUserMedia({video: true}); }
        catch (e) { out.error = String(e); say("LOOPQUAL_TICK " + JSON.stringify(out)); await sleep(3000); }
      }
      if (!stream) break;
      out.error = null;
      stream = await cameraByLabel(stream, out);
      const track = stream.getVideoTracks()[0];
      out.label = track.label;
      out.opened++;
"""

# Both pages run main(cfg) once go.js, beside the page, calls loopqualGo(cfg): a browser started
# ahead of its scenario (prestart.py) waits on its page until the scenario writes go.js, and
# one launched by the scenario finds go.js at once. A script element, not fetch(): a file://
# page may load scripts from its directory in both browsers, and nothing else.
GO_JS = r"""let going = false;
window.loopqualGo = (cfg) => { if (going) return; going = true; say("LOOPQUAL_GO"); main(cfg); };
const lookForGo = () => {
  if (going) return;
  const s = document.createElement("script");
  s.src = "go.js?" + Date.now();
  s.onerror = () => { s.remove(); setTimeout(lookForGo, 1000); };
  document.head.appendChild(s);
};
lookForGo();
"""

CHROMIUM_PAGE = r"""<!doctype html><html><head><title>loopqual</title></head><body><script>
const say = (s) => console.log(s);
say("LOOPQUAL_STARTED at=" + Date.now());
const sleep = (ms) => new Promise(r => setTimeout(r, ms));
const main = async (cfg) => {
%(by_label)s  const out = {label: null, frames: 0, nonblank: 0, distinct: 0, changes: 0, opened: 0,
               error: null, devices: []};
  const seen = new Set();
  let last = null;
  const until = performance.now() + cfg.run_s * 1000;
  let next = performance.now();
  try {
    while (performance.now() < until) {
%(open)s      if (out.opened === 1) say("LOOPQUAL_OPENED");
      const reader = new MediaStreamTrackProcessor({track}).readable.getReader();
      // one read() outstanding at a time, kept across the 1 s ticks: reads given up still take
      // the next frames, in order, so after a few 1 s timeouts every new frame went to a read
      // nobody awaited (and nobody closed its frame): with OBS at 1 fps the first full runs'
      // page counted 3-4 frames while Chromium's capture went on dequeuing one a second (strace)
      let pending = null;
      while (performance.now() < until) {
        if (performance.now() >= next) {
          out.distinct = seen.size; out.ended = track.readyState === "ended";
          say("LOOPQUAL_TICK " + JSON.stringify(out)); next += cfg.tick_s * 1000;
        }
        if (!pending) pending = reader.read();
        const r = await Promise.race([pending,
          new Promise(res => setTimeout(() => res({timeout: true}), 1000))]);
        if (r.timeout) continue;
        pending = null;
        if (r.done) break;  // the track ended: open the camera again
        const f = r.value;
        out.frames++;
        try {
          const buf = new Uint8Array(f.allocationSize());
          await f.copyTo(buf);
          let h = 0, nz = 0;
          for (let i = 0; i < buf.length; i += 61) { h = (h * 31 + buf[i]) | 0; if (buf[i]) nz++; }
          if (nz > 0) { out.nonblank++; seen.add(h); if (h !== last) out.changes++; last = h; }
        } catch (e) { out.error = "copyTo: " + e; }
        f.close();
      }
      stream.getTracks().forEach(t => t.stop());
    }
  } catch (e) { out.error = String(e); }
  out.distinct = seen.size;
  say("LOOPQUAL_RESULT " + JSON.stringify(out));
};
%(go)s</script></body></html>
"""

FIREFOX_PAGE = r"""<!doctype html><html><head><title>loopqual</title></head><body>
<video id="v" muted playsinline></video><canvas id="c" width="64" height="48"></canvas><script>
const say = (s) => { dump(s + "\n"); };
say("LOOPQUAL_STARTED at=" + Date.now());
const sleep = (ms) => new Promise(r => setTimeout(r, ms));
const main = async (cfg) => {
%(by_label)s  const out = {label: null, frames: 0, nonblank: 0, distinct: 0, changes: 0, presented: 0,
               opened: 0, error: null, devices: [], sessions: []};
  const seen = new Set();
  let last = null;
  const until = performance.now() + cfg.run_s * 1000;
  let next = performance.now();
  const v = document.getElementById("v"), c = document.getElementById("c");
  const ctx = c.getContext("2d", {willReadFrequently: true});
  // a frame is drawn into the canvas once it was presented (requestVideoFrameCallback), not at
  // every 100 ms poll: the page's own work must not take the vCPU from what it judges
  let fresh = 0;
  const onFrame = () => { out.presented++; fresh++; v.requestVideoFrameCallback(onFrame); };
  if (v.requestVideoFrameCallback) v.requestVideoFrameCallback(onFrame);
  try {
    while (performance.now() < until) {
%(open)s      if (out.opened === 1) say("LOOPQUAL_OPENED");
      v.srcObject = stream;
      await v.play();
      // the first cfg.sessions openings are sessions of cfg.session_distinct distinct frames each,
      // each ended the rude way
      const session = out.sessions.length < cfg.sessions;
      const sessionStart = performance.now();
      const sess = {frames: 0, nonblank: 0, distinct: 0, changes: 0, presented: -out.presented};
      const sSeen = new Set();
      while (performance.now() < until && track.readyState !== "ended"
             && !(session && sSeen.size >= cfg.session_distinct)) {
        if (performance.now() >= next) {
          out.distinct = seen.size; out.ended = false;
          say("LOOPQUAL_TICK " + JSON.stringify(out)); next += cfg.tick_s * 1000;
        }
        await sleep(100);
        if (!v.videoWidth || (v.requestVideoFrameCallback && !fresh)) continue;
        fresh = 0;
        ctx.drawImage(v, 0, 0, c.width, c.height);
        const px = ctx.getImageData(0, 0, c.width, c.height).data;
        let h = 0, nz = 0;
        for (let i = 0; i < px.length; i += 7) { h = (h * 31 + px[i]) | 0; if (px[i]) nz++; }
        out.frames++; sess.frames++;
        if (nz > 0) {
          out.nonblank++; sess.nonblank++; seen.add(h); sSeen.add(h);
          if (h !== last) { out.changes++; sess.changes++; } last = h;
        }
      }
      if (session && track.readyState !== "ended" && sSeen.size >= cfg.session_distinct) {
        // the rude stop: the tracks go, nothing is released in order; then the camera again
        sess.distinct = sSeen.size; sess.presented += out.presented;
        sess.s = Math.round((performance.now() - sessionStart) / 100) / 10;
        out.sessions.push(sess);
        track.stop();
        v.srcObject = null;
        continue;
      }
      out.ended = true;  // the track ended: open the camera again
      stream.getTracks().forEach(t => t.stop());
    }
  } catch (e) { out.error = String(e); }
  out.distinct = seen.size;
  say("LOOPQUAL_RESULT " + JSON.stringify(out));
};
%(go)s</script></body></html>
"""


class TickingBrowser(BrowserRun):
    """A browser whose page reports what it has received so far every tick_s seconds; the
    newest report is kept (and every report, with the time it arrived), and pump() reads its
    output for a while without waiting on a mark."""

    def __init__(self, name: str, argv: list[str], env: dict, log_path: str):
        super().__init__(argv, env, log_path)
        self._reports(name)

    @classmethod
    def follow_named(cls, name: str, pid: int, log_path: str, t0: float, epoch0: float
                     ) -> TickingBrowser:
        """BrowserRun.follow for a browser on the ticking page (prestart.py)."""
        self = cls.follow(pid, log_path, t0, epoch0)
        self._reports(name)
        return self

    def _reports(self, name: str) -> None:
        self.name = name
        self.last: dict = {}
        self.history: list[tuple[float, dict]] = []  # (arrival, report) per report
        self.refused_since: float | None = None  # first of the reports in a row with an error

    def _scan(self, line: bytes) -> None:
        super()._scan(line)
        i = line.find(b"LOOPQUAL_TICK ")
        if i >= 0:
            js = line[i + len(b"LOOPQUAL_TICK "):].decode(errors="replace")
            try:
                self.last = json.loads(js[: js.rfind("}") + 1])
            except ValueError:
                return
            now = time.monotonic()
            self.history.append((now, self.last))
            if not self.last.get("error"):
                self.refused_since = None
            elif self.refused_since is None:
                self.refused_since = now

    def pump(self, seconds: float) -> None:
        self.wait_for("LOOPQUAL_NEVER", time.monotonic() - self.t0 + seconds)

    def refused_for(self) -> float:
        """Seconds for which every report has carried an error (the page failing to open the
        camera, trying again every 3 s); 0 while it reads or has said nothing."""
        return 0.0 if self.refused_since is None else time.monotonic() - self.refused_since

    def changes(self) -> int:
        return int(self.last.get("changes") or 0)

    def state(self) -> str:
        return json.dumps(self.last)[:300]


def pump_all(browsers: list[TickingBrowser], seconds: float) -> None:
    """Read every running browser's output for about `seconds` (a stopped one is left out:
    its log is closed)."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        running = [b for b in browsers if not b.log.closed]
        if not running:
            time.sleep(left)
            return
        for b in running:
            b.pump(min(0.5, max(0.05, left / len(running))))


def write_page(name: str, bhome: str) -> str:
    """The ticking page for `name` in bhome, waiting for its go.js; its path."""
    page = os.path.join(bhome, "page.html")
    with open(page, "w") as f:
        f.write((CHROMIUM_PAGE if name == "chromium" else FIREFOX_PAGE)
                % {"open": OPEN_JS, "by_label": camera_by_label_js_of("cfg.card"), "go": GO_JS})
    return page


def write_go(bhome: str, card: str, run_s: int, tick_s: int = 2, sessions: int = 0,
             session_distinct: int = SESSION_DISTINCT) -> None:
    """go.js beside the page: it starts reading (written whole, then renamed into place)."""
    cfg = {"card": card[:20], "run_s": run_s, "tick_s": tick_s, "sessions": sessions,
           "session_distinct": session_distinct}
    tmp = os.path.join(bhome, ".go.js")
    with open(tmp, "w") as f:
        f.write(f"loopqualGo({json.dumps(cfg)});\n")
    os.replace(tmp, os.path.join(bhome, "go.js"))


def browser_command(name: str, program: str, bhome: str) -> tuple[list[str], dict]:
    """(argv, environment) of `name` on its page in bhome, with a fresh profile there."""
    page = write_page(name, bhome)
    env = dict(os.environ, HOME=bhome, XDG_CONFIG_HOME=os.path.join(bhome, "config"),
               XDG_CACHE_HOME=os.path.join(bhome, "cache"), DBUS_SESSION_BUS_ADDRESS="disabled:")
    if name == "chromium":
        return chromium_argv(program, bhome, f"file://{page}"), env
    env["MOZ_HEADLESS"] = "1"
    return firefox_argv(program, bhome, f"file://{page}"), env


def launch(name: str, program: str, home: str, log_dir: str, card: str, run_s: int,
           tick_s: int = 2, sessions: int = 0,
           session_distinct: int = SESSION_DISTINCT) -> TickingBrowser:
    """Start `name` ("chromium" or "firefox") with a fresh profile under home/name on the
    ticking page; the page reads for run_s seconds, looking for a camera whose label holds
    the card's name; the browser's output goes to log_dir/NAME.log. Firefox's page first reads
    `sessions` sessions of session_distinct distinct frames, each ended by a rude stop
    (Chromium's page has none)."""
    if sessions and name == "chromium":
        raise ValueError("the rude-stop sessions are Firefox's page's (K5)")
    bhome = os.path.join(home, name)
    os.makedirs(bhome)
    argv, env = browser_command(name, program, bhome)
    write_go(bhome, card, run_s, tick_s, sessions, session_distinct)
    return TickingBrowser(name, argv, env, os.path.join(log_dir, f"{name}.log"))
