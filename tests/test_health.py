"""Splat patterns (kernel/splats.toml) against kernel logs recorded in real guests."""

from loopqual import health


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
    }
    for name, line in samples.items():
        found = health.find_splats([f"[   1.0] {line}", "[   1.1] next line"])
        assert found, name
        assert found[0]["line"] == line
        assert found[0]["context"][1] == "next line"
