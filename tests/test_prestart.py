"""Browsers started ahead in the background (loopqual.guest.programs.prestart) and taken over
by K6: the waiting page, go.js, following a browser's output through its log file, and the
state of a process that is not one's child. The followed logs are recorded from real K6 runs
(tests/fixtures/ticking, see test_ticking_page.py); the processes are real ones."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from loopqual.common import procgroup
from loopqual.config import data
from loopqual.guest.programs import prestart, ticking

RECORDED = Path(__file__).parent / "fixtures/ticking"


def test_each_page_waits_for_its_go_js_and_reads_with_its_settings(tmp_path):
    for name in ("chromium", "firefox"):
        home = tmp_path / name
        home.mkdir()
        page = Path(ticking.write_page(name, str(home))).read_text()
        assert not re.search(r"%\(\w+\)", page), "a placeholder left in the page"
        assert "const main = async (cfg) =>" in page and 'src = "go.js?"' in page
        assert page.index('say("LOOPQUAL_STARTED at=" + Date.now())') < page.index("lookForGo();")
        for key in ("run_s", "tick_s", "sessions", "session_distinct", "card"):
            assert f"cfg.{key}" in page or name == "chromium" and "session" in key
        ticking.write_go(str(home), "Dummy video device (0x0000) and more", 600, 2, 3)
        go = (home / "go.js").read_text()
        cfg = json.loads(go[len("loopqualGo("):go.rindex(");")])
        assert cfg == {"card": "Dummy video device (", "run_s": 600, "tick_s": 2,
                       "sessions": 3, "session_distinct": ticking.SESSION_DISTINCT}
        assert not (home / ".go.js").exists()


def test_a_followed_browser_is_read_from_its_log(tmp_path):
    """A real process stands for the browser; its output is a recorded K6 log."""
    log = tmp_path / "output.log"
    log.write_bytes((RECORDED / "recorded-k6-firefox-6.1.log").read_bytes())
    p = subprocess.Popen(["sleep", "30"])
    try:
        b = ticking.TickingBrowser.follow_named("firefox", p.pid, str(log), time.monotonic(),
                                                time.time())
        b.pump(0.5)
        assert "LOOPQUAL_STARTED" in b.marks and len(b.history) == 16
        assert b.p.poll() is None and not b.log.closed
        with open(log, "ab") as f:  # what the browser writes later is read later
            f.write(b'LOOPQUAL_TICK {"changes": 999}\n')
        b.pump(0.5)
        assert b.changes() == 999
    finally:
        p.kill()
        p.wait()


def test_a_mark_the_page_timed_counts_from_the_launch_not_from_its_reading(tmp_path):
    """A prestarted browser's log is read minutes after its page wrote LOOPQUAL_STARTED: the
    page's own time (at=, ms since the epoch) says when it started."""
    epoch0 = time.time() - 300
    log = tmp_path / "output.log"
    log.write_text(f"LOOPQUAL_STARTED at={int((epoch0 + 12.34) * 1000)}\nLOOPQUAL_GO\n")
    p = subprocess.Popen(["sleep", "30"])
    try:
        b = ticking.TickingBrowser.follow_named("chromium", p.pid, str(log),
                                                time.monotonic() - 300, epoch0)
        b.pump(0.3)
        assert b.marks["LOOPQUAL_STARTED"] == 12.3
        assert 299 < b.marks["LOOPQUAL_GO"] < 310  # no time of its own: when it was read
    finally:
        p.kill()
        p.wait()


def test_a_foreign_process_state_and_exit_code_come_from_proc():
    p = subprocess.Popen(["sh", "-c", "exit 7"])
    deadline = time.monotonic() + 10
    while procgroup.exit_status(p.pid) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert procgroup.exit_status(p.pid) == 7  # a zombie: its parent has not reaped it
    assert p.wait() == 7
    assert procgroup.exit_status(p.pid) == -1  # reaped: gone
    q = subprocess.Popen(["sleep", "30"])
    assert procgroup.exit_status(q.pid) is None
    q.kill()
    q.wait()


