"""Tools that run from a Debian root of their own suite: a v4l2-compliance newer than the
host's (scenarios/suites.toml, [tool.NAME]).

Before a guest boots, each tool the selected suites name gets its root: planned with apt
(the suite's private apt state), made with mmdebstrap into loopqual's cache and reused while
the package versions are unchanged (buildroot.py). The guest shares the host's filesystem,
so it sees the root at the same path and runs the tool chrooted there, with /dev, /proc and
/sys bound in (src/loopqual/guest/runner.py, tool_command)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loopqual.common.errors import LoopqualError
from loopqual.config import data
from loopqual.debian.apt import AptError, PrivateApt
from loopqual.kernel import buildroot

INDEX_MAX_AGE_S = 24 * 3600  # a suite's index older than this is downloaded again


class ToolError(LoopqualError):
    pass


@dataclass(frozen=True)
class PreparedTool:
    name: str
    suite: str
    root: Path
    program: str
    version: str  # of the package that carries the program
    made_s: float | None  # seconds the root took to make now; None when it was cached

    def to_plan(self) -> dict:
        """What the guest needs to run it."""
        return {"name": self.name, "root": str(self.root), "program": self.program,
                "version": self.version}


def prepare(tool: data.Tool, mirror: data.Mirror, say=print) -> PreparedTool:
    """The tool's root, made if needed (never while a guest runs: call before booting)."""
    why = f"tool {tool.name} ({' '.join(tool.packages)} from {tool.suite})"
    try:
        apt = PrivateApt(mirror, tool.suite)
        with apt.locked():
            apt.update(max_age_s=INDEX_MAX_AGE_S)
    except AptError as exc:
        raise ToolError(f"{why}: {exc}") from None
    plan = buildroot.plan(apt, list(tool.packages), why)
    root, made_s = buildroot.ensure(plan, say=say)
    program = root / "usr" / "bin" / tool.program
    if not program.is_file():
        raise ToolError(f"{why}: the root {root} has no /usr/bin/{tool.program}; check "
                        f"[tool.{tool.name}] packages in {data.SUITES_FILE}")
    held = buildroot.installed(root)
    version = next((held[p] for p in tool.packages if p in held), "")
    return PreparedTool(tool.name, tool.suite, root, tool.program, version, made_s)


def prepare_for(suites: list[data.Suite], mirror: data.Mirror, say=print
                ) -> dict[str, PreparedTool]:
    """Every tool these suites name, prepared once each."""
    tools = data.load_tools()
    out: dict[str, PreparedTool] = {}
    for s in suites:
        if s.tool and s.tool not in out:
            out[s.tool] = prepare(tools[s.tool], mirror, say=say)
    return out
