"""What every kernel source gives (host packages, Debian's archive, a debug build): a kernel
ready to build for and boot. Its own module so that kernels.resolve() can dispatch to the
archive and debug-kernel modules while they return this type, without an import circle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loopqual.common.errors import LoopqualError


class KernelError(LoopqualError):
    pass


@dataclass(frozen=True)
class InstalledKernel:
    """A kernel ready to build for and boot. Host kernels: /boot/vmlinuz-<release> and the
    host's kbuild tree. Archive kernels: the image and modules extracted into the cache
    (vmlinuz beside its modules, so virtme-ng finds them), and a build root of their suite
    (build_dir is then a path inside root)."""
    name: str
    release: str
    vmlinuz: Path
    build_dir: Path
    headers_version: str
    suite: str = "host"  # where it comes from: "host" (installed with apt), a Debian suite, or
    # "debug" (built by loopqual from a Debian kernel source package: src/loopqual/kernel/debugkernel.py)
    version: str = ""  # the Debian version of its image package (host: of its headers)
    root: Path | None = None  # the build root to build in (None: build on the host)
    root_key: str = ""  # what the root holds, hashed (goes into the build's cache key)
    compiler: str = ""  # the compiler its modules are built with, e.g. "gcc-16 16.2.0-4"
    config: Path | None = None  # its kernel configuration
    arg: str = ""  # how --kernel names exactly this kernel (NAME@VERSION for archive kernels)

    def to_dict(self) -> dict:
        return {"name": self.name, "release": self.release, "vmlinuz": str(self.vmlinuz),
                "build_dir": str(self.build_dir), "headers_version": self.headers_version,
                "suite": self.suite, "version": self.version,
                "root": str(self.root) if self.root else None, "compiler": self.compiler}
