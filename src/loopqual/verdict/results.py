"""A run's verdicts: a cell's verdict from what the guest recorded, gating against the
expected-failures list, and the writers (results.json, checked against
verdict/resultsmodel.py; junit.xml).

Cell status:  error       the module did not build or load, or the harness failed for it
              incomplete  some step did not run to the end (timeout, hang, panic, watchdog)
              fail        a scenario, compliance test or health check failed
              pass        everything that ran passed (skips and not-applicable suites say why)
For gated cells (the patched source), failures listed in kernel/expected-failures.toml
become "xfail" and do not fail the gate; a listed item that passes is "xpass" and does,
so that the list only shrinks. Stock sources are informational.
Exit code of a run: 2 if any cell is incomplete, else 1 if a gated cell is not pass, else 0.
"""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from loopqual.common.health import KMEMLEAK_SCAN
from loopqual.common.paths import atomic_write
from loopqual.common.suite_record import unjudged_line
from loopqual.config.data import ExpectedFailure
from loopqual.verdict.resultsmodel import SCHEMA, check_written

FAILING = ("fail", "error")


def _failure_text(item: dict) -> str:
    """What a detail pattern is matched against: a compliance test's fail: lines, or a
    scenario's message."""
    if "details" in item:
        return "\n".join(d for d in item["details"] if d.startswith("fail:"))
    return item.get("message") or ""


def _apply_expectations(item: dict, kind: str, item_id: str, cell: dict,
                        expected: list[ExpectedFailure], tool_version: str | None = None) -> None:
    if not cell["gated"] or item["status"] not in (*FAILING, "pass"):
        return
    text = None if item["status"] == "pass" else _failure_text(item)
    e = next((x for x in expected
              if x.matches(kind, item_id, cell["param_set"], cell["kernel"], text,
                           tool_version)), None)
    if e is None:
        return
    item["status"] = "xpass" if item["status"] == "pass" else "xfail"
    item["expected"] = {"reason": e.reason, "rule": e.rule, "issue": e.issue,
                        "category": e.category, "inherent": e.inherent}


def first_error(log_tail: str) -> str:
    """The compiler's first error in a build log tail (what a reader needs first), else its
    last line."""
    lines = log_tail.splitlines()
    return next((ln.strip() for ln in lines if "error:" in ln), lines[-1] if lines else "?")


def kernel_label(cell: dict) -> str:
    """The kernel as --kernel names exactly the one that ran: NAME@VERSION for a kernel from
    an archive suite (which moves on), NAME for one installed on the host or built by loopqual
    (a debug kernel: what it is made of is pinned in kernel/debug-kernels.toml)."""
    if cell.get("kernel_suite") not in (None, "", "host", "debug") and cell.get("kernel_version"):
        return f"{cell['kernel']}@{cell['kernel_version']}"
    return cell["kernel"]


def _add_pytest_suite(cell: dict, suite: dict, expected: list[ExpectedFailure]) -> None:
    """A pytest suite's scenarios into the cell, expected failures applied."""
    unjudged = []
    for sc in suite["scenarios"]:
        sc = {**sc, "suite": suite["name"]}
        _apply_expectations(sc, "scenario", sc["id"], cell, expected)
        cell["scenarios"].append(sc)
        if sc["status"] == "incomplete":  # its set-up failed (a program missing): it judged nothing
            unjudged.append(sc)
            line = unjudged_line(sc)
            if not any(line in known for known in cell["incomplete"]):  # the runner's says it
                cell["incomplete"].append(line)
    if suite.get("incomplete") or unjudged:
        cell["problems"].append(f"{suite['name']}: pytest log tail:\n{suite.get('log_tail', '')}")
        cell["incomplete_suites"].append(suite["name"])


