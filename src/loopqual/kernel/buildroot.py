"""Build roots: a Debian system of a kernel's own suite (its compiler, kbuild and headers),
made with mmdebstrap from Debian's packages, in which modules for that kernel are built.
Kernels newer than the host's need one: their kbuild tools want a newer glibc and their
own compiler (sid's 7.2 headers were made with gcc-16; bookworm has gcc-12, glibc 2.36).

A root is planned before it is made: apt-get -s, with the suite's private apt state and an
empty dpkg status, says which packages and versions it would hold. The root's key hashes
the suites, the mirror and those versions, so a root is reused while they are unchanged and
a new one is made when any changes (<cache>/roots/<suite>-<key>). It is made under a lock in
a temporary directory renamed into place when complete (a failed or interrupted mmdebstrap
leaves nothing), and mmdebstrap runs in a mount namespace of its own, so no mount it makes
outlives it. Builds run in it the same way: unshare a mount namespace, bind the module tree
on /build, mount /proc and a /tmp, chroot, make; the mounts vanish with the process."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from loopqual.common.errors import LoopqualError
from loopqual.common.paths import atomic_dir, atomic_write, cache_dir, cache_lock
from loopqual.debian.apt import PrivateApt, apt_error

SCHEMA = 1  # of root.json and of what a root holds; a new one gives every root a new key
ALWAYS = ("make", "binutils")  # beyond the headers (which pull the compiler and kbuild;
# trixie's gcc-14-for-host does not pull an assembler)
META = "root.json"  # written last: a root without it was never finished
BUILD_MOUNT = "/build"  # where a build binds its module tree inside the root
ENTER_FAILED = "loopqual: cannot enter the build root"
MMDEBSTRAP_TIMEOUT_S = 1800


class RootError(LoopqualError):
    """A build root cannot be planned or made."""


_INST = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) ([^\[]*?)\s*\[([^\]]+)\]\)", re.M)


def parse_simulation(text: str) -> dict[str, str]:
    """apt-get -s install's "Inst PACKAGE (VERSION ARCHIVE [ARCH])" lines as package -> version."""
    return {m.group(1): m.group(2) for m in _INST.finditer(text)}


_COMPILER = re.compile(r"^gcc-(\d+)(?:-x86-64-linux-gnu)?$")


def compiler_of(packages: dict[str, str]) -> str:
    """The C compiler a root holds, "gcc-N VERSION" (the newest gcc-N if several), or "" if none."""
    found = sorted(((int(m.group(1)), v) for p, v in packages.items()
                    if (m := _COMPILER.match(p))), reverse=True)
    return f"gcc-{found[0][0]} {found[0][1]}" if found else ""


_NOT_FOUND = [
    re.compile(r"Unable to locate package (\S+)"),
    re.compile(r"Version '[^']+' for '([^']+)' was not found"),
    re.compile(r"Package '([^']+)' has no installation candidate"),
    re.compile(r"Couldn't find any package by (?:glob|regex) '([^']+)'"),
]
_UNMET = re.compile(r"^\s*(\S+) : (?:Pre)?Depends: (.+?)\s*$", re.M)
_FETCH = re.compile(r"^E: Failed to fetch \S+/([^/_\s]+)_[^/\s]+\.deb\s+(.*)$", re.M)


def apt_failure(output: str) -> tuple[str, str] | None:
    """(the package apt could not get, apt's line saying so) from apt-get or mmdebstrap
    output, or None when it names none."""
    for pattern in _NOT_FOUND:
        m = pattern.search(output)
        if m:
            return m.group(1), m.group(0)
    m = _UNMET.search(output)
    if m:
        return m.group(1), f"{m.group(1)} depends on {m.group(2)}"
    m = _FETCH.search(output)
    if m:
        return m.group(1), f"download failed: {m.group(2).strip()}"
    return None


@dataclass(frozen=True)
class RootPlan:
    suite: str  # the kernel's suite
    base: str  # the suite the root is made of (suite itself unless it is a partial one)
    sources: tuple[str, ...]  # sources.list lines
    include: tuple[str, ...]  # what is asked for (the headers pinned to their version)
    packages: dict[str, str] = field(hash=False)  # package -> version, as apt planned it
    key: str = ""

    @property
    def path(self) -> Path:
        return cache_dir() / "roots" / f"{self.suite}-{self.key}"

    @property
    def compiler(self) -> str:
        return compiler_of(self.packages)


def make_key(sources: list[str] | tuple[str, ...], include: list[str] | tuple[str, ...],
             packages: dict[str, str]) -> str:
    h = hashlib.sha256(f"schema {SCHEMA}\n".encode())
    for line in sources:
        h.update(f"source {line}\n".encode())
    for p in include:
        h.update(f"include {p}\n".encode())
    for p, v in sorted(packages.items()):
        h.update(f"{p} {v}\n".encode())
    return h.hexdigest()[:16]


