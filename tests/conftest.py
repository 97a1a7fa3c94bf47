"""Shared test helpers: locating the reference fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCAL_FIXTURES = REPO / "tests" / "fixtures"
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"


def fixture_path(name: str) -> Path:
    """A reference fixture: the repo's copy in tests/fixtures, else ../shared/fixtures."""
    for folder in (LOCAL_FIXTURES, SHARED_FIXTURES):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"fixture {name} is neither in {LOCAL_FIXTURES} nor in {SHARED_FIXTURES}")


@pytest.fixture
def fixtures_dir() -> Path:
    return LOCAL_FIXTURES
