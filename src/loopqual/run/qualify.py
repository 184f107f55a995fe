"""The pipeline: source -> build -> boot -> load -> run -> health -> results -> report."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from loopqual import __version__
from loopqual.boot import guestroot, vm
from loopqual.common.errors import LoopqualError
from loopqual.common.paths import REPO
from loopqual.config import data
from loopqual.debian import apt
from loopqual.kernel import kernels, toolroots
from loopqual.module import build as buildmod
from loopqual.module import sources
from loopqual.output import report
from loopqual.output.timeprofile import time_profile
from loopqual.verdict import results


@dataclass
class Selection:
    kernels: list[data.Kernel]
    modules: list[data.Source]
    param_sets: list[data.ParamSet]
    suites: list[data.Suite]
    profiles: dict[str, data.Profile]
    k: str | None = None
    expected: list[data.ExpectedFailure] = field(default_factory=list)
    # suite name -> the only kernels it runs on (`--suite NAME:KERNEL[,KERNEL]`); absent: all
    suite_kernels: dict[str, list[str]] = field(default_factory=dict)

    def suites_for(self, kernel: str | None) -> list[data.Suite]:
        """The suites a cell of this kernel runs (every selected suite when kernel is None)."""
        return [s for s in self.suites
                if kernel is None or kernel in self.suite_kernels.get(s.name, [kernel])]

    def selection_record(self) -> dict:
        rec = {"kernels": [k.arg for k in self.kernels], "modules": [m.name for m in self.modules],
               "param_sets": [p.name for p in self.param_sets],
               "suites": [s.name for s in self.suites], "k": self.k}
        if self.suite_kernels:
            rec["suite_kernels"] = {n: list(ks) for n, ks in self.suite_kernels.items()}
        return rec


def select(kernel_names: list[str], module_names: list[str], param_names: list[str],
           suite_names: list[str], k: str | None) -> Selection:
    """Resolve every name before anything is built or booted: bad input fails here."""
    all_kernels = data.load_kernels()
    _mirror, all_sources = data.load_sources()
    all_params = data.load_params()
    all_suites, profiles = data.load_suites()
    expected = data.load_expected_failures()
    data.check_splats()  # the guest reads kernel/splats.toml: a mistake in it stops here
    ks = [data.resolve_kernel(n, all_kernels) for n in kernel_names] or \
        [k_ for k_ in all_kernels.values() if k_.default]
    ms = [data.resolve_source(n, all_sources) for n in module_names] or \
        data.default_modules(all_sources)
    ps = [data.resolve_params(n, all_params) for n in param_names] or \
        [p for p in all_params.values() if p.default]
    ss, restricted, everywhere = [], {}, set()
    for arg in suite_names:
        n, sep, on = arg.partition(":")
        if n not in all_suites:
            raise data.unknown_name("suite", n, list(all_suites), data.SUITES_FILE)
        ss.append(all_suites[n])
        if not sep:
            everywhere.add(n)
            continue
        names = [x.strip() for x in on.split(",") if x.strip()]
        if not names:
            raise data.DataError(f"--suite {arg}: name the kernels after ':' (SUITE:KERNEL[,KERNEL])")
        for kn in names:
            kname = data.resolve_kernel(kn, all_kernels).name
            if kname not in {k_.name for k_ in ks}:
                raise data.DataError(
                    f"--suite {arg}: kernel '{kn}' is not in this run (its kernels: "
                    f"{', '.join(k_.name for k_ in ks)}); add --kernel {kn} or drop it")
            restricted.setdefault(n, []).append(kname)
    # a suite also given without kernels runs everywhere
    suite_kernels = {n: list(dict.fromkeys(v)) for n, v in restricted.items() if n not in everywhere}
    ss = ss or [s for s in all_suites.values() if s.default]
    for s in all_suites.values():
        for name in s.param_sets:
            if name not in all_params:
                raise data.DataError(f"{data.SUITES_FILE}: [suite.{s.name}] param_sets names "
                                     f"unknown set '{name}'")
    return Selection(_dedupe(ks), _dedupe(ms), _dedupe(ps), _dedupe(ss), profiles, k, expected,
                     suite_kernels)


def _dedupe(items):
    seen, out = set(), []
    for it in items:
        if it.name not in seen:
            seen.add(it.name)
            out.append(it)
    return out


def reproduce_line(kernel: str, module: str, param_set: data.ParamSet, suites: list[data.Suite],
                   k: str | None, env: dict[str, str] | None = None) -> str:
    """The command that runs this one cell again, with the LOOPQUAL_* variables that shaped
    it (the seed above all) as a prefix: `LOOPQUAL_SEED=123 loopqual qualify ...`."""
    prefix = env_prefix(env or {})
    ps = param_set.name if "=" not in param_set.name and "+" not in param_set.name else \
        ",".join(f"{a}={b}" for a, b in param_set.all_params.items())
    parts = ["loopqual", "qualify", "--kernel", kernel, "--module", module, "--params", ps]
    for s in suites:
        parts += ["--suite", s.name]
    if k:
        parts += ["-k", k]
    return shlex.join([*prefix, *parts])


class Progress:
    """Live progress on the host: cells done / total, current cell and step, elapsed.
    Safe to call from several lanes (threads) at once."""

    def __init__(self, total: int, labels: dict[str, str]):
        self.total, self.labels, self.done = total, labels, 0
        self.t0 = time.monotonic()
        self.lock = threading.Lock()

    def elapsed(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"{s // 60:02d}:{s % 60:02d}"

    def say(self, text: str) -> None:
        with self.lock:
            print(f"[{self.done}/{self.total} {self.elapsed()}] {text}", file=sys.stderr, flush=True)

    def with_tag(self, tag: str):
        """An event handler for one lane: its lines start with the lane's tag."""
        return lambda ev: self(ev, tag)

    def __call__(self, ev: dict, tag: str = "") -> None:
        name = ev.get("event")
        cell = self.labels.get(ev.get("cell", ""), ev.get("cell", ""))
        if name == "boot":
            self.say(f"{tag}guest up ({ev.get('release')}), {ev.get('cells')} cell(s) to run")
        elif name == "ready":
            self.say(f"{tag}guest runner ready (imports {ev.get('import_s')} s)")
        elif name == "cell-start":
            self.say(f"{tag}{cell}: start")
        elif name == "step":
            self.say(f"{tag}{cell}: {ev.get('step')}")
        elif name == "cell-end":
            with self.lock:
                self.done += 1
            self.say(f"{tag}{cell}: {cell_outcome(ev)}"
                     + (f" in {ev['duration_s']} s" if ev.get("duration_s") else ""))
        elif name == "boot-retry":
            self.say(f"{tag}the guest settled no cell ({ev.get('reason')}): booting once more")
        elif name == "reboot-needed":
            self.say(f"{tag}{cell}: module would not unload (rmmod {ev.get('rmmod')}): rebooting")


