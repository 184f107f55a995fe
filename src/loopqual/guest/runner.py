"""The guest side: one Python process per boot walks every cell of the plan.

For each cell: insmod -> wait for the nodes -> set controls -> the browsers a suite asks to
have started ahead, in the background (programs/prestart.py) -> suites (pytest scenario
suites in a forked child; v4l2-compliance profiles, some with a producer process writing
frames) -> kernel-log check -> close all -> rmmod. Every step has a timeout; a step that
overruns is killed and the cell is marked incomplete with what it left behind.

Results go to <out>/cells/<cell id>.json in the shared read-write directory as each cell
ends; progress goes to stdout as lines "@@LQ {json}" that the host reads live.
A cell whose module cannot be removed ends the boot (exit 3): the host reboots the guest
and runs the remaining cells.

Run as: python -m loopqual.guest.runner PLAN.json
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from loopqual.common import procgroup
from loopqual.common.kmsg import KmsgReader
from loopqual.common.suite_record import (
    finished_path,
    merge_rerun,
    read_session,
    rerun_candidates,
    unjudged_line,
)
from loopqual.guest.programs import prestart

EVENT_PREFIX = "@@LQ "
EXIT_REBOOT = 3
MODULE = "v4l2loopback"


def emit(event: str, **fields) -> None:
    sys.stdout.write(EVENT_PREFIX + json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------- processes
def run_cmd(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int | None, str, bool]:
    """Run with a timeout in its own process group; (exit code or None, output, timed out).
    On timeout the whole group gets SIGKILL (signalling only a wrapper would leave the child)."""
    proc = procgroup.spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out.decode(errors="replace"), False
    except subprocess.TimeoutExpired:
        procgroup.kill(proc.pid)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:  # unkillable (stuck in the kernel)
            out = b""
        return None, out.decode(errors="replace"), True


def run_watched(cmd: list[str], timeout: float, idle: float) -> tuple[int | None, str, str]:
    """Run with output streamed line by line: killed (whole group) when it runs past timeout
    or prints nothing for idle seconds. (exit code or None, output, '' or why it was killed)."""
    import select

    proc = procgroup.spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    chunks: list[bytes] = []
    start = last = time.monotonic()
    killed = ""
    while True:
        r, _, _ = select.select([proc.stdout], [], [], 0.5)
        now = time.monotonic()
        if r:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            chunks.append(chunk)
            last = now
        if now - start > timeout:
            killed = f"did not finish within {timeout:.0f} s"
        elif now - last > idle:
            killed = f"printed nothing for {idle:.0f} s (stuck in a test)"
        if killed:
            procgroup.kill(proc.pid)
            break
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        killed += "; it could not be killed (stuck in the kernel)"
    out = b"".join(chunks).decode(errors="replace")
    return (None if killed else proc.returncode), out, killed


def describe_process(pid: int) -> str:
    """State, command and kernel stack of a process: where a stuck one is stuck."""
    base = Path(f"/proc/{pid}")
    try:
        state = (base / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmd = (base / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (OSError, IndexError):
        return f"pid {pid}: gone"
    try:
        stack = " <- ".join(ln.split("] ", 1)[-1] for ln in (base / "stack").read_text().split("\n")[:6]
                            if ln.strip())
    except OSError:
        stack = "(no kernel stack readable)"
    return f"pid {pid} state {state} ({cmd[:80] or 'forked opener'}): {stack}"


def wait_suite(pid: int, timeout: float, finished: Path, grace: float = 20.0
               ) -> tuple[int | None, bool, list[str]]:
    """Wait for a suite's pytest child. (exit status, timed out, stuck): once pytest has
    finished its session (the recorder wrote `finished`), the process must be gone within
    `grace` seconds; if it is not (exit blocked in the kernel, typically close() of the
    device in a module that hangs there) it is killed and described, and the suite's
    results stand: waiting the suite's whole timeout would judge nothing more."""
    deadline = time.monotonic() + timeout
    finished_at = None
    while True:
        code = procgroup.reap(pid, 0)
        if code is not None:
            return code, False, []
        now = time.monotonic()
        if finished_at is None and finished.exists():
            finished_at = now
        if finished_at is not None and now - finished_at > grace:
            stuck = [describe_process(p) for p in procgroup.session_members(pid)]
            procgroup.kill(pid)
            procgroup.reap(pid, 10)
            left = [describe_process(p) for p in procgroup.session_members(pid)]
            return None, False, [
                f"the suite's processes had not exited {grace:.0f} s after pytest finished; "
                f"killed: {'; '.join(stuck) or 'none found'}"
                + (f"; still there after SIGKILL (stuck in the kernel): {'; '.join(left)}" if left else "")]
        if now > deadline:
            procgroup.kill(pid)
            procgroup.reap(pid, 15)
            return None, True, []
        time.sleep(0.1)


