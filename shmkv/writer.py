"""The write path in pure Python: what a handle's writes do once they hold the key's stripe
lock (Cache takes it, and checks every argument before). It is the reference for the
compiled writer, which handles the common cases itself and hands the rest here.

An overwrite whose entry fits the key's block snugly rewrites it in place between the two seq
bumps (readers retry, as for a slot change). Otherwise the new entry is built in a freshly
allocated block that no reader can reach yet (checksum included), published by one slot store
between the seq bumps, and only then is the old block freed. A writer killed before the publish
leaves an unreachable block, never a torn entry; one killed between the bumps leaves seq odd
and its pid recorded, and the next holder repairs the stripe (repair.py). Item counts change
with the slots, inside the same seq section (namespaces.py), so they stay exact through any
crash.

Every method here but delete_collection_entries needs the stripe lock of the key it writes
(`_locked`, and put_locked/fill_entry by contract); they take the arena lock themselves.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import layout as L
from .arena import MAX_BLOCK_BYTES
from .errors import CollectionNotFound, CorruptRegion, IndexFull, RegionFull, ValueTooLarge
from .events import emit_locked
from .hashing import checksum32
from .repair import MAX_WRITES

if TYPE_CHECKING:
    from .shared_region import SharedRegion

WRITER_EXPIRY_EVERY = 16  # every so many writes, a writer samples slots for expired entries
WRITER_EXPIRY_SLOTS = 16
MAKE_ROOM_ATTEMPTS = 20  # arena-lock sections a write may spend evicting before RegionFull
# What an in-place overwrite changes, at E_EXPIRES_AT: expires_at_ns, version, value_len
_ENTRY_REWRITE = struct.Struct("<QII")
# An overwrite reuses the key's block when the new entry fits it and wastes less than this;
# larger values are relocated so that readers of the stripe never wait for a long copy.
INPLACE_SLACK_BYTES = 64
INPLACE_MAX_BYTES = 64 << 10
# What a write stores: bytes, a buffer, or an array's (header, data) (see arrays.py)
Value = bytes | memoryview | tuple[bytes, memoryview]


class Writer:
    """The write path of one handle (one collection of one region)."""

    def __init__(self, region: SharedRegion, coll: int, gen: int, collection_name: str,
                 flush_counts_locked: Callable[[], None]) -> None:
        lay = region.layout
        self._region = region
        self._mm, self._q, self._u32 = region.mm, region.q, region.u32
        self._index, self._locks, self._clock = region.index, region.locks, region.clock
        self._coll, self._gen, self.collection_name = coll, gen, collection_name
        self._smask = lay.n_stripes - 1
        self._per = lay.slots_per_stripe
        self._seq0 = lay.stripes_offset >> 3  # seq of stripe s is q[_seq0 + s * STRIPE_Q]
        self._count0 = (lay.stripes_offset + L.S_COUNT) >> 2  # u32[_count0 + s * STRIPE_U32]
        self._abase = lay.arena_offset
        # hits and misses go to the region's counters with the arena lock held (Cache's)
        self._flush_counts_locked = flush_counts_locked

    def check_collection_locked(self) -> None:
        if not self._region.colls.is_live(self._coll, self._gen):
            raise CollectionNotFound(
                f"collection {self.collection_name!r} was dropped; get a new handle with "
                "collection()"
            )

    def expired(self, off: int) -> bool:
        exp = self._q[(off + L.E_EXPIRES_AT) >> 3]
        return bool(exp) and exp <= self._clock()

    def version_at(self, off: int, stripe: int) -> int:
        """The API's version of the entry at off, of a key of that stripe (layout.py)."""
        return self._u32[(off + L.E_VERSION) >> 2] << 8 | stripe

    def value_at(self, off: int) -> bytes:
        start = off + L.ENTRY_HEADER_BYTES + (self._u32[(off + L.E_KEY_COLL) >> 2]
                                              & L.KEY_LEN_MASK)
        return self._mm[start:start + self._u32[(off + L.E_VALUE_LEN) >> 2]]

    def put_locked(self, stripe: int, h: int, k: bytes, v: Value, exp: int,
                    pos: int, old: int, kind: int = L.KIND_BYTES) -> None:
        """Store k -> v: rewrite the key's block in place when the new entry fits it snugly,
        else build a new entry off to the side and publish it with one slot store."""
        klen = len(k)
        vlen = len(v) if type(v) is bytes else _nbytes(v)
        need = (L.ENTRY_HEADER_BYTES + klen + vlen + L.ALIGN - 1) & ~(L.ALIGN - 1)
        q, u32 = self._q, self._u32
        region = self._region
        seq_at = self._seq0 + stripe * L.STRIPE_Q
        writes_at = seq_at + (L.S_WRITES >> 3)
        # Counted only once the write cannot fail any more (unique: we hold the stripe lock).
        writes = q[writes_at] + 1
        if not writes & L.VERSION_MASK:  # a stored version is never 0 (layout.py)
            writes += 1
        if writes > MAX_WRITES:  # no writer gets there (2**56 writes): the counter is garbage
            raise CorruptRegion(f"stripe {stripe} counts {q[writes_at]} writes: the region is "
                                "corrupt; run `shmkv doctor --repair`")
        if old and vlen <= INPLACE_MAX_BYTES and not self._mm[old + L.E_KIND] & L.KIND_PINNED \
                and need <= u32[old >> 2] & L.SIZE_MASK < need + INPLACE_SLACK_BYTES:
            if not writes % WRITER_EXPIRY_EVERY:  # as inserts do (see _allocate_locked)
                with self._locks.arena_held:
                    if region.evictor.expire_sample_locked(WRITER_EXPIRY_SLOTS, stripe, old)[1]:
                        pos, _ = self._index.find_locked(stripe, h, k, self._coll)  # shifted
                    self._flush_counts_locked()
            # Readers of this stripe retry while seq is odd, as they do for a slot change.
            q[writes_at] = writes
            q[seq_at + _CHANGES] += 1
            q[seq_at] += 1
            q[seq_at + (L.S_PAYLOAD >> 3)] += vlen - u32[(old + L.E_VALUE_LEN) >> 2]
            self.fill_entry(old, k, v, writes, exp, kind, new=False)
            q[seq_at] += 1
            # a write is a use: it keeps the entry's segment (lru.mark, by the known slot)
            self._mm[self._index.access0 + stripe * self._per + pos] = 1
            if u32[_EVENTS_ON]:
                emit_locked(region, stripe, L.EV_SET, self._coll, k)
            return
        arena = region.arena
        if vlen > L.MAX_VALUE_BYTES or need > MAX_BLOCK_BYTES:
            raise ValueTooLarge(
                f"value of {vlen} bytes can never fit: an entry (header, key and value) is at "
                f"most {MAX_BLOCK_BYTES} bytes; split the value"
            )
        if need > arena.end - arena.first_block:
            raise ValueTooLarge(
                f"value of {vlen} bytes can never fit: this region's arena is "
                f"{arena.bytes} bytes; create the region with a larger arena_bytes"
            )
        locks = self._locks
        touched_own = False
        for attempt in range(MAKE_ROOM_ATTEMPTS):
            if attempt:
                # Writers queued on the arena lock hold their stripes, whose entries we may not
                # evict: let them finish and release those stripes, then try again.
                time.sleep(0)
            with locks.arena_held:
                off, touched = self.allocate_locked(stripe, k, writes, exp, kind, need, old)
                touched_own |= touched
            if off:
                break
        else:
            raise RegionFull(
                f"no room for an entry of {need} bytes even after evicting what could be "
                f"evicted ({arena.free_bytes()} bytes free, in pieces); create the region "
                "with a larger arena_bytes"
            )
        q[writes_at] = writes
        q[seq_at + _CHANGES] += 1
        if old and touched_own:  # evictions shifted this stripe's slots
            pos, _ = self._index.find_locked(stripe, h, k, self._coll)
        self.fill_entry(off, k, v, writes, exp, kind, new=False)
        ref = (off - self._abase) >> 3
        q[seq_at] += 1
        if old:  # an overwrite is a use of the key
            q[seq_at + (L.S_PAYLOAD >> 3)] -= region.evictor.payload_bytes(old)
            self._index.replace_locked(stripe, pos, h, ref, accessed=True)
        else:
            self._index.insert_locked(stripe, h, ref)
            u32[self._count0 + stripe * L.STRIPE_U32] += 1
            region.colls.count_locked(stripe, self._coll, 1)
        q[seq_at + (L.S_PAYLOAD >> 3)] += klen + vlen
        q[seq_at] += 1
        if old:  # only now: a reader that still copies from it will see seq moved and retry
            with locks.arena_held:
                region.lru.unlink_locked(old)
                region.pins.free_or_retire_locked(old)
        if u32[_EVENTS_ON]:
            emit_locked(region, stripe, L.EV_SET, self._coll, k)

    def allocate_locked(self, stripe: int, k: bytes, writes: int, exp: int, kind: int,
                         need: int, old: int) -> tuple[int, bool]:
        """Find room for a new entry (evicting if needed), write its key and put it on the
        probation list: (offset or 0, whether this stripe's slots moved). Arena lock held."""
        region = self._region
        evictor = region.evictor
        touched_own = False
        if not old and self._u32[self._count0 + stripe * L.STRIPE_U32] >= self._index.max_count:
            if not evictor.evict_in_stripe_locked(stripe, old):
                raise IndexFull(
                    "the index stripe for this key is full and holds nothing evictable; "
                    "create the region with a larger max_keys"
                )
            touched_own = True
        if not writes % WRITER_EXPIRY_EVERY:
            touched_own |= evictor.expire_sample_locked(WRITER_EXPIRY_SLOTS, stripe, old)[1]
            self._flush_counts_locked()
        off, evicted_own = evictor.make_room_locked(need, stripe, old)
        if not off:
            return 0, touched_own or evicted_own
        # The key goes in before the block joins a list, so that an evictor looking at it
        # computes this stripe, finds it locked by us, and leaves the block alone.
        self.fill_entry(off, k, b"", writes, exp, kind, new=True)
        region.lru.push_head_locked(off, L.SEG_PROBATION)
        return off, touched_own or evicted_own

    def fill_entry(self, off: int, k: bytes, v: Value, writes: int, exp: int,
                    kind: int, new: bool) -> None:
        """Write the header and key of a new block (new=True), or the value, its length and
        checksum into a block whose key is in place (new=False). writes is the stripe's
        counter after this write (its low 32 bits are the stored version). A block's list
        links and segment are the lists' business and are left alone; its PUBLISHED bit is the
        index's."""
        mm = self._mm
        klen = len(k)
        body = off + L.ENTRY_HEADER_BYTES
        end = body + klen + (len(v) if type(v) is bytes else _nbytes(v))
        if new:
            mm[body:body + klen] = k
            L.ENTRY_HEADER.pack_into(mm, off + L.E_EXPIRES_AT, exp, writes & L.VERSION_MASK,
                                     end - body - klen, klen | kind << 8 | self._coll << 16)
            return
        if type(v) is tuple:  # an array: its header, then its data
            mm[body + klen:body + klen + len(v[0])] = v[0]
            mm[body + klen + len(v[0]):end] = v[1]
        else:
            mm[body + klen:end] = v
        _ENTRY_REWRITE.pack_into(mm, off + L.E_EXPIRES_AT, exp, writes & L.VERSION_MASK,
                                 end - body - klen)
        # the kind byte keeps key_len's high bits and PUBLISHED (never pinned here)
        mm[off + L.E_KIND] = mm[off + L.E_KIND] & ~L.KIND_MASK | kind
        self._u32[(off + L.E_CHECKSUM) >> 2] = checksum32(self._region.mv[body:end],
                                                           self._region.seed)

    def remove_locked(self, stripe: int, pos: int, off: int, counter: int) -> None:
        """Take one entry out: slot first (stripe lock, held by the caller), then block."""
        self._region.evictor.remove_locked(stripe, pos, off, counter)

    def delete_collection_entries(self, coll: int) -> int:
        removed = 0
        for stripe in range(self._smask + 1):
            self._locks.acquire_stripe(stripe)
            try:
                pos = 0
                while pos < self._per:
                    off = self._index.entry_offset(stripe, pos)
                    if off and self._u32[(off + L.E_KEY_COLL) >> 2] >> 16 == coll:
                        # the backward shift may pull a later entry into pos: look again
                        self.remove_locked(stripe, pos, off, L.H_DELETES)
                        removed += 1
                    else:
                        pos += 1
            finally:
                self._locks.release_stripe(stripe)
        return removed


_CHANGES = L.S_CHANGES >> 3
_EVENTS_ON = L.H_EVENTS_ENABLED >> 2


def _nbytes(v: Value) -> int:
    if type(v) is tuple:
        return len(v[0]) + v[1].nbytes
    return v.nbytes  # type: ignore[union-attr]