def cell_outcome(ev: dict) -> str:
    """What a cell-end event says really happened: "done" only for a cell that ran to the
    end with no incomplete suite and no error (the guest's complete=True alone means the
    runner reached the end of the cell, even when a suite inside it timed out)."""
    incomplete, errors = ev.get("incomplete") or [], ev.get("errors") or []

    def first(items: list[str]) -> str:
        line = str(items[0]).strip().splitlines()[0] if str(items[0]).strip() else "?"
        return line[:120] + (f"; +{len(items) - 1} more" if len(items) > 1 else "")

    if incomplete:
        return f"INCOMPLETE ({first(incomplete)})"
    if errors:
        return f"ERROR ({first(errors)})"
    if not ev.get("complete"):
        return "INCOMPLETE"
    return "done"


CELL_OVERHEAD_S = 5  # insmod, controls, rmmod and the health checks of one cell
BOOT_S = 30  # one guest boot under TCG here (20-45 s): a shard pays it once per kernel it runs


def cell_weight(cell: dict, sel: Selection, kernel: data.Kernel | None = None) -> float:
    """Expected seconds of one planned cell (suites' and profiles' typical_s, times the
    kernel's time_factor): for balancing."""
    return _typical_cell_s(cell, sel) * (kernel.time_factor if kernel else 1.0)


def _typical_cell_s(cell: dict, sel: Selection) -> float:
    total = CELL_OVERHEAD_S
    suites = {s.name: s for s in sel.suites}
    for entry in cell["suites"]:
        if entry.get("not_applicable"):
            continue
        if entry["kind"] == "compliance":
            total += sum(sel.profiles[p["name"]].typical_s for p in entry["profiles"]
                         if not p.get("not_applicable"))
        else:
            total += suites[entry["name"]].typical_s
    return total


@dataclass
class Lane:
    """One chain of guest boots of one kernel, running its cells in order."""
    kernel: str
    cells: list[dict]
    work_dir: Path
    weight: float = 0.0
    boots: int = 0
    wall_s: float = 0.0


def balance(cells: list[dict], n: int, weight, group=None, group_cost: float = 0.0) -> list[list[dict]]:
    """Deal cells into n buckets of about equal expected time, deterministically (LPT): the
    heaviest first (plan order breaks ties), each to the bucket where it would end soonest
    (the lowest index breaks ties). group(cell), group_cost: a bucket pays group_cost once for
    each group it runs (a guest boot per kernel). Cells keep their planned order in a bucket.
    The one balancing of loopqual: lanes (--jobs) and shards (plan, --shard) alike."""
    buckets: list[list[dict]] = [[] for _ in range(n)]
    loads = [0.0] * n
    groups: list[set] = [set() for _ in range(n)]
    order = {c["id"]: i for i, c in enumerate(cells)}
    for c in sorted(cells, key=lambda c: (-weight(c), order[c["id"]])):
        g = group(c) if group else None

        def ends(i: int, c=c, g=g) -> float:
            return loads[i] + weight(c) + (group_cost if g is not None and g not in groups[i] else 0.0)

        i = min(range(n), key=lambda i: (ends(i), i))
        loads[i] = ends(i)
        buckets[i].append(c)
        if g is not None:
            groups[i].add(g)
    return [sorted(b, key=lambda c: order[c["id"]]) for b in buckets]


