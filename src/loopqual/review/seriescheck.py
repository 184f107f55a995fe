"""Judge the patch series as a kernel reviewer does before reading it (issue 27, first step):
the kernel's own scripts/checkpatch.pl --strict on every patch of kernel/patches/series.

The findings the series still has are listed, type by type, with the reason each is not fixed
yet, in kernel/checkpatch-baseline.toml. The check fails when a type's count grows past its
entry or a type without an entry appears: a patch may not add findings, and the list only
shrinks. checkpatch.pl comes from the debug kernel's Debian source tree, which loopqual
downloads and unpacks once (src/loopqual/kernel/debugkernel.py) and the sanitizer lane builds from.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loopqual.common.errors import DataError, LoopqualError
from loopqual.common.paths import KERNEL_DIR

BASELINE_FILE = KERNEL_DIR / "checkpatch-baseline.toml"
CHECKPATCH_ARGS = ("--strict", "--no-tree", "--terse", "--show-types", "--no-summary")
# what the debug kernel's tree gives (kernel/debug-kernels.toml); any kernel tree will do
CHECKPATCH_TREE_KERNEL = "debian-6.12-debug"

_FINDING = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<level>ERROR|WARNING|CHECK):"
                      r"(?P<type>[A-Z0-9_]+): (?P<message>.*)$")
LEVELS = ("ERROR", "WARNING", "CHECK")


class SeriesCheckError(LoopqualError):
    """checkpatch.pl cannot be found or run."""


@dataclass(frozen=True)
class Finding:
    patch: str
    line: int
    level: str
    type: str
    message: str


def parse_checkpatch(text: str) -> list[Finding]:
    """The findings in checkpatch.pl's --terse --show-types output (other lines ignored)."""
    out = []
    for line in text.splitlines():
        m = _FINDING.match(line)
        if m:
            out.append(Finding(Path(m["file"]).name, int(m["line"]), m["level"], m["type"],
                               m["message"]))
    return out


