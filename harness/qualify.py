"""The pipeline: source -> build -> boot -> load -> run -> health -> results -> report."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import build as buildmod
from . import data, kernels, report, results, sources, vm
from .errors import LoopqualError
from .paths import REPO


@dataclass
class Selection:
    kernels: list[data.Kernel]
    modules: list[data.Source]
    param_sets: list[data.ParamSet]
    suites: list[data.Suite]
    profiles: dict[str, data.Profile]
    k: str | None = None
    expected: list[data.ExpectedFailure] = field(default_factory=list)


def select(kernel_names: list[str], module_names: list[str], param_names: list[str],
           suite_names: list[str], k: str | None) -> Selection:
    """Resolve every name before anything is built or booted: bad input fails here."""
    all_kernels = data.load_kernels()
    _mirror, all_sources = data.load_sources()
    all_params = data.load_params()
    all_suites, profiles = data.load_suites()
    expected = data.load_expected_failures()
    ks = [data.resolve_kernel(n, all_kernels) for n in kernel_names] or \
        [k_ for k_ in all_kernels.values() if k_.default]
    ms = [data.resolve_source(n, all_sources) for n in module_names] or \
        [all_sources["debian-0.15.0"], all_sources["patched"]]
    ps = [data.resolve_params(n, all_params) for n in param_names] or \
        [p for p in all_params.values() if p.default]
    ss = []
    for n in suite_names:
        if n not in all_suites:
            raise data._unknown("suite", n, list(all_suites), data.SUITES_FILE)
        ss.append(all_suites[n])
    ss = ss or [s for s in all_suites.values() if s.default]
    for s in all_suites.values():
        for name in s.param_sets:
            if name not in all_params:
                raise data.DataError(f"{data.SUITES_FILE}: [suite.{s.name}] param_sets names "
                                     f"unknown set '{name}'")
    return Selection(_dedupe(ks), _dedupe(ms), _dedupe(ps), _dedupe(ss), profiles, k, expected)


def _dedupe(items):
    seen, out = set(), []
    for it in items:
        if it.name not in seen:
            seen.add(it.name)
            out.append(it)
    return out


def reproduce_line(kernel: str, module: str, param_set: data.ParamSet, suites: list[data.Suite],
                   k: str | None) -> str:
    ps = param_set.name if "=" not in param_set.name and "+" not in param_set.name else \
        ",".join(f"{a}={b}" for a, b in param_set.all_params.items())
    parts = ["loopqual", "qualify", "--kernel", kernel, "--module", module, "--params", ps]
    for s in suites:
        parts += ["--suite", s.name]
    if k:
        parts += ["-k", k]
    return shlex.join(parts)


class Progress:
    """Live progress on the host: cells done / total, current cell and step, elapsed."""

    def __init__(self, total: int, labels: dict[str, str]):
        self.total, self.labels, self.done = total, labels, 0
        self.t0 = time.monotonic()
        self.tty = sys.stderr.isatty()

    def elapsed(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"{s // 60:02d}:{s % 60:02d}"

    def say(self, text: str) -> None:
        print(f"[{self.done}/{self.total} {self.elapsed()}] {text}", file=sys.stderr, flush=True)

    def __call__(self, ev: dict) -> None:
        name = ev.get("event")
        cell = self.labels.get(ev.get("cell", ""), ev.get("cell", ""))
        if name == "boot":
            self.say(f"guest up ({ev.get('release')}), {ev.get('cells')} cell(s) to run")
        elif name == "ready":
            self.say(f"guest runner ready (imports {ev.get('import_s')} s)")
        elif name == "cell-start":
            self.say(f"{cell}: start")
        elif name == "step":
            self.say(f"{cell}: {ev.get('step')}")
        elif name == "cell-end":
            self.done += 1
            how = "done" if ev.get("complete") else "INCOMPLETE"
            self.say(f"{cell}: {how}" + (f" in {ev['duration_s']} s" if ev.get("duration_s") else ""))
        elif name == "reboot-needed":
            self.say(f"{cell}: module would not unload (rmmod {ev.get('rmmod')}): rebooting")


def qualify(sel: Selection, out: Path, argv: list[str]) -> int:
    t0 = time.monotonic()
    started = dt.datetime.now(dt.UTC)
    out.mkdir(parents=True, exist_ok=True)
    mirror, all_sources = data.load_sources()
    cells: list[dict] = []
    boots, accel_used, boot_seconds = 0, {}, []
    for kernel in sel.kernels:
        ik = kernels.resolve(kernel)
        builds = {}
        for m in sel.modules:
            try:
                tree, patches = sources.prepare(m, all_sources, mirror)
            except sources.SourceError as exc:
                if m.gated:
                    raise  # a patch that does not apply is not a result to tabulate: stop
                raise LoopqualError(f"module source {m.name}: {exc}") from exc
            b = buildmod.build(m.name, tree, patches, ik)
            print(f"build {kernel.name} {m.name}: {b.status}"
                  + (" (cached)" if b.cached else f" in {b.duration_s} s")
                  + (f", {len(b.warnings)} warning(s)" if b.warnings else ""), file=sys.stderr)
            builds[m.name] = (b, sources.module_version(tree), patches)
        metas, plan_cells = [], []
        for m in sel.modules:
            b, version, patches = builds[m.name]
            for ps in sel.param_sets:
                cid = f"{len(cells) + len(metas) + 1:03d}-" + re.sub(
                    r"[^A-Za-z0-9._-]+", "_", f"{kernel.name}-{Path(m.name).name}-{ps.name}")[:80]
                meta = {
                    "id": cid, "kernel": kernel.name, "kernel_release": ik.release,
                    "module": m.name, "module_version": version, "params": ps.all_params,
                    "module_params": ps.module, "controls": ps.controls, "param_set": ps.name,
                    "gated": m.gated, "patches": [p.name for p in patches],
                    "build": {"status": b.status, "log_tail": b.log_tail,
                              "warnings": b.warnings, "cached": b.cached, "key": b.key},
                    "reproduce": reproduce_line(kernel.name, m.name, ps, sel.suites, sel.k),
                }
                metas.append(meta)
                if b.status == "ok":
                    plan_cells.append(_plan_cell(meta, b.ko, ps, sel))
        guest_results, host_incomplete = {}, {}
        if plan_cells:
            accel = vm.detect_accel(ik.vmlinuz)
            accel_used[kernel.name] = accel
            rw = out / "guest" / kernel.name
            if rw.exists():  # results of an earlier run here must never stand in for this one
                shutil.rmtree(rw)
            rw.mkdir(parents=True)
            labels = {c["id"]: f"{kernel.name} {c['module']} {c['param_set']}" for c in plan_cells}
            prog = Progress(len(plan_cells), labels)
            prog.say(f"booting {ik.release} ({accel.upper()}) for {len(plan_cells)} cell(s)")
            plan = {"kernel": kernel.name, "release": ik.release, "repo": str(REPO),
                    "cells": plan_cells}
            gr = vm.run_plan(plan, ik.vmlinuz, rw, prog, accel)
            boots += gr.boots
            boot_seconds += gr.boot_seconds
            (rw / "console.log").write_text("\n".join(gr.console) + "\n")
            for c in plan_cells:
                f = rw / "cells" / f"{c['id']}.json"
                if f.exists():
                    guest_results[c["id"]] = json.loads(f.read_text())
            host_incomplete = gr.host_incomplete
        for meta in metas:
            cells.append(results.evaluate_cell(meta, guest_results.get(meta["id"]),
                                               host_incomplete.get(meta["id"]), sel.expected))
    code = results.exit_code(cells)
    run = {
        "started": started.isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - t0, 1),
        "boots": boots,
        "accel": accel_used,
        "boot_seconds": boot_seconds,
        "exit_code": code,
        "command": shlex.join(["loopqual", *argv]),
        "host": {"machine": platform.node(), "python": platform.python_version(),
                 "loopqual_commit": _git_commit()},
        "selection": {"kernels": [k.name for k in sel.kernels],
                      "modules": [m.name for m in sel.modules],
                      "param_sets": [p.name for p in sel.param_sets],
                      "suites": [s.name for s in sel.suites], "k": sel.k},
        "expected_failures": [e.__dict__ for e in sel.expected],
        "cells": cells,
    }
    results.write_json(out / "results.json", run)
    results.write_junit(out / "junit.xml", run)
    report.write_html(out / "report.html", run)
    print(report.terminal_table(run))
    print(f"\nresults: {out}/results.json  junit: {out}/junit.xml  report: {out}/report.html")
    print(f"wall {run['wall_s']} s, {boots} boot(s); exit {code} "
          f"({ {0: 'all gated results passed', 1: 'a gated result failed', 2: 'incomplete'}[code] })")
    return code


def _plan_cell(meta: dict, ko: str, ps: data.ParamSet, sel: Selection) -> dict:
    suites = []
    for s in sel.suites:
        # Suite settings first; LOOPQUAL_* from the caller's environment win (to reproduce:
        # LOOPQUAL_SEED=... loopqual qualify ...). The guest does not inherit the host's.
        env = {**s.env, **passthrough_env()}
        entry = {"name": s.name, "kind": s.kind, "timeout_s": s.timeout_s,
                 "paths": list(s.paths), "env": env}
        why = s.applies_to(ps)
        if why:
            entry["not_applicable"] = why
        if s.kind == "compliance":
            entry["profiles"] = []
            for name in s.profiles:
                prof = sel.profiles[name]
                pe = {"name": name, "args": list(prof.args), "producer": prof.producer,
                      "timeout_s": prof.timeout_s, "idle_s": prof.idle_s}
                why_not = None if s.strict else prof.applies_to(ps)
                if why_not:
                    pe["not_applicable"] = why_not
                entry["profiles"].append(pe)
        suites.append(entry)
    return {"id": meta["id"], "module": meta["module"], "module_version": meta["module_version"],
            "ko": ko, "param_set": ps.name, "params": ps.module, "controls": ps.controls,
            "suites": suites, "k": sel.k}


GUEST_ENV_SKIP = {"LOOPQUAL_CACHE", "LOOPQUAL_ACCEL", "LOOPQUAL_MIRROR", "LOOPQUAL_GUEST_CPUS"}


def passthrough_env() -> dict[str, str]:
    """LOOPQUAL_* variables meant for the scenarios (seed, walk length, ...)."""
    return {k: v for k, v in os.environ.items()
            if k.startswith("LOOPQUAL_") and k not in GUEST_ENV_SKIP}


def _git_commit() -> str:
    head = REPO / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (REPO / ".git" / ref[5:]).read_text().strip()[:12]
        return ref[:12]
    except OSError:
        return os.environ.get("LOOPQUAL_COMMIT", "unknown")