def lanes_wall(lanes: list[tuple[str, list[dict]]], jobs: int, weight) -> float:
    """The expected wall time of lanes run `jobs` at a time in the given order, each taken by
    the first guest slot that frees up (as run_lanes runs them), each paying a boot."""
    slots = [0.0] * max(1, jobs)
    for _k, cells in lanes:
        i = slots.index(min(slots))
        slots[i] += BOOT_S + sum(weight(c) for c in cells)
    return max(slots)


def split_lanes(per_kernel: list[tuple[str, list[dict]]], jobs: int, weight,
                heavy=None, beside_s: float = 0.0) -> list[tuple[str, list[dict]]]:
    """Spread each kernel's cells over lanes (guests) so that `jobs` guests can run at once.
    A kernel gets lanes in proportion to its share of the work (at least one, at most one per
    cell); then, while it shortens the expected wall time (lanes_wall, a boot per lane), the
    kernel whose extra lane helps most gets one more (three kernels on two guests: one of them
    in two lanes, instead of a third lane that runs alone at the end). Its cells are dealt over
    its lanes by balance(); the lanes run heaviest first. jobs=1: one lane per kernel, as
    planned. heavy(cell): cells that start the desktop programs, which stagger() keeps apart
    in the lanes that start together, and after the first beside_s seconds (another guest
    runs beside the run for that long)."""
    if heavy is not None:
        return stagger(split_lanes(per_kernel, jobs, weight), jobs, weight, heavy, beside_s)
    if jobs <= 1:
        return [(kname, balance(cells, 1, weight)[0]) for kname, cells in per_kernel]
    total = sum(weight(c) for _k, cells in per_kernel for c in cells) or 1.0
    counts = {kname: max(1, min(len(cells), round(jobs * sum(weight(c) for c in cells) / total)))
              for kname, cells in per_kernel}

    def lanes_for(counts: dict[str, int]) -> list[tuple[str, list[dict]]]:
        lanes = [(kname, b) for kname, cells in per_kernel for b in balance(cells, counts[kname], weight)]
        # heaviest first, plan order breaking ties: the guest slots take them in this order
        return [ln for _i, ln in sorted(enumerate(lanes),
                                        key=lambda il: (-sum(weight(c) for c in il[1][1]), il[0]))]

    lanes = lanes_for(counts)
    wall = lanes_wall(lanes, jobs, weight)
    while True:
        better = None
        for kname, cells in per_kernel:
            if counts[kname] >= len(cells):
                continue
            trial = lanes_for({**counts, kname: counts[kname] + 1})
            t_wall = lanes_wall(trial, jobs, weight)
            if t_wall < wall - 1.0 and (better is None or t_wall < better[0]):
                better = (t_wall, kname, trial)
        if better is None:
            return lanes
        wall, kname, lanes = better
        counts[kname] += 1


def stagger(lanes: list[tuple[str, list[dict]]], jobs: int, weight, heavy,
            beside_s: float = 0.0) -> list[tuple[str, list[dict]]]:
    """The first `jobs` lanes start together: in the n of them that hold heavy cells (the
    browsers and OBS, CPU-bound under TCG), the heavy cells of the k-th begin about k/n into
    its other work, so that they do not all start their programs at once. beside_s: another
    guest runs beside the first beside_s seconds (make test's side lane), and a guest more
    on the cores starved the real programs: the heavy cells begin after it where the lane
    has that much other work, the k-th about k/n into what follows. Other cells keep their
    order; lanes that start later are left as they are."""
    holding = [i for i, (_k, cells) in enumerate(lanes[:max(1, jobs)])
               if any(heavy(c) for c in cells)]
    if len(holding) < (1 if beside_s > 0 else 2):  # nothing heavy runs beside them
        return lanes
    out = list(lanes)
    for rank, i in enumerate(holding):
        kname, cells = lanes[i]
        heavies = [c for c in cells if heavy(c)]
        rest = [c for c in cells if not heavy(c)]
        rest_s = sum(weight(c) for c in rest)
        target = beside_s + max(0.0, rest_s - beside_s) * rank / len(holding)
        pos, before = 0, 0.0
        while pos < len(rest) and before < target:
            before += weight(rest[pos])
            pos += 1
        out[i] = (kname, rest[:pos] + heavies + rest[pos:])
    return out


