"""Kernels from Debian suites the host does not run (sid, experimental, trixie-backports):
never installed on the host. The suite's index (loopqual's private apt state) says which
kernel the entry means: the newest its image package points to, or a pinned version. Its
image (linux-binary-unsigned-<release>: usr/lib/modules/<release>/vmlinuz.unsigned), modules
(linux-modules-<release>, .ko.xz, no modules.dep) and base files (config, modules.builtin)
are extracted into <cache>/kernels/<release>/<version>/, and depmod -b makes modules.dep.
virtme-ng finds the modules beside the image it is given. Modules for it are built in a
build root of its suite (buildroot.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from loopqual.common.paths import atomic_dir, atomic_write, cache_dir, cache_lock
from loopqual.config import data
from loopqual.config.data import Kernel
from loopqual.debian.apt import AptError, PrivateApt
from loopqual.kernel import buildroot
from loopqual.kernel.installedkernel import InstalledKernel, KernelError

INDEX_MAX_AGE_S = 6 * 3600  # a suite's index older than this is downloaded again
MARK = ".extracted"  # written last in a boot tree: its extraction finished


@dataclass(frozen=True)
class Resolved:
    """What the suite's index says an entry means (nothing downloaded but the index)."""
    kernel: Kernel
    release: str  # e.g. 7.2.13+deb14-amd64
    version: str  # the Debian version of linux-image-<release> (and of every package below)
    image_stanza: dict

    def packages(self) -> dict[str, str]:
        """The packages of this kernel: what each is for -> its name."""
        r = self.release
        return {"image": f"linux-binary-unsigned-{r}", "modules": f"linux-modules-{r}",
                "base": f"linux-base-{r}", "headers": f"linux-headers-{r}"}


_DEP = re.compile(r"^\s*(\S+)(?:\s*\(\s*(<<|<=|=|>=|>>)\s*([^)\s]+)\s*\))?")


def depends(stanza: dict) -> list[tuple[str, str | None, str | None]]:
    """A stanza's Depends as (package, relation, version), alternatives flattened."""
    out = []
    for alt in re.split(r"[,|]", stanza.get("Depends", "")):
        m = _DEP.match(alt)
        if m and m.group(1):
            out.append((m.group(1), m.group(2), m.group(3)))
    return out


def image_release(stanza: dict) -> tuple[str, str] | None:
    """(release, version) of the kernel an image package stands for: linux-image-<release>
    itself (it depends on linux-binary-<release>), or the linux-image-<release> a metapackage
    such as linux-image-amd64 depends on (its exact version with it). None if neither."""
    m = re.match(r"^linux-image-(\d\S*)$", stanza.get("Package", ""))
    if m and any(p == f"linux-binary-{m.group(1)}" for p, _r, _v in depends(stanza)):
        return m.group(1), stanza["Version"]
    for p, rel, ver in depends(stanza):
        m = re.match(r"^linux-image-(\d\S*)$", p)
        if m:
            return m.group(1), ver if rel == "=" and ver else stanza["Version"]
    return None


def headers_release(stanza: dict) -> str | None:
    for p, _rel, _ver in depends(stanza):
        m = re.match(r"^linux-headers-(\d\S*-amd64)$", p)
        if m:
            return m.group(1)
    return None


def _apt(kernel: Kernel, mirror: data.Mirror, refresh: bool) -> PrivateApt:
    """The suite's private apt state with an index: downloaded when missing or older than
    INDEX_MAX_AGE_S if refresh, else it must be there already."""
    assert kernel.suite
    name = f"{kernel.base_suite}+{kernel.suite}" if kernel.base_suite and \
        kernel.base_suite != kernel.suite else kernel.suite
    if not refresh and not any((cache_dir() / "apt" / name / "lists").glob("*_Packages*")):
        raise KernelError(f"kernel {kernel.name}: the index of {name} is not downloaded yet "
                          f"(`loopqual build --kernel {kernel.name}` fetches it)")
    try:
        apt = PrivateApt(mirror, kernel.suite, kernel.base_suite)
        if refresh:
            with apt.locked():
                apt.update(max_age_s=INDEX_MAX_AGE_S)
    except AptError as exc:
        raise KernelError(f"kernel {kernel.name}: {exc}") from None
    return apt


