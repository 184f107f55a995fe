"""loopqual series check's judge on checkpatch.pl --strict output recorded from the real
script (Debian's linux-source-6.12) over the real series: before the Signed-off-by lines
(c07ed6d); after them, the block comments and the NULL comparisons restyled; after 0009's
braces and upstream's fixes cited by URL, not by the word that asks for a Fixes: tag; with
the predicate macros turned into static inline functions; and clean (no output at all)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopqual.common.errors import DataError
from loopqual.review.seriescheck import BASELINE_FILE, judge, load_baseline, parse_checkpatch

FIXTURES = Path(__file__).parent / "fixtures" / "checkpatch"
BEFORE = FIXTURES / "recorded-6.12-strict-series-at-c07ed6d.txt"
LINKED = FIXTURES / "recorded-6.12-strict-series-linked-rewrapped.txt"
BRACED = FIXTURES / "recorded-6.12-strict-series-braced-upstream-by-url.txt"
INLINE = FIXTURES / "recorded-6.12-strict-series-inline-predicates.txt"
CLEAN = FIXTURES / "recorded-6.12-strict-series-clean.txt"  # checkpatch printed nothing


def _patches(findings) -> list[str]:
    return sorted({f.patch for f in findings})


def _judged(path: Path, baseline):
    found = parse_checkpatch(path.read_text())
    return judge(_patches(found), found, baseline)


def test_parse_counts_what_checkpatch_reported_before_the_sign_offs():
    found = parse_checkpatch(BEFORE.read_text())
    v = judge(_patches(found), found, {})
    assert v.totals() == {"ERROR": 18, "WARNING": 71, "CHECK": 22}
    assert v.counts["MISSING_SIGN_OFF"] == 18 and v.counts["BLOCK_COMMENT_STYLE"] == 54
    assert v.patches["0001-Only-report-pixel-formats-that-ENUM_FMT-lists.patch"] == {
        "ERROR": 1, "WARNING": 2, "CHECK": 0}


def test_the_committed_baseline_holds_the_clean_series_and_refuses_every_earlier_state():
    baseline = load_baseline()
    assert baseline == {}
    clean = _judged(CLEAN, baseline)
    assert clean.passed and clean.totals() == {"ERROR": 0, "WARNING": 0, "CHECK": 0}
    old = _judged(BEFORE, baseline)
    assert not old.passed
    assert any("MISSING_SIGN_OFF x18, not in the baseline" in r for r in old.regressions)
    assert any("BLOCK_COMMENT_STYLE x54, not in the baseline" in r for r in old.regressions)
    linked = _judged(LINKED, baseline)
    assert any(r.startswith("WARNING:MISSING_FIXES_TAG x2, not in the baseline (at 0004-")
               for r in linked.regressions)
    braced = _judged(BRACED, baseline)
    assert any(r.startswith("CHECK:MACRO_ARG_REUSE x6, not in the baseline (at 0004-")
               for r in braced.regressions)
    inline = _judged(INLINE, baseline)
    assert inline.totals() == {"ERROR": 0, "WARNING": 1, "CHECK": 3}
    assert sorted(r.split(",")[0] for r in inline.regressions) == [
        "CHECK:MULTIPLE_ASSIGNMENTS x2", "CHECK:OPEN_ENDED_LINE x1", "WARNING:BRACES x1"]


def test_a_type_below_its_count_asks_for_the_baseline_to_shrink(tmp_path):
    allowing = tmp_path / "baseline.toml"
    allowing.write_text('[type.BRACES]\nlevel = "WARNING"\ncount = 2\nreason = "upstream\'s '
                        'braces on one arm, as its file has them"\n'
                        '[type.MULTIPLE_ASSIGNMENTS]\nlevel = "CHECK"\ncount = 2\nreason = '
                        '"upstream\'s own timestamp clear, moved as it is"\n'
                        '[type.OPEN_ENDED_LINE]\nlevel = "CHECK"\ncount = 1\nreason = '
                        '"upstream\'s own call, moved as it is"\n')
    v = _judged(INLINE, load_baseline(allowing))
    assert v.passed and v.improvements == [
        "WARNING:BRACES 1, the baseline says 2: lower it in checkpatch-baseline.toml"]


def test_every_baseline_entry_has_a_reason_and_a_malformed_one_is_named(tmp_path):
    assert all(len(a.reason) > 20 for a in load_baseline(BASELINE_FILE).values())
    bad = tmp_path / "baseline.toml"
    bad.write_text('[type.BRACES]\nlevel = "WARN"\ncount = -1\nreason = "x"\n')
    with pytest.raises(DataError, match=r"\[type.BRACES\]: level: .*count: .*reason"):
        load_baseline(bad)
    bad.write_text("[types.BRACES]\n")
    with pytest.raises(DataError, match="unknown table"):
        load_baseline(bad)


def test_the_report_shows_each_part_of_a_recorded_series_check(tmp_path):
    import json

    from loopqual.common.errors import LoopqualError
    from loopqual.output.report import series_summary

    recorded = Path(__file__).parent / "fixtures" / "cover-letter" / "recorded-series-check-with-builds.json"
    parts = {name: (verdict, text) for name, verdict, text in series_summary(recorded)["parts"]}
    assert parts["checkpatch.pl --strict"][0] == "pass"
    assert parts["every prefix built with W=1"] == (
        "pass", "57 builds on debian-6.1, debian-6.12, debian-sid; 0 failing or with a new warning")
    assert parts["sparse (C=2)"] == ("pass", "base 14 warnings, patched 10, new 0")
    assert parts["coccinelle"][0] == "pass"
    check = json.loads(recorded.read_text())
    check["coccinelle"]["new"] = ["locks/mini_lock.cocci: preceding lock on line N"]
    worse = tmp_path / "series-check.json"
    worse.write_text(json.dumps(check))
    parts = {name: (verdict, text) for name, verdict, text in series_summary(worse)["parts"]}
    assert parts["coccinelle"][0] == "FAIL" and "mini_lock" in parts["coccinelle"][1]
    worse.write_text("{}")
    with pytest.raises(LoopqualError, match="not a `loopqual series check --out` file"):
        series_summary(worse)
