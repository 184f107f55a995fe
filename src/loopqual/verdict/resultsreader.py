"""Reading a results directory's results.json back (loopqual report, compare,
expected-failures). A file that is missing, is not JSON, was written with another schema, or
holds a value of the wrong type is one line naming the file, the key and the expected type
(a ResultsFileError, exit 2), never a traceback or a table built from nonsense.

Only what the readers use is checked; other keys pass through untouched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loopqual.common.errors import ResultsFileError
from loopqual.config.schema import explain
from loopqual.verdict.results import SCHEMA


class _Item(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _Scenario(_Item):
    id: str
    status: Literal["pass", "fail", "error", "skip", "xfail", "xpass", "incomplete"]
    rules: list[str]
    message: str | None = None
    duration_s: float | None = None


class _ComplianceTest(_Item):
    section: str
    name: str
    status: Literal["pass", "fail", "skip", "xfail", "xpass"]
    details: list[str]


class _ComplianceRun(_Item):
    profile: str
    status: str | None = None
    tests: list[_ComplianceTest] = []
    total: int | None = None
    warnings: int | None = None
    inconsistencies: list[str] = []


class _Splat(_Item):
    pattern: str
    line: str
    context: list[str] = []


class _Health(_Item):
    splats: list[_Splat] = []
    rmmod: str | None = None
    left_open: list[str] = []
    stuck: list[str] = []


class _Build(_Item):
    status: str
    log_tail: str = ""
    warnings: list[str] = []


class _NotApplicable(_Item):
    suite: str
    reason: str


class _Cell(_Item):
    """What compare and expected-failures read."""
    id: str
    kernel: str
    module: str
    param_set: str
    status: Literal["pass", "fail", "error", "incomplete"]
    gated: bool
    scenarios: list[_Scenario] = []
    compliance: list[_ComplianceRun] = []
    health: _Health | None = None
    incomplete_suites: list[str] = []


class _FullCell(_Cell):
    """What the report reads as well."""
    build: _Build
    health: _Health
    errors: list[str]
    incomplete: list[str]
    suites_not_applicable: list[_NotApplicable] = []
    params: dict[str, int | str | bool] = {}
    steps: list[list[str | float | int]] = []
    kmsg_tail: list[str] = []


class _PlanCell(_Item):
    id: str
    kernel: str
    module: str
    param_set: str
    gated: bool
    shard: int


class _Shard(_Item):
    """Which shard of which plan a run was (qualify --shard K/N): what merge reads."""
    plan_id: str
    k: int
    n: int
    cells: list[str]
    plan_cells: list[_PlanCell]


class _Run(_Item):
    schema_: int = Field(alias="schema")
    cells: list[_Cell]
    shard: _Shard | None = None


class _FullRun(_Run):
    cells: list[_FullCell]
    exit_code: Literal[0, 1, 2]
    started: str
    command: str
    wall_s: float
    boots: int
    accel: dict[str, str]
    host: dict[str, str]
    expected_failures: list[dict] = []


def load(results_dir: Path, for_report: bool = False) -> dict:
    """The run recorded in results_dir/results.json, checked; for_report: also what the
    HTML report needs (the build, health and verdict of every cell, the run's exit code)."""
    path = results_dir / "results.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ResultsFileError(f"{results_dir}: no results.json there") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsFileError(f"{path}: cannot read it: {exc}") from None
    try:
        run = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsFileError(f"{path}: not valid JSON ({exc}); a run that was cut short may "
                               f"have left it half written: run qualify again") from None
    if not isinstance(run, dict):
        raise ResultsFileError(f"{path}: expected a JSON object with schema and cells, "
                               f"not {type(run).__name__}")
    schema = run.get("schema")
    if isinstance(schema, int) and not isinstance(schema, bool) and schema != SCHEMA:
        raise ResultsFileError(f"{path}: schema = {schema}: this loopqual reads schema {SCHEMA}; "
                               f"use the loopqual that wrote it")
    model = _FullRun if for_report else _Run
    try:
        model.model_validate(run)
    except ValidationError as exc:
        key, problem = explain(model, run, exc)
        sep = " " if problem.startswith("=") else ": "
        raise ResultsFileError(f"{path}: {key}{_cell_label(run, key)}{sep}{problem}") from None
    return run


def _cell_label(run: dict, key: str) -> str:
    """' (kernel/module/param set)' after a key inside cells[N], to find the cell."""
    if not key.startswith("cells["):
        return ""
    try:
        cell = run["cells"][int(key[6:key.index("]")])]
        return f" (cell {cell['kernel']}/{cell['module']}/{cell['param_set']})"
    except (ValueError, LookupError, TypeError):
        return ""
