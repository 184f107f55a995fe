"""The benchmark's summary and target lines, from what a real bench boot recorded
(debian-6.1, stock 0.15.0 vs patched, producer unpaced, 4 readers)."""

from __future__ import annotations

import json
from pathlib import Path

from loopqual.run import bench

GUEST = json.loads((Path(__file__).parent / "fixtures/bench/"
                    "recorded-6.1-stock-0.15.0-vs-patched-unpaced-guest.json").read_text())


def test_ratios_come_from_the_recorded_rows():
    rows = bench.summarize(GUEST, "debian-0.15.0", "patched", 4, [None])
    assert len(rows) == len(bench.SIZES) * len(bench.PRODUCERS)
    r = next(r for r in rows if r["size"] == "640x480" and r["producer"] == "write")
    assert r["ratio_patched_stock"] == round(r["patched_fps"] / r["stock_fps"], 3)
    assert r["multi_reader_fraction"] == round(r["patched_x4_fps"] / r["patched_fps"], 3)
    assert 0 < r["fraction_of_memcpy"] < 1


def test_targets_count_rows_and_name_the_worst():
    rows = bench.summarize(GUEST, "debian-0.15.0", "patched", 4, [None])
    t = {x["target"].split(":")[0]: x for x in bench.targets(rows, 4)}
    multi = t["4 readers"]
    assert multi["of"] == 6 and multi["measured"] == 6
    assert multi["met"] == sum(r["multi_reader_fraction"] >= 0.80 for r in rows)
    assert multi["worst"] == min(r["multi_reader_fraction"] for r in rows)
    assert "met in" in bench.render_targets(bench.targets(rows, 4))


def test_a_pace_that_was_not_measured_is_reported_as_not_measured():
    rows = bench.summarize(GUEST, "debian-0.15.0", "patched", 4, [30.0])
    assert all(r["patched_fps"] is None and r["patched_error"] == "not measured" for r in rows)
    t = bench.targets(rows, 4)
    assert all(x["measured"] == 0 and x["worst"] is None for x in t)
    assert "(6 not measured)" in bench.render_targets(t)


def test_one_round_gives_its_own_figures_and_a_zero_spread():
    rows = bench.summarize(GUEST, "debian-0.15.0", "patched", 4, [None])
    raw = next(r for r in GUEST["modules"]["patched"]["rows"]
               if r["size"] == "1280x720" and r["producer"] == "write" and r["readers"] == 1)
    r = next(r for r in rows if r["size"] == "1280x720" and r["producer"] == "write")
    assert r["patched_fps"] == raw["mean_reader_fps"] and r["patched_rounds"] == 1
    assert r["patched_fps_range"] == (raw["mean_reader_fps"], raw["mean_reader_fps"])


def test_three_rounds_give_the_median_and_the_spread():
    """From a real 3-round boot (`loopqual bench --repeat 3 --window 10 --pace 0`)."""
    guest = json.loads((Path(__file__).parent / "fixtures/bench/"
                        "recorded-6.1-stock-0.15.0-vs-patched-unpaced-3-rounds-guest.json").read_text())
    rows = bench.summarize(guest, "debian-0.15.0", "patched", 4, [None])
    for r in rows:
        for module, key in (("debian-0.15.0", "stock"), ("patched", "patched")):
            fps = [x["mean_reader_fps"] for x in guest["modules"][module]["rows"]
                   if x["size"] == r["size"] and x["producer"] == r["producer"] and x["readers"] == 1]
            assert len(fps) == 3 and r[f"{key}_rounds"] == 3
            assert r[f"{key}_fps"] == sorted(fps)[1]
            assert r[f"{key}_fps_range"] == (min(fps), max(fps))
        assert r["ratio_patched_stock"] == round(r["patched_fps"] / r["stock_fps"], 3)
    assert "median of 3 rounds" in bench.render(rows, guest, "debian-0.15.0", "patched", 4)
