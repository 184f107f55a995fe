"""The guest's console as the host reads it during a boot: kernel and program lines, with the
guest runner's events (EVENT_PREFIX + one JSON object) among them; the watchdog those events
drive; and why a boot ended, from what was seen. No process handling here (vm._boot_once reads
the stream and stops the guest), so each part is tested on console streams recorded from real
boots (tests/fixtures/console/)."""

from __future__ import annotations

import json
from collections.abc import Callable

from loopqual.guest.runner import EVENT_PREFIX, EXIT_REBOOT


class ConsoleStream:
    """Bytes in, (line, event) out: event is the runner's decoded event, or None for a console
    line. A line split across reads is kept until its end arrives."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> list[tuple[str, dict | None]]:
        *lines, self._rest = (self._rest + chunk).split(b"\n")
        return [decode_line(raw.decode(errors="replace").rstrip("\r")) for raw in lines]


def decode_line(line: str) -> tuple[str, dict | None]:
    """An event where the line carries one (the console may put kernel output before it on
    the same line), else the line itself."""
    idx = line.find(EVENT_PREFIX)
    if idx < 0:
        return line, None
    try:
        ev = json.loads(line[idx + len(EVENT_PREFIX):])
    except json.JSONDecodeError:
        return line, None
    return line, ev if isinstance(ev, dict) else None


class BootWatch:
    """What the runner's events say of a boot, and the watchdog's deadline: boot_timeout_s for
    the boot and between cells, budget(cell) while a cell runs."""

    def __init__(self, now: float, boot_timeout_s: float, budget: Callable[[str], float]):
        self.t0, self.boot_timeout_s, self.budget = now, boot_timeout_s, budget
        self.deadline = now + boot_timeout_s
        self.booted = self.finished = False
        self.current: str | None = None  # the cell in progress
        self.boot_s: float | None = None  # from the start to the runner's boot event
        self.root_fs = ""

    def event(self, ev: dict, now: float) -> None:
        name = ev.get("event")
        if name == "boot" and not self.booted:
            self.booted = True
            self.boot_s = round(now - self.t0, 1)
            self.root_fs = str(ev.get("root_fs") or "unknown")
            self.deadline = now + self.boot_timeout_s
        elif name == "ready":
            self.deadline = now + self.boot_timeout_s
        elif name == "cell-start":
            self.current = ev["cell"]
            self.deadline = now + self.budget(self.current)
        elif name == "cell-end":
            self.current = None
            self.deadline = now + self.boot_timeout_s
        elif name == "done":
            self.finished = True

    def overdue(self, now: float) -> str:
        """The watchdog's reason to stop the guest, or ""."""
        if now <= self.deadline:
            return ""
        what = f"cell {self.current}" if self.current else ("boot" if not self.booted
                                                           else "the runner")
        return (f"guest watchdog: {what} gave no sign of progress within its budget; "
                f"the guest was stopped")


def end_reason(console: list[str], returncode: int | None, watch: BootWatch) -> str:
    """Why a boot that nobody stopped ended badly, or "" if it ended as planned (the runner
    asked for a reboot, or finished its cells)."""
    panic = next((ln for ln in console if "Kernel panic" in ln), None)
    if panic:
        return f"kernel panic: {panic.strip()}"
    if returncode == EXIT_REBOOT or watch.current is None and watch.finished:
        return ""
    if not watch.booted:
        return f"the guest did not boot (vng exit {returncode})"
    return f"the guest ended unexpectedly (vng exit {returncode})"
