"""rename across two stripes between real processes: it takes two stripe locks, in increasing
stripe order (locks.py), so that two processes renaming the same keys in opposite directions
never wait for each other for ever; and it moves each value whole, so that no key is lost or
doubled on the way. A deadlock shows as LockTimeout, the lock timeout being short."""

from __future__ import annotations

import pytest
from tests_support import ctx, run_workers

import shmkv
from shmkv.check import check_region
from shmkv.hashing import xxh3_64

pytestmark = pytest.mark.multiprocess

PAIRS = 2  # few keys, so that the two workers meet on the same stripes all the time
RENAMES = 5000  # per worker
LOCK_TIMEOUT_S = 1.0


def pairs_across_stripes(cache: shmkv.Cache) -> list[tuple[bytes, bytes]]:
    """PAIRS pairs of keys, the two keys of each pair in different stripes."""
    def stripe(key: bytes) -> int:
        return xxh3_64(key, cache._seed) & cache._smask

    pairs = []
    for i in range(PAIRS):
        left = f"left-{i}".encode()
        right = next(k for j in range(10_000)
                     if stripe(k := f"right-{i}-{j}".encode()) != stripe(left))
        pairs.append((left, right))
    return pairs


def renamer(name: str, pairs: list[tuple[bytes, bytes]], backwards: bool,
            start: object) -> dict[str, int]:
    """Move each pair's one value from one side to the other, RENAMES times in all: left to
    right, or (backwards) right to left. KeyError: the value is on our side already."""
    moved = absent = timeouts = 0
    with shmkv.Cache.open(name, lock_timeout_s=LOCK_TIMEOUT_S) as c:
        start.wait(30)  # type: ignore[attr-defined]  # both at once: they must meet
        for n in range(RENAMES):
            left, right = pairs[n % len(pairs)]
            old, new = (right, left) if backwards else (left, right)
            try:
                # nx: a value on both sides (a doubled key) would stay for the parent to see,
                # where a plain rename would overwrite it
                moved += c.rename(old, new, nx=True)
            except KeyError:
                absent += 1
            except shmkv.LockTimeout:
                timeouts += 1
    return {"moved": moved, "absent": absent, "timeouts": timeouts}


def test_two_processes_renaming_in_opposite_directions_never_deadlock_lose_or_double(
        region_name) -> None:
    with shmkv.Cache.create(region_name, arena_bytes=1 << 20, n_stripes=8,
                            lock_timeout_s=LOCK_TIMEOUT_S) as c:
        pairs = pairs_across_stripes(c)
        for i, (left, _) in enumerate(pairs):
            c.set(left, f"value-{i}".encode(), ttl_s=3600)
        start = ctx.Barrier(2)
        results = run_workers(renamer, [(region_name, pairs, False, start),
                                        (region_name, pairs, True, start)])
        for result in results:
            assert isinstance(result, dict), result
            assert result["timeouts"] == 0, results
        assert sum(r["moved"] for r in results) > 0
        for i, (left, right) in enumerate(pairs):
            found = [(key, c.get(key)) for key in (left, right) if key in c]
            assert len(found) == 1, f"pair {i}: {found}"
            assert found[0][1] == f"value-{i}".encode()
            assert c.ttl(found[0][0]) is not None  # the TTL moved with it
        assert len(c) == PAIRS
        assert check_region(c) == []
