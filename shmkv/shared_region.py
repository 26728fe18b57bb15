"""`SharedRegion`: what every handle on one mapped region shares in a process: the mapping,
its typed views, the locks and the structures over them (index, arena, collections, lists,
eviction, pins). Policy-free: the Cache API (cache.py) and the read and write paths decide what
to do with it; the structures' modules take it as their argument and never import the API.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import layout as L
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
                self.u32[L.H_SEM_KEY >> 2], self.u32, layout, lock_timeout_s,
                on_dead_stripe_holder=lambda stripe: repair_stripe_locked(self, stripe),
                on_dead_arena_holder=lambda: repair_arena_locked(self),
            )
        except BaseException:  # the caller closes the mapping, which needs our views gone
            self.q.release()
            self.u32.release()
            self.ro.release()
            self.mv.release()
            raise
        self.index = Index(self.mm, self.q, self.u32, layout)
        self.arena = Arena(self.q, self.u32, layout)
        self.colls = CollectionTable(self.mm, self.u32, layout)
        self.lru = Segments(self.mm, self.q, self.u32, layout)
        self.evictor = Evictor(self)
        self.pins = PinTable(self)
        self.lingering: list[ValueView] = []  # closed views whose bytes are still referenced
        self.handles: weakref.WeakSet[Any] = weakref.WeakSet()  # the Cache handles on it
        self.closed = False

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

    def finish_close(self) -> None:
        self.pins.release()
        self.index = self.arena = self.colls = self.lru = self.evictor = None  # type: ignore
        self.q.release()
        self.u32.release()
        self.ro.release()
        self.mv.release()
        self.locks.close()
        self.mapping.close()
