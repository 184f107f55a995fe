"""Kernels from archive suites (sid, trixie-backports, experimental): the index lookup that
says which kernel an entry means, the build root's plan and key, and what a user sees when
a suite, a package or a root is not to be had. Parsers run on outputs recorded from real
runs (tests/fixtures/kernels/recorded-*); a few tests ask the real mirror, as the source
tests do."""

import subprocess
from pathlib import Path

import pytest
from cli_expect import one_line_exit_2

from loopqual.common.errors import DataError
from loopqual.config import data
from loopqual.debian import apt
from loopqual.kernel import archivekernels, buildroot, kernels
from loopqual.verdict import results

KF = Path(__file__).parent / "fixtures" / "kernels"


def recorded(name: str) -> str:
    return (KF / f"recorded-{name}").read_text()


def stanza(suite: str, package: str) -> dict:
    (s,) = [e for e in apt.parse_packages(recorded(f"packages-{suite}-excerpt.txt"))
            if e["Package"] == package]
    return s


class FakeApt:
    """A PrivateApt that answers from a recorded index excerpt."""

    def __init__(self, suite: str, extra: list[dict] | None = None):
        self.suite = suite
        self.mirror = data.Mirror("http://deb.debian.org/debian", ("main",))
        self.entries = apt.parse_packages(recorded(f"packages-{suite}-excerpt.txt")) + (extra or [])

    index = lambda self, suite=None: {e["Package"]: [e] for e in self.entries}  # noqa: E731

    def index_entries(self, package, suite=None):
        return [e for e in self.entries if e["Package"] == package]

    newest = apt.PrivateApt.newest


def kernel(**kw) -> data.Kernel:
    base = {"name": "k", "description": "", "image_package": "linux-image-amd64",
            "headers_package": "linux-headers-amd64", "suite": "sid"}
    return data.Kernel(**{**base, **kw})


# ---------------------------------------------------------------- the index lookup
def test_a_metapackage_leads_to_its_release_and_exact_version():
    assert archivekernels.image_release(stanza("sid", "linux-image-amd64")) == ("7.2.13+deb14-amd64", "7.2.13-1")
    assert archivekernels.image_release(stanza("sid", "linux-image-7.2.13+deb14-amd64")) == \
        ("7.2.13+deb14-amd64", "7.2.13-1")
    assert archivekernels.image_release(stanza("trixie-backports", "linux-image-amd64")) == \
        ("7.3.4+deb13-amd64", "7.3.4-1~bpo13+1")
    # experimental's metapackage also depends on linux-modules-amd64: the image is what counts
    assert archivekernels.image_release(stanza("experimental", "linux-image-amd64")) == \
        ("7.3-amd64", "7.3~rc7-1~exp1")
    assert archivekernels.headers_release(stanza("sid", "linux-headers-amd64")) == "7.2.13+deb14-amd64"
    assert archivekernels.image_release(stanza("sid", "linux-base-7.2.13+deb14-amd64")) is None


def test_following_a_suite_takes_its_newest_kernel_with_every_package_of_it():
    r = archivekernels.lookup(kernel(), FakeApt("sid"))
    assert (r.release, r.version) == ("7.2.13+deb14-amd64", "7.2.13-1")
    assert r.packages()["image"] == "linux-binary-unsigned-7.2.13+deb14-amd64"


def test_a_pin_the_mirror_no_longer_serves_names_what_it_serves():
    k = kernel(suite="trixie-backports", base_suite="trixie", version="7.3.2-1~bpo13+1")
    with pytest.raises(kernels.KernelError, match=r"linux-image-amd64 7\.3\.2-1~bpo13\+1 is not "
                       r"served by .* trixie-backports \(it serves: 7\.3\.4-1~bpo13\+1\)"):
        archivekernels.lookup(k, FakeApt("trixie-backports"))
    k = kernel(suite="trixie-backports", version="7.3.4-1~bpo13+1")
    assert archivekernels.lookup(k, FakeApt("trixie-backports")).release == "7.3.4+deb13-amd64"