def wait_child(pid: int, timeout: float) -> tuple[int | None, bool]:
    """Wait for a forked child; on timeout SIGKILL its group. (exit status, timed out)."""
    code = procgroup.reap(pid, timeout)
    if code is not None:
        return code, False
    procgroup.kill(pid)
    procgroup.reap(pid, 15)
    return None, True


# ---------------------------------------------------------------------------- module
def module_loaded() -> bool:
    return Path(f"/sys/module/{MODULE}").exists()


def insmod(ko: str, params: dict) -> tuple[bool, str]:
    args = []
    for k, v in params.items():
        if isinstance(v, bool):
            v = int(v)
        v = str(v)
        args.append(f'{k}="{v}"' if " " in v else f"{k}={v}")
    deps = subprocess.run(["modinfo", "-F", "depends", ko], capture_output=True, text=True)
    for dep in filter(None, deps.stdout.strip().split(",")):
        run_cmd(["modprobe", dep], 60)
    code, out, timed_out = run_cmd(["insmod", ko, *args], 60)
    return code == 0, f"insmod {ko} {' '.join(args)}: " + (
        "timed out" if timed_out else f"exit {code} {out.strip()}")


def rmmod(timeout: float = 30) -> str:
    """ok | busy | failed (after retries: openers may still be exiting)."""
    last = ""
    for _ in range(5):
        if not module_loaded():
            return "ok"
        code, out, timed_out = run_cmd(["rmmod", MODULE], timeout)
        if code == 0:
            return "ok"
        last = "timeout" if timed_out else out
        time.sleep(1)
    return "busy" if "in use" in last else "failed"


def holders(devices: list[str]) -> dict[int, str]:
    """Processes (other than this one) that still have one of the device nodes open."""
    found = {}
    targets = set(devices)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in targets:
                    found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ") \
                        .decode(errors="replace").strip()[:200]
                    break
        except OSError:
            continue
    return found


def close_all(devices: list[str]) -> list[str]:
    """Kill whatever a suite left holding the device, so that rmmod judges the module and
    not a stray process. Returns what was found (a problem of the suite, reported)."""
    left = holders(devices)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while left and holders(devices) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [f"pid {pid} ({cmd}) still had the device open after the suites: killed"
            for pid, cmd in left.items()]


def video_nodes() -> set[str]:
    base = Path("/sys/class/video4linux")
    return {f"/dev/{p.name}" for p in base.glob("video*")} if base.exists() else set()