def cell_id(index: int, kernel: str, module: str, param_set: str) -> str:
    """A cell's id, from its place in the selection and the names alone (never the kernel
    release): the same selection gives the same ids on every machine."""
    return f"{index:03d}-" + re.sub(r"[^A-Za-z0-9._-]+", "_",
                                    f"{kernel}-{Path(module).name}-{param_set}")[:80]


def matrix(sel: Selection) -> list[tuple[str, data.Kernel, data.Source, data.ParamSet]]:
    """Every cell of the selection in plan order (kernel, module source, parameter set)."""
    out: list[tuple[str, data.Kernel, data.Source, data.ParamSet]] = []
    for kernel in sel.kernels:
        for m in sel.modules:
            for ps in sel.param_sets:
                out.append((cell_id(len(out) + 1, kernel.name, m.name, ps.name), kernel, m, ps))
    return out


@dataclass
class ShardPlan:
    """The selection's cells split into n shards (loopqual plan; qualify --shard K/N)."""
    plan_id: str
    n: int
    cells: list[dict]  # every cell: id, kernel, module, param_set, gated, shard, expected_s
    shards: list[list[str]]  # cell ids of shard 1..n, in plan order
    expected_s: list[int]  # per shard: the cells' typical times and a boot per kernel

    def block(self, k: int) -> dict:
        """What a shard's results.json says about the plan it ran."""
        return {"plan_id": self.plan_id, "k": k, "n": self.n, "cells": list(self.shards[k - 1]),
                "expected_s": self.expected_s[k - 1],
                "plan_cells": [{key: c[key] for key in ("id", "kernel", "module", "param_set",
                                                        "gated", "shard")} for c in self.cells]}


PLAN_DATA_FILES = ("kernel/kernels.toml", "kernel/sources.toml", "kernel/expected-failures.toml",
                   "kernel/splats.toml", "scenarios/params.toml", "scenarios/suites.toml")


def _data_digest() -> str:
    """The data files that shape a plan and its verdicts (and the patch series), hashed."""
    h = hashlib.sha256()
    files = [REPO / f for f in PLAN_DATA_FILES] + sorted((REPO / "kernel" / "patches").glob("*"))
    for f in files:
        h.update(str(f.relative_to(REPO)).encode() + b"\0")
        h.update(f.read_bytes() if f.is_file() else b"(missing)")
    return h.hexdigest()


def plan_shards(sel: Selection, n: int) -> ShardPlan:
    """Split the selection's cells into n shards balanced by the suites' typical times.
    Reads names and data files only: nothing is built, booted or installed."""
    cells = []
    for cid, kernel, m, ps in matrix(sel):
        c = {"id": cid, "kernel": kernel.name, "module": m.name, "param_set": ps.name,
             "gated": cell_gated(m, ps, sel, kernel.name),
             "suites": _cell_suites(ps, sel, {}, kernel=kernel.name)}
        c["expected_s"] = cell_weight(c, sel, kernel)
        cells.append(c)
    if not 1 <= n <= len(cells):
        raise LoopqualError(f"{n} shard(s): the selection has {len(cells)} cell(s); give from 1 "
                            f"to {len(cells)} shards")
    weight = lambda c: c["expected_s"]  # noqa: E731

    def expected(buckets):
        return [round(sum(c["expected_s"] for c in b) + BOOT_S * len({c["kernel"] for c in b}))
                for b in buckets]

    # Two deals, the better kept (the kernel-wise one on a tie): every cell over every shard,
    # or each kernel over shards of its own (one boot and one kernel to install per shard).
    mixed = balance(cells, n, weight, group=lambda c: c["kernel"], group_cost=BOOT_S)
    own = _shards_per_kernel(cells, n, weight)
    buckets = own if own and max(expected(own)) <= max(expected(mixed)) else mixed
    for k, b in enumerate(buckets, 1):
        for c in b:
            c["shard"] = k
    for c in cells:
        del c["suites"]
    identity = {"loopqual": __version__, "n": n, "data": _data_digest(),
                "selection": {"kernels": [k.arg for k in sel.kernels],
                              # a local tree by its directory's name: checkouts differ
                              "modules": [Path(m.name).name if m.kind == "local" else m.name
                                          for m in sel.modules],
                              "param_sets": [[p.name, p.all_params] for p in sel.param_sets],
                              "suites": [s.name for s in sel.suites], "k": sel.k},
                "cells": [[c["id"], c["shard"]] for c in cells]}
    if sel.suite_kernels:
        identity["selection"]["suite_kernels"] = sel.suite_kernels
    plan_id = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return ShardPlan(plan_id, n, cells, [[c["id"] for c in b] for b in buckets], expected(buckets))


