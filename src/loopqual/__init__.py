"""loopqual: qualify v4l2loopback on real Debian kernels in QEMU guests."""

__version__ = "0.1.0"
