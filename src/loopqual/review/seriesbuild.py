"""The series as a bisecting reviewer builds it: the base and every prefix of the series
(base + patches 1..k) built with W=1 against every kernel of the gate, each in its own build
root where the kernel has one; and sparse (C=2) on the base and on the whole series against
debian-6.12. A prefix passes when it builds and its compiler warnings are ones the base
already has; the series passes sparse when it adds no warning the base does not have. Sets,
not totals: a warning is its file and message, without the line that moves as code moves, and
a second instance of a message the base has once is new.

Every build is cached by its inputs (src/loopqual/module/build.py), so an unchanged series costs a hash."""

from __future__ import annotations

import hashlib
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from loopqual.common.errors import LoopqualError
from loopqual.common.paths import atomic_dir, cache_dir, cache_lock
from loopqual.config import data
from loopqual.kernel import kernels
from loopqual.module import build as buildmod
from loopqual.module import sources

PREFIX_KERNELS = ("debian-6.1", "debian-6.12", "debian-sid")
SPARSE_KERNEL = "debian-6.12"
W1 = ("W=1",)
_DIAG = re.compile(r"^(?:.*/)?(?P<file>[^/\s:]+):\d+(?::\d+)?: (?P<kind>warning|error): (?P<msg>.*)$")


class SeriesBuildError(LoopqualError):
    pass


def warning_counts(lines: list[str]) -> Counter[str]:
    """How often each 'file: message' appears among the compiler or sparse warning lines (line
    and column dropped): a second instance of a message the base has once is a new warning."""
    out: Counter[str] = Counter()
    for line in lines:
        m = _DIAG.match(line.strip())
        if m and m["kind"] == "warning":
            out[f"{m['file']}: {m['msg'].strip()}"] += 1
    return out


def warning_set(lines: list[str]) -> set[str]:
    return set(warning_counts(lines))


def listed(c: Counter[str]) -> list[str]:
    """A multiset as sorted lines, 'message (xN)' where it occurs more than once."""
    return sorted(f"{k} (x{n})" if n > 1 else k for k, n in c.items())


@dataclass
class PrefixResult:
    kernel: str
    step: int  # 0: the base; k: base + patches 1..k
    patch: str  # the last patch applied ("base" for step 0)
    status: str  # "ok" or "failed"
    warnings: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # warnings the base does not have
    cached: bool = False
    log_tail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "ok" and not self.new


def prefix_tree(base: Path, patches: list[Path]) -> Path:
    """base with these patches applied, made once into the cache."""
    key = hashlib.sha256(str(base).encode())
    for p in patches:
        key.update(p.name.encode() + b"\0" + p.read_bytes())
    top = cache_dir() / "src" / "series-prefix" / key.hexdigest()[:16]
    dest = top / base.name
    if (top / ".applied").exists():
        return dest
    with cache_lock(top.parent / f"{top.name}.lock", "a prefix of the series"):
        if not (top / ".applied").exists():
            with atomic_dir(top) as tmp:
                sources.apply_patches(base, patches, tmp / base.name)
                (tmp / ".applied").write_text("\n".join(p.name for p in patches) + "\n")
    return dest


def _base_and_patches() -> tuple[Path, list[Path]]:
    mirror, all_sources = data.load_sources()
    src = all_sources.get("patched")
    if src is None or src.base is None or src.patches is None:
        raise SeriesBuildError(f"{data.SOURCES_FILE}: no [source.patched] with base and patches")
    return sources.unpack_debian(all_sources[src.base], mirror), sources.read_series(src.patches)


def series_trees() -> tuple[Path, Path]:
    """The stock base and the base with the whole series applied."""
    base, patches = _base_and_patches()
    return base, prefix_tree(base, patches)


def _kernel(name: str, install: bool) -> kernels.InstalledKernel:
    known = data.load_kernels()
    if name not in known:
        raise SeriesBuildError(f"kernel {name} is not in {data.KERNELS_FILE}")
    return kernels.resolve(known[name], install=install)


