"""Installing a missing kernel while another run (or the machine's apt) holds dpkg's lock
waits for the lock instead of failing. No package is really installed: apt-get is replaced."""

import subprocess

from loopqual.kernel import kernels


def test_apt_install_waits_for_dpkgs_lock(monkeypatch):
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(kernels, "_installed", lambda package: False)
    monkeypatch.setattr(kernels.os, "geteuid", lambda: 0)
    monkeypatch.setattr(kernels.subprocess, "run", fake_run)
    kernels.apt_install(["linux-image-x"], "kernel x")
    assert calls and all(c[0] == "apt-get" for c in calls)
    for cmd in calls:
        i = cmd.index("-o")
        assert cmd[i + 1].startswith("DPkg::Lock::Timeout=") and int(cmd[i + 1].split("=")[1]) >= 60
