"""Verdicts, gating against expected failures, exit codes and writers, on guest cell files
recorded from real runs (stock 0.15.0, Debian 6.1, compliance suite)."""

import copy
import json
import xml.etree.ElementTree as ET

import pytest

from loopqual.config import data
from loopqual.output import report
from loopqual.verdict import results


def meta(gated=False, param_set="ec1", build_status="ok"):
    return {"id": "001-x", "kernel": "debian-6.1", "kernel_release": "6.1.0-56-amd64",
            "module": "patched" if gated else "debian-0.15.0", "module_version": "0.15.0",
            "params": {"exclusive_caps": 1}, "module_params": {"exclusive_caps": 1},
            "controls": {}, "param_set": param_set, "gated": gated, "patches": [],
            "build": {"status": build_status, "log_tail": "x.c:1: error: boom", "warnings": []},
            "reproduce": "loopqual qualify ..."}


@pytest.fixture
def ec1_cell(fixtures):
    return json.loads((fixtures / "guest" / "recorded-6.1-stock-0.15.0-ec1-compliance-cell.json").read_text())


@pytest.fixture
def ec0_cell(fixtures):
    return json.loads((fixtures / "guest" / "recorded-6.1-stock-0.15.0-ec0-compliance-cell.json").read_text())


def ef(id_, kind="compliance", param_sets=()):
    return data.ExpectedFailure(kind=kind, id=id_, reason="stock format descriptions",
                                rule="F1", issue="4", category="pending", detail="",
                                param_sets=tuple(param_sets))


def test_stock_cell_with_compliance_failures_fails_but_is_informational(ec1_cell):
    cell = results.evaluate_cell(meta(), ec1_cell, None, [])
    assert cell["status"] == "fail"
    assert results.exit_code([cell]) == 0  # informational
    lines = results.failures(cell)
    assert any("for unlimited opens" in x for x in lines)
    assert sum(r["failed"] for r in cell["compliance"]) == 2 + 6 + 1 + 5


def test_gated_cell_fails_the_gate(ec1_cell):
    cell = results.evaluate_cell(meta(gated=True), ec1_cell, None, [])
    assert results.exit_code([cell]) == 1


def test_expected_failures_do_not_fail_the_gate_and_passing_listed_items_do(ec1_cell):
    every_failure = [ef("*::*/for unlimited opens"), ef("*::*/VIDIOC_ENUM_FMT/*"),
                     ef("*::Streaming ioctls/*")]
    cell = results.evaluate_cell(meta(gated=True), ec1_cell, None, every_failure)
    statuses = {t["status"] for r in cell["compliance"] for t in r["tests"]}
    assert "fail" not in statuses and "xfail" in statuses
    # the Streaming glob also covers "read/write", which passes: listed but passing
    assert "xpass" in statuses
    assert cell["status"] == "fail" and results.exit_code([cell]) == 1
    assert any("listed as an expected failure" in x for x in results.failures(cell))
    narrow = [ef("*::*/for unlimited opens"), ef("*::Format ioctls (Output 0)/VIDIOC_ENUM_FMT/*"),
              ef("*::Streaming ioctls/blocking wait"), ef("*::Streaming ioctls/MMAP *")]
    cell = results.evaluate_cell(meta(gated=True), ec1_cell, None, narrow)
    assert cell["status"] == "pass" and results.exit_code([cell]) == 0


def test_expectations_apply_only_to_gated_cells(ec1_cell):
    cell = results.evaluate_cell(meta(gated=False), ec1_cell, None, [ef("*::*")])
    assert not any(t["status"] in ("xfail", "xpass") for r in cell["compliance"] for t in r["tests"])


def test_expectation_scoped_to_param_sets(ec1_cell):
    cell = results.evaluate_cell(meta(gated=True), ec1_cell, None,
                                 [ef("*::*/for unlimited opens", param_sets=["ec0*"])])
    assert any("for unlimited opens" in x for x in results.failures(cell))


