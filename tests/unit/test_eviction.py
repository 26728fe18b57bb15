"""The memory bound: segmented-LRU eviction, TTL expiry (lazy and active), and the stats that
show them. Time comes from the injected clock; nothing sleeps."""

from __future__ import annotations

import os
import random

import pytest

import shmkv
from shmkv.check import check_region
from shmkv.hashing import xxh3_64


@pytest.fixture
def small(region_name: str, fake_clock):
    c = shmkv.Cache.create(region_name, arena_bytes=8 << 20, clock=fake_clock)
    try:
        yield c
    finally:
        c.close()


def test_8mib_region_accepts_1gib_of_writes_within_its_bound(small, region_name) -> None:
    rng = random.Random(3)
    region_file = f"/dev/shm/{region_name}"
    size_before = os.stat(region_file).st_size
    written = 0
    n = 0
    while written < 1 << 30:
        value = bytes([n & 0xFF]) * rng.choice((100, 1000, 10_000, 60_000, 200_000))
        small.set(f"k{rng.randrange(50_000)}", value)
        written += len(value)
        n += 1
        if n % 2000 == 0:
            s = small.stats()
            assert s["arena_used_bytes"] <= s["arena_bytes"]
    s = small.stats()
    assert os.stat(region_file).st_size == size_before
    assert s["evictions"] > 0 and s["items"] == len(small) == len(list(small))
    assert check_region(small) == []


def test_scan_of_one_time_keys_does_not_evict_the_hot_set(small) -> None:
    hot = [f"hot{i}" for i in range(200)]
    value = b"h" * 8000  # hot set: 1.6 MB of an 8 MiB arena
    for key in hot:
        small.set(key, value)
    for _ in range(2):
        for key in hot:
            assert small.get(key) == value
    for i in range(3000):  # 24 MB of keys seen once: three times the region
        small.set(f"scan{i}", b"s" * 8000)
    hits = sum(small.get(key) == value for key in hot)
    assert hits / len(hot) > 0.9
    assert small.stats()["evictions"] > 2000
    assert check_region(small) == []


def test_without_reads_the_oldest_entries_go_first(small) -> None:
    for i in range(3000):
        small.set(f"k{i}", b"x" * 8000)
    assert small.get("k2999") is not None and small.get("k0") is None


def test_new_entries_start_in_probation_and_reads_promote_them(small) -> None:
    for i in range(100):
        small.set(f"k{i}", b"x" * 8000)
    assert small.stats()["segments"]["protected"]["items"] == 0
    small.get("k0")
    for i in range(1000):  # force evictions: k0 reaches the probation tail having been read
        small.set(f"fill{i}", b"f" * 8000)
    assert small.get("k0") is not None
    assert small.stats()["segments"]["protected"]["items"] >= 1


def test_protected_segment_stays_within_its_share(region_name, fake_clock) -> None:
    with shmkv.Cache.create(region_name, arena_bytes=4 << 20, protected_pct=50,
                            clock=fake_clock) as c:
        for rnd in range(4):
            for i in range(600):
                c.set(f"k{rnd}-{i}", b"x" * 8000)
                c.get(f"k{rnd}-{i}")  # everything is read: everything wants protection
        c.maintain()
        s = c.stats()
        assert s["segments"]["protected"]["bytes"] <= s["protected_limit_bytes"]
        assert check_region(c) == []


def test_index_never_fills_it_evicts_instead(region_name, fake_clock) -> None:
    with shmkv.Cache.create(region_name, arena_bytes=8 << 20, max_keys=1000,
                            clock=fake_clock) as c:
        for i in range(20_000):
            c.set(f"k{i}", b"v")
        assert c.get("k19999") == b"v"
        assert len(c) <= c.stats()["index_slots"]
        assert c.stats()["evictions"] > 0
        assert check_region(c) == []


def test_value_that_can_never_fit_raises_valuetoolarge_and_keeps_the_rest(small) -> None:
    small.set("k", b"v")
    with pytest.raises(shmkv.ValueTooLarge):
        small.set("huge", b"x" * (9 << 20))
    assert small.get("k") == b"v"


def test_value_as_large_as_the_arena_evicts_everything_else(small) -> None:
    for i in range(100):
        small.set(f"k{i}", b"x" * 10_000)
    big = b"B" * ((8 << 20) - 4096)
    small.set("big", big)
    assert small.get("big") == big and len(small) == 1
    assert check_region(small) == []


# --- TTL ------------------------------------------------------------------------------
def test_ttl_reports_seconds_left(small, fake_clock) -> None:
    small.set("k", b"v", ttl_s=10)
    fake_clock.advance(4)
    assert small.ttl("k") == pytest.approx(6)
    small.set("plain", b"v")
    assert small.ttl("plain") is None and small.ttl("absent") is None


def test_expire_sets_and_persist_removes_a_ttl(small, fake_clock) -> None:
    small.set("k", b"v")
    assert small.expire("k", 5) is True
    assert small.ttl("k") == pytest.approx(5)
    assert small.persist("k") is True and small.ttl("k") is None
    fake_clock.advance(10)
    assert small.get("k") == b"v"
    assert small.expire("absent", 5) is False and small.persist("absent") is False


def test_expire_then_time_passes_and_the_key_is_gone(small, fake_clock) -> None:
    small.set("k", b"v")
    small.expire("k", 1)
    fake_clock.advance(1.5)
    assert small.get("k") is None and small.expire("k", 5) is False


@pytest.mark.parametrize("ttl", [0, -3, float("inf"), "5"])
def test_expire_with_a_bad_ttl_raises_and_keeps_the_key(small, ttl) -> None:
    small.set("k", b"v")
    with pytest.raises((ValueError, TypeError)):
        small.expire("k", ttl)
    assert small.get("k") == b"v" and small.ttl("k") is None


