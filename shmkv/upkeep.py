"""The region-wide operations of a `Cache` handle: background maintenance, repair, flushing
to the disk, stats, snapshots and the collections. A mixin of Cache (cache.py), apart so that the key API reads
in one sitting; it uses the handle's region, locks and reader as Cache sets them up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import backend, snapshot
from . import layout as L
from .events import enabled as events_enabled
from .events import refresh_locked as refresh_events_locked
from .events import want as want_events
from .namespaces import check_collection_name
from .repair import repair_all_locked
from .stats import region_stats

if TYPE_CHECKING:
    from .locks import RegionLocks
    from .shared_region import SharedRegion
    from .writer import Writer

# index slots one arena-lock section of maintain() looks at: read with numpy
# (Index.occupied), 256 of them hold the lock ~5 us plus the removals they make
MAINTAIN_CHUNK_SLOTS = 256


class Upkeep:
    """maintain, flush, repair, stats, snapshot, restore, collection(s), rename_collection,
    drop_collection, enable_events, events_enabled: see each method."""

    # set by Cache.__init__
    _region: SharedRegion
    _locks: RegionLocks
    _q: memoryview
    _reader: Any
    _smask: int
    collection_name: str

    _w: Writer
    _events_hold: Any

    if TYPE_CHECKING:  # Cache's
        def _fenced(self) -> bool: ...
        def _check_fence(self) -> None: ...
        def __len__(self) -> int: ...

    def maintain(self, max_slots: int = 4096) -> dict[str, int]:
        """One pass of background work, for a node's maintenance loop (writers do a little of
        it as they go): remove expired entries among the next max_slots index slots (keys
        nobody reads again are reclaimed too, as Redis' active expiry does), bring the protected
        segment back under its share, and add this handle's hit/miss counts to the region's.
        Works in short arena-lock sections so that writers are never held up for long."""
        self._q[0]
        if isinstance(max_slots, bool) or not isinstance(max_slots, int) or max_slots < 1:
            raise ValueError("max_slots must be a positive int")
        max_slots = min(max_slots, self._region.layout.index_slots)  # one sweep at most
        evictor, removed = self._region.evictor, 0
        # a fenced region (a replica) expires nothing itself: its primary's deletes arrive
        for _ in range(0, 0 if self._fenced() else max_slots, MAINTAIN_CHUNK_SLOTS):
            with self._locks.arena_held:
                removed += evictor.expire_sample_locked(MAINTAIN_CHUNK_SLOTS, -1, 0)[0]
        self._region.release_lingering()
        with self._locks.arena_held:
            self._region.lru.rebalance_locked()
            self._flush_counts_locked()
            refresh_events_locked(self._region)  # a holder that died wants no events
            # views: drop the pins of processes that died, free what no view pins any more
            self._region.pins.reclaim_dead_locked()
            unpinned_bytes = self._region.pins.sweep_locked()
        return {"expired": removed, "slots_scanned": max_slots, "unpinned_bytes": unpinned_bytes}

    def flush(self) -> None:
        """Write every change to the region's file and wait for the disk (fsync), so that a
        power loss from now on cannot take it: what `shmkv serve --flush-interval-s` runs. A
        /dev/shm region has no disk behind it; there it costs nothing and keeps nothing."""
        self._q[0]  # raises CacheClosed on a closed handle
        self._region.flush()

    def repair(self) -> dict[str, int]:
        """Check and repair the whole region (what `shmkv doctor --repair` runs): take every
        lock in order, which also repairs after any holder that died, then free blocks no
        slot points to, rebuild the allocator and lists, and recount every counter. Writers
        wait meanwhile; readers go on."""
        self._q[0]
        locks, n = self._locks, self._smask + 1
        taken = 0
        try:
            for stripe in range(n):
                locks.acquire_stripe(stripe)
                taken += 1
            with locks.arena_held:
                return repair_all_locked(self._region)
        finally:
            for stripe in range(taken):
                locks.release_stripe(stripe)

    def _flush_counts_locked(self) -> None:
        """Add this handle's hits and misses to the region's counters (arena lock)."""
        hits, misses = self._reader.take_counts()
        self._q[L.H_HITS >> 3] += hits
        self._q[L.H_MISSES >> 3] += misses

    # --- stats --------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters and sizes of the region, plus this handle's collection. Hits and misses
        are counted by each handle and reach the region when it inserts, runs maintain(),
        asks for stats or closes."""
        self._q[0]
        with self._locks.arena_held:
            self._flush_counts_locked()
            retired = self._region.pins.retired()
        return region_stats(self._region, retired, backend.engine_of(self._reader),
                            self.collection_name, len(self))

    # --- snapshots (snapshot.py) ------------------------------------------------------------
    def snapshot(self, path: str, *, progress: Callable[[int, int], None] | None = None) \
            -> dict[str, Any]:
        """Write every collection of the region to the file at path, atomically, while writers
        go on: every key nobody writes meanwhile is in it, each key consistent on its own (not
        one moment for all). `progress(done, total)` is called as records are written.
        Returns {keys, bytes, collections, path, elapsed_s, ...}."""
        self._q[0]
        return snapshot.write(self, path, progress)

    def restore(self, path: str, replace: bool = False, *,
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Load a snapshot into the region (every collection, created as needed). The whole
        file is checked first: a damaged one raises CorruptSnapshot and changes nothing.
        Expiry is absolute: what expired since the snapshot is skipped. replace=True clears
        every collection first; else keys only in the region stay. Returns {keys,
        skipped_expired, bytes, ...}."""
        self._q[0]
        return snapshot.restore(self, path, replace, progress)

    @staticmethod
    def sizes_for_snapshot(path: str) -> dict[str, int]:
        """create() arguments for a region that can hold the snapshot at path:
        `Cache.create(name, **Cache.sizes_for_snapshot(path))`."""
        return snapshot.region_sizes(path)

    # --- collections --------------------------------------------------------------------
    def collection(self, name: str) -> Any:
        """A handle on the named collection, created if it does not exist. Its keys are
        isolated from the keys of every other collection (and of the default one)."""
        raw = check_collection_name(name)
        region = self._region
        self._q[0]
        with self._locks.arena_held:
            found = region.colls.find(raw)
            if found is None:
                self._check_fence()  # making one is a write
                found = region.colls.create_locked(raw)
        return type(self)(region, found[0], found[1], name, owns_region=False)

    def collections(self) -> list[str]:
        """Names of the named collections (the default collection is not listed)."""
        self._q[0]
        return sorted(name.decode() for _, _, name in self._region.colls.live())

    def rename_collection(self, old: str, new: str) -> None:
        """Rename a collection; open handles on it keep working."""
        raw_old, raw_new = check_collection_name(old), check_collection_name(new)
        self._check_fence()
        with self._locks.arena_held:
            self._region.colls.rename_locked(raw_old, raw_new)

    def drop_collection(self, name: str) -> int:
        """Delete a collection and all its keys; returns how many keys it held. Handles on it
        raise CollectionNotFound on their next write."""
        raw = check_collection_name(name)
        self._check_fence()
        with self._locks.arena_held:
            idx = self._region.colls.begin_drop_locked(raw)
        removed = self._w.delete_collection_entries(idx)
        with self._locks.arena_held:
            self._region.colls.end_drop_locked(idx)
        return removed

    # --- keyspace events (events.py) ----------------------------------------------------
    def enable_events(self, on: bool) -> None:
        """Say whether this handle wants keyspace events (set, del, expired, evicted). Every
        writer of the region records them while any live handle wants them (closing the
        handle, or its process dying, counts as not wanting); off, a writer pays one flag
        read. The node wants them while it runs."""
        self._q[0]
        self._events_hold = want_events(self._region, self._events_hold, bool(on))

    @property
    def events_enabled(self) -> bool:
        self._q[0]
        return events_enabled(self._region)
