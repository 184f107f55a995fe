"""Rules: the written contract's rule list, host-side collection of the scenario suites, and
the rules x sources comparison on a results file recorded from a real run (stock 0.15.0 and
patched with an empty series, Debian 6.1, contract suite, six parameter sets)."""

import json

from loopqual.common import health
from loopqual.verdict import rules


def test_contract_lists_all_49_rules():
    r = rules.load_rules()
    assert len(r) == 49
    assert {"S8", "S9", "D1", "D2", "D3", "D4"} <= set(r)
    assert list(r)[:3] == ["A1", "A2", "A3"] and "K6" in r and "H3" in r


def test_every_rule_has_a_scenario_on_the_host_collection():
    items = rules.collect_scenarios(["scenarios/contract", "scenarios/clients", "scenarios/browser",
                                     "scenarios/apps", "scenarios/together", "scenarios/delivery"])
    by_rule, unknown = rules.coverage(rules.load_rules(), items)
    assert unknown == []
    assert [r for r, scs in by_rule.items() if not scs] == []


def test_compare_on_a_recorded_run(fixtures):
    run = json.loads((fixtures / "results" /
                      "recorded-6.1-stock-0.15.0-and-empty-series-contract.json").read_text())
    cols, table = rules.compare(run, rules.load_rules())
    assert cols == ["debian-0.15.0", "patched"]
    # stock 0.15.0 refuses a second reader (A3) and gives no MMAP capability (A1)
    assert table["A3"]["debian-0.15.0"]["verdict"] == rules.BROKEN
    assert "EBUSY" in table["A3"]["debian-0.15.0"]["failing"][0]["message"]
    assert table["A1"]["debian-0.15.0"]["verdict"] == rules.BROKEN
    assert table["A2"]["debian-0.15.0"]["verdict"] == rules.HOLDS
    assert table["K1"]["debian-0.15.0"]["verdict"] == rules.NOT_RUN  # clients suite not run
    text = rules.render_compare(run, rules.load_rules())
    assert "A3    broken" in text


def test_compare_splits_columns_by_kernel_when_several_ran(fixtures):
    run = json.loads((fixtures / "results" /
                      "recorded-6.1-stock-0.15.0-and-empty-series-contract.json").read_text())
    run["cells"][0]["kernel"] = "debian-6.12"
    cols, _ = rules.compare(run, rules.load_rules())
    assert "debian-0.15.0@debian-6.12" in cols and "debian-0.15.0@debian-6.1" in cols


def test_gated_source_must_hold_every_rule(fixtures):
    run = json.loads((fixtures / "results" /
                      "recorded-6.1-stock-0.15.0-and-empty-series-contract.json").read_text())
    short = rules.gated_not_holding(run, rules.load_rules())
    # patched with an empty series is stock 0.15.0: it breaks A3; the clients suite did not run
    assert any(line.startswith("A3 patched: broken: contract/") for line in short)
    assert "K1 patched: not run" in short
    assert not any("debian-0.15.0" in line for line in short)  # stock is informational
    assert not any(line.startswith("A2 ") for line in short)  # A2 holds on both


def test_cell_health_checks_judge_h1_and_h2(fixtures):
    run = json.loads((fixtures / "results" /
                      "recorded-6.1-stock-0.15.0-and-empty-series-contract.json").read_text())
    _, before = rules.compare(run, rules.load_rules())
    assert before["H1"]["patched"]["verdict"] == rules.HOLDS
    assert before["H2"]["patched"]["verdict"] == rules.HOLDS
    cell = next(c for c in run["cells"] if c["module"] == "patched")
    # as the runner records the vmalloc failure warning seen in stock 0.15.0's ec1-buf8 cell
    cell["health"] = {"splats": [{"pattern": "call_trace", "line": "Call Trace:", "context": []}],
                      "rmmod": "EBUSY: Module v4l2loopback is in use"}
    _, after = rules.compare(run, rules.load_rules())
    h1 = after["H1"]["patched"]
    assert h1["verdict"] == rules.BROKEN
    assert h1["failing"] == [{"cell": cell["id"], "param_set": cell["param_set"],
                              "id": "health: kernel log of the cell",
                              "message": "expected a clean kernel log, got call_trace: Call Trace:"}]
    assert after["H2"]["patched"]["verdict"] == rules.BROKEN
    assert "EBUSY" in after["H2"]["patched"]["failing"][0]["message"]


def test_the_kmemleak_scan_after_a_cell_judges_h3_and_the_log_line_h1(fixtures):
    """A leak the runner's scan found (the recorded report of the test module's leak) breaks
    H3; the kernel log's own "new suspected memory leaks" line stays a kernel-log failure (H1)."""
    run = json.loads((fixtures / "results" /
                      "recorded-6.1-stock-0.15.0-and-empty-series-contract.json").read_text())
    cell = next(c for c in run["cells"] if c["module"] == "patched")
    report = (fixtures / "health" / "recorded-leak-kmemleak-debian-6.12-debug.log").read_text()
    leaks, _ = health.kmemleak_splats(report)
    log_line = health.find_splats(["kmemleak: 1 new suspected memory leaks (see /sys/kernel/debug/kmemleak)"])
    assert [s["pattern"] for s in log_line] == ["kmemleak"]
    cell["health"] = {"splats": leaks + log_line, "rmmod": "ok"}
    _, table = rules.compare(run, rules.load_rules())
    assert [f["id"] for f in table["H3"]["patched"]["failing"]] == ["health: kmemleak after the cell"]
    assert [f["id"] for f in table["H1"]["patched"]["failing"]] == ["health: kernel log of the cell"]