def test_active_expiry_reclaims_keys_nobody_reads(small, fake_clock) -> None:
    for i in range(2000):
        small.set(f"t{i}", b"x" * 1000, ttl_s=60)
    for i in range(100):
        small.set(f"keep{i}", b"y" * 1000)
    used = small.stats()["arena_used_bytes"]
    fake_clock.advance(61)
    passes = small.stats()["index_slots"] // 4096 + 1  # each pass does bounded work
    for _ in range(passes):
        small.maintain(max_slots=4096)
    s = small.stats()
    assert s["items"] == 100 and s["expirations"] == 2000
    assert s["arena_used_bytes"] < used / 10
    assert all(small.get(f"keep{i}") is not None for i in range(100))
    assert check_region(small) == []


def test_writers_reclaim_expired_entries_before_evicting_live_ones(small, fake_clock) -> None:
    for i in range(500):
        small.set(f"old{i}", b"o" * 8000, ttl_s=1)
    for i in range(300):
        small.set(f"live{i}", b"l" * 8000)
    fake_clock.advance(2)
    for i in range(300):
        small.set(f"new{i}", b"n" * 8000)
    s = small.stats()
    assert all(small.get(f"live{i}") is not None for i in range(300))
    assert s["expirations"] > 0 and s["evictions"] == 0


# --- stats ----------------------------------------------------------------------------
def test_stats_count_hits_misses_sets_and_segments(small) -> None:
    small.set("a", b"1")
    small.get("a"), small.get("a"), small.get("nope")
    s = small.stats()
    assert (s["hits"], s["misses"], s["sets"]) == (2, 1, 1)
    assert s["segments"]["probation"]["items"] == 1
    assert s["payload_bytes"] == 2


def test_stats_report_memory_overhead_per_item(region_name) -> None:
    with shmkv.Cache.create(region_name, arena_bytes=20 << 20, max_keys=100_000) as c:
        for i in range(100_000):
            c.set(b"%016d" % i, b"v" * 100)
        s = c.stats()
        assert s["items"] == 100_000
        # the target for 16 B keys and 100 B values, filled to max_keys: a 36 B entry header
        # (152 B blocks, no padding) and 12 B of index (slot and access byte at TARGET_LOAD)
        assert 0 < s["overhead_bytes_per_item"] <= 48


def test_an_entry_finds_its_slot_and_access_byte_from_its_key_after_slots_moved(
        region_name, fake_clock) -> None:
    # one stripe of 65 slots: 40 keys make long probe runs, deletes shift slots backwards
    with shmkv.Cache.create(region_name, arena_bytes=1 << 20, max_keys=48, n_stripes=1,
                            clock=fake_clock) as c:
        region = c._region
        keys = [b"k%d" % i for i in range(40)]
        for key in keys:
            c.set(key, b"v")
        for key in keys[::3]:
            del c[key]
        kept = [key for i, key in enumerate(keys) if i % 3]  # found without a read
        slot0 = region.layout.index_offset >> 3
        for key in kept:
            off = _entry_offset(c, key)
            slot_no = region.index.slot_of(off)
            assert region.q[slot0 + slot_no] & 0xFFFFFFFF == region.arena.ref(off)
            assert not region.lru.accessed(off)
        read, other = _entry_offset(c, kept[5]), _entry_offset(c, kept[6])
        assert c.get(kept[5]) == b"v"
        assert region.lru.accessed(read) and not region.lru.accessed(other)
        region.lru.mark(read, False)
        assert not region.lru.accessed(read)
        assert check_region(c) == []


def _entry_offset(c: shmkv.Cache, key: bytes) -> int:
    stripe = xxh3_64(key, c._region.seed) & (c._region.layout.n_stripes - 1)
    return c._region.index.find_locked(stripe, xxh3_64(key, c._region.seed), key, 0)[1]


def test_overwrite_of_a_large_value_evicts_from_protected_when_probation_holds_only_the_key(
        small) -> None:
    # Fill the arena with entries that are read, so that eviction promotes them to protected,
    # then delete most of them: the free space is large but in pieces between the survivors.
    n = 0
    while small.stats()["evictions"] == 0:
        small.set(f"k{n}", b"x" * 1000)
        small.get(f"k{n}")
        n += 1
    for i in range(n):
        if i % 16:
            small.delete(f"k{i}")
    small.set("big", b"a" * (512 << 10))
    segments = small.stats()["segments"]
    assert segments["probation"]["items"] == 1 and segments["protected"]["items"] > 100
    for round_no in range(3):  # the new block must come from evicting protected entries
        small.set("big", bytes([round_no]) * (512 << 10))
        assert small.get("big") == bytes([round_no]) * (512 << 10)
    assert check_region(small) == []


def test_expired_entries_are_reclaimed_by_a_process_that_only_overwrites(region_name,
                                                                         fake_clock) -> None:
    with shmkv.Cache.create(region_name, arena_bytes=1 << 20, clock=fake_clock) as c:
        for i in range(100):
            c.set(f"ttl{i}", b"t" * 100, ttl_s=10)
        c.set("counter", b"0")
        fake_clock.advance(11)
        # In-place overwrites only (no insert, no maintain()): writers sample about one slot
        # per write (a slot whose entry was removed is looked at again), so this many writes
        # sweep the whole index.
        for n in range(2 * c.stats()["index_slots"]):
            c.set("counter", str(n % 10).encode())
        assert c.stats()["expirations"] == 100
        assert len(c) == 1
