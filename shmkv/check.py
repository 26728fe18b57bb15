"""Read-only consistency check of a region: every invariant the format in layout.py promises.

Used by the tests after concurrent and crash runs, and by `shmkv doctor`. By default it reads
without taking locks, for a quiescent region (tests, after their processes are done). A region
that live processes write to must be checked with hold_locks=True, as doctor does: a writer's
work in progress (a block allocated and not yet in its slot, a slot being moved, counters
between two updates) looks exactly like damage to a reader, and no amount of re-reading tells
the two apart. So the check takes every lock in the documented order (each stripe, then the
arena), as repair() does: writers wait for one check, readers go on. The check costs about
5 us a key (0.41 s for 83,000 keys in a 64 MiB arena, bench/results/doctor-vm-20261130.md), and
writers give up after lock_timeout_s (5 s by default): a region of a million keys or more
should be checked when it is quiet. Checking stripe by stripe under each stripe's lock alone was rejected: the arena, the
lists and "is every used block referenced by exactly one slot" span every stripe.

`object_problems` looks at the region's object before it is mapped: a file whose size is no
longer the header's region_bytes (truncated or extended) cannot be opened, and says so.

Checked:
  * arena: blocks tile the arena exactly; FREE/PREV_FREE bits and footers agree; no block is
    smaller than the minimum; free lists hold exactly the free blocks, in the right class, with
    consistent back links; the bitmap matches the lists; arena_used_bytes is the sum of used
    blocks.
  * index: every slot points at the start of a used block; the entry's key hashes to this
    stripe and this tag; the slot is reachable from the key's home without crossing an empty
    slot; no key appears twice; stripe counts and seqs (even) are right.
  * entries: the checksum matches the key and value; every used block is referenced by exactly
    one slot (else it leaked) or is on the retired list; item counters per collection and in
    total match; each stripe's payload_bytes is the sum of its keys and values.
  * segment lists: every entry is on exactly one list, links agree both ways, heads and tails
    are right, item and byte counts match.
  * retired list (blocks held for open views): only used blocks marked retired, counts match.
  * collections: every record is well-formed (state, name length, UTF-8 name).

Whatever the region holds, the check reports it and returns: every walk stops at a block or
link it has already seen or that is not where one can be, and no value read from the region is
used as an offset before it is checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from . import layout as L
from . import region as R
from .arena import bin_of
from .hashing import checksum32, xxh3_64

if TYPE_CHECKING:
    from .cache import Cache


def check_region(cache: Cache, *, hold_locks: bool = False) -> list[str]:
    """Problems found in the region behind cache (empty if it is consistent). hold_locks:
    hold every lock of the region meanwhile (see the module docstring: needed while other
    processes write)."""
    if hold_locks:
        with _every_lock_held(cache._region):
            return check_region(cache)
    region = cache._region
    problems: list[str] = []
    used = _check_arena(region, problems)
    retired = _check_retired(region, used, problems)
    _check_index(region, used, retired, problems)
    _check_lists(region, used, retired, problems)
    return problems


@contextmanager
def _every_lock_held(region) -> Iterator[None]:
    """Every stripe lock, then the arena lock: the order locks.py gives (as Cache.repair)."""
    locks, taken = region.locks, 0
    try:
        for stripe in range(region.layout.n_stripes):
            locks.acquire_stripe(stripe)
            taken += 1
        with locks.arena_held:
            yield
    finally:
        for stripe in range(taken):
            locks.release_stripe(stripe)


def object_problems(name: str) -> list[str]:
    """What is wrong with the region's object itself, read without mapping it (so a truncated
    file cannot SIGBUS the check): its size against the header's region_bytes. Empty if it
    looks whole, or if it cannot be read here (opening the region then says why)."""
    path = name if R.is_path(name) else os.path.join("/dev/shm", name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        head = os.pread(fd, L.HEADER.size, 0)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if len(head) < L.HEADER.size or head[:8] != L.MAGIC:
        return []
    problem = R.size_problem(name, head, size)
    return [f"object: {problem}"] if problem else []


def _check_retired(region, used: dict[int, int], problems: list[str]) -> set[int]:
    """The retired list (blocks held for views): used blocks, marked, counted right."""
    u32, q, arena = region.u32, region.q, region.arena
    retired: set[int] = set()
    ref, nbytes = u32[L.H_RETIRED_HEAD >> 2], 0
    while ref:
        off = arena.off(ref)
        if off not in used or off in retired \
                or L.segment_of(u32[off >> 2]) != L.SEG_RETIRED:
            problems.append(f"retired: list holds {off}, not a retired block (or twice)")
            break
        retired.add(off)
        nbytes += used[off]
        ref = u32[(off + L.E_LRU_NEXT) >> 2]
    if (u32[L.H_RETIRED_COUNT >> 2], q[L.H_RETIRED_BYTES >> 3]) != (len(retired), nbytes):
        problems.append(f"retired: counts say {u32[L.H_RETIRED_COUNT >> 2]} blocks, the list "
                        f"holds {len(retired)}")
    return retired


def _check_lists(region, used: dict[int, int], retired: set[int], problems: list[str]) -> None:
    u32, q, arena = region.u32, region.q, region.arena
    on_list: set[int] = set()
    for seg in (L.SEG_PROBATION, L.SEG_PROTECTED):
        ends = (L.H_SEG_ENDS >> 2) + 2 * (seg - 1)
        ref, prev_ref, items, nbytes = u32[ends], 0, 0, 0
        while ref:
            off = arena.off(ref)
            if off not in used or off in on_list:
                problems.append(f"lists: segment {seg} holds {off}, not a used block (or twice)")
                break
            if u32[(off + L.E_LRU_PREV) >> 2] != prev_ref or L.segment_of(u32[off >> 2]) != seg:
                problems.append(f"lists: entry {off} has a wrong back link or segment bits")
            on_list.add(off)
            items += 1
            nbytes += used[off]
            prev_ref, ref = ref, u32[(off + L.E_LRU_NEXT) >> 2]
        if u32[ends + 1] != prev_ref:
            problems.append(f"lists: segment {seg} tail is wrong")
        if (q[(L.H_SEG_ITEMS >> 3) + seg - 1], q[(L.H_SEG_BYTES >> 3) + seg - 1]) \
                != (items, nbytes):
            problems.append(f"lists: segment {seg} counts say {q[(L.H_SEG_ITEMS >> 3) + seg - 1]}"
                            f" items, the list holds {items}")
    missing = set(used) - on_list - retired
    if missing:
        problems.append(f"lists: {len(missing)} used blocks are on no list")


def _check_arena(region, problems: list[str]) -> dict[int, int]:
    """Walk the blocks; return {offset: size} of used blocks."""
    arena, u32, q = region.arena, region.u32, region.q
    used: dict[int, int] = {}
    free: dict[int, int] = {}
    prev_was_free = False
    off = arena.first_block
    while off < arena.end:
        word = u32[off >> 2]
        size = word & L.SIZE_MASK
        if size < L.MIN_BLOCK_BYTES or off + size > arena.end:
            problems.append(f"arena: block at {off} has impossible size {size}")
            return used
        if bool(word & L.PREV_FREE_BIT) != prev_was_free:
            problems.append(f"arena: block at {off} has a wrong PREV_FREE bit")
        if word & L.FREE_BIT:
            free[off] = size
            if u32[(off + size - 4) >> 2] != size:
                problems.append(f"arena: free block at {off} has a wrong footer")
        else:
            used[off] = size
        prev_was_free = bool(word & L.FREE_BIT)
        off += size
    if off != arena.end:
        problems.append(f"arena: blocks end at {off}, not at the sentinel {arena.end}")
    if bool(u32[arena.end >> 2] & L.PREV_FREE_BIT) != prev_was_free:
        problems.append("arena: the sentinel has a wrong PREV_FREE bit")
    if sum(used.values()) != q[L.H_ARENA_USED >> 3]:
        problems.append(f"arena: arena_used_bytes is {q[L.H_ARENA_USED >> 3]}, blocks say "
                        f"{sum(used.values())}")
    listed: set[int] = set()
    for b in range(L.NBINS):
        ref = u32[(L.H_BIN_HEADS >> 2) + b]
        bit = q[(L.H_BIN_BITMAP >> 3) + (b >> 6)] >> (b & 63) & 1
        if bool(ref) != bool(bit):
            problems.append(f"arena: bitmap bit {b} disagrees with its free list")
        prev_ref = 0
        while ref:
            blk = arena.off(ref)
            if blk not in free or blk in listed:
                problems.append(f"arena: free list {b} holds {blk}, not a free block (or twice)")
                break
            if bin_of(free[blk]) != b:
                problems.append(f"arena: block {blk} of {free[blk]} bytes is filed in class {b}")
            if u32[(blk + 12) >> 2] != prev_ref:
                problems.append(f"arena: block {blk} has a wrong back link")
            listed.add(blk)
            prev_ref, ref = ref, u32[(blk + 8) >> 2]
    if listed != set(free):
        problems.append(f"arena: {len(set(free) - listed)} free blocks are on no free list")
    return used


def _check_index(region, used: dict[int, int], retired: set[int], problems: list[str]) -> None:
    lay, q, u32, mm = region.layout, region.q, region.u32, region.mm
    index, colls = region.index, region.colls
    seen: set[tuple[int, bytes]] = set()
    referenced: set[int] = set()
    for stripe in range(lay.n_stripes):
        per_collection: dict[int, int] = {}
        rec = lay.stripes_offset + stripe * L.STRIPE_BYTES
        if q[(rec + L.S_SEQ) >> 3] & 1:
            problems.append(f"index: stripe {stripe} seq is odd (a writer died mid-change?)")
        count = payload = 0
        base = index.slot0 + stripe * index.per
        for pos in range(index.per):
            v = q[base + pos]
            if not v:
                continue
            count += 1
            off = arena_off = region.arena.off(v & 0xFFFFFFFF)
            if arena_off not in used or arena_off in retired:
                problems.append(f"index: stripe {stripe} slot {pos} points at {off}, "
                                "not a used block")
                continue
            key_coll = u32[(off + L.E_KEY_COLL) >> 2]
            klen, coll = key_coll & L.KEY_LEN_MASK, key_coll >> 16
            vlen = u32[(off + L.E_VALUE_LEN) >> 2]
            body = off + L.ENTRY_HEADER_BYTES
            key = mm[body:body + klen]
            payload += klen + vlen
            if L.ENTRY_HEADER_BYTES + klen + vlen > used[off]:
                problems.append(f"entry at {off}: key+value overrun its block")
                continue
            if not mm[off + L.E_KIND] & L.PUBLISHED:
                problems.append(f"entry at {off} ({key!r}): a slot points here, but it is not "
                                "marked PUBLISHED")
            if checksum32(mm[body:body + klen + vlen], region.seed) \
                    != u32[(off + L.E_CHECKSUM) >> 2]:
                problems.append(f"entry at {off} ({key!r}): checksum mismatch")
            h = xxh3_64(key, region.seed ^ coll)
            if h & (lay.n_stripes - 1) != stripe or h >> 32 != v >> 32:
                problems.append(f"index: {key!r} is in stripe {stripe} with a wrong tag")
            home = (h >> 32) % index.per
            i = home
            while i != pos:  # reachable: no empty slot between home and here
                if not q[base + i]:
                    problems.append(f"index: {key!r} is cut off from its home slot")
                    break
                i = (i + 1) % index.per
            if (coll, key) in seen:
                problems.append(f"index: {key!r} (collection {coll}) appears twice")
            seen.add((coll, key))
            referenced.add(off)
            per_collection[coll] = per_collection.get(coll, 0) + 1
        if q[(rec + L.S_PAYLOAD) >> 3] != payload:
            problems.append(f"index: stripe {stripe} payload_bytes is "
                            f"{q[(rec + L.S_PAYLOAD) >> 3]}, entries hold {payload}")
        if u32[(rec + L.S_COUNT) >> 2] != count:
            problems.append(f"index: stripe {stripe} count is {u32[(rec + L.S_COUNT) >> 2]}, "
                            f"slots say {count}")
        for idx, items in enumerate(colls.stripe_counts(stripe)):
            if items != per_collection.get(idx, 0):
                problems.append(f"counts: stripe {stripe} counts {items} entries of collection "
                                f"{idx}, its slots hold {per_collection.get(idx, 0)}")
    leaked = set(used) - referenced - retired
    if leaked:
        problems.append(f"arena: {len(leaked)} used blocks are referenced by no slot")
    for idx in range(lay.max_collections):
        damage = colls.damage(idx)
        if damage:
            problems.append(f"collections: {damage}")
