"""Upstream v4l2loopback's bug reports as a regression suite: scenarios/regressions/reports.toml
describes each report (what was seen, what was expected, the version that fixed it, the rules
it touches, its scenario), and this module puts results beside it: per report and module
source, whether the bug reproduces (its scenario failed), is fixed (passed), or could not be
judged there (skipped, incomplete, not run)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field

from loopqual.common.errors import DataError
from loopqual.common.paths import SCENARIOS_DIR
from loopqual.config import data
from loopqual.config.schema import Entry

REPORTS_FILE = SCENARIOS_DIR / "regressions" / "reports.toml"
AREAS = ("buffers", "formats", "exclusive_caps", "keep_format", "openers", "close", "poll",
         "client-gstreamer", "client-ffmpeg", "client-obs", "client-browser", "client-v4l2-ctl",
         "client-mmap", "health")
REPRODUCES, FIXED = "reproduces", "fixed"


class Report(Entry):
    title: str
    url: str = Field(pattern=r"^https://github\.com/v4l2loopback/v4l2loopback/(issues|pull)/\d+$")
    area: Literal[AREAS]  # type: ignore[valid-type]
    seen: str
    expected: str
    fixed_in: str = ""
    fix_commit: str = ""
    rules: list[str] = []
    contract_says: str = ""
    scenario: str = Field(pattern=r"^test_issue_\d+_\w+$")
    programs: list[str] = []
    replayed_because: str = ""


class LeftOut(Entry):
    title: str
    url: str
    why: str


def load(path: Path = REPORTS_FILE) -> tuple[dict[int, Report], dict[int, LeftOut]]:
    raw = data.load_toml(path, {"report", "left_out"})
    reports: dict[int, Report] = {}
    for key, entry in data.named_table(path, raw, "report").items():
        if not key.isdigit():
            raise DataError(f"{path}: [report.{key}]: a report is named by its number")
        r = data.validate_entry(path, f"report.{key}", Report, entry)
        if not r.scenario.startswith(f"test_issue_{key}_"):
            raise DataError(f"{path}: [report.{key}] scenario {r.scenario!r} must start with "
                            f"test_issue_{key}_")
        if not r.url.endswith(f"/{key}"):
            raise DataError(f"{path}: [report.{key}] url {r.url!r} is not report {key}")
        reports[int(key)] = r
    left = {int(k): data.validate_entry(path, f"left_out.{k}", LeftOut, e)
            for k, e in data.named_table(path, raw, "left_out").items() if k.isdigit()}
    both = sorted(set(reports) & set(left))
    if both:
        raise DataError(f"{path}: report(s) {', '.join(map(str, both))} are both a scenario and "
                        f"left out")
    return reports, left


_FUNC = re.compile(r"::(test_issue_\d+_\w+)")


def verdicts(run: dict, reports: dict[int, Report]) -> tuple[list[str], dict[int, dict[str, str]]]:
    """Columns (module sources in run order) and, per report, each column's verdict:
    reproduces (a cell's scenario failed), fixed (it passed in every cell that ran it),
    skipped (only skips), incomplete, or not run."""
    by_scenario = {r.scenario: n for n, r in reports.items()}
    cols: list[str] = []
    seen: dict[tuple[int, str], list[str]] = {}
    for c in run["cells"]:
        col = c["module"]
        if col not in cols:
            cols.append(col)
        for sc in c.get("scenarios", []):
            m = _FUNC.search(sc.get("id", ""))
            if m and m[1] in by_scenario:
                seen.setdefault((by_scenario[m[1]], col), []).append(sc.get("status", ""))
    table: dict[int, dict[str, str]] = {}
    for n in sorted(reports):
        table[n] = {}
        for col in cols:
            st = seen.get((n, col), [])
            if any(s in ("fail", "error", "xfail") for s in st):
                v = REPRODUCES
            elif any(s in ("pass", "xpass") for s in st):
                v = "incomplete" if "incomplete" in st else FIXED
            elif "incomplete" in st:
                v = "incomplete"
            elif st:
                v = "skipped"
            else:
                v = "not run"
            table[n][col] = v
    return cols, table


def render(run: dict, reports: dict[int, Report] | None = None) -> str:
    """The reports x sources table, or "" when no regression scenario ran."""
    reports = reports if reports is not None else load()[0]
    cols, table = verdicts(run, reports)
    if not any(v != "not run" for row in table.values() for v in row.values()):
        return ""
    names = [c.removeprefix("debian-") for c in cols]
    width = max(10, *(len(n) for n in names)) + 1
    lines = ["Upstream reports x sources (reproduces: the bug is there; fixed: its scenario "
             "passed):",
             "report  fixed in  " + "".join(n.rjust(width) for n in names) + "  title"]
    for n, row in table.items():
        r = reports[n]
        lines.append(f"#{n:<6} {(r.fixed_in or '-'):9} "
                     + "".join(row[c].rjust(width) for c in cols) + f"  {r.title[:60]}")
    return "\n".join(lines)


def patched_reproduces(run: dict, reports: dict[int, Report] | None = None) -> list[str]:
    """Reports the gated source (patched) reproduces: each one a gate failure already (its
    scenario failed); listed so the rules step can name them."""
    reports = reports if reports is not None else load()[0]
    _cols, table = verdicts(run, reports)
    return [f"#{n} {reports[n].title}" for n, row in table.items()
            if row.get("patched") == REPRODUCES]
