"""The open-addressed hash index: n_stripes sub-tables of u64 slots (format in layout.py).

Linear probing from the key's home slot, wrapping inside the stripe's own sub-table, so every
probe run belongs to exactly one stripe lock. A slot is `tag << 32 | ref`: the tag (the high 32
bits of the hash) rejects almost every non-matching slot without touching the arena, and it
also gives the home slot (`tag % per`), which backward-shift deletion needs. A stripe's size
need not be a power of two (a modulo costs what a mask does here), so that the index can be
sized for the load it is meant to run at instead of up to twice that. Deleting by
backward shift instead of tombstones keeps probe runs as short as if the deleted keys had never
been there, so a delete-heavy workload never degrades the index.

Writers change slots only between the two increments of their stripe's seq (odd = changing);
readers re-check seq after reading and retry, so a slot moved by a backward shift is never
missed for good. Whenever a slot is moved, the slot's access byte goes with it; an entry whose
ref a slot takes gets its PUBLISHED bit (never cleared: recovery.py brings back only entries
that a slot once pointed to). Entries do not record their slot: `slot_of` finds it from the
key. Every function that writes here needs the stripe lock (`_locked`).

Slots are shared memory that another process (or a stray write) may have filled with anything,
so nothing here trusts one: every probe loop stops after one lap of the sub-table, and a ref is
checked against the arena where it leaves a slot to be used as an offset (once per slot that
matches a tag, not per slot probed). A bad one raises CorruptRegion: the region is not read or
written through it. A ref that lands inside the arena but not on an entry is the caller's to
judge (readers validate what they copy; repair.py drops such slots).
"""

from __future__ import annotations

import numpy as np

from . import layout as L
from .errors import CorruptRegion
from .hashing import xxh3_64

# below this many slots a Python loop reads them sooner than numpy copies them (~1.5 us)
_NUMPY_FROM_SLOTS = 32
_NO_EMPTY_SLOT = f"no slot is empty, though writers keep a stripe {L.MAX_LOAD:.0%} full at most"


