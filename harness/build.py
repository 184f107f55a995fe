"""Out-of-tree module builds with kbuild, cached by a hash of what goes into them:
the source tree's files, the patches, the kernel release and headers version, and the
compiler. An unchanged second run compiles nothing; a failed build is a result (cached
too: the same inputs fail the same way) with the compiler's error."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .kernels import InstalledKernel
from .paths import cache_dir

LOG_TAIL_LINES = 40
_WARNING = re.compile(r"\bwarning: ")


@dataclass
class BuildResult:
    module: str
    kernel: str
    release: str
    status: str  # ok | failed
    key: str
    ko: str | None
    log: str
    log_tail: str
    warnings: list[str]
    duration_s: float
    cached: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("log")
        return d


def compiler_id() -> str:
    proc = subprocess.run(["gcc", "--version"], capture_output=True, text=True)
    return proc.stdout.splitlines()[0] if proc.returncode == 0 and proc.stdout else "no-gcc"


def cache_key(tree: Path, patches: list[Path], kernel: InstalledKernel, compiler: str) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in tree.rglob("*") if p.is_file()):
        rel = f.relative_to(tree)
        if rel.suffix in (".o", ".ko", ".cmd", ".mod", ".symvers", ".order") or rel.name.startswith("."):
            continue
        h.update(str(rel).encode() + b"\0" + f.read_bytes() + b"\0")
    for p in patches:
        h.update(b"patch\0" + p.name.encode() + b"\0" + p.read_bytes())
    h.update(f"\0{kernel.release}\0{kernel.headers_version}\0{compiler}".encode())
    return h.hexdigest()[:20]


def build(module: str, tree: Path, patches: list[Path], kernel: InstalledKernel,
          jobs: int = 2) -> BuildResult:
    key = cache_key(tree, patches, kernel, compiler_id())
    out = cache_dir() / "build" / kernel.release / f"{_safe(module)}-{key}"
    meta = out / "build.json"
    if meta.exists():
        data = json.loads(meta.read_text())
        if data["status"] == "failed" or (data["ko"] and Path(data["ko"]).exists()):
            data["log"] = (out / "build.log").read_text() if (out / "build.log").exists() else ""
            return BuildResult(**{**data, "cached": True})
    if out.exists():
        shutil.rmtree(out)
    work = out / "src"
    shutil.copytree(tree, work)
    t0 = time.monotonic()
    proc = subprocess.run(
        ["make", f"-j{jobs}", "-C", str(kernel.build_dir), f"M={work}", "modules"],
        capture_output=True, text=True,
    )
    log = proc.stdout + proc.stderr
    ko = work / "v4l2loopback.ko"
    ok = proc.returncode == 0 and ko.exists()
    result = BuildResult(
        module=module, kernel=kernel.name, release=kernel.release,
        status="ok" if ok else "failed", key=key, ko=str(ko) if ok else None, log=log,
        log_tail="\n".join(_interesting_tail(log)),
        warnings=[line for line in log.splitlines() if _WARNING.search(line)],
        duration_s=round(time.monotonic() - t0, 2),
    )
    (out / "build.log").write_text(log)
    meta.write_text(json.dumps(result.to_dict(), indent=1))
    return result


def _interesting_tail(log: str) -> list[str]:
    """The compiler's errors if there are any (they are what a reader needs), else the end."""
    lines = log.splitlines()
    errors = [i for i, line in enumerate(lines) if "error:" in line or "Error " in line]
    if errors:
        start = max(0, errors[0] - 3)
        return lines[start : start + LOG_TAIL_LINES]
    return lines[-LOG_TAIL_LINES:]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[-60:]
