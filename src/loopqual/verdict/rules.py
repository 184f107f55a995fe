"""The contract's rules: which scenarios check each (`loopqual rules`), and which rules each
module source holds in a results directory (`loopqual compare`, and the report's table).

The rule list is read from docs/contract.md (lines "- **A1** ..."), the contract as the
repository writes it; scenarios are found by collecting the pytest suites on the host
(`@pytest.mark.rules(...)` markers; collecting needs no device)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from loopqual.common.errors import LoopqualError
from loopqual.common.health import KMEMLEAK_SCAN
from loopqual.common.paths import REPO

CONTRACT = REPO / "docs" / "contract.md"
_RULE = re.compile(r"^- \*\*(?P<id>[A-Z]\d+)\*\*\s+(?P<text>.*)$")


def load_rules(path: Path = CONTRACT) -> dict[str, str]:
    """Rule id -> its first sentence, in the contract's order."""
    if not path.exists():
        raise LoopqualError(f"{path}: the written contract is missing")
    rules = {}
    for line in path.read_text().splitlines():
        m = _RULE.match(line.strip())
        if m and m["id"] not in rules:
            rules[m["id"]] = m["text"].split(". ")[0].rstrip(".")
    if not rules:
        raise LoopqualError(f"{path}: no rules found (lines like '- **A1** ...')")
    return rules


_COLLECT = r"""
import json, sys
import pytest

class C:
    def __init__(self): self.items = []
    def pytest_collection_modifyitems(self, items):
        for it in items:
            rules, configs, programs, reports = [], [], [], []
            for m in it.iter_markers("rules"):
                rules += [str(a) for a in m.args]
            for m in it.iter_markers("needs_kernel_config"):
                configs += [str(a) for a in m.args]
            for m in it.iter_markers("programs"):
                programs += [str(a) for a in m.args]
            for m in it.iter_markers("upstream_report"):
                reports += [int(a) for a in m.args]
            self.items.append({"id": it.nodeid.split("scenarios/", 1)[-1], "rules": rules,
                               "kernel_config": configs, "programs": programs,
                               "upstream_reports": reports})

c = C()
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider",
                    "--rootdir", sys.argv[1], *sys.argv[2:]], plugins=[c])
print("@@COLLECTED " + json.dumps({"code": int(code), "items": c.items}))
"""


def collect_scenarios(paths: list[str]) -> list[dict]:
    """Every scenario with its rules, collected on the host in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", _COLLECT, str(REPO / "scenarios"), *[str(REPO / p) for p in paths]],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("@@COLLECTED ")), None)
    if line is None:
        raise LoopqualError(f"collecting scenarios failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
    import json

    data = json.loads(line[len("@@COLLECTED "):])
    if data["code"] not in (0, 5):
        raise LoopqualError(f"collecting scenarios failed (pytest exit {data['code']}):\n"
                            f"{(proc.stdout + proc.stderr)[-2000:]}")
    return data["items"]


def coverage(rules: dict[str, str], items: list[dict]) -> tuple[dict[str, list[str]], list[str]]:
    """rule -> scenarios; and the rule ids that scenarios name but the contract does not."""
    by_rule: dict[str, list[str]] = {r: [] for r in rules}
    unknown = set()
    for it in items:
        for r in it["rules"]:
            if r in by_rule:
                by_rule[r].append(it["id"])
            else:
                unknown.add(r)
    return by_rule, sorted(unknown)


def kernel_config(release: str, boot: Path = Path("/boot")) -> set[str] | None:
    """The options a kernel has built in or as modules (CONFIG_X=y|m), from its
    /boot/config-<release>; None if that file is not there."""
    return _read_config(boot / f"config-{release}")


def kernel_configs(kernels) -> dict[str, set[str] | None]:
    """Each configured kernel's options; None for a kernel that is not installed here (its
    configuration is unknown, so nothing is counted as runnable on it)."""
    from loopqual.kernel.archivekernels import cached_config
    from loopqual.kernel.kernels import resolve

    out: dict[str, set[str] | None] = {}
    for k in kernels.values():
        try:
            if k.kind == "archive":  # its configuration, if its image is in the cache
                out[k.name] = _read_config(cached_config(k))
            elif k.kind == "debug":  # loopqual's own build: the .config of its build tree
                out[k.name] = _read_config(resolve(k, install=False).config)
            else:
                out[k.name] = kernel_config(resolve(k, install=False).release)
        except LoopqualError:
            out[k.name] = None
    return out


def _read_config(path: Path | None) -> set[str] | None:
    if path is None:
        return None
    try:
        text = path.read_text()
    except OSError:
        return None
    return {ln.split("=", 1)[0] for ln in text.splitlines() if ln.endswith(("=y", "=m"))}


def runnable_nowhere(items: list[dict], configs: dict[str, set[str] | None]) -> dict[str, str]:
    """Scenarios that need kernel options (@pytest.mark.needs_kernel_config) no configured
    kernel has: scenario id -> why. Such a scenario can only skip: it is no coverage."""
    out = {}
    for it in items:
        need = it.get("kernel_config") or []
        if not need:
            continue
        if any(cfg is not None and all(o in cfg for o in need) for cfg in configs.values()):
            continue
        where = "; ".join(
            f"{name}: " + ("not installed, configuration unknown" if cfg is None else
                           "lacks " + ", ".join(o for o in need if o not in cfg))
            for name, cfg in configs.items())
        out[it["id"]] = f"needs {', '.join(need)}; {where or 'no kernel configured'}"
    return out


# ---------------------------------------------------------------------------- comparison
HOLDS, BROKEN, NA, NOT_RUN, NOT_JUDGED = "holds", "broken", "n/a", "not run", "not judged"


def _column(cell: dict, kernels: set[str]) -> str:
    """A cell's column in the table: its module, or module@kernel when several kernels ran."""
    return cell["module"] if len(kernels) == 1 else f"{cell['module']}@{cell['kernel']}"


