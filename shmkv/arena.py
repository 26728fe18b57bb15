"""The allocator of arena bytes: segregated free lists with boundary tags (TLSF-style).

Every block starts with a 32-bit block word, `size | FREE | PREV_FREE`, where size is a
multiple of ALIGN (8). A free block also stores its size in its last 4 bytes (the footer) and
its free-list links at +8/+12. So freeing a block coalesces with both neighbours in O(1): the
next block is found by adding the size, the previous one (only when PREV_FREE says it is free)
by reading its footer. No two free blocks are adjacent, except where coalescing would exceed
MAX_BLOCK_BYTES.

Free blocks are kept in NBINS size classes: exact 8-byte steps below 1 KiB (entries of small
keys and values reuse freed space exactly), then 8 classes per power of two up to 4 GiB. A
bitmap in the header tells which classes are non-empty, so a search is one big-int operation:
take the first non-empty class whose every block is large enough ("good fit"), split off the
tail if it is at least MIN_BLOCK_BYTES, and put the tail back.

Why not memcached's slabs: slab classes cannot hold a contiguous 64 MiB value for a zero-copy
view, and moving pages between classes is a rebalancer of its own. Why not a buddy allocator:
it wastes 25% on average to power-of-two rounding.

The arena knows blocks, never keys. All functions here need the arena lock.

Block words, footers, free-list links and bin heads are shared memory and may hold anything
(a stray write, a damaged file), so a block is checked before the allocator writes through it:
a ref must land inside the arena, on a block whose FREE bit and size are what the operation
expects (a free-list link on a free block, a freed block on a used one). All the checks of one
operation come before its first store where that is cheap, so a CorruptRegion leaves the
structures as damaged as they were, not more; at worst a free block falls off its list (space
lost until a repair). Walks are bounded by the number of blocks the arena can hold.
"""

from __future__ import annotations

from . import layout as L
from .errors import CorruptRegion

SMALL_LIMIT = 1024
MAX_BLOCK_BYTES = (2**32 - 1) & L.SIZE_MASK
_TRY_REPAIR = "run `shmkv doctor --repair`, or unlink the region and create it again"
# repair.py rebuilds the allocator and the lists from the block walk: without one, it cannot
_BEYOND_REPAIR = ("its blocks no longer tile the arena, and every repair starts from walking "
                  "them: unlink the region and create it again")


def bin_of(size: int) -> int:
    """The class a free block of `size` bytes is filed under."""
    if size < SMALL_LIMIT:
        return size >> 3
    fl = size.bit_length() - 1
    return 128 + (fl - 10) * 8 + ((size >> (fl - 3)) & 7)


def bin_floor(b: int) -> int:
    """The smallest block size filed under class b."""
    if b < 128:
        return b << 3
    fl = (b - 128) // 8 + 10
    return (1 << fl) + (((b - 128) % 8) << (fl - 3))


def fit_bin(size: int) -> int:
    """The first class in which every block holds at least `size` bytes."""
    b = bin_of(size)
    return b if bin_floor(b) == size or size < SMALL_LIMIT else b + 1


