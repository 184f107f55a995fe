"""loopqual series check's judge on checkpatch.pl --strict output recorded from the real
script (Debian's linux-source-6.12) over the real series: before the Signed-off-by lines
(c07ed6d), and after them, the block comments and the NULL comparisons restyled."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import DataError
from harness.seriescheck import BASELINE_FILE, judge, load_baseline, parse_checkpatch

FIXTURES = Path(__file__).parent / "fixtures" / "checkpatch"
BEFORE = FIXTURES / "recorded-6.12-strict-series-at-c07ed6d.txt"
AFTER = FIXTURES / "recorded-6.12-strict-series-linked-rewrapped.txt"


def _patches(findings) -> list[str]:
    return sorted({f.patch for f in findings})


def test_parse_counts_what_checkpatch_reported_before_the_sign_offs():
    found = parse_checkpatch(BEFORE.read_text())
    v = judge(_patches(found), found, {})
    assert v.totals() == {"ERROR": 18, "WARNING": 71, "CHECK": 22}
    assert v.counts["MISSING_SIGN_OFF"] == 18 and v.counts["BLOCK_COMMENT_STYLE"] == 54
    assert v.patches["0001-Only-report-pixel-formats-that-ENUM_FMT-lists.patch"] == {
        "ERROR": 1, "WARNING": 2, "CHECK": 0}


def test_the_committed_baseline_holds_the_signed_off_series_and_refuses_the_old_one():
    baseline = load_baseline()
    after = parse_checkpatch(AFTER.read_text())
    v = judge(_patches(after), after, baseline)
    assert v.passed and not v.improvements, v.regressions
    before = parse_checkpatch(BEFORE.read_text())
    old = judge(_patches(before), before, baseline)
    assert not old.passed
    assert any("MISSING_SIGN_OFF x18, not in the baseline" in r for r in old.regressions)
    assert any("BLOCK_COMMENT_STYLE x54, not in the baseline" in r for r in old.regressions)


def test_a_type_below_its_count_asks_for_the_baseline_to_shrink():
    after = parse_checkpatch(AFTER.read_text())
    fewer = [f for f in after if f.type != "BRACES"]
    v = judge(_patches(after), fewer, load_baseline())
    assert v.passed and any("BRACES 0, the baseline says 2" in i for i in v.improvements)


def test_every_baseline_entry_has_a_reason_and_a_malformed_one_is_named(tmp_path):
    assert all(len(a.reason) > 20 for a in load_baseline(BASELINE_FILE).values())
    bad = tmp_path / "baseline.toml"
    bad.write_text('[type.BRACES]\nlevel = "WARN"\ncount = -1\nreason = "x"\n')
    with pytest.raises(DataError, match=r"\[type.BRACES\]: level: .*count: .*reason"):
        load_baseline(bad)
    bad.write_text("[types.BRACES]\n")
    with pytest.raises(DataError, match="unknown table"):
        load_baseline(bad)
