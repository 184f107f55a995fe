"""Reproduce lines reproduce: they carry the run's seed and every LOOPQUAL_* that shaped the
cell, shell-quoted, and the seed reaches the cell's scenarios."""

from __future__ import annotations

import shlex

from loopqual.config import data
from loopqual.run import qualify


def test_reproduce_line_carries_the_env_prefix(monkeypatch):
    ps = data.resolve_params("ec1", data.load_params())
    suites, _ = data.load_suites()
    line = qualify.reproduce_line("debian-6.1", "patched", ps, [suites["contract"]], "test_9",
                                  {"LOOPQUAL_SEED": "123", "LOOPQUAL_FUZZ_SECONDS": "5 0"})
    assert shlex.split(line) == ["LOOPQUAL_FUZZ_SECONDS=5 0", "LOOPQUAL_SEED=123", "loopqual",
                                 "qualify", "--kernel", "debian-6.1", "--module", "patched",
                                 "--params", "ec1", "--suite", "contract", "-k", "test_9"]


def test_run_seed_is_the_callers_or_drawn(monkeypatch):
    monkeypatch.setenv("LOOPQUAL_SEED", "4242")
    assert qualify.run_seed() == "4242"
    monkeypatch.delenv("LOOPQUAL_SEED")
    seed = qualify.run_seed()
    assert seed.isdigit() and int(seed) > 0


def test_the_cells_scenarios_get_the_seed_of_the_reproduce_line(monkeypatch):
    monkeypatch.delenv("LOOPQUAL_SEED", raising=False)
    monkeypatch.setenv("LOOPQUAL_WALK", "7")
    monkeypatch.setenv("LOOPQUAL_CACHE", "/elsewhere")  # host-side: neither guest nor line
    sel = qualify.select([], [], ["ec1"], ["contract"], None)
    env = {**qualify.passthrough_env(), "LOOPQUAL_SEED": "99"}
    meta = {"id": "001-x", "module": "patched", "module_version": "0.15.0"}
    cell = qualify._plan_cell(meta, "/x.ko", sel.param_sets[0], sel, env)
    assert cell["suites"][0]["env"]["LOOPQUAL_SEED"] == "99"
    assert cell["suites"][0]["env"]["LOOPQUAL_WALK"] == "7"
    line = qualify.reproduce_line("debian-6.1", "patched", sel.param_sets[0], sel.suites, None, env)
    assert line.startswith("LOOPQUAL_SEED=99 LOOPQUAL_WALK=7 loopqual qualify ")
    assert "LOOPQUAL_CACHE" not in line
