"""`--suite NAME:KERNEL[,KERNEL]`: a suite that runs only in the cells of some of the run's
kernels (the gate runs the real desktop programs on one kernel), planned from names and the
data files only."""

from __future__ import annotations

import pytest

from loopqual.config import data
from loopqual.run import qualify

KERNELS = ["debian-6.1", "debian-6.12", "debian-sid"]


def suites_of(sel, kernel):
    (ps,) = [p for p in sel.param_sets if p.name == "ec1"]
    return [s["name"] for s in qualify._cell_suites(ps, sel, {}, kernel=kernel)]


def test_a_suite_named_with_a_kernel_is_planned_in_that_kernels_cells_only():
    sel = qualify.select(KERNELS, ["patched"], ["ec1"],
                         ["contract", "clients", "browser:debian-6.12", "apps:debian-6.12"], None)
    assert suites_of(sel, "debian-6.12") == ["contract", "clients", "browser", "apps"]
    assert suites_of(sel, "debian-6.1") == ["contract", "clients"]
    assert suites_of(sel, "debian-sid") == ["contract", "clients"]
    assert sel.selection_record()["suite_kernels"] == {"browser": ["debian-6.12"],
                                                        "apps": ["debian-6.12"]}


def test_the_plan_weighs_only_what_each_kernel_runs():
    sel = qualify.select(KERNELS, ["patched"], ["ec1"], ["contract", "apps:debian-6.12"], None)
    plan = qualify.plan_shards(sel, 1)
    weight = {c["kernel"]: c["expected_s"] for c in plan.cells}
    apps = data.load_suites()[0]["apps"].typical_s
    assert weight["debian-6.12"] == pytest.approx(weight["debian-6.1"] + apps, rel=0.35)
    assert weight["debian-6.12"] > weight["debian-6.1"]


def test_several_kernels_and_a_bare_name_that_wins():
    sel = qualify.select(KERNELS, ["patched"], ["ec1"], ["contract:debian-6.1,debian-sid"], None)
    assert suites_of(sel, "debian-6.12") == []
    assert suites_of(sel, "debian-sid") == ["contract"]
    sel = qualify.select(KERNELS, ["patched"], ["ec1"], ["contract:debian-6.1", "contract"], None)
    assert all(suites_of(sel, k) == ["contract"] for k in KERNELS)
    assert "suite_kernels" not in sel.selection_record()


@pytest.mark.parametrize("arg, says", [
    ("browser:debian-6.12", "is not in this run"),
    ("browser:", "name the kernels after ':'"),
    ("browser:no-such-kernel", "no-such-kernel"),
])
def test_a_kernel_the_run_does_not_have_is_bad_input(arg, says):
    with pytest.raises(data.DataError, match=says):
        qualify.select(["debian-6.1"], ["patched"], ["ec1"], [arg], None)


def test_the_gates_selection_runs_obs_and_k6_on_every_kernel():
    """The Makefile's gate: clients in ec0 and ec1 on debian-6.12, in ec1 (suite clients-ec1)
    on 6.1 and sid; apps (K3 with the real OBS) and together (K6 with the real programs, whose
    browsers judge K4 and K5) in ec1 on every kernel (issue 10), the browser suite nowhere;
    bookworm's v4l2-compliance on the bookworm kernels; delivery (issue 24) in ec0 and ec1 on
    every kernel, with 8 buffers (ec1-buf8) on debian-6.12; upstream's reports (issue 25) in
    ec1 on debian-6.1 and ec0 on debian-6.12. K6, whose browsers start in the background when
    the cell begins, runs after the cell's other suites."""
    import re

    from loopqual.common.paths import REPO

    make = (REPO / "Makefile").read_text()
    block = re.search(r"GATE_SUITES := ((?:.*\\\n)*.*)", make).group(1)
    suites = re.findall(r"--suite (\S+)", block)
    sel = qualify.select(KERNELS, ["patched"], [], suites, None)

    def names(kernel, ps_name):
        (ps,) = [p for p in sel.param_sets if p.name == ps_name]
        return [s["name"] for s in qualify._cell_suites(ps, sel, {}, kernel=kernel)
                if not s.get("not_applicable")]

    assert names("debian-6.12", "ec0") == ["contract", "compliance", "compliance-sid", "clients",
                                           "delivery", "regressions-ec0"]
    assert names("debian-6.12", "ec1") == ["contract", "compliance", "compliance-sid", "clients",
                                           "apps", "delivery", "together"]
    assert names("debian-6.12", "ec1-buf8") == ["contract", "compliance", "compliance-sid",
                                                "delivery-buf8"]
    assert names("debian-6.1", "ec0") == ["contract", "compliance", "compliance-sid", "delivery"]
    assert names("debian-6.1", "ec1") == ["contract", "compliance", "compliance-sid", "clients-ec1",
                                          "apps", "delivery", "regressions-ec1", "together"]
    assert names("debian-6.1", "ec1-buf8") == ["contract", "compliance", "compliance-sid"]
    # sid's kernel: sid's v4l2-compliance only
    assert names("debian-sid", "ec0") == ["contract", "compliance-sid", "delivery"]
    assert names("debian-sid", "ec1") == ["contract", "compliance-sid", "clients-ec1", "apps",
                                          "delivery", "together"]


def test_compliance_limits_grow_with_the_kernels_time_factor():
    """The debug kernel (time_factor 4) gets v4l2-compliance limits four times a Debian
    kernel's: its sid tool, chrooted, printed nothing for 30 s there beside other guests."""
    sel = qualify.select(["debian-6.12", "debian-6.12-debug"], ["patched"], ["ec1"],
                         ["compliance-sid"], None)
    (ps,) = sel.param_sets

    def limits(kernel):
        (entry,) = qualify._cell_suites(ps, sel, {}, kernel=kernel)
        return {p["name"]: (p["timeout_s"], p["idle_s"]) for p in entry["profiles"]}

    fast, slow = limits("debian-6.12"), limits("debian-6.12-debug")
    factor = data.load_kernels()["debian-6.12-debug"].time_factor
    assert factor > 1
    assert all(slow[n] == (t * factor, i * factor) for n, (t, i) in fast.items())


def test_pytest_suite_limits_grow_with_the_kernels_time_factor():
    """The sanitizer lane's contract suite hit its 900 s on the debug kernel beside four
    guests: a suite's timeout_s is times the kernel's time_factor too."""
    sel = qualify.select(["debian-6.12", "debian-6.12-debug"], ["patched"], ["ec1"],
                         ["contract"], None)
    (ps,) = sel.param_sets
    (fast,) = qualify._cell_suites(ps, sel, {}, kernel="debian-6.12")
    (slow,) = qualify._cell_suites(ps, sel, {}, kernel="debian-6.12-debug")
    factor = data.load_kernels()["debian-6.12-debug"].time_factor
    assert slow["timeout_s"] == fast["timeout_s"] * factor > fast["timeout_s"]
