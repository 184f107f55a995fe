"""Kernel health: splat patterns (data) matched against kernel log lines.

Patterns live in kernel/splats.toml (deny and allow lists, as netdev/libbpf CI keep them).
Used on the host (parsing recorded logs) and in the guest (around every cell and scenario).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from loopqual.common.errors import DataError

SPLATS_FILE = Path(__file__).resolve().parents[3] / "kernel" / "splats.toml"


@dataclass(frozen=True)
class SplatPattern:
    name: str
    regex: re.Pattern[str]


@lru_cache(maxsize=4)
def load_splat_patterns(path: Path = SPLATS_FILE) -> tuple[list[SplatPattern], list[re.Pattern[str]]]:
    """Return (deny patterns, allow patterns) from the splats data file."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"{path}: cannot read splat patterns: {exc}") from exc
    deny = []
    for name, entry in data.get("deny", {}).items():
        if "regex" not in entry:
            raise DataError(f"{path}: [deny.{name}] needs a 'regex'")
        try:
            deny.append(SplatPattern(name, re.compile(entry["regex"])))
        except re.error as exc:
            raise DataError(f"{path}: [deny.{name}] bad regex: {exc}") from exc
    allow = []
    for name, entry in data.get("allow", {}).items():
        try:
            allow.append(re.compile(entry["regex"]))
        except (KeyError, re.error) as exc:
            raise DataError(f"{path}: [allow.{name}] needs a valid 'regex': {exc}") from exc
    return deny, allow


_TIMESTAMP = re.compile(r"^\s*\[\s*\d+\.\d+\]\s*")


def find_splats(lines: list[str], path: Path = SPLATS_FILE) -> list[dict]:
    """Each deny-listed line not excused by the allow list, as {"pattern", "line", "context"}.

    context holds the line and up to 12 following lines (the top of a call trace), which
    is what a crash fingerprint is made of.
    """
    deny, allow = load_splat_patterns(path)
    found = []
    for i, raw in enumerate(lines):
        line = _TIMESTAMP.sub("", raw.rstrip("\n"))
        if any(a.search(line) for a in allow):
            continue
        for pat in deny:
            if pat.regex.search(line):
                ctx = [_TIMESTAMP.sub("", x.rstrip("\n")) for x in lines[i : i + 13]]
                found.append({"pattern": pat.name, "line": line, "context": ctx})
                break
    return found


# ---------------------------------------------------------------------------- kmemleak
# /sys/kernel/debug/kmemleak lists the unreferenced objects found by the scans so far, each
#   unreferenced object 0xffff888004f1a000 (size 64):
#     comm "insmod", pid 201, jiffies 4294893712
#     hex dump (first 32 bytes): ...
#     backtrace (crc 0):
#       [<ffffffff81234567>] __kmalloc_cache_noprof+0x2b1/0x3f0      (form varies by kernel)
#       [<ffffffffc0a3c0aa>] some_function+0x1a/0x40 [v4l2loopback]
# A frame in a module carries the module's name in brackets; a frame in module code that is
# gone (a module unloaded since, or a module's init code, freed once it has run) is printed
# as a bare address: no symbol is left to resolve it.
KMEMLEAK_FILE = "/sys/kernel/debug/kmemleak"
KMEMLEAK_MIN_AGE_S = 5  # kmemleak reports no object younger than this (its minimum age)
# The pattern of the leaks the runner's scan after a cell finds (rule H3), apart from the
# kernel-log class "kmemleak" of splats.toml (the "N new suspected memory leaks" line, H1).
KMEMLEAK_SCAN = "kmemleak_scan"
_OBJECT = re.compile(r"^unreferenced object (0x[0-9a-f]+) \(size (\d+)\):")
_FRAME_ADDR = re.compile(r"^\[<[0-9a-fx]+>\]\s*")
_MODULE_FRAME = re.compile(r"\[(\w+)\]\s*$")
_BARE_ADDRESS = re.compile(r"^(0x)?[0-9a-f]{8,16}$")


def kmemleak_report() -> str:
    """Two scans (an object whose pointer sat in a register or on a stack during the first is
    let go by the second, as the kmemleak documentation advises), then the report of every
    suspect not cleared since. OSError where kmemleak is absent or has turned itself off."""
    path = Path(KMEMLEAK_FILE)
    for _ in range(2):
        path.write_text("scan\n")
    return path.read_text(errors="replace")


def parse_kmemleak(text: str) -> list[dict]:
    """Each object of a kmemleak report as {"object", "size", "lines", "frames"}: lines is
    the object's whole record, frames its backtrace (address prefixes dropped)."""
    objects: list[dict] = []
    in_trace = False
    for raw in text.splitlines():
        m = _OBJECT.match(raw.strip())
        if m:
            objects.append({"object": m.group(1), "size": int(m.group(2)), "lines": [raw.rstrip()],
                            "frames": []})
            in_trace = False
            continue
        if not objects:
            continue
        objects[-1]["lines"].append(raw.rstrip())
        stripped = raw.strip()
        if stripped.startswith("backtrace"):
            in_trace = True
        elif in_trace and stripped:
            objects[-1]["frames"].append(_FRAME_ADDR.sub("", stripped))
    return objects


def module_of_frame(frame: str) -> str | None:
    """The module a backtrace frame runs in: its bracketed name; for a bare address, module
    code that is gone (unloaded, or init code freed after loading); None for the kernel."""
    m = _MODULE_FRAME.search(frame)
    if m:
        return m.group(1)
    if _BARE_ADDRESS.match(frame):
        return "module code no longer loaded"
    return None


def kmemleak_splats(text: str) -> tuple[list[dict], int]:
    """The leaks of a kmemleak report whose allocation went through a module (v4l2loopback,
    or any other module a cell loads), as health splats of pattern KMEMLEAK_SCAN, and how many
    suspects the report held in all (the others were allocated by the kernel alone: not the
    module's doing, reported as a count only)."""
    objects = parse_kmemleak(text)
    found = []
    for obj in objects:
        in_modules = [(f, m) for f in obj["frames"] if (m := module_of_frame(f))]
        if not in_modules:
            continue
        through = ", ".join(dict.fromkeys(m for _f, m in in_modules))
        first = in_modules[0][0]
        found.append({"pattern": KMEMLEAK_SCAN,
                      "line": f"unreferenced object {obj['object']} (size {obj['size']}) allocated "
                              f"through {through}: {first}",
                      "context": obj["lines"][:24]})
    return found, len(objects)