def _shards_per_kernel(cells: list[dict], n: int, weight) -> list[list[dict]] | None:
    """Each kernel's cells over shards of their own: a kernel gets one shard, and each further
    shard goes to the kernel with the most expected seconds per shard; balance() deals its
    cells. None when there are fewer shards than kernels."""
    per_kernel: dict[str, list[dict]] = {}
    for c in cells:
        per_kernel.setdefault(c["kernel"], []).append(c)
    if n < len(per_kernel):
        return None
    names = list(per_kernel)
    load = {k: sum(weight(c) for c in cs) for k, cs in per_kernel.items()}
    alloc = dict.fromkeys(names, 1)
    for _ in range(n - len(names)):
        k = max((k for k in names if alloc[k] < len(per_kernel[k])),
                key=lambda k: (load[k] / alloc[k], -names.index(k)))
        alloc[k] += 1
    return [b for k in names for b in balance(per_kernel[k], alloc[k], weight)]


@dataclass
class Plan:
    """What will run: every cell's metadata (built or not), and per kernel the cells to boot."""
    metas: list[dict]
    to_boot: list[tuple[data.Kernel, kernels.InstalledKernel, list[dict]]]
    tools: dict = field(default_factory=dict)  # name -> toolroots.PreparedTool
    guest_root: guestroot.GuestRoot | None = None


def qualify(sel: Selection, out: Path, argv: list[str], jobs: int = 1,
            shard: tuple[ShardPlan, int] | None = None, beside_s: float = 0.0) -> int:
    """plan (build every module) -> lanes -> boot and run them -> judge -> write results.
    shard: (the plan, K): run only shard K's cells, and say so in results.json. beside_s:
    another guest runs beside the first so many seconds (the lanes' heavy cells come after)."""
    t0 = time.monotonic()
    started = dt.datetime.now(dt.UTC)
    out.mkdir(parents=True, exist_ok=True)
    seed = run_seed()
    env = run_env(seed)
    plan = plan_cells(sel, env, only=set(shard[0].shards[shard[1] - 1]) if shard else None)
    lanes = make_lanes(plan, sel, out, jobs, beside_s)
    accel = {k.name: vm.detect_accel(ik.vmlinuz) for k, ik, _cs in plan.to_boot}
    with stop_on_signals():
        runs = run_lanes(lanes, plan, accel, jobs)
    interrupted = vm.STOP.reason if vm.STOP.is_set() else ""
    cells = judge(plan, lanes, runs, sel)
    code = 2 if interrupted else results.exit_code(cells)
    run = {
        "started": started.isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - t0, 1),
        "boots": sum(gr.boots for gr in runs),
        "accel": accel,
        "guest_cpu": {k: vm.guest_cpu(a) for k, a in accel.items()},
        "boot_seconds": [s_ for gr in runs for s_ in gr.boot_seconds],
        "guest_root": {**(plan.guest_root.record() if plan.guest_root else {}),
                       "per_boot": [fs for gr in runs for fs in gr.root_fs]},
        "jobs": jobs,
        "lanes": [{"kernel": ln.kernel, "work_dir": str(ln.work_dir.relative_to(out)),
                   "cells": [c["id"] for c in ln.cells], "expected_s": round(ln.weight),
                   "wall_s": ln.wall_s, "boots": ln.boots, "boot_seconds": gr.boot_seconds,
                   "root_fs": gr.root_fs}
                  for ln, gr in zip(lanes, runs, strict=True)],
        "exit_code": code,
        "command": shlex.join([*env_prefix(env), "loopqual", *argv]),
        "seed": seed,
        "host": {"machine": platform.node(), "python": platform.python_version(),
                 "loopqual_commit": git_commit()},
        "selection": sel.selection_record(),
        "expected_failures": [e.__dict__ for e in sel.expected],
        "tools": {name: {"suite": t.suite, "version": t.version, "root": str(t.root),
                         "made_s": t.made_s} for name, t in plan.tools.items()},
        "cells": cells,
    }
    if shard:
        run["shard"] = shard[0].block(shard[1])
    if interrupted:
        run["interrupted"] = interrupted
    write_results(out, run)
    if interrupted:
        print(f"loopqual: {interrupted}: results of what finished are in {out}", file=sys.stderr)
    return code


def run_seed() -> str:
    """The run's LOOPQUAL_SEED: the caller's, else one drawn now. Every cell's scenarios get
    it and every reproduce line carries it, so a random walk can be replayed."""
    seed = os.environ.get("LOOPQUAL_SEED", "").strip()
    return seed or str(random.SystemRandom().randrange(1, 1 << 31))


def run_env(seed: str) -> dict[str, str]:
    """The LOOPQUAL_* variables that shape every cell of this run (the seed among them)."""
    return {**passthrough_env(), "LOOPQUAL_SEED": seed}


def env_prefix(env: dict[str, str]) -> list[str]:
    return [f"{name}={value}" for name, value in sorted(env.items())]