def wait_nodes(before: set[str], timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = sorted(n for n in video_nodes() - before if os.path.exists(n))
        if new:
            time.sleep(0.2)
            return sorted(n for n in video_nodes() - before if os.path.exists(n))
        time.sleep(0.1)
    return []


# A hang guard: v4l2-ctl took more than 30 s to start on the debug kernel beside other guests.
CONTROL_LIMIT_S = 120


def set_controls(device: str, controls: dict) -> list[str]:
    """Set V4L2 controls with VIDIOC_S_CTRL (through v4l2-ctl) and read them back."""
    errors = []
    for name, value in controls.items():
        code, out, timed_out = run_cmd(["v4l2-ctl", "-d", device, "-c", f"{name}={value}"],
                                       CONTROL_LIMIT_S)
        if code != 0:
            why = f"v4l2-ctl did not finish within {CONTROL_LIMIT_S} s" if timed_out else \
                f"v4l2-ctl exit {code}"
            errors.append(f"set {name}={value} on {device}: {why}: {out.strip()}")
            continue
        code, out, _ = run_cmd(["v4l2-ctl", "-d", device, "-C", name], CONTROL_LIMIT_S)
        m = re.search(rf"{name}:\s*(-?\d+)", out)
        if not m or int(m.group(1)) != int(value):
            errors.append(f"control {name} on {device} reads back {out.strip()!r}, "
                          f"expected {value}")
    return errors


def reset_state(devices: list[str], controls: dict) -> list[str]:
    """Put the device back where the parameter set starts it, before each suite and each
    compliance profile: keep_format=1 keeps a format past the last close (F5), so a format an
    earlier suite left must not decide what the next one sees. keep_format 0 on an idle
    device forgets it (A6); then the set's controls are applied again."""
    if not controls.get("keep_format"):
        return []
    errors = []
    for dev in devices:
        errors += set_controls(dev, {"keep_format": 0})
        errors += set_controls(dev, controls)
    return errors


def reload_module(cell: dict, devices: list[str]) -> tuple[list[str], str]:
    """rmmod and insmod with the cell's parameters and controls again.
    Returns (device nodes, '' or what failed)."""
    left = close_all(devices)
    status = rmmod()
    if status != "ok":
        return devices, f"rmmod before a fresh load: {status}" + (f" ({'; '.join(left)})" if left else "")
    before = video_nodes()
    ok, msg = insmod(cell["ko"], cell["params"])
    if not ok:
        return [], msg
    fresh = wait_nodes(before)
    if not fresh:
        return [], "no /dev/video node appeared within 20 s of reloading the module"
    errors = []
    for dev in fresh:
        errors += set_controls(dev, cell["controls"])
    return fresh, "; ".join(errors)


def read_params() -> dict:
    """The module's parameters as the kernel holds them (where readable)."""
    out = {}
    base = Path(f"/sys/module/{MODULE}/parameters")
    for p in sorted(base.glob("*")) if base.exists() else []:
        try:
            out[p.name] = p.read_text().strip()
        except OSError:
            pass
    return out


# ---------------------------------------------------------------------------- producer
def set_output_yuyv(fd: int, width: int, height: int) -> int:
    """S_FMT(OUTPUT) to YUYV WxH; returns the sizeimage the device answers with."""
    import fcntl

    from linuxpy.video import raw

    fmt = raw.v4l2_format()
    fmt.type = raw.BufType.VIDEO_OUTPUT
    fcntl.ioctl(fd, raw.IOC.G_FMT, fmt)
    fmt.fmt.pix.width, fmt.fmt.pix.height = width, height
    fmt.fmt.pix.pixelformat = raw.PixelFormat.YUYV
    fmt.fmt.pix.field = raw.Field.NONE
    fmt.fmt.pix.bytesperline = width * 2
    fmt.fmt.pix.sizeimage = width * height * 2
    fcntl.ioctl(fd, raw.IOC.S_FMT, fmt)
    return fmt.fmt.pix.sizeimage


def start_producer(device: str, width: int = 640, height: int = 480, fps: int = 30) -> tuple[int, int]:
    """Fork a writer that sets YUYV WxH on OUTPUT and write()s frames until killed.
    Returns (pid, read end of a pipe that carries 'ok' after the first frame, or an error)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        return pid, rfd
    os.close(rfd)
    os.setsid()
    status = "ok"
    try:
        fd = os.open(device, os.O_RDWR)
        # The device may keep another format (keep_format=1 pins what an earlier opener set,
        # rule F2): write frames of whatever size it reports, from one buffer whose head
        # changes every frame (never one copy per frame: pinned formats can be huge).
        size = set_output_yuyv(fd, width, height)
        frame = bytearray(size)
        n = 0
        period = 1.0 / fps
        next_t = time.monotonic()
        while True:
            stamp = n.to_bytes(4, "little") * 1024
            frame[: min(size, len(stamp))] = stamp[:size]
            os.write(fd, frame)
            if n == 0:
                os.write(wfd, b"ok\n")
            n += 1
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))
    except BaseException as exc:  # report, then leave without running the parent's code
        status = f"producer failed: {type(exc).__name__}: {exc}"
        try:
            os.write(wfd, status.encode() + b"\n")
        except OSError:
            pass
    os._exit(1)


def producer_ready(rfd: int, timeout: float = 30) -> str:
    import select

    ready, _, _ = select.select([rfd], [], [], timeout)
    if not ready:
        return f"producer wrote no frame within {timeout:.0f} s"
    msg = os.read(rfd, 4096).decode(errors="replace").strip()
    return "" if msg.startswith("ok") else msg or "producer exited before writing a frame"


# ---------------------------------------------------------------------------- suites
def run_pytest_suite(suite: dict, cell: dict, cell_json: Path, out_dir: Path, repo: str) -> dict:
    """Fork a child that runs pytest on the suite's paths; results come back as JSON lines.
    A failing scenario that drives a real program is run once more at the end (rerun_flaky)."""
    results_file = out_dir / f"{cell['id']}-{suite['name']}-scenarios.jsonl"
    log_file = out_dir / f"{cell['id']}-{suite['name']}-pytest.log"
    paths = [os.path.join(repo, p) for p in suite["paths"]]
    status, timed_out, stuck = _fork_pytest(suite, cell, cell_json, repo, paths, results_file,
                                            log_file)
    scenarios = read_scenarios(results_file)
    log = log_file.read_text(errors="replace") if log_file.exists() else ""
    session = read_session(results_file)
    incomplete = suite_incomplete(suite, status, timed_out, session, scenarios,
                                  _running_scenario(out_dir / "scenario-progress.log"))
    again = [] if incomplete or stuck else rerun_candidates(scenarios)
    if again:
        rerun_file = out_dir / f"{cell['id']}-{suite['name']}-rerun-scenarios.jsonl"
        rerun_log = out_dir / f"{cell['id']}-{suite['name']}-rerun-pytest.log"
        ids = [os.path.join(repo, "scenarios", sc["id"]) for sc in again]
        r_status, r_timed_out, r_stuck = _fork_pytest(suite, cell, cell_json, repo, ids,
                                                      rerun_file, rerun_log)
        stuck += [f"rerun: {line}" for line in r_stuck]
        why = suite_incomplete({**suite, "name": f"{suite['name']} (rerun)"}, r_status,
                               r_timed_out, read_session(rerun_file), read_scenarios(rerun_file),
                               _running_scenario(out_dir / "scenario-progress.log"))
        scenarios = merge_rerun(scenarios, read_scenarios(rerun_file), why)
    return {"name": suite["name"], "kind": "pytest", "exit": status, "timed_out": timed_out,
            "session": session, "incomplete": incomplete, "scenarios": scenarios, "stuck": stuck,
            "log_tail": "\n".join(log.splitlines()[-40:])}


def _fork_pytest(suite: dict, cell: dict, cell_json: Path, repo: str, paths: list[str],
                 results_file: Path, log_file: Path) -> tuple[int | None, bool, list[str]]:
    """pytest on `paths` (files or node ids) in a child of its own session; waits for it."""
    finished_file = finished_path(results_file)
    results_file.unlink(missing_ok=True)
    finished_file.unlink(missing_ok=True)
    pid = os.fork()
    if pid == 0:
        code = 4
        try:
            os.setsid()
            fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(repo)
            os.environ.update(suite.get("env", {}))
            os.environ["LOOPQUAL_CELL"] = str(cell_json)
            import pytest

            from loopqual.guest.recorder import Recorder

            args = [*paths, "-p", "no:cacheprovider", "-q", "-rN", "--tb=short",
                    "--rootdir", os.path.join(repo, "scenarios")]
            if cell.get("k"):
                args += ["-k", cell["k"]]
            code = int(pytest.main(args, plugins=[Recorder(results_file)]))
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return wait_suite(pid, suite["timeout_s"], finished_file)


def read_scenarios(results_file: Path) -> list[dict]:
    if not results_file.exists():
        return []
    return [json.loads(line) for line in results_file.read_text().splitlines() if line.strip()]


def suite_incomplete(suite: dict, status: int | None, timed_out: bool, session: dict | None,
                     scenarios: list[dict], running: str | None) -> str | None:
    """Why a pytest suite's record is not whole, or None. Judged from the session's own
    account (the recorder's: pytest's exit status and the scenarios it collected), which
    survives a process killed after pytest finished, against what was recorded."""
    name = suite["name"]
    if timed_out:
        return f"suite {name} timed out after {suite['timeout_s']:.0f} s" + (
            f" during {running}" if running else "")
    if session is None:
        return (f"suite {name}: pytest did not finish its session (exit {status})"
                + (f" during {running}" if running else "") + " (see its log tail)")
    if status is not None and status != session["exitstatus"]:
        return (f"suite {name}: pytest's process exited {status} but its session ended with "
                f"{session['exitstatus']}")
    code = session["exitstatus"]
    if code == 5 or session["collected"] == 0:
        return f"suite {name}: no scenario ran (pytest exit {code})"
    if code not in (0, 1):  # 0 passed, 1 scenarios failed; else interrupted, internal error
        return f"suite {name}: pytest's session ended with exit {code} (see its log tail)"
    if len(scenarios) != session["collected"]:
        return (f"suite {name}: {len(scenarios)} of {session['collected']} collected scenarios "
                f"were recorded")
    unjudged = [unjudged_line(sc) for sc in scenarios if sc.get("status") == "incomplete"]
    return "; ".join(unjudged) or None


def _running_scenario(progress_log: Path) -> str | None:
    """The scenario that had started but not ended (the suite writes START/END lines)."""
    if not progress_log.exists():
        return None
    started = None
    for line in progress_log.read_text(errors="replace").splitlines()[-200:]:
        word, _, name = line.partition(" ")
        if word == "START":
            started = name.strip()
        elif word == "END" and name.strip() == started:
            started = None
    return started


TOOL_ENTER_FAILED = "loopqual: cannot enter the tool's root"


def tool_command(tool: dict, argv: list[str]) -> list[str]:
    """argv run chrooted in a tool's root (a Debian root of another suite, on the host's
    filesystem that the guest shares), with the guest's /dev, /proc and /sys bound in, in a
    mount namespace of its own (the mounts vanish with the process, however it ends)."""
    script = ('r=$1; shift; mount --rbind /dev "$r/dev" && mount -t proc proc "$r/proc" && '
              'mount --rbind /sys "$r/sys" || '
              f'{{ echo "{TOOL_ENTER_FAILED} $r" >&2; exit 125; }}; exec chroot "$r" "$@"')
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
            tool["root"], "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8",
            *argv]


def run_compliance_profile(profile: dict, device: str, out_dir: Path, cell_id: str,
                           tool: dict | None = None) -> dict:
    """One v4l2-compliance profile: the host's, or a tool's from its own root (tool)."""
    from loopqual.common import compliance

    label = f"{profile['name']}@{tool['name']}" if tool else profile["name"]

    producer_pid, note = None, ""
    if profile["producer"]:
        producer_pid, rfd = start_producer(device)
        note = producer_ready(rfd)
        os.close(rfd)
        if note:
            wait_child(producer_pid, 0)
            return {"profile": label, "status": "error", "error": note, "tests": [],
                    "total": None, "succeeded": None, "failed": None, "warnings": None,
                    "log_tail": ""}
    # Line-buffered: a run killed in a hang must still leave every line it printed.
    argv = ["v4l2-compliance", "-P", *profile["args"], "-d", device]
    cmd = ["stdbuf", "-oL", "-eL", *argv]
    if tool:
        cmd = tool_command(tool, cmd)
    code, out, killed = run_watched(cmd, profile["timeout_s"], profile["idle_s"])
    timed_out = bool(killed)
    if producer_pid:
        wait_child(producer_pid, 0)  # kills it
    (out_dir / f"{cell_id}-compliance-{label}.txt").write_text(out)
    run = compliance.parse(out, label)
    run.exit_code, run.timed_out = code, timed_out
    d = run.to_dict()
    d["command"] = " ".join(argv) + (f"  (chrooted in {tool['root']})" if tool else "")
    d["tool"] = ({"name": tool["name"], "package_version": tool.get("version", "")} if tool
                 else {"name": "host"})
    if tool and code == 125 and TOOL_ENTER_FAILED in out:
        d["error"] = next(ln for ln in out.splitlines() if TOOL_ENTER_FAILED in ln)
    d["log_tail"] = "\n".join(out.splitlines()[-25:])
    if killed:
        last = run.tests[-1].name if run.tests else "none"
        d["error"] = f"v4l2-compliance {killed}; killed after test '{last}'"
    return d


# ---------------------------------------------------------------------------- one cell
class CellRun:
    """One cell's result as it is built, and the step it is in (timed, told to the host)."""

    def __init__(self, cell: dict):
        self.cell = cell
        self.t0 = time.monotonic()
        self.step_t0 = self.t0
        self.res = {"id": cell["id"], "complete": False, "incomplete": [], "errors": [],
                    "suites": [], "health": {"splats": [], "rmmod": None, "refcnt": None},
                    "kmsg_tail": [], "loaded_params": {}, "devices": [], "steps": []}

    def step(self, name: str) -> None:
        """Tell the host what the cell is doing now, and time the step that just ended."""
        now = time.monotonic()
        if self.res["steps"]:
            self.res["steps"][-1][1] = round(now - self.step_t0, 2)
        self.step_t0 = now
        self.res["steps"].append([name, None])
        emit("step", cell=self.cell["id"], step=name)

    def end(self) -> dict:
        self.res["duration_s"] = round(time.monotonic() - self.t0, 2)
        self.res["steps"][-1][1] = round(time.monotonic() - self.step_t0, 2)
        return self.res


