"""The shared cache: where it is, and that two processes using it at once never see each
other's half-written files nor run a locked step at the same time (real files, real
processes)."""

import os
import select
import subprocess
import sys
import time

import pytest

from loopqual.common import paths


@pytest.fixture
def no_cache_env(monkeypatch):
    for var in ("LOOPQUAL_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)


def test_default_cache_is_xdg_cache_home(no_cache_env, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "xdg" / "loopqual"
    assert (tmp_path / "xdg" / "loopqual").is_dir()


def test_default_cache_without_xdg_is_home_dot_cache(no_cache_env, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.cache_dir() == tmp_path / "home" / ".cache" / "loopqual"
    # the XDG spec: a relative XDG_CACHE_HOME is ignored
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert paths.cache_dir() == tmp_path / "home" / ".cache" / "loopqual"


def test_loopqual_cache_overrides(no_cache_env, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("LOOPQUAL_CACHE", str(tmp_path / "mine"))
    assert paths.cache_dir() == tmp_path / "mine"


def test_unusable_cache_is_one_clear_error(monkeypatch, tmp_path):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("LOOPQUAL_CACHE", str(tmp_path / "a-file" / "cache"))
    with pytest.raises(paths.CacheError, match="cannot make the cache directory .*LOOPQUAL_CACHE"):
        paths.cache_dir()


def _spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


WRITER = """
import sys
from pathlib import Path
from loopqual.common.paths import atomic_write
target, me = Path(sys.argv[1]), sys.argv[2]
for i in range(40):
    atomic_write(target, (me * 200_000) + "\\n")
"""


def test_atomic_write_readers_never_see_a_part(tmp_path):
    target = tmp_path / "build.json"
    paths.atomic_write(target, "0" * 200_000 + "\n")
    whole = {c * 200_000 + "\n" for c in "0abc"}
    writers = [_spawn(WRITER, str(target), c) for c in "abc"]
    reads = 0
    while any(w.poll() is None for w in writers):
        assert target.read_text() in whole
        reads += 1
    for w in writers:
        assert w.wait() == 0, w.stderr.read()
    assert target.read_text() in whole and reads > 0
    assert [p.name for p in tmp_path.iterdir()] == ["build.json"]  # no temporary file left


LOCKER = """
import os, sys, time
from pathlib import Path
from loopqual.common.paths import cache_lock
lock, log = Path(sys.argv[1]), Path(sys.argv[2])
release = lock.with_suffix(".release")
with cache_lock(lock, "the test step"):
    with log.open("a") as fh:
        fh.write(f"start {os.getpid()}\\n"); fh.flush()
        deadline = time.monotonic() + 60  # held until the test says the other run waits
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        fh.write(f"end {os.getpid()}\\n")
"""


def test_cache_lock_serialises_processes_and_the_waiter_says_so_once(tmp_path):
    lock, log = tmp_path / "x.lock", tmp_path / "log"
    first = _spawn(LOCKER, str(lock), str(log))
    deadline = time.monotonic() + 20
    while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = _spawn(LOCKER, str(lock), str(log))
    # the first holds the lock until the second has said that it waits, however slowly the
    # second starts on a loaded machine
    ready, _, _ = select.select([second.stderr], [], [], 60)
    said = second.stderr.readline() if ready else ""
    (tmp_path / "x.release").touch()
    outs = [p.communicate(timeout=30) for p in (first, second)]
    outs[1] = (outs[1][0], said + outs[1][1])
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    lines = log.read_text().split()
    # start a, end a, start b, end b: never two starts in a row
    events = [lines[i] for i in range(0, len(lines), 2)]
    assert events == ["start", "end", "start", "end"]
    assert outs[0][1] == ""
    waiting = [line for line in outs[1][1].splitlines() if "waiting" in line]
    assert len(waiting) == 1 and f"pid {first.pid}" in waiting[0] and "the test step" in waiting[0]


def test_atomic_dir_leaves_nothing_on_error_and_replaces_whole(tmp_path):
    dest = tmp_path / "tree"
    with pytest.raises(RuntimeError), paths.atomic_dir(dest) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("unpack failed")
    assert list(tmp_path.iterdir()) == []
    dest.mkdir()
    (dest / "stale").write_text("from a run that died")
    with paths.atomic_dir(dest) as tmp:
        (tmp / "new").write_text("y")
    assert sorted(p.name for p in dest.iterdir()) == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["tree"]
    assert oct(os.stat(dest).st_mode & 0o777) == "0o755"


def test_a_cache_write_that_fails_is_one_clear_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(paths.CacheError, match=r"cannot write .*build.json .*LOOPQUAL_CACHE"):
        paths.atomic_write(tmp_path / "a-file" / "build.json", "{}")
    full = paths._disk_error(tmp_path / "x", OSError(28, "No space left on device"))
    assert "No space left on device" in str(full) and "free some space" in str(full)
