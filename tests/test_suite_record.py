"""The guest runner's account of a pytest suite, with real pytest sessions run on the host by
the runner itself (forked, the Recorder plugin attached, as in the guest) over small scenario
files written for each test. What is judged here is the harness's bookkeeping: a suite that
lost scenarios is incomplete (issue 8 point 5), and a scenario whose program is missing is
incomplete, never a skip or a pass (point 3)."""

from __future__ import annotations

import textwrap

from loopqual.guest import runner
from loopqual.verdict import results, rules


def run_suite(tmp_path, body: str, timeout_s: float = 60) -> dict:
    (tmp_path / "scenarios").mkdir(exist_ok=True)
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "test_tiny.py").write_text(textwrap.dedent(body))
    cell_json = tmp_path / "cell.json"
    cell_json.write_text("{}")
    suite = {"name": "tiny", "kind": "pytest", "paths": ["test_tiny.py"], "timeout_s": timeout_s,
             "env": {}}
    return runner.run_pytest_suite(suite, {"id": "001-tiny"}, cell_json, tmp_path / "out",
                                   str(tmp_path))


def test_a_whole_session_is_complete(tmp_path):
    sr = run_suite(tmp_path, """
        def test_a(): pass
        def test_b(): assert 1 + 1 == 3
    """)
    assert sr["incomplete"] is None
    assert sr["session"] == {"exitstatus": 1, "collected": 2, "recorded": 2}
    assert [s["status"] for s in sr["scenarios"]] == ["pass", "fail"]


def test_a_session_that_ended_early_with_exit_0_is_incomplete(tmp_path):
    """A process that vanishes mid-session with status 0 (here os._exit; in the guest, a
    pytest whose status was lost) used to count as complete with what it had recorded."""
    sr = run_suite(tmp_path, """
        import os
        def test_a(): pass
        def test_b(): os._exit(0)
        def test_c(): pass
    """)
    assert sr["exit"] == 0 and len(sr["scenarios"]) == 1
    assert sr["incomplete"] and "did not finish its session" in sr["incomplete"]


def test_fewer_recorded_scenarios_than_collected_is_incomplete():
    suite = {"name": "contract", "timeout_s": 900}
    session = {"exitstatus": 0, "collected": 3, "recorded": 3}
    why = runner.suite_incomplete(suite, None, False, session, [{"id": "a"}, {"id": "b"}], None)
    assert why == "suite contract: 2 of 3 collected scenarios were recorded"
    # killed after finishing (status lost), everything recorded: whole
    assert runner.suite_incomplete(suite, None, False, session, [{}, {}, {}], None) is None


def test_a_missing_program_makes_the_scenario_and_its_cell_incomplete(tmp_path):
    sr = run_suite(tmp_path, """
        import pytest
        from loopqual.guest.programs.infra import need_program

        @pytest.mark.rules("K4")
        def test_needs_a_browser():
            need_program("loopqual-no-such-browser")
            assert False, "never reached"

        def test_other(): pass
    """)
    first = sr["scenarios"][0]
    assert first["status"] == "incomplete"
    assert "loopqual-no-such-browser is not installed" in first["message"]
    # the suite's record says so, and the cell's incomplete list the runner sends the host
    # (its progress line) with it
    assert sr["incomplete"] == f"scenario {first['id']} could not judge the module: {first['message']}"
    guest = {"complete": True, "errors": [], "incomplete": [sr["incomplete"]], "suites": [sr],
             "health": {"splats": [], "rmmod": "ok", "refcnt": 0}}
    meta = {"id": "001-tiny", "kernel": "debian-6.1", "kernel_release": "6.1.0-57-amd64",
            "module": "patched", "module_version": "0.15.0", "params": {}, "module_params": {},
            "controls": {}, "param_set": "ec1", "gated": True, "patches": [],
            "build": {"status": "ok", "log_tail": "", "warnings": []}, "reproduce": ""}
    cell = results.evaluate_cell(meta, guest, None, [])
    assert cell["status"] == "incomplete"
    assert [line for line in cell["incomplete"] if "loopqual-no-such-browser" in line] == [sr["incomplete"]]
    # a guest file without the runner's line (judged on the host alone) is incomplete too
    alone = results.evaluate_cell(meta, {**guest, "incomplete": [], "suites": [{**sr, "incomplete": None}]},
                                  None, [])
    assert alone["status"] == "incomplete" and alone["incomplete"] == [sr["incomplete"]]
    assert results.exit_code([cell]) == 2
    _, table = rules.compare({"cells": [cell]}, {"K4": "", "A1": ""})
    assert table["K4"]["patched"]["verdict"] == rules.NOT_JUDGED