def load_stage(run: CellRun) -> list[str]:
    """insmod with the cell's parameters, wait for its nodes, set its controls. Returns the
    device nodes, or [] with the reason in the cell's errors."""
    cell, res = run.cell, run.res
    if module_loaded():
        status = rmmod()
        if status != "ok":
            res["errors"].append(f"a previous {MODULE} is still loaded and rmmod says {status}")
            res["needs_reboot"] = True
            return []
    kmemleak_clear()
    before = video_nodes()
    run.step("insmod")
    ok, msg = insmod(cell["ko"], cell["params"])
    if not ok:
        res["errors"].append(msg)
        return []
    devices = wait_nodes(before)
    if not devices:
        res["errors"].append("no /dev/video node appeared within 20 s of insmod")
        return []
    res["devices"] = devices
    res["loaded_params"] = read_params()
    if cell["controls"]:
        run.step("controls")
        for dev in devices:
            res["errors"].extend(set_controls(dev, cell["controls"]))
        if res["errors"]:
            return []
    return devices


def write_cell_json(cell: dict, devices: list[str], loaded_params: dict, out_dir: Path) -> Path:
    """What the scenarios learn of the cell (scenarios/conftest.py reads it)."""
    cell_json = out_dir / f"{cell['id']}-cell.json"
    cell_json.write_text(json.dumps({
        "id": cell["id"], "device": devices[0], "devices": devices, "module": cell["module"],
        "module_version": cell["module_version"], "param_set": cell["param_set"],
        "params": cell["params"], "controls": cell["controls"],
        "kernel_release": os.uname().release, "work_dir": str(out_dir),
        "loaded_params": loaded_params, "ko": cell["ko"],
    }, indent=1))
    return cell_json


