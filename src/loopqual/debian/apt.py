"""Debian's archive through a private apt configuration: the machine's own apt sources are
never touched. Index lists, version order, downloads checked against the index's SHA256,
and .deb files unpacked once into loopqual's cache.

Runs share the cache: the private apt state of a suite (its lists, archives and downloads)
is used under one lock, and every unpacked tree is made in a temporary directory under its
own lock and renamed into place when complete, so a tree in the cache is whole."""

from __future__ import annotations

import functools
import hashlib
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from loopqual.common.errors import LoopqualError
from loopqual.common.paths import atomic_dir, atomic_write, cache_dir, cache_lock, remove_tree
from loopqual.config.data import Mirror


class AptError(LoopqualError):
    """A package could not be had from Debian's archive."""

def run(cmd: list[str], what: str, error: type[LoopqualError] | None = None,
        **kw) -> subprocess.CompletedProcess:
    """cmd's completed process; its exit code other than 0 raises `error` (AptError by
    default) with the command and the last lines of its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", **kw)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise (error or AptError)(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc


def debian_mirror_from_apt() -> str:
    """The Debian archive URL the machine's apt configuration uses (Origin/Label Debian)."""
    proc = subprocess.run(
        ["apt-get", "indextargets", "--format", "$(REPO_URI) $(ORIGIN) $(LABEL)"],
        capture_output=True, text=True,
    )
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "Debian" and parts[2] == "Debian":
            return parts[0].rstrip("/")
    raise AptError(
        "no Debian archive in the machine's apt configuration (apt-get indextargets shows "
        "none with Origin Debian): run `apt-get update`, or set LOOPQUAL_MIRROR=<archive URL>"
    )


class PrivateApt:
    """apt-get with its own sources.list, lists and cache under the loopqual cache.

    suite: the suite whose packages are wanted; base: a suite it is used on top of (a kernel
    from trixie-backports is installed on trixie, one from experimental on sid): both are in
    the sources.list, and the state is kept apart from either alone (apt/<base>+<suite>)."""

    def __init__(self, mirror: Mirror, suite: str, base: str | None = None):
        if not mirror.url:
            mirror = Mirror(debian_mirror_from_apt(), mirror.components)
        self.mirror, self.suite, self.base = mirror, suite, base if base != suite else None
        self.name = f"{self.base}+{suite}" if self.base else suite
        self.root = cache_dir() / "apt" / self.name
        self._indexes: dict[str, dict[str, list[dict[str, str]]]] = {}
        with self.locked():
            self._make_root()

    def _make_root(self) -> None:
        for sub in ("lists/partial", "cache/archives/partial", "sourceparts", "debs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        listing = self.root / "sources.list"
        text = self.sources_list()
        if not listing.exists() or listing.read_text() != text:
            atomic_write(listing, text)

    def sources_list(self) -> str:
        return "".join(f"deb {self.mirror.url} {s} {' '.join(self.mirror.components)}\n"
                       for s in self.suites)

    @property
    def suites(self) -> list[str]:
        return [self.base, self.suite] if self.base else [self.suite]

    def locked(self):
        """The lock on this suite's apt state (sources.list, lists, archives, debs); apt's
        own locking is off (Debug::NoLocking: it needs root), this one replaces it."""
        return cache_lock(self.root.parent / f"{self.name}.lock",
                          f"the private apt state for {self.name}")

    def _opts(self) -> list[str]:
        r = self.root
        return [
            "-o", f"Dir::Etc::SourceList={r / 'sources.list'}",
            "-o", f"Dir::Etc::SourceParts={r / 'sourceparts'}",
            "-o", f"Dir::State::Lists={r / 'lists'}",
            "-o", f"Dir::Cache={r / 'cache'}",
            "-o", "APT::Sandbox::User=root",
            "-o", "Debug::NoLocking=1",
        ]

    def _packages_files(self, suite: str | None = None) -> list[Path]:
        # Compressed or not, depending on the machine's Acquire::GzipIndexes setting.
        files = sorted(p for p in (self.root / "lists").glob("*_Packages*") if p.is_file())
        return [p for p in files if suite is None or f"_dists_{suite}_" in p.name]

    def _read_index(self, path: Path) -> str:
        proc = run(["/usr/lib/apt/apt-helper", "cat-file", str(path)], f"reading {path.name}")
        return proc.stdout

    def index_age_s(self) -> float | None:
        """Seconds since the index was downloaded; None if it never was."""
        files = self._packages_files()
        return time.time() - min(p.stat().st_mtime for p in files) if files else None

    def update(self, force: bool = False, max_age_s: float | None = None) -> None:
        """Download the index if there is none (or force, or it is older than max_age_s).
        A suite the mirror does not serve is one line naming it; if this was the first
        download, the private state made for it is removed (nothing half-made stays)."""
        age = self.index_age_s()
        if age is not None and not force and (max_age_s is None or age <= max_age_s):
            return
        self._indexes.clear()
        proc = subprocess.run(["apt-get", *self._opts(), "-q", "update"],
                              capture_output=True, text=True)
        missing = [s for s in self.suites if not self._packages_files(s)]
        if proc.returncode != 0 or missing:
            why = apt_error(proc.stdout + proc.stderr) or f"apt-get update exit {proc.returncode}"
            if age is None:  # made for this download only: leave nothing of it behind
                remove_tree(self.root)
            where = f"suite {' / '.join(missing)}" if missing else f"suites {' + '.join(self.suites)}"
            raise AptError(f"the mirror {self.mirror.url} does not serve {where} "
                              f"(components {' '.join(self.mirror.components)}): {why}")

    def index(self, suite: str | None = None) -> dict[str, list[dict[str, str]]]:
        """The suite's Packages index (every suite's if None) as package -> stanzas, read
        once per instance."""
        key = suite or ""
        if key not in self._indexes:
            out: dict[str, list[dict[str, str]]] = {}
            for path in self._packages_files(suite):
                for fields in parse_packages(self._read_index(path)):
                    out.setdefault(fields["Package"], []).append(fields)
            self._indexes[key] = out
        return self._indexes[key]

    def index_entries(self, package: str, suite: str | None = None) -> list[dict[str, str]]:
        """The package's stanzas in the downloaded Packages index."""
        return list(self.index(suite).get(package, []))

    def newest(self, package: str, suite: str | None = None) -> dict[str, str] | None:
        """The package's stanza of the highest version in the suite, None if it has none."""
        entries = self.index_entries(package, suite)
        return max(entries, key=functools.cmp_to_key(
            lambda a, b: compare_versions(a["Version"], b["Version"]))) if entries else None

    def simulate(self, packages: list[str], status: Path) -> subprocess.CompletedProcess:
        """apt-get -s install of packages on an empty system (status: an empty dpkg status
        file): which packages and versions a root made of these suites would hold. Only this
        configuration counts: the machine's preferences and recommends settings are left out."""
        empty = self.root / "preferences.d"
        empty.mkdir(exist_ok=True)
        cmd = ["apt-get", *self._opts(), "-o", f"Dir::State::status={status}",
               "-o", "Dir::Etc::Preferences=/dev/null", "-o", f"Dir::Etc::PreferencesParts={empty}",
               "-o", "APT::Install-Recommends=false", "-o", "APT::Install-Suggests=false",
               "-q", "-s", "install", *packages]
        return subprocess.run(cmd, capture_output=True, text=True, env={"LC_ALL": "C.UTF-8",
                                                                        "PATH": "/usr/bin:/bin"})

    def fetch(self, package: str, version: str) -> Path:
        """Download package=version (cached), checked against the index's SHA256."""
        with self.locked():
            return self._fetch(package, version)

    def _fetch(self, package: str, version: str) -> Path:
        self.update()
        entries = self.index_entries(package)
        match = [e for e in entries if e.get("Version") == version]
        if not match:
            # The index may be stale: refresh once before calling the version gone.
            self.update(force=True)
            entries = self.index_entries(package)
            match = [e for e in entries if e.get("Version") == version]
        if not match:
            served = ", ".join(sorted({e.get("Version", "?") for e in entries})) or "none"
            raise AptError(
                f"{package} {version} is not served by {self.mirror.url} {self.suite} "
                f"(it serves: {served}); update the version in kernel/sources.toml"
            )
        entry = match[0]
        deb = self.root / "debs" / Path(entry["Filename"]).name
        if not deb.exists() or _sha256(deb) != entry["SHA256"]:
            run(["apt-get", *self._opts(), "-q", "download", f"{package}={version}"],
                 f"download of {package} {version}", cwd=self.root / "debs")
        if not deb.exists():
            raise AptError(f"apt-get download did not produce {deb}")
        got = _sha256(deb)
        if got != entry["SHA256"]:
            deb.unlink()
            raise AptError(
                f"{deb.name}: SHA256 {got} does not match the repository index "
                f"({entry['SHA256']}); the download was removed, run again"
            )
        return deb


def parse_packages(text: str) -> list[dict[str, str]]:
    """A Packages index's stanzas as dicts of their single-line fields."""
    out = []
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines()
                      if ": " in line and not line.startswith(" "))
        if "Package" in fields and "Version" in fields:
            out.append(fields)
    return out


