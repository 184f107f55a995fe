"""Many machines, for real (issue 11): a tiny selection (Debian 6.1, patched, two parameter
sets, two quick contract scenarios) planned as two shards, each run in its own guest one
after the other, then merged: the merged results hold exactly the plan's cells and pass.
About a minute and a half under TCG (two boots)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.guest

SELECTION = ["--kernel", "debian-6.1", "--module", "patched", "--params", "ec1", "--params", "ec0",
             "--suite", "contract", "-k", "test_a1_only_mmap or test_f4_try_fmt"]


def loopqual(*args, cwd, timeout=1200):
    return subprocess.run([sys.executable, "-m", "loopqual.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def test_two_shards_run_one_after_the_other_merge_into_the_plan(tmp_path):
    """From a CI workspace outside the repository, with relative --out paths."""
    plan = loopqual("plan", *SELECTION, "--shards", "2", "--format", "json", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    shards = json.loads(plan.stdout)
    assert [len(s["cells"]) for s in shards] == [1, 1]
    for s in shards:
        proc = loopqual("qualify", *SELECTION, "--shard", s["shard"], "--out", f"shard{s['shard'][0]}",
                        cwd=tmp_path)
        out = tmp_path / f"shard{s['shard'][0]}"
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        run = json.loads((out / "results.json").read_text())
        assert [c["id"] for c in run["cells"]] == s["cells"] == run["shard"]["cells"]
        assert run["shard"]["plan_id"] == s["plan_id"] and run["boots"] == 1
    merged = tmp_path / "merged"
    proc = loopqual("merge", "shard1", "shard2", "--out", "merged", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = json.loads((merged / "results.json").read_text())
    assert [c["id"] for c in run["cells"]] == sorted(c for s in shards for c in s["cells"])
    assert all(c["status"] == "pass" and len(c["scenarios"]) == 2 for c in run["cells"]), run["cells"]
    assert run["merge"]["problems"] == [] and run["boots"] == 2
    assert "patched" in proc.stdout and "A1" in proc.stdout  # the rules x sources table
