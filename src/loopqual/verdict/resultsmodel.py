"""The model of results.json, the file every run writes: one set of classes that the writers
(qualify, merge: results.write_json) check a document against before it is written, and the
readers (report, compare, expected-failures, merge, the cover letter: resultsreader.load)
check a file read back against.

Writing, every key must be one the model names (an unknown key is most often a misspelt one)
and every value of its type: a document that does not fit is not written, and the error is
one line naming the key. Reading, keys this loopqual does not know are passed over (a file
written by an older or newer loopqual has some), and a key that may be absent has a default:
a cell that never ran has no scenarios, a run that is not a shard has no shard, older files
lack what was added since. docs/results.md says what the keys mean.

Only the shape is modelled: the writers keep building plain dicts and the readers keep
reading them, so the bytes written are exactly json.dumps of what the writer built."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from loopqual.common.errors import ResultsFileError
from loopqual.config.schema import explain

SCHEMA = 1

# The validation context that passes over unknown keys (resultsreader.load; write_json for
# what a merge copies from the shards' files).
READING = {"unknown_keys": "pass over"}

ScenarioStatus = Literal["pass", "fail", "error", "skip", "xfail", "xpass", "incomplete"]
ParamValue = int | str | bool


class Record(BaseModel):
    """A table of results.json: its keys, each with its type (never converted)."""
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _pass_over_unknown_keys(cls, data: Any, info: ValidationInfo) -> Any:
        if info.context == READING and isinstance(data, dict):
            known = {f.alias or name for name, f in cls.model_fields.items()}
            return {k: v for k, v in data.items() if k in known}
        return data


# ---------------------------------------------------------------------------- a cell's items
class Expectation(Record):
    """The kernel/expected-failures.toml entry that turned a failure into xfail (or a pass
    into xpass)."""
    reason: str
    rule: str
    issue: str
    category: str = "pending"
    inherent: bool = False


class FirstRun(Record):
    """A flaky scenario's first run, the failed one (common/suite_record.merge_rerun)."""
    status: ScenarioStatus | None = None
    message: str | None = None
    duration_s: float | None = None
    measurements: dict[str, Any] = {}


class Rerun(Record):
    """A scenario that failed, then failed (or did not finish) when run again."""
    status: ScenarioStatus | None = None
    message: str | None = None
    duration_s: float | None = None
    incomplete: str | None = None


class Scenario(Record):
    """A pytest scenario as guest/recorder.py recorded it, with its suite and verdict."""
    id: str
    status: ScenarioStatus
    rules: list[str]
    message: str | None = None
    duration_s: float | None = None
    suite: str | None = None
    longrepr: str | None = None
    programs: list[str] = []
    measurements: dict[str, Any] = {}  # the scenario's own figures, by name
    expected: Expectation | None = None
    flaky: FirstRun | None = None
    rerun: Rerun | None = None


class ComplianceTest(Record):
    section: str
    name: str
    status: Literal["pass", "fail", "skip", "xfail", "xpass"]
    details: list[str]
    expected: Expectation | None = None


class ComplianceTool(Record):
    name: str
    package_version: str | None = None


class ComplianceRun(Record):
    """One v4l2-compliance profile (common/compliance.py, guest/runner.py)."""
    profile: str
    status: Literal["pass", "fail", "incomplete", "error"] | None = None
    version: str | None = None
    tests: list[ComplianceTest] = []
    total: int | None = None
    succeeded: int | None = None
    failed: int | None = None
    warnings: int | None = None
    exit_code: int | None = None
    timed_out: bool = False
    inconsistencies: list[str] = []
    command: str | None = None
    tool: ComplianceTool | None = None
    error: str | None = None
    log_tail: str = ""


class Splat(Record):
    pattern: str
    line: str
    context: list[str] = []


class Kmemleak(Record):
    """The leak scan after the cell on a kernel with kmemleak, or why it did not finish."""
    suspects: int | None = None
    through_modules: int | None = None
    seconds: float | None = None
    error: str | None = None


class Health(Record):
    splats: list[Splat] = []
    rmmod: str | None = None
    refcnt: int | None = None
    left_open: list[str] = []
    stuck: list[str] = []
    kmemleak: Kmemleak | None = None


class Build(Record):
    status: str  # ok, failed, or "not run" (a merge's cell no shard reported)
    log_tail: str = ""
    warnings: list[str] = []
    cached: bool | None = None
    key: str | None = None


class NotApplicable(Record):
    suite: str
    reason: str


# ---------------------------------------------------------------------------- cells
class CellCore(Record):
    """What every reader of a cell needs (compare and expected-failures read no more)."""
    id: str
    kernel: str
    module: str
    param_set: str
    status: Literal["pass", "fail", "error", "incomplete"]
    gated: bool
    scenarios: list[Scenario] = []
    compliance: list[ComplianceRun] = []
    health: Health | None = None
    incomplete_suites: list[str] = []


class Cell(CellCore):
    """A cell as results.evaluate_cell writes it; what the report reads."""
    build: Build
    health: Health
    errors: list[str]
    incomplete: list[str]
    kernel_release: str | None = None
    kernel_version: str | None = None
    kernel_suite: str | None = None
    compiler: str | None = None
    module_version: str | None = None
    params: dict[str, ParamValue] = {}
    module_params: dict[str, ParamValue] = {}
    controls: dict[str, ParamValue] = {}
    loaded_params: dict[str, ParamValue] = {}  # as the module reports them after insmod
    patches: list[str] = []
    reproduce: str = ""
    suites_not_applicable: list[NotApplicable] = []
    problems: list[str] = []
    kmsg_tail: list[str] = []
    console_tail: list[str] = []  # a cell that never ran: the guest console's last lines
    duration_s: float | None = None
    steps: list[list[str | float]] = []  # [step, seconds]


