"""The build cache key: unchanged inputs give the same key, any input change a new one."""

import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

from loopqual.common.paths import cache_lock
from loopqual.kernel.kernels import InstalledKernel
from loopqual.module import build


def kernel(release="6.1.0-56-amd64", headers="6.1.192-2"):
    return InstalledKernel("debian-6.1", release, Path("/boot/x"), Path("/lib/x"), headers)


def tree(tmp_path):
    t = tmp_path / "src"
    t.mkdir()
    (t / "v4l2loopback.c").write_text("int x;\n")
    (t / "Makefile").write_text("obj-m := v4l2loopback.o\n")
    return t


def test_cache_key_tracks_every_input(tmp_path):
    t = tree(tmp_path)
    k1 = build.cache_key(t, [], kernel(), "gcc 12")
    assert k1 == build.cache_key(t, [], kernel(), "gcc 12")
    (t / "v4l2loopback.o").write_text("build output")  # outputs do not count
    assert k1 == build.cache_key(t, [], kernel(), "gcc 12")
    assert k1 != build.cache_key(t, [], kernel(release="6.12.117+deb12-amd64"), "gcc 12")
    assert k1 != build.cache_key(t, [], kernel(headers="6.1.192-3"), "gcc 12")
    assert k1 != build.cache_key(t, [], kernel(), "gcc 13")
    patch = tmp_path / "0001-x.patch"
    patch.write_text("a")
    with_patch = build.cache_key(t, [patch], kernel(), "gcc 12")
    assert with_patch != k1
    patch.write_text("b")
    assert build.cache_key(t, [patch], kernel(), "gcc 12") != with_patch
    (t / "v4l2loopback.c").write_text("int y;\n")
    assert build.cache_key(t, [], kernel(), "gcc 12") != k1


def test_error_tail_starts_at_the_first_error():
    log = "\n".join([f"line {i}" for i in range(100)] + ["x.c:717:9: error: implicit strlcpy"]
                    + ["more"] * 5)
    tail = build._interesting_tail(log)
    assert any("error: implicit strlcpy" in x for x in tail)
    assert len(tail) <= build.LOG_TAIL_LINES


# ------------------------------------------------------------- the real build() on a fake kbuild
# build() runs `make -C <kernel build dir> M=<copy of the tree> modules`. A fake kernel build
# directory whose Makefile counts its runs and then runs a script chosen by the test (outside
# the tree, so that it does not change the cache key) exercises the real caching, locking and
# failure handling without a kernel.

FAKE_KBUILD = """modules:
\t@echo run >> "$(FAKE_COUNTER)"
\t@sh "$(FAKE_SCRIPT)" "$(M)"
"""

SCRIPTS = {
    "ok": 'sleep "${FAKE_SLEEP:-0}"; echo "  CC [M]  $1/v4l2loopback.o"\n'
          'printf "first half " > "$1/v4l2loopback.ko"; sleep "${FAKE_SLEEP:-0}"\n'
          'printf "second half" >> "$1/v4l2loopback.ko"\n',
    "compile-error": 'echo "$1/v4l2loopback.c:717:9: error: implicit declaration of strlcpy" >&2; exit 1\n',
    "oom": 'echo "gcc: fatal error: Killed signal terminated program cc1" >&2; exit 1\n',
    "disk": 'echo "$1/v4l2loopback.o: No space left on device" >&2; exit 1\n',
    "signal": 'kill -KILL $$\n',
    "make-killed": 'kill -TERM "$(ps -o ppid= -p $PPID)" $PPID; sleep 1\n',
    "missing-tool": 'pahole-not-installed -J "$1/v4l2loopback.ko"\n',
}


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake kernel (its kbuild dir), a source tree and a private cache; .use(script) picks
    what the next make does, .runs() how often make ran."""
    kb = tmp_path / "kbuild"
    kb.mkdir()
    (kb / "Makefile").write_text(FAKE_KBUILD)
    counter, script = tmp_path / "make-runs", tmp_path / "make-does.sh"
    monkeypatch.setenv("LOOPQUAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAKE_COUNTER", str(counter))
    monkeypatch.setenv("FAKE_SCRIPT", str(script))

    class Fake:
        cache = tmp_path / "cache"
        src = tree(tmp_path)
        kernel = InstalledKernel("fake", "6.1.0-fake", Path("/boot/x"), kb, "1")

        @staticmethod
        def use(name):
            script.write_text(SCRIPTS[name])

        @staticmethod
        def runs():
            return len(counter.read_text().split()) if counter.exists() else 0

        def build(self):
            return build.build("patched", self.src, [], self.kernel)

        def meta(self):
            (found,) = self.cache.glob("build/6.1.0-fake/patched-*/build.json")
            return found

    return Fake()


def test_a_compile_error_is_a_cached_result(fake):
    fake.use("compile-error")
    first = fake.build()
    assert first.status == "failed" and not first.cached and "strlcpy" in first.log_tail
    again = fake.build()
    assert again.status == "failed" and again.cached and fake.runs() == 1


@pytest.mark.parametrize("mode, what", [
    ("oom", "out of memory"), ("disk", "out of disk space"),
    ("signal", "killed by a signal"), ("make-killed", "killed by a signal"),
    ("missing-tool", "a tool is missing"),
])
def test_a_transient_failure_is_never_cached(fake, mode, what):
    fake.use(mode)
    with pytest.raises(build.BuildError, match=f"did not finish: .*{what}.*nothing was cached") as err:
        fake.build()
    print(err.value)
    assert "\n" not in str(err.value)
    assert not list(fake.cache.glob("build/*/*/build.json"))
    fake.use("ok")  # memory freed, disk cleaned, tool installed: the next run builds
    r = fake.build()
    assert r.status == "ok" and not r.cached and fake.runs() == 2


def test_missing_make_is_one_clear_error(fake, monkeypatch, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(build.BuildError, match="make is not installed"):
        fake.build()


def test_a_new_tool_version_is_a_new_key(fake, monkeypatch, tmp_path):
    """A compile failure cached under one pahole (or linker, make) is not the verdict for
    another: the tools are inputs of the build."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    pahole = bin_ / "pahole"
    pahole.write_text("#!/bin/sh\necho v1.24\n")
    pahole.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    fake.use("compile-error")
    assert fake.build().status == "failed"
    pahole.write_text("#!/bin/sh\necho v1.25\n")
    fake.use("ok")
    r = fake.build()
    assert r.status == "ok" and not r.cached and fake.runs() == 2


