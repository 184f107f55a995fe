"""loopqual: the command line.

Exit codes (as tuxmake/tuxrun): 0 every gated result passed, 1 a gated result failed,
2 anything incomplete or bad input (one clear line, never a traceback).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
from pathlib import Path

from loopqual import __version__
from loopqual.common.errors import LoopqualError

EPILOG = """exit codes: 0 all gated results passed; 1 a gated result failed;
2 incomplete (infrastructure, timeout, hang, panic) or bad input.
Data: kernel/kernels.toml, kernel/sources.toml, scenarios/params.toml,
scenarios/suites.toml, kernel/expected-failures.toml."""


def _seconds(value: str) -> float:
    try:
        s = float(value)
    except ValueError:
        s = -1.0
    if not 0 <= s <= 86400:
        raise argparse.ArgumentTypeError(f"{value!r}: give seconds from 0 to 86400")
    return s


def _jobs(value: str, what: str = "--jobs") -> int:
    if not value.strip().isdigit() or not 1 <= int(value) <= 16:
        msg = f"{what}={value!r}: give a whole number of guests from 1 to 16"
        if what == "--jobs":
            raise argparse.ArgumentTypeError(msg)
        raise LoopqualError(msg)
    return int(value)


def _matrix_args(p: argparse.ArgumentParser, with_suites: bool = True) -> None:
    p.add_argument("--kernel", "-K", action="append", default=[], metavar="K",
                   help="kernel name from kernel/kernels.toml (repeatable; default: the default kernels)")
    p.add_argument("--module", "-m", action="append", default=[], metavar="M",
                   help="module source from kernel/sources.toml, or a path to a local tree "
                        "(repeatable; default: patched and its stock base, see kernel/sources.toml)")
    if with_suites:
        p.add_argument("--params", "-p", action="append", default=[], metavar="P",
                       help="parameter set from scenarios/params.toml, or inline "
                            "'exclusive_caps=1,keep_format=1' (repeatable; default: the default sets)")
        p.add_argument("--suite", "-s", action="append", default=[], metavar="S",
                       help="suite from scenarios/suites.toml (repeatable; default: the default suites); "
                            "SUITE:KERNEL[,KERNEL] runs it only in the cells of those kernels")
        p.add_argument("-k", dest="k", metavar="EXPR",
                       help="pytest -k expression selecting scenarios inside pytest suites")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="loopqual", description="Qualify v4l2loopback on real Debian kernels in QEMU guests.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"loopqual {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    _add_qualify(sub)
    _add_plan(sub)
    _add_merge(sub)
    _add_list(sub)
    _add_build(sub)
    _add_shell(sub)
    _add_report(sub)
    _add_bench(sub)
    _add_expected_failures(sub)
    _add_rules(sub)
    _add_compare(sub)
    _add_series(sub)
    return ap


def _add_qualify(sub) -> None:
    q = sub.add_parser("qualify", help="build, boot, run the matrix, judge, report",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _matrix_args(q)
    q.add_argument("--out", "-o", type=Path, metavar="DIR",
                   help="results directory (default: results/<UTC timestamp>)")
    q.add_argument("--jobs", "-j", type=_jobs, default=None, metavar="N",
                   help="guests to run at once, each with its share of the cells (default: "
                        "$LOOPQUAL_JOBS, else what the machine carries: a guest per core, "
                        "2 GiB of memory each; --jobs 1 runs one guest at a time)")

    q.add_argument("--beside-s", type=_seconds, default=0.0, metavar="SECONDS",
                   help="another guest runs beside this run for its first SECONDS (make "
                        "test's side lane): the cells that start the desktop programs are "
                        "planned after that where their lanes have other work for it")
    q.add_argument("--shard", metavar="K/N",
                   help="run only shard K of the selection's N shards (see loopqual plan); "
                        "results.json says which shard of which plan it is")


def _add_plan(sub) -> None:
    pl = sub.add_parser("plan", help="split the selection's cells into N shards balanced by the "
                                     "suites' typical times, printed for a CI matrix; builds and "
                                     "boots nothing")
    _matrix_args(pl)
    pl.add_argument("--shards", "-n", required=True, metavar="N", help="number of shards")
    pl.add_argument("--format", "-f", default="json", choices=["json", "github", "gitlab"],
                    help="json: each shard with its cells and expected seconds; github: for "
                         "strategy.matrix via fromJSON; gitlab: for parallel: matrix (default json)")


def _add_merge(sub) -> None:
    mg = sub.add_parser("merge", help="merge shard results directories into one results.json, "
                                      "junit.xml and report.html; exit code as qualify's",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    mg.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="the shards' results directories")
    mg.add_argument("--out", "-o", type=Path, metavar="DIR",
                    help="merged results directory (default: results/<UTC timestamp>)")


def _add_list(sub) -> None:
    sub.add_parser("list", help="kernels, module sources, parameter sets and suites known")


def _add_build(sub) -> None:
    b = sub.add_parser("build", help="build only (cached); print module paths")
    _matrix_args(b, with_suites=False)


def _add_shell(sub) -> None:
    sh = sub.add_parser("shell", help="boot a guest with the module loaded and open a shell")
    sh.add_argument("--kernel", "-K", metavar="K", help="kernel (default: the default kernel)")
    sh.add_argument("--module", "-m", metavar="M", default="patched", help="module source")
    sh.add_argument("--params", "-p", metavar="P", default="ec1", help="parameter set")
    sh.add_argument("--run", action="append", metavar="COMMAND",
                    help="run COMMAND in the guest (repeatable, in order) and print its output "
                         "instead of opening a shell; exit with the first non-zero status")
    sh.add_argument("--run-timeout", type=float, default=600, metavar="S",
                    help="seconds each --run command may take (default 600)")


def _add_report(sub) -> None:
    r = sub.add_parser("report", help="re-render report.html from a results directory")
    r.add_argument("dir", type=Path, metavar="DIR")
    r.add_argument("--table", action="store_true",
                   help="also print the run's table and its problems, as qualify printed them")
    r.add_argument("--series-check", type=Path, metavar="FILE",
                   help="also show the verdicts of `loopqual series check --out FILE`")


def _add_bench(sub) -> None:
    be = sub.add_parser("bench", help="patched vs its stock base (kernel/sources.toml) throughput, one boot; "
                                      "prints a table and writes bench.json")
    be.add_argument("--kernel", "-K", metavar="K", help="kernel (default: the default kernel)")
    be.add_argument("--out", "-o", type=Path, metavar="DIR", help="results directory")
    be.add_argument("--window", type=float, default=None, metavar="S",
                    help="measuring window per measurement in seconds (default 4; with "
                         "--programs 15)")
    be.add_argument("--size", action="append", metavar="WxH",
                    help="frame size (YUYV) to measure, repeatable (default 640x480, 1280x720 and "
                         "1920x1080)")
    be.add_argument("--readers", type=int, default=4, metavar="N",
                    help="readers in the multi-reader measurements (default 4)")
    be.add_argument("--pace", type=float, default=30.0, metavar="FPS",
                    help="also measure with the producer paced at FPS frames per second, as a "
                         "camera sends them (default 30; 0: only as fast as it can)")
    be.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="measure everything N times, round by round; the table gives the "
                         "median and the spread (default 1)")
    be.add_argument("--programs", action="store_true",
                    help="real programs instead: ffmpeg and GStreamer as writers and readers, "
                         "640x480 at 30 fps, debian-0.13.2, debian-0.15.4 and patched in one boot "
                         "(--window: the window after the reader's first frame, default 15 s here)")
    be.add_argument("--startup", action="store_true",
                    help="start-up instead: the guest runner's imports, Chromium, Firefox and "
                         "OBS, each started twice in one boot, on plain 9p and on virtiofs "
                         "(two boots), with the ratios 9p / virtiofs")
    be.add_argument("--pairs", choices=["basic", "desktop", "all"], default="basic",
                    help="with --programs: basic (ffmpeg and GStreamer both ways, the default), "
                         "desktop (OBS Studio's virtual camera writing; headless Chromium and "
                         "Firefox ESR reading: minutes of start-up each under TCG) or all")


def _add_expected_failures(sub) -> None:
    xf = sub.add_parser("expected-failures",
                        help="draft kernel/expected-failures.toml entries from a results directory")
    xf.add_argument("dir", type=Path, metavar="DIR")


def _add_rules(sub) -> None:
    sub.add_parser("rules", help="each contract rule with the scenarios that check it; "
                                 "exit 1 if a rule has none")


def _add_compare(sub) -> None:
    cmp_ = sub.add_parser("compare", help="rules x module sources table from results directories")
    cmp_.add_argument("dirs", type=Path, nargs="+", metavar="DIR",
                      help="one or more results directories (their cells are put together)")
    cmp_.add_argument("--gated-must-hold", action="store_true",
                      help="exit 1 unless every rule holds for every gated source (patched): "
                           "a rule that is broken, incomplete, not run or only skipped fails")


def _add_series(sub) -> None:
    ser = sub.add_parser("series", help="edit the patch series as git commits")
    ser.add_argument("action", choices=["edit", "export", "check", "cover-letter"],
                     help="edit: make a git work tree of base + series; "
                          "export: write its commits back to kernel/patches (and the cover "
                          "letter, given --results); "
                          "check: judge the patches as a reviewer does (checkpatch.pl "
                          "--strict against kernel/checkpatch-baseline.toml, every prefix "
                          "built with W=1, sparse, coccinelle); "
                          "cover-letter: write kernel/patches/0000-cover-letter.patch from "
                          "--results")
    ser.add_argument("--results", type=Path, metavar="DIR", action="append", default=[],
                     help="cover-letter, export: a results directory whose rules table and "
                          "delivery figures go into the cover letter (repeatable; "
                          "`make compare-delivery` makes one with every source)")
    ser.add_argument("--no-builds", action="store_true",
                     help="check: checkpatch and the cover letter only, without the prefix "
                          "builds (W=1, every gate kernel), sparse and coccinelle")
    ser.add_argument("--checkpatch", type=Path, metavar="FILE",
                     default=Path("results/series-check.json"),
                     help="cover-letter: the `series check --out` file whose totals it quotes "
                          "(default results/series-check.json, left out when absent)")
    ser.add_argument("--out", type=Path, metavar="FILE",
                     help="check: also write its findings and verdict as JSON to FILE")
    ser.add_argument("--worktree", type=Path, metavar="DIR",
                     help="the work tree (default: .cache/series-work)")
    ser.add_argument("--force", action="store_true",
                     help="edit: replace an existing work tree (unexported commits are lost)")


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the guest stage (which handles it itself: see qualify.stop_on_signals)."""


