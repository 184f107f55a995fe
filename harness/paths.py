"""Where loopqual keeps its things."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KERNEL_DIR = REPO / "kernel"
SCENARIOS_DIR = REPO / "scenarios"


def cache_dir() -> Path:
    """The cache for downloads, unpacked sources and builds (LOOPQUAL_CACHE overrides)."""
    env = os.environ.get("LOOPQUAL_CACHE")
    path = Path(env) if env else REPO / ".cache"
    path.mkdir(parents=True, exist_ok=True)
    return path
