"""Edit the kernel patch series (kernel/patches/) the way a kernel developer would.

``edit`` builds a git work tree: the pristine module source committed as "base", then
every patch of kernel/patches/series applied on top with ``git am`` (one commit each).
Change the commits there (``git commit --amend``, ``git rebase -i base``, new commits),
then ``export`` writes every commit since "base" back to kernel/patches/ as
``git format-patch`` files and rewrites kernel/patches/series to list them in order.

Stdlib only; git is run as a subprocess.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from loopqual.common.errors import LoopqualError
from loopqual.common.paths import KERNEL_DIR, REPO

PATCH_DIR = KERNEL_DIR / "patches"
SERIES_FILE = PATCH_DIR / "series"
# In the clone, not in the shared cache (paths.cache_dir): it holds this clone's unexported
# commits, which another clone's `export` must never pick up.
DEFAULT_WORK = REPO / ".cache" / "series-work"
BASE_TAG = "base"

# Fixed identity and dates so that "base" is the same commit wherever it is made.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "loopqual",
    "GIT_AUTHOR_EMAIL": "loopqual@localhost",
    "GIT_COMMITTER_NAME": "loopqual",
    "GIT_COMMITTER_EMAIL": "loopqual@localhost",
}
_BASE_DATE = "2000-01-01T00:00:00Z"


COVER_LETTER = "0000-cover-letter.patch"


def _git(work: Path, *args: str, env: dict[str, str] | None = None) -> str:
    full_env = dict(os.environ)
    full_env.update(_GIT_ENV)
    # Let the developer's own identity win for the commits they make.
    for key in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL"):
        if key in os.environ:
            full_env[key] = os.environ[key]
    if env:
        full_env.update(env)
    proc = subprocess.run(
        ["git", "-C", str(work), *args],
        env=full_env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise LoopqualError(
            f"git {' '.join(args)} failed in {work} (exit {proc.returncode}):\n"
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout


def read_series(series_file: Path = SERIES_FILE) -> list[Path]:
    """The patch files named by a series file, in order; none if there is no series file."""
    from loopqual.module.sources import read_series as read_existing_series

    return read_existing_series(series_file) if series_file.exists() else []


def edit(
    base_dir: Path | str,
    work: Path | str = DEFAULT_WORK,
    series_file: Path | str = SERIES_FILE,
    force: bool = False,
) -> Path:
    """Make ``work`` a git tree: ``base_dir`` committed as "base", then each patch via git am.

    ``base_dir`` is the pristine, unpacked module source (for example
    ``sources.unpack_debian()`` of the patched source's base). An existing ``work`` is refused
    unless ``force`` is true (it may hold commits not yet exported).
    Returns the work tree's path.
    """
    base_dir = Path(base_dir)
    work = Path(work)
    series_file = Path(series_file)
    if not base_dir.is_dir():
        raise LoopqualError(f"pristine source {base_dir} is not a directory")
    patches = read_series(series_file)
    if work.exists():
        if not force:
            raise LoopqualError(
                f"{work} exists (it may hold unexported commits); export it first, "
                "or pass --force to start again from the series"
            )
        shutil.rmtree(work)
    shutil.copytree(base_dir, work, symlinks=True)
    # Build products do not belong in the base commit.
    (work / ".gitignore").write_text(
        "*.o\n*.ko\n*.mod\n*.mod.c\n.*.cmd\nmodules.order\nModule.symvers\n.tmp_versions/\n"
    )
    _git(work, "init", "-q", "-b", "main")
    _git(work, "config", "core.autocrlf", "false")
    _git(work, "add", "-A")
    _git(
        work,
        "commit",
        "-q",
        "-m",
        f"base: pristine {base_dir.name}",
        env={"GIT_AUTHOR_DATE": _BASE_DATE, "GIT_COMMITTER_DATE": _BASE_DATE},
    )
    _git(work, "tag", BASE_TAG)
    for patch in patches:
        try:
            _git(work, "am", "-q", "--keep-cr", str(patch.resolve()))
        except LoopqualError as err:
            subprocess.run(["git", "-C", str(work), "am", "--abort"], capture_output=True)
            raise LoopqualError(f"{patch.name} does not apply onto {base_dir}:\n{err}") from err
    return work


def export(
    work: Path | str = DEFAULT_WORK,
    patch_dir: Path | str = PATCH_DIR,
    base_name: str = "its base source",
) -> list[Path]:
    """Write the commits since "base" in ``work`` to ``patch_dir`` and rewrite its series.

    Old ``*.patch`` files in ``patch_dir`` are removed first, so a dropped or renamed
    commit leaves nothing stale behind. Returns the new patch files in order.
    """
    work = Path(work)
    patch_dir = Path(patch_dir)
    if not (work / ".git").exists():
        raise LoopqualError(f"{work} is not a series work tree (run `edit` first)")
    status = _git(work, "status", "--porcelain", "--untracked-files=no")
    if status.strip():
        raise LoopqualError(f"{work} has uncommitted changes; commit them first:\n{status}")
    count = int(_git(work, "rev-list", "--count", f"{BASE_TAG}..HEAD").strip())
    patch_dir.mkdir(parents=True, exist_ok=True)
    for old in patch_dir.glob("*.patch"):
        if old.name != COVER_LETTER:  # written by `series cover-letter` from results, kept
            old.unlink()
    names: list[str] = []
    if count:
        out = _git(
            work,
            "format-patch",
            "-q",
            "--no-signature",
            "--zero-commit",
            "--no-stat",
            "-N",
            "-o",
            str(patch_dir.resolve()),
            f"{BASE_TAG}..HEAD",
        )
        names = [Path(line).name for line in out.splitlines() if line.strip()]
        if not names:  # -q suppresses the listing on some git versions
            names = sorted(p.name for p in patch_dir.glob("*.patch") if p.name != COVER_LETTER)
    header = (
        f"# loopqual's buffer-management series for {base_name}, applied in this order\n"
        "# with `patch -p1`. Generated by `loopqual series export`; edit with\n"
        "# `loopqual series edit` (see kernel/README.md).\n"
    )
    (patch_dir / "series").write_text(header + "".join(f"{n}\n" for n in names))
    return [patch_dir / n for n in names]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="loopqual series", description="Edit the kernel patch series as git commits."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_edit = sub.add_parser("edit", help="make a git work tree: base + one commit per patch")
    p_edit.add_argument("--base-dir", required=True, type=Path, help="pristine module source")
    p_edit.add_argument("work", nargs="?", type=Path, default=DEFAULT_WORK)
    p_edit.add_argument("--force", action="store_true", help="replace an existing work tree")
    p_exp = sub.add_parser("export", help="write commits since base back to kernel/patches/")
    p_exp.add_argument("work", nargs="?", type=Path, default=DEFAULT_WORK)
    p_exp.add_argument("--patch-dir", type=Path, default=PATCH_DIR)
    args = parser.parse_args(argv)
    try:
        if args.command == "edit":
            work = edit(args.base_dir, args.work, force=args.force)
            n = len(read_series())
            print(f"{work}: base + {n} patch(es) applied; edit, commit, then `export`")
        else:
            written = export(args.work, args.patch_dir)
            print(f"wrote {len(written)} patch(es) to {args.patch_dir}")
    except LoopqualError as err:
        print(f"loopqual series: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