class _Allowed(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: str = Field(pattern="^(ERROR|WARNING|CHECK)$", description='"ERROR", "WARNING" or '
                       '"CHECK"')
    count: int = Field(ge=0, description="how many the series may still have (an integer)")
    reason: str = Field(min_length=10, description="why it is not fixed yet (a sentence)")


def load_baseline(path: Path = BASELINE_FILE) -> dict[str, _Allowed]:
    """[type.NAME] entries: level, count, reason. A malformed file is a DataError naming it."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found (it lists the checkpatch findings the series "
                        f"may still have)") from None
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{path}: not valid TOML: {exc}") from None
    extra = set(raw) - {"type"}
    if extra:
        raise DataError(f"{path}: unknown table(s) {', '.join(sorted(extra))}: only [type.NAME]")
    out = {}
    for name, entry in raw.get("type", {}).items():
        try:
            out[name] = _Allowed.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}"
                                 for e in exc.errors())
            raise DataError(f"{path}: [type.{name}]: {problems}") from None
    return out


@dataclass
class Verdict:
    patches: dict[str, dict[str, int]]  # patch file -> {"ERROR": n, "WARNING": n, "CHECK": n}
    counts: dict[str, int]  # finding type -> count over the series
    levels: dict[str, str]
    regressions: list[str] = field(default_factory=list)
    improvements: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.regressions

    def totals(self) -> dict[str, int]:
        return {lv: sum(p[lv] for p in self.patches.values()) for lv in LEVELS}


def judge(patches: list[str], findings: list[Finding],
          baseline: dict[str, _Allowed]) -> Verdict:
    """Counts per patch and per type, against the baseline's allowance for each type."""
    per_patch = {p: dict.fromkeys(LEVELS, 0) for p in patches}
    counts: dict[str, int] = {}
    levels: dict[str, str] = {}
    for f in findings:
        per_patch.setdefault(f.patch, dict.fromkeys(LEVELS, 0))[f.level] += 1
        counts[f.type] = counts.get(f.type, 0) + 1
        levels[f.type] = f.level
    v = Verdict(per_patch, counts, levels, findings=findings)
    for name in sorted(set(counts) | set(baseline)):
        have, allowed = counts.get(name, 0), baseline.get(name)
        if allowed is None:
            where = sorted({f"{f.patch}:{f.line}" for f in findings if f.type == name})
            v.regressions.append(f"{levels[name]}:{name} x{have}, not in the baseline "
                                 f"(at {', '.join(where[:6])}{' ...' if len(where) > 6 else ''})")
        elif have > allowed.count:
            v.regressions.append(f"{allowed.level}:{name} {have}, the baseline allows "
                                 f"{allowed.count}")
        elif have < allowed.count:
            v.improvements.append(f"{allowed.level}:{name} {have}, the baseline says "
                                  f"{allowed.count}: lower it in {BASELINE_FILE.name}")
    return v


def checkpatch_path() -> Path:
    from loopqual.kernel import debugkernel

    specs = debugkernel.load_specs()
    if CHECKPATCH_TREE_KERNEL not in specs:
        raise SeriesCheckError(f"{debugkernel.DEBUG_KERNELS_FILE.name} has no "
                               f"[debug.\"{CHECKPATCH_TREE_KERNEL}\"]: its source tree gives "
                               f"checkpatch.pl")
    script = debugkernel.source_tree(specs[CHECKPATCH_TREE_KERNEL]) / "scripts" / "checkpatch.pl"
    if not script.is_file():
        raise SeriesCheckError(f"{script}: not found in the kernel source tree")
    return script


def run_checkpatch(script: Path, patches: list[Path]) -> str:
    """checkpatch.pl over the patches (absolute paths: a relative one is misread), run from
    its kernel tree. Exit 1 means findings; anything else without output is a failure."""
    cmd = ["perl", str(script), *CHECKPATCH_ARGS, *(str(p.resolve()) for p in patches)]
    try:
        proc = subprocess.run(cmd, cwd=script.parent.parent, capture_output=True, text=True,
                              errors="replace", timeout=600)
    except FileNotFoundError:
        raise SeriesCheckError("perl not found: install it (apt-get install perl)") from None
    except subprocess.TimeoutExpired:
        raise SeriesCheckError(f"{script.name} ran past 600 s") from None
    if proc.returncode not in (0, 1) or (proc.returncode == 1
                                         and not parse_checkpatch(proc.stdout)):
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])
        raise SeriesCheckError(f"{script.name} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def render(v: Verdict, baseline: dict[str, _Allowed]) -> str:
    lines = ["checkpatch.pl --strict, per patch (errors / warnings / checks):"]
    for patch, c in v.patches.items():
        lines.append(f"  {patch[:60]:60} {c['ERROR']:3} {c['WARNING']:3} {c['CHECK']:3}")
    t = v.totals()
    lines.append(f"  {'series':60} {t['ERROR']:3} {t['WARNING']:3} {t['CHECK']:3}")
    lines.append("by type (found / the baseline allows):")
    for name in sorted(set(v.counts) | set(baseline), key=lambda n: -v.counts.get(n, 0)):
        allowed = baseline[name].count if name in baseline else 0
        level = baseline[name].level if name in baseline else v.levels[name]
        lines.append(f"  {level + ':' + name:40} {v.counts.get(name, 0):3} / {allowed}")
    if not v.counts and not baseline:
        lines.append("  none")
    for r in v.regressions:
        lines.append(f"REGRESSION: {r}")
    for i in v.improvements:
        lines.append(f"fewer than recorded: {i}")
    lines.append("series check: " + ("pass (no finding beyond the baseline)" if v.passed else
                                      f"FAIL ({len(v.regressions)} regression(s): fix the "
                                      f"patch; the baseline only shrinks)"))
    return "\n".join(lines)


def cover_letter_problem(patches: list[Path]) -> str | None:
    """Why the series' cover letter is missing or stale (its shortlog is not the series'
    subjects in order), or None."""
    from loopqual.review import coverletter

    if not patches:
        return None
    cover = patches[0].parent / coverletter.COVER_NAME
    redo = "write it with `loopqual series cover-letter --results DIR` (make compare-delivery)"
    if not cover.is_file():
        return f"{cover} is missing: {redo}"
    listed = coverletter.listed_patches(cover.read_text(errors="replace"))
    subjects = [coverletter.patch_header(p.read_text(errors="replace"))[1] for p in patches]
    if listed != subjects:
        return (f"{cover.name} lists {len(listed)} patch(es), not the series' {len(subjects)} "
                f"subjects in order: {redo}")
    return None


def check(patches: list[Path], out: Path | None = None, builds: bool = True) -> int:
    """Run, print, write JSON to `out`; 0 when no finding goes beyond the baseline, the cover
    letter lists the series, every prefix builds with W=1 adding no warning, and sparse and
    coccinelle find nothing the base does not have (builds=False: checkpatch and the cover
    letter only)."""
    from loopqual.review import seriesbuild, seriescocci

    baseline = load_baseline()
    text = run_checkpatch(checkpatch_path(), patches)
    v = judge([p.name for p in patches], parse_checkpatch(text), baseline)
    print(render(v, baseline))
    cover = cover_letter_problem(patches)
    if cover:
        print(f"series check: FAIL: {cover}")
    prefixes: list = []
    sparse = cocci = None
    if builds:
        prefixes = seriesbuild.prefix_builds()
        print(seriesbuild.render_prefixes(prefixes))
        sparse = seriesbuild.sparse_diff()
        print(seriesbuild.render_sparse(sparse))
        cocci = seriescocci.cocci_diff(checkpatch_path().parent.parent,
                                       *seriesbuild.series_trees())
        print(seriescocci.render(cocci))
    bisect_ok = all(r.passed for r in prefixes)
    sparse_ok = sparse is None or not sparse.new
    cocci_ok = cocci is None or not cocci.new
    print("series check: builds and coccinelle " + (
        "not run (--no-builds)" if not builds else
        "pass" if bisect_ok and sparse_ok and cocci_ok else "FAIL"))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "tool": "checkpatch.pl " + " ".join(CHECKPATCH_ARGS), "passed": v.passed,
            "totals": v.totals(), "patches": v.patches, "types": v.counts,
            "regressions": v.regressions, "improvements": v.improvements,
            "findings": [asdict(f) for f in v.findings], "cover_letter": cover or "current",
            "prefix_builds": [asdict(r) for r in prefixes],
            "sparse": asdict(sparse) if sparse else None,
            "coccinelle": asdict(cocci) if cocci else None}, indent=1))
    return 0 if v.passed and not cover and bisect_ok and sparse_ok and cocci_ok else 1