def lookup(kernel: Kernel, apt: PrivateApt) -> Resolved:
    """The release and version the entry means, from the suite's index."""
    suite, pkg = kernel.suite, kernel.image_package
    entries = apt.index_entries(pkg, suite)
    if not entries:
        similar = sorted(p for p in apt.index(suite) if p.startswith("linux-image-")
                         and not p.endswith(("-dbg", "-dbgsym")))
        raise KernelError(f"kernel {kernel.name}: suite {suite} has no package {pkg} "
                          f"(its linux-image packages: {', '.join(similar[:8]) or 'none'}"
                          f"{', ...' if len(similar) > 8 else ''}); check kernel/kernels.toml")
    if kernel.version:
        match = [e for e in entries if e["Version"] == kernel.version]
        if not match:
            served = ", ".join(sorted({e["Version"] for e in entries}))
            raise KernelError(f"kernel {kernel.name}: {pkg} {kernel.version} is not served by "
                              f"{apt.mirror.url} {suite} (it serves: {served}); update the "
                              f"version in kernel/kernels.toml (or --kernel {kernel.name}@VERSION)")
        stanza = match[0]
    else:
        stanza = apt.newest(pkg, suite)
        assert stanza
    found = image_release(stanza)
    if not found:
        raise KernelError(f"kernel {kernel.name}: {pkg} {stanza['Version']} in {suite} is no "
                          f"kernel image (Depends: {stanza.get('Depends', 'none')})")
    release, version = found
    if not kernel.version and kernel.headers_package:
        h = apt.newest(kernel.headers_package, suite)
        hrel = headers_release(h) if h else None
        if h and hrel and hrel != release:
            raise KernelError(f"kernel {kernel.name}: in {suite}, {pkg} points to {release} but "
                              f"{kernel.headers_package} to {hrel} (the mirror is mid-update?); "
                              "run again later, or pin a version")
    r = Resolved(kernel, release, version, stanza)
    for what, p in r.packages().items():
        have = {e["Version"] for e in apt.index_entries(p, suite)}
        if version not in have:
            raise KernelError(f"kernel {kernel.name}: {release} {version} has no {what} package "
                              f"{p} {version} in {suite} (it has: {', '.join(sorted(have)) or 'none'})")
    return r


def tree_path(r: Resolved) -> Path:
    return cache_dir() / "kernels" / r.release / re.sub(r"[^A-Za-z0-9.-]", "_", r.version)


def vmlinuz_in(tree: Path, release: str) -> Path:
    return tree / "usr" / "lib" / "modules" / release / "vmlinuz.unsigned"


def boot_tree(r: Resolved, apt: PrivateApt, install: bool) -> Path:
    """The extracted image and modules (made once): tree/usr/lib/modules/<release>/."""
    dest = tree_path(r)
    if (dest / MARK).exists():
        return dest
    if not install:
        raise KernelError(f"kernel {r.kernel.name}: {r.release} {r.version} is not downloaded yet")
    with cache_lock(dest.parent / f"{dest.name}.lock", f"the kernel {r.release}"):
        if (dest / MARK).exists():
            return dest
        pkgs = r.packages()
        print(f"loopqual: downloading {r.release} {r.version} from {r.kernel.suite}",
              file=sys.stderr, flush=True)
        try:
            debs = [apt.fetch(pkgs[w], r.version) for w in ("image", "modules", "base")]
        except AptError as exc:
            raise KernelError(f"kernel {r.kernel.name}: {exc}") from None
        with atomic_dir(dest) as tmp:
            for deb in debs:
                _check(["dpkg-deb", "-x", str(deb), str(tmp)], f"unpacking {deb.name}")
            # depmod (kmod 30 here) looks in <base>/lib/modules: usr-merged, as Debian is
            (tmp / "lib").symlink_to("usr/lib")
            vmlinuz = vmlinuz_in(tmp, r.release)
            if not vmlinuz.is_file():
                raise KernelError(f"kernel {r.kernel.name}: {pkgs['image']} holds no "
                                  f"{vmlinuz.relative_to(tmp)}")
            _check(["depmod", "-b", str(tmp), r.release], f"depmod for {r.release}")
            if not (vmlinuz.parent / "modules.dep").is_file():
                raise KernelError(f"kernel {r.kernel.name}: depmod made no modules.dep")
            atomic_write(tmp / MARK, json.dumps({"release": r.release, "version": r.version,
                                                 "suite": r.kernel.suite,
                                                 "debs": [d.name for d in debs]}) + "\n")
        for deb in debs:  # unpacked whole: the 100+ MB of downloads are not kept twice
            deb.unlink(missing_ok=True)
    return dest


