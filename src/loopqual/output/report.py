"""Reports for people: the terminal table printed after a run, and report.html."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2

from loopqual.common.errors import LoopqualError
from loopqual.common.paths import atomic_write
from loopqual.config.data import CATEGORIES
from loopqual.output.timeprofile import bars, time_profile
from loopqual.review import seriesbuild
from loopqual.verdict import results, rules

TEMPLATES = Path(__file__).resolve().parent / "templates"


class ReportError(LoopqualError):
    pass


def _summary(cell: dict) -> str:
    if cell["build"]["status"] == "not run":
        return f"not run: {cell['build'].get('log_tail', '')}"
    if cell["build"]["status"] != "ok":
        return "build failed: " + results.first_error(cell["build"].get("log_tail", ""))[:120]
    c = results.counts(cell)
    sc = c["scenarios"]
    parts = []
    if cell["scenarios"]:
        parts.append(f"scen {sc['pass']}P/{sc['fail'] + sc['error']}F/{sc['skip']}S"
                     + (f"/{sc['xfail']}xf" if sc["xfail"] else "")
                     + (f"/{sc['xpass']}XP" if sc["xpass"] else ""))
    for version, comp in sorted(c["compliance_by_version"].items()):
        parts.append(f"v4l2c {version} {comp['total']}T/{comp['failed']}F"
                     + (f"/{comp['xfail']}xf" if comp["xfail"] else ""))
    if cell["health"].get("splats"):
        parts.append(f"{len(cell['health']['splats'])} splat(s)")
    if cell["health"].get("rmmod") not in (None, "ok"):
        parts.append(f"rmmod {cell['health']['rmmod']}")
    return ", ".join(parts)


def terminal_table(run: dict) -> str:
    rows = [("kernel", "module", "params", "gated", "status", "summary")]
    for cell in run["cells"]:
        rows.append((results.kernel_label(cell), cell["module"], cell["param_set"],
                     "gate" if cell["gated"] else "info", cell["status"].upper(), _summary(cell)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(r[j].ljust(widths[j]) for j in range(5)) + "  " + r[5])
        if i == 0:
            lines.append("-" * (sum(widths) + 10 + len(r[5])))
    problems = []
    failing = [(c, results.failures(c)) for c in run["cells"] if c["status"] != "pass"]
    # A few failures are shown whole: CI keeps only the printed tail, not the results
    # directory, and a flaky scenario's figures are at the end of its message.
    width = problem_width(sum(min(12, len(fails)) for _c, fails in failing))
    for cell, fails in failing:
        label = results.cell_label(cell)
        for line in cell["errors"]:
            problems.append(f"  {label}: error: {line.splitlines()[0]}")
        for line in cell["incomplete"]:
            problems.append(f"  {label}: incomplete: {line}")
        for line in fails[:12]:
            problems.append(f"  {label}: {shorten(line, width)}")
        extra = len(fails) - 12
        if extra > 0:
            problems.append(f"  {label}: ... and {extra} more (see the report)")
    if problems:
        lines += ["", "Problems:"] + problems
    flaky = [f"  {results.cell_label(c)}: {shorten(line, problem_width(1))}"
             for c in run["cells"] for line in results.flaky(c)]
    if flaky:
        lines += ["", "Flaky (failed, then passed when run again in the same boot):"] + flaky
    lines += ["", profile_summary(time_profile(run))]
    return "\n".join(lines)


PROBLEMS_CHARS = 6000  # what the Problems list may print in all


def problem_width(count: int) -> int:
    """Characters of each failure line when `count` are printed: 200 to 2000."""
    return max(200, min(2000, PROBLEMS_CHARS // max(1, count)))


def shorten(line: str, width: int) -> str:
    return line if len(line) <= width else line[:width - 3] + "..."


def profile_summary(p: dict) -> str:
    """Where the time went, in a few lines for the terminal."""
    top = ", ".join(f"{k} {v:.0f} s" for k, v in list(p["steps"].items())[:6])
    out = [f"Time: {p['boots']['count'] or 0} boot(s) {p['boots']['total_s']:.0f} s; {top}"]
    if p["lanes"]:
        out.append("  lanes: " + "; ".join(
            f"{ln['lane']} {ln['kernel']} wall {ln['wall_s']:.0f} s (boots {ln['boot_s']:.0f}, "
            f"cells {ln['cells_s']:.0f}, other {ln['other_s']:.0f})" for ln in p["lanes"]))
    if p["slowest_scenarios"]:
        s = p["slowest_scenarios"][0]
        out.append(f"  slowest scenario: {s['id']} {s['duration_s']:.0f} s ({s['cell']})")
    return "\n".join(out)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["summary"] = _summary
    env.filters["failures"] = results.failures
    env.filters["label"] = results.cell_label
    env.filters["counts"] = results.counts
    return env


def expected_by_category(entries: list[dict]) -> list[tuple[str, list[dict]]]:
    """The expected-failures list grouped by kind of reason (inherent, policy, pending), each
    group sorted by rule. Runs recorded before categories carry only `inherent`."""
    groups: dict[str, list[dict]] = {c: [] for c in CATEGORIES}
    for e in entries:
        cat = e.get("category") or ("inherent" if e.get("inherent") else "pending")
        groups.setdefault(cat, []).append(e)
    return [(c, sorted(es, key=lambda e: (e.get("rule", ""), e.get("id", ""))))
            for c, es in groups.items() if es]


def not_applicable_by_reason(cells: list[dict]) -> list[dict]:
    """Every suite or profile not run, once per reason, with the cells it concerns."""
    out: dict[tuple[str, str], dict] = {}
    for c in cells:
        for na in c.get("suites_not_applicable", []):
            entry = out.setdefault((na["suite"], na["reason"]),
                                   {"suite": na["suite"], "reason": na["reason"], "cells": []})
            entry["cells"].append(results.cell_label(c))
    return list(out.values())


def write_html(path: Path, run: dict) -> None:
    cells = run["cells"]
    rows: dict[tuple, dict] = {}
    param_sets: list[str] = []
    for c in cells:
        rows.setdefault((results.kernel_label(c), c["module"]), {})[c["param_set"]] = c
        if c["param_set"] not in param_sets:
            param_sets.append(c["param_set"])
    rule_cols, rule_table, rule_text = [], {}, {}
    if any(c.get("scenarios") for c in cells):
        try:
            rule_text = rules.load_rules()
            rule_cols, rule_table = rules.compare(run, rule_text)
        except Exception as exc:  # the table is an addition: never lose the report for it
            rule_text = {"?": f"rules table unavailable: {exc}"}
    report_cols, report_rows = [], []
    if any("regressions/" in sc.get("id", "") for c in cells for sc in c.get("scenarios", [])):
        try:
            from loopqual.verdict import regressions

            reports, _left = regressions.load()
            report_cols, verdicts = regressions.verdicts(run, reports)
            report_rows = [(n, reports[n], verdicts[n]) for n in verdicts
                           if any(v != "not run" for v in verdicts[n].values())]
        except Exception as exc:  # an addition too: never lose the report for it
            report_cols, report_rows = ["?"], [(0, None, {"?": f"unavailable: {exc}"})]
    lane_bars, step_kinds = bars(run)
    html = _env().get_template("report.html.j2").render(
        run=run, rows=rows, param_sets=param_sets, cells=cells,
        rule_cols=rule_cols, rule_table=rule_table, rule_text=rule_text,
        report_cols=report_cols, report_rows=report_rows,
        expected_groups=expected_by_category(run.get("expected_failures", [])),
        category_text=CATEGORIES, not_run=not_applicable_by_reason(cells),
        profile=time_profile(run), lane_bars=lane_bars, step_kinds=step_kinds,
        exit_meaning={0: "all gated results passed", 1: "a gated result failed",
                      2: "incomplete: something did not run to the end"}[run["exit_code"]],
    )
    atomic_write(path, html)


def rerender(results_dir: Path, series_check: Path | None = None) -> tuple[Path, str]:
    """report.html written again from results.json (with the verdicts of a `loopqual series
    check --out` file when given); and the terminal table of the run (its cells, their
    problems, where the time went), as qualify printed it at its end."""
    from loopqual.verdict import resultsreader

    data = resultsreader.load(results_dir, for_report=True)
    if series_check is not None:
        data["series_check"] = series_summary(series_check)
    out = results_dir / "report.html"
    write_html(out, data)
    return out, terminal_table(data)


def series_summary(path: Path) -> dict:
    """What report.html shows of a series check: each part's verdict and figures."""
    try:
        check = json.loads(path.read_text())
        t = check["totals"]
        parts = [("checkpatch.pl --strict",
                  "pass" if check["passed"] else "FAIL",
                  f"{t['ERROR']} errors, {t['WARNING']} warnings, {t['CHECK']} checks; "
                  + ("; ".join(check["regressions"]) or "nothing beyond the baseline"))]
        parts.append(("cover letter", "pass" if check["cover_letter"] == "current" else "FAIL",
                      check["cover_letter"]))
        fig = seriesbuild.review_figures(check)
        if b := fig.get("builds"):
            parts.append(("every prefix built with W=1", "FAIL" if b["failing"] else "pass",
                          f"{b['count']} builds on {', '.join(b['kernels'])}; "
                          f"{b['failing']} failing or with a new warning"))
        for key, label, total in (("sparse", "sparse (C=2)", "warnings"),
                                  ("coccinelle", "coccinelle", "report kinds")):
            if part := fig.get(key):
                parts.append((label, "FAIL" if part["new"] else "pass",
                              f"base {part['base']} {total}, patched {part['patched']}, "
                              f"new {len(part['new'])}" + "".join(f"; new: {n}" for n in part["new"])))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReportError(f"{path}: not a `loopqual series check --out` file ({exc}): run "
                          f"`loopqual series check --out {path}` again") from None
    return {"file": str(path), "parts": parts}
