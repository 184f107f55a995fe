"""The run's time profile (issue 11: where the time went), from a cell file recorded in a
real run (patched, Debian 6.1, ec1, browser suite), as results.json, the terminal summary and
report.html carry it."""

from __future__ import annotations

import json

from loopqual.output import report, timeprofile
from loopqual.run import qualify
from loopqual.verdict import results


def meta(cid: str, param_set: str) -> dict:
    return {"id": cid, "kernel": "debian-6.1", "kernel_release": "6.1.0-57-amd64",
            "module": "patched", "module_version": "0.15.0", "params": {}, "module_params": {},
            "controls": {}, "param_set": param_set, "gated": True, "patches": [],
            "build": {"status": "ok", "log_tail": "", "warnings": []}, "reproduce": ""}


def recorded_run(fixtures) -> dict:
    guest = json.loads((fixtures / "guest" / "recorded-6.1-patched-ec1-browser-cell.json").read_text())
    cells = [results.evaluate_cell(meta(f"00{i}-x", f"ec1-{i}"), guest, None, []) for i in (1, 2)]
    # as qualify records a lane that booted once in 21.4 s and ran both cells
    lane = {"kernel": "debian-6.1", "cells": [c["id"] for c in cells], "wall_s": 700.0,
            "boots": 1, "boot_seconds": [21.4]}
    return {"wall_s": 720.0, "boots": 1, "boot_seconds": [21.4], "lanes": [lane], "cells": cells,
            "exit_code": 0, "started": "2026-12-02T00:00:00+00:00", "accel": {"debian-6.1": "tcg"},
            "command": "loopqual qualify", "host": {"loopqual_commit": "abc"}, "expected_failures": []}


def test_profile_totals_steps_lanes_and_the_slowest_scenarios(fixtures):
    run = recorded_run(fixtures)
    p = timeprofile.time_profile(run)
    cell = run["cells"][0]
    browser = dict(cell["steps"])["suite browser"]
    assert p["steps"]["suite browser"] == round(2 * browser, 1)
    assert list(p["steps"])[0] == "suite browser"  # the biggest first
    assert p["boots"] == {"count": 1, "total_s": 21.4, "seconds": [21.4]}
    (lane,) = p["lanes"]
    assert lane["cells_s"] == round(2 * cell["duration_s"], 1)
    assert lane["other_s"] == round(700.0 - 21.4 - 2 * cell["duration_s"], 1)
    assert p["slowest_scenarios"][0]["id"] == "browser/test_chromium.py::test_k4_chromium_get_user_media"


def test_results_json_terminal_and_report_carry_the_profile(fixtures, tmp_path):
    run = recorded_run(fixtures)
    qualify.write_results(tmp_path, run)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["profile"] == timeprofile.time_profile(run) and written["profile"]["lanes"]
    text = report.terminal_table(run)
    assert "Time: 1 boot(s) 21 s; suite browser" in text and "slowest scenario: browser/" in text
    report.write_html(tmp_path / "report.html", run)
    html = (tmp_path / "report.html").read_text()
    assert "Where the time went" in html
    bars, kinds = timeprofile.bars(run)
    assert kinds == ["load", "browser", "health + rmmod"]
    assert len(bars[0]["rows"]) == 2 and html.count('class="step s1"') >= 2
