"""Digests of a stripe's slot ranges: what a replica compares with its primary to find, without
reading them, the few keys of a changed stripe that differ.

A stripe's keys are split into `n_ranges(layout)` ranges by the high 32 bits of their hash
(the half the slot stores), so that a key falls in the same range on both sides whatever its
slot (linear probing puts a key in another slot when keys arrived in another order):

    range  = (hash >> 32) * n_ranges >> 32
    digest = sum, mod 2**64, of entry_digest over the range's entries

    entry_digest = mix(a ^ mix(expires_at_ns ^ mix(c ^ mix(checksum))))
        a = (hash >> 32) << 32 | version        (the stored version: the primary's, kept)
        c = value_len << 32 | key_len | collection << 16 | kind << 8
        mix = splitmix64's finalizer; checksum = the entry's (xxh3 of key and value)

Every physically present entry counts, expired or not: a replica never expires on its own,
so it holds what its primary holds until the primary removes it, and comparing the expired
ones too lets the replica see that removal. Two ranges with equal digests hold the same
entries (same key hash, version, expiry, kind, lengths and checksum) except with probability
about 2**-64 per comparison: that is the one way a replica could differ unnoticed.

The digests are computed on demand, under the stripe's lock: the compiled `range_digests`
(shmkv/_core_src/digest.c) passes over 1M entries in 14-20 ms on a 2-core VM (prefetching the
entries 32 slots ahead: 87 ms without), the pure-Python engine's numpy twin gives the same sums
in 63-93 ms (`python bench/bench_replication.py --digests 1000000` prints both). The stripe
record's `digest` word (layout.py) stays unused: keeping an incremental digest on every write
would add work to every write path of both engines (the compiled fast path, inserts, deletes,
evictions, expiries, repairs) for what a replica needs only for the stripes that moved.
"""

from __future__ import annotations

import numpy as np

from . import layout as L
from . import backend
from .shared_region import SharedRegion

# n_ranges is part of the replication wire (both sides compute it): changing either constant
# needs a new broker/repl_wire.py TAG.
# ~6 entries a range at the index's target load (until MAX_RANGES: ~15 at 1M keys in 16
# stripes). Measured with 100k keys at 10,000 writes/s: lag 45-50 ms median with 8 slots a
# range, 207-684 ms with 32 (a changed key costs the read of its whole range), at 8-32 KB of
# digests per moved stripe and round.
SLOTS_PER_RANGE = 8
MAX_RANGES = 4096  # 32 KB of digests per stripe


def n_ranges(layout: L.Layout) -> int:
    """How many ranges a stripe of layout is split into: a power of two, the same for every
    region of that layout (a replica's is its primary's)."""
    want = max(1, layout.slots_per_stripe // SLOTS_PER_RANGE)
    return min(MAX_RANGES, 1 << (want - 1).bit_length())


def stripe_digests(region: SharedRegion, stripe: int) -> bytes:
    """The stripe's n_ranges digests (u64, little-endian), read under its lock."""
    region.locks.acquire_stripe(stripe)
    try:
        return stripe_digests_locked(region, stripe)
    finally:
        region.locks.release_stripe(stripe)


def stripe_digests_locked(region: SharedRegion, stripe: int, pure: bool = False) -> bytes:
    index = region.index
    slots_at = (index.slot0 + stripe * index.per) * 8
    n = n_ranges(region.layout)
    if backend.ENGINE == "c" and backend._core is not None and not pure:
        return backend._core.range_digests(region.mm, slots_at, index.per, index.arena_base,
                                   index.max_ref, n)
    return _pure_digests(region, slots_at, n)


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _pure_digests(region: SharedRegion, slots_at: int, n: int) -> bytes:
    index = region.index
    q = np.frombuffer(region.q, dtype=np.uint64)
    u32 = np.frombuffer(region.u32, dtype=np.uint32)
    u8 = np.frombuffer(region.mv, dtype=np.uint8)
    try:
        slots = q[slots_at >> 3:(slots_at >> 3) + index.per]
        refs = slots & np.uint64(0xFFFFFFFF)
        keep = (refs > 0) & (refs <= np.uint64(index.max_ref))
        offs = refs[keep].astype(np.int64) * L.ALIGN + index.arena_base
        inside = offs + L.ENTRY_HEADER_BYTES <= len(u8)  # as the compiled one: never outside
        slots, offs = slots[keep][inside], offs[inside]
        hi = slots >> np.uint64(32)
        a = (hi << np.uint64(32)) | u32[(offs + L.E_VERSION) >> 2].astype(np.uint64)
        exp = q[(offs + L.E_EXPIRES_AT) >> 3]
        c = (u32[(offs + L.E_VALUE_LEN) >> 2].astype(np.uint64) << np.uint64(32)) \
            | (u32[(offs + L.E_KEY_COLL) >> 2] & np.uint32(0xFFFF0000 | L.KEY_LEN_MASK)) \
            .astype(np.uint64) \
            | ((u8[offs + L.E_KIND] & np.uint8(L.KIND_MASK)).astype(np.uint64) << np.uint64(8))
        checksum = u32[(offs + L.E_CHECKSUM) >> 2].astype(np.uint64)
        d = _mix(a ^ _mix(exp ^ _mix(c ^ _mix(checksum))))
        ranges = ((hi * np.uint64(n)) >> np.uint64(32)).astype(np.int64)
        sums = np.zeros(n, dtype=np.uint64)
        np.add.at(sums, ranges, d)
        return sums.astype("<u8").tobytes()
    finally:
        del q, u32, u8


def differing(mine: bytes, theirs: bytes) -> list[int]:
    """The ranges whose digests differ between two stripe_digests results."""
    a = np.frombuffer(mine, dtype="<u8")
    b = np.frombuffer(theirs, dtype="<u8")
    if len(a) != len(b):
        raise ValueError(f"{len(a)} digests against {len(b)}: not the same layout")
    return np.nonzero(a != b)[0].tolist()


def range_of_slots(slots: np.ndarray, n: int) -> np.ndarray:
    """The range of each slot value (its key hash's high half)."""
    return ((slots >> np.uint64(32)) * np.uint64(n) >> np.uint64(32)).astype(np.int64)
