"""Module sources against the real Debian archive (the one this machine's apt uses), through
loopqual's private apt configuration in a temporary cache: a few seconds, network needed."""

import hashlib

import pytest

from loopqual import data, sources


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPQUAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_archive_source_is_fetched_checked_and_unpacked(private_cache):
    mirror, all_sources = data.load_sources()
    tree = sources.unpack_debian(all_sources["debian-0.15.0"], mirror)
    assert (tree / "v4l2loopback.c").is_file()
    assert sources.module_version(tree) == "0.15.0"
    deb = next((private_cache / "apt" / "trixie" / "debs").glob("*.deb"))
    apt = sources.PrivateApt(mirror, "trixie")
    (entry,) = [e for e in apt.index_entries("v4l2loopback-dkms") if e["Version"] == "0.15.0-2"]
    assert hashlib.sha256(deb.read_bytes()).hexdigest() == entry["SHA256"]


def test_a_version_the_mirror_does_not_serve_names_the_ones_it_does(private_cache):
    mirror, all_sources = data.load_sources()
    gone = data.Source(name="old", package="v4l2loopback-dkms", version="0.12.5-1", suite="bookworm")
    with pytest.raises(sources.SourceError, match=r"0\.12\.5-1 is not served.*it serves: 0\.12\.7-2"):
        sources.unpack_debian(gone, mirror)


def test_a_corrupt_download_is_refused_and_removed(private_cache):
    mirror, all_sources = data.load_sources()
    src = all_sources["debian-0.12.7"]
    apt = sources.PrivateApt(mirror, src.suite)
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
