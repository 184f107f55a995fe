"""The debug kernel's planning (configuration fragments merged after virtme-ng's lines, every
fragment line checked in the resulting .config, the build key) and its progress parser, on
outputs recorded from the real build of debian-6.12-debug (tests/fixtures/debugkernel/
recorded-*). Nothing here downloads, runs make or boots."""

import io
import os
from pathlib import Path

import pytest

from loopqual.common.errors import DataError, LoopqualError
from loopqual.config import data
from loopqual.kernel import debugkernel, kernels

FIX = Path(__file__).parent / "fixtures" / "debugkernel"
RECORDED_CONFIG = FIX / "recorded-debian-6.12-debug.config"
RECORDED_VIRTME = FIX / "recorded-virtme-configkernel-1.42-dry-run.txt"
RECORDED_LOG = FIX / "recorded-debian-6.12-debug-build.log"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------------- the data files
def test_shipped_debug_kernel_is_described_and_not_default():
    ks = data.load_kernels()
    k = ks["debian-6.12-debug"]
    assert k.kind == "debug" and not k.default
    assert all(x.kind in ("host", "archive") for n, x in ks.items() if n != "debian-6.12-debug")
    spec = debugkernel.spec_for(k)
    assert spec.source_package == "linux-source-6.12" and spec.suite == "bookworm-security"
    assert [f.name for f in spec.fragments] == ["guest-6.12.config", "debug-6.12.config"]


def test_shipped_fragments_ask_for_the_detectors():
    spec = debugkernel.load_specs()["debian-6.12-debug"]
    want = debugkernel.wanted(spec.fragments)
    for sym in ("KASAN", "KASAN_GENERIC", "KASAN_INLINE", "KFENCE", "PROVE_LOCKING",
                "DEBUG_ATOMIC_SLEEP", "DEBUG_KMEMLEAK", "UBSAN", "UBSAN_BOUNDS", "DEBUG_LIST",
                "DEBUG_OBJECTS", "DEBUG_INFO_NONE", "VIDEO_DEV", "MEDIA_SUPPORT"):
        assert want[f"CONFIG_{sym}"] == "y", sym
    assert want["CONFIG_DEBUG_KMEMLEAK_AUTO_SCAN"] == "n"  # loopqual scans itself
    assert want["CONFIG_DRM"] == "n" and want["CONFIG_SOUND"] == "n"


def test_recorded_config_has_every_line_of_the_shipped_fragments():
    """The .config recorded from the real plan holds every line the fragments ask for (if a
    fragment changes, plan again and record the new .config here)."""
    spec = debugkernel.load_specs()["debian-6.12-debug"]
    assert debugkernel.unmet(debugkernel.wanted(spec.fragments), RECORDED_CONFIG.read_text()) == []


def test_kind_debug_needs_no_packages_but_debian_does(tmp_path):
    p = write(tmp_path, "kernels.toml", '[kernel.d]\nkind = "debug"\n')
    assert data.load_kernels(p)["d"].kind == "debug"
    p = write(tmp_path, "kernels.toml", '[kernel.k]\nheaders_package = "h"\n')
    with pytest.raises(LoopqualError, match=r"\[kernel.k\] image_package: missing"):
        data.load_kernels(p)
    p = write(tmp_path, "kernels.toml", '[kernel.k]\nkind = "custom"\n')
    with pytest.raises(LoopqualError, match=r"kind"):
        data.load_kernels(p)
    p = write(tmp_path, "kernels.toml", '[kernel.d]\nkind = "debug"\nsuite = "sid"\n')
    with pytest.raises(LoopqualError, match=r"suite belongs to a Debian kernel"):
        data.load_kernels(p)


@pytest.mark.parametrize("text,message", [
    ("[debug.x]\n", r"\[debug.x\].*source_package"),
    ('[debug.x]\nsource_package = "p"\nversion = "1"\nsuite = "s"\nfragments = []\n'
     "expected_objects = 1\n", r"fragments"),
    ('[debug.x]\nsource_package = "p"\nversion = "1"\nsuite = "s"\nfragments = ["nope.config"]\n'
     "expected_objects = 1\n", r"fragment nope.config not found"),
    ('[debug.x]\nsource_package = "p"\nversion = "1"\nsuite = "s"\nfragments = ["f.config"]\n'
     "expected_objects = 0\n", r"expected_objects"),
    ("[debugs.x]\n", r"unknown top-level key"),
    ("[debug.x\n", r"malformed TOML"),
])
def test_bad_debug_kernels_file_is_one_clear_error(tmp_path, text, message):
    write(tmp_path, "f.config", "CONFIG_A=y\n")
    p = write(tmp_path, "debug-kernels.toml", text)
    with pytest.raises(DataError, match=message):
        debugkernel.load_specs(p)


