"""Drafting kernel/expected-failures.toml from a results directory: every failure of a gated
cell, grouped by item, scoped to exactly the parameter sets and kernels where it failed (so
that nothing listed passes elsewhere: the gate would call that unexpectedly passing).
A draft: every entry's reason must be read and written by a person before it is committed
(the loader refuses its TODO reasons), and its category chosen (it says "pending")."""

from __future__ import annotations

import re
from collections import defaultdict

_SOURCE_LINE = re.compile(r"^[\w.-]+\.cpp\(\d+\): ")


def _pattern(text: str) -> str:
    """A detail regex for one failure line, readable: only regex syntax escaped, and
    v4l2-compliance's "file.cpp(line): " left out where the message says enough on its own
    (line numbers change between v4l2-compliance versions)."""
    text = text.strip()
    message = _SOURCE_LINE.sub("", text)
    if len(message) >= 8:
        text = message
    return re.sub(r"([\\.^$*+?{}\[\]|()])", r"\\\1", text)


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def draft(run: dict) -> str:
    fails: dict[tuple[str, str], dict] = {}
    ran: dict[tuple[str, str], set] = defaultdict(set)
    for c in run["cells"]:
        if not c["gated"]:
            continue
        where = (c["kernel"], c["param_set"])
        for sc in c.get("scenarios", []):
            key = ("scenario", sc["id"])
            if sc["status"] != "skip":
                ran[key].add(where)
            if sc["status"] in ("fail", "error", "xfail"):
                first = (sc.get("message") or "").strip().splitlines()[:1]
                e = fails.setdefault(key, {"where": set(), "rules": sc["rules"], "message": first,
                                           "details": set()})
                e["where"].add(where)
                e["details"].update(_pattern(x) for x in first)
        for r in c.get("compliance", []):
            for t in r.get("tests", []):
                key = ("compliance", f"{r['profile']}::{t['section']}/{t['name']}")
                if t["status"] != "skip":
                    ran[key].add(where)
                if t["status"] in ("fail", "xfail"):
                    detail = next((d for d in t["details"] if d.startswith("fail:")), "")
                    e = fails.setdefault(key, {"where": set(), "rules": [], "message": [detail],
                                               "details": set()})
                    e["where"].add(where)
                    if detail:
                        e["details"].add(_pattern(detail.removeprefix("fail:")))
    out = ["# Draft from a results directory: read every entry, write its reason, then commit.",
           ""]
    for (kind, item), e in sorted(fails.items()):
        kernels = sorted({k for k, _ in e["where"]})
        sets = sorted({p for _, p in e["where"]})
        everywhere = e["where"] == ran[(kind, item)]
        out.append("[[failure]]")
        out.append(f"kind = {_q(kind)}")
        out.append(f"id = {_q(item)}")
        # the failures' own text (each cell's first fail: line, or the scenario's message): an
        # entry excuses only the failures it names; empty when there was none: write one
        out.append(f"detail = {_q('|'.join(sorted(e['details'])))}")
        if not everywhere:
            out.append(f"param_sets = [{', '.join(_q(s) for s in sets)}]")
            all_kernels = sorted({k for k, _ in ran[(kind, item)]})
            if kernels != all_kernels:
                out.append(f"kernels = [{', '.join(_q(k) for k in kernels)}]")
        out.append(f"rule = {_q(','.join(e['rules']) or '?')}")
        out.append('issue = "4"')
        out.append('category = "pending"  # or "inherent" / "policy": see the file\'s header')
        out.append(f"reason = {_q('TODO: ' + (e['message'][0] if e['message'] else ''))}")
        out.append("")
    return "\n".join(out)
