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
tail, item and byte counts in the region header; an entry's segment is two bits of its block
word (layout.py), which the arena lock guards too. Every function here needs the arena lock.

An entry does not record its index slot: its access byte is found by hashing its key and
probing its stripe for the slot that holds its ref (Index.slot_of). The entry's stripe lock is
not held here (eviction looks at list tails before trying their stripes), so a backward shift
running meanwhile may hide the slot: the entry then looks unread, or a clear is lost, which
costs eviction precision, never correctness.

Links and segment bits are shared memory and may hold anything: before a link is followed or
written through, the entry it names must lie inside the arena and carry the segment bits of the
list it is on (one u32 read). A bad one raises CorruptRegion before the list is changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import layout as L
from .errors import CorruptRegion

if TYPE_CHECKING:
    from .index import Index

PROBATION, PROTECTED = L.SEG_PROBATION, L.SEG_PROTECTED


class Segments:
    def __init__(self, mm, q: memoryview, u32: memoryview, layout: L.Layout,
                 index: Index) -> None:
        self._mm = mm
        self._q = q
        self._u32 = u32
        self._index = index
        self.base = layout.arena_offset
        self.access0 = layout.access_offset
        self.capacity = layout.arena_bytes
        # A link (or list end) read from the region is used only if 0 < ref <= max_ref (a whole
        # block fits there) and the block word there, u32[word0 + 2 * ref], has the list's
        # segment bits; checked inline where every insert and removal comes.
        self._max_ref = (layout.arena_bytes - L.ALIGN - L.MIN_BLOCK_BYTES) >> 3
        self._word0 = self.base >> 2

    def _bad_link(self, ref: int, seg: int) -> CorruptRegion:
        return _corrupt(f"list {seg} links to block ref {ref}, which is not an entry on it")

    def set_segment_locked(self, off: int, seg: int) -> None:
        """Record seg in the block word of the entry at off (its other bits are kept)."""
        at = off >> 2
        self._u32[at] = self._u32[at] & ~L.SEG_BITS & 0xFFFFFFFF | L.SEG_WORD[seg]

    # --- access bytes (readers set them; these are for writers) ---------------------------
    # An entry finds its byte through its slot (Index.slot_of); one not published has none.
    def accessed(self, off: int) -> bool:
        slot_no = self._index.slot_of(off)
        return slot_no >= 0 and bool(self._mm[self.access0 + slot_no])

    def mark(self, off: int, accessed: bool) -> None:
        slot_no = self._index.slot_of(off)
        if slot_no >= 0:
            self._mm[self.access0 + slot_no] = accessed

    # --- lists ------------------------------------------------------------------------
    def tail(self, seg: int) -> int:
        """Offset of the tail entry of a segment, or 0."""
        ref = self._u32[(L.H_SEG_ENDS >> 2) + 2 * (seg - 1) + 1]
        if not ref:
            return 0
        if ref > self._max_ref or self._u32[self._word0 + (ref << 1)] & L.SEG_BITS \
                != L.SEG_WORD[seg]:
            raise self._bad_link(ref, seg)
        return self.base + (ref << 3)

    def prev(self, off: int) -> int:
        """Offset of the entry before off on its list (towards the head), or 0."""
        seg_bits = self._u32[off >> 2] & L.SEG_BITS
        ref = self._u32[(off + L.E_LRU_PREV) >> 2]
        if not ref:
            return 0
        if ref > self._max_ref or self._u32[self._word0 + (ref << 1)] & L.SEG_BITS != seg_bits:
            seg = L.segment_of(seg_bits)
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
        seg_bits = L.SEG_WORD[seg]
        if head and (head > self._max_ref
                     or u32[self._word0 + (head << 1)] & L.SEG_BITS != seg_bits):
            raise self._bad_link(head, seg)
        u32[(off + L.E_LRU_PREV) >> 2] = 0
        u32[(off + L.E_LRU_NEXT) >> 2] = head
        if head:
            u32[(self.base + (head << 3) + L.E_LRU_PREV) >> 2] = ref
        else:
            u32[ends + 1] = ref
        u32[ends] = ref
        word = u32[off >> 2]
        u32[off >> 2] = word & _NOT_SEG | seg_bits
        self._count(seg, 1, word & L.SIZE_MASK)

    def unlink_locked(self, off: int) -> None:
        """Take an entry off its list (a no-op for an entry on none)."""
        word = self._u32[off >> 2]
        seg = L.segment_of(word)
        if seg == L.SEG_NONE:
            return
        if seg > PROTECTED:  # SEG_RETIRED is on no segment list either; anything else is garbage
            raise _corrupt(f"entry at arena offset {off - self.base} has segment byte {seg}")
        u32 = self._u32
        ends = (L.H_SEG_ENDS >> 2) + 2 * (seg - 1)
        prev = u32[(off + L.E_LRU_PREV) >> 2]
        nxt = u32[(off + L.E_LRU_NEXT) >> 2]
        max_ref, word0 = self._max_ref, self._word0  # both links checked first
        seg_bits = word & L.SEG_BITS
        if prev and (prev > max_ref or u32[word0 + (prev << 1)] & L.SEG_BITS != seg_bits):
            raise self._bad_link(prev, seg)
        if nxt and (nxt > max_ref or u32[word0 + (nxt << 1)] & L.SEG_BITS != seg_bits):
            raise self._bad_link(nxt, seg)
        if prev:
            u32[(self.base + (prev << 3) + L.E_LRU_NEXT) >> 2] = nxt
        else:
            u32[ends] = nxt
        if nxt:
            u32[(self.base + (nxt << 3) + L.E_LRU_PREV) >> 2] = prev
        else:
            u32[ends + 1] = prev
        u32[off >> 2] = word & _NOT_SEG
        self._count(seg, -1, -(word & L.SIZE_MASK))

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


_NOT_SEG = ~L.SEG_BITS & 0xFFFFFFFF


def _corrupt(what: str) -> CorruptRegion:
    return CorruptRegion(f"segment lists: {what}; the region is corrupt: run `shmkv doctor "
                         "--repair`, or unlink the region and create it again")