def compliance_stage(run: CellRun, suite: dict, devices: list[str], out_dir: Path
                     ) -> tuple[dict, list[str]]:
    """Every profile of a compliance suite, each from a freshly loaded module: v4l2-compliance
    leaves state behind (a format pinned by keep_format, a pressed timeout_image_io button
    that makes the next opener the timeout-image uploader), which must not decide what the
    next profile sees. Returns the suite's record and the device nodes now loaded."""
    cell, res = run.cell, run.res
    runs = []
    tool = suite.get("tool")
    if tool and not tool.get("root"):
        res["incomplete"].append(f"suite {suite['name']}: tool {tool['name']} has no root "
                                 f"(the host did not prepare it)")
        return {"name": suite["name"], "kind": "compliance", "runs": runs}, devices
    for prof in suite["profiles"]:
        label = f"{prof['name']}@{tool['name']}" if tool else prof["name"]
        if prof.get("not_applicable"):
            runs.append({"profile": label, "status": "not-applicable",
                         "not_applicable": prof["not_applicable"], "tests": []})
            continue
        run.step(f"compliance {label}")
        devices, why = reload_module(cell, devices)
        if why:
            res["errors"].append(why)
            res["needs_reboot"] = why.startswith("rmmod")  # a stuck module
            break
        res["devices"] = devices
        r = run_compliance_profile(prof, devices[0], out_dir, cell["id"], tool)
        runs.append(r)
        if r["status"] == "incomplete":
            res["incomplete"].append(
                f"compliance {label}: "
                + (r.get("error") or "no Total line (v4l2-compliance did not finish)"))
    return {"name": suite["name"], "kind": "compliance", "runs": runs}, devices


