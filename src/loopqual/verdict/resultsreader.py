"""Reading a results directory's results.json back (loopqual report, compare,
expected-failures, merge, the cover letter). A file that is missing, is not JSON, was written
with another schema, or holds a value of the wrong type is one line naming the file, the key
and the expected type (a ResultsFileError, exit 2), never a traceback or a table built from
nonsense.

The file is checked against the model the writers write by (verdict/resultsmodel.py): only
what the reader uses must be there, and keys this loopqual does not know pass through
untouched."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from loopqual.common.errors import ResultsFileError
from loopqual.verdict.resultsmodel import READING, SCHEMA, Results, ResultsCore, problem


def load(results_dir: Path, for_report: bool = False) -> dict:
    """The run recorded in results_dir/results.json, checked; for_report: also what the
    HTML report needs (the build, health and verdict of every cell, the run's exit code)."""
    path = results_dir / "results.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ResultsFileError(f"{results_dir}: no results.json there") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsFileError(f"{path}: cannot read it: {exc}") from None
    try:
        run = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsFileError(f"{path}: not valid JSON ({exc}); a run that was cut short may "
                               f"have left it half written: run qualify again") from None
    if not isinstance(run, dict):
        raise ResultsFileError(f"{path}: expected a JSON object with schema and cells, "
                               f"not {type(run).__name__}")
    schema = run.get("schema")
    if isinstance(schema, int) and not isinstance(schema, bool) and schema != SCHEMA:
        raise ResultsFileError(f"{path}: schema = {schema}: this loopqual reads schema {SCHEMA}; "
                               f"use the loopqual that wrote it")
    model = Results if for_report else ResultsCore
    try:
        model.model_validate(run, context=READING)
    except ValidationError as exc:
        raise ResultsFileError(f"{path}: {problem(model, run, exc)}") from None
    return run
