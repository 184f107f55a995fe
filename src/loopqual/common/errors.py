"""Errors the CLI turns into one clear line and exit code 2 (never a traceback)."""


class LoopqualError(Exception):
    """Bad input or a missing prerequisite: say what failed and what to do."""


class DataError(LoopqualError):
    """A data file (TOML) is malformed or names something unknown."""


class ResultsFileError(LoopqualError):
    """A results directory's results.json is missing, corrupt or of the wrong shape."""