def suites_stage(run: CellRun, devices: list[str], plan: dict, out_dir: Path,
                 kmsg: KmsgReader, all_kmsg: list[str]) -> None:
    """Each suite of the cell in turn, from the parameter set's own state."""
    cell, res = run.cell, run.res
    cell_json = write_cell_json(cell, devices, res["loaded_params"], out_dir)
    wanted = sorted({n for s in cell["suites"] if not s.get("not_applicable")
                     for n in s.get("prestart", [])})
    started = prestart.start(wanted, prestart.folder(str(out_dir), cell["id"])) if wanted else []
    try:
        _run_suites(run, devices, plan, out_dir, kmsg, all_kmsg, cell_json)
    finally:
        prestart.stop_all(started)


def _run_suites(run: CellRun, devices: list[str], plan: dict, out_dir: Path,
                kmsg: KmsgReader, all_kmsg: list[str], cell_json: Path) -> None:
    cell, res = run.cell, run.res
    for suite in cell["suites"]:
        if suite.get("not_applicable"):
            res["suites"].append({"name": suite["name"], "kind": suite["kind"],
                                  "not_applicable": suite["not_applicable"]})
            continue
        run.step(f"suite {suite['name']}")
        res["errors"].extend(reset_state(devices, cell["controls"]))
        if suite["kind"] == "pytest":
            sr = run_pytest_suite(suite, cell, cell_json, out_dir, plan["repo"])
            res["health"].setdefault("stuck", []).extend(
                f"suite {suite['name']}: {s}" for s in sr["stuck"])
            if sr["incomplete"]:
                res["incomplete"].append(sr["incomplete"])
        else:
            sr, devices = compliance_stage(run, suite, devices, out_dir)
        res["suites"].append(sr)
        all_kmsg += kmsg.drain()


