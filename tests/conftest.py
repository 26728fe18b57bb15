"""Fixtures shared by the suite: unique region names that are always unlinked, an injected
clock, and a check that no test leaves shared-memory objects behind."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

import shmkv

TEST_PREFIX = "shmkvtest-"


def new_region_name() -> str:
    return f"{TEST_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:10]}"


def leftovers() -> list[str]:
    """Our test objects still in /dev/shm: regions and their semaphores (sem.<name>.lkN)."""
    return sorted(f for f in os.listdir("/dev/shm") if TEST_PREFIX in f)


@pytest.fixture
def region_name() -> Iterator[str]:
    """A fresh region name; the region and its semaphores are unlinked after the test,
    whatever happened in it."""
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


class FakeClock:
    """A clock for TTL tests: unix nanoseconds that move only when the test says so."""

    def __init__(self, start_ns: int = 1_700_000_000 * 10**9) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * 1e9)


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