class Arena:
    """Allocator over the arena area of one mapped region.

    Written for the interpreter: block words are read and written through a u32 view, the
    bitmap and counters through a u64 view (one indexing operation each, ~30-50 ns), never
    through struct calls with a format string (~130 ns)."""

    def __init__(self, q: memoryview, u32: memoryview, layout: L.Layout) -> None:
        self._q = q
        self._u32 = u32
        self.base = layout.arena_offset
        self.bytes = layout.arena_bytes
        self.first_block = self.base + L.ALIGN  # arena bytes 0..7 are reserved: ref 0 = none
        self.end = self.base + self.bytes - L.ALIGN  # an 8-byte used sentinel of size 0
        self.max_blocks = self.bytes // L.MIN_BLOCK_BYTES  # bounds every walk
        # What a ref read from the region must satisfy before it is used: 0 < ref <= max_ref
        # (a whole block fits before the sentinel), and the block word at u32[_word0 + 2 * ref]
        # has the FREE bit if it is a free-list link.
        self._max_ref = (self.bytes - L.ALIGN - L.MIN_BLOCK_BYTES) >> 3
        self._word0 = self.base >> 2

    # --- refs: 32-bit handles used by the index and the lists ----------------------------
    def ref(self, off: int) -> int:
        return (off - self.base) >> 3

    def off(self, ref: int) -> int:
        return self.base + (ref << 3)

    # --- set-up ------------------------------------------------------------------------
    def init_locked(self) -> None:
        """Format an all-zero arena as free blocks (several when it exceeds MAX_BLOCK_BYTES)."""
        self._u32[self.end >> 2] = 0
        off = self.first_block
        while off < self.end:
            size = min(self.end - off, MAX_BLOCK_BYTES)
            if self.end - off - size < L.MIN_BLOCK_BYTES:
                size = self.end - off
            prev_free = L.PREV_FREE_BIT if off != self.first_block else 0
            self.file_free_locked(off, size, prev_free)
            off += size
        self._u32[self.end >> 2] = L.PREV_FREE_BIT  # the sentinel: size 0, never free

    # --- allocation ---------------------------------------------------------------------
    def alloc_locked(self, nbytes: int) -> int:
        """Offset of a used block of at least nbytes (a multiple of ALIGN), or 0 if none fits."""
        u32 = self._u32
        found = self._first_nonempty(fit_bin(nbytes))
        if found >= 0:
            ref = u32[_HEADS + found]
            if not 0 < ref <= self._max_ref:  # the bitmap says the list is not empty
                raise self._corrupt(None, f"free list {found} starts at ref {ref}")
            off = self.base + (ref << 3)
        else:
            # Good fit skips the request's own class, whose blocks may be smaller; when nothing
            # larger exists, one of them may still fit (e.g. a value nearly the arena's size).
            found = bin_of(nbytes)
            off = self._first_fit_in_class(found, nbytes)
            if not off:
                return 0
        word = u32[off >> 2]
        size = word & L.SIZE_MASK
        # the block handed out must be what its list says; its footer agrees unless garbage
        if not word & L.FREE_BIT or size < nbytes or off + size > self.end \
                or u32[(off + size - 4) >> 2] != size:
            raise self._corrupt(off, f"free list {found} holds block word {word:#x}")
        self._unlink(off, found)
        rest = size - nbytes
        if rest >= L.MIN_BLOCK_BYTES:
            size = nbytes
            self.file_free_locked(off + size, rest, 0)  # the block after it already has PREV_FREE
        else:
            u32[(off + size) >> 2] &= _NOT_PREV_FREE
        u32[off >> 2] = size | (word & L.PREV_FREE_BIT)
        self._q[_USED] += size
        return off

    def free_locked(self, off: int) -> None:
        """Return a used block, coalescing with free neighbours."""
        u32 = self._u32
        word = u32[off >> 2]
        size = word & L.SIZE_MASK
        if word & L.FREE_BIT or size < L.MIN_BLOCK_BYTES or off + size > self.end:
            raise self._corrupt(off, f"freeing a block whose word is {word:#x}")
        start, total = off, size
        nword = u32[(off + size) >> 2]
        nsize = nword & L.SIZE_MASK
        if nword & L.FREE_BIT and total + nsize <= MAX_BLOCK_BYTES:
            if nsize < L.MIN_BLOCK_BYTES or off + size + nsize > self.end:
                raise self._corrupt(off + size, f"free block word {nword:#x}")
            self._unlink(off + size, bin_of(nsize))
            total += nsize
        prev_free = word & L.PREV_FREE_BIT
        if prev_free:
            psize = u32[(off - 4) >> 2]  # the footer of the free block before ours
            if psize + total <= MAX_BLOCK_BYTES:
                # that block must start at or after the first one, free and of that size
                if not L.MIN_BLOCK_BYTES <= psize <= off - self.first_block \
                        or u32[(off - psize) >> 2] & _NOT_PREV_FREE != psize | L.FREE_BIT:
                    raise self._corrupt(off, f"the footer before it says {psize} bytes")
                start = off - psize
                self._unlink(start, bin_of(psize))
                total += psize
                prev_free = u32[start >> 2] & L.PREV_FREE_BIT
        self._q[_USED] -= size
        self.file_free_locked(start, total, prev_free)

    def block_bytes(self, off: int) -> int:
        return self._u32[off >> 2] & L.SIZE_MASK

    def blocks(self):
        """Yield (offset, size, is_free) for every block in address order (for checks)."""
        off = self.first_block
        while off < self.end:  # bounded: every step moves on by MIN_BLOCK_BYTES at least
            word = self._u32[off >> 2]
            size = word & L.SIZE_MASK
            if size < L.MIN_BLOCK_BYTES or off + size > self.end:
                raise self._corrupt(off, f"impossible size {size}", _BEYOND_REPAIR)
            yield off, size, bool(word & L.FREE_BIT)
            off += size

    def used_bytes(self) -> int:
        return self._q[_USED]

    def free_bytes(self) -> int:
        return self.end - self.first_block - self._q[_USED]

    def largest_free_block(self) -> int:
        """Size of the largest block the next allocation could get."""
        best = 0
        steps = self.max_blocks  # a cycle of links must not loop forever
        b = self._first_nonempty(0)
        while b >= 0:
            ref = self._u32[_HEADS + b]
            while ref and steps:
                self._check_link(ref)
                off = self.base + (ref << 3)
                best = max(best, self._u32[off >> 2] & L.SIZE_MASK)
                ref = self._u32[(off + 8) >> 2]
                steps -= 1
            b = self._first_nonempty(b + 1)
        if not steps:
            raise self._corrupt(None, "its free lists hold more blocks than fit in it")
        return best

    # --- internals ----------------------------------------------------------------------
    def file_free_locked(self, off: int, size: int, prev_free: int) -> None:
        u32 = self._u32
        u32[off >> 2] = size | L.FREE_BIT | prev_free
        u32[(off + size - 4) >> 2] = size  # footer, read by the next block when it coalesces
        u32[(off + size) >> 2] |= L.PREV_FREE_BIT
        b = size >> 3 if size < SMALL_LIMIT else bin_of(size)
        head = u32[_HEADS + b]
        if head and (head > self._max_ref or not u32[self._word0 + (head << 1)] & L.FREE_BIT):
            raise self._bad_link(head)  # it is about to get a back link
        ref = (off - self.base) >> 3
        u32[(off + 8) >> 2] = head  # next
        u32[(off + 12) >> 2] = 0  # prev
        if head:
            u32[((self.base + (head << 3)) >> 2) + 3] = ref
        u32[_HEADS + b] = ref
        self._q[_BITMAP + (b >> 6)] |= 1 << (b & 63)

    def _unlink(self, off: int, b: int) -> None:
        u32 = self._u32
        nxt = u32[(off + 8) >> 2]
        prv = u32[(off + 12) >> 2]
        # both links are checked (inline: every allocation and free comes here) before either
        # block is written
        max_ref, word0 = self._max_ref, self._word0
        if nxt and (nxt > max_ref or not u32[word0 + (nxt << 1)] & L.FREE_BIT):
            raise self._bad_link(nxt)
        if prv and (prv > max_ref or not u32[word0 + (prv << 1)] & L.FREE_BIT):
            raise self._bad_link(prv)
        if prv:
            u32[((self.base + (prv << 3)) >> 2) + 2] = nxt
        else:
            u32[_HEADS + b] = nxt
            if not nxt:
                self._q[_BITMAP + (b >> 6)] &= ~(1 << (b & 63)) & _U64_MAX
        if nxt:
            u32[((self.base + (nxt << 3)) >> 2) + 3] = prv

    # --- checks of what the shared memory says --------------------------------------------
    def _corrupt(self, off: int | None, what: str, advice: str = _TRY_REPAIR) -> CorruptRegion:
        where = "arena" if off is None else f"arena block at offset {off - self.base}"
        return CorruptRegion(f"{where}: {what}; the region is corrupt: {advice}")

    def _bad_link(self, ref: int) -> CorruptRegion:
        return self._corrupt(None, f"a free list links to ref {ref}, which is not a free block")

    def _check_link(self, ref: int) -> None:
        """Raise unless ref (not 0) names a free block: what _unlink checks inline."""
        if ref > self._max_ref or not self._u32[self._word0 + (ref << 1)] & L.FREE_BIT:
            raise self._bad_link(ref)

    def _first_fit_in_class(self, b: int, nbytes: int, max_blocks: int = 64) -> int:
        u32 = self._u32
        ref = u32[_HEADS + b]
        for _ in range(max_blocks):
            if not ref:
                return 0
            self._check_link(ref)
            off = self.base + (ref << 3)
            if u32[off >> 2] & L.SIZE_MASK >= nbytes:
                return off
            ref = u32[(off + 8) >> 2]
        return 0

    def _first_nonempty(self, b: int) -> int:
        q = self._q
        w = b >> 6
        bits = q[_BITMAP + w] >> (b & 63)
        if bits:
            return b + (bits & -bits).bit_length() - 1
        for w in range(w + 1, L.NBINS // 64):
            bits = q[_BITMAP + w]
            if bits:
                return (w << 6) + (bits & -bits).bit_length() - 1
        return -1


_HEADS = L.H_BIN_HEADS >> 2  # u32-index of bin head 0
_BITMAP = L.H_BIN_BITMAP >> 3  # u64-index of bitmap word 0
_USED = L.H_ARENA_USED >> 3
_NOT_PREV_FREE = ~L.PREV_FREE_BIT & 0xFFFFFFFF
_U64_MAX = 2**64 - 1
