"""The results model (verdict/resultsmodel.py) on a run recorded whole: the gate of Debian
6.1, 6.12 and sid, patched, six parameter sets (loopqual ddb6e0f, 18 cells). Read back and
written again, results.json and junit.xml are the bytes that run wrote, and the terminal
table is the one rendered from it before the model existed (b905416; the run's own output
was not kept). And the writer refuses a key it does not know or a value of the wrong type,
in one line naming it, while the reader passes over keys another loopqual wrote."""

from __future__ import annotations

import copy
import json
import lzma
import re
from pathlib import Path

import pytest

from loopqual.common.errors import ResultsFileError
from loopqual.output import report
from loopqual.run import shards
from loopqual.verdict import results, resultsreader

RECORDED = Path(__file__).parent / "fixtures" / "results" / "recorded-gate-6.1-6.12-sid-patched"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The recorded run's directory (its results.json), its junit.xml and terminal table."""
    d = tmp_path_factory.mktemp("recorded")
    (d / "results.json").write_bytes(lzma.decompress(Path(f"{RECORDED}-results.json.xz").read_bytes()))
    junit = lzma.decompress(Path(f"{RECORDED}-junit.xml.xz").read_bytes())
    return d, junit, Path(f"{RECORDED}-terminal.txt").read_text()


@pytest.fixture
def run(recorded):
    return copy.deepcopy(resultsreader.load(recorded[0], for_report=True))


def same_bytes(written: bytes, recorded: bytes) -> str:
    """'' when equal, else the first line that differs (a whole file in an assertion is
    unreadable)."""
    if written == recorded:
        return ""
    for n, (a, b) in enumerate(zip(written.splitlines(), recorded.splitlines(), strict=False), 1):
        if a != b:
            return f"line {n}: written {a[:200]!r}, recorded {b[:200]!r}"
    return f"{len(written)} bytes written, {len(recorded)} recorded"


def test_the_recorded_run_read_back_is_written_byte_for_byte(recorded, run, tmp_path):
    d, junit, terminal = recorded
    assert run["exit_code"] == 0 and len(run["cells"]) == 18
    results.write_json(tmp_path / "results.json", run)
    assert same_bytes((tmp_path / "results.json").read_bytes(), (d / "results.json").read_bytes()) == ""
    results.write_junit(tmp_path / "junit.xml", run)
    assert same_bytes((tmp_path / "junit.xml").read_bytes(), junit) == ""
    assert same_bytes((report.terminal_table(run) + "\n").encode(), terminal.encode()) == ""


def refused(tmp_path, run, message, copied=()):
    path = tmp_path / "results.json"
    with pytest.raises(ResultsFileError) as err:
        results.write_json(path, run, copied)
    assert json.loads(path.read_text())["cells"]  # written all the same: nothing is lost
    text = str(err.value)
    assert text.startswith(f"{path}: it does not fit the results model") and "\n" not in text
    assert re.search(message, text), text
    return text


def test_the_writer_refuses_a_misspelt_key(tmp_path, run):
    sc = run["cells"][0]["scenarios"][3]
    sc["mesage"] = sc.pop("message")
    text = refused(tmp_path, run, r": cells\[0\]\.scenarios\[3\]\.mesage \(cell debian-6\.1/patched/ec0\): "
                                  r"unknown key; allowed: .*\bmessage\b")
    assert "missing" not in text  # the unknown key explains the missing one
    sc["message"] = sc.pop("mesage")
    run["wall-s"] = run.pop("wall_s")
    refused(tmp_path, run, r": wall-s: unknown key; allowed: .*\bwall_s\b")


@pytest.mark.parametrize("where,value,message", [
    (["cells", 4, "gated"], "yes", r"cells\[4\]\.gated \(cell debian-6\.1/patched/ec1-buf8\) = \"yes\": "
                                   r"expected true or false"),
    (["cells", 0, "compliance", 1, "tests", 0, "details"], "fail: x",
     r"cells\[0\]\.compliance\[1\]\.tests\[0\]\.details \(cell .*\) = \"fail: x\": expected a list"),
    (["cells", 0, "status"], "passed", r"cells\[0\]\.status \(cell .*\) = \"passed\": expected 'pass'"),
    (["wall_s"], "1973 s", r": wall_s = \"1973 s\": expected a number"),
    (["exit_code"], 3, r": exit_code = 3: expected 0, 1 or 2"),
    (["lanes", 0, "boots"], 1.5, r": lanes\[0\]\.boots = 1\.5: expected an integer"),
], ids=["gated", "details", "cell status", "wall_s", "exit_code", "lane boots"])
def test_the_writer_refuses_a_value_of_the_wrong_type(tmp_path, run, where, value, message):
    *parents, last = where
    target = run
    for key in parents:
        target = target[key]
    target[last] = value
    refused(tmp_path, run, message)


def test_a_key_another_loopqual_wrote_is_read_and_merged_but_not_written_anew(tmp_path, run):
    run["cells"][0]["scenarios"][0]["written_by_a_newer_loopqual"] = 1
    run["lanes"][0]["written_by_a_newer_loopqual"] = 1
    (tmp_path / "results.json").write_text(json.dumps(run, indent=1))
    assert resultsreader.load(tmp_path, for_report=True) == run  # passed over, kept as it was
    out = tmp_path / "out"
    out.mkdir()
    refused(out, run, r"cells\[0\]\.scenarios\[0\]\.written_by_a_newer_loopqual .*: unknown key")
    # merge copies the shards' cells and lanes as they are; what it adds itself is checked
    results.write_json(out / "results.json", run, shards.COPIED_FROM_SHARDS)
    assert json.loads((out / "results.json").read_text()) == run
    (out / "results.json").unlink()
    run["merge"] = {"plan_id": "x", "n": 2, "problems": [], "shards": [], "shard_count": 2}
    refused(out, run, r": merge\.shard_count: unknown key", shards.COPIED_FROM_SHARDS)
    run["merge"] = {"plan_id": "x", "n": 2, "problems": []}
    refused(out, run, r": merge\.shards: missing", shards.COPIED_FROM_SHARDS)
    del run["merge"]
    run["cells"][1]["gated"] = "yes"  # copied or not, a value of the wrong type is refused
    refused(out, run, r"cells\[1\]\.gated \(cell .*\) = \"yes\": expected true or false",
            shards.COPIED_FROM_SHARDS)
