"""Out-of-tree module builds with kbuild, cached by a hash of what goes into them:
the source tree's files, the patches, the kernel release and headers version, and the
tools (compiler, linker, pahole, make). An unchanged second run compiles nothing.

A failed build is a result only when the compiler refused the code: that verdict is cached
(the same inputs fail the same way). A build that failed for a reason outside the code (out
of memory, out of disk, killed by a signal, a missing tool) is never cached: it is a
BuildError (the run is incomplete, exit 2) and the next run builds again.

Two runs may build the same key at once: the build directory is locked (cache_lock) and
build.json, written last and atomically, is what says that a build finished."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from loopqual.common.errors import LoopqualError
from loopqual.common.paths import atomic_write, cache_dir, cache_lock, remove_tree
from loopqual.kernel import buildroot
from loopqual.kernel.kernels import InstalledKernel

LOG_TAIL_LINES = 40
SCHEMA = 2  # of build.json; entries written by another schema are built again
_WARNING = re.compile(r"\bwarning: ")

# Why a build can fail without the code being at fault: (what, what to do, pattern).
_TRANSIENT = [
    ("out of memory", "free memory (or build with fewer jobs), then run again",
     re.compile(r"Killed signal terminated program|virtual memory exhausted|"
                r"out of memory allocating|: Cannot allocate memory$|"
                r"internal compiler error: Killed", re.M)),
    ("out of disk space", "free space on the cache's disk (or set LOOPQUAL_CACHE), then run again",
     re.compile(r"No space left on device|Disk quota exceeded", re.M)),
    ("a build step was killed by a signal", "run again",
     re.compile(r"^make(?:\[\d+\])?: \*\*\* \[.*\] (?:Killed|Terminated|Hangup|Interrupt)$|"
                r"^make(?:\[\d+\])?: \*\*\* \[.*\] Error 1(?:29|30|37|43)$|"
                # make itself signalled while it waits for a job:
                r"^make(?:\[\d+\])?: \*\*\* wait: ", re.M)),
    ("the build root could not be entered", "check that the cache's disk allows mounts and "
     "chroot (loopqual runs as root), then run again",
     re.compile(re.escape(buildroot.ENTER_FAILED) + r".*$", re.M)),
    ("a tool is missing", "install it (`make deps`; 6.12 kernels need dwarves for pahole), "
     "then run again",
     re.compile(r"^(?:\S+: (?:line )?\d+: )?\S+: (?:command )?not found$|"
                r"^make(?:\[\d+\])?: \S+: No such file or directory$|"
                r"^make(?:\[\d+\])?: \*\*\* \[.*\] Error 127$|"
                r"fatal error: cannot execute '[^']+'", re.M)),
]


class BuildError(LoopqualError):
    """The build could not be judged (its tools or the machine failed, not the code)."""


@dataclass
class BuildResult:
    module: str
    kernel: str
    release: str
    status: str  # ok | failed (the compiler refused the code)
    key: str
    ko: str | None
    log: str
    log_tail: str
    warnings: list[str]
    duration_s: float
    cached: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("log")
        d.pop("cached")
        return {"schema": SCHEMA, **d}


def _first_line(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return f"no-{cmd[0]}"
    out = (proc.stdout or proc.stderr).strip().splitlines()
    return out[0] if proc.returncode == 0 and out else f"no-{cmd[0]}"


def toolchain_id() -> str:
    """The versions of the tools whose output or verdict goes into the module: a new
    compiler, linker, pahole (BTF) or make gives a new cache key."""
    return " | ".join(_first_line(c) for c in (["gcc", "--version"], ["ld", "--version"],
                                               ["pahole", "--version"], ["make", "--version"]))


compiler_id = toolchain_id  # the name earlier callers know


def cache_key(tree: Path, patches: list[Path], kernel: InstalledKernel, compiler: str,
              make_args: tuple[str, ...] = ()) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in tree.rglob("*") if p.is_file()):
        rel = f.relative_to(tree)
        if rel.suffix in (".o", ".ko", ".cmd", ".mod", ".symvers", ".order") or rel.name.startswith("."):
            continue
        h.update(str(rel).encode() + b"\0" + f.read_bytes() + b"\0")
    for p in patches:
        h.update(b"patch\0" + p.name.encode() + b"\0" + p.read_bytes())
    h.update(f"\0{kernel.release}\0{kernel.headers_version}\0{compiler}".encode())
    if make_args:  # a plain build keeps the key it always had
        h.update(("\0make " + " ".join(make_args)).encode())
    return h.hexdigest()[:20]


def build(module: str, tree: Path, patches: list[Path], kernel: InstalledKernel,
          jobs: int = 2, ko_name: str = "v4l2loopback.ko",
          make_args: tuple[str, ...] = ()) -> BuildResult:
    """Build module for kernel (cached): on the host, or in the kernel's build root when it
    has one (its root key, which hashes every package version in it, stands for the tools).
    ko_name: the module file the tree makes (loopqual's own test module makes another).
    make_args: extra kbuild variables (the series check's W=1, C=2 CHECK=...), in the key."""
    try:
        tools = f"build root {kernel.root_key}" if kernel.root else toolchain_id()
        key = cache_key(tree, patches, kernel, tools, make_args)
    except OSError as exc:
        raise BuildError(f"cannot read the source of {module} ({exc}): check that "
                         f"{tree} is readable") from exc
    base = cache_dir() / "build" / kernel.release
    name = f"{_safe(module)}-{key}"
    out = base / name
    with cache_lock(base / f"{name}.lock", f"the build of {module} for {kernel.release}"):
        cached = _cached(out, key)
        if cached:
            return cached
        return _build(module, tree, kernel, key, out, jobs, ko_name, make_args)


def _check_meta(data: object, key: str) -> str | None:
    """What is wrong with a build.json, or None if it can stand for a build of key."""
    if not isinstance(data, dict):
        return "not a JSON object"
    if data.get("schema") != SCHEMA:
        return f"schema {data.get('schema')!r}, not {SCHEMA} (written by another loopqual)"
    types = {"module": str, "kernel": str, "release": str, "status": str, "key": str,
             "log_tail": str, "warnings": list, "duration_s": (int, float)}
    for field, typ in types.items():
        if not isinstance(data.get(field), typ):
            return f"field {field!r} missing or of the wrong type"
    if data["key"] != key:
        return f"key {data['key']!r} where {key!r} was expected"
    if not all(isinstance(w, str) for w in data["warnings"]):
        return "field 'warnings' is not a list of strings"
    if data["status"] == "ok":
        if not isinstance(data.get("ko"), str):
            return "status ok without a module path"
    elif data["status"] == "failed":
        if data.get("ko") is not None:
            return "status failed with a module path"
    else:
        return f"status {data['status']!r} (ok or failed expected)"
    return None


def _cached(out: Path, key: str) -> BuildResult | None:
    """The finished build in out, or None when there is none that can be trusted."""
    meta = out / "build.json"
    if not meta.exists():
        return None
    try:
        data = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problem: str | None = f"unreadable ({type(exc).__name__}: {str(exc)[:80]})"
    else:
        problem = _check_meta(data, key)
    if problem:
        print(f"loopqual: {meta}: {problem}; building again", file=sys.stderr, flush=True)
        return None
    assert isinstance(data, dict)
    if data["status"] == "ok" and not Path(data["ko"]).is_file():
        return None
    try:
        log = (out / "build.log").read_text(errors="replace")
    except OSError:
        log = ""
    fields = {f: data[f] for f in ("module", "kernel", "release", "status", "key", "ko",
                                   "log_tail", "warnings", "duration_s")}
    return BuildResult(**fields, log=log, cached=True)


def transient_failure(returncode: int, log: str) -> tuple[str, str, str] | None:
    """(what, what to do, the line that shows it) when a build failed for a reason outside
    the code; None when the compiler refused the code (a verdict worth caching)."""
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode).name
        except ValueError:
            sig = str(-returncode)
        return "make was killed by a signal", "run again", f"make ended by {sig}"
    for what, todo, pattern in _TRANSIENT:
        m = pattern.search(log)
        if m:
            return what, todo, m.group(0).strip()
    return None


def _build(module: str, tree: Path, kernel: InstalledKernel, key: str, out: Path,
           jobs: int, ko_name: str = "v4l2loopback.ko",
           make_args: tuple[str, ...] = ()) -> BuildResult:
    remove_tree(out)  # a build that never finished (no build.json), or one not to trust
    work = out / "src"
    try:
        out.mkdir(parents=True)
        shutil.copytree(tree, work)
    except OSError as exc:
        remove_tree(out)
        raise BuildError(f"cannot copy {tree} into the cache {out} ({exc.strerror or exc}): free "
                         f"space there or set LOOPQUAL_CACHE to a writable disk") from exc
    t0 = time.monotonic()
    if kernel.root:  # in the kernel's build root, the tree bound on /build
        cmd = buildroot.enter_command(kernel.root, work, [
            "make", f"-j{jobs}", "-C", str(kernel.build_dir), f"M={buildroot.BUILD_MOUNT}",
            *make_args, "modules"])
    else:
        cmd = ["make", f"-j{jobs}", "-C", str(kernel.build_dir), f"M={work}", *make_args,
               "modules"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    except FileNotFoundError as exc:
        raise BuildError(f"{cmd[0]} is not installed: install build-essential and util-linux "
                         "(`make deps`), then run again") from exc
    log = proc.stdout + proc.stderr
    atomic_write(out / "build.log", log)
    ko = work / ko_name
    ok = proc.returncode == 0 and ko.is_file()
    if not ok:
        transient = transient_failure(proc.returncode, log)
        if transient:
            what, todo, line = transient
            raise BuildError(f"build of {module} for {kernel.release} did not finish: {what} "
                             f"({line}); nothing was cached: {todo} (log: {out / 'build.log'})")
    result = BuildResult(
        module=module, kernel=kernel.name, release=kernel.release,
        status="ok" if ok else "failed", key=key, ko=str(ko) if ok else None, log=log,
        log_tail="\n".join(_interesting_tail(log)),
        warnings=[line for line in log.splitlines() if _WARNING.search(line)],
        duration_s=round(time.monotonic() - t0, 2),
    )
    atomic_write(out / "build.json", json.dumps(result.to_dict(), indent=1))
    return result


def _interesting_tail(log: str) -> list[str]:
    """The compiler's errors if there are any (they are what a reader needs), else the end."""
    lines = log.splitlines()
    errors = [i for i, line in enumerate(lines) if "error:" in line or "Error " in line]
    if errors:
        start = max(0, errors[0] - 3)
        return lines[start : start + LOG_TAIL_LINES]
    return lines[-LOG_TAIL_LINES:]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[-60:]
