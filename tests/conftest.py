"""Fixtures shared by the suite: unique region names that are always unlinked, an injected
clock, both engines for the engine's tests, and a check that no test leaves shared-memory
objects behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests_support import FakeClock, leftovers, new_region_name

import shmkv
from shmkv import backend, reader

# --- engines -----------------------------------------------------------------------------
# The engine's tests run once per engine: the compiled core (when it was built) and the
# pure-Python reference. The node's tests run with the engine the installation picked, and
# test_core.py holds the two readers to each other itself.
ENGINES = ["c", "python"] if backend.ENGINE == "c" else ["python"]
_TESTS = Path(__file__).parent
_SINGLE_RUN = ("test_node", "test_pubsub", "test_remote_node", "test_cli", "test_core", "test_resp")


def _runs_per_engine(path: Path) -> bool:
    rel = path.relative_to(_TESTS).parts
    return rel[0] in ("unit", "contract", "property", "integration") \
        and rel[:2] != ("unit", "broker") and not path.stem.startswith(_SINGLE_RUN)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if _runs_per_engine(metafunc.definition.path):
        metafunc.parametrize("engine", ENGINES, indirect=True)


@pytest.fixture(autouse=True)
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The engine this test's handles use ("c" or "python"). Processes the test starts get it
    too: forked ones inherit the switch, spawned ones read SHMKV_PURE_PYTHON."""
    name = getattr(request, "param", backend.ENGINE)
    if name == "python":
        monkeypatch.setattr(backend, "Reader", reader.Reader)
        monkeypatch.setattr(backend, "Writer", None)
        monkeypatch.setattr(backend, "ENGINE", "python")
        monkeypatch.setenv("SHMKV_PURE_PYTHON", "1")
    return name


# --- regions -----------------------------------------------------------------------------
@pytest.fixture
def region_name() -> Iterator[str]:
    """A fresh region name; the region is unlinked after the test, whatever happened in
    it."""
    name = new_region_name()
    try:
        yield name
    finally:
        shmkv.Cache.unlink(name)


@pytest.fixture
def cache(region_name: str, fake_clock: FakeClock) -> Iterator[shmkv.Cache]:
    """A small region (4 MiB arena) on the fake clock, closed and unlinked after the test."""
    c = shmkv.Cache.create(region_name, arena_bytes=4 << 20, clock=fake_clock)
    try:
        yield c
    finally:
        if not c.closed:
            c.close()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session", autouse=True)
def no_shared_memory_left_behind() -> Iterator[None]:
    before = set(leftovers())
    yield
    left = sorted(set(leftovers()) - before)
    for name in left:  # clean up, then fail loudly: a fixture is missing a cleanup
        try:
            os.unlink(os.path.join("/dev/shm", name))
        except FileNotFoundError:
            pass
    assert not left, f"tests left shared-memory objects behind: {left}"