class Index:
    def __init__(self, mm, q: memoryview, u32: memoryview, layout: L.Layout, seed: int) -> None:
        self._mm = mm
        self._seed = seed
        self._smask = layout.n_stripes - 1
        self._q = q
        self._u32 = u32
        self.slot0 = layout.index_offset >> 3  # q-index of slot 0 of stripe 0
        self.per = layout.slots_per_stripe
        self.arena_base = layout.arena_offset
        self.access0 = layout.access_offset  # access byte of slot number n: mm[access0 + n]
        self.max_count = int(layout.slots_per_stripe * L.MAX_LOAD)
        # The last ref at which a whole entry fits (the smallest block, before the sentinel);
        # ref 0 means "none". Anything else in a slot is garbage.
        self.max_ref = (layout.arena_bytes - L.ALIGN - L.MIN_BLOCK_BYTES) >> 3

    @staticmethod
    def _corrupt(stripe: int, what: str) -> CorruptRegion:
        return CorruptRegion(f"index stripe {stripe}: {what}; the region is corrupt: run "
                             "`shmkv doctor --repair`, or unlink the region and create it again")

    def _bad_slot(self, stripe: int, pos: int, v: int) -> CorruptRegion:
        return self._corrupt(stripe, f"slot {pos} holds {v:#x}, whose ref is outside the arena")

    def _entry_at(self, stripe: int, pos: int, v: int) -> int:
        """The entry offset of a non-empty slot value v, checked."""
        ref = v & 0xFFFFFFFF
        if not 0 < ref <= self.max_ref:
            raise self._bad_slot(stripe, pos, v)
        return self.arena_base + (ref << 3)

    def find_locked(self, stripe: int, h: int, key: bytes, coll: int) -> tuple[int, int]:
        """(position in the stripe, entry offset) of key, or (-1, 0) if absent."""
        q, u32, mm, per, max_ref = self._q, self._u32, self._mm, self.per, self.max_ref
        base = self.slot0 + stripe * self.per
        tag = h >> 32
        i = tag % per
        klen = len(key)
        key_coll = klen | coll << 16
        mask = L.KEY_COLL_MASK
        for _ in range(self.per):
            v = q[base + i]
            if not v:
                return -1, 0
            if v >> 32 == tag:
                ref = v & 0xFFFFFFFF  # _entry_at inline: every write comes through here
                if not 0 < ref <= max_ref:
                    raise self._bad_slot(stripe, i, v)
                off = self.arena_base + (ref << 3)
                if u32[(off + L.E_KEY_COLL) >> 2] & mask == key_coll \
                        and mm[off + L.ENTRY_HEADER_BYTES:off + L.ENTRY_HEADER_BYTES + klen] \
                        == key:
                    return i, off
            i = (i + 1) % per
        return -1, 0

    def slot_of(self, off: int) -> int:
        """Number of the slot (stripe * per + position) that points at the entry at off, from
        its key's hash, or -1. Exact under the entry's stripe lock; without it, a backward
        shift running meanwhile may hide the slot (-1), which the lists accept (lru.py)."""
        u32, q, per = self._u32, self._q, self.per
        key_coll = u32[(off + L.E_KEY_COLL) >> 2]
        body = off + L.ENTRY_HEADER_BYTES
        h = xxh3_64(self._mm[body:body + (key_coll & L.KEY_LEN_MASK)], self._seed ^ key_coll >> 16)
        stripe = h & self._smask
        want = (h >> 32) << 32 | (off - self.arena_base) >> 3
        base = self.slot0 + stripe * per
        i = (h >> 32) % per
        for _ in range(per):
            v = q[base + i]
            if v == want:
                return stripe * per + i
            if not v:
                return -1
            i = (i + 1) % per
        return -1

    def insert_locked(self, stripe: int, h: int, ref: int, accessed: bool = False) -> None:
        """Put a new slot in the first empty place of the key's probe run."""
        q, per = self._q, self.per
        base = self.slot0 + stripe * per
        i = home = (h >> 32) % per
        while q[base + i]:
            i = (i + 1) % per
            if i == home:  # a whole lap: never in a sound stripe, which stays below MAX_LOAD
                raise self._corrupt(stripe, _NO_EMPTY_SLOT)
        self._place(stripe * self.per + i, (h >> 32) << 32 | ref, accessed)
        self._published(ref)

    def replace_locked(self, stripe: int, pos: int, h: int, ref: int, accessed: bool) -> None:
        self._place(stripe * self.per + pos, (h >> 32) << 32 | ref, accessed)
        self._published(ref)

    def _published(self, ref: int) -> None:
        """Mark the entry a slot now points to, after the slot store: a writer killed between
        the two leaves it unmarked, and recovery does not bring it back."""
        self._mm[self.arena_base + (ref << 3) + L.E_KIND] |= L.PUBLISHED

    def _place(self, slot_no: int, v: int, accessed: bool) -> None:
        self._q[self.slot0 + slot_no] = v
        self._mm[self.access0 + slot_no] = accessed

    def remove_locked(self, stripe: int, pos: int) -> None:
        """Empty a slot and shift later members of its probe run back (no tombstones)."""
        q, mm, per = self._q, self._mm, self.per
        first = stripe * self.per
        base = self.slot0 + first
        hole = pos
        j = pos
        for _ in range(per):
            j = (j + 1) % per
            v = q[base + j]
            if not v:
                break
            home = (v >> 32) % per
            # The entry at j may fill the hole unless its home lies cyclically in (hole, j].
            if (j - home) % per >= (j - hole) % per:
                self._entry_at(stripe, j, v)  # checked: a garbage slot is not moved around
                self._place(first + hole, v, bool(mm[self.access0 + first + j]))
                hole = j
        else:
            raise self._corrupt(stripe, _NO_EMPTY_SLOT)
        q[base + hole] = 0
        mm[self.access0 + first + hole] = 0

    def slots(self, stripe: int):
        """Yield (position, entry offset) of every occupied slot of a stripe, in order. The
        stripe's slots are copied first (numpy: a region is mostly empty slots, and a Python
        loop over them made keys() cost 12 us per key found in a 64 MiB region); each slot is
        read once either way, and a caller that needs them consistent checks the stripe's
        seqlock around the whole (Cache._stripe_keys)."""
        base = self.slot0 + stripe * self.per
        words = np.array(self._q[base:base + self.per])
        for i in np.flatnonzero(words).tolist():
            yield i, self._entry_at(stripe, i, int(words[i]))

    def occupied(self, stripe: int, pos: int, n: int) -> list[tuple[int, int]]:
        """(position, entry offset) of the occupied slots among the stripe's n slots from pos
        (pos + n <= per), in order: numpy past a few slots, as slots() (an expiry pass over
        4,096 mostly empty slots cost the node 0.6 ms every 100 ms in a Python loop)."""
        base = self.slot0 + stripe * self.per + pos
        if n < _NUMPY_FROM_SLOTS:
            q = self._q
            return [(pos + i, self._entry_at(stripe, pos + i, q[base + i]))
                    for i in range(n) if q[base + i]]
        words = np.array(self._q[base:base + n])
        return [(pos + i, self._entry_at(stripe, pos + i, int(words[i])))
                for i in words.nonzero()[0].tolist()]

    def entry_offset(self, stripe: int, pos: int) -> int:
        v = self._q[self.slot0 + stripe * self.per + pos]
        return self._entry_at(stripe, pos, v) if v else 0
