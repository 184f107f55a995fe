"""loopqual shell: boot a guest with the module loaded and hand the user its shell, to
reproduce a regression by hand; or, with --run, run the given commands there, print what each
printed and stop the guest (for a script or a CI job). Driven with pexpect on the guest
console: the console
echoes what is typed, so the prompt and the exit-code marker are written in a way that
cannot appear in an echoed command."""

from __future__ import annotations

import re
import shlex
import sys
import time
from pathlib import Path

import pexpect

from loopqual.boot import vm
from loopqual.common.errors import LoopqualError
from loopqual.config import data
from loopqual.kernel import kernels
from loopqual.module import build as buildmod
from loopqual.module import sources

PROMPT = "@@LQSH>"  # set as PS1='@@''LQSH>': the echo shows the quotes, the prompt does not
RC = re.compile(r"@@RC=(\d+)@@")


class Console:
    def __init__(self, child: pexpect.spawn):
        self.child = child

    def run(self, command: str, timeout: float = 60) -> tuple[int, str]:
        self.child.sendline(f"{command}; echo \"@@RC=$?\"'@@'")
        self.child.expect(RC, timeout=timeout)
        out = self.child.before.decode(errors="replace") if isinstance(self.child.before, bytes) \
            else self.child.before
        rc = int(self.child.match.group(1))
        self.child.expect_exact(PROMPT, timeout=timeout)
        # drop the echoed command line
        return rc, out.split("\n", 1)[1] if "\n" in out else ""


def setup_lines(ko: str, module_params: dict, controls: dict) -> list[str]:
    """The guest shell lines that load the module and set its controls. Every value that
    comes from the user or the file system (the .ko path under the cache, parameter values)
    is shell-quoted: a space or a ';' in it stays inside one argument."""
    q = shlex.quote

    def value(v) -> str:
        return str(int(v)) if isinstance(v, bool) else str(v)

    # As the guest runner's insmod: a value with a space reaches the kernel in double quotes.
    args = shlex.join(f'{k}="{value(v)}"' if " " in value(v) else f"{k}={value(v)}"
                      for k, v in module_params.items())
    steps = [f"for m in $(modinfo -F depends {q(ko)} | tr , ' '); do modprobe \"$m\"; done",
             f"insmod {q(ko)} {args}".rstrip(),
             "for i in $(seq 50); do ls /dev/video* >/dev/null 2>&1 && break; sleep 0.2; done; "
             "ls /dev/video*"]
    steps += [f"for d in /dev/video*; do v4l2-ctl -d \"$d\" -c {q(f'{k}={value(v)}')}; done"
              for k, v in controls.items()]
    return steps


def guest_command(kernel: data.Kernel, vmlinuz: Path, accel: str) -> list[str]:
    """The interactive guest's vng command: booted as qualify boots this kernel (its
    guest_udev and guest_append from kernels.toml), with a shell instead of the runner; the
    repository's results/ is the guest's shared read-write directory (made if missing)."""
    (vm.REPO / "results").mkdir(exist_ok=True)
    cmd = vm.vng_command(vmlinuz, rwdir=vm.REPO / "results", plan=None, accel=accel,
                         exec_cmd="", udev=kernel.guest_udev, append=kernel.guest_append)
    return [c for c in cmd if c != "--verbose"]


def _run_commands(con: Console, commands: list[str], timeout_s: float) -> int:
    """Each command in turn, its output printed; the first non-zero exit status, else 0."""
    first_failure = 0
    for command in commands:
        try:
            rc, out = con.run(command, timeout=timeout_s)
        except pexpect.TIMEOUT:
            raise LoopqualError(f"in the guest, `{command}` did not finish within "
                                f"{timeout_s:.0f} s") from None
        print(f"$ {command}\n{out.rstrip()}\n[exit {rc}]", flush=True)
        first_failure = first_failure or rc
    return first_failure


def run(kernel_name: str | None, module_name: str, params_name: str,
        commands: list[str] | None = None, timeout_s: float = 600) -> int:
    """The interactive shell; or, given `commands`, each run in turn (each within timeout_s),
    its output printed; returns the first non-zero exit status, else 0."""
    if not commands and not sys.stdin.isatty():
        raise LoopqualError("loopqual shell needs an interactive terminal (stdin is not a tty); "
                            "give --run COMMAND to run commands without one")
    all_kernels = data.load_kernels()
    mirror, all_sources = data.load_sources()
    kernel = data.resolve_kernel(kernel_name, all_kernels) if kernel_name else \
        next(k for k in all_kernels.values() if k.default)
    src = data.resolve_source(module_name, all_sources)
    ps = data.resolve_params(params_name, data.load_params())
    ik = kernels.resolve(kernel)
    tree, patches = sources.prepare(src, all_sources, mirror)
    b = buildmod.build(src.name, tree, patches, ik)
    if b.status != "ok":
        raise LoopqualError(f"{src.name} does not build on {kernel.name}:\n{b.log_tail}")
    accel = vm.detect_accel(ik.vmlinuz)
    cmd = guest_command(kernel, ik.vmlinuz, accel)
    print(f"loopqual: booting {ik.release} ({accel.upper()}), then loading {src.name} "
          f"with {ps.name}...", flush=True)
    child = pexpect.spawn(cmd[0], cmd[1:], timeout=vm.BOOT_TIMEOUT_S, encoding="utf-8",
                          codec_errors="replace", dimensions=(50, 200))
    t0 = time.monotonic()
    try:
        child.expect([r"# $", r"\$ $", r"#\s*$"], timeout=vm.BOOT_TIMEOUT_S)
    except (pexpect.EOF, pexpect.TIMEOUT) as exc:
        child.terminate(force=True)
        why = "ended" if isinstance(exc, pexpect.EOF) else \
            f"gave no shell prompt within {vm.BOOT_TIMEOUT_S} s"
        raise LoopqualError(f"the guest {why} before its shell came up; its last output: "
                            f"{(child.before or '').strip()[-600:]}") from None
    child.sendline("export PS1='@@''LQSH>'")
    child.expect_exact(PROMPT)
    con = Console(child)
    steps = setup_lines(b.ko, ps.module, ps.controls)
    for step in steps:
        rc, out = con.run(step)
        if rc != 0:
            child.terminate(force=True)
            raise LoopqualError(f"in the guest, `{step}` failed (exit {rc}): {out.strip()}")
    loaded = (f"loopqual: guest up in {time.monotonic() - t0:.0f} s; {src.name} loaded with "
              f"{' '.join(f'{k}={v}' for k, v in ps.all_params.items()) or 'defaults'}. "
              f"Kernel {ik.release}.")
    if commands:
        print(loaded, flush=True)
        try:
            return _run_commands(con, commands, timeout_s)
        finally:
            child.terminate(force=True)
    print(f"\n{loaded}\nLeave the shell (exit or Ctrl-D) to stop the guest.", flush=True)
    child.sendline("export PS1='loopqual-guest# '")
    child.interact()
    child.close()
    return 0