def health_stage(run: CellRun, kmsg: KmsgReader, all_kmsg: list[str]) -> None:
    """After the suites: kill what still holds the device (a problem of the suites,
    reported), the module's reference count, rmmod, and the kernel log of the whole cell."""
    from loopqual.common import health

    res = run.res
    run.step("rmmod")
    if res["devices"]:
        res["health"]["left_open"] = close_all(res["devices"])
    try:
        refcnt = Path(f"/sys/module/{MODULE}/refcnt")
        res["health"]["refcnt"] = int(refcnt.read_text()) if refcnt.exists() else None
    except (OSError, ValueError):
        pass
    if module_loaded():
        res["health"]["rmmod"] = rmmod()
        if res["health"]["rmmod"] != "ok":
            res["needs_reboot"] = True
    all_kmsg += kmsg.drain()
    res["health"]["splats"] = health.find_splats(all_kmsg)
    res["kmsg_tail"] = all_kmsg[-80:]
    if Path(health.KMEMLEAK_FILE).exists():
        run.step("kmemleak")
        leaks, res["health"]["kmemleak"] = kmemleak_scan()
        res["health"]["splats"] += leaks
        if "error" in res["health"]["kmemleak"]:  # the leak check did not run to its end
            res["incomplete"].append(f"kmemleak scan after the cell: {res['health']['kmemleak']['error']}")