@pytest.mark.parametrize("damage", [
    lambda text: text[: len(text) // 2],                      # truncated (a run killed mid-write)
    lambda text: "not json at all",
    lambda text: "[1, 2]",
    lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "status"}),
    lambda text: json.dumps({**json.loads(text), "warnings": "one warning"}),
    lambda text: json.dumps({**json.loads(text), "status": "maybe"}),
    lambda text: json.dumps({**json.loads(text), "key": "0" * 20}),
    # written by the loopqual before this one: no schema, a failure of unknown cause
    lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "schema"}),
], ids=["truncated", "not-json", "not-object", "no-status", "wrong-type", "bad-status",
        "other-key", "old-schema"])
def test_a_corrupt_build_json_is_built_again(fake, capsys, damage):
    fake.use("ok")
    assert fake.build().status == "ok"
    meta = fake.meta()
    meta.write_text(damage(meta.read_text()))
    r = fake.build()
    assert r.status == "ok" and not r.cached and fake.runs() == 2
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and "build.json" in note[0] and note[0].endswith("building again")
    assert fake.build().cached  # and the rebuilt entry is whole again


def test_an_unfinished_build_is_not_used(fake):
    fake.use("ok")
    first = fake.build()
    fake.meta().unlink()  # as if the run died between make and build.json
    r = fake.build()
    assert r.status == "ok" and not r.cached and r.ko == first.ko and fake.runs() == 2


RACER = """
import json, sys
from pathlib import Path
from loopqual.module import build
from loopqual.kernel.kernels import InstalledKernel
k = InstalledKernel("fake", "6.1.0-fake", Path("/boot/x"), Path(sys.argv[1]), "1")
r = build.build("patched", Path(sys.argv[2]), [], k)
print(json.dumps({"status": r.status, "ko": r.ko, "cached": r.cached}))
"""


def test_two_runs_building_the_same_key_at_once(fake, monkeypatch):
    """Two processes build the same key at the same moment: one builds, the other waits
    (saying so once) and takes its result; make runs once and the module is whole."""
    fake.use("ok")
    monkeypatch.setenv("FAKE_SLEEP", "1")
    args = [sys.executable, "-c", RACER, str(fake.kernel.build_dir), str(fake.src)]
    # Both start while the test holds the build's lock, so that they meet at it whatever the
    # machine's speed; released, one builds and the other waits for it and takes its result.
    key = build.cache_key(fake.src, [], fake.kernel, build.toolchain_id())
    lock = fake.cache / "build" / fake.kernel.release / f"patched-{key}.lock"
    with cache_lock(lock, "the test's own hold"):
        procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        said = []
        for p in procs:
            ready, _, _ = select.select([p.stderr], [], [], 120)
            said.append(p.stderr.readline() if ready else "")
    outs = [p.communicate(timeout=120) for p in procs]
    outs = [(o[0], w + o[1]) for o, w in zip(outs, said, strict=True)]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = [json.loads(o[0]) for o in outs]
    assert [r["status"] for r in results] == ["ok", "ok"]
    assert sorted(r["cached"] for r in results) == [False, True]
    assert results[0]["ko"] == results[1]["ko"]
    assert Path(results[0]["ko"]).read_text() == "first half second half"
    assert fake.runs() == 1
    waits = [line for o in outs for line in o[1].splitlines() if "waiting" in line]
    # each waited for the test's hold and said so once (a process announces a lock once)
    assert len(waits) == 2 and all("the build of patched for 6.1.0-fake" in w for w in waits)
