"""The CI definitions in ci/ (issue 11): they validate against the engines' published schemas
(check-jsonschema's built-in copies), and the plan rendered into them is the plan loopqual
makes for the same selection."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from loopqual import cli
from loopqual.common.paths import REPO

CI = REPO / "ci"
CHECK = Path(sys.executable).parent / "check-jsonschema"


def load(name: str) -> dict:
    return YAML(typ="safe").load((CI / name).read_text())


@pytest.mark.parametrize("name, schema", [("github-actions.yml", "vendor.github-workflows"),
                                          ("gitlab-ci.yml", "vendor.gitlab-ci")])
def test_definitions_validate_against_the_engines_schemas(name, schema):
    proc = subprocess.run([str(CHECK), "--builtin-schema", schema, str(CI / name)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def plan(capsys, selection: str, shards: int, fmt: str):
    assert cli.main(["plan", *shlex.split(selection), "--shards", str(shards), "--format", fmt]) == 0
    return json.loads(capsys.readouterr().out)


def test_gitlab_matrix_is_the_plan_for_its_selection(capsys):
    doc = load("gitlab-ci.yml")
    selection = doc["variables"]["SELECTION"]
    matrix = doc["qualify"]["parallel"]["matrix"]
    shards = len(matrix[0]["SHARD"])
    assert matrix == plan(capsys, selection, shards, "gitlab")
    script = " ".join(doc["qualify"]["script"])
    assert '--shard "$SHARD"' in script and "$SELECTION" in script
    assert "loopqual merge results/shard-*/" in " ".join(doc["merge"]["script"])
    assert doc["merge"]["when"] == "always"


def test_github_matrix_comes_from_the_plan_for_its_selection(capsys):
    doc = load("github-actions.yml")
    env = doc["env"]
    shards = int(env["SHARDS"].split("'")[1])  # the default of ${{ inputs.shards || 'N' }}
    steps = doc["jobs"]["plan"]["steps"]
    plan_step = next(s["run"] for s in steps if s.get("id") == "plan")
    assert '--shards "$SHARDS" --format github' in plan_step and "$SELECTION" in plan_step
    rendered = plan(capsys, env["SELECTION"], shards, "github")
    assert [m["shard"] for m in rendered["include"]] == [f"{k}/{shards}" for k in range(1, shards + 1)]
    shard_job = doc["jobs"]["shard"]
    assert shard_job["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    run = next(s["run"] for s in shard_job["steps"] if "qualify" in s.get("run", ""))
    assert '--shard "${{ matrix.shard }}"' in run and "$SELECTION" in run
    merge = doc["jobs"]["merge"]
    assert merge["if"].startswith("always()") and set(merge["needs"]) == {"plan", "shard"}
    merge_run = next(s["run"] for s in merge["steps"] if "loopqual merge" in s.get("run", ""))
    assert "exit $code" in merge_run and "GITHUB_STEP_SUMMARY" in merge_run