def kmemleak_clear() -> None:
    """Forget the suspects found so far (boot, earlier cells): a cell answers for its own."""
    from loopqual.common import health

    try:
        Path(health.KMEMLEAK_FILE).write_text("clear\n")
    except OSError:
        pass  # no kmemleak on this kernel, or it disabled itself (its own log line says why)


def kmemleak_scan() -> tuple[list[dict], dict]:
    """After rmmod, once the cell's last allocations are old enough to be reported: the
    kmemleak report (health.kmemleak_report) and the leaks allocated through a module."""
    from loopqual.common import health

    t0 = time.monotonic()
    time.sleep(health.KMEMLEAK_MIN_AGE_S + 0.5)
    try:
        report = health.kmemleak_report()
    except OSError as exc:  # kmemleak turned itself off (its log line says why)
        return [], {"error": f"{health.KMEMLEAK_FILE}: {exc}"}
    leaks, suspects = health.kmemleak_splats(report)
    return leaks, {"suspects": suspects, "through_modules": len(leaks),
                   "seconds": round(time.monotonic() - t0, 1)}


def run_cell(cell: dict, plan: dict, out_dir: Path) -> dict:
    """load -> suites -> health, each a stage of its own; the health stage runs whatever
    happened before it."""
    run = CellRun(cell)
    kmsg = KmsgReader()
    all_kmsg: list[str] = []
    try:
        devices = load_stage(run)
        if devices:
            suites_stage(run, devices, plan, out_dir, kmsg, all_kmsg)
            run.res["complete"] = True
    except Exception:
        run.res["errors"].append("harness error in the guest:\n" + traceback.format_exc())
    finally:
        try:
            health_stage(run, kmsg, all_kmsg)
        finally:
            kmsg.close()
    return run.end()


def root_fs(mounts_path: str = "/proc/self/mounts") -> str:
    """The filesystem type the guest's / is (virtiofs or 9p): the host records it per boot."""
    kind = ""
    try:
        with open(mounts_path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] == "/":
                    kind = parts[2]  # the last mount at / is the one seen
    except OSError:
        pass
    return kind


def main(argv: list[str]) -> int:
    plan_path = Path(argv[0])
    plan = json.loads(plan_path.read_text())
    out_dir = Path(plan["out"])
    cells_dir = out_dir / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    emit("boot", release=os.uname().release, cells=len(plan["cells"]), root_fs=root_fs())
    # Import the heavy modules once, here: every fork below starts with them loaded
    # (on a 9p root under TCG imports cost seconds each time).
    t0 = time.monotonic()
    import linuxpy.video.raw  # noqa: F401
    import pytest  # noqa: F401


    emit("ready", import_s=round(time.monotonic() - t0, 2))
    for cell in plan["cells"]:
        dest = cells_dir / f"{cell['id']}.json"
        if dest.exists():
            continue
        emit("cell-start", cell=cell["id"])
        res = run_cell(cell, plan, out_dir)
        tmp = dest.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        tmp.rename(dest)
        # complete: every step ran to its end; incomplete / errors: what did not (a suite
        # that timed out leaves complete true, since the cell's other steps went on)
        emit("cell-end", cell=cell["id"], complete=res["complete"],
             incomplete=res["incomplete"], errors=[e.splitlines()[0] for e in res["errors"]],
             duration_s=res.get("duration_s"))
        if res.get("needs_reboot"):
            emit("reboot-needed", cell=cell["id"], rmmod=res["health"]["rmmod"])
            return EXIT_REBOOT
    emit("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
