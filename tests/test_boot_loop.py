"""The host's boot loop (vm.run_plan) with the boot itself replaced by a function that plays
what a guest did (wrote result files, or came up too late): the loop's own decisions are
under test here (retry a boot that settled nothing once, bound the reboots, stop on a
signal), not the device. And what progress prints at a cell's end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loopqual.boot import vm
from loopqual.run import qualify

SLOW = "guest watchdog: boot gave no sign of progress within its budget; the guest was stopped"


def plan(n: int) -> dict:
    return {"kernel": "debian-6.1", "release": "6.1.0-x", "repo": "/repo",
            "cells": [{"id": f"00{i}-c", "suites": []} for i in range(1, n + 1)]}


class FakeGuest:
    """A scripted sequence of boots. Each step: 'slow' (no cell started), 'run' (runs every
    remaining cell to its result file), 'one' (one cell then the guest dies between cells),
    'hang' (the first cell starts and never ends)."""

    def __init__(self, rwdir: Path, script: list[str]):
        self.rwdir, self.script, self.boots = rwdir, list(script), 0

    def write(self, cid: str) -> None:
        (self.rwdir / "cells" / f"{cid}.json").write_text(json.dumps(
            {"id": cid, "complete": True, "incomplete": [], "errors": []}))

    def __call__(self, plan_path: Path):
        self.boots += 1
        cells = json.loads(plan_path.read_text())["cells"]
        step = self.script.pop(0) if self.script else "slow"
        if step == "slow":
            return None, SLOW, ["console line"]
        if step == "run":
            for c in cells:
                self.write(c["id"])
            return None, "", []
        if step == "one":
            self.write(cells[0]["id"])
            return None, "the guest ended unexpectedly (vng exit 1)", []
        if step == "hang":
            return cells[0]["id"], "guest watchdog: cell gave no sign of progress", []
        raise AssertionError(step)


def run(tmp_path, n, script, events=None):
    guest = FakeGuest(tmp_path, script)
    gr = vm.run_plan(plan(n), Path("/boot/vmlinuz"), tmp_path,
                     (events.append if events is not None else lambda ev: None), "tcg", boot=guest)
    return gr, guest


def test_a_slow_boot_is_retried_once_and_the_cells_then_run(tmp_path):
    events = []
    gr, guest = run(tmp_path, 2, ["slow", "run"], events)
    assert gr.boots == 2 and gr.host_incomplete == {}
    assert [e["event"] for e in events] == ["boot-retry"]


def test_two_slow_boots_in_a_row_make_the_cells_incomplete(tmp_path):
    gr, guest = run(tmp_path, 3, ["slow", "slow", "run"])
    assert gr.boots == 2
    assert sorted(gr.host_incomplete) == ["001-c", "002-c", "003-c"]
    assert all(SLOW in v["reason"] and "retry" in v["reason"] for v in gr.host_incomplete.values())


def test_a_boot_that_settled_a_cell_resets_the_retry(tmp_path):
    # slow, one cell, slow, rest: every failed boot was followed by a good one
    gr, guest = run(tmp_path, 3, ["slow", "one", "slow", "run"])
    assert gr.boots == 4 and gr.host_incomplete == {}


def test_reboots_are_bounded_by_cells_plus_two(tmp_path):
    # a guest that settles one cell and then fails once, again and again: 2 boots per cell
    gr, guest = run(tmp_path, 4, ["one", "slow", "one", "slow", "one", "slow", "one"])
    assert gr.boots == 4 + vm.EXTRA_BOOTS == guest.boots
    left = gr.host_incomplete
    assert list(left) == ["004-c"] and left["004-c"]["reason"].startswith("reboot limit: 6 boots")


def test_a_hung_cell_is_settled_by_the_host_and_the_rest_run(tmp_path):
    events = []
    gr, guest = run(tmp_path, 2, ["hang", "run"], events)
    assert gr.boots == 2 and list(gr.host_incomplete) == ["001-c"]
    end = [e for e in events if e["event"] == "cell-end"]
    assert end and qualify.cell_outcome(end[0]).startswith("INCOMPLETE (guest watchdog")


def test_a_stop_request_settles_every_remaining_cell(tmp_path):
    def boot(plan_path):
        vm.STOP.request("interrupted by SIGTERM")
        return "001-c", "", []

    try:
        gr = vm.run_plan(plan(3), Path("/boot/vmlinuz"), tmp_path, lambda ev: None, "tcg", boot=boot)
    finally:
        vm.STOP.reset()
    assert gr.boots == 1
    assert {k: v["reason"] for k, v in gr.host_incomplete.items()} == {
        c: "interrupted by SIGTERM" for c in ("001-c", "002-c", "003-c")}


def test_cell_end_progress_reads_the_cells_result_file(tmp_path):
    """The runner says complete=True at the end of a cell whose suite timed out: the host
    reads the cell's result file and prints INCOMPLETE with the reason, never 'done'."""
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "001-c.json").write_text(json.dumps(
        {"id": "001-c", "complete": True, "errors": [],
         "incomplete": ["suite contract timed out after 600 s"]}))
    seen = []
    handler = vm._with_cell_outcome(seen.append, tmp_path / "cells")
    handler({"event": "cell-end", "cell": "001-c", "complete": True, "duration_s": 612.0})
    assert qualify.cell_outcome(seen[0]) == "INCOMPLETE (suite contract timed out after 600 s)"


@pytest.mark.parametrize("ev,outcome", [
    ({"complete": True, "incomplete": [], "errors": []}, "done"),
    ({"complete": True, "incomplete": ["suite contract timed out after 600 s", "x"]},
     "INCOMPLETE (suite contract timed out after 600 s; +1 more)"),
    ({"complete": False, "errors": ["insmod: exit 1\nmore"]}, "ERROR (insmod: exit 1)"),
    ({"complete": False}, "INCOMPLETE"),
])
def test_cell_outcome(ev, outcome):
    assert qualify.cell_outcome({"event": "cell-end", **ev}) == outcome


def test_progress_line_for_a_timed_out_suite_is_not_done(capsys):
    prog = qualify.Progress(1, {"001-c": "debian-6.1 patched ec1"})
    prog({"event": "cell-end", "cell": "001-c", "complete": True, "duration_s": 612.0,
          "incomplete": ["suite contract timed out after 600 s"]})
    err = capsys.readouterr().err
    assert "INCOMPLETE (suite contract timed out after 600 s) in 612.0 s" in err
    assert ": done" not in err
