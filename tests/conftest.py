"""Shared test helpers: locating the reference fixtures."""
from __future__ import annotations

import gzip
import json
import shutil
import tempfile
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


def read_fixture_json(name: str) -> dict:
    """A JSON fixture: ../shared/fixtures when present (the source), else the repo's gzipped copy."""
    shared = SHARED_FIXTURES / name
    if shared.exists():
        return json.loads(shared.read_text())
    packed = LOCAL_FIXTURES / (name + ".gz")
    if packed.exists():
        return json.loads(gzip.decompress(packed.read_bytes()))
    return json.loads(fixture_path(name).read_text())


# The Milvus standalone server of test_milvus.py starts when collection ends (it takes 10-60 s to
# answer), so it warms up while the tests before it run; it is stopped by its process id at the end.
_MILVUS: dict = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    if any("milvus_server_uri" in getattr(item, "fixturenames", ()) or "[server]" in item.nodeid
           for item in session.items):
        from milvus_server import MilvusServer

        base = Path(tempfile.mkdtemp(prefix="ivt-milvus-"))
        _MILVUS["base"] = base
        try:
            _MILVUS["server"] = MilvusServer(base / "server").start()
        except RuntimeError as exc:
            _MILVUS["error"] = str(exc)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    server = _MILVUS.pop("server", None)
    if server is not None:
        server.stop()
    base = _MILVUS.pop("base", None)
    if base is not None:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def milvus_server_uri() -> str:
    """The URI of the test session's Milvus standalone server (fails, with its log, if it cannot start)."""
    if "error" in _MILVUS:
        pytest.fail(_MILVUS["error"])
    server = _MILVUS.get("server")
    if server is None:
        from milvus_server import MilvusServer

        base = Path(tempfile.mkdtemp(prefix="ivt-milvus-"))
        _MILVUS["base"] = base
        server = _MILVUS["server"] = MilvusServer(base / "server").start()
    try:
        return server.wait()
    except RuntimeError as exc:
        pytest.fail(str(exc))
