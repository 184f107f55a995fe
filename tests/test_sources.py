"""Module sources against the real Debian archive (the one this machine's apt uses), through
loopqual's private apt configuration in a temporary cache: a few seconds, network needed."""

import hashlib
import json
import select
import subprocess
import sys
from pathlib import Path

import pytest

from loopqual.common.paths import cache_lock
from loopqual.config import data
from loopqual.debian import apt as apt_
from loopqual.module import sources


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPQUAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_sids_newest_release_is_a_stock_source(private_cache):
    """issue 9 step: upstream's newest release, as Debian sid ships it, is fetched from sid
    through the private apt configuration and unpacked as it is (never installed by dkms)."""
    mirror, all_sources = data.load_sources()
    src = all_sources["debian-0.15.4"]
    assert (src.suite, src.version, src.gated) == ("sid", "0.15.4-2", False)
    tree = sources.unpack_debian(src, mirror)
    assert (tree / "v4l2loopback.c").is_file() and sources.module_version(tree) == "0.15.4"


def test_archive_source_is_fetched_checked_and_unpacked(private_cache):
    mirror, all_sources = data.load_sources()
    tree = sources.unpack_debian(all_sources["debian-0.15.0"], mirror)
    assert (tree / "v4l2loopback.c").is_file()
    assert sources.module_version(tree) == "0.15.0"
    deb = next((private_cache / "apt" / "trixie" / "debs").glob("*.deb"))
    apt = apt_.PrivateApt(mirror, "trixie")
    (entry,) = [e for e in apt.index_entries("v4l2loopback-dkms") if e["Version"] == "0.15.0-2"]
    assert hashlib.sha256(deb.read_bytes()).hexdigest() == entry["SHA256"]


def test_a_version_the_mirror_does_not_serve_names_the_ones_it_does(private_cache):
    mirror, all_sources = data.load_sources()
    gone = data.Source(name="old", package="v4l2loopback-dkms", version="0.12.5-1", suite="bookworm")
    with pytest.raises(apt_.AptError, match=r"0\.12\.5-1 is not served.*it serves: 0\.12\.7-2"):
        sources.unpack_debian(gone, mirror)


def test_a_corrupt_download_is_refused_and_removed(private_cache):
    mirror, all_sources = data.load_sources()
    src = all_sources["debian-0.12.7"]
    apt = apt_.PrivateApt(mirror, src.suite)
    deb = apt.fetch(src.package, src.version)
    deb.write_bytes(b"not a deb")
    # a cached file with the wrong hash is downloaded again, never used
    again = apt.fetch(src.package, src.version)
    assert again.read_bytes()[:7] == b"!<arch>"


def test_patch_that_does_not_apply_fails_loudly(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "v4l2loopback.c").write_text("int a;\n")
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "0001-x.patch").write_text(
        "--- a/v4l2loopback.c\n+++ b/v4l2loopback.c\n@@ -1 +1 @@\n-int b;\n+int c;\n")
    (patches / "series").write_text("# comment\n0001-x.patch\n")
    dest = tmp_path / "out"
    with pytest.raises(sources.SourceError, match="patch 0001-x.patch does not apply"):
        sources.apply_series(base, patches / "series", dest)
    assert not dest.exists()


def test_series_naming_a_missing_patch_is_an_error(tmp_path):
    (tmp_path / "series").write_text("0001-missing.patch\n")
    with pytest.raises(sources.SourceError, match="series:1: patch '0001-missing.patch' not found"):
        sources.read_series(tmp_path / "series")


def test_the_committed_series_applies_to_the_pristine_base(private_cache, tmp_path):
    mirror, all_sources = data.load_sources()
    patched = all_sources["patched"]
    base = sources.unpack_debian(all_sources[patched.base], mirror)
    applied = sources.apply_series(base, patched.patches, tmp_path / "tree")
    assert [p.name for p in applied] == [p.name for p in sources.read_series(patched.patches)]