def test_debug_kernel_without_an_entry_names_the_file(tmp_path):
    p = write(tmp_path, "debug-kernels.toml", "")
    k = data.Kernel("nope", "", "", "", kind="debug")
    with pytest.raises(debugkernel.DebugKernelError, match=r'no \[debug."nope"\] entry'):
        debugkernel.spec_for(k, p)


# ------------------------------------------------------------------- merging and checks
def test_parse_config_reads_both_forms_and_a_later_line_wins():
    got = debugkernel.parse_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\n"
                                   "CONFIG_A=m\n# a comment\n\n")
    assert got == {"CONFIG_A": "m", "CONFIG_B": "n", "CONFIG_C": '"x y"'}


def test_a_fragment_line_that_is_not_configuration_is_refused(tmp_path):
    f = write(tmp_path, "bad.config", "CONFIG_A=y\nKASAN=y\n")
    with pytest.raises(debugkernel.DebugKernelError, match=r"bad.config:2: not a configuration "
                       r"line: 'KASAN=y'"):
        debugkernel.wanted([f])


def test_later_fragment_wins(tmp_path):
    a = write(tmp_path, "a.config", "CONFIG_X=y\nCONFIG_Y=y\n")
    b = write(tmp_path, "b.config", "# CONFIG_X is not set\n")
    assert debugkernel.wanted([a, b]) == {"CONFIG_X": "n", "CONFIG_Y": "y"}


def test_compose_puts_virtme_first_then_fragments_in_order(tmp_path):
    lines = RECORDED_VIRTME.read_text().splitlines()
    a = write(tmp_path, "a.config", "# CONFIG_DRM is not set\n")
    b = write(tmp_path, "b.config", "CONFIG_KASAN=y\n")
    text = debugkernel.compose(lines, [a, b])
    # virtme-ng 1.42 turns DRM on; the fragment after it turns it off again (Kconfig: last wins)
    assert text.index("CONFIG_DRM=y") < text.index("# CONFIG_DRM is not set") < \
        text.index("CONFIG_KASAN=y")
    assert debugkernel.parse_config(text)["CONFIG_DRM"] == "n"
    assert debugkernel.parse_config(text)["CONFIG_9P_FS"] == "y"  # virtme's own lines kept


def test_unmet_names_what_kconfig_dropped_in_the_recorded_run():
    """Recorded: the first trim asked for PCIEASPM=n (it has no prompt without EXPERT) and
    NET_SELFTESTS=n (selected by other options): the real plan stopped on exactly these."""
    want = {"CONFIG_PCIEASPM": "n", "CONFIG_NET_SELFTESTS": "n", "CONFIG_KASAN": "y",
            "CONFIG_DEBUG_KMEMLEAK_AUTO_SCAN": "n", "CONFIG_NO_SUCH_SYMBOL": "y"}
    missing = debugkernel.unmet(want, RECORDED_CONFIG.read_text())
    assert missing == [("CONFIG_PCIEASPM", "n", "y"), ("CONFIG_NET_SELFTESTS", "n", "y"),
                       ("CONFIG_NO_SUCH_SYMBOL", "y", "n")]
    msg = debugkernel.describe_unmet("debian-6.12-debug", missing)
    assert "CONFIG_PCIEASPM=n (got y)" in msg and "\n" not in msg


def test_build_key_changes_with_version_config_and_compiler():
    cfg = RECORDED_CONFIG.read_text()
    tools = {"gcc": "gcc (Debian 12.2.0-14+deb12u1) 12.2.0", "ld": "GNU ld 2.40"}
    k = debugkernel.build_key("linux-source-6.12", "6.12.117-1~deb12u1", cfg, tools)
    assert k == debugkernel.build_key("linux-source-6.12", "6.12.117-1~deb12u1", cfg, dict(tools))
    assert len(k) == 16
    others = {
        debugkernel.build_key("linux-source-6.12", "6.12.118-1~deb12u1", cfg, tools),
        debugkernel.build_key("linux-source-6.12", "6.12.117-1~deb12u1", cfg + "CONFIG_X=y\n",
                              tools),
        debugkernel.build_key("linux-source-6.12", "6.12.117-1~deb12u1", cfg,
                              {**tools, "gcc": "gcc (Debian 12.2.0-14) 12.2.0"}),
    }
    assert k not in others and len(others) == 3


