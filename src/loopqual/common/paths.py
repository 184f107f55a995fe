"""Where loopqual keeps its things, and how the cache is shared safely.

The cache (downloads, unpacked sources, builds, probes) is shared by every clone and every
run on the machine: ``$LOOPQUAL_CACHE``, else ``$XDG_CACHE_HOME/loopqual``, else
``~/.cache/loopqual``. Two runs may use it at once, so everything in it is written
atomically (a temporary name in the same directory, then a rename) and every step that
changes shared state holds an flock on a lock file next to what it changes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from loopqual.common.errors import LoopqualError

REPO = Path(__file__).resolve().parents[3]  # src/loopqual/common/paths.py
KERNEL_DIR = REPO / "kernel"
SCENARIOS_DIR = REPO / "scenarios"


class CacheError(LoopqualError):
    """The cache directory cannot be made, locked or written."""


def default_cache_dir() -> Path:
    """The cache the ecosystem would expect: $XDG_CACHE_HOME/loopqual, else ~/.cache/loopqual.
    (The XDG spec says a relative $XDG_CACHE_HOME is to be ignored.)"""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "loopqual"
    try:
        home = Path.home()
    except RuntimeError as exc:
        raise CacheError(f"no home directory to keep the cache in ({exc}): set LOOPQUAL_CACHE "
                         "or XDG_CACHE_HOME to a writable directory") from exc
    return home / ".cache" / "loopqual"


def cache_dir() -> Path:
    """The cache for downloads, unpacked sources and builds (LOOPQUAL_CACHE overrides)."""
    env = os.environ.get("LOOPQUAL_CACHE")
    path = Path(env).expanduser().absolute() if env else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot make the cache directory {path} ({exc.strerror}): set "
                         "LOOPQUAL_CACHE to a writable directory") from exc
    return path


def _disk_error(path: Path, exc: OSError) -> CacheError:
    hint = ("free some space there, or set LOOPQUAL_CACHE to a disk with room"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT) else
            "check its permissions, or set LOOPQUAL_CACHE to a writable directory")
    return CacheError(f"cannot write {path} ({exc.strerror or exc}): {hint}")


def atomic_write(path: Path, data: str | bytes) -> None:
    """Replace path with data so that a reader sees the old file or the new one, never a part:
    write a temporary file in the same directory, fsync it, then os.replace it."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise _disk_error(path, exc) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


_ANNOUNCED: set[Path] = set()  # locks this process has said it waits for (once is enough)


@contextlib.contextmanager
def cache_lock(lock_file: Path, what: str) -> Iterator[None]:
    """Hold an exclusive flock on lock_file for the block. If another run holds it, say so on
    stderr (once per process and lock) and wait. The kernel drops the lock when its holder
    exits, however it exits, so a lock is never stale. Lock files stay in place: removing one
    would let two runs lock two different files under the same name."""
    lock_file = Path(lock_file)
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _disk_error(lock_file, exc) from exc
    try:
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                if lock_file not in _ANNOUNCED:
                    _ANNOUNCED.add(lock_file)
                    print(f"loopqual: another run{f' (pid {holder})' if holder.isdigit() else ''} is "
                          f"using {what}; waiting for it (lock {lock_file})", file=sys.stderr,
                          flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # a file system without flock (some network mounts)
            raise CacheError(f"cannot lock {lock_file} ({exc.strerror or exc}): put the cache on "
                             "a local disk (set LOOPQUAL_CACHE)") from exc
        with contextlib.suppress(OSError):  # who holds it, for the message above
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def remove_tree(path: Path) -> None:
    """Remove a cache directory that is incomplete or stale: first rename it out of the way
    (one atomic step, so nobody sees it half removed), then delete it."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
    os.replace(path, aside / path.name)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Fill a temporary directory next to dest; when the block ends without an error, it
    becomes dest in one rename (replacing whatever was there). On an error, nothing of it is
    left. Hold the lock for dest around this."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    except OSError as exc:
        raise _disk_error(dest, exc) from exc
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        remove_tree(dest)
        os.rename(tmp, dest)
    except OSError as exc:
        raise _disk_error(dest, exc) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