def evaluate_cell(meta: dict, guest: dict | None, host_incomplete: dict | None,
                  expected: list[ExpectedFailure]) -> dict:
    """meta: kernel, kernel_release, module, module_version, params, param_set, gated,
    build, reproduce. guest: the runner's cell file (None if it never ran)."""
    guest = copy.deepcopy(guest)  # verdicts are added to items: never to the caller's data
    cell = {**meta, "status": "pass", "scenarios": [], "compliance": [], "incomplete_suites": [],
            "suites_not_applicable": [], "incomplete": [], "errors": [], "problems": [],
            "health": {"splats": [], "rmmod": None, "refcnt": None}, "kmsg_tail": [],
            "duration_s": None, "steps": [], "loaded_params": {}}
    if meta["build"]["status"] != "ok":
        cell["status"] = "error"
        cell["errors"].append("build failed: " + first_error(meta["build"]["log_tail"]))
        return cell
    if guest is None:
        cell["incomplete"].append((host_incomplete or {}).get("reason", "the cell never ran"))
        cell["console_tail"] = (host_incomplete or {}).get("console_tail", [])
        cell["status"] = "incomplete"
        return cell
    cell["errors"] = list(guest.get("errors", []))
    cell["incomplete"] = list(guest.get("incomplete", []))
    if not guest.get("complete") and not cell["errors"] and not cell["incomplete"]:
        cell["incomplete"].append("the guest runner did not finish this cell")
    cell["health"] = guest.get("health", cell["health"])
    cell["kmsg_tail"] = guest.get("kmsg_tail", [])
    cell["duration_s"] = guest.get("duration_s")
    cell["steps"] = guest.get("steps", [])  # [step, seconds]: where the cell's time went
    cell["loaded_params"] = guest.get("loaded_params", {})
    for suite in guest.get("suites", []):
        if suite.get("not_applicable"):
            cell["suites_not_applicable"].append(
                {"suite": suite["name"], "reason": suite["not_applicable"]})
            continue
        if suite["kind"] == "pytest":
            _add_pytest_suite(cell, suite, expected)
        else:
            for run in suite["runs"]:
                run = dict(run)
                if run.get("status") == "not-applicable":
                    cell["suites_not_applicable"].append(
                        {"suite": f"{suite['name']}:{run['profile']}",
                         "reason": run["not_applicable"]})
                    continue
                for t in run.get("tests", []):
                    _apply_expectations(t, "compliance",
                                        f"{run['profile']}::{t['section']}/{t['name']}",
                                        cell, expected, run.get("version"))
                cell["compliance"].append(run)
    cell["status"] = cell_status(cell)
    return cell


def failures(cell: dict) -> list[str]:
    """One line per thing that fails this cell (expected failures excluded)."""
    out = []
    if cell["gated"] and cell["build"].get("warnings"):
        # The series' stock base builds without a warning on every kernel of the matrix:
        # any warning in the gated build is one the patch series added (issue 4).
        warns = cell["build"]["warnings"]
        out.append(f"build: {len(warns)} compiler warning(s) in the gated source "
                   f"(the series must build warning-free): {warns[0]}")
    for sc in cell["scenarios"]:
        if sc["status"] in FAILING:
            again = f" (run again: {sc['rerun']['status']})" if sc.get("rerun") else ""
            # the second run's own reason too: it may differ from the first's
            second = (sc.get("rerun") or {}).get("message") or ""
            second = f" | its second run: {second.splitlines()[0][:600]}" if second else ""
            out.append(f"scenario {sc['id']} [{','.join(sc['rules'])}]: {sc['status']}{again}: "
                       f"{sc['message'].splitlines()[0] if sc['message'] else ''}{second}")
        elif sc["status"] == "xpass":
            out.append(f"scenario {sc['id']}: passes but is listed as an expected failure "
                       f"(remove it from kernel/expected-failures.toml)")
    for run in cell["compliance"]:
        if run.get("status") == "error":
            out.append(f"compliance {run['profile']}: {run.get('error', 'error')}")
        for inc in run.get("inconsistencies", []):
            out.append(f"compliance {run['profile']}: {inc}")
        for t in run.get("tests", []):
            if t["status"] == "fail":
                detail = next((d for d in t["details"] if d.startswith("fail:")), "")
                out.append(f"compliance {run['profile']}: {t['section']}/{t['name']}: FAIL {detail}")
            elif t["status"] == "xpass":
                out.append(f"compliance {run['profile']}: {t['section']}/{t['name']}: passes but "
                           f"is listed as an expected failure (remove it)")
    out += health_failures(cell)
    return out


