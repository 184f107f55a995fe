"""What a pytest suite's record says, read by the guest runner and by the host's verdict
(no pytest here: the host imports this at every command's start): the session's own
account that the recorder leaves beside the scenarios' lines, and the one wording of a
scenario that could not judge the module."""

from __future__ import annotations

import json
from pathlib import Path


def finished_path(results_file: Path) -> Path:
    return Path(results_file).with_suffix(".finished")


def read_session(results_file: Path) -> dict | None:
    """The session's own account ({"exitstatus", "collected"}), or None if pytest never
    finished its session (killed, crashed, or hung)."""
    try:
        data = json.loads(finished_path(results_file).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("collected"), int) \
            or not isinstance(data.get("exitstatus"), int):
        return None
    return data


def unjudged_line(scenario: dict) -> str:
    """What a cell's incomplete list says of a scenario that could not judge the module (the
    runner's and the host's verdicts use this one wording)."""
    first = (scenario.get("message") or "").splitlines()
    return f"scenario {scenario['id']} could not judge the module: {first[0] if first else '?'}"