def prefix_builds(kernel_names=PREFIX_KERNELS, install: bool = True, say=print
                  ) -> list[PrefixResult]:
    base, patches = _base_and_patches()
    out: list[PrefixResult] = []
    for name in kernel_names:
        ik = _kernel(name, install)
        base_warnings: Counter[str] = Counter()
        for k in range(len(patches) + 1):
            tree = prefix_tree(base, patches[:k]) if k else base
            b = buildmod.build(f"series-prefix-{k:02d}", tree, [], ik, make_args=W1)
            warns = warning_counts(b.warnings)
            if k == 0:
                base_warnings = warns
            r = PrefixResult(name, k, patches[k - 1].name if k else "base", b.status,
                             listed(warns), listed(warns - base_warnings), b.cached,
                             "" if b.status == "ok" else b.log_tail)
            if not b.cached:
                say(f"series check: built step {k} for {name} (W=1): {b.status}, "
                    f"{sum(warns.values())} warning(s), {b.duration_s:.0f} s")
            out.append(r)
    return out


@dataclass
class SparseResult:
    kernel: str
    base: list[str]
    patched: list[str]
    new: list[str]  # in patched, not in base
    gone: list[str]  # in base, not in patched
    base_total: int = 0
    patched_total: int = 0


def sparse_program() -> Path:
    found = shutil.which("sparse")
    if not found:
        raise SeriesBuildError("sparse is not installed: run `make deps` (Debian's sparse "
                               "package), then run again")
    return Path(found)


def sparse_diff(kernel_name: str = SPARSE_KERNEL, install: bool = True) -> SparseResult:
    ik = _kernel(kernel_name, install)
    if ik.root:
        raise SeriesBuildError(f"{kernel_name} builds in a build root: sparse runs on the host "
                               f"kernels only")
    base, patches = _base_and_patches()
    args = ("C=2", f"CHECK={sparse_program()}")
    sets = []
    for label, tree in (("base", base), ("patched", prefix_tree(base, patches))):
        b = buildmod.build(f"series-sparse-{label}", tree, [], ik, make_args=args)
        if b.status != "ok":
            raise SeriesBuildError(f"the sparse build of the {label} tree for {kernel_name} "
                                   f"failed:\n{b.log_tail}")
        sets.append(warning_counts(b.warnings))
    return SparseResult(kernel_name, listed(sets[0]), listed(sets[1]),
                        listed(sets[1] - sets[0]), listed(sets[0] - sets[1]),
                        sum(sets[0].values()), sum(sets[1].values()))


def render_prefixes(results: list[PrefixResult]) -> str:
    lines = ["every prefix of the series built with W=1 (warnings / new against the base):"]
    names = list(dict.fromkeys(r.kernel for r in results))
    steps = sorted({r.step for r in results})
    lines.append("  " + "step".ljust(6) + "".join(n.rjust(14) for n in names))
    by = {(r.kernel, r.step): r for r in results}
    for k in steps:
        row = f"  {('base' if k == 0 else k):<6}"
        for n in names:
            r = by.get((n, k))
            text = "-" if r is None else ("FAILED" if r.status != "ok"
                                          else f"{len(r.warnings)}/{len(r.new)}")
            row += text.rjust(14)
        lines.append(row)
    for r in results:
        if not r.passed:
            what = "does not build" if r.status != "ok" else "adds warnings"
            lines.append(f"REGRESSION: {r.kernel} step {r.step} ({r.patch}) {what}")
            lines += [f"    {w}" for w in r.new[:10]]
            if r.log_tail:
                lines += [f"    {ln}" for ln in r.log_tail.splitlines()[-10:]]
    return "\n".join(lines)


def render_sparse(s: SparseResult) -> str:
    lines = [f"sparse (C=2) on {s.kernel}: base {s.base_total} warning(s), patched "
             f"{s.patched_total}; new {len(s.new)}, gone {len(s.gone)} (kinds)"]
    lines += [f"  new: {w}" for w in s.new]
    lines += [f"  gone: {w}" for w in s.gone]
    lines += [f"  patched: {w}" for w in s.patched]
    return "\n".join(lines)


def review_figures(check: dict) -> dict:
    """What the builds and analysers of a `series check --out` file found, for those who show
    it (report.html, the cover letter); a part that did not run is absent. A prefix build
    fails as PrefixResult.passed says: it did not build, or it added a warning."""
    out: dict = {}
    builds = check.get("prefix_builds") or []
    if builds:
        out["builds"] = {"count": len(builds), "kernels": sorted({b["kernel"] for b in builds}),
                         "failing": sum(1 for b in builds if b["status"] != "ok" or b["new"])}
    if sp := check.get("sparse"):
        out["sparse"] = {"base": sp["base_total"], "patched": sp["patched_total"],
                         "new": sp["new"]}
    if cc := check.get("coccinelle"):
        out["coccinelle"] = {"scripts": cc["scripts"], "base": len(cc["base"]),
                             "patched": len(cc["patched"]), "new": cc["new"]}
    return out
