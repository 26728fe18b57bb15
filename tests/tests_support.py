"""Helpers shared by tests and by the worker processes they start (importable by name:
pytest puts tests/ on sys.path, and workers get it through PYTHONPATH)."""

from __future__ import annotations

import os
import uuid

TEST_PREFIX = "shmkvtest-"


def new_region_name() -> str:
    return f"{TEST_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:10]}"


def leftovers() -> list[str]:
    """Our test objects still in /dev/shm: regions and their semaphores (sem.<name>.lkN)."""
    return sorted(f for f in os.listdir("/dev/shm") if TEST_PREFIX in f)


def region_objects(name: str) -> list[str]:
    """The /dev/shm entries of one shm-named region: the region and its semaphores."""
    return sorted(f for f in os.listdir("/dev/shm") if f == name or f.startswith(f"sem.{name}."))


class FakeClock:
    """A clock for TTL tests: unix nanoseconds that move only when the test says so."""

    def __init__(self, start_ns: int = 1_700_000_000 * 10**9) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * 1e9)
