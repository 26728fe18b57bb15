"""`SharedRegion`: what every handle on one mapped region shares in a process: the mapping,
its typed views, the locks and the structures over them (index, arena, collections, lists,
eviction, pins), and how a region comes to be (create) or is joined (attach). Policy-free: the
Cache API (cache.py) and the read and write paths decide what to do with it; the structures'
modules take it as their argument and never import the API.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import holders
from . import layout as L
from . import recovery
from . import region as R
from .arena import Arena
from .evict import Evictor
from .index import Index
from .locks import RegionLocks
from .lru import Segments
from .namespaces import CollectionTable
from .pins import PinTable
from .repair import repair_arena_locked, repair_stripe_locked

if TYPE_CHECKING:
    from .views import ValueView

Clock = Callable[[], int]


class SharedRegion:
    """What every handle on one mapped region shares: the mapping, the views, the locks."""

    def __init__(self, mapping: R.Mapping, layout: L.Layout, seed: int, lock_timeout_s: float,
                 clock: Clock) -> None:
        self.name = mapping.name
        self.mapping = mapping
        self.mm = mapping.mm
        self.layout = layout
        self.seed = seed
        self.clock = clock
        self.mv = memoryview(self.mm)
        self.ro = self.mv.toreadonly()  # what views are made of: read-only from the start
        self.q = self.mv.cast("Q")
        self.u32 = self.mv.cast("I")
        try:
            self.locks = RegionLocks(
                self.mm, mapping.fd, self.u32, layout, lock_timeout_s,
                on_dead_stripe_holder=lambda stripe: repair_stripe_locked(self, stripe),
                on_dead_arena_holder=lambda: repair_arena_locked(self),
            )
        except BaseException:  # the caller closes the mapping, which needs our views gone
            self.q.release()
            self.u32.release()
            self.ro.release()
            self.mv.release()
            raise
        self.index = Index(self.mm, self.q, self.u32, layout, seed)
        self.arena = Arena(self.q, self.u32, layout)
        self.colls = CollectionTable(self.mm, self.u32, layout)
        self.lru = Segments(self.mm, self.q, self.u32, layout, self.index)
        self.evictor = Evictor(self)
        self.pins = PinTable(self)
        self.lingering: list[ValueView] = []  # closed views whose bytes are still referenced
        self.handles: weakref.WeakSet[Any] = weakref.WeakSet()  # the Cache handles on it
        self.closed = False
        self.recovery: dict[str, int] | None = None  # what recovery.recover found at open
        self.pid = os.getpid()  # the process that mapped it; a forked child is another
        self.child_fd = -1  # in a forked child: its own HOLDERS description (holders.py)
        _MAPPED.add(self)

    @classmethod
    def create(cls, name: str, layout: L.Layout, protected_pct: int, mode: int,
               lock_timeout_s: float, clock: Clock, seed: int | None = None) -> SharedRegion:
        """Make a new region object and initialise it. The header's magic goes in last and
        its creator holds the region's INIT lock throughout (holders.py): openers wait until
        it is whole. RegionExists if the name is taken; a failure leaves nothing behind.
        seed: the hash seed, random unless given (a replica takes its primary's, so that
        keys fall in the same stripes and versions compare)."""
        mapping = R.create_mapping(name, layout.region_bytes, mode)
        try:
            if seed is None:
                seed = int.from_bytes(os.urandom(8), "little")
            mm = mapping.mm
            st = os.fstat(mapping.fd)
            head = L.pack_header(layout, seed, time.time_ns(),
                                 region_id=int.from_bytes(os.urandom(8), "little"),
                                 file_id=(st.st_dev, st.st_ino))
            mm[0:len(head)] = head
            holders.attach(mapping.fd, lock_timeout_s)  # a new object: we are alone
            RegionLocks.init_all(mm, layout)
            region = cls(mapping, layout, seed, lock_timeout_s, clock)
            region.arena.init_locked()
            region.colls.init_default_locked()
            region.u32[L.H_PROTECTED_PCT >> 2] = protected_pct
            region.q[L.H_BOOT_ID >> 3] = recovery.boot_id()
            region.u32[L.H_STATE >> 2] = L.STATE_READY
            mm[0:8] = L.MAGIC  # last: until now, openers wait
            holders.attached(mapping.fd)
        except BaseException:
            mapping.close()
            R.remove_object(name)
            raise
        return region

    @classmethod
    def attach(cls, name: str, lock_timeout_s: float, clock: Clock,
               owner: R.Owner = None) -> SharedRegion:
        """Map an existing region. The first process to open a region that nobody has open
        (after a reboot, or after every process using it died) re-initialises its locks,
        which may have been left held by processes the kernel never saw die (holders.py);
        what their holders left half done is repaired by the next holder of each lock
        (locks.py)."""
        mapping = R.open_mapping(name, owner)  # owner: who besides us may own it (region.py)
        try:
            layout, seed = L.unpack_header(mapping.mm, len(mapping.mm))
            first = holders.attach(mapping.fd, lock_timeout_s)
            if first:
                RegionLocks.init_all(mapping.mm, layout)
            region = cls(mapping, layout, seed, lock_timeout_s, clock)
        except BaseException:
            mapping.close()
            raise
        if first:
            try:
                region.recovery = recovery.first_open(region)
            except BaseException:
                region.closed = True
                region.finish_close(mark_clean=False)
                raise
            holders.attached(mapping.fd)
        return region

    def release_lingering(self) -> None:
        if self.lingering:
            self.lingering = [view for view in self.lingering if not view.try_unpin()]

    def close(self) -> None:
        """Detach every handle. The mapping and the locks go once no view pins anything any
        more: a view that outlives its handle stays valid (views.py)."""
        if self.closed:
            return
        self.closed = True
        for handle in list(self.handles):
            handle._detach()
        self.release_lingering()
        if not self.pins.open_pins:
            self.finish_close()

    def flush(self) -> None:
        """Write the region's changed pages to its file and wait for the disk."""
        recovery.flush(self)

    def finish_close(self, mark_clean: bool = True) -> None:
        """Unmap; the last handle on the region anywhere flushes it and marks it clean. Once:
        the last view to go may get here first, from inside close()."""
        if self.mapping.mm.closed:
            return
        self.pins.release()
        # Only the process that mapped the region marks it clean: a forked child shares its
        # parent's description, and so its parent's view of who else has the region open.
        if mark_clean and self.pid == os.getpid():
            recovery.close_cleanly(self)
        if self.child_fd >= 0:
            os.close(self.child_fd)
            self.child_fd = -1
        self.index = self.arena = self.colls = self.lru = self.evictor = None  # type: ignore
        self.q.release()
        self.u32.release()
        self.ro.release()
        self.mv.release()
        self.locks.close()
        self.mapping.close()


_MAPPED: weakref.WeakSet[SharedRegion] = weakref.WeakSet()  # every region mapped here


def _after_fork_in_child() -> None:
    """A forked child has its parent's mappings and descriptors: register it as a holder of
    each still-open region through a description of its own (holders.hold_in_child), so that
    the parent's last close does not take the region for closed while the child uses it."""
    for region in list(_MAPPED):
        if not region.closed and region.child_fd < 0:
            region.child_fd = holders.hold_in_child(region.mapping.fd)


os.register_at_fork(after_in_child=_after_fork_in_child)
