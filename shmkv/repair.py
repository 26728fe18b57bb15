"""Repairs after a writer died inside a critical section (the kernel released its lock; the
next holder finds the dead holder's pid still recorded, see locks.py, and calls these).

A dead stripe holder may have left its stripe's seq odd: slots mid-way through a backward
shift (an entry twice, or cut off from its home), or an entry half rewritten in place. The
stripe is rebuilt from its own slots: every entry that still validates (inside the arena, a
used block, a sane header, a key that hashes to this stripe, a checksum that matches key and
value) is kept once; the rest are dropped, never returned. Their blocks stay on the segment
lists, unreferenced, and eviction frees them like any block no slot points to.

A dead arena holder may have left the allocator and the segment lists half-changed. Both are
rebuilt from the boundary-tag walk, which stays valid through any crash: every block-word update
keeps the blocks tiling the arena (a split writes the tail block before shrinking the head).
Blocks whose header is not even well-formed can only be one the dead holder had just allocated,
and are freed. Checksums are not consulted here: writers of other stripes are alive and may be
filling a new block, or rewriting an entry in place, whose checksum is not written yet; freeing
such a block would pull it from under them. Item counts need no repair there: they follow the
slots (the counts area, layout.py), which the stripe repair recounts.

Garbage (a stray write, a damaged file) is repaired the same way where it can be: slots that do
not lead to a sound entry are dropped, a stripe record's counters are recomputed, malformed
collection records are freed (repair_all_locked). What cannot be rebuilt is an arena whose block
walk breaks (a block word of an impossible size): every structure is rebuilt from that walk, so
such a region raises CorruptRegion and must be recreated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import layout as L
from .arena import MAX_BLOCK_BYTES
from .hashing import checksum32, xxh3_64

if TYPE_CHECKING:
    from .shared_region import SharedRegion

MAX_WRITES = 2**56 - 1  # a stripe's writes counter stays below: one past it is garbage


def entry_is_sound(region: SharedRegion, off: int, stripe: int | None = None,
                   checksum: bool = True) -> bool:
    """Whether the entry at off can be trusted: a used block holding a well-formed entry whose
    checksum matches (with checksum=False, well-formed is enough), and, with stripe, one whose
    key belongs to that stripe."""
    arena, u32, mm, lay = region.arena, region.u32, region.mm, region.layout
    if not arena.first_block <= off <= arena.end - L.MIN_BLOCK_BYTES or off % L.ALIGN:
        return False
    word = u32[off >> 2]
    size = word & L.SIZE_MASK
    key_coll = u32[(off + L.E_KEY_COLL) >> 2]
    klen, coll = key_coll & L.KEY_LEN_MASK, key_coll >> 16
    vlen = u32[(off + L.E_VALUE_LEN) >> 2]
    if word & L.FREE_BIT or off + size > arena.end or klen > L.MAX_KEY_BYTES \
            or coll >= lay.max_collections or L.ENTRY_HEADER_BYTES + klen + vlen > size:
        return False
    body = off + L.ENTRY_HEADER_BYTES
    if checksum and checksum32(region.mv[body:body + klen + vlen], region.seed) \
            != u32[(off + L.E_CHECKSUM) >> 2]:
        return False
    if stripe is not None:
        h = xxh3_64(mm[body:body + klen], region.seed ^ coll)
        return h & (lay.n_stripes - 1) == stripe
    return True


def repair_stripe_locked(region: SharedRegion, stripe: int,
                         live_collections: set[int] | None = None) -> int:
    """Rebuild a stripe's sub-table from the entries that validate (and, with
    live_collections, belong to one of them); returns how many slots were dropped. Stripe lock
    held."""
    index, q, u32, mm = region.index, region.q, region.u32, region.mm
    lay = region.layout
    rec = lay.stripes_offset + stripe * L.STRIPE_BYTES
    base = index.slot0 + stripe * index.per
    kept: dict[bytes, tuple[int, int, bool]] = {}  # coll+key -> (version, off, accessed)
    dropped = 0
    for pos in range(index.per):
        v = q[base + pos]
        if not v:
            continue
        off = region.arena.off(v & 0xFFFFFFFF)
        if not entry_is_sound(region, off, stripe) or live_collections is not None \
                and u32[(off + L.E_KEY_COLL) >> 2] >> 16 not in live_collections:
            dropped += 1
            continue
        key_coll = u32[(off + L.E_KEY_COLL) >> 2] & L.KEY_COLL_MASK
        ident = key_coll.to_bytes(4, "little") + mm[off + L.ENTRY_HEADER_BYTES:
                                                     off + L.ENTRY_HEADER_BYTES
                                                     + (key_coll & L.KEY_LEN_MASK)]
        version = u32[(off + L.E_VERSION) >> 2]
        # a half-done shift copies a slot; an overwrite cut short leaves two entries
        if ident not in kept or L.newer_version(version, kept[ident][0]):
            kept[ident] = (version, off, bool(mm[index.access0 + stripe * index.per + pos]))
    for pos in range(index.per):
        q[base + pos] = 0
        mm[index.access0 + stripe * index.per + pos] = 0
    counts = region.colls.stripe_counts(stripe)
    for coll in range(len(counts)):
        counts[coll] = 0
    payload = 0
    for ident, (_, off, accessed) in kept.items():
        key_coll = int.from_bytes(ident[:4], "little")
        h = xxh3_64(ident[4:], region.seed ^ (key_coll >> 16))
        index.insert_locked(stripe, h, region.arena.ref(off), accessed)
        payload += (key_coll & L.KEY_LEN_MASK) + u32[(off + L.E_VALUE_LEN) >> 2]
        counts[key_coll >> 16] += 1  # entry_is_sound checked the collection index
    u32[(rec + L.S_COUNT) >> 2] = len(kept)
    q[(rec + L.S_CHANGES) >> 3] += 1  # a replica or snapshot that counted changes must look
    q[(rec + L.S_PAYLOAD) >> 3] = payload
    if q[(rec + L.S_SEQ) >> 3] & 1:
        q[(rec + L.S_SEQ) >> 3] += 1
    # A writes counter past MAX_WRITES is garbage. Versions must keep rising per key (cas), so
    # restart it from the newest version kept (the low 32 bits it stored), not from 0.
    if q[(rec + L.S_WRITES) >> 3] >= MAX_WRITES:
        newest = 0
        for version, _, _ in kept.values():
            if not newest or L.newer_version(version, newest):
                newest = version
        q[(rec + L.S_WRITES) >> 3] = newest
    return dropped


def repair_arena_locked(region: SharedRegion) -> int:
    """Rebuild free lists, bitmap, used bytes and segment lists from the block walk; returns
    how many half-built blocks were freed. Arena lock held."""
    used: list[int] = []
    free_runs: list[tuple[int, int]] = []  # (start, size) of maximal runs of free space
    freed = 0
    run_start = 0
    for off, _, is_free in region.arena.blocks():  # raises CorruptRegion if the walk breaks
        if not is_free and not entry_is_sound(region, off, checksum=False):
            is_free, freed = True, freed + 1  # the dead holder's half-built block
        if is_free:
            run_start = run_start or off
        else:
            if run_start:
                free_runs.append((run_start, off - run_start))
                run_start = 0
            used.append(off)
    if run_start:
        free_runs.append((run_start, region.arena.end - run_start))
    rebuild_allocator_locked(region, used, free_runs)
    return freed


def rebuild_allocator_locked(region: SharedRegion, used: list[int],
                             free_runs: list[tuple[int, int]]) -> None:
    """Make the allocator, the retired list and the segment lists describe exactly these
    blocks: `used` (entries, in address order) and `free_runs` ((start, size) of maximal runs
    of free space between them; together they tile the arena). Arena lock held."""
    arena, u32, q = region.arena, region.u32, region.q
    # allocator: empty every list, then file each run (split at MAX_BLOCK_BYTES)
    for b in range(L.NBINS):
        u32[(L.H_BIN_HEADS >> 2) + b] = 0
    for w in range(L.NBINS // 64):
        q[(L.H_BIN_BITMAP >> 3) + w] = 0
    for off in used:  # PREV_FREE bits are recomputed below, as runs are filed
        u32[off >> 2] &= ~L.PREV_FREE_BIT & 0xFFFFFFFF
    u32[arena.end >> 2] = 0
    for start, size in free_runs:  # runs are maximal: the block before each one is used
        prev_free = 0
        while size:
            piece = size if size <= MAX_BLOCK_BYTES else MAX_BLOCK_BYTES - L.MIN_BLOCK_BYTES
            arena.file_free_locked(start, piece, prev_free)
            start, size, prev_free = start + piece, size - piece, L.PREV_FREE_BIT
    q[L.H_ARENA_USED >> 3] = sum(u32[o >> 2] & L.SIZE_MASK for o in used)
    # retired blocks (held for views, pins.py) go back on their list; every other entry to
    # probation, oldest write at the tail
    retired = [off for off in used if u32[off >> 2] & L.SEG_BITS == L.SEG_RETIRED_WORD]
    region.pins.rebuild_retired_locked(retired)
    used = [off for off in used if u32[off >> 2] & L.SEG_BITS != L.SEG_RETIRED_WORD]
    lru = region.lru
    for seg in (L.SEG_PROBATION, L.SEG_PROTECTED):
        u32[(L.H_SEG_ENDS >> 2) + 2 * (seg - 1)] = 0
        u32[(L.H_SEG_ENDS >> 2) + 2 * (seg - 1) + 1] = 0
        q[(L.H_SEG_ITEMS >> 3) + seg - 1] = 0
        q[(L.H_SEG_BYTES >> 3) + seg - 1] = 0
    for off in sorted(used, key=lambda o: u32[(o + L.E_VERSION) >> 2]):
        lru.set_segment_locked(off, L.SEG_NONE)
        lru.push_head_locked(off, L.SEG_PROBATION)


def repair_all_locked(region: SharedRegion) -> dict[str, int]:
    """Make the region consistent again, whatever crashes left: every stripe rebuilt from the
    entries that validate, blocks that no slot points to freed, allocator and lists rebuilt,
    every count recounted from the slots. All stripe locks and the arena lock held."""
    lay, u32, index = region.layout, region.u32, region.index
    live, collections_reset = region.colls.reset_damaged_locked()
    dropped = sum(repair_stripe_locked(region, s, live) for s in range(lay.n_stripes))
    referenced = {off for stripe in range(lay.n_stripes) for _, off in index.slots(stripe)}
    leaked = 0
    for off, _, is_free in list(region.arena.blocks()):
        if not is_free and off not in referenced \
                and u32[off >> 2] & L.SEG_BITS != L.SEG_RETIRED_WORD:
            u32[off >> 2] |= L.FREE_BIT  # the rebuild below files it with its free neighbours
            leaked += 1
    freed = repair_arena_locked(region)
    region.pins.reclaim_dead_locked()
    region.pins.sweep_locked()
    return {"slots_dropped": dropped, "blocks_reclaimed": leaked + freed,
            "collections_reset": collections_reset}

