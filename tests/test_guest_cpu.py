"""The CPU a TCG guest gets: vng's "max" without ERMS/FSRM (boot/vm.py says why), a caller's
LOOPQUAL_TCG_CPU instead, a clear error for a value that is not a QEMU CPU model, and KVM
guests left to vng."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopqual.boot import guestroot, vm


def _cmd(monkeypatch, tmp_path, accel: str) -> list[str]:
    monkeypatch.setattr(vm, "vng_path", lambda: "/usr/bin/vng")
    return vm.vng_command(Path("/boot/vmlinuz-x"), tmp_path, None, accel, cpus=1,
                          root=guestroot.GuestRoot("9p", "9p"))


def test_a_tcg_guest_gets_max_without_the_slow_string_instructions(monkeypatch, tmp_path):
    monkeypatch.delenv("LOOPQUAL_TCG_CPU", raising=False)
    cmd = _cmd(monkeypatch, tmp_path, "tcg")
    assert "--qemu-opts=-cpu max,erms=off,fsrm=off" in cmd and "--disable-kvm" in cmd
    assert vm.guest_cpu("tcg") == "max,erms=off,fsrm=off"


def test_the_caller_can_give_vngs_own_cpu_back(monkeypatch, tmp_path):
    monkeypatch.setenv("LOOPQUAL_TCG_CPU", "max")
    assert "--qemu-opts=-cpu max" in _cmd(monkeypatch, tmp_path, "tcg")
    assert vm.guest_cpu("tcg") == "max"


def test_a_kvm_guest_keeps_vngs_host_cpu(monkeypatch, tmp_path):
    monkeypatch.delenv("LOOPQUAL_TCG_CPU", raising=False)
    cmd = _cmd(monkeypatch, tmp_path, "kvm")
    assert not any(a.startswith("--qemu-opts") for a in cmd)
    assert vm.guest_cpu("kvm").startswith("host")


@pytest.mark.parametrize("bad", ["max -m 1G", "max;reboot", "", "max,,erms=off"])
def test_a_cpu_that_is_not_a_qemu_model_is_a_clear_error(monkeypatch, bad):
    monkeypatch.setenv("LOOPQUAL_TCG_CPU", bad)
    with pytest.raises(vm.GuestError, match="LOOPQUAL_TCG_CPU"):
        vm.tcg_cpu()
