"""Parse v4l2-compliance output (run with -P) into per-test results.

Its exit code is that of the last failing test, not a count, so the lines are what counts:
  Section header:   "Format ioctls (Output 0):"          (column 0, ends with ':')
  Detail lines:     "\t\tfail: file.cpp(263): message"   (printed before the test line)
                    "\t\twarn: file.cpp(784): message"
  Test line:        "\ttest VIDIOC_G_FMT: OK" | ": OK (Not Supported)" | ": FAIL"
  Total line:       "Total for <driver> device /dev/video0: 54, Succeeded: 48, Failed: 6,
                     Warnings: 8"
The Total line cross-checks the per-test lines; a run without it did not finish.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TEST = re.compile(r"^\ttest (?P<name>.+): (?P<result>OK \(Not Supported\)|OK|FAIL)\s*$")
_DETAIL = re.compile(r"^\t\t(?P<kind>fail|warn): (?P<text>.*)$")
_SECTION = re.compile(r"^(?P<name>\S.*):\s*$")
_TOTAL = re.compile(
    r"^(?:Grand )?Total for (?P<what>.+?): (?P<total>\d+), Succeeded: (?P<ok>\d+), "
    r"Failed: (?P<failed>\d+), Warnings: (?P<warn>\d+)"
)
_VERSION = re.compile(r"^v4l2-compliance (?P<v>[\d.]+)")

STATUS = {"OK": "pass", "OK (Not Supported)": "skip", "FAIL": "fail"}


@dataclass
class ComplianceTest:
    section: str
    name: str
    status: str  # pass | skip | fail
    details: list[str] = field(default_factory=list)  # its fail: and warn: lines

    @property
    def id(self) -> str:
        return f"{self.section}/{self.name}"


@dataclass
class ComplianceRun:
    profile: str
    version: str | None = None
    tests: list[ComplianceTest] = field(default_factory=list)
    total: int | None = None
    succeeded: int | None = None
    failed: int | None = None
    warnings: int | None = None
    complete: bool = False  # the Total line was seen
    inconsistencies: list[str] = field(default_factory=list)
    exit_code: int | None = None
    timed_out: bool = False

    @property
    def status(self) -> str:
        if not self.complete or self.timed_out:
            return "incomplete"
        return "fail" if any(t.status == "fail" for t in self.tests) else "pass"

    def to_dict(self) -> dict:
        return {
            "profile": self.profile,
            "version": self.version,
            "status": self.status,
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "warnings": self.warnings,
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
            "inconsistencies": self.inconsistencies,
            "tests": [
                {"section": t.section, "name": t.name, "status": t.status, "details": t.details}
                for t in self.tests
            ],
        }


def parse(text: str, profile: str = "") -> ComplianceRun:
    run = ComplianceRun(profile=profile)
    section = ""
    pending: list[str] = []
    warn_lines = 0
    for raw in text.replace("\r", "\n").splitlines():
        if m := _VERSION.match(raw):
            run.version = run.version or m["v"]
            continue
        if m := _DETAIL.match(raw):
            pending.append(f"{m['kind']}: {m['text']}")
            warn_lines += m["kind"] == "warn"
            continue
        if m := _TEST.match(raw):
            run.tests.append(ComplianceTest(section, m["name"], STATUS[m["result"]], pending))
            pending = []
            continue
        if m := _TOTAL.match(raw):
            run.total, run.succeeded = int(m["total"]), int(m["ok"])
            run.failed, run.warnings = int(m["failed"]), int(m["warn"])
            run.complete = True
            continue
        if m := _SECTION.match(raw):
            section = m["name"]
            continue
    if run.complete:
        _cross_check(run, warn_lines)
    return run


def _cross_check(run: ComplianceRun, warn_lines: int) -> None:
    n_fail = sum(t.status == "fail" for t in run.tests)
    n_ok = len(run.tests) - n_fail
    checks = [
        ("tests", len(run.tests), run.total),
        ("failed", n_fail, run.failed),
        ("succeeded", n_ok, run.succeeded),
    ]
    for what, seen, said in checks:
        if seen != said:
            run.inconsistencies.append(
                f"Total line says {what}={said}, the per-test lines give {seen}"
            )
    # Warnings printed outside any test (e.g. before the first one) still count in the
    # Total line, so only more lines than the total is an inconsistency.
    if run.warnings is not None and warn_lines > run.warnings:
        run.inconsistencies.append(
            f"Total line says warnings={run.warnings}, saw {warn_lines} warn: lines"
        )
