"""The kernel's own semantic patches (scripts/coccinelle, the tree checkpatch.pl comes from)
run by Debian's coccinelle over the module source, in report mode as `make coccicheck` runs
them, on the stock base and on the whole series. The series passes when it adds no report the
base does not have. A report is its semantic patch and its message with the line numbers
dropped (they move as code moves); a second instance of one the base has once is new.

Each file's reports are cached by the file, the semantic patches and spatch's version."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from loopqual.common.errors import LoopqualError
from loopqual.common.paths import atomic_write, cache_dir
from loopqual.review.seriesbuild import listed

SOURCE_FILE = "v4l2loopback.c"
# coccicheck's own flags for one file in report mode
SPATCH_ARGS = ("-D", "report", "--very-quiet", "--no-show-diff", "--no-includes",
               "--include-headers")
SCRIPT_TIMEOUT_S = 300
_REPORT = re.compile(r"^(?P<path>\S+?):(?P<line>\d+):(?P<col>\d+)-(?P<end>\d+): (?P<msg>.*)$")
_NUMBER = re.compile(r"\b\d+\b")


class SeriesCocciError(LoopqualError):
    pass


def spatch_program() -> str:
    found = shutil.which("spatch")
    if not found:
        raise SeriesCocciError("coccinelle's spatch is not installed: run `make deps` (Debian's "
                               "coccinelle package), then run again")
    return found


def report_scripts(tree: Path) -> list[Path]:
    """The kernel tree's semantic patches that have a report mode."""
    top = tree / "scripts" / "coccinelle"
    if not top.is_dir():
        raise SeriesCocciError(f"{top}: not found in the kernel source tree")
    return sorted(p for p in top.rglob("*.cocci") if "virtual report" in p.read_text(errors="replace"))


def parse_reports(script: str, output: str) -> list[str]:
    """'<script>: <message>' per report in spatch's output (its notes about the semantic patch
    itself, which name no source line, are not reports)."""
    out = []
    for line in output.splitlines():
        m = _REPORT.match(line.strip())
        if m:
            out.append(f"{script}: {_NUMBER.sub('N', m['msg'].strip())}")
    return out


def _version(spatch: str) -> str:
    proc = subprocess.run([spatch, "--version"], capture_output=True, text=True, errors="replace")
    return (proc.stdout.splitlines() or ["?"])[0]


def run_file(source: Path, tree: Path, scripts: list[Path], spatch: str,
             version: str) -> dict[str, str]:
    """spatch's output per semantic patch (its name relative to scripts/coccinelle) over one
    source file, from the cache when the file, the scripts and spatch's `version` are the
    same."""
    key = hashlib.sha256(source.read_bytes() + version.encode())
    for s in scripts:
        key.update(s.name.encode() + b"\0" + s.read_bytes())
    cached = cache_dir() / "coccinelle" / f"{key.hexdigest()[:16]}.json"
    if cached.exists():
        try:
            return json.loads(cached.read_text())
        except ValueError:
            pass  # a torn file: run again
    top = tree / "scripts" / "coccinelle"
    outputs = {}
    for s in scripts:
        cmd = [spatch, *SPATCH_ARGS, "-I", str(tree / "include"), "--cocci-file", str(s),
               str(source)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                                  timeout=SCRIPT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise SeriesCocciError(f"spatch with {s.name} on {source} ran past "
                                   f"{SCRIPT_TIMEOUT_S} s") from None
        outputs[str(s.relative_to(top))] = proc.stdout + proc.stderr
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cached, json.dumps(outputs, indent=1))
    return outputs


@dataclass
class CocciResult:
    scripts: int
    spatch: str
    base: list[str]
    patched: list[str]
    new: list[str]  # in patched, not in base
    gone: list[str]  # in base, not in patched


def compare(base_outputs: dict[str, str], patched_outputs: dict[str, str]) -> tuple[Counter, Counter]:
    def counts(outputs):
        return Counter(r for name, text in outputs.items() for r in parse_reports(name, text))
    return counts(base_outputs), counts(patched_outputs)


def cocci_diff(tree: Path, base: Path, patched: Path) -> CocciResult:
    """Both module trees' reports; `tree` is the kernel source tree with the semantic patches."""
    spatch = spatch_program()
    version = _version(spatch)
    scripts = report_scripts(tree)
    b, p = compare(run_file(base / SOURCE_FILE, tree, scripts, spatch, version),
                   run_file(patched / SOURCE_FILE, tree, scripts, spatch, version))
    return CocciResult(len(scripts), version, listed(b), listed(p), listed(p - b),
                       listed(b - p))


def render(c: CocciResult) -> str:
    lines = [f"coccinelle ({c.scripts} semantic patches of the kernel tree, report mode, "
             f"{c.spatch.split(' compiled')[0]}): base {len(c.base)} kind(s), patched "
             f"{len(c.patched)}; new {len(c.new)}, gone {len(c.gone)}"]
    lines += [f"  new: {r}" for r in c.new]
    lines += [f"  gone: {r}" for r in c.gone]
    lines += [f"  patched: {r}" for r in c.patched]
    return "\n".join(lines)
