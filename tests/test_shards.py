"""Many machines (issue 11): `loopqual plan` splits the selection into shards balanced by the
suites' typical times, `qualify --shard K/N` runs exactly shard K's cells, and `loopqual merge`
puts the shards back together. Merges are tested on the cells of a recorded run (default
matrix, suite contract, Debian 6.1), dealt into shard results directories as the plan says."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
from cli_expect import one_line_exit_2

from loopqual import cli
from loopqual.run import qualify, shards
from loopqual.verdict import results, resultsreader, rules

RECORDED = "recorded-6.1-stock-0.15.0-and-empty-series-contract.json"
FOUR = ["debian-0.12.7", "debian-0.13.2", "debian-0.15.0", "patched"]


def contract_sel():
    # The recorded run (RECORDED) ran the then-default modules: stock 0.15.0 and patched.
    return qualify.select([], ["debian-0.15.0", "patched"], [], ["contract"], None)


def big_sel():
    return qualify.select(["debian-6.1", "debian-6.12"], FOUR, [],
                          ["contract", "compliance", "clients", "browser"], None)


# ---------------------------------------------------------------------------- plan
def test_plan_is_deterministic_and_names_every_cell_once():
    sel = qualify.select([], [], [], [], None)
    a, b = qualify.plan_shards(sel, 3), qualify.plan_shards(qualify.select([], [], [], [], None), 3)
    assert a.plan_id == b.plan_id and a.shards == b.shards and a.expected_s == b.expected_s
    every = [cid for cid, *_ in qualify.matrix(sel)]
    assert sorted(cid for s in a.shards for cid in s) == sorted(every) and len(every) == 12
    for s in a.shards:  # plan order within a shard
        assert s == sorted(s)


def test_plan_prints_the_same_on_every_call(capsys):
    outs = []
    for _ in range(2):
        assert cli.main(["plan", "--shards", "3"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]
    plan = json.loads(outs[0])
    assert [s["shard"] for s in plan] == ["1/3", "2/3", "3/3"]
    assert len({s["plan_id"] for s in plan}) == 1


@pytest.mark.parametrize("make_sel, n, bound", [
    (lambda: qualify.select([], [], [], [], None), 2, 1.1),  # the default matrix
    (lambda: qualify.select([], [], [], [], None), 3, 1.2),
    (big_sel, 4, 1.1),  # 48 cells: two kernels, four sources, four suites
    (big_sel, 6, 1.1),
])
def test_plan_is_balanced(make_sel, n, bound):
    plan = qualify.plan_shards(make_sel(), n)
    assert max(plan.expected_s) / min(plan.expected_s) <= bound, plan.expected_s


def test_two_shards_of_two_kernels_boot_one_kernel_each():
    plan = qualify.plan_shards(big_sel(), 2)
    kernels = [{c["kernel"] for c in plan.cells if c["shard"] == k} for k in (1, 2)]
    assert kernels == [{"debian-6.1"}, {"debian-6.12"}]


def test_a_slow_kernels_cells_weigh_its_time_factor():
    """The debug kernel (time_factor 4 in kernels.toml: its contract cell took 170-203 s
    against 33 s on debian-6.12) weighs four times a Debian kernel's same cell, so that it gets
    the guests and shards its time needs."""
    sel = qualify.select(["debian-6.1", "debian-6.12-debug"], ["patched"], ["ec1"], ["contract"], None)
    plan = qualify.plan_shards(sel, 2)
    by_kernel = {c["kernel"]: c["expected_s"] for c in plan.cells}
    assert by_kernel["debian-6.12-debug"] == 4 * by_kernel["debian-6.1"]
    assert sorted(plan.expected_s) == sorted([round(by_kernel[k]) + qualify.BOOT_S for k in by_kernel])


def test_a_shard_expects_a_boot_per_kernel_it_runs():
    plan = qualify.plan_shards(big_sel(), 1)
    assert plan.expected_s == [round(sum(c["expected_s"] for c in plan.cells) + 2 * qualify.BOOT_S)]


def test_plan_id_names_the_selection_and_the_shard_count():
    sel = qualify.select([], [], [], [], None)
    ids = {qualify.plan_shards(sel, n).plan_id for n in (2, 3)}
    ids.add(qualify.plan_shards(contract_sel(), 3).plan_id)
    assert len(ids) == 3


def test_plan_needs_no_kernel_and_builds_nothing(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("plan must not install a kernel or build")

    monkeypatch.setattr(qualify.kernels, "resolve", refuse)
    monkeypatch.setattr(qualify.buildmod, "build", refuse)
    monkeypatch.setattr(qualify.sources, "prepare", refuse)
    assert cli.main(["plan", "--kernel", "debian-6.12", "--shards", "2"]) == 0


def test_plan_formats_for_the_ci_engines(capsys):
    assert cli.main(["plan", "--shards", "3", "--format", "github"]) == 0
    gh = json.loads(capsys.readouterr().out)
    assert gh == {"include": [{"shard": "1/3"}, {"shard": "2/3"}, {"shard": "3/3"}]}
    assert cli.main(["plan", "--shards", "3", "--format", "gitlab"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"SHARD": ["1/3", "2/3", "3/3"]}]


@pytest.mark.parametrize("bad", ["0/3", "4/3", "x", "3/0", "1/", "-1/3"])
def test_bad_shard_is_one_line_exit_2(bad, capsys):
    one_line_exit_2(capsys, ["qualify", f"--shard={bad}"], r"--shard .*give K/N")


@pytest.mark.parametrize("bad, pattern", [("0", "whole number"), ("x", "whole number"),
                                          ("13", "has 12 cell")])
def test_bad_shard_count_is_one_line_exit_2(bad, pattern, capsys):
    one_line_exit_2(capsys, ["plan", "--shards", bad], pattern)


def test_more_shards_than_cells_is_refused_by_qualify_too(capsys):
    one_line_exit_2(capsys, ["qualify", "--suite", "contract", "--shard", "1/13"], "has 12 cell")


# ---------------------------------------------------------------------------- qualify --shard
def test_a_shard_plans_exactly_its_cells_and_only_its_kernel(monkeypatch, tmp_path):
    """qualify --shard 2/2 of a two-kernel selection: only shard 2's cells are planned, built
    and written, and only its kernel is resolved. The kernel and the build are stand-ins that
    say the build failed, so that nothing boots in a unit test."""
    sel = qualify.select(["debian-6.1", "debian-6.12"], ["debian-0.15.0", "patched"], ["ec1"],
                         ["contract"], None)
    plan = qualify.plan_shards(sel, 2)
    resolved, built = [], []

    def resolve(kernel):
        resolved.append(kernel.name)
        return SimpleNamespace(name=kernel.name, release=f"{kernel.name}-release", vmlinuz=None,
                               version="", suite="host", compiler="", arg=kernel.name)

    def build_module(kernel, ik, m, _all, _mirror):
        built.append((kernel.name, m.name))
        return (SimpleNamespace(status="failed", log_tail="stand-in: no build in a unit test",
                                warnings=[], cached=False, key="", ko=None), "0.15.0", [])

    monkeypatch.setattr(qualify.kernels, "resolve", resolve)
    monkeypatch.setattr(qualify, "_build_module", build_module)
    out = tmp_path / "shard2"
    code = qualify.qualify(sel, out, ["qualify", "--shard", "2/2"], shard=(plan, 2))
    run = resultsreader.load(out, for_report=True)
    mine = plan.shards[1]
    assert [c["id"] for c in run["cells"]] == mine and len(mine) == 2
    assert run["shard"]["cells"] == mine and run["shard"]["k"] == 2 and run["shard"]["n"] == 2
    assert run["shard"]["plan_id"] == plan.plan_id
    assert [c["id"] for c in run["shard"]["plan_cells"]] == [cid for cid, *_ in qualify.matrix(sel)]
    kernel = {c["kernel"] for c in plan.cells if c["shard"] == 2}
    assert set(resolved) == kernel and len(resolved) == 1
    assert sorted(built) == sorted((k, m) for k in kernel for m in ("debian-0.15.0", "patched"))
    assert code == results.exit_code(run["cells"])
    assert "Shard 2/2 of plan" in (out / "report.html").read_text()


# ---------------------------------------------------------------------------- merge
@pytest.fixture
def recorded(fixtures):
    """The recorded run's cells (what compare reads), made whole for the writers: the build
    passed and the guest recorded nothing else than the scenarios."""
    run = json.loads((fixtures / "results" / RECORDED).read_text())
    cells = []
    for c in run["cells"]:
        cells.append({"build": {"status": "ok", "log_tail": "", "warnings": []},
                      "health": {"splats": [], "rmmod": "ok"}, "errors": [], "incomplete": [],
                      "compliance": [], "incomplete_suites": [], "suites_not_applicable": [],
                      "params": {}, "steps": [], "kmsg_tail": [], "reproduce": "", **c,
                      "scenarios": [{"duration_s": None, **sc} for sc in c["scenarios"]]})
    return cells


def shard_run(plan, k, cells, command=None):
    mine = [c for c in cells if c["id"] in plan.shards[k - 1]]
    return {"started": f"2026-12-02T01:0{k}:00+00:00", "wall_s": 100.0 + k, "boots": 1,
            "accel": {"debian-6.1": "tcg"}, "boot_seconds": [20.0], "jobs": 1, "lanes": [],
            "exit_code": results.exit_code(mine),
            "command": command or f"loopqual qualify --suite contract --shard {k}/{plan.n} --out s{k}",
            "seed": "7", "host": {"machine": "m", "python": "3.11", "loopqual_commit": "abc"},
            "selection": {}, "expected_failures": [], "cells": mine, "shard": plan.block(k)}


@pytest.fixture
def shard_dirs(tmp_path, recorded):
    plan = qualify.plan_shards(contract_sel(), 3)
    assert sorted(c["id"] for c in plan.cells) == sorted(c["id"] for c in recorded)
    dirs = []
    for k in (1, 2, 3):
        d = tmp_path / f"shard{k}"
        d.mkdir()
        results.write_json(d / "results.json", shard_run(plan, k, recorded))
        dirs.append(d)
    return plan, dirs


def test_merge_of_the_shards_equals_the_single_run(shard_dirs, recorded, tmp_path, capsys):
    plan, dirs = shard_dirs
    out = tmp_path / "merged"
    code = cli.main(["merge", *map(str, dirs), "--out", str(out)])
    printed = capsys.readouterr()
    assert code == results.exit_code(recorded) == 1  # patched fails a gated rule there
    merged = resultsreader.load(out, for_report=True)
    assert [c["id"] for c in merged["cells"]] == [c["id"] for c in recorded]
    assert [c["status"] for c in merged["cells"]] == [c["status"] for c in recorded]
    assert merged["exit_code"] == 1 and merged["merge"]["problems"] == []
    assert merged["merge"]["plan_id"] == plan.plan_id and merged["boots"] == 3
    table = rules.render_compare({"cells": recorded}, rules.load_rules())
    assert table in printed.out  # the rules x sources table, as compare prints it
    assert (out / "junit.xml").exists() and "Merged from 3 of 3" in (out / "report.html").read_text()
    assert printed.err == ""


def test_a_missing_shard_makes_the_merge_incomplete_and_its_cells_too(shard_dirs, tmp_path, capsys):
    plan, dirs = shard_dirs
    out = tmp_path / "merged"
    assert cli.main(["merge", str(dirs[0]), str(dirs[2]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "shard 2/3 missing" in err
    merged = resultsreader.load(out, for_report=True)
    assert len(merged["cells"]) == 12
    missing = [c for c in merged["cells"] if c["id"] in plan.shards[1]]
    assert missing and all(c["status"] == "incomplete" and c["incomplete"] == ["shard 2/3 missing"]
                           for c in missing)
    assert "--shard 2/3" in missing[0]["reproduce"] and "--out" not in missing[0]["reproduce"]
    junit = (out / "junit.xml").read_text()
    assert "incomplete: shard 2/3 missing" in junit and "build failed" not in junit
    assert "not run: shard 2/3 missing" in capsys.readouterr().out + (out / "report.html").read_text()


def test_a_cell_its_shard_did_not_report_is_incomplete(shard_dirs, tmp_path, capsys):
    plan, dirs = shard_dirs
    run = json.loads((dirs[1] / "results.json").read_text())
    lost = run["cells"].pop()["id"]
    (dirs[1] / "results.json").write_text(json.dumps(run))
    out = tmp_path / "m"
    assert cli.main(["merge", *map(str, dirs), "--out", str(out)]) == 2
    assert f"{dirs[1]}: shard 2/3 did not report cell {lost}" in capsys.readouterr().err
    cell = next(c for c in resultsreader.load(out)["cells"] if c["id"] == lost)
    assert cell["status"] == "incomplete"


def test_a_cell_outside_its_shard_is_left_out(shard_dirs, recorded, tmp_path, capsys):
    plan, dirs = shard_dirs
    run = json.loads((dirs[0] / "results.json").read_text())
    stray = next(c for c in recorded if c["id"] in plan.shards[1])
    run["cells"].append(stray)
    (dirs[0] / "results.json").write_text(json.dumps(run))
    assert cli.main(["merge", *map(str, dirs), "--out", str(tmp_path / "m")]) == 2
    assert f"{dirs[0]}: reports cell {stray['id']}, which is not in shard 1/3" in capsys.readouterr().err


def test_shards_of_different_loopqual_commits_do_not_merge_silently(shard_dirs, tmp_path, capsys):
    _plan, dirs = shard_dirs
    run = json.loads((dirs[2] / "results.json").read_text())
    run["host"]["loopqual_commit"] = "def"
    (dirs[2] / "results.json").write_text(json.dumps(run))
    assert cli.main(["merge", *map(str, dirs), "--out", str(tmp_path / "m")]) == 2
    assert "the shards ran different loopqual commits: abc, def" in capsys.readouterr().err


def test_a_local_tree_gives_the_same_plan_wherever_it_is_checked_out(tmp_path):
    ids = []
    for where in ("a", "b"):
        tree = tmp_path / where / "v4l2loopback"
        tree.mkdir(parents=True)
        (tree / "v4l2loopback.c").write_text("/* a local tree */\n")
        ids.append(qualify.plan_shards(qualify.select([], [str(tree)], [], [], None), 2).plan_id)
    assert ids[0] == ids[1]


def test_a_shard_of_another_plan_is_named_and_left_out(shard_dirs, recorded, tmp_path, capsys):
    plan, dirs = shard_dirs
    other = qualify.plan_shards(contract_sel(), 2)  # the same cells split in two: another plan
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    results.write_json(foreign / "results.json", shard_run(other, 2, recorded))
    assert cli.main(["merge", str(dirs[0]), str(foreign), str(dirs[2]),
                     "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert f"{foreign}: shard 2/2 of another plan ({other.plan_id}, not {plan.plan_id})" in err
    assert "shard 2/3 missing" in err


def test_a_duplicate_shard_is_named(shard_dirs, tmp_path, capsys):
    plan, dirs = shard_dirs
    again = tmp_path / "again"
    shutil.copytree(dirs[0], again)
    out = tmp_path / "m"
    assert cli.main(["merge", *map(str, dirs), str(again), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{again}: duplicates shard 1/3 (already given by {dirs[0]})" in err
    merged = resultsreader.load(out, for_report=True)
    assert len(merged["cells"]) == 12 and merged["exit_code"] == 2
    assert any("duplicates shard 1/3" in p for p in merged["merge"]["problems"])


def test_a_run_that_is_not_a_shard_is_named(shard_dirs, recorded, tmp_path, capsys):
    _plan, dirs = shard_dirs
    single = tmp_path / "single"
    single.mkdir()
    run = shard_run(qualify.plan_shards(contract_sel(), 1), 1, recorded)
    del run["shard"]
    results.write_json(single / "results.json", run)
    assert cli.main(["merge", *map(str, dirs), str(single), "--out", str(tmp_path / "m")]) == 2
    assert f"{single}: not a shard run" in capsys.readouterr().err


def test_a_corrupt_shard_is_one_line_exit_2(shard_dirs, capsys):
    _plan, dirs = shard_dirs
    (dirs[1] / "results.json").write_text('{"schema": 1, "cells": [')
    one_line_exit_2(capsys, ["merge", *map(str, dirs), "--out", str(dirs[0].parent / "m")],
                    r"shard2/results.json: not valid JSON")


def test_merge_never_writes_over_an_input(shard_dirs, capsys):
    _plan, dirs = shard_dirs
    one_line_exit_2(capsys, ["merge", *map(str, dirs), "--out", str(dirs[0])], "is one of the inputs")


def test_shard_of_a_malformed_plan_block_is_one_line(shard_dirs, capsys):
    _plan, dirs = shard_dirs
    run = json.loads((dirs[1] / "results.json").read_text())
    run["shard"]["k"] = "two"
    (dirs[1] / "results.json").write_text(json.dumps(run))
    one_line_exit_2(capsys, ["merge", *map(str, dirs), "--out", str(dirs[0].parent / "m")],
                    r"shard\.k")


def test_parse_shard():
    assert shards.parse_shard("2/3") == (2, 3)