def test_build_failure_is_an_error_result_not_a_crash():
    cell = results.evaluate_cell(meta(build_status="failed"), None, None, [])
    assert cell["status"] == "error" and "boom" in cell["errors"][0]
    assert results.exit_code([cell]) == 0  # stock: informational
    assert results.exit_code([results.evaluate_cell(meta(True, build_status="failed"), None, None, [])]) == 1


def test_compiler_warnings_fail_a_gated_cell_only(ec1_cell):
    warning = ("/work/main/.cache/build/6.1.0-57-amd64/patched-x/src/v4l2loopback.c:1234:13: "
               "warning: unused variable 'ret' [-Wunused-variable]")
    gated = meta(gated=True)
    gated["build"]["warnings"] = [warning]
    cell = results.evaluate_cell(gated, ec1_cell, None, [])
    assert cell["status"] == "fail" and results.exit_code([cell]) == 1
    assert any(x.startswith("build: 1 compiler warning(s)") and "unused variable" in x
               for x in results.failures(cell))
    clean = results.evaluate_cell(meta(gated=True), ec1_cell, None, [])
    assert not any(x.startswith("build:") for x in results.failures(clean))
    stock = meta()
    stock["build"]["warnings"] = [warning]
    assert not any(x.startswith("build:") for x in results.failures(
        results.evaluate_cell(stock, ec1_cell, None, [])))


def test_cell_the_guest_never_finished_is_incomplete_and_exits_2(ec1_cell):
    cell = results.evaluate_cell(meta(), None, {"reason": "kernel panic: x", "console_tail": ["a"]}, [])
    assert cell["status"] == "incomplete" and cell["incomplete"] == ["kernel panic: x"]
    ok = results.evaluate_cell(meta(gated=True), ec1_cell, None, [ef("*::*")])
    assert results.exit_code([ok, cell]) == 2


def test_guest_incomplete_profile_makes_the_cell_incomplete(ec1_cell):
    guest = json.loads(json.dumps(ec1_cell))
    guest["incomplete"] = ["compliance output-streaming: v4l2-compliance printed nothing for 30 s"]
    cell = results.evaluate_cell(meta(), guest, None, [])
    assert cell["status"] == "incomplete"


def test_splat_and_failed_rmmod_fail_the_cell(ec1_cell):
    guest = json.loads(json.dumps(ec1_cell))
    guest["health"] = {"splats": [{"pattern": "warning", "line": "WARNING: x", "context": []}],
                       "rmmod": "busy", "refcnt": 1}
    cell = results.evaluate_cell(meta(gated=True), guest, None, [ef("*::*")])
    lines = results.failures(cell)
    assert any("kernel log: warning" in x for x in lines) and any("rmmod" in x for x in lines)
    assert cell["status"] == "fail"


def test_writers(tmp_path, ec1_cell, ec0_cell):
    cells = [results.evaluate_cell(meta(), ec1_cell, None, []),
             results.evaluate_cell(meta(param_set="ec0"), ec0_cell, None, []),
             results.evaluate_cell(meta(build_status="failed"), None, None, [])]
    run = {"started": "2026-11-25T00:00:00+00:00", "wall_s": 1.0, "boots": 1,
           "accel": {"debian-6.1": "tcg"}, "exit_code": results.exit_code(cells),
           "command": "loopqual qualify", "host": {"loopqual_commit": "abc"},
           "expected_failures": [], "cells": cells}
    results.write_json(tmp_path / "results.json", run)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["schema"] == 1
    for key in ("kernel", "kernel_release", "module", "module_version", "params", "param_set",
                "gated", "status", "build", "scenarios", "compliance", "health", "reproduce"):
        assert key in doc["cells"][0]
    for key in ("profile", "total", "succeeded", "failed", "warnings", "tests"):
        assert key in doc["cells"][0]["compliance"][0]
    results.write_junit(tmp_path / "junit.xml", run)
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert len(root.findall("testsuite")) == 3
    n_fail_tests = sum(1 for r in cells[0]["compliance"] for t in r["tests"] if t["status"] == "fail")
    suite0 = root.findall("testsuite")[0]
    assert int(suite0.get("failures")) == n_fail_tests
    assert root.findall("testsuite")[2].find("testcase/error") is not None  # the build
    report.write_html(tmp_path / "report.html", run)
    html = (tmp_path / "report.html").read_text()
    assert "for unlimited opens" in html and "build failed" in html
    table = report.terminal_table(run)
    assert "FAIL" in table and "ERROR" in table


