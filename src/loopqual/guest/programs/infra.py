"""Problems of the test set-up, not of the module under test.

A program a scenario needs that is missing, or one that cannot start in the guest, says
nothing about v4l2loopback: the scenario is neither passed, failed nor skipped but
incomplete, and its cell with it (the recorder turns an exception carrying
`infrastructure = True` into status "incomplete"). Skips are only for "this rule does not
apply to this parameter set".
"""

from __future__ import annotations

import shutil
import subprocess


class InfrastructureProblem(Exception):
    """The scenario could not judge the module: something of the set-up is missing or broken."""

    infrastructure = True


def need_program(name: str) -> str:
    """The path of a program the scenario cannot run without; a missing one makes the
    scenario (and its cell) incomplete, naming it."""
    path = shutil.which(name)
    if not path:
        raise InfrastructureProblem(
            f"{name} is not installed in the guest (the guest shares the host's root: install "
            f"it on the host, `make deps` does): the scenario needs it and could not run")
    return path


def package_version(package: str) -> str:
    """A program's version from its Debian package (fast: no wrapper script started)."""
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip() or "unknown version"