UNPACKER = """
import json, sys
from loopqual.config import data
from loopqual.module import sources
mirror, all_sources = data.load_sources()
src = all_sources[sys.argv[1]]
tree, patches = sources.prepare(src, all_sources, mirror)
print(json.dumps({"tree": str(tree), "patches": [p.name for p in patches]}))
"""


def _race(source: str, n: int = 2) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, "-c", UNPACKER, source], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * n, outs
    return [json.loads(o[0]) for o in outs]


def _files(tree: Path) -> dict[str, bytes]:
    return {str(p.relative_to(tree)): p.read_bytes() for p in sorted(tree.rglob("*")) if p.is_file()}


def test_two_runs_fetch_and_unpack_the_same_source_at_once(private_cache):
    """A fresh cache, two processes: apt update, download and unpack happen once each
    (the other run waits), and both get the same whole tree; no temporary left behind."""
    results = _race("debian-0.13.2")
    trees = {r["tree"] for r in results}
    assert len(trees) == 1
    tree = Path(trees.pop())
    assert (tree / "v4l2loopback.c").is_file() and sources.module_version(tree) == "0.13.2"
    mirror, all_sources = data.load_sources()
    apt = apt_.PrivateApt(mirror, "bookworm-backports")
    (entry,) = [e for e in apt.index_entries("v4l2loopback-dkms") if e["Version"] == "0.13.2-1~bpo12+1"]
    (deb,) = (private_cache / "apt" / "bookworm-backports" / "debs").glob("*.deb")
    assert hashlib.sha256(deb.read_bytes()).hexdigest() == entry["SHA256"]
    leftovers = [p for p in private_cache.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []


def test_two_runs_patch_the_same_source_at_once(private_cache, tmp_path):
    mirror, all_sources = data.load_sources()
    patched = all_sources["patched"]
    base = sources.unpack_debian(all_sources[patched.base], mirror)
    results = _race("patched")
    assert results[0] == results[1]
    expected = tmp_path / "expected"
    sources.apply_series(base, patched.patches, expected)
    assert _files(Path(results[0]["tree"])) == _files(expected)
    assert (Path(results[0]["tree"]).parent / ".applied").is_file()


def test_an_unpack_that_died_half_way_is_redone(private_cache):
    mirror, all_sources = data.load_sources()
    src = all_sources["debian-0.15.0"]
    tree = sources.unpack_debian(src, mirror)
    top = private_cache / "src" / src.name / src.version
    (top / ".unpacked").unlink()  # as if the old code's run had died before its marker
    (tree / "v4l2loopback.c").write_text("half")
    again = sources.unpack_debian(src, mirror)
    assert again == tree and (again / "v4l2loopback.c").read_text() != "half"


FETCHER = """
import sys
from loopqual.config import data
from loopqual.debian import apt
mirror, all_sources = data.load_sources()
src = all_sources[sys.argv[1]]
print(apt.PrivateApt(mirror, src.suite).fetch(src.package, src.version))
"""


def test_two_runs_use_one_suites_private_apt_at_once(private_cache):
    """The private apt state (lists, archives, debs) of a suite is locked: two processes that
    update and download at the same moment both get the checked .deb. The test holds the
    suite's lock while both start, so that both must wait for it (and say so) whatever the
    machine's speed, then lets them race for it."""
    with cache_lock(private_cache / "apt" / "bookworm.lock", "the test's own hold"):
        procs = [subprocess.Popen([sys.executable, "-c", FETCHER, "debian-0.12.7"], text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        waits = []
        for p in procs:
            ready, _, _ = select.select([p.stderr], [], [], 120)
            waits.append(p.stderr.readline() if ready else "(nothing within 120 s)")
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    debs = {o[0].strip() for o in outs}
    assert len(debs) == 1 and Path(debs.pop()).read_bytes()[:7] == b"!<arch>"
    assert all("waiting" in w and "private apt state for bookworm" in w for w in waits), waits
