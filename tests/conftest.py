from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


# tests/detectors runs only inside a guest (loopqual qualify --suite detectors, driven by
# tests/test_guest_detectors.py), never on the host; as tests/guest (pyproject's addopts).
collect_ignore = ["detectors"]
