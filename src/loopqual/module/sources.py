"""Module sources: Debian's v4l2loopback-dkms downloaded (loopqual.debian.apt) and unpacked
into the cache, and the patch series applied for patched sources. Every unpacked or patched
tree is made in a temporary directory under its own lock and renamed into place when
complete, so a tree in the cache is whole."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

from loopqual.common.errors import LoopqualError
from loopqual.common.paths import atomic_dir, cache_dir, cache_lock
from loopqual.config.data import Mirror, Source
from loopqual.debian.apt import PrivateApt, run, unpack_once


class SourceError(LoopqualError):
    """A module source could not be unpacked or patched."""


def unpack_debian(src: Source, mirror: Mirror) -> Path:
    """The pristine tree of an archive source (downloaded and unpacked once)."""
    assert src.package and src.version and src.suite

    def extract(deb: Path, tmp: Path) -> None:
        run(["dpkg-deb", "-x", str(deb), str(tmp / "deb")], f"unpacking {deb.name}", SourceError)
        if not _find_tree(tmp):
            raise SourceError(f"{deb.name}: no usr/src/v4l2loopback-*/v4l2loopback.c inside")

    return unpack_once(cache_dir() / "src" / src.name / src.version, f"the unpacked source {src.name}",
                       lambda: PrivateApt(mirror, src.suite).fetch(src.package, src.version),
                       extract, _find_tree, SourceError)


def _find_tree(dest: Path) -> Path | None:
    hits = sorted((dest / "deb" / "usr" / "src").glob("v4l2loopback-*/v4l2loopback.c"))
    return hits[0].parent if hits else None


def read_series(series: Path) -> list[Path]:
    """The patch files named by a series file, in order (blank lines and # comments skipped)."""
    if not series.exists():
        raise SourceError(f"{series}: series file not found")
    patches = []
    for n, line in enumerate(series.read_text().splitlines(), 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        p = series.parent / name
        if not p.is_file():
            raise SourceError(f"{series}:{n}: patch '{name}' not found")
        patches.append(p)
    return patches


def apply_series(base: Path, series: Path, dest: Path) -> list[Path]:
    """Copy base to dest and apply the series with patch -p1; fail loudly naming the patch."""
    patches = read_series(series)
    apply_patches(base, patches, dest)
    return patches


def apply_patches(base: Path, patches: list[Path], dest: Path) -> None:
    """Copy base to dest and apply patches in order with patch -p1 (the first that does not
    apply is named, and dest is removed)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(base, dest)
    for p in patches:
        proc = subprocess.run(
            ["patch", "-p1", "--batch", "--forward", "--no-backup-if-mismatch", "-i", str(p)],
            cwd=dest, capture_output=True, text=True,
        )
        if proc.returncode != 0:
            shutil.rmtree(dest, ignore_errors=True)
            out = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
            raise SourceError(
                f"patch {p.name} does not apply to {base.name}:\n{out}\n"
                f"Rebase it with `loopqual series edit`, fix the conflict, then "
                f"`loopqual series export`."
            )


def module_version(tree: Path) -> str:
    """The version the tree says it is (dkms.conf PACKAGE_VERSION, else the directory name)."""
    conf = tree / "dkms.conf"
    if conf.exists():
        m = re.search(r'^PACKAGE_VERSION="?([^"\n]+)"?', conf.read_text(), re.M)
        if m:
            return m.group(1)
    m = re.match(r"v4l2loopback-(.+)", tree.name)
    return m.group(1) if m else "unknown"


def prepare(src: Source, sources: dict[str, Source], mirror: Mirror) -> tuple[Path, list[Path]]:
    """The source tree to build for src, and the patch files applied to it."""
    if src.kind == "local":
        assert src.path
        return src.path, []
    if src.kind == "debian":
        return unpack_debian(src, mirror), []
    assert src.base and src.patches
    base = unpack_debian(sources[src.base], mirror)
    patches = read_series(src.patches)
    key = hashlib.sha256()
    key.update(str(base).encode())
    for p in patches:
        key.update(p.name.encode() + b"\0" + p.read_bytes())
    top = cache_dir() / "src" / src.name / key.hexdigest()[:16]
    dest = top / base.name
    if (top / ".applied").exists():
        return dest, patches
    with cache_lock(top.parent / f"{top.name}.lock", f"the patched source {src.name}"):
        if not (top / ".applied").exists():
            with atomic_dir(top) as tmp:
                apply_series(base, src.patches, tmp / base.name)
                (tmp / ".applied").write_text("\n".join(p.name for p in patches) + "\n")
    return dest, patches
