"""A corrupt or malformed results.json (report, compare, expected-failures) is one line naming
the file, the key and the expected type, exit 2, never a traceback. Runs are built from the
guest cell files recorded in real runs (stock 0.15.0, Debian 6.1)."""

import json
import re

import pytest
from cli_expect import one_line_exit_2

from loopqual import cli
from loopqual.config import data
from loopqual.verdict import results


def meta(param_set):
    return {"id": f"001-{param_set}", "kernel": "debian-6.1", "kernel_release": "6.1.0-56-amd64",
            "module": "patched", "module_version": "0.15.0", "params": {"exclusive_caps": 1},
            "module_params": {"exclusive_caps": 1}, "controls": {}, "param_set": param_set,
            "gated": True, "patches": [], "reproduce": "loopqual qualify ...",
            "build": {"status": "ok", "log_tail": "", "warnings": []}}


@pytest.fixture
def run(fixtures):
    expected = data.load_expected_failures()
    cells = [results.evaluate_cell(meta(ps), json.loads((fixtures / "guest" / f).read_text()), None,
                                   expected)
             for ps, f in (("ec1", "recorded-6.1-stock-0.15.0-ec1-compliance-cell.json"),
                           ("ec0", "recorded-6.1-stock-0.15.0-ec0-compliance-cell.json"))]
    return {"started": "2026-11-25T00:00:00+00:00", "wall_s": 1.0, "boots": 1,
            "accel": {"debian-6.1": "tcg"}, "exit_code": results.exit_code(cells),
            "command": "loopqual qualify", "host": {"loopqual_commit": "abc"},
            "expected_failures": [e.__dict__ for e in expected], "cells": cells}


def write(tmp_path, run):
    """results.json laid out as the writer lays it out, but unchecked: most files here are
    broken on purpose, which the writer would refuse (test_resultsmodel.py)."""
    (tmp_path / "results.json").write_text(json.dumps({"schema": results.SCHEMA, **run}, indent=1))
    return tmp_path


COMMANDS = ["report", "compare", "expected-failures"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_whole_results_directory_is_read(tmp_path, run, command, capsys):
    results.write_json(tmp_path / "results.json", run)
    assert cli.main([command, str(tmp_path)]) in (0, 1)
    assert capsys.readouterr().err.count("error") == 0


def test_the_recorded_results_file_compares(fixtures, tmp_path, capsys):
    (tmp_path / "results.json").write_text(
        (fixtures / "results" / "recorded-6.1-stock-0.15.0-and-empty-series-contract.json").read_text())
    assert cli.main(["compare", str(tmp_path)]) == 0
    # it holds only what compare needs: the report says what is missing, in one line
    one_line_exit_2(capsys, ["report", str(tmp_path)],
                    r"results.json: cells\[0\]\.(build|health) \(cell debian-6\.1/debian-0\.15\.0/.*\): missing")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_truncated_results_file_is_one_line(tmp_path, run, command, capsys):
    d = write(tmp_path, run)
    text = (d / "results.json").read_text()
    (d / "results.json").write_text(text[: len(text) // 2])
    one_line_exit_2(capsys, [command, str(d)], rf"{re.escape(str(d))}/results.json: not valid JSON")


def _set(path):
    def change(run):
        *parents, last = path
        target = run
        for p in parents:
            target = target[p]
        if last is None:
            return run
        target[last] = change.value
        return run
    return change


CORRUPTIONS = [
    # (what, path to set, value, commands, message)
    ("cells a string", ["cells"], "x", COMMANDS, r"results.json: cells = \"x\": expected a list"),
    ("status a number", ["cells", 0, "status"], 5, COMMANDS,
     r"cells\[0\]\.status \(cell debian-6\.1/patched/ec1\) = 5: expected 'pass', 'fail', 'error' or "
     r"'incomplete'"),
    ("gated a string", ["cells", 1, "gated"], "yes", COMMANDS,
     r"cells\[1\]\.gated \(cell debian-6\.1/patched/ec0\) = \"yes\": expected true or false"),
    ("details a string", ["cells", 0, "compliance", 0, "tests", 0, "details"], "fail: x", COMMANDS,
     r"cells\[0\]\.compliance\[0\]\.tests\[0\]\.details \(cell .*\) = \"fail: x\": expected a list"),
    ("scenarios a table", ["cells", 0, "scenarios"], {}, COMMANDS,
     r"cells\[0\]\.scenarios \(cell .*\) = \{\}: expected a list"),
    ("schema of another loopqual", ["schema"], 7, COMMANDS,
     r"results.json: schema = 7: this loopqual reads schema 1"),
    ("exit code a string", ["exit_code"], "1", ["report"], r"results.json: exit_code = \"1\": expected 0, 1 or 2"),
    ("health a list", ["cells", 0, "health"], [], ["report"],
     r"cells\[0\]\.health \(cell .*\) = \[\]: expected a table"),
]


@pytest.mark.parametrize("what,path,value,commands,message", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_a_value_of_the_wrong_type_in_results_json_is_one_line(tmp_path, run, capsys, what, path, value,
                                                               commands, message):
    change = _set(path)
    change.value = value
    d = write(tmp_path, change(run))
    for command in commands:
        one_line_exit_2(capsys, [command, str(d)], message)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_key_or_a_list_at_the_top_is_one_line(tmp_path, run, command, capsys):
    del run["cells"][1]["kernel"]
    d = write(tmp_path, run)
    one_line_exit_2(capsys, [command, str(d)], r"results.json: cells\[1\]\.kernel: missing")
    (d / "results.json").write_text("[1, 2]")
    one_line_exit_2(capsys, [command, str(d)], r"results.json: expected a JSON object with schema and cells")
    (d / "results.json").unlink()
    one_line_exit_2(capsys, [command, str(d)], r"no results.json there")
