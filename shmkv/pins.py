"""Pins: what keeps the bytes of an open view unchanged, and gives them back afterwards.

A view (views.py) pins its entry's block: the process writes the block's ref into its own
process record (layout.py) and marks the entry KIND_PINNED, both under the entry's stripe lock.
From then on no writer reuses the block. An overwrite of a KIND_PINNED entry is never done in
place: the new value goes to a new block (copy-on-write). And a block that leaves the index
(overwrite, delete, eviction, expiry) while any process pins it is *retired* instead of freed:
it goes on the retired list and is freed by the first sweep that finds no pin on it. Sweeps run
when a view of a retired block closes, in maintain(), and when a writer finds no room.

Why the stripe lock to pin: a writer must see the pin before it decides that a block is free,
and Python has no memory fences. A reader storing its pin and then re-checking the entry, and a
writer unpublishing the entry and then scanning pins, could each miss the other's store (x86
lets a load pass an earlier store). The lock hand-off orders them. The compiled pin
(shmkv/_core_src/pin.c) takes the same lock: an uncontended pair costs ~14 ns in C, and a
lock-free pin would need a full fence on the writer side too, which these writers cannot issue.
Unpinning needs no lock: a pin cleared late only delays the sweep that frees the block, it can
never free a block early.
Pinned-ever (KIND_PINNED) keeps the cost off writers that never meet a view: only for such an
entry does a writer scan the table of pins.

Liveness without pids: a process claims a record by taking the record's own OFD lock on the
region's file (holders.py), and holds it while it has the region open. However the process dies,
the kernel drops the lock, so "does anyone else hold it?" is an exact test of "is the owner
alive?", which a pid never is (pids are reused, and mean nothing across pid namespaces).
Records of dead owners are reclaimed, their pins dropped, by maintain() (the node runs it every
100 ms) and by a writer that finds no room; the pid in a record is for people reading
`shmkv doctor`, and for the compiled pin, which takes a slot from _free only while the slot's
record shows its own pid (a forked child's _free is its parent's: Python claims the child's).

All functions named *_locked need the arena lock; pin_locked needs the entry's stripe lock.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from . import layout as L
from .errors import TooManyViews

if TYPE_CHECKING:
    from .shared_region import SharedRegion

_RETIRED_HEAD = L.H_RETIRED_HEAD >> 2
_RETIRED_COUNT = L.H_RETIRED_COUNT >> 2
_RETIRED_BYTES = L.H_RETIRED_BYTES >> 3


class PinTable:
    """This process's view of the region's process records (one per mapped region)."""

    def __init__(self, region: SharedRegion) -> None:
        self.r = region
        lay = region.layout
        self._rec0 = lay.procs_offset
        self._max = lay.max_procs
        self.record = -1  # our record, claimed at the first pin
        self._pid = 0  # the process that claimed it (a forked child must claim its own)
        # u32 indexes of our unused pin slots. The compiled engine's views (pin.c) pop from and
        # append to this very list: it is only ever changed in place.
        self._free: list[int] = []

    # --- records -----------------------------------------------------------------------
    def _owner_at(self, rec: int) -> int:
        return (self._rec0 + rec * L.PROC_BYTES + L.P_OWNER_PID) >> 2

    def _pins_at(self, rec: int) -> int:
        return (self._rec0 + rec * L.PROC_BYTES + L.P_PINS) >> 2

    def _claim_locked(self) -> None:
        u32, locks = self.r.u32, self.r.locks
        for attempt in range(2):
            for rec in range(self._max):
                if not u32[self._owner_at(rec)] and locks.try_hold_record(rec):
                    first = self._pins_at(rec)
                    self._clear(first)
                    u32[self._owner_at(rec)] = os.getpid()
                    self.r.q[(self._rec0 + rec * L.PROC_BYTES + L.P_CLAIMED_AT) >> 3] = \
                        self.r.clock()
                    self.record, self._pid = rec, os.getpid()
                    self._free[:] = range(first + L.PINS_PER_PROC - 1, first - 1, -1)
                    return
            if not attempt and not self.reclaim_dead_locked():
                break
        raise TooManyViews(f"all {self._max} process records of this region are held by live "
                           "processes with views open; close views in other processes, or "
                           "create the region with a larger max_procs")

    def _clear(self, first: int) -> None:
        u32 = self.r.u32
        for i in range(first, first + L.PINS_PER_PROC):
            u32[i] = 0

    def release(self) -> None:
        """Give our record back (the region handle is closing). Pins still held by views
        that outlive the handle keep the record: the kernel frees it when we exit."""
        if self.record < 0 or self._pid != os.getpid() or len(self._free) < L.PINS_PER_PROC:
            return
        with self.r.locks.arena_held:
            self.r.u32[self._owner_at(self.record)] = 0
            self.r.locks.release_record(self.record)
            self.record = -1
            self._free.clear()

    def reclaim_dead_locked(self) -> int:
        """Drop the pins of processes that died with views open (sweep_locked then frees what
        they held); returns how many records were freed. Bounded: one non-blocking lock
        operation per claimed record."""
        u32, locks = self.r.u32, self.r.locks
        freed = 0
        for rec in range(self._max):
            if rec == self.record and self._pid == os.getpid():
                continue
            if u32[self._owner_at(rec)] and not locks.record_owner_alive(rec):
                self._clear(self._pins_at(rec))
                u32[self._owner_at(rec)] = 0
                freed += 1
        return freed

    def records(self) -> list[dict[str, object]]:
        """The claimed records, for `shmkv doctor`: owner pid (as recorded), pins held, and
        whether the owner is alive (it holds the record's lock)."""
        u32, locks = self.r.u32, self.r.locks
        out: list[dict[str, object]] = []
        for rec in range(self._max):
            pid = u32[self._owner_at(rec)]
            if not pid:
                continue
            first = self._pins_at(rec)
            pins = sum(1 for i in range(first, first + L.PINS_PER_PROC) if u32[i])
            mine = rec == self.record and self._pid == os.getpid()
            alive = mine or locks.record_owner_alive(rec)
            out.append({"record": rec, "pid": pid, "pins": pins, "owner_alive": alive})
        return out

    # --- pinning (by the view's process) ----------------------------------------------
    def pin_locked(self, off: int) -> int:
        """Pin the published entry at off (its stripe lock held); returns the pin's handle
        for unpin()."""
        if self._pid != os.getpid():  # first pin, or a child forked from the claimer
            self.record = -1
            self._free.clear()
            with self.r.locks.arena_held:
                self._claim_locked()
        if not self._free:
            raise TooManyViews(f"this process has {L.PINS_PER_PROC} views of the region open;"
                               " close some first")
        at = self._free.pop()
        self.r.u32[at] = (off - self.r.arena.base) >> 3
        self.r.mm[off + L.E_KIND] |= L.KIND_PINNED
        return at

    def unpin(self, at: int, off: int) -> None:
        """Drop a pin taken by pin_locked; frees the block if it was retired meanwhile."""
        self.r.u32[at] = 0
        self._free.append(at)
        self.after_unpin(off)

    def after_unpin(self, off: int) -> None:
        """What follows the drop of a pin of the entry at off (by unpin, or by the compiled
        view, which calls it only when the entry is retired or its handle closed): free the
        block if it was retired meanwhile; close the region if this was its last view."""
        if self.r.u32[off >> 2] & L.SEG_BITS == L.SEG_RETIRED_WORD:
            with self.r.locks.arena_held:
                self.sweep_locked()
        if self.r.closed and not self.open_pins:  # the last view of a closed handle
            self.r.finish_close()

    @property
    def open_pins(self) -> int:
        return L.PINS_PER_PROC - len(self._free) if self.record >= 0 else 0

    # --- retiring (by writers) ----------------------------------------------------------
    def pinned_refs(self) -> set[int]:
        """Every block ref pinned by any process, dead or alive."""
        lay = self.r.layout
        table = np.frombuffer(self.r.mm, np.uint32, lay.max_procs * L.PROC_BYTES // 4,
                              lay.procs_offset).reshape(lay.max_procs, -1)[:, L.P_PINS // 4:]
        refs = set(table[table != 0].tolist())
        del table  # the mapping cannot be closed while an array over it lives
        return refs

    def free_or_retire_locked(self, off: int) -> None:
        """Free the block of an entry that has left the index, unless a view pins it."""
        r = self.r
        if r.mm[off + L.E_KIND] & L.KIND_PINNED and r.arena.ref(off) in self.pinned_refs():
            self._push_retired_locked(off)
        else:
            r.arena.free_locked(off)

    def _push_retired_locked(self, off: int) -> None:
        r = self.r
        r.u32[(off + L.E_LRU_NEXT) >> 2] = r.u32[_RETIRED_HEAD]
        r.lru.set_segment_locked(off, L.SEG_RETIRED)
        r.u32[_RETIRED_HEAD] = r.arena.ref(off)
        r.u32[_RETIRED_COUNT] += 1
        r.q[_RETIRED_BYTES] += r.u32[off >> 2] & L.SIZE_MASK

    def sweep_locked(self) -> int:
        """Free every retired block that no process pins any more; returns bytes freed."""
        r = self.r
        u32, arena = r.u32, r.arena
        ref = u32[_RETIRED_HEAD]
        if not ref:
            return 0
        pinned = self.pinned_refs()
        kept: list[int] = []
        freed_bytes = 0
        while ref:
            off = arena.off(ref)
            ref = u32[(off + L.E_LRU_NEXT) >> 2]
            if arena.ref(off) in pinned:
                kept.append(off)
            else:
                freed_bytes += u32[off >> 2] & L.SIZE_MASK
                r.lru.set_segment_locked(off, L.SEG_NONE)
                arena.free_locked(off)
        self.rebuild_retired_locked(kept)
        return freed_bytes

    def rebuild_retired_locked(self, offs: list[int]) -> None:
        """Make the retired list hold exactly offs (also used by repair)."""
        r = self.r
        r.u32[_RETIRED_HEAD] = r.u32[_RETIRED_COUNT] = 0
        r.q[_RETIRED_BYTES] = 0
        for off in reversed(offs):
            self._push_retired_locked(off)

    def retired(self) -> tuple[int, int]:
        """(blocks, bytes) held on the retired list, for stats."""
        return self.r.u32[_RETIRED_COUNT], self.r.q[_RETIRED_BYTES]
