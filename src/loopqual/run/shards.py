"""Many machines: `loopqual plan` prints the selection's cells split into shards for a CI
matrix, `loopqual qualify --shard K/N` runs one of them, and `loopqual merge` puts the shards'
results directories back together into one verdict. A shard that is missing, ran another
plan or duplicates another makes the merge incomplete (exit 2) and is named: the cells no
shard reported are incomplete cells of the merged results, so nothing passes unseen."""

from __future__ import annotations

import datetime as dt
import json
import platform
import re
import shlex
import sys
from collections import Counter
from pathlib import Path

from loopqual.common.errors import LoopqualError
from loopqual.output import report
from loopqual.output.timeprofile import time_profile
from loopqual.run import qualify
from loopqual.run.qualify import ShardPlan, git_commit
from loopqual.verdict import results, resultsreader, rules

FORMATS = ("json", "github", "gitlab")
# What a merged results.json takes from the shards' files as they are: a shard written by
# another loopqual may hold keys this one does not know (the merge names the commits).
COPIED_FROM_SHARDS = ("cells", "lanes", "selection", "expected_failures")


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N), 1 <= K <= N; anything else is one line (exit 2)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise LoopqualError(f"--shard {text!r}: give K/N, shard K of N with 1 <= K <= N (e.g. 1/3)")
    return int(m[1]), int(m[2])


