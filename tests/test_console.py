"""The guest console as the host reads it (src/loopqual/boot/console.py), on streams recorded from real
boots: the raw bytes vng printed during one boot of two cells (kernel lines and the runner's
events mixed), the console.log the host wrote from that boot, and the end of a console where
the selftest panicked the kernel on purpose."""

from __future__ import annotations

from pathlib import Path

from loopqual.boot.console import BootWatch, ConsoleStream, decode_line, end_reason
from loopqual.guest.runner import EXIT_REBOOT

FIXTURES = Path(__file__).parent / "fixtures" / "console"
RAW = FIXTURES / "recorded-6.12-two-cells-vng-stdout.raw"
LOG = FIXTURES / "recorded-6.12-two-cells-console.log"
PANIC = FIXTURES / "recorded-6.1-selftest-sysrq-panic-console.txt"


def decode(data: bytes, size: int) -> list[tuple[str, dict | None]]:
    stream, out = ConsoleStream(), []
    for i in range(0, len(data), size):
        out += stream.feed(data[i:i + size])
    return out


def test_events_and_lines_come_apart_however_the_reads_split_them():
    data = RAW.read_bytes()
    whole = decode(data, len(data) + 1)
    for size in (1, 7, 512, 65536):
        assert decode(data, size) == whole
    events = [ev for _line, ev in whole if ev is not None]
    names = [ev["event"] for ev in events]
    assert names[0] == "boot" and names[-1] == "done"
    starts = [ev["cell"] for ev in events if ev["event"] == "cell-start"]
    ends = [ev["cell"] for ev in events if ev["event"] == "cell-end"]
    assert len(starts) == 2 and starts == ends
    # what the host kept as console.log is exactly the lines that were no event
    lines = [line for line, ev in whole if ev is None]
    assert lines == LOG.read_text().splitlines()[:len(lines)]


def test_a_broken_event_line_stays_a_console_line():
    line, ev = decode_line('[ 3.1] x @@LQ {"event": "boot"')
    assert ev is None and line.endswith('"boot"')
    assert decode_line('@@LQ {"event": "ready"}')[1] == {"event": "ready"}


def test_the_watchdog_follows_the_runner_through_a_recorded_boot():
    events = [ev for _line, ev in decode(RAW.read_bytes(), 4096) if ev is not None]
    budgets = {}
    watch = BootWatch(100.0, 240.0, lambda cell: budgets.setdefault(cell, 900.0))
    assert watch.overdue(339.0) == "" and "boot gave no sign" in watch.overdue(341.0)
    now = 100.0
    for ev in events:
        now += 10.0
        watch.event(ev, now)
        if ev["event"] == "cell-start":
            assert watch.current == ev["cell"] and watch.deadline == now + 900.0
            assert f"cell {ev['cell']} gave no sign" in watch.overdue(now + 901.0)
        elif ev["event"] == "cell-end":
            assert watch.current is None and watch.deadline == now + 240.0
    assert watch.booted and watch.boot_s == 10.0 and watch.root_fs in ("virtiofs", "9p")
    assert watch.finished and "the runner gave no sign" in watch.overdue(now + 241.0)
    assert end_reason([], 0, watch) == ""


def test_why_a_boot_ended():
    panic = PANIC.read_text().splitlines()
    fresh = BootWatch(0.0, 240.0, lambda _c: 900.0)
    assert end_reason(panic, 0, fresh) == (
        "kernel panic: [   21.521527] Kernel panic - not syncing: sysrq triggered crash")
    assert end_reason([], 1, fresh) == "the guest did not boot (vng exit 1)"
    fresh.event({"event": "boot", "root_fs": "virtiofs"}, 20.0)
    assert end_reason([], EXIT_REBOOT, fresh) == ""  # the runner asked for a new boot
    fresh.event({"event": "cell-start", "cell": "001-x"}, 30.0)
    assert end_reason([], 0, fresh) == "the guest ended unexpectedly (vng exit 0)"
