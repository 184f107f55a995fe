"""Debian kernels: make sure image and headers are installed, find the release, the exact
/boot/vmlinuz-<release> to boot and the kbuild directory to build against."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from loopqual.config.data import Kernel
from loopqual.kernel.installedkernel import InstalledKernel, KernelError

__all__ = ["InstalledKernel", "KernelError", "resolve"]

DPKG_LOCK_WAIT_S = 600


def _query(package: str, fmt: str) -> str | None:
    proc = subprocess.run(["dpkg-query", "-W", "-f", fmt, package],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _installed(package: str) -> bool:
    status = _query(package, "${db:Status-Abbrev}")
    return bool(status) and status.startswith("ii")


def apt_install(packages: list[str], why: str) -> None:
    """Install missing Debian packages (root), or say exactly what to install."""
    missing = [p for p in packages if not _installed(p)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise KernelError(f"{why} needs {' '.join(missing)}: run as root, or "
                          f"`apt-get install {' '.join(missing)}`")
    print(f"loopqual: installing {' '.join(missing)} ({why})", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Another run (or the machine's own apt) may hold dpkg's lock: wait for it, do not fail.
    wait = ["-o", f"DPkg::Lock::Timeout={DPKG_LOCK_WAIT_S}"]
    for attempt in ("install", "update-then-install"):
        if attempt == "update-then-install":
            subprocess.run(["apt-get", *wait, "update", "-q"], env=env, capture_output=True)
        proc = subprocess.run(
            ["apt-get", *wait, "install", "-y", "-q", "--no-install-recommends", *missing],
            env=env, capture_output=True, text=True,
        )
        if proc.returncode == 0:
            return
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])
    raise KernelError(f"could not install {' '.join(missing)} for {why}:\n{tail}")


def _dependency(package: str, prefix: str) -> str:
    deps = _query(package, "${Depends}") or ""
    for dep in re.split(r"[,|]", deps):
        name = dep.strip().split(" ")[0]
        if name.startswith(prefix):
            return name[len(prefix):]
    raise KernelError(f"{package} does not depend on any {prefix}<release> package "
                      f"(Depends: {deps or 'none'}); check kernel/kernels.toml")


def host_compiler() -> str:
    """The host's gcc, as its --version's first line says (e.g. "gcc (Debian 12.2.0-14) 12.2.0")."""
    try:
        proc = subprocess.run(["gcc", "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "no gcc"
    lines = proc.stdout.splitlines()
    return lines[0].strip() if proc.returncode == 0 and lines else "no gcc"


def resolve(kernel: Kernel, install: bool = True) -> InstalledKernel:
    """The kernel ready to build for and boot. install=False: only what is already here
    (installed packages; for archive kernels the cached index, image and build root): a
    KernelError says what is missing, nothing is downloaded or installed."""
    if kernel.kind == "debug":  # built by loopqual from Debian's kernel source
        from loopqual.kernel.debugkernel import resolve as resolve_debug

        return resolve_debug(kernel, build_it=install)
    if kernel.kind == "archive":
        from loopqual.kernel.archivekernels import resolve_archive

        return resolve_archive(kernel, install)
    packages = [kernel.image_package, kernel.headers_package, *kernel.build_needs]
    if install:
        apt_install(packages, f"kernel {kernel.name}")
    else:
        missing = [p for p in packages if not _installed(p)]
        if missing:
            raise KernelError(f"kernel {kernel.name}: not installed ({' '.join(missing)}); "
                              f"run `make deps` or `apt-get install {' '.join(missing)}`")
    release = _dependency(kernel.image_package, "linux-image-")
    headers_release = _dependency(kernel.headers_package, "linux-headers-")
    if headers_release != release:
        raise KernelError(f"kernel {kernel.name}: image is {release} but headers are "
                          f"{headers_release}; upgrade both packages together")
    apt_install([f"linux-image-{release}", f"linux-headers-{release}"], f"kernel {kernel.name}")
    vmlinuz = Path(f"/boot/vmlinuz-{release}")
    build_dir = Path(f"/lib/modules/{release}/build")
    if not vmlinuz.is_file():
        raise KernelError(f"kernel {kernel.name}: {vmlinuz} is missing; reinstall "
                          f"linux-image-{release}")
    if not (build_dir / "Makefile").is_file():
        raise KernelError(f"kernel {kernel.name}: no kbuild tree at {build_dir}; reinstall "
                          f"linux-headers-{release}")
    version = _query(f"linux-headers-{release}", "${Version}") or ""
    return InstalledKernel(kernel.name, release, vmlinuz, build_dir, version, suite="host",
                           version=version, compiler=host_compiler(),
                           config=Path(f"/boot/config-{release}"), arg=kernel.name)
