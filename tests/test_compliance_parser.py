"""The v4l2-compliance parser against outputs recorded from real guest runs
(v4l2-compliance 1.22.1, Debian 6.1 kernel, stock v4l2loopback 0.15.0)."""

import pytest

from loopqual.common import compliance

COMPLETE = [
    # fixture, total, succeeded, failed, warnings
    ("recorded-6.1-stock-0.15.0-ec1-output.txt", 45, 43, 2, 8),
    ("recorded-6.1-stock-0.15.0-ec1-output-s.txt", 54, 48, 6, 8),
    ("recorded-6.1-stock-0.15.0-ec1-capture.txt", 45, 44, 1, 7),
    ("recorded-6.1-stock-0.15.0-ec1-capture-s.txt", 54, 49, 5, 7),
    ("recorded-6.1-stock-0.15.0-ec0-output.txt", 45, 38, 7, 5),
]


@pytest.mark.parametrize("name,total,ok,failed,warnings", COMPLETE)
def test_recorded_runs_parse_and_cross_check(fixtures, name, total, ok, failed, warnings):
    run = compliance.parse((fixtures / "compliance" / name).read_text(), "p")
    assert run.complete and run.status == "fail"
    assert (run.total, run.succeeded, run.failed, run.warnings) == (total, ok, failed, warnings)
    assert len(run.tests) == total
    assert sum(t.status == "fail" for t in run.tests) == failed
    assert run.inconsistencies == []
    assert run.version == "1.22.1"


def test_fail_lines_attach_to_their_test(fixtures):
    run = compliance.parse(
        (fixtures / "compliance" / "recorded-6.1-stock-0.15.0-ec1-output.txt").read_text())
    by_id = {t.id: t for t in run.tests}
    enum = by_id["Format ioctls (Output 0)/VIDIOC_ENUM_FMT/FRAMESIZES/FRAMEINTERVALS"]
    assert enum.status == "fail"
    assert any("fmtdesc.description mismatch" in d for d in enum.details)
    opens = by_id["Allow for multiple opens/for unlimited opens"]
    assert opens.status == "fail" and opens.details == ["fail: v4l2-compliance.cpp(736): !ok"]
    # "OK (Not Supported)" is a skip, not a pass
    assert by_id["Debug ioctls/VIDIOC_LOG_STATUS"].status == "skip"
    assert by_id["Required ioctls/VIDIOC_QUERYCAP"].status == "pass"
    # warnings belong to the test they were printed in
    tryfmt = by_id["Format ioctls (Output 0)/VIDIOC_TRY_FMT"]
    assert tryfmt.status == "pass" and len([d for d in tryfmt.details if d.startswith("warn:")]) == 3


def test_same_test_name_in_two_sections_is_two_tests(fixtures):
    run = compliance.parse(
        (fixtures / "compliance" / "recorded-6.1-stock-0.15.0-ec1-output.txt").read_text())
    ids = [t.id for t in run.tests]
    assert "Required ioctls/VIDIOC_QUERYCAP" in ids
    assert "Allow for multiple opens/VIDIOC_QUERYCAP" in ids
    assert len(ids) == len(set(ids))


def test_hung_run_is_incomplete_and_keeps_its_tests(fixtures):
    # Recorded line-buffered (stdbuf -oL) until the runner killed it: stock 0.15.0,
    # exclusive_caps=0, -s, no writer: stuck in the capture streaming test.
    run = compliance.parse(
        (fixtures / "compliance" / "recorded-6.1-stock-0.15.0-ec0-output-s-hung.txt").read_text())
    assert not run.complete and run.status == "incomplete"
    assert run.total is None
    assert run.tests[-1].name == "blocking wait" and run.tests[-1].status == "fail"


def test_truncated_output_is_incomplete(fixtures):
    text = (fixtures / "compliance" / "recorded-6.1-stock-0.15.0-ec1-output.txt").read_text()
    run = compliance.parse(text[: len(text) // 2])
    assert run.status == "incomplete"


def test_total_line_disagreeing_with_tests_is_reported(fixtures):
    text = (fixtures / "compliance" / "recorded-6.1-stock-0.15.0-ec1-output.txt").read_text()
    doctored = text.replace("Succeeded: 43, Failed: 2", "Succeeded: 44, Failed: 1")
    run = compliance.parse(doctored)
    assert any("failed=1" in i for i in run.inconsistencies)
    assert any("succeeded=44" in i for i in run.inconsistencies)


def test_carriage_return_progress_does_not_hide_lines(fixtures):
    text = (fixtures / "compliance" / "recorded-6.1-stock-0.15.0-ec1-output.txt").read_text()
    run = compliance.parse(text.replace("\n\ttest VIDIOC_G_FMT", "\rprogress 1/2\r\n\ttest VIDIOC_G_FMT"))
    assert run.complete and run.inconsistencies == []


def test_nv12_description_entry_is_what_the_in_tree_vivid_driver_gets_too(fixtures):
    """The expected-failures entry for the NV12 description calls it inherent (the kernel core
    names NV12, v4l2-compliance 1.22 expects another name). Its evidence: the same failure,
    excused by the same entry, from the kernel's own vivid output node (Debian 6.1,
    v4l2-compliance 1.22.1) recorded in a real guest."""
    from loopqual.config import data

    run = compliance.parse(
        (fixtures / "compliance" / "recorded-6.1-in-tree-vivid-output-node.txt").read_text(), "output")
    assert run.complete and (run.total, run.failed) == (69, 2) and run.inconsistencies == []
    assert run.version == "1.22.1"
    failed = [t for t in run.tests if t.status == "fail"]
    entry = next(e for e in data.load_expected_failures() if "fmtdesc.description" in e.detail)
    assert entry.inherent
    for t in failed:
        text = "\n".join(d for d in t.details if d.startswith("fail:"))
        assert "was 'Y/UV 4:2:0', expected 'Y/CbCr 4:2:0'" in text
        assert entry.matches("compliance", f"output::{t.section}/{t.name}", "ec1", "debian-6.1", text,
                             run.version)
