"""The cover letter's evidence comes from results, never typed: the rules table and the
delivery figures are judged here on cells recorded by `make compare-delivery` (debian-6.1,
five sources); its shortlog is read from the real patches, and the series check notices a
cover letter that no longer lists the series."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from loopqual.common.paths import REPO
from loopqual.module import sources
from loopqual.review import coverletter, seriescheck
from loopqual.verdict import rules

FIXTURE = Path(__file__).parent / "fixtures" / "cover-letter" / "recorded-compare-delivery-6.1-cells.json.gz"
PATCHES = REPO / "kernel" / "patches"


@pytest.fixture(scope="module")
def run():
    with gzip.open(FIXTURE, "rt") as f:
        return {"cells": json.load(f)["cells"]}


def row(table: str, label: str) -> list[str]:
    line = next(ln for ln in table.splitlines() if ln.startswith(label))
    return line[len(label):].split()


def test_the_rules_table_shows_what_ran_with_compares_verdicts(run):
    table, shown = coverletter.rules_table(run, rules.load_rules())
    assert table.splitlines()[0].split() == ["rule", "0.12.7", "0.13.2", "0.15.0", "0.15.4",
                                             "patched"]
    assert row(table, "S8 ") == ["broken"] * 4 + ["holds"]
    assert row(table, "K3 ") == ["broken", "holds", "broken", "broken", "holds"]
    assert not any(ln.startswith("F1 ") for ln in table.splitlines())  # not run anywhere
    assert shown == len(table.splitlines()) - 1


def test_the_delivery_table_sums_each_readers_figures_per_source(run):
    table = coverletter.delivery_table(run)
    assert row(table, "lags (sleeps 2.5 frame periods a frame)") == ["38%", "39%", "-", "-", "100%"]
    assert row(table, "read()") == ["6%", "6%", "-", "-", "100%"]
    assert row(table, "held buffers overwritten") == ["942", "395", "0", "0", "0"]
    assert row(table, "sequence counts the writer's frames") == ["no", "no", "yes", "yes", "yes"]


def test_a_run_without_measurements_says_so():
    assert "no delivery measurement" in coverletter.delivery_table({"cells": []})


def test_the_shortlog_lists_every_patch_subject_in_order():
    patches = sources.read_series(PATCHES / "series")
    text = coverletter.shortlog(patches)
    subjects = coverletter.listed_patches(text)
    assert len(subjects) == len(patches)
    assert subjects[0] == "Only report pixel formats that ENUM_FMT lists"
    assert subjects[4] == ("Replace stream tokens with one write token and any number of "
                           "read tokens")  # a folded Subject: header


def test_the_committed_cover_letter_lists_the_series():
    assert seriescheck.cover_letter_problem(sources.read_series(PATCHES / "series")) is None


def test_a_stale_or_missing_cover_letter_fails_the_series_check(tmp_path):
    shutil.copytree(PATCHES, tmp_path / "patches")
    patches = sources.read_series(tmp_path / "patches" / "series")
    cover = tmp_path / "patches" / coverletter.COVER_NAME
    text = cover.read_text()
    cover.write_text(text.replace("  Track buffer mappings by their mmap count\n", ""))
    assert f"not the series' {len(patches)} subjects" in seriescheck.cover_letter_problem(patches)
    cover.unlink()
    assert "is missing" in seriescheck.cover_letter_problem(patches)


def test_the_review_line_gives_the_builds_and_analysers_of_a_series_check():
    check = json.loads((FIXTURE.parent / "recorded-series-check-with-builds.json").read_text())
    line = coverletter.review_line(check)
    assert "(57 builds, W=1, debian-6.1, debian-6.12, debian-sid) builds without a new" in line
    assert "Sparse (C=2): 14 warnings on the base, 10 with the series, 0 new." in line
    assert "Coccinelle (73 semantic patches of the kernel tree): 0 new" in line
    check["coccinelle"]["new"] = ["locks/mini_lock.cocci: preceding lock on line N"]
    check["prefix_builds"][3]["new"] = ["v4l2loopback.c: unused variable 'x'"]
    line = coverletter.review_line(check)
    assert "has 1 failing build(s)" in line and ": 1 new report(s)" in line
    assert coverletter.review_line({"totals": {}}) == ""