def test_expected_failures_draft_scopes_entries_to_where_they_failed(ec1_cell, ec0_cell, tmp_path):
    from loopqual.verdict import expectedfailures

    cells = [results.evaluate_cell(meta(gated=True), ec1_cell, None, []),
             results.evaluate_cell(meta(gated=True, param_set="ec0"), ec0_cell, None, [])]
    text = expectedfailures.draft({"cells": cells})
    path = tmp_path / "draft.toml"
    path.write_text(text)
    # a draft cannot be used as it is: every reason is still a TODO
    with pytest.raises(data.DataError, match="TODO"):
        data.load_expected_failures(path)
    path.write_text(text.replace('reason = "TODO: ', 'reason = "written: '))
    entries = data.load_expected_failures(path)
    # the drafted list, used as the expected failures, makes exactly these cells pass
    again = [results.evaluate_cell(meta(gated=True), ec1_cell, None, entries),
             results.evaluate_cell(meta(gated=True, param_set="ec0"), ec0_cell, None, entries)]
    assert again[0]["status"] == "pass" and results.failures(again[1]) == []
    # the ec0 fixture holds a hung profile: no list can excuse an incomplete run
    assert again[1]["status"] == "incomplete"
    # ENUM_FMT fails in both cells' output profiles: no param_sets scope; the capture-side
    # QUERYCAP failure exists only under exclusive_caps=0: scoped to ec0
    by_id = {e.id: e for e in entries}
    assert by_id["output::Format ioctls (Output 0)/VIDIOC_ENUM_FMT/FRAMESIZES/FRAMEINTERVALS"].param_sets == ()
    assert by_id["capture::Required ioctls/VIDIOC_QUERYCAP"].param_sets == ("ec0",)


def test_detail_pattern_excuses_only_the_failure_it_names(ec1_cell):
    a3 = data.ExpectedFailure(kind="compliance", id="*::*/for unlimited opens", reason="r",
                              rule="L1", issue="4", category="pending", detail=r"cpp\(736\): !ok")
    other = data.ExpectedFailure(kind="compliance", id="*::*/for unlimited opens", reason="r",
                                 rule="L1", issue="4", category="pending", detail="node2 == nullptr")
    hit = results.evaluate_cell(meta(gated=True), ec1_cell, None, [a3])
    miss = results.evaluate_cell(meta(gated=True), ec1_cell, None, [other])
    opens = [t for c in (hit,) for r in c["compliance"] for t in r["tests"] if t["name"] == "for unlimited opens"]
    assert {t["status"] for t in opens} == {"xfail"}
    assert any("for unlimited opens" in x for x in results.failures(miss))


def _junit_failing(run: dict, tmp_path) -> dict[str, list[str]]:
    """junit.xml as written for `run`: per testsuite (cell label), the names of the testcases
    that fail or error."""
    path = tmp_path / "junit.xml"
    results.write_junit(path, run)
    out = {}
    for ts in ET.parse(path).getroot():
        out[ts.get("name")] = [tc.get("name") for tc in ts
                               if tc.find("failure") is not None or tc.find("error") is not None]
    return out


