"""report.html shows the expected-failures list grouped by kind of reason (inherent, policy,
pending) with each entry's rule and reason, and every suite or profile that was not run with
its reason. Cells come from guest cell files recorded in real runs (stock 0.15.0, Debian 6.1);
what the runner writes for a profile or suite the plan marks not applicable is added as the
runner writes it, with the reasons scenarios/suites.toml gives."""

import json
import re

from loopqual.config import data
from loopqual.output import report
from loopqual.run import qualify
from loopqual.verdict import results


def meta(param_set):
    return {"id": f"001-{param_set}", "kernel": "debian-6.1", "kernel_release": "6.1.0-56-amd64",
            "module": "patched", "module_version": "0.15.0", "params": {}, "module_params": {},
            "controls": {}, "param_set": param_set, "gated": True, "patches": [],
            "reproduce": "loopqual qualify ...", "build": {"status": "ok", "log_tail": "", "warnings": []}}


def test_report_groups_expected_failures_by_kind_and_says_what_was_not_run(fixtures, tmp_path):
    expected = data.load_expected_failures()
    suites, profiles = data.load_suites()
    params = data.load_params()
    ec0 = json.loads((fixtures / "guest" / "recorded-6.1-stock-0.15.0-ec0-compliance-cell.json").read_text())
    why_ec0 = profiles["capture-streaming"].applies_to(params["ec0"])
    (comp,) = ec0["suites"]
    comp["runs"] = [r if r["profile"] != "capture-streaming" else
                    {"profile": r["profile"], "status": "not-applicable", "not_applicable": why_ec0,
                     "tests": []} for r in comp["runs"]]
    open2 = {**ec0, "suites": [{"name": "compliance", "kind": "compliance",
                                "not_applicable": suites["compliance"].applies_to(params["ec1-open2"])}]}
    cells = [results.evaluate_cell(meta("ec0"), ec0, None, expected),
             results.evaluate_cell(meta("ec1-open2"), open2, None, expected)]
    run = {"started": "2026-11-25T00:00:00+00:00", "wall_s": 1.0, "boots": 1,
           "accel": {"debian-6.1": "tcg"}, "exit_code": results.exit_code(cells),
           "command": "loopqual qualify", "host": {"loopqual_commit": "abc"},
           "expected_failures": [e.__dict__ for e in expected], "cells": cells}
    out = tmp_path / "report.html"
    report.write_html(out, run)
    html = out.read_text()

    n = {c: sum(e.category == c for e in expected) for c in data.CATEGORIES}
    assert n["policy"] == 1 and n["inherent"] >= 1
    assert f"({n['inherent']} inherent, {n['policy']} policy)" in html
    groups = dict(re.findall(r"<h3>(\w+) \(\d+\).*?</h3>\s*<table>(.*?)</table>", html, re.S))
    assert set(groups) == {"inherent", "policy"}
    assert "<b>A3</b>" in groups["policy"] and "several readers" in groups["policy"]
    assert "<b>A3</b>" not in groups["inherent"] and "<b>X3</b>" in groups["inherent"]
    assert "Not run, and why" in html
    assert "debian-6.1/patched/ec0" in html and "write token" in html
    assert "max_openers=2" in html and "debian-6.1/patched/ec1-open2" in html


def test_runs_recorded_before_categories_are_grouped_by_their_inherent_flag():
    groups = report.expected_by_category([{"id": "a", "rule": "F1", "inherent": True},
                                          {"id": "b", "rule": "A3", "inherent": False}])
    assert [(c, [e["id"] for e in es]) for c, es in groups] == [("inherent", ["a"]), ("pending", ["b"])]


def test_the_plan_carries_the_set_up_exclusions_to_the_guest():
    """qualify's plan marks the profile / suite not applicable with the reason the report shows."""
    sel = qualify.select(["debian-6.1"], ["patched"], ["ec0", "ec1-open2"], ["compliance"], None)
    plans = {ps.name: qualify._plan_cell({"id": "x", "module": "patched", "module_version": "v"}, "m.ko",
                                         ps, sel) for ps in sel.param_sets}
    (ec0,) = plans["ec0"]["suites"]
    na = {p["name"]: p.get("not_applicable") for p in ec0["profiles"]}
    assert na["capture"] is None and "producer" in na["capture-streaming"]
    (open2,) = plans["ec1-open2"]["suites"]
    assert "max_openers=2" in open2["not_applicable"]


def test_report_shows_what_a_scenario_measured(fixtures, tmp_path):
    """The browser scenario's start-up and capture seconds (recorded patched ec1 cell) are in
    the report beside its verdict (issue 8 point 0: report both)."""
    guest = json.loads((fixtures / "guest" / "recorded-6.1-patched-ec1-browser-cell.json").read_text())
    cell = results.evaluate_cell(meta("ec1"), guest, None, [])
    (k4,) = cell["scenarios"]
    assert set(k4["measurements"]) == {"browser", "startup_s", "open_s", "capture_s"}
    run = {"started": "2026-12-02T00:00:00+00:00", "wall_s": 1.0, "boots": 1,
           "accel": {"debian-6.1": "tcg"}, "exit_code": 0, "command": "loopqual qualify",
           "host": {"loopqual_commit": "abc"}, "expected_failures": [], "cells": [cell]}
    report.write_html(tmp_path / "report.html", run)
    html = (tmp_path / "report.html").read_text()
    assert f"startup_s {k4['measurements']['startup_s']}" in html
    assert k4["measurements"]["browser"] in html