def test_a_package_missing_from_the_suite_is_named_with_what_there_is():
    with pytest.raises(kernels.KernelError, match=r"suite sid has no package linux-image-9\.9-amd64 "
                       r"\(its linux-image packages: linux-image-7\.2\.13\+deb14-amd64, linux-image-amd64\)"):
        archivekernels.lookup(kernel(image_package="linux-image-9.9-amd64"), FakeApt("sid"))


def test_a_kernel_without_its_unsigned_image_in_the_suite_is_refused():
    apt = FakeApt("sid")
    apt.entries = [e for e in apt.entries if not e["Package"].startswith("linux-binary-unsigned")]
    with pytest.raises(kernels.KernelError, match=r"has no image package "
                       r"linux-binary-unsigned-7\.2\.13\+deb14-amd64 7\.2\.13-1 in sid"):
        archivekernels.lookup(kernel(), apt)


def test_image_and_headers_metapackages_pointing_apart_are_caught():
    newer = {**stanza("sid", "linux-headers-amd64"), "Version": "7.2.14-1",
             "Depends": "linux-headers-7.2.14+deb14-amd64 (= 7.2.14-1)"}
    with pytest.raises(kernels.KernelError, match="mid-update"):
        archivekernels.lookup(kernel(), FakeApt("sid", [newer]))


@pytest.mark.parametrize("a,b", [
    ("7.3.4-1~bpo13+1", "7.3.4-1"), ("7.3~rc7-1~exp1", "7.3-1"), ("7.2.13-1", "7.2.9-1"),
    ("1:0.1", "9.9"), ("6.12.117-1~deb12u1", "6.12.117-1"), ("0.15.4-2", "0.15.4-1+b1"),
    ("1.0a", "1.0"), ("1.0", "1.0+dfsg"),
])
def test_debian_version_order_is_dpkgs(a, b):
    ours = apt.compare_versions(a, b)
    lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0
    assert (ours < 0) == lt and (ours > 0) == (not lt and a != b)


# ---------------------------------------------------------------- the build root's plan
def test_the_simulation_lists_every_package_and_version_of_the_root():
    pkgs = buildroot.parse_simulation(recorded("apt-simulate-sid-7.2.13.txt"))
    assert len(pkgs) == 49
    assert pkgs["linux-headers-7.2.13+deb14-amd64"] == "7.2.13-1"
    assert pkgs["linux-kbuild-7.2.13+deb14"] == "7.2.13-1"
    assert pkgs["libc6"] == "2.43-7" and pkgs["make"] == "4.4.1-3"
    assert buildroot.compiler_of(pkgs) == "gcc-16 16.2.0-4"
    assert buildroot.compiler_of({"make": "4.4.1-3"}) == ""


def test_the_root_key_changes_with_any_version_and_nothing_else():
    pkgs = buildroot.parse_simulation(recorded("apt-simulate-sid-7.2.13.txt"))
    src = ["deb http://deb.debian.org/debian sid main"]
    inc = ["linux-headers-7.2.13+deb14-amd64=7.2.13-1", "make"]
    key = buildroot.make_key(src, inc, pkgs)
    assert key == buildroot.make_key(src, inc, dict(reversed(list(pkgs.items()))))
    assert key != buildroot.make_key(src, inc, {**pkgs, "libc6": "2.43-8"})
    assert key != buildroot.make_key(["deb http://deb.debian.org/debian trixie main"], inc, pkgs)


@pytest.mark.parametrize("name,package", [
    ("apt-simulate-unknown-package.txt", "loopqual-no-such-package"),
    ("apt-simulate-version-gone.txt", "linux-headers-7.2.13+deb14-amd64"),
    ("mmdebstrap-unknown-package.txt", "loopqual-no-such-package"),
])
def test_the_package_apt_could_not_get_is_named(name, package):
    assert buildroot.apt_failure(recorded(name))[0] == package


