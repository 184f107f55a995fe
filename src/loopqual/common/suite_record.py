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


# A failing scenario that drives a real program (marker `programs`) is run once more, at the
# end of its suite in the same boot: such programs stall under a loaded TCG guest in ways
# loopqual's own readers do not. It counts as passed only if the second run passes, and is
# then reported as flaky with its first failure. Many failures in one suite are not noise.
RERUN_MAX = 3


def rerun_candidates(scenarios: list[dict]) -> list[dict]:
    """The scenarios to run again: failed (not errored in set-up), each driving a real
    program, and no more than RERUN_MAX of them in the suite (else none)."""
    failed = [sc for sc in scenarios if sc.get("status") in ("fail", "error")]
    if not failed or len(failed) > RERUN_MAX:
        return []
    if not all(sc.get("programs") and sc["status"] == "fail" for sc in failed):
        return []
    return failed


def merge_rerun(first: list[dict], again: list[dict], incomplete: str | None) -> list[dict]:
    """The suite's record after the rerun: a scenario that passed the second time takes that
    record, with the first failure kept as `flaky`; one that failed again (or whose rerun did
    not finish) keeps its first record with the second as `rerun`."""
    by_id = {sc["id"]: sc for sc in again}
    out = []
    for sc in first:
        if sc.get("status") not in ("fail", "error") or not sc.get("programs"):
            out.append(sc)
            continue
        second = by_id.get(sc["id"])
        first_run = {k: sc[k] for k in ("status", "message", "duration_s", "measurements")
                     if k in sc}
        if second is not None and second.get("status") == "pass" and not incomplete:
            out.append({**second, "flaky": first_run})
        else:
            rerun = ({k: second[k] for k in ("status", "message", "duration_s") if k in second}
                     if second is not None else {"status": "incomplete"})
            if incomplete:
                rerun["incomplete"] = incomplete
            out.append({**sc, "rerun": rerun})
    return out
