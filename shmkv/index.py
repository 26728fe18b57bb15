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
missed for good. Whenever a slot is filled or moved, the entry's slot_no and the slot's access
byte go with it. Every function that writes here needs the stripe lock (`_locked`).
"""

from __future__ import annotations

from . import layout as L


class Index:
    def __init__(self, mm, q: memoryview, u32: memoryview, layout: L.Layout) -> None:
        self._mm = mm
        self._q = q
        self._u32 = u32
        self.slot0 = layout.index_offset >> 3  # q-index of slot 0 of stripe 0
        self.per = layout.slots_per_stripe
        self.arena_base = layout.arena_offset
        self.access0 = layout.access_offset  # access byte of slot number n: mm[access0 + n]
        self.max_count = int(layout.slots_per_stripe * L.MAX_LOAD)

    def find_locked(self, stripe: int, h: int, key: bytes, coll: int) -> tuple[int, int]:
        """(position in the stripe, entry offset) of key, or (-1, 0) if absent."""
        q, u32, mm, per = self._q, self._u32, self._mm, self.per
        base = self.slot0 + stripe * self.per
        tag = h >> 32
        i = tag % per
        klen = len(key)
        key_coll = klen | coll << 16
        for _ in range(self.per):
            v = q[base + i]
            if not v:
                return -1, 0
            if v >> 32 == tag:
                off = self.arena_base + ((v & 0xFFFFFFFF) << 3)
                if u32[(off + L.E_KEY_COLL) >> 2] == key_coll \
                        and mm[off + L.ENTRY_HEADER_BYTES:off + L.ENTRY_HEADER_BYTES + klen] \
                        == key:
                    return i, off
            i = (i + 1) % per
        return -1, 0

    def insert_locked(self, stripe: int, h: int, ref: int, accessed: bool = False) -> None:
        """Put a new slot in the first empty place of the key's probe run."""
        q, per = self._q, self.per
        base = self.slot0 + stripe * per
        i = (h >> 32) % per
        while q[base + i]:
            i = (i + 1) % per
        self._place(stripe * self.per + i, (h >> 32) << 32 | ref, accessed)

    def replace_locked(self, stripe: int, pos: int, h: int, ref: int, accessed: bool) -> None:
        self._place(stripe * self.per + pos, (h >> 32) << 32 | ref, accessed)

    def _place(self, slot_no: int, v: int, accessed: bool) -> None:
        self._q[self.slot0 + slot_no] = v
        self._u32[(self.arena_base + ((v & 0xFFFFFFFF) << 3) + L.E_SLOT_NO) >> 2] = slot_no
        self._mm[self.access0 + slot_no] = accessed

    def remove_locked(self, stripe: int, pos: int) -> None:
        """Empty a slot and shift later members of its probe run back (no tombstones)."""
        q, mm, per = self._q, self._mm, self.per
        first = stripe * self.per
        base = self.slot0 + first
        hole = pos
        j = pos
        while True:
            j = (j + 1) % per
            v = q[base + j]
            if not v:
                break
            home = (v >> 32) % per
            # The entry at j may fill the hole unless its home lies cyclically in (hole, j].
            if (j - home) % per >= (j - hole) % per:
                self._place(first + hole, v, bool(mm[self.access0 + first + j]))
                hole = j
        q[base + hole] = 0
        mm[self.access0 + first + hole] = 0

    def slots(self, stripe: int):
        """Yield (position, entry offset) of every occupied slot of a stripe, in order."""
        q = self._q
        base = self.slot0 + stripe * self.per
        for i in range(self.per):
            v = q[base + i]
            if v:
                yield i, self.arena_base + ((v & 0xFFFFFFFF) << 3)

    def entry_offset(self, stripe: int, pos: int) -> int:
        v = self._q[self.slot0 + stripe * self.per + pos]
        return self.arena_base + ((v & 0xFFFFFFFF) << 3) if v else 0
