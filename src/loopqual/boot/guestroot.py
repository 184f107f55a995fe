"""How the guest sees the host's root: virtiofs with a page cache (the default), or plain 9p.

vng exports / to the guest. Over 9p (QEMU's, as vng mounts it) nothing the guest reads is
cached: every browser, OBS and Python start reads its files through the host again. Over
virtiofs with cache=always (vng's choice for a read-only root) a file read twice is read once.
vng needs the Rust virtiofsd for that; bookworm ships only QEMU's C one, which vng cannot
drive, so loopqual runs Debian trixie's from a root of its own (made with mmdebstrap into the
cache, like the tool roots) through a wrapper that vng finds first on PATH.

LOOPQUAL_GUEST_ROOT=9p keeps plain 9p. Where the virtiofsd root cannot be made, guests boot on
9p and the run says why; which root each boot really had, the guest itself reports (the
runner's boot event), and results.json records it."""

from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from loopqual.common.errors import LoopqualError
from loopqual.common.paths import cache_dir
from loopqual.config import data
from loopqual.debian.apt import AptError, PrivateApt
from loopqual.kernel import buildroot

SUITE = "trixie"
PACKAGE = "virtiofsd"
CHOICES = ("virtiofs", "9p")
INDEX_MAX_AGE_S = 7 * 24 * 3600  # the suite's index is downloaded again after a week


class GuestRootError(LoopqualError):
    pass


@dataclass(frozen=True)
class GuestRoot:
    asked: str  # what LOOPQUAL_GUEST_ROOT asked for
    kind: str  # what vng is told to use: "virtiofs" or "9p"
    bin_dir: Path | None = None  # holds the virtiofsd wrapper; on PATH before vng's search
    version: str = ""  # virtiofsd's own --version line
    why_9p: str = ""  # when virtiofs was asked for and cannot be had

    def record(self) -> dict:
        return {"asked": self.asked, "kind": self.kind, "virtiofsd": self.version,
                "fallback_reason": self.why_9p}


_LOCK = threading.Lock()
_PREPARED: dict[str, GuestRoot] = {}


def asked() -> str:
    value = os.environ.get("LOOPQUAL_GUEST_ROOT", "virtiofs").strip() or "virtiofs"
    if value not in CHOICES:
        raise GuestRootError(f"LOOPQUAL_GUEST_ROOT={value!r}: give one of {', '.join(CHOICES)}")
    return value


def wrapper_text(root: Path) -> str:
    """A shell script that runs the root's virtiofsd with the root's own loader and libraries
    (trixie's glibc is newer than the host's): no chroot, so it sees the host's /."""
    loader = root / "lib64" / "ld-linux-x86-64.so.2"
    libs = f"{root}/usr/lib/x86_64-linux-gnu:{root}/lib/x86_64-linux-gnu"
    return ("#!/bin/sh\n# made by loopqual (src/loopqual/boot/guestroot.py): trixie's virtiofsd on the host\n"
            f"exec {loader} --library-path {libs} {root}/usr/libexec/virtiofsd \"$@\"\n")


def _make(say) -> GuestRoot:
    mirror, _ = data.load_sources()
    why = f"the guest root's virtiofsd ({PACKAGE} from {SUITE})"
    try:
        apt = PrivateApt(mirror, SUITE)
        with apt.locked():
            apt.update(max_age_s=INDEX_MAX_AGE_S)
    except AptError as exc:
        raise GuestRootError(f"{why}: {exc}") from None
    root, _made_s = buildroot.ensure(buildroot.plan(apt, [PACKAGE], why), say=say)
    if not (root / "usr" / "libexec" / "virtiofsd").is_file():
        raise GuestRootError(f"{why}: the root {root} has no /usr/libexec/virtiofsd")
    bin_dir = cache_dir() / "guest-root-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "virtiofsd"
    text = wrapper_text(root)
    if not wrapper.is_file() or wrapper.read_text() != text:
        tmp = bin_dir / f".virtiofsd.{os.getpid()}"
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(wrapper)
    try:
        out = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise GuestRootError(f"{why}: {wrapper} --version failed ({exc})") from None
    return GuestRoot("virtiofs", "virtiofs", bin_dir, out.strip().splitlines()[0] if out else "")


def prepare(say=print) -> GuestRoot:
    """The guest root to boot with, made once per process (call before a guest boots: making
    the virtiofsd root runs mmdebstrap). Falls back to 9p, saying why, when it cannot be made."""
    want = asked()
    with _LOCK:
        if want in _PREPARED:
            return _PREPARED[want]
        if want == "9p":
            gr = GuestRoot("9p", "9p")
        else:
            try:
                gr = _make(say)
            except LoopqualError as exc:
                gr = GuestRoot("virtiofs", "9p", why_9p=str(exc))
                say(f"loopqual: guests boot on plain 9p (no page cache): {exc}; "
                    f"set LOOPQUAL_GUEST_ROOT=9p to choose it and silence this")
        _PREPARED[want] = gr
        return gr


def vng_prefix(gr: GuestRoot) -> tuple[list[str], list[str]]:
    """(what comes before vng on its command line, vng's own options) for this root."""
    if gr.kind != "virtiofs" or gr.bin_dir is None:
        return [], ["--force-9p"]
    return ["env", f"PATH={gr.bin_dir}:{os.environ.get('PATH', '')}"], []