def test_stop_foreign_ends_a_whole_session_it_did_not_start():
    p = procgroup.spawn(["sh", "-c", "sleep 60 & sleep 60 & wait"])
    try:
        deadline = time.monotonic() + 10
        while len(procgroup.live_members(p.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(procgroup.live_members(p.pid)) == 3
        assert procgroup.stop_foreign(p.pid, grace=2.0)
        assert procgroup.live_members(p.pid) == []
    finally:
        p.kill()
        p.wait()


def test_take_over_says_why_there_is_nothing_to_take(tmp_path):
    b, why = prestart.take_over("firefox", tmp_path, str(tmp_path), "Dummy", 60)
    assert b is None and why == "not prestarted"
    p = subprocess.Popen(["true"])
    p.wait()
    (tmp_path / "chromium").mkdir()
    (tmp_path / "chromium" / "started.json").write_text(
        json.dumps({"pid": p.pid, "t0": time.monotonic(), "epoch0": time.time(),
                    "program": "/usr/bin/chromium"}))
    b, why = prestart.take_over("chromium", tmp_path, str(tmp_path), "Dummy", 60)
    assert b is None and why == "prestarted, exited (-1) before its scenario"


def test_a_missing_program_is_not_started_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    (s,) = prestart.start(["firefox"], tmp_path / "cell")
    assert s.proc is None and s.why_not == "no program firefox-esr"
    assert not os.path.exists(tmp_path / "cell" / "firefox" / "started.json")


def test_suites_name_only_browsers_to_prestart(tmp_path):
    suites, _ = data.load_suites()
    assert suites["together"].prestart == ("chromium", "firefox")
    bad = tmp_path / "suites.toml"
    bad.write_text('[suite.x]\nkind = "pytest"\npaths = ["scenarios/x"]\nprestart = ["obs"]\n')
    try:
        data.load_suites(bad)
    except data.DataError as exc:
        assert "prestart names obs" in str(exc)
    else:
        raise AssertionError("prestart = [\"obs\"] was accepted")


def test_without_a_cgroup_v2_cpu_controller_nothing_is_started_and_it_says_why(
        tmp_path, monkeypatch):
    """The background start needs a cgroup of its own with a CPU weight (the guests have
    cgroup v2 with the cpu controller; this host has cgroup v1, so the folder stands for a
    tree without one): then
    the browser is left to its scenario, which launches it, and start() says why."""
    monkeypatch.setattr(prestart, "CGROUPS", tmp_path / "no-cgroup2")
    (s,) = prestart.start(["chromium"], tmp_path / "cell")
    assert s.proc is None and "start it in the background" in s.why_not
    assert not (tmp_path / "cell" / "chromium" / "started.json").exists()
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "cgroup.controllers").write_text("cpuset io memory pids\n")
    monkeypatch.setattr(prestart, "CGROUPS", tmp_path / "v2")
    (s,) = prestart.start(["chromium"], tmp_path / "cell")
    assert s.proc is None and s.why_not.startswith("no cgroup v2 cpu controller")


def test_browsers_are_prestarted_only_when_no_k_selects_scenarios(monkeypatch):
    """With -k the scenario that takes the browsers over may be deselected: nothing starts in
    the background, and a K6 that runs launches them itself."""
    from loopqual.config import data
    from loopqual.run import qualify

    monkeypatch.delenv("LOOPQUAL_PRESTART", raising=False)
    ps = data.resolve_params("ec1", data.load_params())

    def together(k):
        sel = qualify.select(["debian-6.1"], ["patched"], ["ec1"], ["together"], k)
        return next(e for e in qualify._cell_suites(ps, sel, {}) if e["name"] == "together")

    assert together(None)["prestart"] == ["chromium", "firefox"]
    assert "prestart" not in together("test_k3")
