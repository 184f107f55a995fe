"""Debug kernels: loopqual's own build of a Debian kernel source package with the detectors a
production kernel lacks (KASAN, KFENCE, lockdep, kmemleak, UBSAN, DEBUG_LIST, DEBUG_OBJECTS).

What a debug kernel is, is data: kernel/debug-kernels.toml names the source package, its
version and suite, and the configuration fragments (kernel/*.config). The steps:

1. source: the package is downloaded with the private apt machinery (src/loopqual/debian/apt.py,
   SHA256-checked; never installed on the machine) and its tarball unpacked once into
   <cache>/debug-kernels/src/ (made whole in a temporary directory, then renamed).
2. plan: x86_64_defconfig, then virtme-ng's minimal guest configuration
   (`virtme-configkernel --defconfig --dry-run` gives its lines), then the fragments in order,
   then `make olddefconfig`. Every line of the fragments must hold in the result (Kconfig
   drops a symbol whose dependencies are unmet without a word): one that does not stops here,
   before anything is compiled. The resulting .config is cached by a hash of its inputs, so a
   later run does not run make to know it.
3. build: the key is a hash of the source package and version, the resulting .config and the
   compiler and linker versions; the tree is <cache>/debug-kernels/<name>-<key>/. A kernel
   build directory is a few GB and kbuild can resume one, so it is built IN PLACE under the
   key's lock, with `nice -n 19` (it soaks up idle CPU and leaves guests theirs), and the
   marker file `.finished` is written last: a directory without it is never used, an
   interrupted build is resumed by make on the next run.
4. The module builds use that tree (`make -C <tree> M=...`), so kbuild hands them the tree's
   flags: the module gets the same sanitizers.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from loopqual.common import procgroup
from loopqual.common.errors import DataError, LoopqualError
from loopqual.common.paths import KERNEL_DIR, atomic_write, cache_dir, cache_lock, remove_tree
from loopqual.config import data
from loopqual.config.data import Kernel, Mirror
from loopqual.config.schema import Entry
from loopqual.debian import apt
from loopqual.kernel.installedkernel import InstalledKernel

DEBUG_KERNELS_FILE = KERNEL_DIR / "debug-kernels.toml"
FINISHED = ".finished"
ARCH_DEFCONFIG = "x86_64_defconfig"


class DebugKernelError(LoopqualError):
    """A debug kernel cannot be planned, fetched or built."""


# ------------------------------------------------------------------------------ the data
@dataclass(frozen=True)
class DebugSpec:
    name: str
    source_package: str
    version: str
    suite: str
    fragments: tuple[Path, ...]
    expected_objects: int


class _DebugEntry(Entry):
    source_package: str = Field(description="a Debian package name (a string)")
    version: str = Field(description="an exact Debian version (a string)")
    suite: str = Field(description='a Debian suite, e.g. "bookworm-security"')
    fragments: list[str] = Field(min_length=1, description='a list of files in kernel/, e.g. '
                                 '["debug-6.12.config"]')
    expected_objects: int = Field(gt=0, description="an integer above 0")


def load_specs(path: Path = DEBUG_KERNELS_FILE) -> dict[str, DebugSpec]:
    """Every [debug.NAME] entry; a malformed file or entry is a DataError naming it, as for
    every other data file (data.load_toml, named_table, validate_entry)."""
    raw = data.load_toml(path, {"debug"})
    out = {}
    for name, entry in data.named_table(path, raw, "debug").items():
        e = data.validate_entry(path, f"debug.{name}", _DebugEntry, entry)
        frags = tuple(path.parent / f for f in e.fragments)
        for f in frags:
            if not f.is_file():
                raise DataError(f"{path}: [debug.{name}]: fragment {f.name} not found "
                                f"in {path.parent}")
        out[name] = DebugSpec(name, e.source_package, e.version, e.suite, frags,
                              e.expected_objects)
    return out


def spec_for(kernel: Kernel, path: Path = DEBUG_KERNELS_FILE) -> DebugSpec:
    specs = load_specs(path)
    if kernel.name not in specs:
        raise DebugKernelError(f"kernel {kernel.name} is a debug kernel but {path.name} has no "
                               f"[debug.\"{kernel.name}\"] entry (it has: "
                               f"{', '.join(specs) or 'none'})")
    return specs[kernel.name]


# ------------------------------------------------------------------- configuration logic
_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse_config(text: str, where: str = "", strict: bool = False) -> dict[str, str]:
    """A .config or fragment as {symbol: value}; "is not set" is "n". A later line wins (as in
    Kconfig). strict: any other line that is not blank or a comment is an error."""
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        m = _SET.match(line)
        if m:
            out[m.group(1)] = m.group(2)
            continue
        m = _UNSET.match(line)
        if m:
            out[m.group(1)] = "n"
            continue
        if strict and line and not line.startswith("#"):
            raise DebugKernelError(f"{where}:{n}: not a configuration line: {line!r} (use "
                                   "CONFIG_FOO=y or '# CONFIG_FOO is not set')")
    return out


def wanted(fragments: Iterable[Path]) -> dict[str, str]:
    """What the fragments ask for, all together (a later fragment wins)."""
    out: dict[str, str] = {}
    for f in fragments:
        out.update(parse_config(f.read_text(), str(f), strict=True))
    return out


def compose(virtme_lines: list[str], fragments: Iterable[Path]) -> str:
    """The text appended to the arch defconfig: virtme-ng's lines, then each fragment."""
    parts = ["# virtme-ng minimal guest configuration (virtme-configkernel --defconfig)",
             *virtme_lines]
    for f in fragments:
        parts += [f"# loopqual fragment {f.name}", f.read_text()]
    return "\n".join(parts) + "\n"