# --------------------------------------------------------------------------- progress
class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_progress_counts_compiled_files_in_the_recorded_build_log():
    log = RECORDED_LOG.read_text()
    out, clock = io.StringIO(), Clock()
    prog = debugkernel.Progress(2700, out=out, clock=clock, every_s=30)
    lines = log.splitlines()
    for i, line in enumerate(lines):
        clock.t = 1000.0 + i  # one line a second
        prog.feed(line)
    prog.finish()
    n = debugkernel.count_steps(log)
    assert prog.done == n > 0
    # CC / AS / CC [M] of .o files only: not LD, AR, HOSTCC, GEN, the .s of asm-offsets
    for line in lines:
        if line.lstrip().startswith(("LD ", "AR ", "HOSTCC", "GEN ", "HOSTLD", "SYSHDR")):
            assert not debugkernel.Progress(1, out=io.StringIO()).feed(line)
    shown = out.getvalue().splitlines()
    assert shown and shown[-1].startswith(f"  {n}/") and "elapsed" in shown[-1]
    assert len(shown) < len(lines) / 20  # a line every 30 s, not one per file


def test_progress_line_shape():
    clock = Clock()
    prog = debugkernel.Progress(2000, out=io.StringIO(), clock=clock)
    for _ in range(500):
        prog.feed("  CC      mm/slub.o")
    clock.t += 125
    assert prog.line() == "500/2000 files compiled (25%), 2:05 elapsed"
    for _ in range(2000):  # more than the estimate: the total follows the count
        prog.feed("  CC [M]  drivers/x.o")
    assert prog.line().startswith("2500/2500 files compiled (100%)")


# ------------------------------------------------------------------- cache, no make
def test_resolve_without_build_says_how_to_build_and_makes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPQUAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(debugkernel, "virtme_lines",
                        lambda: RECORDED_VIRTME.read_text().splitlines())
    monkeypatch.setattr(debugkernel, "tools", lambda: {"gcc": "g", "ld": "l"})

    def no_make(*a, **kw):
        raise AssertionError("make must not run")

    monkeypatch.setattr(debugkernel, "make_config", no_make)
    monkeypatch.setattr(debugkernel, "source_tree", no_make)
    k = data.load_kernels()["debian-6.12-debug"]
    with pytest.raises(debugkernel.DebugKernelError, match=r"not built yet.*loopqual build "
                       r"--kernel debian-6.12-debug"):
        kernels.resolve(k, install=False)
    root = tmp_path / "cache" / "debug-kernels"
    assert not root.exists() or not any(p.name.startswith("debian-6.12-debug-")
                                        for p in root.iterdir())


def test_a_build_directory_without_the_finished_marker_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPQUAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(debugkernel, "virtme_lines",
                        lambda: RECORDED_VIRTME.read_text().splitlines())
    monkeypatch.setattr(debugkernel, "tools", lambda: {"gcc": "g", "ld": "l"})
    monkeypatch.setattr(debugkernel, "make_config", lambda tree, appended: RECORDED_CONFIG.read_text())
    monkeypatch.setattr(debugkernel, "source_tree", lambda spec: tmp_path / "src")
    spec = debugkernel.load_specs()["debian-6.12-debug"]
    p = debugkernel.plan(spec)
    # an interrupted build: objects and even a bzImage, but no .finished
    (p.build_dir / "arch" / "x86" / "boot").mkdir(parents=True)
    (p.build_dir / "arch" / "x86" / "boot" / "bzImage").write_bytes(b"x")
    assert debugkernel.finished(p.build_dir) is None
    k = data.load_kernels()["debian-6.12-debug"]
    with pytest.raises(debugkernel.DebugKernelError, match="not built yet"):
        debugkernel.resolve(k, build_it=False)
    # finished: the record is what resolve hands on
    (p.build_dir / ".finished").write_text(
        '{"release": "6.12.117-loopqual-debug", "bzimage": "%s"}' % (p.build_dir / "arch/x86/boot/bzImage"))
    ik = debugkernel.resolve(k, build_it=False)
    assert ik.release == "6.12.117-loopqual-debug" and ik.build_dir == p.build_dir
    assert ik.headers_version == f"{spec.version}+{p.key}"
    assert os.fspath(ik.vmlinuz).endswith("arch/x86/boot/bzImage")


def test_suite_mirror_from_apt_and_override(monkeypatch):
    import subprocess

    out = ("http://deb.debian.org/debian/ bookworm\n"
           "http://deb.debian.org/debian-security/ bookworm-security\n")
    monkeypatch.setattr(debugkernel.subprocess, "run",
                        lambda *a, **kw: subprocess.CompletedProcess(a, 0, out, ""))
    monkeypatch.delenv("LOOPQUAL_SECURITY_MIRROR", raising=False)
    assert debugkernel.suite_mirror("bookworm-security").url == \
        "http://deb.debian.org/debian-security"
    with pytest.raises(debugkernel.DebugKernelError, match="no archive for trixie-security"):
        debugkernel.suite_mirror("trixie-security")
    monkeypatch.setenv("LOOPQUAL_SECURITY_MIRROR", "http://m/debian-security/")
    assert debugkernel.suite_mirror("trixie-security").url == "http://m/debian-security"


