"""scenarios/regressions/reports.toml and the regression scenarios agree: each report names a
scenario that exists and carries the report's number and rules, each regression scenario has
its report, and a malformed entry is a clear error."""

from __future__ import annotations

import re

import pytest

from loopqual.common.errors import DataError
from loopqual.verdict import regressions, rules


@pytest.fixture(scope="module")
def collected():
    return {re.sub(r"\[.*\]$", "", it["id"]).split("::")[-1]: it
            for it in rules.collect_scenarios(["scenarios/regressions"])}


def test_every_report_has_its_scenario_with_its_number_and_rules(collected):
    reports, _left = regressions.load()
    assert len(reports) >= 40
    contract = rules.load_rules()
    for n, r in reports.items():
        it = collected.get(r.scenario)
        assert it is not None, f"report {n}: scenario {r.scenario} not found"
        assert it["upstream_reports"] == [n], f"{r.scenario}: upstream_report marker"
        assert sorted(it["rules"]) == sorted(r.rules), f"{r.scenario}: rules differ from the data"
        assert set(r.rules) <= set(contract), f"report {n}: unknown rules {r.rules}"


def test_every_regression_scenario_has_a_report(collected):
    reports, _left = regressions.load()
    named = {r.scenario for r in reports.values()}
    assert set(collected) <= named, sorted(set(collected) - named)


def test_a_report_whose_scenario_is_not_its_own_is_refused(tmp_path):
    bad = tmp_path / "reports.toml"
    bad.write_text('[report.12]\ntitle = "x"\n'
                   'url = "https://github.com/v4l2loopback/v4l2loopback/issues/12"\n'
                   'area = "buffers"\nseen = "a"\nexpected = "b"\n'
                   'scenario = "test_issue_13_other"\n')
    with pytest.raises(DataError, match="must start with test_issue_12_"):
        regressions.load(bad)


def test_an_unknown_area_is_refused_with_the_choices(tmp_path):
    bad = tmp_path / "reports.toml"
    bad.write_text('[report.12]\ntitle = "x"\n'
                   'url = "https://github.com/v4l2loopback/v4l2loopback/issues/12"\n'
                   'area = "gpu"\nseen = "a"\nexpected = "b"\nscenario = "test_issue_12_x"\n')
    with pytest.raises(DataError, match="report.12"):
        regressions.load(bad)


def test_reports_x_sources_from_a_recorded_run():
    """make compare-regressions' cells (ec1, debian-6.1, five sources): a failed scenario is a
    report that reproduces, a passed one fixed, one skipped everywhere (an ec0-only report)
    skipped; 'fixed in 0.13, back in 0.15' shows as such."""
    import gzip
    import json
    from pathlib import Path

    fixture = Path(__file__).parent / "fixtures" / "regressions" / \
        "recorded-compare-regressions-6.1-ec1.json.gz"
    with gzip.open(fixture, "rt") as f:
        run = {"cells": json.load(f)["cells"]}
    reports, _left = regressions.load()
    cols, table = regressions.verdicts(run, reports)
    assert cols == ["debian-0.12.7", "debian-0.13.2", "debian-0.15.0", "debian-0.15.4", "patched"]
    assert [table[622][c] for c in cols] == ["reproduces", "fixed", "reproduces", "reproduces",
                                             "fixed"]
    assert table[436]["patched"] == "skipped"
    assert regressions.patched_reproduces(run, reports) == []
    text = regressions.render(run, reports)
    assert text.splitlines()[1].split()[:4] == ["report", "fixed", "in", "0.12.7"]