def unmet(want: dict[str, str], config_text: str) -> list[tuple[str, str, str]]:
    """(symbol, wanted, got) for every wanted value the resulting .config does not have;
    a symbol absent from the .config counts as "n" (Kconfig omits invisible symbols)."""
    have = parse_config(config_text)
    out = []
    for sym, value in want.items():
        got = have.get(sym, "n")
        if got != value:
            out.append((sym, value, got))
    return out


def describe_unmet(name: str, missing: list[tuple[str, str, str]]) -> str:
    shown = ", ".join(f"{s}={w} (got {g})" for s, w, g in missing[:8])
    more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
    return (f"debug kernel {name}: the configuration does not take {shown}{more}: a dependency "
            "is unmet or the symbol does not exist in this source; fix the fragment in kernel/")


def build_key(package: str, version: str, config_text: str, tools: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(f"{package}\0{version}\0".encode())
    h.update(config_text.encode())
    for k in sorted(tools):
        h.update(f"\0{k}={tools[k]}".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------- progress
_STEP = re.compile(r"^\s+(CC|AS|CC \[M\])\s+(\S+\.o)\s*$")


class Progress:
    """Counts the objects kbuild compiles, from its quiet output ("  CC      mm/slub.o")."""

    def __init__(self, total: int, out=None, clock: Callable[[], float] = time.monotonic,
                 every_s: float = 30.0):
        self.total, self.done, self.clock = total, 0, clock
        self.out = out if out is not None else sys.stderr
        self.t0 = clock()
        self.every_s = every_s
        self.last_shown = -every_s
        self.tty = hasattr(self.out, "isatty") and self.out.isatty()

    def feed(self, line: str) -> bool:
        """True if the line was a compile step."""
        if not _STEP.match(line):
            return False
        self.done += 1
        self.show()
        return True

    def line(self) -> str:
        el = int(self.clock() - self.t0)
        total = max(self.total, self.done)
        pct = 100 * self.done // total if total else 0
        return (f"{self.done}/{total} files compiled ({pct}%), "
                f"{el // 60}:{el % 60:02d} elapsed")

    def show(self, force: bool = False) -> None:
        now = self.clock() - self.t0
        if self.tty:
            self.out.write(f"\r  {self.line()}  ")
        elif force or now - self.last_shown >= self.every_s:
            self.out.write(f"  {self.line()}\n")
            self.last_shown = now
        else:
            return
        self.out.flush()

    def finish(self) -> None:
        if self.tty:
            self.out.write("\n")
        self.show(force=not self.tty)


def count_steps(log: str) -> int:
    return sum(1 for line in log.splitlines() if _STEP.match(line))


# ------------------------------------------------------------------------------- steps
def _root() -> Path:
    return cache_dir() / "debug-kernels"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _tool_version(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise DebugKernelError(f"{cmd[0]} is not installed: a kernel build needs it "
                               "(`make deps` installs build-essential)") from exc
    return (proc.stdout.splitlines() or [""])[0].strip()


def tools() -> dict[str, str]:
    return {"gcc": _tool_version(["gcc", "--version"]), "ld": _tool_version(["ld", "--version"])}


def check_host_tools() -> None:
    need = {"flex": "flex", "bison": "bison", "bc": "bc", "pahole": "dwarves",
            "make": "make", "gcc": "gcc", "xz": "xz-utils"}
    missing = sorted({pkg for exe, pkg in need.items() if not shutil.which(exe)})
    if not Path("/usr/include/libelf.h").exists():
        missing.append("libelf-dev")
    if not Path("/usr/include/openssl/ssl.h").exists():
        missing.append("libssl-dev")
    if missing:
        raise DebugKernelError(f"a kernel build needs {' '.join(missing)}: `make deps` installs "
                               f"them (or `apt-get install {' '.join(missing)}`)")


def suite_mirror(suite: str) -> Mirror:
    """The archive the machine's apt uses for this suite (debian-security for *-security)."""
    env = "LOOPQUAL_SECURITY_MIRROR" if suite.endswith("-security") else "LOOPQUAL_MIRROR"
    if os.environ.get(env):
        return Mirror(os.environ[env].rstrip("/"), ("main",))
    proc = subprocess.run(["apt-get", "indextargets", "--format", "$(REPO_URI) $(RELEASE)"],
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == suite:
            return Mirror(parts[0].rstrip("/"), ("main",))
    raise DebugKernelError(f"the machine's apt configuration has no archive for {suite} "
                           f"(apt-get indextargets): add it to /etc/apt/sources.list.d, or set "
                           f"{env}=<archive URL>")


def source_tree(spec: DebugSpec) -> Path:
    """The unpacked kernel source (downloaded and unpacked once)."""

    def fetch() -> Path:
        try:
            return apt.PrivateApt(suite_mirror(spec.suite), spec.suite).fetch(
                spec.source_package, spec.version)
        except apt.AptError as exc:  # its advice names sources.toml: here the file is ours
            raise DebugKernelError(str(exc).replace("kernel/sources.toml",
                                                    f"{DEBUG_KERNELS_FILE.name}")) from None

    def extract(deb: Path, tmp: Path) -> None:
        print(f"loopqual: unpacking {deb.name}", file=sys.stderr, flush=True)
        _run(["dpkg-deb", "-x", str(deb), str(tmp / "deb")], f"unpacking {deb.name}")
        tarballs = sorted((tmp / "deb" / "usr" / "src").glob("linux-source-*.tar.*"))
        if len(tarballs) != 1:
            raise DebugKernelError(f"{deb.name}: expected one usr/src/linux-source-*.tar.* "
                                   f"inside, found {len(tarballs)}")
        _run(["tar", "-xf", str(tarballs[0]), "-C", str(tmp)], f"unpacking {tarballs[0].name}")
        shutil.rmtree(tmp / "deb")
        if not _find_tree(tmp):
            raise DebugKernelError(f"{deb.name}: no kernel tree (Makefile, Kconfig) inside")

    return apt.unpack_once(_root() / "src" / _safe(f"{spec.source_package}_{spec.version}"),
                           f"the kernel source {spec.version}", fetch, extract, _find_tree,
                           DebugKernelError)


def _find_tree(dest: Path) -> Path | None:
    hits = sorted(p.parent for p in dest.glob("linux-source-*/Kconfig"))
    return hits[0] if hits else None


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    return apt.run(cmd, what, DebugKernelError, **kw)


def virtme_lines() -> list[str]:
    exe = Path(sys.executable).parent / "virtme-configkernel"
    cmd = [str(exe) if exe.exists() else "virtme-configkernel", "--defconfig", "--dry-run"]
    try:
        return _run(cmd, "virtme-configkernel").stdout.splitlines()
    except FileNotFoundError as exc:
        raise DebugKernelError("virtme-configkernel (virtme-ng) not found: run `make venv`") \
            from exc


@dataclass(frozen=True)
class Plan:
    name: str
    spec: DebugSpec
    config: str
    key: str
    tools: dict

    @property
    def build_dir(self) -> Path:
        return _root() / f"{_safe(self.name)}-{self.key}"


def plan(spec: DebugSpec, tree: Path | None = None, make_allowed: bool = True) -> Plan:
    """The .config this spec gives (cached by a hash of the inputs) and the build key.
    make_allowed=False: only a cached plan (no download, no make), else DebugKernelError."""
    want = wanted(spec.fragments)  # a malformed fragment stops here, before any download
    lines = virtme_lines()
    appended = compose(lines, spec.fragments)
    tv = tools()
    h = hashlib.sha256()
    h.update(f"{spec.source_package}\0{spec.version}\0{ARCH_DEFCONFIG}\0".encode())
    h.update(appended.encode())
    h.update(json.dumps(tv, sort_keys=True).encode())
    cached = _root() / "plans" / f"{_safe(spec.name)}-{h.hexdigest()[:16]}.config"
    if cached.exists():
        config = cached.read_text()
    elif not make_allowed:
        raise DebugKernelError(f"debug kernel {spec.name} is not built yet (its configuration "
                               f"was never made here): run `loopqual build --kernel {spec.name}`")
    else:
        tree = tree or source_tree(spec)
        config = make_config(tree, appended)
        missing = unmet(want, config)
        if missing:
            raise DebugKernelError(describe_unmet(spec.name, missing))
        atomic_write(cached, config)
    return Plan(spec.name, spec, config, build_key(spec.source_package, spec.version, config,
                                                    tv), tv)


def make_config(tree: Path, appended: str) -> str:
    _root().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=_root(), prefix=".plan-"))
    try:
        _run(["make", "-s", "-C", str(tree), f"O={tmp}", ARCH_DEFCONFIG], "make defconfig")
        with (tmp / ".config").open("a") as fh:
            fh.write("\n" + appended)
        _run(["make", "-s", "-C", str(tree), f"O={tmp}", "olddefconfig"], "make olddefconfig")
        return (tmp / ".config").read_text()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def finished(build_dir: Path) -> dict | None:
    try:
        return json.loads((build_dir / FINISHED).read_text())
    except (OSError, ValueError):
        return None


def _make_logged(cmd: list[str], log_path: Path, prog: Progress) -> int:
    """Run make, its output appended to log_path and fed to prog; its exit code."""
    with log_path.open("a") as log:
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        try:  # a session of its own: on Ctrl-C or SIGTERM, the whole of make is stopped
            proc = procgroup.spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, text=True, errors="replace")
        except FileNotFoundError as exc:
            raise DebugKernelError("make or nice is not installed (`make deps`)") from exc
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                prog.feed(line)
            return proc.wait()
        except BaseException:
            procgroup.stop(proc, grace=15)  # SIGTERM: kbuild deletes the targets it was writing
            raise


def build(p: Plan, out=None) -> dict:
    """Build the plan's kernel (if not built yet) and return its .finished record."""
    bd = p.build_dir
    done = finished(bd)
    if done:
        return done
    with cache_lock(_root() / f"{bd.name}.lock", f"the build of debug kernel {p.name}"):
        done = finished(bd)  # another run may have built it while this one waited
        if done:
            return done
        check_host_tools()
        tree = source_tree(p.spec)
        prune_unfinished(p.name, keep=bd)
        bd.mkdir(parents=True, exist_ok=True)
        config = bd / ".config"
        if not config.exists() or config.read_text() != p.config:
            atomic_write(config, p.config)
        total = _counted_objects(p.name) or p.spec.expected_objects
        jobs = os.cpu_count() or 1
        cmd = ["nice", "-n", "19", "make", "-C", str(tree), f"O={bd}", f"-j{jobs}", "all"]
        print(f"loopqual: building debug kernel {p.name} ({p.spec.source_package} "
              f"{p.spec.version}, key {p.key}) in {bd}\n  {' '.join(cmd)}  (log: "
              f"{bd / 'build.log'})", file=out or sys.stderr, flush=True)
        prog = Progress(total, out=out)
        t0 = time.monotonic()
        rc = _make_logged(cmd, bd / "build.log", prog)
        prog.finish()
        elapsed = time.monotonic() - t0
        bzimage = bd / "arch" / "x86" / "boot" / "bzImage"
        if rc != 0 or not bzimage.is_file():
            tail = "\n".join(_error_tail((bd / "build.log").read_text(errors="replace")))
            raise DebugKernelError(f"debug kernel {p.name}: make failed (exit {rc}); the tree "
                                   f"is left unfinished in {bd} and the next run resumes it "
                                   f"(log: {bd / 'build.log'}):\n{tail}")
        record = {
            "name": p.name, "source_package": p.spec.source_package,
            "version": p.spec.version, "key": p.key, "tools": p.tools,
            "release": (bd / "include" / "config" / "kernel.release").read_text().strip(),
            "bzimage": str(bzimage), "bzimage_bytes": bzimage.stat().st_size,
            "objects_compiled": prog.done, "build_s": round(elapsed, 1), "jobs": jobs,
            "command": cmd,
        }
        if prog.done > p.spec.expected_objects // 2:  # a full build, not a resumed tail
            atomic_write(_root() / f"{_safe(p.name)}.objects", f"{prog.done}\n")
        atomic_write(bd / FINISHED, json.dumps(record, indent=1) + "\n")  # last: it is done
        return record


def prune_unfinished(name: str, keep: Path) -> list[Path]:
    """Remove the unfinished build trees of this kernel under other keys (a configuration or
    compiler that changed before its build finished): each is a few GB nobody will resume.
    A tree whose lock another run holds (it is being built) is left alone; finished trees
    of other keys stay (another clone may still use them)."""
    removed = []
    for other in sorted(_root().glob(f"{_safe(name)}-*")):
        if other == keep or not other.is_dir() or finished(other) is not None:
            continue
        lock = _root() / f"{other.name}.lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # being built by another run right now
            print(f"loopqual: removing the unfinished build {other} (another configuration)",
                  file=sys.stderr, flush=True)
            remove_tree(other)
            removed.append(other)
        finally:
            os.close(fd)
    return removed


def _counted_objects(name: str) -> int:
    try:
        return int((_root() / f"{_safe(name)}.objects").read_text().strip())
    except (OSError, ValueError):
        return 0


def _error_tail(log: str, n: int = 12) -> list[str]:
    lines = log.splitlines()
    errs = [i for i, line in enumerate(lines) if "error:" in line or "Error " in line]
    if errs:
        return lines[max(0, errs[0] - 2): errs[0] - 2 + n]
    return lines[-n:]


def resolve(kernel: Kernel, build_it: bool = True) -> InstalledKernel:
    """The debug kernel as loopqual boots and builds against it; built first if needed
    (build_it), else a clear error if it is not built."""
    spec = spec_for(kernel)
    p = plan(spec, make_allowed=build_it)
    record = finished(p.build_dir)
    if record is None:
        if not build_it:
            raise DebugKernelError(f"debug kernel {kernel.name} is not built yet: run "
                                   f"`loopqual build --kernel {kernel.name}`")
        record = build(p)
    return InstalledKernel(kernel.name, record["release"], Path(record["bzimage"]),
                           p.build_dir, f"{spec.version}+{p.key}", suite="debug",
                           version=spec.version, compiler=p.tools.get("gcc", ""),
                           config=p.build_dir / ".config", arg=kernel.name)