def test_unfinished_trees_of_other_keys_are_pruned_finished_ones_kept(tmp_path, monkeypatch):
    import fcntl

    monkeypatch.setenv("LOOPQUAL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cache" / "debug-kernels"
    keep, stale, done, busy = (root / f"k-{n}" for n in ("aaaa", "bbbb", "cccc", "dddd"))
    for d in (keep, stale, done, busy):
        (d / "kernel").mkdir(parents=True)
    (done / ".finished").write_text("{}")
    fd = os.open(root / "k-dddd.lock", os.O_RDWR | os.O_CREAT)  # another run is building it
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert debugkernel.prune_unfinished("k", keep=keep) == [stale]
    finally:
        os.close(fd)
    assert keep.exists() and done.exists() and busy.exists() and not stale.exists()
    assert not [p for p in root.iterdir() if ".old-" in p.name]  # nothing left half-removed


def test_recorded_progress_output_of_a_real_build():
    """What `loopqual build --kernel debian-6.12-debug` printed on a pipe (not a terminal):
    a line at most every 30 s, counts that only grow, elapsed time that only grows."""
    import re

    text = (FIX / "recorded-loopqual-build-progress.txt").read_text()
    rows = [tuple(map(int, m.groups())) for m in
            re.finditer(r"^  (\d+)/(\d+) files compiled \(\d+%\), (\d+):(\d\d) elapsed$", text, re.M)]
    assert len(rows) > 10
    done = [r[0] for r in rows]
    secs = [r[2] * 60 + r[3] for r in rows]
    assert done == sorted(done) and secs == sorted(secs)
    assert all(b - a >= 29 for a, b in zip(secs[:-2], secs[1:-1], strict=True))  # last: the summary
    assert done[-1] == 1704  # the .finished record's objects_compiled of that build


def test_a_version_the_mirror_no_longer_serves_is_one_line_and_leaves_nothing(tmp_path,
                                                                              monkeypatch):
    from loopqual.debian import apt

    monkeypatch.setenv("LOOPQUAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LOOPQUAL_SECURITY_MIRROR", "http://mirror.invalid/debian-security")

    class FakeApt:
        def __init__(self, mirror, suite):
            self.suite = suite

        def fetch(self, package, version):
            raise apt.AptError(
                f"{package} {version} is not served by http://mirror.invalid {self.suite} (it "
                "serves: 6.12.117-1~deb12u1); update the version in kernel/sources.toml")

    monkeypatch.setattr(apt, "PrivateApt", FakeApt)
    spec = debugkernel.DebugSpec("k", "linux-source-6.12", "6.12.1-1", "bookworm-security",
                                 (), 1)
    with pytest.raises(debugkernel.DebugKernelError) as err:
        debugkernel.source_tree(spec)
    assert "6.12.1-1 is not served" in str(err.value) and "debug-kernels.toml" in str(err.value)
    src = tmp_path / "cache" / "debug-kernels" / "src"
    assert [p.name for p in src.iterdir()] == ["linux-source-6.12_6.12.1-1.lock"]


def test_a_debug_kernel_is_labelled_by_its_name_in_results():
    from loopqual.verdict.results import kernel_label

    cell = {"kernel": "debian-6.12-debug", "kernel_suite": "debug",
            "kernel_version": "6.12.117-1~deb12u1"}
    assert kernel_label(cell) == "debian-6.12-debug"  # --kernel takes exactly this back
    assert kernel_label({**cell, "kernel": "debian-sid", "kernel_suite": "sid",
                         "kernel_version": "7.2.13-1"}) == "debian-sid@7.2.13-1"


def test_recorded_kasan_report_is_a_splat():
    """The report the first debug kernel (5-level paging) printed at boot under TCG, 1 boot
    in 3: kernel/splats.toml's deny list catches it (why the fragment turns 5-level off)."""
    from loopqual.common import health

    lines = (FIX / "recorded-kasan-boot-report-5level-tcg.log").read_text().splitlines()
    found = health.find_splats(lines)
    assert found and "KASAN: wild-memory-access in do_raw_spin_lock" in found[0]["line"]
    assert any("Write of size 4 at addr ff11" in ln for ln in found[0]["context"])
    assert any("handle_edge_irq" in ln for ln in lines)
    assert lines[-1].endswith("Disabling lock debugging due to kernel taint")
