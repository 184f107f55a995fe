"""`loopqual expected-failures DIR` drafts entries the loader accepts once a person writes the
reasons: each names the failure it excuses (detail, from the failure's own fail: line) and
starts as category "pending". Cells are guest cell files recorded in real runs."""

import json
import re

from loopqual.config import data
from loopqual.verdict import expectedfailures, results


def meta(param_set):
    return {"id": f"001-{param_set}", "kernel": "debian-6.1", "kernel_release": "6.1.0-56-amd64",
            "module": "patched", "module_version": "0.15.0", "params": {}, "module_params": {},
            "controls": {}, "param_set": param_set, "gated": True, "patches": [],
            "reproduce": "loopqual qualify ...", "build": {"status": "ok", "log_tail": "", "warnings": []}}


def test_drafted_entries_name_their_failure_and_start_pending(fixtures, tmp_path):
    cells = [results.evaluate_cell(meta(ps), json.loads((fixtures / "guest" / name).read_text()), None, [])
             for ps, name in (("ec1", "recorded-6.1-stock-0.15.0-ec1-compliance-cell.json"),
                              ("ec0", "recorded-6.1-stock-0.15.0-ec0-compliance-cell.json"))]
    text = expectedfailures.draft({"cells": cells})
    path = tmp_path / "draft.toml"
    path.write_text(re.sub(r'reason = "TODO: ', 'reason = "written by a person after reading: ', text))
    entries = data.load_expected_failures(path)
    assert entries and {e.category for e in entries} == {"pending"}
    assert all(e.detail for e in entries)
    by_id = {e.id: e for e in entries}
    nv12 = by_id["output::Format ioctls (Output 0)/VIDIOC_ENUM_FMT/FRAMESIZES/FRAMEINTERVALS"]
    assert nv12.detail == r"fmtdesc\.description mismatch: was 'Y/UV 4:2:0', expected 'Y/CbCr 4:2:0'"
    # a message too short to say anything keeps v4l2-compliance's source line
    assert by_id["output::Allow for multiple opens/for unlimited opens"].detail == \
        r"v4l2-compliance\.cpp\(736\): !ok"
    # every drafted entry excuses exactly the failures it was drafted from
    again = [results.evaluate_cell(meta(c["param_set"]), json.loads((fixtures / "guest" / name).read_text()),
                                   None, entries)
             for c, name in zip(cells, ("recorded-6.1-stock-0.15.0-ec1-compliance-cell.json",
                                        "recorded-6.1-stock-0.15.0-ec0-compliance-cell.json"), strict=True)]
    assert results.failures(again[0]) == [] and results.failures(again[1]) == []
