"""Exit codes through make and CI (issue 8 point 1): make turns every failing recipe into its
own exit 2, so the Makefile keeps each step's own code and .ci/run exits with it; the CI
definitions never let a gated failure (loopqual exit 1) pass."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from loopqual.common.paths import REPO


def test_make_keeps_the_step_code_that_make_itself_hides(tmp_path):
    codes = tmp_path / "codes"
    # -o venv: the step alone, never its install prerequisites (apt must not run while a
    # guest of another run uses the host's root)
    proc = subprocess.run(["make", "-s", "-o", "venv", "unit", f"EXIT_CODES={codes}",
                           "UNIT_ARGS=-k zzz_no_such_test"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2  # make's own answer for any failing recipe
    assert (codes / "unit").read_text().strip() == "5"  # pytest: no test collected
    found = subprocess.run([REPO / "ci" / "step-exit-code", codes, "lint", "unit", "gate"],
                           capture_output=True, text=True, check=True)
    assert found.stdout.split() == ["unit", "5"]


@pytest.mark.parametrize("recorded, want", [
    ({"lint": 0, "unit": 0, "selftest": 0, "gate": 1}, 1),  # a gated result failed
    ({"lint": 0, "unit": 0, "selftest": 0, "gate": 2}, 2),  # incomplete
    ({"lint": 0, "unit": 5}, 1),  # pytest collected nothing: a failure, not a pass
    ({"lint": 0, "unit": 0, "selftest": 0, "gate": 0, "gate-rules": 1}, 1),
])
def test_ci_run_exits_with_the_failing_steps_own_code(tmp_path, recorded, want):
    """.ci/run in a copy of the tree, with a `make` first on PATH that records the given
    step codes and then exits 2 as make does (what is judged is .ci/run's own logic)."""
    (tmp_path / ".ci").mkdir()
    (tmp_path / "ci").mkdir()
    shutil.copy(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    shutil.copy(REPO / "ci" / "step-exit-code", tmp_path / "ci" / "step-exit-code")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    lines = "".join(f"echo {code} > results/exit-codes/{step}\n" for step, code in recorded.items())
    (bindir / "make").write_text(f"#!/bin/sh\nmkdir -p results/exit-codes\n{lines}exit 2\n")
    (bindir / "make").chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == want, proc.stderr


def test_ci_definitions_never_swallow_a_failed_gate():
    for name in ("gitlab-ci.yml", "github-actions.yml"):
        text = (REPO / "ci" / name).read_text()
        for line in text.splitlines():
            code = line.split("#", 1)[0]
            assert "|| true" not in code and "|| test $?" not in code, f"ci/{name}: {line.strip()}"
    assert "|| test $$?" not in (REPO / "Makefile").read_text()
    assert (REPO / "ci" / "step-exit-code").stat().st_mode & 0o111