def flaky(cell: dict) -> list[str]:
    """One line per scenario that failed, then passed when run again in the same boot
    (guest/suite_record.py): counted as passed, never hidden."""
    out = []
    for sc in cell["scenarios"]:
        first = sc.get("flaky")
        if first:
            msg = (first.get("message") or "").splitlines()
            out.append(f"scenario {sc['id']} [{','.join(sc['rules'])}]: passed when run again; "
                       f"its first run: {first.get('status')}: {msg[0] if msg else ''}")
    return out


def health_failures(cell: dict) -> list[str]:
    """The runner's checks after the cell (kernel log, stray openers, processes that would not
    exit, rmmod): one line each. results.json's verdict and junit.xml's health case both
    read this list, so the two cannot disagree."""
    health = cell["health"]
    out = [f"kmemleak after the cell: {s['line']}" if s["pattern"] == KMEMLEAK_SCAN
           else f"kernel log: {s['pattern']}: {s['line']}" for s in health.get("splats", [])]
    if health.get("rmmod") not in (None, "ok"):
        out.append(f"rmmod after the cell: {health['rmmod']}")
    out += [f"close all: {line}" for line in health.get("left_open", [])]
    out += [f"process would not exit: {line}" for line in health.get("stuck", [])]
    return out


def cell_status(cell: dict) -> str:
    if cell["errors"]:
        return "error"
    if cell["incomplete"]:
        return "incomplete"
    return "fail" if failures(cell) else "pass"


def counts(cell: dict) -> dict:
    c = {k: 0 for k in ("pass", "fail", "error", "skip", "xfail", "xpass", "incomplete")}
    for sc in cell["scenarios"]:
        c[sc["status"]] = c.get(sc["status"], 0) + 1
    comp = {"total": 0, "failed": 0, "xfail": 0, "warnings": 0}
    by_version: dict[str, dict] = {}  # v4l2-compliance version -> the same counts
    for run in cell["compliance"]:
        v = by_version.setdefault(run.get("version") or "unknown version",
                                  {"total": 0, "failed": 0, "xfail": 0, "warnings": 0})
        for d in (comp, v):
            d["total"] += run.get("total") or 0
            d["warnings"] += run.get("warnings") or 0
            d["failed"] += sum(t["status"] == "fail" for t in run.get("tests", []))
            d["xfail"] += sum(t["status"] == "xfail" for t in run.get("tests", []))
    return {"scenarios": c, "compliance": comp, "compliance_by_version": by_version}


def exit_code(cells: list[dict]) -> int:
    if any(c["status"] == "incomplete" for c in cells):
        return 2
    if any(c["gated"] and c["status"] != "pass" for c in cells):
        return 1
    return 0


def cell_label(cell: dict) -> str:
    return f"{cell['kernel']}/{cell['module']}/{cell['param_set']}"


# ---------------------------------------------------------------------------- writers
def write_json(path: Path, run: dict, copied: tuple[str, ...] = ()) -> None:
    """results.json, then ResultsFileError if it does not fit the results model
    (verdict/resultsmodel.py): written first, so that a model that lags behind what the
    guest records never costs a run its results. copied: keys whose values were read back
    from other results files (check_written)."""
    text = json.dumps({"schema": SCHEMA, **run}, indent=1, default=str)
    atomic_write(path, text)
    check_written(path, text, copied)


class _JunitSuite:
    """One cell's <testsuite>, counting what its cases say."""

    def __init__(self, root: ET.Element, name: str):
        self.el = ET.SubElement(root, "testsuite", name=name)
        self.n = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}

    def case(self, classname: str, name: str, status: str, message: str = "", text: str = "",
             seconds: float | None = None) -> None:
        tc = ET.SubElement(self.el, "testcase", classname=classname, name=name)
        if seconds is not None:
            tc.set("time", f"{seconds:.3f}")
        self.n["tests"] += 1
        if status in ("fail", "xpass"):
            ET.SubElement(tc, "failure", message=message[:500]).text = text or message
            self.n["failures"] += 1
        elif status in ("error", "incomplete"):
            ET.SubElement(tc, "error", message=message[:500]).text = text or message
            self.n["errors"] += 1
        elif status in ("skip", "xfail", "not-applicable"):
            ET.SubElement(tc, "skipped", message=message[:500])
            self.n["skipped"] += 1
        elif message:  # a pass with something to say: a flaky scenario's first failure
            ET.SubElement(tc, "system-out").text = message


