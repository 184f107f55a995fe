"""A pytest plugin that records each scenario as one JSON line, as soon as it ends:
{"id", "rules", "status": pass|fail|skip|error|incomplete, "duration_s", "message", "programs",
"measurements"}. Written line by line so that a suite killed by its timeout still leaves what
it did. At the end of the session it writes the session's own account (pytest's exit status
and the number of scenarios collected) to the `.finished` file beside it, so that the runner
can tell a whole suite from one that lost scenarios, even when pytest's process had to be
killed afterwards and its exit status was lost.

A scenario that raises an exception with `infrastructure = True` (guest/programs/infra.py: a
program it needs is missing or cannot start) is "incomplete": it judged nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loopqual.common.suite_record import finished_path


def scenario_id(nodeid: str) -> str:
    """Node ids relative to scenarios/ ("contract/test_x.py::test_y")."""
    return nodeid.split("scenarios/", 1)[1] if "scenarios/" in nodeid else nodeid


def rules_of(item) -> list[str]:
    rules: list[str] = []
    for mark in item.iter_markers("rules"):
        rules.extend(str(r) for r in mark.args)
    return sorted(set(rules), key=rules.index)


def programs_of(item) -> list[str]:
    """The real programs a scenario drives (marker `programs`): a failure of one of them is
    run again (suite_record.rerun_candidates)."""
    return [str(p) for mark in item.iter_markers("programs") for p in mark.args]


class Recorder:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.rules: dict[str, list[str]] = {}
        self.programs: dict[str, list[str]] = {}
        self.seen: dict[str, dict] = {}
        self.collected: int | None = None

    def pytest_collection_modifyitems(self, items):
        for item in items:
            self.rules[item.nodeid] = rules_of(item)
            self.programs[item.nodeid] = programs_of(item)

    def pytest_collection_finish(self, session):
        self.collected = len(session.items)  # after -k deselection: what will run

    def pytest_sessionfinish(self, session, exitstatus):
        """pytest is done: what remains is the process's exit. The runner also watches for
        this file to tell a suite that hangs from a process that cannot exit (stuck in
        close())."""
        account = {"exitstatus": int(exitstatus), "collected": self.collected or 0,
                   "recorded": sum(1 for e in self.seen.values() if e.get("written"))}
        finished_path(self.path).write_text(json.dumps(account) + "\n")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        exc = call.excinfo.value if call.excinfo is not None else None
        if getattr(exc, "infrastructure", False):
            report.loopqual_infrastructure = f"{type(exc).__name__}: {exc}"
        return report

    def pytest_runtest_logreport(self, report):
        entry = self.seen.get(report.nodeid)
        if entry is None:
            entry = {"id": scenario_id(report.nodeid), "rules": self.rules.get(report.nodeid, []),
                     "status": "pass", "duration_s": 0.0, "message": ""}
            if self.programs.get(report.nodeid):
                entry["programs"] = self.programs[report.nodeid]
            self.seen[report.nodeid] = entry
        entry["duration_s"] = round(entry["duration_s"] + report.duration, 3)
        for name, value in report.user_properties:  # record_property(): figures it measured
            entry.setdefault("measurements", {})[name] = value
        infrastructure = getattr(report, "loopqual_infrastructure", None)
        if infrastructure:
            entry["status"] = "incomplete"
            entry["message"] = (entry["message"] + "\n" if entry["message"] else "") + infrastructure
        elif report.skipped:
            entry["status"] = "skip"
            lr = report.longrepr
            entry["message"] = lr[2] if isinstance(lr, tuple) else str(lr)
        elif report.failed and entry["status"] != "incomplete":
            # A failure in setup or teardown is an error of the scenario, not a verdict.
            entry["status"] = "fail" if report.when == "call" else "error"
            msg = getattr(report.longrepr, "reprcrash", None)
            text = msg.message if msg is not None else str(report.longrepr)
            prefix = "" if report.when == "call" else f"[{report.when}] "
            entry["message"] = (entry["message"] + "\n" if entry["message"] else "") + prefix + text
            entry["longrepr"] = str(report.longrepr)[-4000:]
        if report.when == "teardown":
            with self.path.open("a") as fh:
                fh.write(json.dumps(entry) + "\n")
            entry["written"] = True
