"""Removing entries: delete, expiry, and eviction when the arena is full.

The only module that joins the index, the arena, the segment lists and the locks; every path
that takes an entry out of the region (delete, clear, drop, expiry, eviction) goes through
`unpublish_locked` (stripe lock: the slot goes, between two seq bumps) and then
`release_locked` (arena lock: off its list, counters, block freed), in that order, so that a
reader still copying from the block sees the seq move and retries.

Making room (`make_room_locked`, called by a writer that holds its own stripe lock and the arena
lock) takes expired entries first, then the probation tail. The victim's key says which stripe
it lives in; that stripe lock is only tried, never waited for, because the writer already holds
the arena lock (lock order: stripe -> arena). A victim whose stripe is busy is passed over to
the head. A block on a list that no slot points to (its writer died before publishing) is simply
freed: eviction also reclaims what crashes leak.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from . import layout as L
from .events import emit_locked
from .hashing import xxh3_64
from .lru import PROBATION, PROTECTED

if TYPE_CHECKING:
    from .shared_region import SharedRegion

_EVENTS_ON = L.H_EVENTS_ENABLED >> 2
_EVENT_OF = {L.H_DELETES: L.EV_DEL, L.H_EVICTIONS: L.EV_EVICTED, L.H_EXPIRATIONS: L.EV_EXPIRED}
MAX_VICTIM_TRIES = 256  # list entries one make_room step may look at before giving up
EXPIRE_SAMPLE_SLOTS = 32  # slots an eviction samples for expired entries before the SLRU
STRIPE_SAMPLE = 16  # slots sampled to pick a victim when a stripe of the index is full


class Evictor:
    def __init__(self, region: SharedRegion, rng: random.Random | None = None) -> None:
        self.r = region
        self._rng = rng or random.Random()
        lay = region.layout
        self._seq0 = lay.stripes_offset >> 3
        self._count0 = (lay.stripes_offset + L.S_COUNT) >> 2
        self._smask = lay.n_stripes - 1

    # --- removing one entry ------------------------------------------------------------
    def remove_locked(self, stripe: int, pos: int, off: int, counter: int) -> None:
        """Take one entry out: slot first (stripe lock, held by the caller), then block."""
        self.unpublish_locked(stripe, pos, off, counter)
        with self.r.locks.arena_held:
            self.release_locked(off, counter)

    def unpublish_locked(self, stripe: int, pos: int, off: int, counter: int) -> None:
        """Remove the slot at pos (pointing at off) between two seq bumps, and tell event
        readers why (counter: H_DELETES, H_EVICTIONS or H_EXPIRATIONS). Stripe lock."""
        r = self.r
        key_coll = r.u32[(off + L.E_KEY_COLL) >> 2]
        if r.u32[_EVENTS_ON]:
            body = off + L.ENTRY_HEADER_BYTES
            emit_locked(r, stripe, _EVENT_OF[counter], key_coll >> 16,
                        r.mm[body:body + (key_coll & L.KEY_LEN_MASK)])
        seq_at = self._seq0 + stripe * L.STRIPE_Q
        r.q[seq_at + (L.S_CHANGES >> 3)] += 1
        r.q[seq_at] += 1
        r.index.remove_locked(stripe, pos)
        r.u32[self._count0 + stripe * L.STRIPE_U32] -= 1
        r.colls.count_locked(stripe, key_coll >> 16, -1)
        r.q[seq_at + (L.S_PAYLOAD >> 3)] -= self.payload_bytes(off)
        r.q[seq_at] += 1

    def release_locked(self, off: int, counter: int) -> None:
        """Forget an unpublished entry and free its block; counter is the header field that
        says why (H_DELETES, H_EVICTIONS, H_EXPIRATIONS). Arena lock."""
        r = self.r
        r.lru.unlink_locked(off)
        r.q[counter >> 3] += 1
        r.pins.free_or_retire_locked(off)  # freed, unless a view pins it

    def payload_bytes(self, off: int) -> int:
        u32 = self.r.u32
        return (u32[(off + L.E_KEY_COLL) >> 2] & L.KEY_LEN_MASK) + u32[(off + L.E_VALUE_LEN) >> 2]

    def expired(self, off: int, now_ns: int) -> bool:
        exp = self.r.q[(off + L.E_EXPIRES_AT) >> 3]
        return bool(exp) and exp <= now_ns

    def locate(self, off: int) -> tuple[int, int, int, bytes]:
        """(stripe, hash, collection, key) of the entry at off, from its own bytes."""
        r = self.r
        key_coll = r.u32[(off + L.E_KEY_COLL) >> 2]
        klen, coll = key_coll & L.KEY_LEN_MASK, key_coll >> 16
        key = r.mm[off + L.ENTRY_HEADER_BYTES:off + L.ENTRY_HEADER_BYTES + klen]
        h = xxh3_64(key, r.seed ^ coll)
        return h & self._smask, h, coll, key

    # --- making room (arena lock held, and the caller's own stripe lock) ------------------
    def make_room_locked(self, need: int, own_stripe: int, keep: int) -> tuple[int, bool]:
        """Allocate need bytes, evicting until they fit: (offset or 0, whether an entry of
        own_stripe was removed, which moves slots of that stripe). `keep` is never evicted."""
        arena, lru = self.r.arena, self.r.lru
        touched_own = False
        expiry_tried = unpin_tried = False
        while True:
            off = arena.alloc_locked(need)
            if off:
                return off, touched_own
            if not unpin_tried and self.r.pins.retired()[0]:
                # blocks held for views: those of dead processes, and those closed since
                unpin_tried = True
                self.r.pins.reclaim_dead_locked()
                if self.r.pins.sweep_locked():
                    continue
            if not expiry_tried:
                expiry_tried = True
                removed, own = self.expire_sample_locked(EXPIRE_SAMPLE_SLOTS, own_stripe, keep)
                touched_own |= own
                if removed:
                    continue
            victim = self._find_victim_locked(keep, own_stripe)
            if victim < 0:
                return 0, touched_own
            touched_own |= victim == own_stripe

    def _find_victim_locked(self, keep: int, own_stripe: int) -> int:
        """Evict one entry and return its stripe (-1 if nothing could be evicted). First by
        the rules (probation tail; promote what was read since it came in); if every entry
        looked at had been read, as in a workload whose whole set is hot, a second pass
        evicts from the tails regardless: a write must not fail while anything is evictable.
        `keep` (the entry an overwrite replaces) is passed over where it lies, never moved: a
        probation list that holds only it must not hide the protected one."""
        lru = self.r.lru
        now = self.r.clock()
        for honour_reads in (True, False):
            for _ in range(MAX_VICTIM_TRIES):
                off = lru.tail(PROBATION)
                if off and off == keep:  # the entry being overwritten stays; look past it
                    off = lru.prev(keep)
                off = off or lru.tail(PROTECTED)
                if not off:
                    return -1
                expired = self.expired(off, now)
                if honour_reads and lru.accessed(off) and not expired:
                    lru.mark(off, False)
                    lru.move_locked(off, PROTECTED)
                    lru.rebalance_locked()
                    continue
                stripe = self.remove_if_lockable_locked(
                    off, own_stripe, L.H_EXPIRATIONS if expired else L.H_EVICTIONS)
                if stripe >= 0:
                    return stripe
                lru.move_locked(off, PROBATION)  # its stripe is busy: look at it again later
        return -1

    def evict_in_stripe_locked(self, stripe: int, keep: int) -> bool:
        """Free one slot of a full stripe (whose lock the caller holds; arena lock held).

        Sampled, as Redis approximates LRU: among STRIPE_SAMPLE random slots of the stripe,
        evict the entry not read lately with the oldest write (versions rise with each write
        to a stripe; a stored version wraps after 2**32 writes, which costs precision only).
        Walking the lists for an entry of this stripe does not work: evicting the one nearest
        the tail each time leaves the stripe only young entries, far from any tail."""
        r = self.r
        index, mm, u32 = r.index, r.mm, r.u32
        access = index.access0 + stripe * index.per  # the sampled slot's own access byte
        best, best_score = 0, None
        for _ in range(STRIPE_SAMPLE):
            pos = self._rng.randrange(index.per)
            off = index.entry_offset(stripe, pos)
            if off and off != keep:
                score = (mm[access + pos], u32[(off + L.E_VERSION) >> 2])
                if best_score is None or score < best_score:
                    best, best_score = off, score
        if not best:
            return False
        self.remove_if_lockable_locked(best, stripe, L.H_EVICTIONS)
        return True

    def remove_if_lockable_locked(self, off: int, own_stripe: int, counter: int,
                                  expired_at_ns: int = 0) -> int:
        """Take the entry at off out of the region if its stripe lock is ours or free (and,
        with expired_at_ns, only if it is still expired then: a writer may have just given it a
        new TTL); returns the stripe, or -1 if it was left."""
        stripe, h, coll, key = self.locate(off)
        locks = self.r.locks
        if stripe != own_stripe and not locks.try_acquire_stripe(stripe):
            return -1
        try:
            if expired_at_ns and not self.expired(off, expired_at_ns):
                return -1
            pos, found = self.r.index.find_locked(stripe, h, key, coll)
            if found == off:
                self.unpublish_locked(stripe, pos, off, counter)
            self.release_locked(off, counter)  # unreachable already if found != off: a leak
        finally:
            if stripe != own_stripe:
                locks.release_stripe(stripe)
        return stripe

    # --- expiry -----------------------------------------------------------------------
    def expire_sample_locked(self, max_slots: int, own_stripe: int, keep: int) -> tuple[int, bool]:
        """Remove expired entries among the next max_slots slots after the expiry cursor
        (arena lock held; stripes tried, never waited for). (removed, touched own stripe)."""
        r = self.r
        index = r.index
        total = index.per * (self._smask + 1)
        cursor = r.q[L.H_EXPIRE_CURSOR >> 3] % total
        now = r.clock()
        removed, touched_own = 0, False
        left = max_slots  # slot visits: a slot looked at again after a removal counts twice
        while left > 0:
            stripe, pos = divmod(cursor, index.per)
            n = min(left, index.per - pos)  # the rest of this stripe's run
            left -= n
            cursor = (cursor + n) % total
            for at, off in index.occupied(stripe, pos, n):
                if off != keep and self.expired(off, now) and \
                        self.remove_if_lockable_locked(off, own_stripe, L.H_EXPIRATIONS, now) >= 0:
                    removed += 1
                    touched_own |= stripe == own_stripe
                    # the backward shift may refill the slot, and moves the ones after it:
                    # go on from the slot itself, with the visits after it not yet made
                    left += pos + n - at - 1
                    cursor = stripe * index.per + at
                    break
        r.q[L.H_EXPIRE_CURSOR >> 3] = cursor
        return removed, touched_own