def _on_sigterm(_signum, _frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `loopqual compare DIR | head` ends quietly
    ap = build_parser()
    args = ap.parse_args(argv)
    if not args.command:
        ap.print_help()
        return 2
    old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _dispatch(args, argv)
    except LoopqualError as exc:
        print(f"loopqual: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        name = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
        print(f"loopqual: interrupted by {name}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug in loopqual (or its checkout vanishing under it)
        print(f"loopqual: internal error: {type(exc).__name__}: {exc}; "
              f"{_keep_traceback(exc)}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, old_term)


def _keep_traceback(exc: BaseException) -> str:
    """The traceback goes to a file, not to the user's terminal; says where (or why not)."""
    import tempfile
    import traceback

    try:
        fd, path = tempfile.mkstemp(prefix="loopqual-internal-error-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write("".join(traceback.format_exception(exc)))
    except OSError as e:
        return f"its traceback could not be kept ({e})"
    return f"its traceback is in {path}; please report it with that file"


def _qualify(args, argv: list[str]) -> int:
    from loopqual.run import qualify

    shard = None
    if args.shard is not None:
        from loopqual.run import shards

        k, n = shards.parse_shard(args.shard)
    sel = qualify.select(args.kernel, args.module, args.params, args.suite, args.k)
    if args.shard is not None:
        shard = (qualify.plan_shards(sel, n), k)
        print(f"shard {k}/{n} of plan {shard[0].plan_id}: {len(shard[0].shards[k - 1])} of "
              f"{len(shard[0].cells)} cell(s), ~{shard[0].expected_s[k - 1]} s expected",
              file=sys.stderr)
    from loopqual.boot.vm import machine_jobs

    env_jobs = os.environ.get("LOOPQUAL_JOBS")
    jobs = args.jobs or (_jobs(env_jobs, "LOOPQUAL_JOBS") if env_jobs else machine_jobs())
    return qualify.qualify(sel, _out_dir(args), argv, jobs=jobs, shard=shard,
                           beside_s=args.beside_s)


def _out_dir(args) -> Path:
    """--out, or results/<UTC timestamp>."""
    return args.out or Path("results") / dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def _plan(args, argv: list[str]) -> int:
    from loopqual.run import qualify, shards

    n = shards.parse_count(args.shards)
    sel = qualify.select(args.kernel, args.module, args.params, args.suite, args.k)
    plan = qualify.plan_shards(sel, n)
    print(shards.render(plan, args.format))
    print(shards.summary(plan), file=sys.stderr)
    return 0


def _merge(args, argv: list[str]) -> int:
    from loopqual.run import shards

    return shards.merge(args.dirs, _out_dir(args), argv)


def _shell(args, argv: list[str]) -> int:
    from loopqual.boot import shell

    return shell.run(args.kernel, args.module, args.params, args.run, args.run_timeout)


def _report(args, argv: list[str]) -> int:
    from loopqual.output import report

    html, table = report.rerender(args.dir, args.series_check)
    if args.table:
        print(table)
    print(html)
    return 0


def _bench(args, argv: list[str]) -> int:
    from loopqual.run import bench

    if args.startup:
        return bench.run_startup(args.kernel, args.out)
    if args.programs:
        return bench.run_programs(args.kernel, args.out,
                                  15.0 if args.window is None else args.window,
                                  pair_set=args.pairs)
    return bench.run(args.kernel, args.out, 4.0 if args.window is None else args.window,
                     args.readers, pace_fps=args.pace,
                     repeat=args.repeat, sizes=bench.parse_sizes(args.size))


def _expected_failures(args, argv: list[str]) -> int:
    from loopqual.verdict import expectedfailures, resultsreader

    print(expectedfailures.draft(resultsreader.load(args.dir)))
    return 0


def _compare(args, argv: list[str]) -> int:
    from loopqual.verdict import regressions, resultsreader, rules

    cells = [c for d in args.dirs for c in resultsreader.load(d)["cells"]]
    run, contract = {"cells": cells}, rules.load_rules()
    print(rules.render_compare(run, contract))
    upstream = regressions.render(run)
    if upstream:
        print("\n" + upstream)
    if args.gated_must_hold:
        short = rules.gated_not_holding(run, contract)
        for line in short:
            print(f"gate: {line}", file=sys.stderr)
        if short:
            return 1
        print("gate: every rule holds for every gated source", file=sys.stderr)
    return 0


# one handler per subcommand: (parsed arguments, the command line) -> exit status
HANDLERS = {
    "qualify": _qualify,
    "plan": _plan,
    "merge": _merge,
    "list": lambda args, argv: _list(),
    "build": lambda args, argv: _build(args),
    "shell": _shell,
    "report": _report,
    "series": lambda args, argv: _series(args),
    "bench": _bench,
    "expected-failures": _expected_failures,
    "rules": lambda args, argv: _rules(),
    "compare": _compare,
}


def _dispatch(args, argv: list[str]) -> int:
    return HANDLERS[args.command](args, argv)


def _rules() -> int:
    from loopqual.config import data
    from loopqual.verdict import rules

    suites, _profiles = data.load_suites()
    paths = [p for s in suites.values() if s.kind == "pytest" for p in s.paths]
    contract = rules.load_rules()
    items = rules.collect_scenarios(paths)
    programs = {it["id"]: it.get("programs", []) for it in items}
    # A scenario counts as coverage only where some configured kernel can run it.
    nowhere = rules.runnable_nowhere(items, rules.kernel_configs(data.load_kernels()))
    by_rule, unknown = rules.coverage(contract, [it for it in items if it["id"] not in nowhere])
    missing = [r for r, scs in by_rule.items() if not scs]
    for r, text in contract.items():
        scs = by_rule[r]
        print(f"{r:4} {len(scs):3} scenario(s)  {text[:90]}")
        for sc in scs:
            runs = programs.get(sc)
            print(f"            {sc}" + (f"  [real: {', '.join(runs)}]" if runs else ""))
    if nowhere:
        print("\nscenarios no configured kernel can run (not counted as coverage):")
        for sc, why in nowhere.items():
            print(f"  {sc}: {why}")
    if unknown:
        print(f"\nscenarios name rules the contract does not have: {', '.join(unknown)}")
    print(f"\n{len(contract) - len(missing)}/{len(contract)} rules covered"
          + (f"; without a scenario: {', '.join(missing)}" if missing else ""))
    return 1 if missing or unknown else 0


def _series(args) -> int:
    from loopqual.config import data
    from loopqual.module import series, sources

    mirror, all_sources = data.load_sources()
    patched = all_sources["patched"]
    work = args.worktree or series.DEFAULT_WORK
    if args.action == "check":
        from loopqual.review import seriescheck

        return seriescheck.check(series.read_series(patched.patches), args.out,
                                 builds=not args.no_builds)
    if args.action == "edit":
        base = sources.unpack_debian(all_sources[patched.base], mirror)
        tree = series.edit(base, work, patched.patches, force=args.force)
        print(f"{tree}: base = pristine {patched.base}, one commit per patch. Edit the commits, "
              f"then `loopqual series export`.")
    elif args.action == "export":
        written = series.export(work, patched.patches.parent, patched.base or "its base source")
        print(f"wrote {len(written)} patch(es) and {patched.patches}")
    if args.action == "cover-letter" or args.action == "export" and args.results:
        from loopqual.review import coverletter

        if not args.results:
            raise coverletter.CoverLetterError("cover-letter needs --results DIR (a results "
                                               "directory with every source: make compare-delivery)")
        dest = coverletter.write(args.results, patched.patches.parent, args.checkpatch)
        print(f"wrote {dest}")
    return 0


def _list() -> int:
    from loopqual.config import data

    kernels = data.load_kernels()
    _m, sources = data.load_sources()
    params = data.load_params()
    suites, profiles = data.load_suites()
    print("Kernels (kernel/kernels.toml):")
    for k in kernels.values():
        width = max(14, *map(len, kernels))
        print(f"  {k.name:{width}} {'default ' if k.default else '        '}{k.description}")
        print(f"  {'':{width}}         {_kernel_state(k)}")
    print("Module sources (kernel/sources.toml; or a path to a local tree):")
    for s in sources.values():
        what = f"{s.package} {s.version} ({s.suite})" if s.kind == "debian" else \
            f"{s.base} + {s.patches.name if s.patches else ''}"
        print(f"  {s.name:14} {'gated   ' if s.gated else 'info    '}{what}: {s.description}")
    print("Parameter sets (scenarios/params.toml; or inline NAME=VALUE,...):")
    for p in params.values():
        settings = " ".join(f"{k}={v}" for k, v in p.all_params.items())
        print(f"  {p.name:14} {'default ' if p.default else '        '}{settings:40} {p.description}")
    print("Suites (scenarios/suites.toml):")
    for s in suites.values():
        extra = f" profiles: {', '.join(s.profiles)}" if s.profiles else ""
        extra += f" (tool {s.tool})" if s.tool else ""
        print(f"  {s.name:14} {'default ' if s.default else '        '}{s.description}{extra}")
    print("Tools (scenarios/suites.toml [tool.NAME]; a Debian root each, made before a guest boots):")
    for t in data.load_tools().values():
        print(f"  {t.name:14}         {' '.join(t.packages)} from {t.suite}: {t.description}")
        print(f"  {'':14}         {_tool_state(t)}")
    return 0


def _tool_state(t) -> str:
    """The newest cached root of the tool's suite holding its packages, and what it holds."""
    from loopqual.common.paths import cache_dir
    from loopqual.kernel import buildroot

    held = []
    for root in sorted((cache_dir() / "roots").glob(f"{t.suite}-*"), key=lambda r: r.stat().st_mtime):
        meta = buildroot.info(root)
        if meta and all(p in meta.get("packages", {}) for p in t.packages):
            held.append((root, meta))
    if not held:
        return "root: not made yet (the first run that needs it makes it)"
    root, meta = held[-1]
    versions = ", ".join(f"{p} {meta['packages'][p]}" for p in t.packages)
    return f"root: cached ({versions}; {root})"


def _kernel_state(k) -> str:
    """Where a kernel comes from, the exact version it resolves to now, the compiler its
    modules are built with and where they are built (an archive kernel's build root, cached
    or not). Downloads a suite's index at most; a problem is shown in place of the row."""
    from loopqual.kernel import archivekernels, kernels

    try:
        if k.kind == "host":
            ik = kernels.resolve(k, install=False)
            return (f"suite: host (apt)  version: {ik.release} {ik.version}  compiler: "
                    f"{ik.compiler}  build: on the host")
        if k.kind == "debug":
            ik = kernels.resolve(k, install=False)
            return (f"suite: debug (built by loopqual)  version: {ik.release} {ik.version}  "
                    f"compiler: {ik.compiler}  tree: {ik.build_dir}")
        d = archivekernels.describe(k)
    except LoopqualError as exc:
        return f"({exc})"
    root = f"{d['root'].name} {'cached' if d['root_cached'] else 'not made yet'}"
    return (f"suite: {d['suite']}  version: {d['release']} {d['version']}"
            f"{' (pinned)' if d['pinned'] else ' (newest)'}  compiler: {d['compiler']}  "
            f"build root: {root}  image: {'cached' if d['image_cached'] else 'not downloaded'}")


def _build(args) -> int:
    from loopqual.config import data
    from loopqual.kernel import kernels
    from loopqual.module import build, sources

    all_kernels = data.load_kernels()
    mirror, all_sources = data.load_sources()
    ks = [data.resolve_kernel(n, all_kernels) for n in args.kernel] or \
        [k for k in all_kernels.values() if k.default]
    ms = [data.resolve_source(n, all_sources) for n in args.module] or \
        data.default_modules(all_sources)
    failed = False
    for k in ks:
        ik = kernels.resolve(k)
        for m in ms:
            tree, patches = sources.prepare(m, all_sources, mirror)
            r = build.build(m.name, tree, patches, ik)
            state = "cached" if r.cached else f"{r.duration_s} s"
            if r.status == "ok":
                print(f"{k.name} {m.name}: {r.ko} ({state}, {len(r.warnings)} warning(s))")
            else:
                failed = True
                print(f"{k.name} {m.name}: BUILD FAILED ({state})\n{r.log_tail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
