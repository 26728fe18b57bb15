"""Eviction and expiry with real processes: writers that evict each other's entries (victims
in other stripes are only try-locked), readers that keep checking values whole, and a TTL set in
one process that expires in another."""

from __future__ import annotations

import random

import pytest
from tests_support import FakeClock, is_whole, patterned, run_workers

import shmkv
from shmkv.check import check_region

pytestmark = pytest.mark.multiprocess


def churn_worker(name: str, wid: int, n_ops: int) -> dict:
    rng = random.Random(wid)
    torn = errors = 0
    with shmkv.Cache.open(name) as c:
        for n in range(n_ops):
            key = f"k{rng.randrange(2000)}"
            if rng.random() < 0.6:
                try:
                    c.set(key, patterned(key, wid, n, rng.choice((50, 2000, 20_000))))
                except shmkv.ShmKVError as exc:  # nothing may fail for lack of room
                    errors += 1
                    print(f"worker {wid}: {exc!r}")
            else:
                value = c.get(key)
                if value is not None and not is_whole(key, value):
                    torn += 1
    return {"torn": torn, "errors": errors}


def test_four_writers_evicting_in_a_small_region_stay_consistent(region_name) -> None:
    with shmkv.Cache.create(region_name, arena_bytes=2 << 20, max_keys=1000) as c:
        results = run_workers(churn_worker, [(region_name, w, 6000) for w in range(4)])
        assert results == [{"torn": 0, "errors": 0}] * 4
        s = c.stats()
        assert s["evictions"] > 0
        assert s["arena_used_bytes"] <= s["arena_bytes"]
        assert check_region(c) == []


def ttl_reader(name: str, offset_s: float) -> list:
    """Look at the region through a clock offset_s seconds ahead of the shared base time."""
    clock = FakeClock()
    clock.advance(offset_s)
    with shmkv.Cache.open(name, clock=clock) as c:
        return [c.get("short"), c.get("long"), c.ttl("long")]


def test_a_ttl_set_in_one_process_expires_in_another(region_name) -> None:
    with shmkv.Cache.create(region_name, arena_bytes=1 << 20, clock=FakeClock()) as c:
        c.set("short", b"s", ttl_s=5)
        c.set("long", b"l", ttl_s=60)
        early, late = run_workers(ttl_reader, [(region_name, 1.0), (region_name, 10.0)])
        assert early == [b"s", b"l", pytest.approx(59)]
        assert late == [None, b"l", pytest.approx(50)]


def test_expired_keys_are_reclaimed_by_a_maintainer_process(region_name) -> None:
    def maintainer(name: str) -> int:
        clock = FakeClock()
        clock.advance(100)
        with shmkv.Cache.open(name, clock=clock) as c:
            return sum(c.maintain(max_slots=1 << 20)["expired"] for _ in range(2))

    with shmkv.Cache.create(region_name, arena_bytes=1 << 20, clock=FakeClock()) as c:
        for i in range(300):
            c.set(f"t{i}", b"x" * 100, ttl_s=10)
        c.set("forever", b"f")
        assert run_workers(maintainer, [(region_name,)]) == [300]
        assert len(c) == 1 and c.get("forever") == b"f"
        assert check_region(c) == []