def not_judged(cell: dict) -> bool:
    """A cell whose scenarios did not all run cannot vouch for any rule of its source: a
    pytest suite cut short, a cell that failed to build, load or set up (error), or one the
    guest never finished. A hung compliance profile alone leaves the scenarios whole."""
    return bool(cell.get("incomplete_suites")) or cell["status"] == "error" or (
        cell["status"] == "incomplete" and not cell.get("scenarios"))


def compare(run: dict, rules: dict[str, str]) -> tuple[list[str], dict[str, dict[str, dict]]]:
    """Columns (module, or module@kernel when several kernels ran) and, per rule and column,
    {"verdict", "failing": [{"cell", "id", "message"}], "passing": n, "skipped": n}."""
    kernels = {c["kernel"] for c in run["cells"]}
    cols: list[str] = []
    for c in run["cells"]:
        col = _column(c, kernels)
        if col not in cols:
            cols.append(col)
    table: dict[str, dict[str, dict]] = {r: {} for r in rules}
    acc: dict[tuple[str, str], dict] = defaultdict(
        lambda: {"failing": [], "passing": 0, "skipped": 0, "incomplete_cells": 0})
    for c in run["cells"]:
        col = _column(c, kernels)
        for sc in c.get("scenarios", []):
            for r in sc["rules"]:
                a = acc[(r, col)]
                if sc["status"] in ("fail", "error", "xfail"):
                    a["failing"].append({"cell": c["id"], "param_set": c["param_set"],
                                         "id": sc["id"], "message": sc.get("message", "")})
                elif sc["status"] in ("pass", "xpass"):
                    a["passing"] += 1
                else:
                    a["skipped"] += 1
        # The runner's own health checks after the cell (kernel log over the whole cell,
        # compliance runs included; rmmod once everything is closed) judge H1 and H2 too.
        health = c.get("health") or {}
        for sp in health.get("splats", []):
            if sp["pattern"] == KMEMLEAK_SCAN:  # the runner's kmemleak scan after the cell
                acc[("H3", col)]["failing"].append(
                    {"cell": c["id"], "param_set": c["param_set"], "id": "health: kmemleak after the cell",
                     "message": f"expected no leak through a module, got {sp['line']}"})
                continue
            acc[("H1", col)]["failing"].append(
                {"cell": c["id"], "param_set": c["param_set"], "id": "health: kernel log of the cell",
                 "message": f"expected a clean kernel log, got {sp['pattern']}: {sp['line']}"})
        if health.get("rmmod") not in (None, "ok"):
            acc[("H2", col)]["failing"].append(
                {"cell": c["id"], "param_set": c["param_set"], "id": "health: rmmod after the cell",
                 "message": f"expected rmmod to succeed once all openers closed, got {health['rmmod']}"})
        if not_judged(c):
            for r in rules:
                acc[(r, col)]["incomplete_cells"] += 1
    for r in rules:
        for col in cols:
            a = acc[(r, col)]
            if a["failing"]:
                verdict = BROKEN
            elif a["incomplete_cells"]:
                verdict = NOT_JUDGED
            elif a["passing"]:
                verdict = HOLDS
            elif a["skipped"]:
                verdict = NA
            else:
                verdict = NOT_RUN
            table[r][col] = {"verdict": verdict, **a}
    return cols, table


def render_compare(run: dict, rules: dict[str, str]) -> str:
    cols, table = compare(run, rules)
    width = max(12, *(len(c) for c in cols))
    lines = ["rule  " + "".join(c.ljust(width + 2) for c in cols)]
    for r in rules:
        lines.append(f"{r:5} " + "".join(table[r][c]["verdict"].ljust(width + 2) for c in cols))
    lines.append("")
    lines.append("Broken rules, with the first failing scenario of each source:")
    any_broken = False
    for r in rules:
        for c in cols:
            cell = table[r][c]
            if cell["verdict"] == BROKEN:
                any_broken = True
                f = cell["failing"][0]
                msg = (f["message"] or "").splitlines()[0][:160] if f["message"] else ""
                more = f" (+{len(cell['failing']) - 1} more)" if len(cell["failing"]) > 1 else ""
                lines.append(f"  {r} {c} [{f['param_set']}] {f['id']}{more}: {msg}")
    if not any_broken:
        lines.append("  none")
    return "\n".join(lines)


def gated_not_holding(run: dict, rules: dict[str, str]) -> list[str]:
    """One line per rule that does not hold for a gated column (module, or module@kernel):
    broken, not judged (a cell of it errored or did not finish), not run, or n/a (every
    scenario of it skipped)."""
    cols, table = compare(run, rules)
    kernels = {c["kernel"] for c in run["cells"]}
    gated = {_column(c, kernels) for c in run["cells"] if c.get("gated")}
    out = []
    for r in rules:
        for col in cols:
            if col in gated and table[r][col]["verdict"] != HOLDS:
                cell = table[r][col]
                first = f": {cell['failing'][0]['id']}" if cell["failing"] else ""
                out.append(f"{r} {col}: {cell['verdict']}{first}")
    return out