def test_a_gated_cell_that_failed_to_load_leaves_its_rules_not_judged(fixtures):
    """issue 8 point 6: an error cell (build or load failed) of the gated source cannot let
    --gated-must-hold pass on the other cells' scenarios."""
    run = json.loads((fixtures / "results" /
                      "recorded-6.1-stock-0.15.0-and-empty-series-contract.json").read_text())
    _, before = rules.compare(run, rules.load_rules())
    assert before["A2"]["patched"]["verdict"] == rules.HOLDS
    broken = next(c for c in run["cells"] if c["module"] == "patched" and c["param_set"] == "ec1")
    # as qualify records a cell whose insmod failed: no scenario ran
    broken.update(status="error", scenarios=[],
                  errors=["insmod v4l2loopback.ko exclusive_caps=1: exit 1 Unknown symbol"])
    _, after = rules.compare(run, rules.load_rules())
    assert after["A2"]["patched"]["verdict"] == rules.NOT_JUDGED
    assert after["A2"]["debian-0.15.0"]["verdict"] == rules.HOLDS
    assert "A2 patched: not judged" in rules.gated_not_holding(run, rules.load_rules())


def test_a_scenario_no_configured_kernel_can_run_is_not_coverage(tmp_path):
    """issue 8 point 4: the kmemleak scenario skips on every Debian kernel (no
    CONFIG_DEBUG_KMEMLEAK): it counts only where a configured kernel has the option."""
    (tmp_path / "config-6.1.0-57-amd64").write_text(
        "CONFIG_KASAN=y\n# CONFIG_DEBUG_KMEMLEAK is not set\nCONFIG_VIDEO_DEV=m\n")
    (tmp_path / "config-6.12.0-debug").write_text("CONFIG_DEBUG_KMEMLEAK=y\nCONFIG_VIDEO_DEV=y\n")
    debian = rules.kernel_config("6.1.0-57-amd64", tmp_path)
    debug = rules.kernel_config("6.12.0-debug", tmp_path)
    assert "CONFIG_VIDEO_DEV" in debian and "CONFIG_DEBUG_KMEMLEAK" not in debian
    items = rules.collect_scenarios(["scenarios/contract"])
    kmemleak = "contract/test_7_health.py::test_h3_kmemleak_clean"
    assert next(it for it in items if it["id"] == kmemleak)["kernel_config"] == ["CONFIG_DEBUG_KMEMLEAK"]
    nowhere = rules.runnable_nowhere(items, {"debian-6.1": debian, "debian-6.12": None})
    assert list(nowhere) == [kmemleak]
    assert "debian-6.1: lacks CONFIG_DEBUG_KMEMLEAK" in nowhere[kmemleak]
    assert "debian-6.12: not installed" in nowhere[kmemleak]
    assert rules.runnable_nowhere(items, {"debian-6.1": debian, "debug": debug}) == {}


def test_bad_input_edges_and_races_are_scenarios_with_rules():
    """issue 12: every REQBUFS edge count on both directions is its own scenario id, the races
    between processes are collected, and each names the rules it judges."""
    items = {it["id"]: it["rules"] for it in rules.collect_scenarios(["scenarios/contract"])}
    edges = [i for i in items if "::test_bad_count_edges[" in i]
    assert sorted(i.split("[")[1].rstrip("]") for i in edges) == sorted(
        f"{d}-{c}" for d in ("OUTPUT", "CAPTURE")
        for c in ("0", "1", "max", "max+1", "0x7fffffff", "0xffffffff"))
    assert all({"A2", "A7", "S5"} <= set(items[i]) for i in edges)
    races = [i for i in items if i.startswith("contract/test_10_races.py::")]
    assert {i.split("::")[1] for i in races} >= {
        "test_race_rw_against[s_fmt]", "test_race_rw_against[reqbufs0]",
        "test_race_rw_against[streamoff]", "test_race_rw_against[close]",
        "test_race_mmap_against_reqbufs", "test_race_sigkill_blocked_readers_while_writer_leaves"}
    assert all(items[i] for i in races)
    # a race that fails for a refused call is no kernel-health failure: H1 is the log's alone
    assert not any("H1" in items[i] for i in races)
    # files run in the order of their numbers: the races after the random walk
    order = list(items)
    assert order.index(races[0]) > max(i for i, x in enumerate(order) if "test_9_random" in x)


def test_real_program_scenarios_name_their_programs_and_k3_k5_k6_have_one_each():
    """`loopqual rules` tells real programs from replays by the scenarios' programs marker."""
    items = rules.collect_scenarios(["scenarios/clients", "scenarios/browser", "scenarios/apps"])
    by_id = {it["id"]: it for it in items}
    obs = by_id["apps/test_obs.py::test_k3_obs_virtual_camera_stop_and_start"]
    assert obs["rules"] == ["K3"] and obs["programs"] == ["obs", "Xvfb"]
    assert by_id["browser/test_firefox.py::test_k5_firefox_get_user_media_again_and_again"][
        "programs"] == ["firefox-esr"]
    assert by_id["clients/test_replays.py::test_k3_obs_virtual_camera_restarts"]["programs"] == []
    for rule in ("K1", "K2", "K3", "K4", "K5", "K6"):
        assert any(rule in it["rules"] and it["programs"] for it in items), rule
