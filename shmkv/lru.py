"""Segmented LRU: the probation and protected lists of entries, and the readers' access bytes.

Like memcached's segmented LRU (doc/new_lru.txt), but with two segments: a new entry enters at
the head of PROBATION. Readers never move anything: a get only sets the entry's access byte.
Entries move when a writer that needs room (or the maintainer) looks at a list's tail, under the
arena lock: an accessed probation entry is promoted to the head of PROTECTED (its byte cleared),
one that was not accessed is the victim. So a scan of one-time keys flows through probation and
out again, while entries that were read again sit in protected, which may hold protected_pct of
the arena; past that, its tail is demoted to the head of probation, or given a second turn at
the protected head if it was read meanwhile.

Lists are doubly linked through lru_prev/lru_next in the entry headers (block refs), with head,
tail, item and byte counts in the region header. Every function here needs the arena lock.

Links and segment bytes are shared memory and may hold anything: before a link is followed or
written through, the entry it names must lie inside the arena and carry the segment byte of the
list it is on (one byte read). A bad one raises CorruptRegion before the list is changed.
"""

from __future__ import annotations

from . import layout as L
from .errors import CorruptRegion

PROBATION, PROTECTED = L.SEG_PROBATION, L.SEG_PROTECTED


class Segments:
    def __init__(self, mm, q: memoryview, u32: memoryview, layout: L.Layout) -> None:
        self._mm = mm
        self._q = q
        self._u32 = u32
        self.base = layout.arena_offset
        self.access0 = layout.access_offset
        self.index_slots = layout.index_slots
        self.capacity = layout.arena_bytes
        # A link (or list end) read from the region is used only if 0 < ref <= max_ref (a whole
        # block fits there) and the entry there has the list's segment byte, at
        # mm[seg_at + (ref << 3)]; checked inline where every insert and removal comes.
        self._max_ref = (layout.arena_bytes - L.ALIGN - L.MIN_BLOCK_BYTES) >> 3
        self._seg_at = self.base + L.E_SEGMENT

    def _bad_link(self, ref: int, seg: int) -> CorruptRegion:
        return _corrupt(f"list {seg} links to block ref {ref}, which is not an entry on it")

    # --- access bytes (readers set them; these are for writers) ---------------------------
    # An entry finds its byte through its slot_no; one not published yet has none (NO_SLOT).
    def accessed(self, off: int) -> bool:
        slot_no = self._u32[(off + L.E_SLOT_NO) >> 2]
        return slot_no < self.index_slots and bool(self._mm[self.access0 + slot_no])

    def mark(self, off: int, accessed: bool) -> None:
        slot_no = self._u32[(off + L.E_SLOT_NO) >> 2]
        if slot_no < self.index_slots:
            self._mm[self.access0 + slot_no] = accessed

    # --- lists ------------------------------------------------------------------------
    def tail(self, seg: int) -> int:
        """Offset of the tail entry of a segment, or 0."""
        ref = self._u32[(L.H_SEG_ENDS >> 2) + 2 * (seg - 1) + 1]
        if not ref:
            return 0
        if ref > self._max_ref or self._mm[self._seg_at + (ref << 3)] != seg:
            raise self._bad_link(ref, seg)
        return self.base + (ref << 3)

    def prev(self, off: int) -> int:
        """Offset of the entry before off on its list (towards the head), or 0."""
        seg = self._mm[off + L.E_SEGMENT]
        ref = self._u32[(off + L.E_LRU_PREV) >> 2]
        if not ref:
            return 0
        if ref > self._max_ref or self._mm[self._seg_at + (ref << 3)] != seg:
            raise self._bad_link(ref, seg)
        return self.base + (ref << 3)

    def items(self, seg: int) -> int:
        return self._q[(L.H_SEG_ITEMS >> 3) + seg - 1]

    def bytes(self, seg: int) -> int:
        return self._q[(L.H_SEG_BYTES >> 3) + seg - 1]

    def protected_limit(self) -> int:
        return self.capacity * self._u32[L.H_PROTECTED_PCT >> 2] // 100

    def push_head_locked(self, off: int, seg: int) -> None:
        """Put an unlinked entry at the head of seg."""
        u32 = self._u32
        ends = (L.H_SEG_ENDS >> 2) + 2 * (seg - 1)
        ref = (off - self.base) >> 3
        head = u32[ends]
        if head and (head > self._max_ref or self._mm[self._seg_at + (head << 3)] != seg):
            raise self._bad_link(head, seg)
        u32[(off + L.E_LRU_PREV) >> 2] = 0
        u32[(off + L.E_LRU_NEXT) >> 2] = head
        if head:
            u32[(self.base + (head << 3) + L.E_LRU_PREV) >> 2] = ref
        else:
            u32[ends + 1] = ref
        u32[ends] = ref
        self._mm[off + L.E_SEGMENT] = seg
        self._count(seg, 1, u32[off >> 2] & L.SIZE_MASK)

    def unlink_locked(self, off: int) -> None:
        """Take an entry off its list (a no-op for an entry on none)."""
        seg = self._mm[off + L.E_SEGMENT]
        if seg == L.SEG_NONE:
            return
        if seg > PROTECTED:  # SEG_RETIRED is on no segment list either; anything else is garbage
            raise _corrupt(f"entry at arena offset {off - self.base} has segment byte {seg}")
        u32 = self._u32
        ends = (L.H_SEG_ENDS >> 2) + 2 * (seg - 1)
        prev = u32[(off + L.E_LRU_PREV) >> 2]
        nxt = u32[(off + L.E_LRU_NEXT) >> 2]
        max_ref, mm, seg_at = self._max_ref, self._mm, self._seg_at  # both links checked first
        if prev and (prev > max_ref or mm[seg_at + (prev << 3)] != seg):
            raise self._bad_link(prev, seg)
        if nxt and (nxt > max_ref or mm[seg_at + (nxt << 3)] != seg):
            raise self._bad_link(nxt, seg)
        if prev:
            u32[(self.base + (prev << 3) + L.E_LRU_NEXT) >> 2] = nxt
        else:
            u32[ends] = nxt
        if nxt:
            u32[(self.base + (nxt << 3) + L.E_LRU_PREV) >> 2] = prev
        else:
            u32[ends + 1] = prev
        mm[off + L.E_SEGMENT] = L.SEG_NONE
        self._count(seg, -1, -(u32[off >> 2] & L.SIZE_MASK))

    def move_locked(self, off: int, seg: int) -> None:
        self.unlink_locked(off)
        self.push_head_locked(off, seg)

    def rebalance_locked(self, max_steps: int = 64) -> None:
        """Bring protected back under its share: demote its tail, unless it was read since it
        came to the head, in which case it gets another turn there."""
        limit = self.protected_limit()
        for _ in range(max_steps):
            if self.bytes(PROTECTED) <= limit:
                return
            off = self.tail(PROTECTED)
            if not off:  # its byte count is wrong (the list is empty): nothing to demote
                return
            if self.accessed(off):
                self.mark(off, False)
                self.move_locked(off, PROTECTED)
            else:
                self.move_locked(off, PROBATION)

    def _count(self, seg: int, items: int, nbytes: int) -> None:
        self._q[(L.H_SEG_ITEMS >> 3) + seg - 1] += items
        self._q[(L.H_SEG_BYTES >> 3) + seg - 1] += nbytes


def _corrupt(what: str) -> CorruptRegion:
    return CorruptRegion(f"segment lists: {what}; the region is corrupt: run `shmkv doctor "
                         "--repair`, or unlink the region and create it again")