def test_junit_and_results_agree_on_a_stray_opener(fixtures, tmp_path):
    """issue 8 point 2: a cell that results.json fails because a process still held the
    device after its suites (health left_open) must not be green in junit.xml."""
    guest = json.loads((fixtures / "guest" / "recorded-6.1-patched-ec1-browser-cell.json").read_text())
    clean = results.evaluate_cell(meta(gated=True), guest, None, [])
    assert clean["status"] == "pass"
    assert _junit_failing({"cells": [clean]}, tmp_path) == {results.cell_label(clean): []}
    # as the runner records an opener the suites left behind (tests/guest selftest)
    guest["health"]["left_open"] = [
        "pid 4242 (python3 -c opener) still had the device open after the suites: killed"]
    cell = results.evaluate_cell(meta(gated=True), guest, None, [])
    assert cell["status"] == "fail" and results.exit_code([cell]) == 1
    failing = _junit_failing({"cells": [cell]}, tmp_path)[results.cell_label(cell)]
    assert failing == ["kernel-log+rmmod"]


def test_junit_is_never_greener_than_the_cell_verdict(fixtures, tmp_path):
    """Every recorded cell, however it is judged: junit.xml has a failing testcase exactly
    when results.json's verdict is not pass."""
    cells = []
    for name in ("recorded-6.1-patched-ec1-browser-cell.json",
                 "recorded-6.1-stock-0.15.0-ec1-compliance-cell.json",
                 "recorded-6.1-stock-0.15.0-ec0-compliance-cell.json"):
        guest = json.loads((fixtures / "guest" / name).read_text())
        for gated in (False, True):
            m = {**meta(gated=gated), "id": f"{name}-{gated}"}
            m["param_set"] = f"{name}-{gated}"  # a label of its own per cell
            cells.append(results.evaluate_cell(m, guest, None, []))
            guest2 = copy.deepcopy(guest)
            guest2["health"]["stuck"] = ["suite contract: pid 7 state D (close): v4l2_loopback_close"]
            m2 = {**m, "id": m["id"] + "-stuck", "param_set": m["param_set"] + "-stuck"}
            cells.append(results.evaluate_cell(m2, guest2, None, []))
    failing = _junit_failing({"cells": cells}, tmp_path)
    for c in cells:
        assert bool(failing[results.cell_label(c)]) == (c["status"] != "pass"), results.cell_label(c)


def test_compliance_counts_are_split_by_version(fixtures):
    """A gate cell judged by two v4l2-compliance versions (recorded: patched, debian-6.1, ec0,
    bookworm's 1.22.1 on two profiles and sid's 1.32.0 on one): the per-version counts are the
    runs' own, and together they make the cell's totals."""
    cell = json.loads((fixtures / "results" / "recorded-gate-6.1-patched-ec0-cell.json").read_text())
    c = results.counts(cell)
    by = c["compliance_by_version"]
    assert set(by) == {"1.22.1", "1.32.0"}
    assert (by["1.22.1"]["total"], by["1.22.1"]["xfail"], by["1.22.1"]["failed"]) == (90, 10, 0)
    assert (by["1.32.0"]["total"], by["1.32.0"]["xfail"], by["1.32.0"]["failed"]) == (48, 3, 0)
    for key in ("total", "failed", "xfail", "warnings"):
        assert c["compliance"][key] == sum(v[key] for v in by.values())
    unversioned = copy.deepcopy(cell)
    for run in unversioned["compliance"]:
        run.pop("version", None)
    assert set(results.counts(unversioned)["compliance_by_version"]) == {"unknown version"}


def test_terminal_table_prints_a_few_failures_whole(fixtures):
    """CI keeps only the printed tail: a lone failure's message reaches it whole (here the
    program's own last words), many are cut to share the space."""
    cell = json.loads((fixtures / "results" / "recorded-sid-ec1-clients-k6-ffmpeg-exited-cell.json")
                      .read_text())
    (failure,) = results.failures(cell)
    assert len(failure) > 400
    table = report.terminal_table({"cells": [cell], "wall_s": 1.0, "boots": 1})
    assert failure in table and "Error submitting video frame to the encoder" in table
    assert report.problem_width(1) == 2000 and report.problem_width(60) == 200
    assert report.shorten(failure, 200).endswith("...") and len(report.shorten(failure, 200)) == 200