def plan_cells(sel: Selection, env: dict[str, str], only: set[str] | None = None) -> Plan:
    """Build every module for every kernel (cached) and describe each cell; the cells whose
    build succeeded are planned for a guest. env: run_env(), for the guest and the
    reproduce lines alike. only: the ids of the cells to plan (a shard's); a kernel or module
    source none of them needs is neither installed nor built. Ids are the whole selection's."""
    mirror, all_sources = data.load_sources()
    plan = Plan([], [])
    # Roots of the tools the suites name (a newer v4l2-compliance), made before any guest boots.
    plan.tools = toolroots.prepare_for(sel.suites, mirror, say=lambda m: print(m, file=sys.stderr))
    plan.guest_root = guestroot.prepare(say=lambda m: print(m, file=sys.stderr))
    for kernel in sel.kernels:
        mine = [(cid, m, ps) for cid, k, m, ps in matrix(sel)
                if k.name == kernel.name and (only is None or cid in only)]
        if not mine:
            continue
        ik = kernels.resolve(kernel)
        builds = {m.name: _build_module(kernel, ik, m, all_sources, mirror)
                  for m in _dedupe([m for _cid, m, _ps in mine])}
        kmods = _build_kmods(kernel, ik, sel, [ps for _cid, _m, ps in mine])
        plan_cells_ = []
        for cid, m, ps in mine:
            b, version, patches = builds[m.name]
            meta = {
                "id": cid, "kernel": kernel.name, "kernel_release": ik.release,
                "kernel_version": ik.version, "kernel_suite": ik.suite, "compiler": ik.compiler,
                "module": m.name, "module_version": version, "params": ps.all_params,
                "module_params": ps.module, "controls": ps.controls, "param_set": ps.name,
                "gated": cell_gated(m, ps, sel, kernel.name), "patches": [p.name for p in patches],
                "build": {"status": b.status, "log_tail": b.log_tail,
                          "warnings": b.warnings, "cached": b.cached, "key": b.key},
                # an archive kernel as NAME@VERSION: the exact kernel that ran, even once
                # its suite has moved on
                "reproduce": reproduce_line(ik.arg or kernel.name, m.name, ps,
                                            sel.suites_for(kernel.name), sel.k, env),
            }
            plan.metas.append(meta)
            if b.status == "ok":
                plan_cells_.append(_plan_cell(meta, b.ko, ps, sel, env, plan.tools, kmods))
        if plan_cells_:
            plan.to_boot.append((kernel, ik, plan_cells_))
    return plan


def _build_module(kernel: data.Kernel, ik: kernels.InstalledKernel, m: data.Source,
                  all_sources, mirror):
    try:
        tree, patches = sources.prepare(m, all_sources, mirror)
    except (sources.SourceError, apt.AptError) as exc:
        if m.gated:
            raise  # a patch that does not apply is not a result to tabulate: stop
        raise LoopqualError(f"module source {m.name}: {exc}") from exc
    b = buildmod.build(m.name, tree, patches, ik)
    print(f"build {kernel.name} {m.name}: {b.status}"
          + (" (cached)" if b.cached else f" in {b.duration_s} s")
          + (f", {len(b.warnings)} warning(s)" if b.warnings else ""), file=sys.stderr)
    return b, sources.module_version(tree), patches


def make_lanes(plan: Plan, sel: Selection, out: Path, jobs: int, beside_s: float = 0.0
               ) -> list[Lane]:
    """Spread the planned cells over lanes (one guest chain each) and give each a fresh
    work directory (an earlier run's files must never stand in for this run's). beside_s:
    another guest runs beside the first so many seconds (split_lanes)."""
    weights = {c["id"]: cell_weight(c, sel, k) for k, _ik, cs in plan.to_boot for c in cs}
    heavy_suites = {s.name for s in sel.suites if s.heavy}
    split = split_lanes([(k.name, cs) for k, _ik, cs in plan.to_boot], jobs,
                        lambda c: weights[c["id"]],
                        heavy=lambda c: any(e["name"] in heavy_suites and not e.get("not_applicable")
                                            for e in c["suites"]), beside_s=beside_s)
    per_kernel = {k.name: sum(1 for kn, _ in split if kn == k.name) for k, _ik, _cs in plan.to_boot}
    lanes, seen = [], {}
    for kname, cs in split:
        base = out / "guest" / kname
        if kname not in seen and base.exists():
            shutil.rmtree(base)
        seen[kname] = seen.get(kname, 0) + 1
        wd = base if per_kernel[kname] == 1 else base / f"lane{seen[kname]}"
        wd.mkdir(parents=True)
        lanes.append(Lane(kname, cs, wd, sum(weights[c["id"]] for c in cs)))
    return lanes


