"""The guest's root: vng is steered to virtiofs (a wrapper for trixie's virtiofsd first on
PATH) or to plain 9p, and the guest says which one it got (its /proc/self/mounts, recorded
in real debian-6.12 guests of both kinds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loopqual.boot import guestroot, vm
from loopqual.guest import runner

FIXTURES = Path(__file__).parent / "fixtures" / "guest-root"


@pytest.mark.parametrize("kind", ["9p", "virtiofs"])
def test_the_guest_reports_the_root_it_booted_on(kind):
    assert runner.root_fs(str(FIXTURES / f"recorded-6.12-proc-mounts-{kind}.txt")) == kind


def test_an_unreadable_mounts_file_gives_no_root_kind(tmp_path):
    assert runner.root_fs(str(tmp_path / "missing")) == ""


def test_virtiofs_puts_the_wrapper_first_on_vngs_path_and_drops_force_9p(monkeypatch, tmp_path):
    monkeypatch.setattr(vm, "vng_path", lambda: "/usr/bin/vng")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    root = guestroot.GuestRoot("virtiofs", "virtiofs", bin_dir=tmp_path / "bin")
    cmd = vm.vng_command(Path("/boot/vmlinuz-x"), tmp_path, None, "tcg", cpus=1, root=root)
    assert cmd[:3] == ["env", f"PATH={tmp_path / 'bin'}:/usr/bin:/bin", "/usr/bin/vng"]
    assert "--force-9p" not in cmd
    hidden = vm.vng_command(Path("/boot/vmlinuz-x"), tmp_path, None, "tcg", cpus=1, root=root,
                            udev=False)
    assert hidden[len(vm.WITHOUT_UDEV):] == cmd


def test_plain_9p_and_a_failed_virtiofsd_root_both_force_9p(monkeypatch, tmp_path):
    monkeypatch.setattr(vm, "vng_path", lambda: "/usr/bin/vng")
    for root in (guestroot.GuestRoot("9p", "9p"),
                 guestroot.GuestRoot("virtiofs", "9p", why_9p="no network")):
        cmd = vm.vng_command(Path("/boot/vmlinuz-x"), tmp_path, None, "tcg", cpus=1, root=root)
        assert cmd[0] == "/usr/bin/vng" and cmd[1] == "--force-9p"


def test_an_unknown_guest_root_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("LOOPQUAL_GUEST_ROOT", "nfs")
    with pytest.raises(guestroot.GuestRootError, match="virtiofs, 9p"):
        guestroot.prepare()


def test_a_root_that_cannot_be_made_falls_back_to_9p_and_says_why(monkeypatch):
    monkeypatch.setenv("LOOPQUAL_GUEST_ROOT", "virtiofs")
    monkeypatch.setattr(guestroot, "_PREPARED", {})

    def fail(say):
        raise guestroot.GuestRootError("the mirror is unreachable")

    monkeypatch.setattr(guestroot, "_make", fail)
    said = []
    gr = guestroot.prepare(say=said.append)
    assert (gr.asked, gr.kind) == ("virtiofs", "9p")
    assert gr.record()["fallback_reason"] == "the mirror is unreachable"
    assert "plain 9p" in said[0]


def test_the_wrapper_runs_the_roots_virtiofsd_with_the_roots_loader():
    text = guestroot.wrapper_text(Path("/c/roots/trixie-x"))
    assert text.startswith("#!/bin/sh\n")
    assert ('exec /c/roots/trixie-x/lib64/ld-linux-x86-64.so.2 --library-path '
            '/c/roots/trixie-x/usr/lib/x86_64-linux-gnu:/c/roots/trixie-x/lib/x86_64-linux-gnu '
            '/c/roots/trixie-x/usr/libexec/virtiofsd "$@"') in text


def test_the_path_vng_gets_holds_the_venv_even_on_the_first_call(monkeypatch, tmp_path):
    """vng runs virtme-run by name: the PATH handed to it must hold the venv's bin from the
    very first guest of a process (a first boot once failed with 'virtme-run: not found')."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    root = guestroot.GuestRoot("virtiofs", "virtiofs", bin_dir=tmp_path / "bin")
    cmd = vm.vng_command(Path("/boot/vmlinuz-x"), tmp_path, None, "tcg", cpus=1, root=root)
    path = cmd[1].removeprefix("PATH=").split(":")
    assert path[0] == str(tmp_path / "bin") and str(vm.venv_bin()) in path
    vm.vng_command(Path("/boot/vmlinuz-x"), tmp_path, None, "tcg", cpus=1, root=root)
    assert os.environ["PATH"].split(":").count(str(vm.venv_bin())) == 1
