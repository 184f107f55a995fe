"""Spreading cells over parallel guests (--jobs): the planner, on a plan the harness wrote for
a real four-source run (contract, compliance, clients, browser on debian-6.1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loopqual import cli
from loopqual.run import qualify

PLAN = Path(__file__).parent / "fixtures/guest/recorded-plan-6.1-four-sources-all-suites.json"


@pytest.fixture(scope="module")
def plan_and_weight():
    cells = json.loads(PLAN.read_text())["cells"]
    sel = qualify.select([], [], [], ["contract", "compliance", "clients", "browser"], None)
    weights = {c["id"]: qualify.cell_weight(c, sel) for c in cells}
    return cells, lambda c: weights[c["id"]]


def ids(lane):
    return [c["id"] for c in lane[1]]


def test_weights_follow_the_suites_that_apply(plan_and_weight):
    cells, weight = plan_and_weight
    by_set = {c["id"].split("-", 1)[1]: weight(c) for c in cells}
    # clients run in ec0 and ec1, the browser in ec1 only: those cells weigh the most
    assert by_set["debian-6.1-patched-ec1"] > by_set["debian-6.1-patched-ec0"] > \
        by_set["debian-6.1-patched-ec1-buf8"]


def test_one_job_keeps_one_lane_in_plan_order(plan_and_weight):
    cells, weight = plan_and_weight
    lanes = qualify.split_lanes([("debian-6.1", cells)], 1, weight)
    assert len(lanes) == 1 and ids(lanes[0]) == [c["id"] for c in cells]


def test_two_jobs_split_one_kernel_evenly(plan_and_weight):
    cells, weight = plan_and_weight
    lanes = qualify.split_lanes([("debian-6.1", cells)], 2, weight)
    assert len(lanes) == 2
    assert sorted(ids(lanes[0]) + ids(lanes[1])) == sorted(c["id"] for c in cells)
    loads = [sum(weight(c) for c in lane[1]) for lane in lanes]
    assert max(loads) - min(loads) <= max(weight(c) for c in cells)
    for lane in lanes:  # planned order within a lane
        assert ids(lane) == sorted(ids(lane))


def test_two_jobs_two_kernels_one_lane_each(plan_and_weight):
    cells, weight = plan_and_weight
    lanes = qualify.split_lanes([("debian-6.1", cells), ("debian-6.12", cells)], 2, weight)
    assert [k for k, _ in lanes] == ["debian-6.1", "debian-6.12"]


def test_three_kernels_on_two_jobs_split_one_kernel_instead_of_a_lone_third_lane(plan_and_weight):
    """The gate's shape: three kernels of about equal work on two guests. One lane per kernel
    leaves the third to run alone at the end (two lanes' time); splitting one kernel into two
    lanes takes about one and a half, for one boot more."""
    cells, weight = plan_and_weight
    kernels = [("debian-6.1", cells), ("debian-6.12", cells), ("debian-sid", cells)]
    lanes = qualify.split_lanes(kernels, 2, weight)
    assert len(lanes) == 4
    assert sorted(k for k, _ in lanes) == ["debian-6.1", "debian-6.1", "debian-6.12", "debian-sid"]
    for kname, _ in kernels:  # every cell in exactly one lane of its kernel
        assert sorted(c["id"] for k, lane in lanes if k == kname for c in lane) == \
            sorted(c["id"] for c in cells)
    one_each = [(k, cs) for k, cs in kernels]
    assert qualify.lanes_wall(lanes, 2, weight) < 0.8 * qualify.lanes_wall(one_each, 2, weight)
    loads = [sum(weight(c) for c in lane) for _k, lane in lanes]
    assert loads == sorted(loads, reverse=True)  # heaviest first: the guest slots take them so


def test_the_lane_split_is_deterministic(plan_and_weight):
    cells, weight = plan_and_weight
    kernels = [("debian-6.1", cells), ("debian-6.12", cells), ("debian-sid", cells[:4])]
    first = [(k, ids((k, lane))) for k, lane in qualify.split_lanes(kernels, 2, weight)]
    assert first == [(k, ids((k, lane))) for k, lane in qualify.split_lanes(kernels, 2, weight)]


def test_more_jobs_than_cells_gives_one_cell_per_lane(plan_and_weight):
    cells, weight = plan_and_weight
    lanes = qualify.split_lanes([("debian-6.1", cells[:3])], 8, weight)
    assert sorted(len(cs) for _, cs in lanes) == [1, 1, 1]


@pytest.mark.parametrize("bad", ["0", "17", "two", "-1", ""])
def test_bad_jobs_value_is_refused_with_a_clear_line(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["qualify", f"--jobs={bad}"])
    assert exc.value.code == 2
    assert "give a whole number of guests from 1 to 16" in capsys.readouterr().err


def test_bad_jobs_environment_is_refused_before_anything_boots(monkeypatch, capsys):
    monkeypatch.setenv("LOOPQUAL_JOBS", "many")
    assert cli.main(["qualify"]) == 2
    assert "LOOPQUAL_JOBS='many': give a whole number" in capsys.readouterr().err


def test_default_jobs_is_what_the_machine_carries():
    """issue 11: a guest per host core, 2 GiB each, one guest's worth of memory left over."""
    from loopqual.boot.vm import machine_jobs

    gib = 1024 * 1024
    assert machine_jobs(cpus=2, mem_kib=24 * gib) == 2  # this machine
    assert machine_jobs(cpus=64, mem_kib=8 * gib) == 3  # memory decides
    assert machine_jobs(cpus=4, mem_kib=3 * gib) == 1  # never fewer than one
    assert machine_jobs(cpus=1, mem_kib=0) == 1
    assert machine_jobs() >= 1


def test_heavy_cells_of_lanes_that_start_together_begin_at_different_times(plan_and_weight):
    """The browser suite (heavy: it starts Chromium and Firefox) runs in the ec1 cells: over
    three kernels on three guests, each lane keeps its cells and their order, and the ec1
    cells begin about 0, 1/3 and 2/3 into their lanes' other work."""
    cells, weight = plan_and_weight
    mine = [c for c in cells if c["module"] == "patched"]

    def heavy(c):
        return any(e["name"] == "browser" and not e.get("not_applicable") for e in c["suites"])

    assert sum(heavy(c) for c in mine) == 1
    kernels = [("debian-6.1", mine), ("debian-6.12", mine), ("debian-sid", mine)]
    lanes = qualify.split_lanes(kernels, 3, weight, heavy=heavy)
    plain = qualify.split_lanes(kernels, 3, weight)
    assert len(lanes) == 3
    starts = []
    for (k, lane), (pk, plane) in zip(lanes, plain, strict=True):
        assert k == pk and sorted(ids((k, lane))) == sorted(ids((pk, plane)))
        rest = [c["id"] for c in lane if not heavy(c)]
        assert rest == [c["id"] for c in plane if not heavy(c)]
        at = next(i for i, c in enumerate(lane) if heavy(c))
        starts.append(sum(weight(c) for c in lane[:at]))
    other = sum(weight(c) for c in mine if not heavy(c))
    assert starts[0] == 0 and 0 < starts[1] < starts[2] < other
    assert abs(starts[1] - other / 3) <= max(weight(c) for c in mine)


def test_lanes_that_run_one_at_a_time_are_not_staggered(plan_and_weight):
    cells, weight = plan_and_weight
    mine = [c for c in cells if c["module"] == "patched"]

    def heavy(c):
        return c["param_set"] == "ec1"

    kernels = [("debian-6.1", mine), ("debian-6.12", mine), ("debian-sid", mine)]
    lanes = qualify.split_lanes(kernels, 1, weight, heavy=heavy)
    assert [ids(ln) for ln in lanes] == [[c["id"] for c in mine]] * 3


def test_heavy_cells_come_after_a_guest_that_runs_beside(plan_and_weight):
    """make test's side lane runs a third guest for its first minutes: with beside_s, the
    heavy cells of the lanes that start together begin after it where their lanes have that
    much other work (all of it here, for a side lane longer than any lane's other work), and
    a lone lane with a heavy cell is moved too; without it, the plain stagger."""
    cells, weight = plan_and_weight
    mine = [c for c in cells if c["module"] == "patched"]

    def heavy(c):
        return c["param_set"] == "ec1"

    other = sum(weight(c) for c in mine if not heavy(c))
    kernels = [("debian-6.1", mine), ("debian-sid", mine)]
    lanes = qualify.split_lanes(kernels, 2, weight, heavy=heavy, beside_s=other + 1)
    for _k, lane in lanes:
        assert [heavy(c) for c in lane][-1] and sum(map(heavy, lane)) == 1
    half = qualify.split_lanes(kernels, 2, weight, heavy=heavy, beside_s=other / 2)
    starts = [sum(weight(c) for c in lane[:next(i for i, c in enumerate(lane) if heavy(c))])
              for _k, lane in half]
    assert all(s >= other / 2 for s in starts) and starts[0] < starts[1]
    (alone,) = qualify.split_lanes([("debian-6.1", mine)], 1, weight, heavy=heavy,
                                   beside_s=other + 1)
    assert heavy(alone[1][-1])
    assert qualify.split_lanes(kernels, 2, weight, heavy=heavy) == qualify.stagger(
        qualify.split_lanes(kernels, 2, weight), 2, weight, heavy)


def test_beside_seconds_must_be_a_number_of_seconds(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["qualify", "--beside-s=soon"])
    assert exc.value.code == 2
    assert "'soon': give seconds from 0 to 86400" in capsys.readouterr().err