def run_lanes(lanes: list[Lane], plan: Plan, accel: dict[str, str], jobs: int) -> list[vm.GuestRun]:
    """Boot every lane's guests (up to `jobs` lanes at once) until each cell has a result."""
    info = {k.name: ik for k, ik, _cs in plan.to_boot}
    boot_limit = {k.name: k.boot_timeout_s for k, _ik, _cs in plan.to_boot}
    udev = {k.name: k.guest_udev for k, _ik, _cs in plan.to_boot}
    append = {k.name: k.guest_append for k, _ik, _cs in plan.to_boot}
    labels = {c["id"]: f"{ln.kernel} {c['module']} {c['param_set']}" for ln in lanes for c in ln.cells}
    prog = Progress(len(labels), labels)
    if len(lanes) > 1 and jobs > 1:
        prog.say(f"{len(labels)} cell(s) in {len(lanes)} lane(s), {min(jobs, len(lanes))} guest(s) at "
                 f"a time: " + "; ".join(f"lane {i + 1}: {ln.kernel}, {len(ln.cells)} cell(s), "
                                         f"~{ln.weight:.0f} s" for i, ln in enumerate(lanes)))

    def run_lane(i: int, ln: Lane) -> vm.GuestRun:
        ik = info[ln.kernel]
        tag = f"lane {i + 1} " if len(lanes) > 1 else ""
        if not vm.STOP.is_set():
            prog.say(f"{tag}booting {ik.release} ({accel[ln.kernel].upper()}) for "
                     f"{len(ln.cells)} cell(s)")
        lt0 = time.monotonic()
        guest_plan = {"kernel": ln.kernel, "release": ik.release, "repo": str(REPO), "cells": ln.cells}
        gr = vm.run_plan(guest_plan, ik.vmlinuz, ln.work_dir, prog.with_tag(tag), accel[ln.kernel],
                         boot_timeout_s=boot_limit[ln.kernel], udev=udev[ln.kernel],
                         append=append[ln.kernel])
        ln.boots, ln.wall_s = gr.boots, round(time.monotonic() - lt0, 1)
        (ln.work_dir / "console.log").write_text("\n".join(gr.console) + "\n")
        return gr

    if jobs > 1 and len(lanes) > 1:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(lambda a: run_lane(*a), enumerate(lanes)))
    return [run_lane(i, ln) for i, ln in enumerate(lanes)]


def judge(plan: Plan, lanes: list[Lane], runs: list[vm.GuestRun], sel: Selection) -> list[dict]:
    """Every planned cell's verdict, from its result file or the host's incomplete reason."""
    guest_results, host_incomplete = {}, {}
    for ln, gr in zip(lanes, runs, strict=True):
        host_incomplete.update(gr.host_incomplete)
        for c in ln.cells:
            f = ln.work_dir / "cells" / f"{c['id']}.json"
            if f.exists():
                guest_results[c["id"]] = json.loads(f.read_text())
    return [results.evaluate_cell(meta, guest_results.get(meta["id"]), host_incomplete.get(meta["id"]),
                                  sel.expected) for meta in plan.metas]


def write_outputs(out: Path, run: dict, copied: tuple[str, ...] = ()) -> None:
    """results.json, junit.xml and report.html, all three even when results.json does not fit
    its model (that error is raised once the others are written)."""
    misfit = None
    try:
        results.write_json(out / "results.json", run, copied)
    except results.ResultsFileError as exc:
        misfit = exc
    results.write_junit(out / "junit.xml", run)
    report.write_html(out / "report.html", run)
    if misfit:
        raise misfit


def write_results(out: Path, run: dict) -> None:
    code = run["exit_code"]
    run["profile"] = time_profile(run)  # where the time went, from the cells and lanes
    write_outputs(out, run)
    print(report.terminal_table(run))
    print(f"\nresults: {out}/results.json  junit: {out}/junit.xml  report: {out}/report.html")
    print(f"wall {run['wall_s']} s, {run['boots']} boot(s); exit {code} "
          f"({ {0: 'all gated results passed', 1: 'a gated result failed', 2: 'incomplete'}[code] })")