def _junit_build_and_cell(ts: _JunitSuite, cell: dict, label: str) -> None:
    b = cell["build"]
    if b["status"] == "not run":  # a merge's cell that no shard reported: incomplete below
        ts.case(label, "build", "skip", f"not run: {b.get('log_tail', '')}")
    elif b["status"] != "ok":
        ts.case(label, "build", "error", "build failed", b.get("log_tail", ""))
    elif cell["gated"] and b.get("warnings"):
        ts.case(label, "build", "fail", f"{len(b['warnings'])} compiler warning(s)",
                "\n".join(b["warnings"]))
    else:
        ts.case(label, "build", "pass")
    for inc in cell["incomplete"]:
        ts.case(label, "cell", "incomplete", f"incomplete: {inc}",
                "\n".join(cell.get("console_tail", []) or cell.get("kmsg_tail", [])))
    for err in cell["errors"] if b["status"] == "ok" else []:
        ts.case(label, "cell", "error", err.splitlines()[0], err)


def _junit_scenarios(ts: _JunitSuite, cell: dict, label: str) -> None:
    for sc in cell["scenarios"]:
        msg = sc.get("message", "")
        if sc["status"] == "xfail":
            msg = f"expected failure ({sc['expected']['rule']}, issue {sc['expected']['issue']}): " \
                  f"{sc['expected']['reason']} | {msg}"
        elif sc["status"] == "xpass":
            msg = "listed in kernel/expected-failures.toml but passes: remove it"
        elif sc.get("flaky"):
            msg = f"passed when run again; its first run failed: {sc['flaky'].get('message', '')}"
        ts.case(f"{label}.scenarios", f"{sc['id']} [{','.join(sc['rules'])}]", sc["status"], msg,
                sc.get("longrepr", msg), sc.get("duration_s"))
    for na in cell["suites_not_applicable"]:
        ts.case(f"{label}.{na['suite']}", na["suite"], "not-applicable", na["reason"])


def _junit_compliance(ts: _JunitSuite, cell: dict, label: str) -> None:
    for r in cell["compliance"]:
        cls = f"{label}.compliance.{r['profile']}"
        if r.get("status") == "error":
            ts.case(cls, "profile", "error", r.get("error", "error"), r.get("log_tail", ""))
        for inc in r.get("inconsistencies", []):
            ts.case(cls, "total-line", "fail", inc)
        for t in r.get("tests", []):
            msg = "\n".join(t["details"])
            if t["status"] == "xfail":
                msg = f"expected failure: {t['expected']['reason']}\n{msg}"
            elif t["status"] == "xpass":
                msg = "listed in kernel/expected-failures.toml but passes: remove it"
            ts.case(cls, f"{t['section']}/{t['name']}", t["status"],
                    msg.splitlines()[0] if msg else "", msg)


def write_junit(path: Path, run: dict) -> None:
    root = ET.Element("testsuites", name="loopqual")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for cell in run["cells"]:
        label = cell_label(cell)
        ts = _JunitSuite(root, label)
        _junit_build_and_cell(ts, cell, label)
        _junit_scenarios(ts, cell, label)
        _junit_compliance(ts, cell, label)
        if cell["build"]["status"] == "ok" and not (
                cell["incomplete"] and not cell["scenarios"] and not cell["compliance"]):
            bad = health_failures(cell)
            ts.case(f"{label}.health", "kernel-log+rmmod", "fail" if bad else "pass",
                    "; ".join(bad), "\n".join(bad + cell.get("kmsg_tail", [])[-40:]))
        if cell["status"] != "pass" and not (ts.n["failures"] or ts.n["errors"]):
            # Nothing above failed, yet the cell's verdict is not pass: junit.xml must not be
            # greener than results.json. Say why with the verdict's own lines.
            why = failures(cell) or [f"cell status {cell['status']}"]
            ts.case(label, "verdict", "error" if cell["status"] in ("error", "incomplete") else "fail",
                    why[0], "\n".join(why))
        for k, v in ts.n.items():
            ts.el.set(k, str(v))
            totals[k] += v
    for k, v in totals.items():
        root.set(k, str(v))
    ET.indent(root)
    atomic_write(path, ET.tostring(root, encoding="utf-8", xml_declaration=True))
