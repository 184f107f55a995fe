"""The series' cover letter (kernel/patches/0000-cover-letter.patch): short prose of ours
(kernel/cover-letter.txt.j2), then evidence taken from results directories, never typed by
hand: the rules x module sources table, the delivery figures per reader kind, the checkpatch
totals; then the shortlog and the diffstat of the whole series against its base."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import re
import subprocess
from collections import defaultdict
from pathlib import Path

import jinja2

from loopqual.common.errors import LoopqualError
from loopqual.common.paths import REPO
from loopqual.config import data
from loopqual.module import sources
from loopqual.review import seriesbuild
from loopqual.verdict import rules

TEMPLATE = REPO / "kernel" / "cover-letter.txt.j2"
COVER_NAME = "0000-cover-letter.patch"
SOURCE = "patched"  # the source the series makes


class CoverLetterError(LoopqualError):
    pass


def patch_header(text: str) -> tuple[str, str]:
    """(author, subject) of a git format-patch file, folded header lines joined."""
    head = text.split("\n\n", 1)[0]
    unfolded = re.sub(r"\n[ \t]+", " ", head)
    author = subject = ""
    for line in unfolded.splitlines():
        if line.startswith("From: "):
            author = line[6:].strip()
        elif line.startswith("Subject: "):
            subject = re.sub(r"^\[PATCH[^\]]*\]\s*", "", line[9:].strip())
    return author, subject


def shortlog(patches: list[Path]) -> str:
    """git shortlog's shape: each author, the number of patches, their subjects in order."""
    by_author: dict[str, list[str]] = defaultdict(list)
    for p in patches:
        author, subject = patch_header(p.read_text(errors="replace"))
        by_author[re.sub(r"\s*<[^>]*>", "", author) or "unknown"].append(subject)
    out = []
    for author, subjects in by_author.items():
        out.append(f"{author} ({len(subjects)}):")
        out += [f"  {s}" for s in subjects]
    return "\n".join(out)


def diffstat(base: Path, patched: Path) -> str:
    """git's --stat of the whole series: every file of either tree, compared with git itself."""
    names = sorted({p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()} |
                   {p.relative_to(patched).as_posix() for p in patched.rglob("*") if p.is_file()})
    rows = []
    for name in names:
        a, b = base / name, patched / name
        proc = subprocess.run(["git", "diff", "--no-index", "--numstat",
                               str(a) if a.exists() else "/dev/null",
                               str(b) if b.exists() else "/dev/null"],
                              capture_output=True, text=True)
        if proc.returncode not in (0, 1):
            raise CoverLetterError(f"git diff of {name} failed: {proc.stderr.strip()}")
        for line in proc.stdout.splitlines():
            plus, minus, _ = line.split("\t", 2)
            rows.append((name, int(plus), int(minus)))
    if not rows:
        return " 0 files changed"
    width = max(len(n) for n, _, _ in rows)
    most = max(p + m for _, p, m in rows)
    bar = 50
    lines = []
    for name, plus, minus in rows:
        scale = min(1.0, bar / most) if most else 1.0
        lines.append(f" {name.ljust(width)} | {plus + minus:5} "
                     f"{'+' * round(plus * scale)}{'-' * round(minus * scale)}")
    ins, dels = sum(p for _, p, _ in rows), sum(m for _, _, m in rows)
    lines.append(f" {len(rows)} file{'s' if len(rows) != 1 else ''} changed, "
                 f"{ins} insertions(+), {dels} deletions(-)")
    return "\n".join(lines)


def rules_table(run: dict, contract: dict[str, str]) -> tuple[str, int]:
    """The compare table, rules that ran in no column left out; (text, rules shown)."""
    cols, table = rules.compare(run, contract)
    names = [c.removeprefix("debian-") for c in cols]
    width = max(7, *(len(n) for n in names))
    lines = ["rule " + "".join(n.rjust(width + 1) for n in names)]
    shown = 0
    for r in contract:
        verdicts = [table[r][c]["verdict"] for c in cols]
        if all(v == "not run" for v in verdicts):
            continue
        shown += 1
        lines.append(f"{r:5}" + "".join(v.rjust(width + 1) for v in verdicts))
    return "\n".join(lines), shown


def _reader_entries(measurements: dict) -> list[tuple[str, dict]]:
    """(reader label, figures) of one scenario's measurements: what a reader got."""
    out = []
    for key, value in measurements.items():
        if not isinstance(value, dict) or "received" not in value:
            continue
        if key.startswith("reader "):
            out.append((key.removeprefix("reader "), value))
        elif key.endswith(" as reader"):
            out.append((re.sub(r"-\d+ as reader$| as reader$", "", key), value))
    return out


