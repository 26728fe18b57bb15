"""The allocator: classes, reuse of freed space, coalescing, and a full arena."""

from __future__ import annotations

import random

import pytest

import shmkv
from shmkv import layout as L
from shmkv.arena import bin_floor, bin_of, fit_bin
from shmkv.check import check_region


@pytest.fixture
def arena(cache: shmkv.Cache):
    return cache._region.arena


def test_bin_of_puts_every_size_at_or_above_its_class_floor() -> None:
    for size in list(range(48, 4096, 8)) + [2**k + d for k in range(12, 32) for d in (-8, 0, 8)]:
        b = bin_of(size)
        assert bin_floor(b) <= size < bin_floor(b + 1)


def test_fit_bin_only_holds_blocks_large_enough() -> None:
    for size in (48, 1000, 1024, 1032, 5000, 65536, 10**6, 64 << 20):
        b = fit_bin(size)
        assert bin_floor(b) >= size
        assert b < L.NBINS


def test_alloc_returns_aligned_blocks_inside_the_arena(arena, cache) -> None:
    offs = [arena.alloc_locked(n) for n in (48, 64, 1024, 4096, 100_000)]
    assert all(off % L.ALIGN == 0 and arena.first_block <= off < arena.end for off in offs)
    assert len(set(offs)) == len(offs)
    assert arena.used_bytes() == sum(arena.block_bytes(o) for o in offs)


def test_freed_block_is_reused_for_the_same_size(arena) -> None:
    a = arena.alloc_locked(160)
    arena.alloc_locked(160)  # keeps a from coalescing with the big free tail
    arena.free_locked(a)
    assert arena.alloc_locked(160) == a


def test_free_coalesces_neighbours_back_into_one_block(arena) -> None:
    total_free = arena.free_bytes()
    offs = [arena.alloc_locked(n) for n in (48, 200, 1000, 48, 5000)]
    for i in (1, 3, 0, 4, 2):  # free in an order that coalesces both ways
        arena.free_locked(offs[i])
    assert arena.free_bytes() == total_free
    assert arena.largest_free_block() == arena.end - arena.first_block
    assert [free for _, _, free in arena.blocks()] == [True]


def test_alloc_returns_zero_when_nothing_fits(arena) -> None:
    assert arena.alloc_locked(arena.bytes * 2 // L.ALIGN * L.ALIGN) == 0


def test_random_alloc_free_keeps_the_arena_consistent(arena, cache) -> None:
    rng = random.Random(7)
    live: list[int] = []
    for _ in range(5000):
        if live and rng.random() < 0.45:
            arena.free_locked(live.pop(rng.randrange(len(live))))
        else:
            off = arena.alloc_locked(rng.choice((48, 56, 160, 1024, 1040, 9000, 70_000)))
            if off:
                live.append(off)
    # the checker reports used blocks that no slot references: here that is every live one
    problems = check_region(cache)
    assert [p for p in problems if "referenced by no slot" not in p
            and "items is" not in p and "on no list" not in p] == []
    for off in live:
        arena.free_locked(off)
    assert arena.largest_free_block() == arena.end - arena.first_block


def test_a_block_in_the_requests_own_class_is_used_when_nothing_larger_exists(arena) -> None:
    whole = arena.end - arena.first_block
    off = arena.alloc_locked(whole - 4096)  # same size class as the whole free arena
    assert off == arena.first_block