def parse_count(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise LoopqualError(f"--shards {text!r}: give a whole number of shards, 1 or more")
    return int(text)


def render(plan: ShardPlan, fmt: str) -> str:
    """The plan as a CI matrix reads it.
    json:   [{"shard": "1/3", "plan_id": ..., "cells": [ids], "expected_s": S}, ...]
    github: {"include": [{"shard": "1/3"}, ...]}, for strategy.matrix: ${{ fromJSON(...) }}
    gitlab: [{"SHARD": ["1/3", "2/3", "3/3"]}], the value of parallel: matrix: (JSON is YAML)"""
    names = [f"{k}/{plan.n}" for k in range(1, plan.n + 1)]
    if fmt == "json":
        return json.dumps([{"shard": name, "plan_id": plan.plan_id, "cells": cells,
                            "expected_s": s}
                           for name, cells, s in zip(names, plan.shards, plan.expected_s, strict=True)],
                          indent=1)
    if fmt == "github":
        return json.dumps({"include": [{"shard": name} for name in names]})
    if fmt == "gitlab":
        return json.dumps([{"SHARD": names}])
    raise LoopqualError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")


def summary(plan: ShardPlan) -> str:
    per = ", ".join(f"{k}/{plan.n}: {len(c)} cell(s) ~{s} s"
                    for k, (c, s) in enumerate(zip(plan.shards, plan.expected_s, strict=True), 1))
    return f"plan {plan.plan_id}: {len(plan.cells)} cell(s) in {plan.n} shard(s); {per}"


# ---------------------------------------------------------------------------- merge
def _missing_cell(pc: dict, why: str, reproduce: str) -> dict:
    """A cell of the plan that no shard reported: incomplete, with the reason."""
    meta = {"id": pc["id"], "kernel": pc["kernel"], "kernel_release": None,
            "module": pc["module"], "module_version": None, "params": {}, "module_params": {},
            "controls": {}, "param_set": pc["param_set"], "gated": pc["gated"], "patches": [],
            "build": {"status": "ok", "log_tail": "", "warnings": []}, "reproduce": reproduce}
    cell = results.evaluate_cell(meta, None, {"reason": why}, [])
    cell["build"] = {"status": "not run", "log_tail": why, "warnings": []}
    return cell


def _shard_command(command: str, k: int, n: int) -> str:
    """The qualify line of another shard of the same plan, from one shard's own line."""
    try:
        parts = shlex.split(command)
    except ValueError:
        return ""
    out, skip = [], False
    for p in parts:
        if skip:
            skip = False
            continue
        if p in ("--shard", "--out", "-o"):
            skip = True
            continue
        if p.startswith(("--shard=", "--out=")):
            continue
        out.append(p)
    return shlex.join([*out, "--shard", f"{k}/{n}"]) if "qualify" in out else ""


def merge(dirs: list[Path], out: Path, argv: list[str]) -> int:
    """Merge shard results directories into `out`; the exit code as qualify's, 2 if any
    shard is missing, foreign or duplicated."""
    out_r = out.resolve()
    for d in dirs:
        if d.resolve() == out_r:
            raise LoopqualError(f"merge: --out {out} is one of the inputs; give a new directory")
    problems: list[str] = []
    plan_id, ref, by_k = _pick_shards([(d, resultsreader.load(d, for_report=True)) for d in dirs],
                                      problems)
    n = ref["shard"]["n"]
    cells = _merged_cells(by_k, ref, problems)
    code = 2 if problems else results.exit_code(cells)
    run = _merged_run(plan_id, ref, by_k, cells, problems, argv)
    code = run["exit_code"] = 2 if problems else code
    out.mkdir(parents=True, exist_ok=True)
    run["profile"] = time_profile(run)
    qualify.write_outputs(out, run, copied=COPIED_FROM_SHARDS)
    print(report.terminal_table(run))
    print()
    print(rules.render_compare(run, rules.load_rules()))
    for line in problems:
        print(f"merge: {line}", file=sys.stderr)
    print(f"\nresults: {out}/results.json  junit: {out}/junit.xml  report: {out}/report.html")
    print(f"merged {len(by_k)}/{n} shard(s) of plan {plan_id}, {len(cells)} cell(s); exit {code} "
          f"({ {0: 'all gated results passed', 1: 'a gated result failed', 2: 'incomplete'}[code] })")
    return code


def _pick_shards(loaded: list[tuple[Path, dict]], problems: list[str]
                 ) -> tuple[str, dict, dict[int, tuple[Path, dict]]]:
    """The plan most inputs belong to, its reference run, and its shards by number; every
    input left out (not a shard, another plan, out of range, twice) and every missing shard
    is added to `problems`."""
    shards = []
    for d, run in loaded:
        if not run.get("shard"):
            problems.append(f"{d}: not a shard run (its results.json has no shard: run qualify "
                            f"with --shard K/N): left out")
        else:
            shards.append((d, run))
    if not shards:
        raise LoopqualError("merge: none of the inputs is a shard run (qualify --shard K/N)")
    counts = Counter(run["shard"]["plan_id"] for _d, run in shards)
    first = {}
    for i, (_d, run) in enumerate(shards):
        first.setdefault(run["shard"]["plan_id"], i)
    plan_id = max(counts, key=lambda p: (counts[p], -first[p]))
    ref = shards[first[plan_id]][1]
    n = ref["shard"]["n"]
    by_k: dict[int, tuple[Path, dict]] = {}
    seen_dirs: dict[Path, Path] = {}
    for d, run in shards:
        s = run["shard"]
        name = f"shard {s['k']}/{s['n']}"
        if s["plan_id"] != plan_id:
            problems.append(f"{d}: {name} of another plan ({s['plan_id']}, not {plan_id}): left out")
            continue
        if not 1 <= s["k"] <= n:
            problems.append(f"{d}: {name} is not a shard of a {n}-shard plan: left out")
            continue
        if s["k"] in by_k or d.resolve() in seen_dirs:
            problems.append(f"{d}: duplicates {name} (already given by {by_k[s['k']][0]}): left out"
                            if s["k"] in by_k else f"{d}: given twice: left out")
            continue
        by_k[s["k"]] = (d, run)
        seen_dirs[d.resolve()] = d
    for k in range(1, n + 1):
        if k not in by_k:
            problems.append(f"shard {k}/{n} missing (no results directory of plan {plan_id} for it)")
    return plan_id, ref, by_k


def _merged_cells(by_k: dict[int, tuple[Path, dict]], ref: dict, problems: list[str]) -> list[dict]:
    """Every cell of the plan, in its order: as its shard reported it, or incomplete."""
    n, plan_cells = ref["shard"]["n"], ref["shard"]["plan_cells"]
    reported: dict[str, dict] = {}
    for k, (d, run) in sorted(by_k.items()):
        mine = set(run["shard"]["cells"])
        for c in run["cells"]:
            if c["id"] not in mine:
                problems.append(f"{d}: reports cell {c['id']}, which is not in shard {k}/{n}: left out")
            else:
                reported[c["id"]] = c
    cells = []
    for pc in plan_cells:
        c = reported.get(pc["id"])
        if c is None:
            k = pc["shard"]
            why = (f"shard {k}/{n} missing" if k not in by_k else
                   f"shard {k}/{n} ({by_k[k][0]}) did not report this cell")
            if k in by_k:
                problems.append(f"{by_k[k][0]}: shard {k}/{n} did not report cell {pc['id']}")
            c = _missing_cell(pc, why, _shard_command(ref.get("command", ""), k, n))
        cells.append(c)
    return cells


def _merged_run(plan_id: str, ref: dict, by_k: dict[int, tuple[Path, dict]], cells: list[dict],
                problems: list[str], argv: list[str]) -> dict:
    """The merged results.json (its exit_code is set by the caller)."""
    runs = [run for _k, (_d, run) in sorted(by_k.items())]
    seeds = sorted({str(r.get("seed")) for r in runs if r.get("seed") is not None})
    commits = {r["host"].get("loopqual_commit") for r in runs} - {None, "unknown"}
    if len(commits) > 1:
        problems.append(f"the shards ran different loopqual commits: {', '.join(sorted(commits))}")
    return {
        "started": min((r["started"] for r in runs), default=dt.datetime.now(dt.UTC).isoformat(
            timespec="seconds")),
        "wall_s": max((r["wall_s"] for r in runs), default=0.0),
        "boots": sum(r["boots"] for r in runs),
        "accel": {k: v for r in runs for k, v in r["accel"].items()},
        "boot_seconds": [s_ for r in runs for s_ in r.get("boot_seconds", [])],
        "lanes": [{**ln, "shard": k, "work_dir": str(d / ln.get("work_dir", ""))}
                  for k, (d, r) in sorted(by_k.items()) for ln in r.get("lanes", [])],
        "exit_code": None,
        "command": shlex.join(["loopqual", *argv]),
        "seed": seeds[0] if len(seeds) == 1 else ",".join(seeds),
        "host": {"machine": platform.node(), "python": platform.python_version(),
                 "loopqual_commit": git_commit()},
        "selection": ref.get("selection", {}),
        "expected_failures": ref.get("expected_failures", []),
        "merge": {"plan_id": plan_id, "n": ref["shard"]["n"], "problems": problems,
                  "shards": [{"k": k, "dir": str(d), "command": r["command"], "wall_s": r["wall_s"],
                              "boots": r["boots"], "exit_code": r["exit_code"],
                              "expected_s": r["shard"].get("expected_s"),
                              "loopqual_commit": r["host"].get("loopqual_commit")}
                             for k, (d, r) in sorted(by_k.items())]},
        "cells": cells,
    }
