"""loopqual bench: patched and its stock base (debian-0.15.4 today) side by side in one guest boot.

Frames per second and bytes per second through the device, for 640x480, 1280x720 and
1920x1080 YUYV, with write() and mmap producers, 1 reader (both) and N readers (patched
only: stock refuses a second reader), and the guest's memcpy bandwidth as the physical
reference; each with the producer as fast as it can and paced at a camera's rate (--pace).
With --repeat N everything is measured N times, round by round, and the table gives the
median with the spread. Prints a table with the ratios patched/stock and fraction-of-memcpy
and how many rows meet the issue's targets, writes bench.json. A command that measures; it
asserts nothing."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import statistics
import sys
from pathlib import Path

from loopqual.boot import vm
from loopqual.common.errors import LoopqualError
from loopqual.common.paths import REPO
from loopqual.config import data
from loopqual.guest.bench_programs import BROWSERS, DESKTOP_START_LIMIT_S
from loopqual.kernel import kernels
from loopqual.module import build as buildmod
from loopqual.module import sources

SIZES = [(640, 480), (1280, 720), (1920, 1080)]
PRODUCERS = ["write", "mmap"]


def parse_sizes(texts: list[str] | None) -> list[tuple[int, int]]:
    """--size WxH (repeatable) -> [(w, h)]; none given: every size of SIZES."""
    if not texts:
        return list(SIZES)
    out = []
    for t in texts:
        try:
            w, h = (int(v) for v in t.lower().split("x"))
        except ValueError:
            raise LoopqualError(f"--size {t}: give WIDTHxHEIGHT, e.g. 1920x1080") from None
        if not (2 <= w <= 8192 and 1 <= h <= 8192):
            raise LoopqualError(f"--size {t}: width 2..8192 and height 1..8192")
        out.append((w, h))
    return out


def run(kernel_name: str | None, out: Path | None, window_s: float, readers: int,
        stock: str | None = None, patched: str = "patched", pace_fps: float = 30.0,
        repeat: int = 1, sizes: list[tuple[int, int]] | None = None) -> int:
    if repeat < 1:
        raise LoopqualError(f"--repeat {repeat}: give 1 or more rounds")
    sizes = sizes or list(SIZES)
    all_kernels = data.load_kernels()
    _mirror, all_sources = data.load_sources()
    if stock is None:  # the stock source the series is built on
        stock = all_sources[patched].base or "debian-0.15.4"
    kernel = data.resolve_kernel(kernel_name, all_kernels) if kernel_name else \
        next(k for k in all_kernels.values() if k.default)
    ik = kernels.resolve(kernel)
    modules = _build_modules([stock, patched], ik, kernel.name)
    out = out or REPO / "results" / ("bench-" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"))
    rw = out / "guest"
    if rw.exists():
        shutil.rmtree(rw)
    rw.mkdir(parents=True)
    paces = [None] + ([pace_fps] if pace_fps else [])
    # Round by round (each round measures everything once), so that a change in the machine's
    # load falls on every measurement alike; the summary takes the median over the rounds.
    measurements = [{"width": w, "height": h, "producer": p, "readers": r, "pace_fps": pace,
                     "round": k + 1}
                    for k in range(repeat) for pace in paces for (w, h) in sizes
                    for p in PRODUCERS for r in (1, readers)]
    plan = {"out": str(rw), "params": {"exclusive_caps": 1, "max_buffers": 8},
            "modules": modules, "multi_reader_modules": [patched], "measurements": measurements,
            "warmup_s": 2.0, "window_s": window_s}
    plan_path = rw / "bench-plan.json"
    plan_path.write_text(json.dumps(plan, indent=1))
    accel = vm.detect_accel(ik.vmlinuz)
    print(f"bench: booting {ik.release} ({accel.upper()}); {len(measurements)} measurements "
          f"per module ({repeat} round(s)), {window_s:.0f} s each", file=sys.stderr, flush=True)

    def progress(ev):
        if ev.get("event") == "step":
            print(f"  {ev['step']}", file=sys.stderr, flush=True)

    per_measure = 2 * (2.0 + window_s + 15)
    cmd = vm.vng_command(ik.vmlinuz, rw, plan_path, accel, guest_module="loopqual.guest.bench_device",
                         udev=kernel.guest_udev, append=kernel.guest_append)
    _gr, reason, tail = vm.boot_once(cmd, len(measurements) * per_measure + 120, progress)
    result_file = rw / "bench-guest.json"
    if not result_file.exists():
        raise LoopqualError("the benchmark did not finish: " + (reason or "no result file")
                            + "\n" + "\n".join(tail[-15:]))
    guest = json.loads(result_file.read_text())
    summary = summarize(guest, stock, patched, readers, paces, sizes)
    doc = {"kernel": kernel.name, "release": ik.release, "accel": accel, "window_s": window_s,
           "sizes": [f"{w}x{h}" for w, h in sizes],
           "readers": readers, "paces": paces, "rounds": repeat, "guest": guest, "summary": summary,
           "targets": targets(summary, readers)}
    (out / "bench.json").write_text(json.dumps(doc, indent=1))
    print(render(summary, guest, stock, patched, readers))
    print(render_targets(doc["targets"]))
    print(f"\nbench.json: {out / 'bench.json'}")
    return 0


MEDIAN_KEYS = ("mean_reader_fps", "min_reader_fps", "reader_bytes_per_s", "writer_fps")


def _row(guest: dict, module: str, size: str, producer: str, readers: int,
         pace: float | None = None) -> dict | None:
    """One module's measurement of one configuration: the median over its rounds (rows that
    failed are left out; if every round failed, the first failure). `rounds` and
    `fps_range` (min, max of mean_reader_fps) tell how much the rounds varied."""
    rows = [r for r in guest["modules"].get(module, {}).get("rows", [])
            if r["size"] == size and r["producer"] == producer and r["readers"] == readers
            and r.get("pace_fps") == pace]
    good = [r for r in rows if "error" not in r]
    if not good:
        return rows[0] if rows else None
    # rows recorded before min_reader_fps existed have the mean only
    merged = {k: statistics.median(r.get(k, r["mean_reader_fps"]) for r in good)
              for k in MEDIAN_KEYS}
    fps = [r["mean_reader_fps"] for r in good]
    return {**merged, "rounds": len(good), "failed_rounds": len(rows) - len(good),
            "fps_range": (min(fps), max(fps))}


def summarize(guest: dict, stock: str, patched: str, readers: int,
              paces: list[float | None] = (None,),
              sizes: list[tuple[int, int]] | None = None) -> list[dict]:
    memcpy = guest["memcpy_bytes_per_s"]
    out = []
    for pace in paces:
        for (w, h) in sizes or SIZES:
            for p in PRODUCERS:
                out.append(_summary_row(guest, stock, patched, readers, memcpy, f"{w}x{h}", p, pace))
    return out


def _summary_row(guest: dict, stock: str, patched: str, readers: int, memcpy: float, size: str,
                 p: str, pace: float | None) -> dict:
    s1, p1 = _row(guest, stock, size, p, 1, pace), _row(guest, patched, size, p, 1, pace)
    pn = _row(guest, patched, size, p, readers, pace)
    row = {"size": size, "producer": p, "pace_fps": pace}
    for key, r in (("stock", s1), ("patched", p1), (f"patched_x{readers}", pn)):
        row[f"{key}_fps"] = r.get("mean_reader_fps") if r else None
        row[f"{key}_error"] = r.get("error") if r else "not measured"
    for key, r in (("stock", s1), ("patched", p1)):
        row[f"{key}_fps_range"] = r.get("fps_range") if r else None
        row[f"{key}_rounds"] = r.get("rounds", 0) if r else 0
    row["patched_bytes_per_s"] = p1.get("reader_bytes_per_s") if p1 else None
    row["stock_writer_fps"] = s1.get("writer_fps") if s1 else None
    row["patched_writer_fps"] = p1.get("writer_fps") if p1 else None
    row[f"patched_x{readers}_writer_fps"] = pn.get("writer_fps") if pn else None
    row[f"patched_x{readers}_min_fps"] = pn.get("min_reader_fps") if pn else None
    # the cost of the copies (issue 24): patched's writer and each of its readers, with 1 and
    # with N readers, against stock's one-reader figures
    sw = row["stock_writer_fps"]
    if sw and row["patched_writer_fps"]:
        row["writer_ratio"] = round(row["patched_writer_fps"] / sw, 3)
    if sw and row[f"patched_x{readers}_writer_fps"]:
        row["writer_ratio_xN"] = round(row[f"patched_x{readers}_writer_fps"] / sw, 3)
    if row["stock_fps"] and row[f"patched_x{readers}_min_fps"]:
        row["reader_ratio_xN"] = round(row[f"patched_x{readers}_min_fps"] / row["stock_fps"], 3)
    if row["stock_fps"] and row["patched_fps"]:
        row["ratio_patched_stock"] = round(row["patched_fps"] / row["stock_fps"], 3)
    if row["patched_bytes_per_s"]:
        row["fraction_of_memcpy"] = round(row["patched_bytes_per_s"] / memcpy, 4)
    if row[f"patched_x{readers}_fps"] and row["patched_fps"]:
        row["multi_reader_fraction"] = round(row[f"patched_x{readers}_fps"] / row["patched_fps"], 3)
    return row


RATIO_TARGET, MULTI_READER_TARGET = 0.95, 0.80


def targets(summary: list[dict], readers: int) -> list[dict]:
    """The issue's two targets, per producer pacing: how many rows meet them, and the worst."""
    out = []
    for pace in sorted({r["pace_fps"] for r in summary}, key=lambda v: v or 0):
        rows = [r for r in summary if r["pace_fps"] == pace]
        how = f"paced at {pace:g} fps" if pace else "as fast as the producer can"
        for key, target, what in (
                ("ratio_patched_stock", RATIO_TARGET,
                 f"1 reader: patched fps >= {RATIO_TARGET:.2f} x stock"),
                ("writer_ratio", RATIO_TARGET,
                 f"1 reader: patched writer >= {RATIO_TARGET:.2f} x stock's"),
                ("writer_ratio_xN", RATIO_TARGET,
                 f"{readers} readers: writer >= {RATIO_TARGET:.2f} x stock's 1-reader"),
                ("reader_ratio_xN", RATIO_TARGET,
                 f"{readers} readers: each >= {RATIO_TARGET:.2f} x stock's 1 reader"),
                ("multi_reader_fraction", MULTI_READER_TARGET,
                 f"{readers} readers: each >= {MULTI_READER_TARGET:.2f} x the 1-reader fps")):
            vals = [(r[key], f"{r['size']} {r['producer']}") for r in rows if r.get(key) is not None]
            worst = min(vals) if vals else None
            out.append({"pace_fps": pace, "producer_pacing": how, "target": what, "threshold": target,
                        "met": sum(v >= target for v, _ in vals), "measured": len(vals), "of": len(rows),
                        "worst": worst[0] if worst else None, "worst_at": worst[1] if worst else None})
    return out