def _check(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise KernelError(f"{what} failed: {tail[0]}")


def root_plan(r: Resolved, apt: PrivateApt) -> buildroot.RootPlan:
    k = r.kernel
    include = [f"linux-headers-{r.release}={r.version}", *k.build_needs]
    return buildroot.plan(apt, include, f"kernel {k.name} ({r.release} {r.version})")


def resolve_archive(kernel: Kernel, install: bool = True) -> InstalledKernel:
    mirror, _sources = data.load_sources()
    apt = _apt(kernel, mirror, refresh=install)
    r = lookup(kernel, apt)
    try:
        plan = root_plan(r, apt)  # first: a root that cannot be had costs no download
        if install and not buildroot.info(plan.path) and (apt.index_age_s() or 1e9) > 600:
            # the root will be made from the mirror as it is now: plan it from a fresh index
            with apt.locked():
                apt.update(force=True)
            r = lookup(kernel, apt)
            plan = root_plan(r, apt)
        if not install and not buildroot.info(plan.path):
            raise KernelError(f"kernel {kernel.name}: its build root {plan.path.name} is not made yet")
        tree = boot_tree(r, apt, install)
        root, made_s = buildroot.ensure(plan, say=lambda m: print(m, file=sys.stderr, flush=True))
    except (buildroot.RootError, AptError) as exc:
        raise KernelError(f"kernel {kernel.name}: {exc}") from None
    meta = buildroot.info(root) or {}
    if made_s is not None:
        print(f"loopqual: build root {root.name} made in {made_s} s "
              f"({meta.get('bytes', 0) / 1e6:.0f} MB)", file=sys.stderr, flush=True)
    build_dir = Path(f"/usr/src/linux-headers-{r.release}")
    if not (root / build_dir.relative_to("/") / "Makefile").is_file():
        raise KernelError(f"kernel {kernel.name}: the build root {root} has no {build_dir}/Makefile")
    return InstalledKernel(
        kernel.name, r.release, vmlinuz_in(tree, r.release), build_dir, r.version,
        suite=kernel.suite or "", version=r.version, root=root, root_key=plan.key,
        compiler=meta.get("compiler") or plan.compiler,
        config=tree / "usr" / "lib" / "modules" / r.release / "config",
        arg=f"{kernel.name}@{r.version}")


def describe(kernel: Kernel) -> dict:
    """For `loopqual list`: suite, the exact version the entry resolves to now, the compiler
    and whether its build root and image are cached. Downloads the suite's index at most."""
    mirror, _sources = data.load_sources()
    apt = _apt(kernel, mirror, refresh=True)
    r = lookup(kernel, apt)
    try:
        plan = root_plan(r, apt)
    except buildroot.RootError as exc:
        raise KernelError(f"kernel {kernel.name}: {exc}") from None
    meta = buildroot.info(plan.path)
    return {"suite": kernel.suite if not kernel.base_suite else f"{kernel.suite} (on {kernel.base_suite})",
            "release": r.release, "version": r.version,
            "pinned": bool(kernel.version),
            "compiler": (meta or {}).get("compiler") or plan.compiler,
            "root": plan.path, "root_cached": bool(meta),
            "image_cached": (tree_path(r) / MARK).exists()}


def cached_config(kernel: Kernel) -> Path | None:
    """The configuration of the kernel the entry means, if its image is already in the cache
    (nothing is downloaded), else None."""
    mirror, _sources = data.load_sources()
    try:
        r = lookup(kernel, _apt(kernel, mirror, refresh=False))
    except (KernelError, AptError):
        return None
    config = tree_path(r) / "usr" / "lib" / "modules" / r.release / "config"
    return config if (tree_path(r) / MARK).exists() and config.is_file() else None
