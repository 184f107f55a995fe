"""The detectors suite (tests/detectors, run in the guest by `loopqual qualify --suite
detectors`) is judged by the very kernel-log check that judges every scenario: the autouse
fixture `kernel_health` of scenarios/conftest.py, taken from that file as it is."""

import importlib.util
import sys
from pathlib import Path

_path = Path(__file__).resolve().parents[2] / "scenarios" / "conftest.py"
_spec = importlib.util.spec_from_file_location("loopqual_scenarios_conftest", _path)
_scenarios = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _scenarios  # dataclasses look their module up there
_spec.loader.exec_module(_scenarios)

kernel_health = _scenarios.kernel_health