def render_targets(tgts: list[dict]) -> str:
    lines = ["", "Targets:"]
    for t in tgts:
        worst = f"; worst {t['worst']:.2f} ({t['worst_at']})" if t["worst"] is not None else ""
        lines.append(f"  {t['producer_pacing']:28} {t['target']:44} met in {t['met']}/{t['of']} rows"
                     + (f" ({t['of'] - t['measured']} not measured)" if t["measured"] < t["of"] else "")
                     + worst)
    return "\n".join(lines)


def _range(r: tuple[float, float] | None) -> str:
    return f"{r[0]:.0f}-{r[1]:.0f}" if r else "-"


def render(summary: list[dict], guest: dict, stock: str, patched: str, readers: int) -> str:
    head = (f"{'size':10} {'producer':8} {'writer fps s/p':>14} {stock + ' fps':>18} {patched + ' fps':>12} "
            f"{'ratio':>6} {'MB/s':>8} {'of memcpy':>9} {f'x{readers} fps/rdr':>12} "
            f"{'x' + str(readers) + '/x1':>6} {f'x{readers} wr/min rdr':>16}")
    rounds = max([r["stock_rounds"] for r in summary] + [r["patched_rounds"] for r in summary] + [1])
    lines = [f"guest memcpy: {guest['memcpy_bytes_per_s'] / 1e6:.0f} MB/s ({guest['release']}); "
             f"fps = distinct frames a reader dequeued per second (mean over readers)"
             + (f"; median of {rounds} rounds, [stock / patched fps min-max] after each row"
                if rounds > 1 else ""), head, "-" * len(head)]

    def f(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    pace_seen = object()
    for r in summary:
        if r.get("pace_fps") != pace_seen:
            pace_seen = r.get("pace_fps")
            lines.append(f"-- producer paced at {pace_seen:g} fps (a camera's rate): every frame should "
                         f"reach every reader" if pace_seen else
                         "-- producer as fast as it can (saturates the guest's CPU)")
        mn = f(r.get(f"patched_x{readers}_min_fps"), "<8.1f")
        lines.append(
            f"{r['size']:10} {r['producer']:8} "
            f"{f(r['stock_writer_fps'], '6.0f') + '/' + f(r['patched_writer_fps'], '<6.0f'):>14} "
            f"{f(r['stock_fps'], '18.1f')} {f(r['patched_fps'], '12.1f')} "
            f"{f(r.get('ratio_patched_stock'), '6.2f')} "
            f"{f((r['patched_bytes_per_s'] or 0) / 1e6 if r['patched_bytes_per_s'] else None, '8.1f')} "
            f"{f(r.get('fraction_of_memcpy'), '9.3f')} {f(r[f'patched_x{readers}_fps'], '12.1f')} "
            f"{f(r.get('multi_reader_fraction'), '6.2f')} "
            f"{f(r.get(f'patched_x{readers}_writer_fps'), '7.0f') + '/' + mn:>16}"
            + (f"  [{_range(r['stock_fps_range'])} / {_range(r['patched_fps_range'])}]"
               if rounds > 1 else ""))
    if any((r.get("fraction_of_memcpy") or 0) > 1 for r in summary):
        lines.append("of memcpy > 1: with an mmap producer and mmap readers no frame is copied "
                     "(they share the device's buffers); the figure is buffer bytes handed over")
    errors = [(r["size"], r["producer"], k, r[k]) for r in summary for k in r
              if k.endswith("_error") and r[k]]
    for name, mod in guest["modules"].items():
        errors += [("", "", f"{name}_error", e) for e in mod.get("errors", [])]
    if errors:
        lines.append("\nNot measured / errors:")
        lines += [f"  {s} {p} {k[:-6]}: {e}" for s, p, k, e in errors]
    return "\n".join(lines)


# --- loopqual bench --programs: real writers and readers (issue 10) ---

PROGRAM_PAIRS = [("ffmpeg", "ffmpeg"), ("ffmpeg", "gst"), ("gst", "ffmpeg"), ("gst", "gst")]
# The desktop programs (issue 10): OBS Studio's virtual camera as a writer, the browsers as
# readers; minutes of start-up each under TCG, so a set of their own.
DESKTOP_PAIRS = [("obs", "ffmpeg"), ("ffmpeg", "chromium"), ("ffmpeg", "firefox"), ("obs", "chromium")]
PAIR_SETS = {"basic": PROGRAM_PAIRS, "desktop": DESKTOP_PAIRS, "all": PROGRAM_PAIRS + DESKTOP_PAIRS}
PROGRAM_MODULES = ["debian-0.13.2", "debian-0.15.4", "patched"]
PROGRAM_PACKAGES = {"ffmpeg": "ffmpeg", "gst": "gstreamer1.0-tools", "obs": "obs-studio",
                    "chromium": "chromium", "firefox": "firefox-esr"}
DESKTOP_PROGRAMS = {"obs", *BROWSERS}


def _build_modules(names: list[str], ik, kernel_name: str) -> list[dict]:
    mirror, all_sources = data.load_sources()
    modules = []
    for name in names:
        src = data.resolve_source(name, all_sources)
        tree, patches = sources.prepare(src, all_sources, mirror)
        b = buildmod.build(src.name, tree, patches, ik)
        if b.status != "ok":
            raise LoopqualError(f"{name} does not build on {kernel_name}:\n{b.log_tail}")
        modules.append({"name": name, "ko": b.ko})
    return modules


def _package_version(package: str) -> str:
    import subprocess

    p = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    if p.returncode != 0 or not p.stdout:
        raise LoopqualError(f"the bench needs Debian's {package}, which is not installed: "
                            f"`make deps` installs it")
    return p.stdout


def _check_program_args(window_s: float, pair_set: str) -> None:
    if window_s <= 0:
        raise LoopqualError(f"--window {window_s}: give a positive number of seconds")
    if pair_set not in PAIR_SETS:
        raise LoopqualError(f"--pairs {pair_set!r}: give one of {', '.join(PAIR_SETS)}")


def _print_steps(ev: dict) -> None:
    """The guest's progress events, a line each on stderr."""
    if ev.get("event") == "step":
        print(f"  {ev['step']}", file=sys.stderr, flush=True)


def run_programs(kernel_name: str | None, out: Path | None, window_s: float,
                 modules: list[str] | None = None, size: tuple[int, int] = (640, 480),
                 fps: int = 30, warmup_s: float = 3.0, start_limit_s: float = 120.0,
                 pair_set: str = "basic") -> int:
    """Real programs through the device: each pair (writer, reader) of PAIR_SETS[pair_set] on
    each module, every module in the same boot, pair by pair. Prints the table, writes
    bench-programs.json. Measures; asserts nothing."""
    _check_program_args(window_s, pair_set)
    pairs = PAIR_SETS[pair_set]
    used = {prog for pair in pairs for prog in pair}
    all_kernels = data.load_kernels()
    kernel = data.resolve_kernel(kernel_name, all_kernels) if kernel_name else \
        next(k for k in all_kernels.values() if k.default)
    versions = {prog: f"{pkg} {_package_version(pkg)}" for prog, pkg in PROGRAM_PACKAGES.items()
                if prog in used}
    ik = kernels.resolve(kernel)
    names = modules or PROGRAM_MODULES
    built = _build_modules(names, ik, kernel.name)
    out = out or REPO / "results" / ("bench-programs-" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"))
    rw = out / "guest"
    if rw.exists():
        shutil.rmtree(rw)
    rw.mkdir(parents=True)
    w, h = size
    plan = {"out": str(rw), "params": {"exclusive_caps": 1}, "modules": built,
            "pairs": [{"writer": a, "reader": b} for a, b in pairs],
            "width": w, "height": h, "fps": fps, "warmup_s": warmup_s, "window_s": window_s,
            "start_limit_s": start_limit_s, "versions": versions}
    plan_path = rw / "bench-programs-plan.json"
    plan_path.write_text(json.dumps(plan, indent=1))
    accel = vm.detect_accel(ik.vmlinuz)
    print(f"bench --programs: booting {ik.release} ({accel.upper()}); {len(pairs)} pairs x "
          f"{len(built)} modules, {w}x{h} YUYV at {fps} fps (OBS: its own 128x96 at 10 fps), "
          f"{window_s:.0f} s windows",
          file=sys.stderr, flush=True)

    def per_pair(pair: tuple[str, str]) -> float:
        return sum(DESKTOP_START_LIMIT_S if prog in DESKTOP_PROGRAMS else start_limit_s
                   for prog in pair) + warmup_s + window_s + 60

    cmd = vm.vng_command(ik.vmlinuz, rw, plan_path, accel,
                         guest_module="loopqual.guest.bench_programs",
                         udev=kernel.guest_udev, append=kernel.guest_append)
    limit = len(built) * sum(per_pair(pair) for pair in pairs) + 180
    _gr, reason, tail = vm.boot_once(cmd, limit, _print_steps)
    result_file = rw / "bench-programs-guest.json"
    if not result_file.exists():
        raise LoopqualError("the program bench did not finish: " + (reason or "no result file")
                            + "\n" + "\n".join(tail[-15:]))
    guest = json.loads(result_file.read_text())
    rows = program_rows(guest, names)
    doc = {"kernel": kernel.name, "release": ik.release, "accel": accel, "size": f"{w}x{h}",
           "pairs": pair_set,
           "fps": fps, "window_s": window_s, "versions": versions, "guest": guest, "rows": rows}
    (out / "bench-programs.json").write_text(json.dumps(doc, indent=1))
    print(render_programs(rows, names, doc))
    print(f"\nbench-programs.json: {out / 'bench-programs.json'}")
    return 0


def program_rows(guest: dict, names: list[str]) -> list[dict]:
    """One row per pair: each module's reader fps, writer fps and drops (or its error), and the
    reader fps ratio of the last module (patched) to each other (the stock ones)."""
    rows = []
    pairs = []
    for name in names:
        for r in guest["modules"].get(name, {}).get("rows", []):
            if (r["writer"], r["reader"]) not in pairs:
                pairs.append((r["writer"], r["reader"]))
    for wr, rd in pairs:
        row = {"writer": wr, "reader": rd, "modules": {}}
        for name in names:
            found = [r for r in guest["modules"].get(name, {}).get("rows", [])
                     if (r["writer"], r["reader"]) == (wr, rd)]
            row["modules"][name] = found[0] if found else {"error": "not measured"}
        last = row["modules"][names[-1]].get("reader_fps")
        row["ratios"] = {}
        for name in names[:-1]:
            base = row["modules"][name].get("reader_fps")
            row["ratios"][name] = round(last / base, 2) if last is not None and base else None
        rows.append(row)
    return rows


def render_programs(rows: list[dict], names: list[str], doc: dict) -> str:
    lines = [f"{doc['size']} YUYV, writer paced at {doc['fps']} fps, {doc['window_s']:.0f} s window after "
             f"the reader's first frame; {doc['release']} ({doc['accel'].upper()}); "
             + ", ".join(doc["versions"].values()),
             "reader fps: frames per second the reader got that differ from the frame before "
             "(ffmpeg: by MD5; Chromium's page: by its pixels), buffers (GStreamer) or frames its "
             "<video> presented (Firefox); writer fps: frames it wrote (OBS: rendered) per second "
             "in the window; dropped: what the writer itself reported over the run (OBS: "
             "skipped renders); OBS writes its own 128x96 scene at 10 fps"]
    head = f"{'writer -> reader':18}" + "".join(f" {n + ' rd/wr fps, drop':>30}" for n in names) + \
        "".join(f" {names[-1][:7] + '/' + n[-6:]:>15}" for n in names[:-1])
    lines += [head, "-" * len(head)]

    def cell(m: dict) -> str:
        if "error" in m:
            return "error"
        wf = m.get("writer_fps")
        return (f"{m.get('reader_fps', 0):.1f}/{wf:.1f}, {m.get('writer_dropped', 0)}"
                if wf is not None else f"{m.get('reader_fps', 0):.1f}/-, {m.get('writer_dropped', 0)}")

    for r in rows:
        lines.append(f"{r['writer'] + ' -> ' + r['reader']:18}"
                     + "".join(f" {cell(r['modules'][n]):>30}" for n in names)
                     + "".join(f" {r['ratios'][n]:>15.2f}" if r["ratios"][n] is not None
                               else f" {'-':>15}" for n in names[:-1]))
    errors = [(r["writer"], r["reader"], n, m["error"]) for r in rows for n, m in r["modules"].items()
              if "error" in m]
    errors += [("", "", n, e) for n, mod in doc["guest"]["modules"].items() for e in mod.get("errors", [])]
    if errors:
        lines.append("\nNot measured / errors:")
        lines += [f"  {w} -> {rd} {n}: {e}" for w, rd, n, e in errors]
    return "\n".join(lines)


STARTUP_PROGRAMS = [("runner", "the guest runner's imports", "ready_s"),
                    ("chromium", "Chromium to its page's first frame", "ready_s"),
                    ("chromium", "Chromium to its page's first report", "page_s"),
                    ("firefox", "Firefox to its page's first frame", "ready_s"),
                    ("firefox", "Firefox to its page's first report", "page_s"),
                    ("obs", "OBS to obs-websocket answering", "answers_s"),
                    ("obs", "OBS to its virtual camera streaming", "ready_s")]


def run_startup(kernel_name: str | None, out: Path | None) -> int:
    """The start-up of what the cells start (the runner, the browsers, OBS), each twice in one
    boot, on plain 9p and on virtiofs: one boot per root, one after the other. Prints the
    table and the ratios 9p / virtiofs, writes bench-startup.json. Measures; asserts nothing."""
    from loopqual.boot import guestroot

    all_kernels = data.load_kernels()
    kernel = data.resolve_kernel(kernel_name, all_kernels) if kernel_name else \
        next(k for k in all_kernels.values() if k.default)
    ik = kernels.resolve(kernel)
    built = _build_modules(["patched"], ik, kernel.name)
    out = out or REPO / "results" / ("bench-startup-" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"))
    virtiofs = guestroot.prepare(say=lambda m: print(m, file=sys.stderr))
    if virtiofs.kind != "virtiofs":
        raise LoopqualError(f"bench --startup compares 9p with virtiofs, and virtiofs cannot be "
                            f"had here: {virtiofs.why_9p}")
    roots = {"9p": guestroot.GuestRoot("9p", "9p"), "virtiofs": virtiofs}
    accel = vm.detect_accel(ik.vmlinuz)
    guests: dict[str, dict] = {}
    for name, root in roots.items():
        rw = out / name
        if rw.exists():
            shutil.rmtree(rw)
        rw.mkdir(parents=True)
        plan = {"out": str(rw), "ko": built[0]["ko"], "width": 320, "height": 240, "fps": 10,
                "start_limit_s": 120.0}
        plan_path = rw / "bench-startup-plan.json"
        plan_path.write_text(json.dumps(plan, indent=1))
        print(f"bench --startup: booting {ik.release} ({accel.upper()}) on {name}",
              file=sys.stderr, flush=True)

        def progress(ev):
            if ev.get("event") == "step":
                print(f"  {ev['step']}", file=sys.stderr, flush=True)

        cmd = vm.vng_command(ik.vmlinuz, rw, plan_path, accel, root=root,
                             guest_module="loopqual.guest.bench_startup",
                             udev=kernel.guest_udev, append=kernel.guest_append)
        gr, reason, tail = vm.boot_once(cmd, 6 * DESKTOP_START_LIMIT_S + 600, progress)
        result_file = rw / "bench-startup-guest.json"
        if not result_file.exists():
            raise LoopqualError(f"the start-up bench on {name} did not finish: "
                                + (reason or "no result file") + "\n" + "\n".join(tail[-15:]))
        guests[name] = {**json.loads(result_file.read_text()), "boot_s": gr.boot_seconds,
                        "root_fs_seen": gr.root_fs}
    rows = startup_rows(guests)
    doc = {"kernel": kernel.name, "release": ik.release, "accel": accel,
           "virtiofsd": virtiofs.version, "guests": guests, "rows": rows}
    (out / "bench-startup.json").write_text(json.dumps(doc, indent=1))
    print(render_startup(rows, doc))
    print(f"\nbench-startup.json: {out / 'bench-startup.json'}")
    return 0


def startup_rows(guests: dict[str, dict]) -> list[dict]:
    """Per program and measure: seconds on each root, first and second start, and the ratio
    9p / virtiofs of each start."""
    rows = [{"what": "boot to the runner's first event", "9p": guests["9p"]["boot_s"][:1],
             "virtiofs": guests["virtiofs"]["boot_s"][:1]}]
    for prog, what, key in STARTUP_PROGRAMS:
        row: dict = {"what": what}
        for root in ("9p", "virtiofs"):
            runs = guests[root].get("programs", {}).get(prog, [])
            row[root] = [r.get(key) for r in runs]
            errors = [r["error"] for r in runs if r.get("error")]
            if errors:
                row.setdefault("errors", []).extend(f"{root}: {e}" for e in errors)
        rows.append(row)
    for row in rows:
        row["ratio"] = [round(a / b, 2) if a and b else None
                        for a, b in zip(row["9p"], row["virtiofs"], strict=False)]
    return rows


def render_startup(rows: list[dict], doc: dict) -> str:
    def s(v):
        return f"{v:.1f}" if isinstance(v, (int, float)) else "-"

    lines = [f"start-up on {doc['release']} ({doc['accel'].upper()}), seconds; each program "
             f"started twice in one boot (1st, 2nd); ratio = 9p / virtiofs "
             f"({doc['virtiofsd']}, cache=always)",
             f"{'':40} {'9p 1st':>8} {'9p 2nd':>8} {'vfs 1st':>8} {'vfs 2nd':>8} "
             f"{'ratio 1st':>9} {'ratio 2nd':>9}"]
    for row in rows:
        a = (row["9p"] + [None, None])[:2]
        b = (row["virtiofs"] + [None, None])[:2]
        r = (row["ratio"] + [None, None])[:2]
        lines.append(f"{row['what'][:40]:40} {s(a[0]):>8} {s(a[1]):>8} {s(b[0]):>8} "
                     f"{s(b[1]):>8} {s(r[0]):>9} {s(r[1]):>9}")
        for e in row.get("errors", []):
            lines.append(f"    {e[:160]}")
    return "\n".join(lines)