# ---------------------------------------------------------------------------- the run
class PlanCell(Record):
    id: str
    kernel: str
    module: str
    param_set: str
    gated: bool
    shard: int


class Shard(Record):
    """Which shard of which plan a run was (qualify --shard K/N): what merge reads."""
    plan_id: str
    k: int
    n: int
    cells: list[str]
    plan_cells: list[PlanCell]
    expected_s: int | None = None


class MergedShard(Record):
    k: int
    dir: str
    command: str
    wall_s: float
    boots: int
    exit_code: int
    expected_s: int | None = None
    loopqual_commit: str | None = None


class Merge(Record):
    """What loopqual merge put together, and what it found missing or foreign."""
    plan_id: str
    n: int
    problems: list[str]
    shards: list[MergedShard]


class Lane(Record):
    """One chain of guest boots of one kernel."""
    kernel: str
    cells: list[str] = []
    work_dir: str = ""
    expected_s: float | None = None
    wall_s: float | None = None
    boots: int | None = None
    boot_seconds: list[float] = []
    root_fs: list[str] = []
    shard: int | None = None  # merged: the shard the lane ran in


class GuestRoot(Record):
    """How the guests' / was shared (boot/guestroot.py), and what each boot saw."""
    asked: str | None = None
    kind: str | None = None
    virtiofsd: str | None = None
    fallback_reason: str | None = None
    per_boot: list[str] = []


class Host(Record):
    machine: str | None = None
    python: str | None = None
    loopqual_commit: str | None = None


class Selection(Record):
    """What qualify was asked to run, as names."""
    kernels: list[str] = []
    modules: list[str] = []
    param_sets: list[str] = []
    suites: list[str] = []
    k: str | None = None
    suite_kernels: dict[str, list[str]] = {}


class ExpectedFailureEntry(Record):
    """An entry of kernel/expected-failures.toml as the run applied it (older files lack the
    keys added since: category, detail, tool_versions)."""
    kind: str
    id: str
    reason: str
    rule: str
    issue: str
    category: str = "pending"
    param_sets: list[str] = []
    kernels: list[str] = []
    detail: str = ""
    tool_versions: list[str] = []


class Tool(Record):
    """A tool's root (a newer v4l2-compliance) the suites ran from."""
    suite: str
    version: str | None = None
    root: str
    made_s: float | None = None


class ProfileBoots(Record):
    count: int | None = None
    total_s: float
    seconds: list[float]


class SlowScenario(Record):
    cell: str
    id: str
    duration_s: float


class ProfileLane(Record):
    lane: int
    kernel: str | None = None
    shard: int | None = None
    wall_s: float
    boots: int | None = None
    boot_s: float
    cells_s: float
    other_s: float


class Profile(Record):
    """Where the run's time went (output/timeprofile.py)."""
    wall_s: float | None = None
    boots: ProfileBoots
    steps: dict[str, float]
    slowest_scenarios: list[SlowScenario]
    lanes: list[ProfileLane]
    other_s: float


class ResultsCore(Record):
    """What every reader of a run needs (compare and expected-failures read no more)."""
    schema_: int = Field(alias="schema")
    cells: list[CellCore]
    shard: Shard | None = None


class Results(ResultsCore):
    """results.json as qualify and merge write it; what the report and merge read."""
    cells: list[Cell]
    exit_code: Literal[0, 1, 2]
    started: str
    command: str
    wall_s: float
    boots: int
    accel: dict[str, str]  # kernel -> kvm or tcg
    guest_cpu: dict[str, str] = {}  # kernel -> QEMU's -cpu for its guests
    host: Host
    seed: str | None = None
    jobs: int | None = None
    boot_seconds: list[float] = []
    guest_root: GuestRoot | None = None
    lanes: list[Lane] = []
    selection: Selection | None = None
    expected_failures: list[ExpectedFailureEntry] = []
    tools: dict[str, Tool] = {}
    interrupted: str | None = None  # the signal that stopped the run
    merge: Merge | None = None
    profile: Profile | None = None


# ---------------------------------------------------------------------------- checking
def problem(model: type[Record], doc: dict, exc: ValidationError) -> str:
    """The first thing in doc that does not fit model, as one line: the key, the cell it is
    in, what is wrong."""
    key, what = explain(model, doc, exc)
    sep = " " if what.startswith("=") else ": "
    return f"{key}{_cell_label(doc, key)}{sep}{what}"


def _cell_label(doc: dict, key: str) -> str:
    """' (kernel/module/param set)' after a key inside cells[N], to find the cell."""
    if not key.startswith("cells["):
        return ""
    try:
        cell = doc["cells"][int(key[6:key.index("]")])]
        return f" (cell {cell['kernel']}/{cell['module']}/{cell['param_set']})"
    except (ValueError, LookupError, TypeError):
        return ""


def check_written(path: Path, text: str, copied: tuple[str, ...] = ()) -> None:
    """Raise unless `text`, written to path, is a results.json the model describes. The
    text, not the dict it came from, is checked: it is what the readers will get. copied:
    top-level keys whose values were read back from other results files (what a merge takes
    from its shards' files), where keys another loopqual wrote are passed over; their types
    are checked all the same."""
    doc = json.loads(text)
    try:
        if copied:
            read_back = Results.model_validate(doc, context=READING)
            doc = {**doc, **read_back.model_dump(mode="json", by_alias=True, include=set(copied))}
        Results.model_validate(doc)
    except ValidationError as exc:
        raise ResultsFileError(f"{path}: it does not fit the results model "
                               f"(verdict/resultsmodel.py), a loopqual defect: "
                               f"{problem(Results, doc, exc)}") from None
