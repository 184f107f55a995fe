"""Fixtures shared by every scenario suite (contract, clients, browser).

Runs inside the guest, one pytest run per cell, with LOOPQUAL_CELL pointing at cell.json.
Nothing touches a device at import time: the host collects these modules to list
rules -> scenarios.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib import proc  # noqa: E402
from lib.v4l2 import CID_KEEP_FORMAT, Device, V4L2Error, ename  # noqa: E402

PARAM_DIR = Path("/sys/module/v4l2loopback/parameters")
DEFAULT_TIMEOUT = 120  # seconds per scenario; a hang becomes a failure


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "rules(*ids): contract rules (buffer-management.md) this scenario checks")
    config.addinivalue_line(
        "markers", "timeout(seconds): per-scenario wall-clock limit (default 120 s)")
    config.addinivalue_line(
        "markers", "needs_kernel_config(*options): kernel options (CONFIG_X) without which the "
        "scenario can only skip; `loopqual rules` counts it only if a configured kernel has them")
    config.addinivalue_line(
        "markers", "upstream_report(number): the upstream v4l2loopback issue this scenario "
        "reproduces (suite regressions; scenarios/regressions/reports.toml describes it)")
    config.addinivalue_line(
        "markers", "programs(*names): the real programs the scenario runs in the guest (a "
        "scenario without it replays or calls the device itself); `loopqual rules` shows them")


_FILE_NUMBER = re.compile(r"test_(\d+)_")


def pytest_collection_modifyitems(items):
    """Scenario files run in the order of their numbers (test_9_random before test_10_races),
    not of their names as text, which pytest sorts by; files keep their directory's place and
    scenarios their order within a file."""
    dirs: dict[str, int] = {}
    for it in items:
        dirs.setdefault(str(it.path.parent), len(dirs))

    def key(pair):
        i, it = pair
        m = _FILE_NUMBER.match(it.path.name)
        return (dirs[str(it.path.parent)], int(m[1]) if m else -1, i)

    items[:] = [it for _, it in sorted(enumerate(items), key=key)]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A V4L2 call whose error a scenario does not catch was one it needed to succeed: say so
    (what was expected, what happened) instead of leaving a bare errno as the verdict."""
    try:
        return (yield)
    except V4L2Error as exc:
        pytest.fail(f"{exc.op}: expected success (the scenario needs this call), got "
                    f"{ename(exc.errno)}", pytrace=True)


@dataclass
class Cell:
    device: str
    devices: list[str]
    id: str = "cell"
    module: str = "unknown"
    module_version: str = ""
    param_set: str = ""
    params: dict = field(default_factory=dict)
    controls: dict = field(default_factory=dict)
    kernel_release: str = ""
    work_dir: str = "/tmp"
    # effective values (what the loaded module really uses)
    exclusive_caps: bool = False
    max_buffers: int = 2
    max_openers: int = 10
    keep_format: int = 0

    def describe(self) -> str:
        return (f"{self.module} {self.param_set} exclusive_caps={int(self.exclusive_caps)} "
                f"max_buffers={self.max_buffers} max_openers={self.max_openers} "
                f"keep_format={self.keep_format}")


def _read_param(name: str) -> str | None:
    try:
        return (PARAM_DIR / name).read_text().strip()
    except OSError:
        return None


def _as_bool(text: str) -> bool:
    return text.strip().upper() in ("Y", "1", "TRUE")


def load_cell() -> Cell:
    path = os.environ.get("LOOPQUAL_CELL")
    data: dict = {}
    if path:
        data = json.loads(Path(path).read_text())
    elif Path("/dev/video0").exists():
        data = {"device": "/dev/video0", "devices": ["/dev/video0"]}
    else:
        pytest.fail("LOOPQUAL_CELL is not set and /dev/video0 does not exist: "
                    "no v4l2loopback device to test")
    device = data.get("device") or data["devices"][0]
    devices = data.get("devices") or [device]
    params = dict(data.get("params") or {})
    cell = Cell(device=device, devices=devices, id=data.get("id", "cell"),
                module=data.get("module", "unknown"),
                module_version=data.get("module_version", ""),
                param_set=data.get("param_set", ""), params=params,
                controls=dict(data.get("controls") or {}),
                kernel_release=data.get("kernel_release", os.uname().release),
                work_dir=data.get("work_dir") or "/tmp")
    idx = devices.index(device) if device in devices else 0
    ec = _read_param("exclusive_caps")
    if ec is not None:
        parts = ec.split(",")
        cell.exclusive_caps = _as_bool(parts[idx] if idx < len(parts) else parts[0])
    else:
        cell.exclusive_caps = bool(params.get("exclusive_caps", 0))
    mb = _read_param("max_buffers")
    cell.max_buffers = int(mb) if mb else int(params.get("max_buffers", 2))
    mo = None
    node = Path("/sys/class/video4linux") / Path(device).name / "max_openers"
    try:
        mo = node.read_text().strip()
    except OSError:
        mo = _read_param("max_openers")
    cell.max_openers = int(mo) if mo else int(params.get("max_openers", 10))
    try:
        with Device(device) as d:
            cell.keep_format = d.g_ctrl(CID_KEEP_FORMAT)
    except OSError:
        cell.keep_format = int(cell.controls.get("keep_format", 0))
    cell.params.update(exclusive_caps=int(cell.exclusive_caps), max_buffers=cell.max_buffers,
                       max_openers=cell.max_openers)
    cell.controls["keep_format"] = cell.keep_format
    return cell


