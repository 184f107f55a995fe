"""Where a run's time went: boots, each suite's and compliance profile's total, the slowest
scenarios, and what each lane spent outside its cells (guest start-up, reboots, waiting).
Computed from what results.json already holds (each cell's timed steps and scenarios, each
lane's wall time and boots), so a merged or re-rendered run gets the same profile."""

from __future__ import annotations

from collections import defaultdict

SLOWEST = 10


def time_profile(run: dict) -> dict:
    cells = run.get("cells", [])
    by_step: dict[str, float] = defaultdict(float)
    for c in cells:
        for name, seconds in c.get("steps") or []:
            by_step[name] += seconds or 0.0
    scenarios = sorted(
        ({"cell": c["id"], "id": sc["id"], "duration_s": sc.get("duration_s") or 0.0}
         for c in cells for sc in c.get("scenarios", [])),
        key=lambda s: -s["duration_s"])[:SLOWEST]
    durations = {c["id"]: c.get("duration_s") or 0.0 for c in cells}
    lanes = []
    for i, ln in enumerate(run.get("lanes", []), 1):
        boot_s = sum(ln.get("boot_seconds") or [])
        cells_s = sum(durations.get(cid, 0.0) for cid in ln.get("cells", []))
        wall = ln.get("wall_s") or 0.0
        lanes.append({"lane": i, "kernel": ln.get("kernel"), "shard": ln.get("shard"),
                      "wall_s": round(wall, 1), "boots": ln.get("boots"), "boot_s": round(boot_s, 1),
                      "cells_s": round(cells_s, 1),
                      # the guest runner's start (imports), reboots, the host waiting on it
                      "other_s": round(max(0.0, wall - boot_s - cells_s), 1)})
    return {
        "wall_s": run.get("wall_s"),
        "boots": {"count": run.get("boots"), "total_s": round(sum(run.get("boot_seconds") or []), 1),
                  "seconds": list(run.get("boot_seconds") or [])},
        "steps": {k: round(v, 1) for k, v in sorted(by_step.items(), key=lambda kv: -kv[1])},
        "slowest_scenarios": scenarios,
        "lanes": lanes,
        "other_s": round(sum(ln["other_s"] for ln in lanes), 1),
    }


def step_kind(step: str) -> str:
    """What a step's colour stands for: loading (insmod, controls), a suite, a compliance
    profile (all one colour), the health checks and rmmod."""
    if step in ("insmod", "controls"):
        return "load"
    if step == "rmmod":
        return "health + rmmod"
    if step.startswith("compliance ") or step == "suite compliance":
        return "v4l2-compliance"
    return step.removeprefix("suite ")


def bars(run: dict) -> tuple[list[dict], list[str]]:
    """For the report: per lane, a bar per cell split by step, widths in percent of the
    lane's longest cell; and the step kinds in order of first appearance (the legend: a
    part's colour is its kind's place in it)."""
    cells = {c["id"]: c for c in run.get("cells", [])}
    kinds: list[str] = []
    out = []
    for i, ln in enumerate(run.get("lanes", []), 1):
        mine = [cells[cid] for cid in ln.get("cells", []) if cid in cells]
        longest = max((c.get("duration_s") or 0.0 for c in mine), default=0.0) or 1.0
        rows = []
        for c in mine:
            parts = []
            for name, sec in c.get("steps") or []:
                kind = step_kind(name)
                if kind not in kinds:
                    kinds.append(kind)
                parts.append({"step": name, "seconds": round(sec or 0.0, 1), "colour": kinds.index(kind),
                              "pct": round(100.0 * (sec or 0.0) / longest, 2)})
            rows.append({"cell": c["id"], "label": f"{c['module']} {c['param_set']}",
                         "duration_s": c.get("duration_s"), "parts": parts})
        out.append({"lane": i, "kernel": ln.get("kernel"), "wall_s": ln.get("wall_s"), "rows": rows})
    return out, kinds