def test_a_suite_the_mirror_does_not_serve_is_apts_own_line():
    assert apt.apt_error(recorded("apt-update-unknown-suite.txt")) == \
        "The repository 'http://deb.debian.org/debian nosuchsuite Release' does not have a Release file."


class SimApt:
    suite, suites = "sid", ["sid"]

    def __init__(self, name):
        self.out = recorded(name)

    def simulate(self, packages, status):
        return subprocess.CompletedProcess([], 100 if "E: " in self.out else 0, self.out, "")

    def sources_list(self):
        return "deb http://deb.debian.org/debian sid main\n"


def test_a_root_that_cannot_be_planned_names_the_package():
    with pytest.raises(buildroot.RootError, match=r"apt could not get loopqual-no-such-package "
                       r"from sid \(Unable to locate package"):
        buildroot.plan(SimApt("apt-simulate-unknown-package.txt"), ["make"], "kernel k")
    p = buildroot.plan(SimApt("apt-simulate-sid-7.2.13.txt"),
                       ["linux-headers-7.2.13+deb14-amd64=7.2.13-1"], "kernel k")
    assert p.include == ("linux-headers-7.2.13+deb14-amd64=7.2.13-1", "make", "binutils")
    assert p.compiler == "gcc-16 16.2.0-4" and p.path.name == f"sid-{p.key}"


def test_a_failed_mmdebstrap_leaves_nothing_and_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPQUAL_CACHE", str(tmp_path / "cache"))
    p = buildroot.plan(SimApt("apt-simulate-sid-7.2.13.txt"), [], "kernel k")
    out = recorded("mmdebstrap-unknown-package.txt")
    # what mmdebstrap does: it fills the directory, then fails
    fake = ["sh", "-c", 'mkdir -p "$1/usr/bin" && touch "$1/usr/bin/x" && cat "$2" && exit 25',
            "sh", "DEST", str(KF / "recorded-mmdebstrap-unknown-package.txt")]
    monkeypatch.setattr(buildroot, "mmdebstrap_command",
                        lambda plan, dest: [str(dest) if a == "DEST" else a for a in fake])
    with pytest.raises(buildroot.RootError, match="apt could not get loopqual-no-such-package.*"
                       "nothing was kept"):
        buildroot.ensure(p, say=lambda m: None)
    assert "Unable to locate package" in out
    left = sorted(x.name for x in (tmp_path / "cache" / "roots").iterdir())
    assert left == [f"{p.path.name}.lock"]  # the lock file only (locks stay by design)


