"""The build cache key: unchanged inputs give the same key, any input change a new one."""

from pathlib import Path

from loopqual import build
from loopqual.kernels import InstalledKernel


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