def plan(apt: PrivateApt, include: list[str], why: str) -> RootPlan:
    """What a root for apt's suites holding include would be (apt-get -s, nothing made)."""
    include = [*include, *(p for p in ALWAYS if p not in include)]
    with tempfile.TemporaryDirectory(prefix="loopqual-status-") as tmp:
        status = Path(tmp) / "status"
        status.write_text("")
        proc = apt.simulate(include, status)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        failure = apt_failure(out)
        if failure:
            raise RootError(f"the build root for {why} cannot be made: apt could not get "
                            f"{failure[0]} from {' + '.join(apt.suites)} ({failure[1]})")
        raise RootError(f"the build root for {why} cannot be planned: "
                        f"{apt_error(out) or f'apt-get -s exit {proc.returncode}'}")
    packages = parse_simulation(out)
    if not packages:
        raise RootError(f"the build root for {why}: apt-get -s planned no package "
                        f"(output: {out.strip().splitlines()[-1:] or ['none']})")
    sources = tuple(apt.sources_list().splitlines())
    return RootPlan(apt.suite, apt.suites[0], sources, tuple(include), packages,
                    make_key(sources, include, packages))


def info(path: Path) -> dict | None:
    """A finished root's root.json, or None (not made, or never finished)."""
    try:
        data = json.loads((path / META).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def host_apt_options() -> list[str]:
    """The machine's apt settings that decide whether the archive is accepted (this machine's
    apt may accept a Release file past its Valid-Until); mmdebstrap's apt does not read the
    machine's configuration, so they are passed on."""
    proc = subprocess.run(["apt-config", "dump"], capture_output=True, text=True)
    out = []
    for line in proc.stdout.splitlines():
        m = re.match(r'^(Acquire::(?:Check-Valid-Until|Check-Date|Max-ValidTime)) "([^"]*)";$', line)
        if m:
            out.append(f'{m.group(1)} "{m.group(2)}"')
    return out


def mmdebstrap_command(p: RootPlan, dest: Path) -> list[str]:
    cmd = ["unshare", "--mount", "--propagation", "private", "--",
           "mmdebstrap", "--mode=root", "--format=directory", "--variant=essential",
           "--include=" + ",".join(p.include)]
    cmd += [f"--aptopt={o}" for o in host_apt_options()]
    return [*cmd, p.base, str(dest), *p.sources]


def ensure(p: RootPlan, say=print) -> tuple[Path, float | None]:
    """The root of plan p, made if it is not cached: (its path, seconds it took to make or
    None when it was cached)."""
    dest = p.path
    if info(dest):
        return dest, None
    with cache_lock(dest.parent / f"{dest.name}.lock", f"the build root {dest.name}"):
        if info(dest):  # another run made it while this one waited
            return dest, None
        say(f"loopqual: making the build root {dest.name} ({len(p.packages)} packages, "
            f"{p.compiler or 'no compiler'}) with mmdebstrap")
        t0 = time.monotonic()
        with atomic_dir(dest) as tmp:
            try:
                proc = subprocess.run(mmdebstrap_command(p, tmp), capture_output=True, text=True,
                                      errors="replace", timeout=MMDEBSTRAP_TIMEOUT_S)
            except FileNotFoundError as exc:
                raise RootError("mmdebstrap is not installed: `make deps` (or apt-get install "
                                "mmdebstrap), then run again") from exc
            except subprocess.TimeoutExpired as exc:
                raise RootError(f"mmdebstrap made no root for {p.suite} within "
                                f"{MMDEBSTRAP_TIMEOUT_S} s; nothing was kept") from exc
            out = proc.stdout + proc.stderr
            if proc.returncode != 0:
                failure = apt_failure(out)
                what = (f"apt could not get {failure[0]} ({failure[1]})" if failure else
                        apt_error(out) or f"mmdebstrap exit {proc.returncode}")
                raise RootError(f"the build root for {p.suite} could not be made: {what}; "
                                f"nothing was kept")
            (tmp / BUILD_MOUNT.lstrip("/")).mkdir(exist_ok=True)
            held = installed(tmp)
            made_s = round(time.monotonic() - t0, 1)
            atomic_write(tmp / META, json.dumps({
                "schema": SCHEMA, "suite": p.suite, "base": p.base, "key": p.key,
                "sources": list(p.sources), "include": list(p.include),
                "compiler": compiler_of(held) or p.compiler, "packages": held,
                "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "made_s": made_s,
                "bytes": _size(tmp)}, indent=1))
    return dest, made_s


def installed(root: Path) -> dict[str, str]:
    """The packages a root holds (its dpkg database, read from the host)."""
    proc = subprocess.run(["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", "-W",
                           "-f", "${Package} ${Version} ${db:Status-Abbrev}\n"],
                          capture_output=True, text=True)
    return {f[0]: f[1] for f in (ln.split() for ln in proc.stdout.splitlines())
            if len(f) >= 3 and f[2].startswith("ii")}


def _size(path: Path) -> int:
    proc = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True)
    try:
        return int(proc.stdout.split()[0])
    except (IndexError, ValueError):
        return 0


def enter_command(root: Path, tree: Path, argv: list[str]) -> list[str]:
    """argv run as root in the build root, with tree bound on /build, its own /proc and /tmp,
    in a mount namespace of its own (the mounts vanish with it, however it ends); a clean,
    C-locale environment. If the root cannot be entered, ENTER_FAILED is printed (exit 125)."""
    script = (f'mount --bind "$1" "$2{BUILD_MOUNT}" && mount -t proc proc "$2/proc" && '
              f'mount -t tmpfs tmpfs "$2/tmp" || {{ echo "{ENTER_FAILED}" >&2; exit 125; }}; '
              'r=$2; shift 2; exec chroot "$r" "$@"')
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
            str(tree), str(root), "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME=/root", "LC_ALL=C.UTF-8", *argv]