_APT_ERROR = re.compile(r"^E: (.+)$", re.M)


def apt_error(output: str) -> str | None:
    """apt's first error line (the one that names the package or the repository), without
    its "E: ", or None when apt said no error."""
    m = _APT_ERROR.search(output)
    return m.group(1).strip() if m else None


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    """dpkg's comparison of an upstream version or a revision (lib/dpkg/version.c)."""
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _split_version(v: str) -> tuple[int, str, str]:
    epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch or 0), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """Debian version order (as dpkg --compare-versions): < 0, 0 or > 0."""
    ea, ua, ra = _split_version(a)
    eb, ub, rb = _split_version(b)
    if ea != eb:
        return ea - eb
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unpack_once(dest: Path, what: str, fetch: Callable[[], Path],
                extract: Callable[[Path, Path], None], find: Callable[[Path], Path | None],
                error: type[LoopqualError]) -> Path:
    """The tree unpacked in dest, made once: fetch() gives the .deb, extract(deb, tmp) unpacks
    it into a temporary directory that is renamed into place whole, find(dir) locates the
    tree in such a directory. Runs that want it at once wait for each other (a lock); a
    directory whose unpacking did not finish is never used."""
    def unpacked() -> Path | None:
        return find(dest) if (dest / ".unpacked").exists() else None

    tree = unpacked()
    if tree:
        return tree
    with cache_lock(dest.parent / f"{dest.name}.lock", what):
        tree = unpacked()  # another run may have unpacked it while this one waited
        if tree:
            return tree
        deb = fetch()
        with atomic_dir(dest) as tmp:
            extract(deb, tmp)
            (tmp / ".unpacked").write_text(f"{deb.name}\n")
    tree = unpacked()
    if not tree:
        raise error(f"{dest}: the unpacked tree vanished; run again")
    return tree