@contextlib.contextmanager
def stop_on_signals(signums=(signal.SIGINT, signal.SIGTERM)):
    """While guests run, SIGINT (Ctrl-C) and SIGTERM (a cancelled CI job) stop the run instead
    of killing loopqual: every live guest (vng, virtme-run, QEMU: their whole session) is
    killed at once, no new guest starts, and the lanes settle their remaining cells as
    incomplete ("interrupted by SIGTERM"), so results are still written for what finished."""
    vm.STOP.reset()

    def handler(signum, _frame):
        vm.STOP.request(f"interrupted by {signal.Signals(signum).name}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def cell_gated(m: data.Source, ps: data.ParamSet, sel: Selection, kernel: str) -> bool:
    """A cell of a gated source is gated unless every suite it runs judges something other
    than the module (the debug kernel's detectors fire on purpose there)."""
    return m.gated and any(s.judges_module and not s.applies_to(ps)
                           for s in sel.suites_for(kernel))


def _build_kmods(kernel: data.Kernel, ik: kernels.InstalledKernel, sel: Selection,
                 param_sets: list[data.ParamSet]) -> dict[str, str]:
    """The test modules (a suite's kmod) that this kernel's cells need, built for it on the
    host: {LOOPQUAL_* variable: path of the .ko}. A build that fails stops the run."""
    out = {}
    for s in sel.suites_for(kernel.name):
        if not s.kmod or all(s.applies_to(ps) for ps in param_sets):
            continue
        tree, ko, var = s.kmod
        b = buildmod.build(f"loopqual-{s.name}", REPO / tree, [], ik, ko_name=ko)
        if b.status != "ok" or b.warnings:
            raise LoopqualError(f"suite {s.name}: its test module {tree} does not build cleanly "
                                f"for {kernel.name} ({b.status}, {len(b.warnings)} warning(s)):\n"
                                f"{b.log_tail}")
        print(f"build {kernel.name} {tree}: ok" + (" (cached)" if b.cached else ""),
              file=sys.stderr)
        out[var] = b.ko
    return out


def _plan_cell(meta: dict, ko: str, ps: data.ParamSet, sel: Selection,
               run_env: dict[str, str] | None = None, prepared: dict | None = None,
               kmods: dict[str, str] | None = None) -> dict:
    """run_env: the run's LOOPQUAL_* (passthrough_env() and the run's seed); its reproduce
    line carries the same."""
    run_env = passthrough_env() if run_env is None else run_env
    return {"id": meta["id"], "module": meta["module"], "module_version": meta["module_version"],
            "ko": ko, "param_set": ps.name, "params": ps.module, "controls": ps.controls,
            "suites": _cell_suites(ps, sel, run_env, prepared, kernel=meta.get("kernel"),
                                   kmods=kmods),
            "k": sel.k}


def _cell_suites(ps: data.ParamSet, sel: Selection, run_env: dict[str, str],
                 prepared: dict | None = None, kernel: str | None = None,
                 kmods: dict[str, str] | None = None) -> list[dict]:
    """The suites (and compliance profiles) a cell of this parameter set runs, each with the
    reason it does not apply where it does not. prepared: the tools' roots (toolroots.prepare_for);
    without them (planning only) a suite's tool is named but cannot run. kernel: the cell's
    (a suite selected for other kernels only is left out)."""
    suites = []
    factor = next((k.time_factor for k in sel.kernels if k.name == kernel), 1.0)
    # a suite whose browsers start ahead in the background runs last: they start on the
    # time the cell's other suites leave idle
    for s in sorted(sel.suites_for(kernel), key=lambda s: bool(s.prestart)):
        # Suite settings first; LOOPQUAL_* from the caller's environment win (to reproduce:
        # LOOPQUAL_SEED=... loopqual qualify ...). The guest does not inherit the host's.
        kmod_env = {s.kmod[2]: kmods[s.kmod[2]]} if s.kmod and s.kmod[2] in (kmods or {}) else {}
        env = {**s.env, **kmod_env, **run_env}
        entry = {"name": s.name, "kind": s.kind, "timeout_s": s.timeout_s * factor,
                 "paths": list(s.paths), "env": env}
        why = s.applies_to(ps)
        if why:
            entry["not_applicable"] = why
        # not with -k: the scenario that takes them over may be deselected, and one that runs
        # launches them itself, as with LOOPQUAL_PRESTART=0
        if s.prestart and not sel.k and os.environ.get("LOOPQUAL_PRESTART", "1") != "0":
            entry["prestart"] = list(s.prestart)
        if s.tool:
            t = (prepared or {}).get(s.tool)
            entry["tool"] = t.to_plan() if t else {"name": s.tool}
        if s.kind == "compliance":
            entry["profiles"] = []
            for name in s.profiles:
                prof = sel.profiles[name]
                # a slower kernel (time_factor: the debug kernel's 4) gets limits in proportion:
                # the sid tool's chrooted start printed nothing for 30 s there beside other guests
                pe = {"name": name, "args": list(prof.args), "producer": prof.producer,
                      "timeout_s": prof.timeout_s * factor, "idle_s": prof.idle_s * factor}
                why_not = None if s.strict else prof.applies_to(ps, s.tool)
                if why_not:
                    pe["not_applicable"] = why_not
                entry["profiles"].append(pe)
        suites.append(entry)
    return suites


GUEST_ENV_SKIP = {"LOOPQUAL_CACHE", "LOOPQUAL_ACCEL", "LOOPQUAL_MIRROR", "LOOPQUAL_GUEST_CPUS",
                  "LOOPQUAL_GUEST_MEMORY_GIB", "LOOPQUAL_JOBS"}


def passthrough_env() -> dict[str, str]:
    """LOOPQUAL_* variables meant for the scenarios (seed, walk length, ...)."""
    return {k: v for k, v in os.environ.items()
            if k.startswith("LOOPQUAL_") and k not in GUEST_ENV_SKIP}


def git_commit() -> str:
    head = REPO / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (REPO / ".git" / ref[5:]).read_text().strip()[:12]
        return ref[:12]
    except OSError:
        return os.environ.get("LOOPQUAL_COMMIT", "unknown")
