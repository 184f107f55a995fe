"""A pytest plugin that records each scenario as one JSON line, as soon as it ends:
{"id", "rules", "status": pass|fail|skip|error, "duration_s", "message"}. Written line by
line so that a suite killed by its timeout still leaves what it did."""

from __future__ import annotations

import json
from pathlib import Path


def scenario_id(nodeid: str) -> str:
    """Node ids relative to scenarios/ ("contract/test_x.py::test_y")."""
    return nodeid.split("scenarios/", 1)[1] if "scenarios/" in nodeid else nodeid


def rules_of(item) -> list[str]:
    rules: list[str] = []
    for mark in item.iter_markers("rules"):
        rules.extend(str(r) for r in mark.args)
    return sorted(set(rules), key=rules.index)


class Recorder:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.rules: dict[str, list[str]] = {}
        self.seen: dict[str, dict] = {}

    def pytest_unconfigure(self, config):
        """pytest is done: what remains is the process's exit. The runner watches for this
        file to tell a suite that hangs from a process that cannot exit (stuck in close())."""
        self.path.with_suffix(".finished").write_text("finished\n")

    def pytest_collection_modifyitems(self, items):
        for item in items:
            self.rules[item.nodeid] = rules_of(item)

    def pytest_runtest_logreport(self, report):
        entry = self.seen.get(report.nodeid)
        if entry is None:
            entry = {"id": scenario_id(report.nodeid), "rules": self.rules.get(report.nodeid, []),
                     "status": "pass", "duration_s": 0.0, "message": ""}
            self.seen[report.nodeid] = entry
        entry["duration_s"] = round(entry["duration_s"] + report.duration, 3)
        if report.skipped:
            entry["status"] = "skip"
            lr = report.longrepr
            entry["message"] = lr[2] if isinstance(lr, tuple) else str(lr)
        elif report.failed:
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
