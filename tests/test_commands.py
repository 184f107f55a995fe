"""Commands are built as argument lists: a path with a space or a ';' (an --out directory,
the cache) stays one argument in the guest's --exec line and in `loopqual shell`'s set-up
lines, and runs nothing else."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from loopqual.boot import guestroot, shell, vm
from loopqual.common.paths import REPO

NASTY = Path("/tmp/out dir; touch /tmp/x")


@pytest.fixture(autouse=True)
def plain_9p_root(monkeypatch):
    """These tests look at vng's command line, not at the guest root (tests/test_guest_root.py):
    no virtiofsd root is made on the host for them."""
    monkeypatch.setattr(guestroot, "prepare", lambda say=print: guestroot.GuestRoot("9p", "9p"))


def test_guest_exec_line_splits_back_into_the_intended_argv(monkeypatch):
    monkeypatch.setattr(vm, "vng_path", lambda: "/usr/bin/vng")
    plan = NASTY / "guest" / "plan-boot1.json"
    line = vm.guest_exec("loopqual.guest.runner", plan)
    words = shlex.split(line)
    assert words[:3] == ["cd", str(REPO), "&&"]
    assert words[3:] == ["exec", str(vm.venv_bin() / "python"), "-m", "loopqual.guest.runner",
                         str(plan)]


def test_vng_gets_a_plain_rwdir_that_leads_to_the_asked_one(monkeypatch, tmp_path):
    """vng passes --rwdir to virtme-run through `sh -c` unquoted: it must only ever see a
    plain path (a link to the real directory), and the plan path under it."""
    monkeypatch.setattr(vm, "vng_path", lambda: "/usr/bin/vng")
    monkeypatch.setenv("LOOPQUAL_CACHE", str(tmp_path / "cache"))
    rwdir = tmp_path / "out dir; touch x" / "guest"
    rwdir.mkdir(parents=True)
    plan = rwdir / "plan-boot1.json"
    plan.write_text("{}")
    cmd = vm.vng_command(Path("/boot/vmlinuz-6.1.0-1-amd64"), rwdir, plan, "tcg", cpus=1)
    given = cmd[cmd.index("--rwdir") + 1]
    assert shlex.quote(given) == given and Path(given).resolve() == rwdir.resolve()
    words = shlex.split(cmd[cmd.index("--exec") + 1])
    assert len(words) == 8 and Path(words[-1]).resolve() == plan.resolve()
    plain = tmp_path / "plain"
    assert vm.shell_safe_alias(plain) == plain


def test_shell_setup_lines_quote_the_module_path_and_values():
    ko = "/cache/build dir; touch /tmp/x/v4l2loopback.ko"
    lines = shell.setup_lines(ko, {"exclusive_caps": True, "card_label": "My Cam; reboot"},
                              {"keep_format": 1})
    deps, insmod, _wait, ctl = lines
    assert shlex.split(insmod) == ["insmod", ko, "exclusive_caps=1", 'card_label="My Cam; reboot"']
    assert shlex.split(deps.split("$(", 1)[1].split(")", 1)[0])[:3] == ["modinfo", "-F", "depends"]
    assert ko in shlex.split(deps.split("$(", 1)[1].split(" |", 1)[0])
    assert shlex.split(ctl)[-3:] == ["-c", "keep_format=1;", "done"]


def test_a_kernel_without_guest_udev_boots_vng_in_a_namespace_with_no_udevd(monkeypatch, tmp_path):
    """guest_udev = false (the debug kernel): vng runs under `unshare --mount` with an empty
    tmpfs over /usr/lib/systemd, the rest of its command line unchanged; the kernels file says
    which kernel asks for it."""
    from loopqual.config import data

    monkeypatch.setattr(vm, "vng_path", lambda: "/usr/bin/vng")
    plan = tmp_path / "plan-boot1.json"
    plain = vm.vng_command(Path("/boot/vmlinuz-x"), tmp_path, plan, "tcg", cpus=1)
    hidden = vm.vng_command(Path("/boot/vmlinuz-x"), tmp_path, plan, "tcg", cpus=1, udev=False)
    assert hidden[len(vm.WITHOUT_UDEV):] == plain and plain[0] == "/usr/bin/vng"
    assert hidden[:4] == ["unshare", "--mount", "--propagation", "private"]
    script = hidden[hidden.index("-c") + 1]
    assert script.startswith("mount -t tmpfs ") and script.endswith('/usr/lib/systemd && exec "$@"')
    kernels = data.load_kernels()
    assert kernels["debian-6.12-debug"].guest_udev is False
    assert kernels["debian-6.12"].guest_udev is True


def test_a_kernels_guest_append_goes_on_the_guest_kernels_command_line(monkeypatch, tmp_path):
    """guest_append (the debug kernel: KFENCE's sample interval) is added after loopqual's own
    parameters; a kernel without it boots with those alone."""
    from loopqual.config import data

    monkeypatch.setattr(vm, "vng_path", lambda: "/usr/bin/vng")
    plan = tmp_path / "plan-boot1.json"
    kernels = data.load_kernels()
    debug = kernels["debian-6.12-debug"].guest_append
    assert debug == "kfence.sample_interval=10000" and kernels["debian-6.12"].guest_append == ""
    cmd = vm.vng_command(Path("/boot/vmlinuz-x"), tmp_path, plan, "tcg", cpus=1, append=debug)
    assert cmd[cmd.index("--append") + 1] == ("panic=-1 printk.devkmsg=on transparent_hugepage=never "
                                              "kfence.sample_interval=10000")
    plain = vm.vng_command(Path("/boot/vmlinuz-x"), tmp_path, plan, "tcg", cpus=1)
    assert plain[plain.index("--append") + 1] == "panic=-1 printk.devkmsg=on transparent_hugepage=never"


def test_loopqual_shell_boots_a_kernel_as_qualify_does(monkeypatch):
    """`loopqual shell` on the debug kernel boots it as qualify does: without udev and with its
    guest_append; a production kernel with udev and loopqual's parameters alone. The shell gets
    no --exec script and no --verbose (its console is the user's)."""
    from loopqual.config import data

    monkeypatch.setattr(vm, "vng_path", lambda: "/usr/bin/vng")
    kernels = data.load_kernels()
    debug = shell.guest_command(kernels["debian-6.12-debug"], Path("/boot/vmlinuz-x"), "tcg")
    assert debug[:len(vm.WITHOUT_UDEV)] == vm.WITHOUT_UDEV
    assert debug[debug.index("--append") + 1].endswith(" kfence.sample_interval=10000")
    plain = shell.guest_command(kernels["debian-6.12"], Path("/boot/vmlinuz-x"), "tcg")
    assert plain[0] == "/usr/bin/vng"
    assert plain[plain.index("--append") + 1] == "panic=-1 printk.devkmsg=on transparent_hugepage=never"
    assert "--exec" not in plain and "--verbose" not in plain and "--disable-kvm" in plain


def test_guest_memory_comes_from_loopqual_guest_memory_gib(monkeypatch, tmp_path):
    """Each guest gets 2 GiB unless LOOPQUAL_GUEST_MEMORY_GIB says otherwise; a value that is
    not a whole number of GiB is refused with the variable's name, and the number of guests
    the machine carries follows the memory each takes."""
    import pytest

    from loopqual.common.errors import LoopqualError

    monkeypatch.setattr(vm, "vng_path", lambda: "/usr/bin/vng")
    plan = tmp_path / "plan-boot1.json"
    monkeypatch.delenv("LOOPQUAL_GUEST_MEMORY_GIB", raising=False)
    cmd = vm.vng_command(Path("/boot/vmlinuz-x"), tmp_path, plan, "tcg", cpus=1)
    assert cmd[cmd.index("--memory") + 1] == "2G"
    assert vm.machine_jobs(cpus=8, mem_kib=24 * 1024 * 1024) == 8
    monkeypatch.setenv("LOOPQUAL_GUEST_MEMORY_GIB", "4")
    cmd = vm.vng_command(Path("/boot/vmlinuz-x"), tmp_path, plan, "tcg", cpus=1)
    assert cmd[cmd.index("--memory") + 1] == "4G"
    assert vm.machine_jobs(cpus=8, mem_kib=24 * 1024 * 1024) == 5
    monkeypatch.setenv("LOOPQUAL_GUEST_MEMORY_GIB", "4G")
    with pytest.raises(LoopqualError, match="LOOPQUAL_GUEST_MEMORY_GIB='4G'"):
        vm.vng_command(Path("/boot/vmlinuz-x"), tmp_path, plan, "tcg", cpus=1)
