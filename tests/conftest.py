"""Shared test helpers: locating the reference fixtures."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCAL_FIXTURES = REPO / "tests" / "fixtures"
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"


def fixture_path(name: str) -> Path:
    """A reference fixture: the repo's copy in tests/fixtures, else ../shared/fixtures."""
    for folder in (LOCAL_FIXTURES, SHARED_FIXTURES):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"fixture {name} is neither in {LOCAL_FIXTURES} nor in {SHARED_FIXTURES}")


def read_fixture_json(name: str) -> dict:
    """A JSON fixture: ../shared/fixtures when present (the source), else the repo's gzipped copy."""
    shared = SHARED_FIXTURES / name
    if shared.exists():
        return json.loads(shared.read_text())
    packed = LOCAL_FIXTURES / (name + ".gz")
    if packed.exists():
        return json.loads(gzip.decompress(packed.read_bytes()))
    return json.loads(fixture_path(name).read_text())
