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

from .errors import DataError

SPLATS_FILE = Path(__file__).resolve().parent.parent / "kernel" / "splats.toml"


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