def delivery_table(run: dict) -> str:
    """Per reader kind and module source: received / owed in percent, summed over the cells
    and scenarios that measured it; then per source the frames torn, the buffers overwritten
    while a reader held them, and whether the sequence field counts the writer's frames."""
    acc: dict[tuple[str, str], list[int]] = {}
    marks: dict[str, dict] = {}
    cols: list[str] = []
    for c in run["cells"]:
        col = c["module"].removeprefix("debian-")
        if col not in cols:
            cols.append(col)
            marks[col] = {"torn": 0, "ow": 0, "seq_wrong": 0, "seq_known": 0}
        for sc in c.get("scenarios", []):
            for label, f in _reader_entries(sc.get("measurements") or {}):
                a = acc.setdefault((label, col), [0, 0])
                a[0] += int(f.get("received") or 0)
                a[1] += int(f.get("owed", f.get("span")) or 0)
                m = marks[col]
                m["torn"] += int(f.get("torn") or 0)
                m["ow"] += int(f.get("overwritten_while_held") or 0)
                if "sequence_consistent" in f:
                    m["seq_known"] += 1
                    m["seq_wrong"] += f["sequence_consistent"] is False
    if not acc:
        return "(no delivery measurement in these results)"
    labels = sorted({lab for lab, _ in acc},
                    key=lambda s: (s.startswith(("ffmpeg", "gst", "v4l2", "k6")), s))
    rows = [(lab, [f"{100 * acc[(lab, c)][0] / acc[(lab, c)][1]:.0f}%"
                   if acc.get((lab, c), [0, 0])[1] else "-" for c in cols]) for lab in labels]
    rows.append(("frames torn", [str(marks[c]["torn"]) for c in cols]))
    rows.append(("held buffers overwritten", [str(marks[c]["ow"]) for c in cols]))
    rows.append(("sequence counts the writer's frames",
                 ["-" if not marks[c]["seq_known"] else "no" if marks[c]["seq_wrong"] else "yes"
                  for c in cols]))
    widths = [max(len(c), *(len(r[1][i]) for r in rows)) + 1 for i, c in enumerate(cols)]
    lab_w = max(len(r[0]) for r in rows)
    lines = ["reader".ljust(lab_w) + "".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    for i, (lab, vals) in enumerate(rows):
        if i == len(labels):
            lines.append("")
        lines.append(lab.ljust(lab_w) + "".join(v.rjust(w) for v, w in zip(vals, widths, strict=True)))
    return "\n".join(lines)


def _run_label(results_dir: Path, run: dict) -> str:
    kernels = sorted({c.get("kernel_release") or c["kernel"] for c in run["cells"]})
    commit = (run.get("host") or {}).get("loopqual_commit") or "unknown commit"
    return (f"{results_dir.name} ({run.get('started', '?')[:10]}, loopqual {commit[:7]}, "
            f"kernel {', '.join(kernels)})")


def review_line(check: dict) -> str:
    """The builds' and analysers' verdicts of a `series check` result, as sentences."""
    fig = seriesbuild.review_figures(check)
    out = []
    if b := fig.get("builds"):
        out.append(f"every prefix of the series ({b['count']} builds, W=1, "
                   f"{', '.join(b['kernels'])}) " + (
                       "builds without a new warning" if not b["failing"]
                       else f"has {b['failing']} failing build(s)"))
    if sp := fig.get("sparse"):
        out.append(f"sparse (C=2): {sp['base']} warnings on the base, "
                   f"{sp['patched']} with the series, {len(sp['new'])} new")
    if cc := fig.get("coccinelle"):
        out.append(f"coccinelle ({cc['scripts']} semantic patches of the kernel tree): "
                   f"{len(cc['new'])} new report(s) against the base")
    return "".join(f" {x[0].upper()}{x[1:]}." for x in out)


def render(results_dirs: list[Path], patch_dir: Path, checkpatch_json: Path | None,
           date: dt.datetime | None = None) -> str:
    from loopqual.verdict import resultsreader

    series = patch_dir / "series"
    patches = sources.read_series(series)
    runs, cells = [], []
    for d in results_dirs:
        run = resultsreader.load(d)
        runs.append(_run_label(d, run))
        cells += run["cells"]
    if not cells:
        raise CoverLetterError("the results directories hold no cell: run `make compare-delivery` "
                               "(or any qualify run with several sources) first")
    run = {"cells": cells}
    contract = rules.load_rules()
    table, shown = rules_table(run, contract)
    mirror, all_sources = data.load_sources()
    src = all_sources.get(SOURCE)
    if src is None or src.base is None:
        raise CoverLetterError(f"{data.SOURCES_FILE}: no [source.{SOURCE}] with a base")
    base = sources.unpack_debian(all_sources[src.base], mirror)
    patched, _ = sources.prepare(src, all_sources, mirror)
    checkpatch = review = ""
    checkpatch_left = False
    if checkpatch_json and checkpatch_json.is_file():
        try:
            check = json.loads(checkpatch_json.read_text())
            t = check["totals"]
            checkpatch = ", ".join(f"{t[k]} {word}{'' if t[k] == 1 else 's'}" for k, word in
                                   (("ERROR", "error"), ("WARNING", "warning"), ("CHECK", "check")))
            review = review_line(check)
            checkpatch_left = any(t.values())
        except (ValueError, KeyError, TypeError) as exc:
            raise CoverLetterError(f"{checkpatch_json}: not a `loopqual series check` "
                                   f"result ({exc})") from None
    author = patch_header(patches[0].read_text(errors="replace"))[0] if patches else ""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    template = env.from_string(TEMPLATE.read_text())
    return template.render(
        author=author, date=email.utils.format_datetime(date or dt.datetime.now(dt.UTC)),
        patches=patches, rule_count=len(contract), runs=runs,
        rules_note=f"{shown} rules that ran; holds / broken as `loopqual compare` judges",
        rules_table=table,
        delivery_note="owed: published while the reader had a buffer queued; -: no figure, "
                      "the reader could not start on that source",
        delivery_table=delivery_table(run), checkpatch=checkpatch, review=review,
        checkpatch_left=checkpatch_left,
        shortlog=shortlog(patches), diffstat=diffstat(base, patched))


def write(results_dirs: list[Path], patch_dir: Path, checkpatch_json: Path | None) -> Path:
    text = render(results_dirs, patch_dir, checkpatch_json)
    dest = patch_dir / COVER_NAME
    dest.write_text(text)
    return dest


def listed_patches(cover: str) -> list[str]:
    """The subjects a cover letter's shortlog lists (two-space indented lines after 'Name (n):')."""
    out, inside = [], False
    for line in cover.splitlines():
        if re.match(r"^\S.* \(\d+\):$", line):
            inside = True
        elif inside and line.startswith("  "):
            out.append(line.strip())
        elif inside:
            inside = False
    return out
