"""The open-addressed hash index: n_stripes sub-tables of u64 slots (format in layout.py).

Linear probing from the key's home slot, wrapping inside the stripe's own sub-table, so every
probe run belongs to exactly one stripe lock. A slot is `tag << 32 | ref`: the tag (the high 32
bits of the hash) rejects almost every non-matching slot without touching the arena, and it
also gives the home slot (`tag & mask`), which backward-shift deletion needs. Deleting by
backward shift instead of tombstones keeps probe runs as short as if the deleted keys had never
been there, so a delete-heavy workload never degrades the index.

Writers change slots only between the two increments of their stripe's seq (odd = changing);
readers re-check seq after reading and retry, so a slot moved by a backward shift is never
missed for good. Every function that writes here needs the stripe lock (`_locked`).
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
        self.mask = layout.slots_per_stripe - 1
        self.arena_base = layout.arena_offset
        self.max_count = int(layout.slots_per_stripe * L.MAX_LOAD)

    def find_locked(self, stripe: int, h: int, key: bytes, coll: int) -> tuple[int, int]:
        """(position in the stripe, entry offset) of key, or (-1, 0) if absent."""
        q, u32, mm, mask = self._q, self._u32, self._mm, self.mask
        base = self.slot0 + stripe * self.per
        tag = h >> 32
        i = tag & mask
        klen = len(key)
        key_coll = klen | coll << 16
        for _ in range(self.per):
            v = q[base + i]
            if not v:
                return -1, 0
            if v >> 32 == tag:
                off = self.arena_base + ((v & 0xFFFFFFFF) << 3)
                if u32[(off + L.E_KEY_COLL) >> 2] == key_coll \
                        and mm[off + 42:off + 42 + klen] == key:
                    return i, off
            i = (i + 1) & mask
        return -1, 0

    def insert_locked(self, stripe: int, h: int, ref: int) -> None:
        """Put a new slot in the first empty place of the key's probe run."""
        q, mask = self._q, self.mask
        base = self.slot0 + stripe * self.per
        i = (h >> 32) & mask
        while q[base + i]:
            i = (i + 1) & mask
        q[base + i] = (h >> 32) << 32 | ref

    def replace_locked(self, stripe: int, pos: int, h: int, ref: int) -> None:
        self._q[self.slot0 + stripe * self.per + pos] = (h >> 32) << 32 | ref

    def remove_locked(self, stripe: int, pos: int) -> None:
        """Empty a slot and shift later members of its probe run back (no tombstones)."""
        q, mask = self._q, self.mask
        base = self.slot0 + stripe * self.per
        hole = pos
        j = pos
        while True:
            j = (j + 1) & mask
            v = q[base + j]
            if not v:
                break
            home = (v >> 32) & mask
            # The entry at j may fill the hole unless its home lies cyclically in (hole, j].
            if (j - home) & mask >= (j - hole) & mask:
                q[base + hole] = v
                hole = j
        q[base + hole] = 0

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