def test_a_root_is_entered_in_a_mount_namespace_of_its_own():
    cmd = buildroot.enter_command(Path("/c/roots/sid-x"), Path("/c/build/m/src"), ["make", "modules"])
    assert cmd[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    script = cmd[cmd.index("-c") + 1]
    assert 'mount --bind "$1" "$2/build"' in script and 'exec chroot "$r" "$@"' in script
    assert cmd[-2:] == ["make", "modules"] and "LC_ALL=C.UTF-8" in cmd


# ---------------------------------------------------------------- data and results
def test_archive_kernels_are_configured_but_neither_default_nor_gated():
    ks = data.load_kernels()
    sid, k73 = ks["debian-sid"], ks["debian-7.3"]
    assert (sid.kind, sid.suite, sid.version, sid.default) == ("archive", "sid", None, False)
    assert (k73.suite, k73.base_suite, k73.default) == ("trixie-backports", "trixie", False)
    assert k73.version and k73.arg == f"debian-7.3@{k73.version}"
    assert ks["debian-6.1"].kind == "host"


def test_name_at_version_pins_an_archive_kernel_only():
    ks = data.load_kernels()
    assert data.resolve_kernel("debian-sid@7.2.13-1", ks).version == "7.2.13-1"
    with pytest.raises(DataError, match="installed on this machine with apt"):
        data.resolve_kernel("debian-6.1@6.1.192-3", ks)
    with pytest.raises(DataError, match="not a Debian version"):
        data.resolve_kernel("debian-sid@latest", ks)


@pytest.mark.parametrize("entry,pattern", [
    ('image_package="a"\nheaders_package="b"\nversion="1.0-1"',
     "version belongs to a kernel from an archive suite"),
    ('image_package="a"', "headers_package: missing"),
    ('image_package="a"\nsuite="Sid Main"', 'suite = "Sid Main": expected a Debian suite name'),
    ('image_package="a"\nsuite="sid"\nversion="latest"', 'version = "latest": expected a Debian version'),
    ('image_package="a"\nsuite=7', "suite = 7: expected a Debian suite"),
])
def test_kernel_entries_are_checked(tmp_path, entry, pattern):
    p = tmp_path / "kernels.toml"
    p.write_text(f"[kernel.a]\n{entry}\n")
    with pytest.raises(DataError, match=pattern):
        data.load_kernels(p)


def test_a_cell_of_an_archive_kernel_names_the_exact_version():
    cell = {"kernel": "debian-sid", "kernel_suite": "sid", "kernel_version": "7.2.13-1"}
    assert results.kernel_label(cell) == "debian-sid@7.2.13-1"
    assert results.kernel_label({"kernel": "debian-6.1", "kernel_suite": "host",
                                 "kernel_version": "6.1.192-3"}) == "debian-6.1"
    tail = recorded("build-0.15.0-on-7.2.13-tail.txt")
    assert results.first_error(tail).startswith("v4l2loopback.c:2337:9: error: too few arguments "
                                                "to function 'v4l2_fh_add'")


# ---------------------------------------------------------------- against the real mirror
def test_a_suite_the_mirror_does_not_serve_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOOPQUAL_CACHE", str(tmp_path / "cache"))
    bad = kernel(name="debian-nosuch", suite="nosuchsuite")
    monkeypatch.setattr(data, "load_kernels", lambda path=None: {"debian-nosuch": bad})
    one_line_exit_2(capsys, ["build", "--kernel", "debian-nosuch", "--module", "debian-0.15.4"],
                    r"kernel debian-nosuch: the mirror \S+ does not serve suite nosuchsuite .*"
                    r"does not have a Release file")
    assert [x.name for x in (tmp_path / "cache" / "apt").iterdir()] == ["nosuchsuite.lock"]


def test_a_suites_kernel_resolves_from_its_index_alone(tmp_path, monkeypatch):
    """The index says which kernel the entry means; nothing but the index is downloaded
    (experimental: its index is the smallest)."""
    monkeypatch.setenv("LOOPQUAL_CACHE", str(tmp_path / "cache"))
    mirror, _s = data.load_sources()
    k = kernel(name="debian-exp", suite="experimental")
    r = archivekernels.lookup(k, archivekernels._apt(k, mirror, refresh=True))
    assert r.release.endswith("-amd64") and r.version
    assert set(r.packages()) == {"image", "modules", "base", "headers"}
    assert not (tmp_path / "cache" / "kernels").exists()


def test_a_root_that_cannot_be_had_costs_no_kernel_download(monkeypatch):
    downloads = []
    monkeypatch.setattr(archivekernels, "_apt", lambda k, m, refresh: FakeApt("sid"))
    monkeypatch.setattr(archivekernels, "boot_tree", lambda *a: downloads.append(a))

    def no_root(r, apt):
        raise buildroot.RootError("the build root for kernel k cannot be made: apt could not get x")

    monkeypatch.setattr(archivekernels, "root_plan", no_root)
    with pytest.raises(kernels.KernelError, match="kernel k: the build root .* apt could not get x"):
        archivekernels.resolve_archive(kernel())
    assert downloads == []
