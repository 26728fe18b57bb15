"""The digests of a stripe's slot ranges (shmkv/repl_digest.py), which a replica compares with
its primary's to find the keys that differ: equal regions give equal digests, one changed
entry changes its own range's digest and no other, and both engines compute the same sums."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from replication_support import copy_stripe
from tests_support import new_region_name

import shmkv
from shmkv import backend
from shmkv import repl_digest as D
from shmkv import replica as RP
from shmkv.hashing import xxh3_64

N_KEYS = 2_000


def _digests(cache: shmkv.Cache) -> list[bytes]:
    region = cache._region
    return [D.stripe_digests(region, s) for s in range(region.layout.n_stripes)]


def _copy(source: shmkv.Cache, target: shmkv.Cache) -> None:
    """Make target's region equal to source's, as a replica's first sync does."""
    RP.Applier(target).sync_collections(RP.live_collections(source._region))
    _, writes = RP.stripe_counters(source._region)
    for stripe in range(source._region.layout.n_stripes):
        copy_stripe(source, target, stripe, writes[stripe], keep_expired=True)


@pytest.fixture
def pair(cache: shmkv.Cache) -> Iterator[tuple[shmkv.Cache, shmkv.Cache]]:
    """cache, filled, and a clone of its region made by copying it."""
    for i in range(N_KEYS):
        cache.set(f"key-{i}", b"v" * (i % 50), ttl_s=None if i % 3 else 60.0)
    cache.collection("other").set("in-other", b"x")
    name = new_region_name()
    clone = RP.create_clone(name, RP.region_params(cache._region), 0o600, 1.0,
                            cache._region.clock)
    try:
        _copy(cache, clone)
        yield cache, clone
    finally:
        clone.close()
        shmkv.Cache.unlink(name)


def test_regions_with_the_same_entries_have_the_same_digests(pair) -> None:
    primary, clone = pair
    assert _digests(primary) == _digests(clone)
    assert any(d != bytes(len(d)) for d in _digests(primary))


def test_one_changed_entry_changes_exactly_the_digest_of_its_range(pair) -> None:
    primary, clone = pair
    key = b"key-7"
    h = xxh3_64(key, primary._region.seed)
    stripe = h & (primary._region.layout.n_stripes - 1)
    n = D.n_ranges(primary._region.layout)
    before = D.stripe_digests(primary._region, stripe)
    primary.set(key, b"changed")
    after = D.stripe_digests(primary._region, stripe)
    assert D.differing(before, after) == [((h >> 32) * n) >> 32]
    assert D.differing(D.stripe_digests(clone._region, stripe), after) == [((h >> 32) * n) >> 32]


def test_a_ttl_change_alone_changes_the_digest(pair) -> None:
    primary, _ = pair
    before = _digests(primary)
    primary.expire("key-1", 30.0)
    assert sum(len(D.differing(a, b)) for a, b in zip(before, _digests(primary))) == 1


@pytest.mark.skipif(backend._core is None, reason="the compiled core is not built here")
def test_the_compiled_and_the_pure_digests_are_the_same(pair) -> None:
    region = pair[0]._region
    for stripe in range(region.layout.n_stripes):
        region.locks.acquire_stripe(stripe)
        try:
            compiled = backend._core.range_digests(
                region.mm, (region.index.slot0 + stripe * region.index.per) * 8,
                region.index.per, region.index.arena_base, region.index.max_ref,
                D.n_ranges(region.layout))
            pure = D.stripe_digests_locked(region, stripe, pure=True)
        finally:
            region.locks.release_stripe(stripe)
        assert compiled == pure


def test_the_number_of_ranges_is_a_power_of_two_within_bounds(cache: shmkv.Cache) -> None:
    n = D.n_ranges(cache._region.layout)
    assert n & (n - 1) == 0 and 1 <= n <= D.MAX_RANGES
