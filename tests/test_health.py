"""Splat patterns (kernel/splats.toml) against kernel logs recorded in real guests."""

import pytest

from loopqual.common import health


def test_clean_log_from_a_real_cell_has_no_splats(fixtures):
    import json

    cell = json.loads((fixtures / "guest" / "recorded-6.1-stock-0.15.0-ec1-compliance-cell.json").read_text())
    assert cell["kmsg_tail"], "the recorded cell carries its kernel log"
    assert health.find_splats(cell["kmsg_tail"]) == []


def test_taint_message_is_allowed():
    lines = ["[   12.000000] v4l2loopback: loading out-of-tree module taints kernel."]
    assert health.find_splats(lines) == []


def test_each_deny_pattern_catches_its_line():
    samples = {
        "warning": "WARNING: CPU: 0 PID: 1 at drivers/media/x.c:10 f+0x1/0x2",
        "bug": "BUG: kernel NULL pointer dereference, address: 0000000000000008",
        "refcount": "refcount_t: underflow; use-after-free.",
        "list_corruption": "list_del corruption. prev->next should be ffff",
        "sleeping_in_atomic": "BUG: sleeping function called from invalid context at x.c:1",
        "hung_task": "INFO: task v4l2-ctl:123 blocked for more than 120 seconds.",
        "kasan": "KASAN: null-ptr-deref in range [0x0000000000000000-0x0000000000000007]",
    }
    for name, line in samples.items():
        found = health.find_splats([f"[   1.0] {line}", "[   1.1] next line"])
        assert found, name
        assert found[0]["line"] == line
        assert found[0]["context"][1] == "next line"


def test_usercopy_bug_recorded_from_a_real_guest_is_named_as_such(fixtures):
    # The kernel log of a real cell: the patched series of this session's first gate run,
    # random walk, exclusive_caps=1 max_openers=2, Debian 6.1 (a race in read()).
    lines = (fixtures / "kmsg" / "recorded-6.1-patched-ec1-open2-usercopy-bug.txt").read_text().splitlines()
    found = health.find_splats(lines)
    names = {f["pattern"] for f in found}
    assert {"usercopy", "kernel_bug_at", "invalid_opcode", "call_trace"} <= names
    bug = next(f for f in found if f["pattern"] == "kernel_bug_at")
    assert bug["line"] == "kernel BUG at mm/usercopy.c:101!"


def test_specific_pattern_wins_over_generic_bug():
    found = health.find_splats(["BUG: sleeping function called from invalid context at x.c:1"])
    assert found[0]["pattern"] == "sleeping_in_atomic"


# Real reports of the debug kernel's detectors: tests/kmod's module made each bug in a guest of
# kernel debian-6.12-debug (tests/test_guest_detectors.py, LOOPQUAL_RECORD_DETECTORS), and each
# log is what the kernel printed from insmod to rmmod.
DETECTOR_FIXTURES = {
    "kasan": "kasan",
    "kfence": "kfence",
    "ubsan": "ubsan",
    "lockdep": "lockdep_circular",
    # lockdep reports once per boot: these two come from a boot each
    # (LOOPQUAL_DETECTORS_TRIGGERS="none lockdep_recursive", docs/debug-kernel.md)
    "lockdep_recursive": "lockdep_recursive",
    "lockdep_inconsistent": "lockdep_inconsistent",
    "rcu": "rcu_suspicious",
    "odebug": "debug_objects",
    "list": "list_corruption",
    "leak": "kmemleak",
}
# what a report brings along besides its own class: its WARN() and its call trace
GENERIC = {"warning", "bug", "call_trace"}


@pytest.mark.parametrize("trigger", sorted(DETECTOR_FIXTURES))
def test_each_detectors_real_report_is_its_own_class(fixtures, trigger):
    cls = DETECTOR_FIXTURES[trigger]
    path = fixtures / "health" / f"recorded-{trigger}-debian-6.12-debug.log"
    found = health.find_splats(path.read_text().splitlines())
    assert found, path.name
    assert found[0]["pattern"] == cls, [(f["pattern"], f["line"]) for f in found]
    # and no other detector's class
    assert {f["pattern"] for f in found} <= {cls} | GENERIC, [f["pattern"] for f in found]
    assert sum(f["pattern"] == cls for f in found) == 1


def test_kmemleak_report_of_the_test_module_names_it(fixtures):
    # what /sys/kernel/debug/kmemleak said after two scans, the module still loaded
    text = (fixtures / "health" / "recorded-leak-kmemleak-debian-6.12-debug.log").read_text()
    assert text.startswith("unreferenced object ")
    assert " [loopqual_detectors]" in text


def test_kmemleak_leak_through_a_module_is_a_health_failure_with_its_backtrace(fixtures):
    """The runner's scan after a cell (recorded report: the test module's leak on
    debian-6.12-debug): the object is a kmemleak splat naming the module and the first frame
    in it, with the whole record as context; the freed init code's bare address counts as
    module code too."""
    text = (fixtures / "health" / "recorded-leak-kmemleak-debian-6.12-debug.log").read_text()
    objects = health.parse_kmemleak(text)
    assert len(objects) == 1 and objects[0]["size"] == 256
    assert objects[0]["frames"][:3] == ["__kmalloc_cache_noprof+0x2b6/0x370",
                                        "lq_leak+0x35/0x70 [loopqual_detectors]",
                                        "0xffffffffc03b20fe"]
    leaks, suspects = health.kmemleak_splats(text)
    assert suspects == 1 and len(leaks) == 1
    leak = leaks[0]
    assert leak["pattern"] == health.KMEMLEAK_SCAN != "kmemleak"  # not the kernel-log class
    assert "through loopqual_detectors, module code no longer loaded" in leak["line"]
    assert leak["line"].endswith(": lq_leak+0x35/0x70 [loopqual_detectors]")
    assert leak["context"][0].startswith("unreferenced object 0xffff88800624bc00 (size 256)")


def test_kmemleak_leak_of_the_kernel_alone_is_counted_not_failed(fixtures):
    """The same recorded object with its two module frames taken out (derived here): a
    suspect the kernel allocated on its own is not the module's doing."""
    text = (fixtures / "health" / "recorded-leak-kmemleak-debian-6.12-debug.log").read_text()
    kernel_only = "\n".join(ln for ln in text.splitlines()
                            if "[loopqual_detectors]" not in ln and "0xffffffffc0" not in ln)
    leaks, suspects = health.kmemleak_splats(kernel_only)
    assert (leaks, suspects) == ([], 1)
    assert health.kmemleak_splats("") == ([], 0)


def test_a_programs_own_crash_reported_as_a_trap_is_not_a_kernel_splat(fixtures):
    """OBS Studio died of a general protection fault in libobs.so during K3 on debian-sid (the
    cell's real kernel log): the kernel's "traps:" line is user space, not a kernel splat. The
    kernel's own GPF (its first line, as the kernel prints it) still is one."""
    lines = (fixtures / "health" / "recorded-sid-obs-user-trap.log").read_text().splitlines()
    assert any("traps: obs[527] general protection fault" in ln for ln in lines)
    assert health.find_splats(lines) == []
    kernel = ["[  9.1] general protection fault, probably for non-canonical address "
              "0xdffffc0000000001: 0000 [#1] PREEMPT SMP KASAN NOPTI", "[  9.2] next"]
    assert health.find_splats(kernel)[0]["pattern"] == "general_protection"
