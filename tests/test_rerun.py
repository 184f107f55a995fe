"""A failing scenario that drives a real program is run once more in the same boot
(guest/suite_record.py): which ones are run again, and what the suite's record says after,
on records of real runs."""

from __future__ import annotations

import json

from loopqual.common.suite_record import RERUN_MAX, merge_rerun, rerun_candidates
from loopqual.output import report
from loopqual.verdict import results


def records(fixtures, name: str) -> list[dict]:
    text = (fixtures / "rerun" / name).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_one_failing_program_scenario_is_run_again_and_fails_again(fixtures):
    # debian-0.15.4 refuses GStreamer as a second reader (EBUSY): a real failure, twice
    first = records(fixtures, "recorded-6.1-0.15.4-clients-ec1-first-run.jsonl")
    (again,) = rerun_candidates(first)
    assert again["id"].endswith("test_k6_two_consumers_ffmpeg_and_gstreamer")
    second = records(fixtures, "recorded-6.1-0.15.4-clients-ec1-rerun.jsonl")
    merged = merge_rerun(first, second, None)
    (k6,) = [sc for sc in merged if sc["id"] == again["id"]]
    assert k6["status"] == "fail" and k6["rerun"]["status"] == "fail" and "flaky" not in k6
    (line,) = results.failures({"gated": False, "build": {}, "scenarios": [k6],
                                "compliance": [], "health": {}})
    assert "(run again: fail)" in line
    assert f"| its second run: {k6['rerun']['message'].splitlines()[0][:600]}" in line
    assert [sc["status"] for sc in merged if sc is not k6] == ["pass"]


def test_many_failures_in_a_suite_are_not_run_again(fixtures):
    # seven failures, most of them replays without a program: the module, not the load
    first = records(fixtures, "recorded-6.1-0.15.4-clients-ec1-seven-failures.jsonl")
    assert sum(sc["status"] == "fail" for sc in first) > RERUN_MAX
    assert rerun_candidates(first) == []
    one_replay = [sc for sc in first if sc["status"] == "pass"] + [
        next(sc for sc in first if sc["status"] == "fail" and not sc.get("programs"))]
    assert rerun_candidates(one_replay) == []


def test_a_pass_on_the_second_run_is_flaky_with_its_first_failure_kept(fixtures):
    # ffmpeg exiting on two frames stamped in one millisecond (debian-sid, a loaded machine),
    # and the same scenario passing in another run; these records predate the recorder's
    # `programs`, which the scenario's marker gives
    (first,) = records(fixtures, "recorded-sid-patched-k6-ffmpeg-exited.jsonl")
    (second,) = records(fixtures, "recorded-sid-patched-k6-passed.jsonl")
    first["programs"] = second["programs"] = ["ffmpeg", "gst-launch-1.0"]
    assert rerun_candidates([first]) == [first]
    (merged,) = merge_rerun([first], [second], None)
    assert merged["status"] == "pass" and merged["flaky"]["status"] == "fail"
    assert "Error submitting video frame" in merged["flaky"]["message"]
    # a rerun that did not finish never turns a failure into a pass
    (kept,) = merge_rerun([first], [second], "suite clients-ec1 (rerun) timed out after 600 s")
    assert kept["status"] == "fail" and "timed out" in kept["rerun"]["incomplete"]
    (lost,) = merge_rerun([first], [], None)
    assert lost["status"] == "fail" and lost["rerun"] == {"status": "incomplete"}

    meta = {"id": "015-x", "kernel": "debian-sid", "kernel_release": "7.2.13-amd64",
            "module": "patched", "module_version": "0.15.4", "params": {}, "module_params": {},
            "controls": {}, "param_set": "ec1", "gated": True, "patches": [],
            "build": {"status": "ok", "log_tail": "", "warnings": []}, "reproduce": ""}
    guest = {"suites": [{"name": "clients-ec1", "kind": "pytest", "scenarios": [merged]}],
             "health": {}, "devices": ["/dev/video0"], "complete": True}
    cell = results.evaluate_cell(meta, guest, None, [])
    assert cell["status"] == "pass" and results.failures(cell) == []
    (line,) = results.flaky(cell)
    assert "passed when run again" in line and "non monotonically increasing dts" in line
    table = report.terminal_table({"cells": [cell], "wall_s": 1.0, "boots": 1})
    assert "Flaky (failed, then passed when run again in the same boot):" in table
