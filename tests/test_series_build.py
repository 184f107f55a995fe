"""The series' build check compares warning sets: a warning is its file and message, the line
and column dropped (they move as code moves). Parsed from a real W=1 build log (debian-6.12,
v4l2loopback with a variable set but not used: a warning only W=1 turns on)."""

from __future__ import annotations

from pathlib import Path

from loopqual.review import seriesbuild

FIXTURE = Path(__file__).parent / "fixtures" / "series-build" / "recorded-6.12-w1-unused-but-set-build.log"


def test_a_w1_warning_is_its_file_and_message():
    lines = FIXTURE.read_text().splitlines()
    assert seriesbuild.warning_set(lines) == {
        "v4l2loopback.c: variable ‘x’ set but not used [-Wunused-but-set-variable]"}


def test_the_same_warning_on_another_line_is_the_same_warning():
    a = seriesbuild.warning_set(["/x/v4l2loopback.c:10:5: warning: unused variable ‘y’"])
    b = seriesbuild.warning_set(["/y/v4l2loopback.c:99:7: warning: unused variable ‘y’"])
    assert a == b


def test_a_prefix_with_a_warning_the_base_lacks_fails_and_is_named():
    ok = seriesbuild.PrefixResult("debian-6.12", 0, "base", "ok")
    new = seriesbuild.PrefixResult("debian-6.12", 3, "0003-x.patch", "ok",
                                   warnings=["v4l2loopback.c: w"], new=["v4l2loopback.c: w"])
    broken = seriesbuild.PrefixResult("debian-6.1", 4, "0004-y.patch", "failed",
                                      log_tail="v4l2loopback.c:1:1: error: z")
    assert ok.passed and not new.passed and not broken.passed
    text = seriesbuild.render_prefixes([ok, new, broken])
    assert "REGRESSION: debian-6.12 step 3 (0003-x.patch) adds warnings" in text
    assert "REGRESSION: debian-6.1 step 4 (0004-y.patch) does not build" in text