@pytest.fixture(scope="session")
def cell() -> Cell:
    return load_cell()


# -- kernel health around every scenario (H1) ---------------------------------------------

def _harness(name: str):
    """A guest-safe module of loopqual.common: the venv's, else the repository's own copy."""
    import importlib

    try:
        return importlib.import_module(f"loopqual.common.{name}")
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
        return importlib.import_module(f"loopqual.common.{name}")


def find_splats(lines: list[str]) -> list[dict]:
    return _harness("health").find_splats(lines)


def _progress(cell_dir: str | None, line: str) -> None:
    """Append to <work_dir>/scenario-progress.log: survives a pytest killed by an oops."""
    if not cell_dir:
        return
    try:
        with open(os.path.join(cell_dir, "scenario-progress.log"), "a") as f:
            f.write(line + "\n")
    except OSError:
        pass


@pytest.fixture(autouse=True)
def kernel_health(request):
    work_dir = None
    path = os.environ.get("LOOPQUAL_CELL")
    if path:
        try:
            work_dir = json.loads(Path(path).read_text()).get("work_dir")
        except (OSError, ValueError):
            pass
    _progress(work_dir, f"START {request.node.nodeid}")
    kmsg = _harness("kmsg").KmsgReader()
    yield
    _progress(work_dir, f"END {request.node.nodeid}")
    lines = kmsg.drain(timestamps=False)
    kmsg.close()
    request.node.kernel_log = lines
    splats = find_splats(lines)
    if splats:
        first = splats[0]
        ctx = "\n".join(first["context"])
        pytest.fail(f"H1: kernel log splat during the scenario ({first['pattern']}): "
                    f"{first['line']}\n{ctx}", pytrace=False)


@pytest.fixture(autouse=True)
def fresh_keep_format(cell):
    """In keep_format=1 cells every scenario starts from the set's own state: keep_format is
    turned 0 then 1 again on the idle device, so that a format an earlier scenario left behind
    (kept, as F5 says) is forgotten (A6) and does not decide what this scenario sees.
    Scenarios about keep_format itself (F5, X1) make their own writer leave within them."""
    if cell.keep_format:
        try:
            with Device(cell.device) as d:
                d.s_ctrl(CID_KEEP_FORMAT, 0)
                d.s_ctrl(CID_KEEP_FORMAT, 1)
        except OSError as exc:
            pytest.fail(f"resetting keep_format 0 -> 1 before the scenario failed: {exc}",
                        pytrace=False)
    yield


@pytest.fixture(autouse=True)
def scenario_timeout(request):
    m = request.node.get_closest_marker("timeout")
    seconds = int(m.args[0]) if m else DEFAULT_TIMEOUT

    def on_alarm(signum, frame):
        raise proc.Hang(f"scenario did not finish within {seconds}s: a call hangs")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# -- openers ------------------------------------------------------------------------------

class Openers:
    """Factory for openers; closes every one of them after the scenario."""

    def __init__(self, cell: Cell):
        self.cell = cell
        self.devs: list[Device] = []

    def fd(self, flags: int = os.O_RDWR | os.O_NONBLOCK, path: str | None = None) -> Device:
        d = Device(path or self.cell.device, flags)
        self.devs.append(d)
        return d

    def proc(self, name: str = "opener", flags: int = os.O_RDWR | os.O_NONBLOCK,
             path: str | None = None) -> proc.Worker:
        return proc.Worker(path or self.cell.device, flags, name=name)

    def close_all(self) -> list[str]:
        for d in self.devs:
            try:
                d.close()
            except OSError:
                pass
        self.devs.clear()
        return proc.stop_all()


@pytest.fixture
def openers(cell):
    o = Openers(cell)
    yield o
    stuck = o.close_all()
    if stuck:
        pytest.fail(f"openers could not be stopped (stuck in the kernel?): {stuck}",
                    pytrace=False)


def need_openers(cell: Cell, n: int) -> None:
    if cell.max_openers < n:
        pytest.skip(f"needs {n} openers at once; max_openers={cell.max_openers} in this cell "
                    f"(L1 is what applies here)")
