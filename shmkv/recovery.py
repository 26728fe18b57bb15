"""What a region's file holds after each kind of stop, and how the first opener recovers it.

A region is a MAP_SHARED mapping of a file (or a /dev/shm object). What every kind of stop
leaves in it:

  * Every process closed its handle (Cache.close, a node stopping on SIGTERM): the last one to
    close flushes the mapping to the file (fsync) and then writes the clean marker. The file is
    whole; the next opener uses it as it is.
  * Processes died (SIGKILL, the OOM killer, a crash) and the kernel did not: the page cache
    holds exactly what they left, whatever reached the disk. The first opener re-initialises
    the locks (holders.py, locks.py) and the next holder of each lock repairs what its dead
    holder left (repair.py). Nothing acknowledged is lost.
  * The kernel stopped (power loss, kernel crash, a reboot without stopping the processes) or
    the file was copied while in use (cp, a backup tool, a VM snapshot): pages reached the file
    in any order, so nothing that spans pages can be trusted: an index page may be newer than
    the entries it points to, a block word older than its neighbours. The first opener finds no
    clean marker and either another kernel boot or another file (a copy: other st_dev/st_ino
    than those recorded at creation), and rebuilds the region from its arena (`recover`).
    What it loses is bounded by how often the mapping is flushed: the node flushes it every
    --flush-interval-s (1 s by default); see the README's "Persistence" section.

The clean marker (header field clean_marker) is a checksum of the region's identity, so that
neither zeros nor garbage pass for it. The first opener zeroes it and flushes that to the file
before anything else changes: a file that is being changed never carries a marker.

Recovery trusts nothing but entries that validate one by one. It walks the arena by block
words, keeps every used block that holds a whole entry (sane header, live collection, published
into a slot at some point, checksum of key and value), steps over free blocks whose footer
agrees with their size, and where neither holds (a torn block word) moves on by ALIGN bytes
until something validates again. A key found more than once keeps its newest version (a block
freed after an overwrite may still look used). Then every structure is rebuilt from the kept
entries: index slots, item counts, stripe counters, allocator, segment lists; process records
are cleared (no process survives a reboot) and retired blocks freed (they were held for views).
Entries already expired are dropped. So after recovery every value read is one that its key
was given; a key deleted or overwritten shortly before the stop may come back at an older
value, as an fsync'd database's last seconds may.
"""

from __future__ import annotations

import os
import re
import struct
from typing import TYPE_CHECKING

from . import holders
from . import layout as L
from .hashing import xxh3_64
from .repair import entry_is_sound, rebuild_allocator_locked

if TYPE_CHECKING:
    from .shared_region import SharedRegion

_MARKER = struct.Struct("<8sQQQQI")
_MARKER_TAG = b"shmkv-ok"
_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
_NONZERO = re.compile(rb"[^\x00]")


def boot_id() -> int:
    """64 bits of this kernel boot's random id (0 if the kernel does not say)."""
    try:
        with open(_BOOT_ID_PATH) as f:
            return int(f.read().strip().replace("-", ""), 16) & (2**64 - 1)
    except (OSError, ValueError):
        return 0


def clean_marker(region: SharedRegion) -> int:
    """The marker value for the region as its header describes it (never 0)."""
    q, u32 = region.q, region.u32
    data = _MARKER.pack(_MARKER_TAG, q[L.H_REGION_ID >> 3], q[L.H_FILE_DEV >> 3],
                        q[L.H_FILE_INO >> 3], region.layout.region_bytes,
                        u32[L.H_LOCK_GENERATION >> 2])
    return xxh3_64(data, region.seed) | 1


def flush(region: SharedRegion) -> None:
    """Write the mapping's changed pages to the file and wait for the disk (fsync: for a
    MAP_SHARED file mapping, msync and fsync do the same work on Linux; fsync releases the
    GIL)."""
    os.fsync(region.mapping.fd)


def first_open(region: SharedRegion) -> dict[str, int] | None:
    """Called by the first opener of a region that nobody has open, before anybody else can
    attach: recover the region if the file may be torn, and claim it for this boot and this
    file. Returns recover()'s report if it ran."""
    q, u32 = region.q, region.u32
    st = os.fstat(region.mapping.fd)
    copied = (q[L.H_FILE_DEV >> 3], q[L.H_FILE_INO >> 3]) != (st.st_dev, st.st_ino)
    clean = q[L.H_CLEAN_MARKER >> 3] == clean_marker(region)
    this_boot = boot_id()
    torn = not clean and (copied or not this_boot or q[L.H_BOOT_ID >> 3] != this_boot)
    if clean:
        q[L.H_CLEAN_MARKER >> 3] = 0
        flush(region)  # on disk before the first change: a changing file has no marker
    report = recover(region) if torn else None
    if copied:  # a region of its own from now on: its contents will differ from the original's
        q[L.H_FILE_DEV >> 3], q[L.H_FILE_INO >> 3] = st.st_dev, st.st_ino
        q[L.H_REGION_ID >> 3] = int.from_bytes(os.urandom(8), "little")
    # Recorded last: a recovery cut short by a crash must run again at the next open.
    q[L.H_BOOT_ID >> 3] = this_boot
    u32[L.H_LOCK_GENERATION >> 2] = (u32[L.H_LOCK_GENERATION >> 2] + 1) & 0xFFFFFFFF
    if report is not None or copied:
        flush(region)
    return report


def close_cleanly(region: SharedRegion) -> bool:
    """Called as a handle's mapping is about to close: if it is the last handle on the region
    anywhere, flush the region to its file and mark it clean. True if it did. A flush that
    fails (a disk error) leaves the region unmarked, which is safe (an opener in another boot
    recovers it); closing must go on and give back the mapping, so it is not raised."""
    fd = region.mapping.fd
    if not holders.try_last(fd):
        return False
    try:
        flush(region)
        region.q[L.H_CLEAN_MARKER >> 3] = clean_marker(region)
        flush(region)
    except OSError:
        region.q[L.H_CLEAN_MARKER >> 3] = 0
        return False
    finally:
        holders.release_last(fd)
    return True


def recover(region: SharedRegion) -> dict[str, int]:
    """Rebuild every structure of a region from the entries of its arena that validate (see
    the module docstring). Only for a region that nobody else has open. Returns what it found:
    entries kept, stale copies and expired entries dropped, bytes skipped as torn."""
    colls = region.colls
    colls.reset_damaged_locked()
    live = set()
    for idx in range(colls.max):  # a drop cut short is finished: its entries go below
        _, state, _ = colls.read(idx)
        if state == L.COLL_LIVE:
            live.add(idx)
        elif state != L.COLL_FREE:
            colls.end_drop_locked(idx)
    newest, stats = _scan(region, live)
    kept = _fill_index(region, newest)
    used = sorted(kept)
    free_runs = []
    u32 = region.u32
    start, before = region.arena.first_block, 0
    for off in used:
        if off > start:
            _add_gap(u32, free_runs, before, start, off - start)
        start, before = off + (u32[off >> 2] & L.SIZE_MASK), off
    if start < region.arena.end:
        _add_gap(u32, free_runs, before, start, region.arena.end - start)
    _clear_process_state(region)
    rebuild_allocator_locked(region, used, free_runs)
    stats["entries"] = len(used)
    stats["dropped_full"] = len(newest) - len(used)
    return stats


def _scan(region: SharedRegion, live: set[int]) -> tuple[dict[bytes, int], dict[str, int]]:
    """Walk the arena: {collection+key: offset of its newest whole entry}, and counts."""
    u32, q, mm = region.u32, region.q, region.mm
    arena = region.arena
    now = region.clock()
    newest: dict[bytes, int] = {}
    stats = {"stale_copies": 0, "expired": 0, "torn_bytes": 0}
    off, end = arena.first_block, arena.end
    while off < end:
        word = u32[off >> 2]
        size = word & L.SIZE_MASK
        if not word & L.FREE_BIT and _whole_entry(region, off, live):
            exp = q[(off + L.E_EXPIRES_AT) >> 3]
            key_coll = u32[(off + L.E_KEY_COLL) >> 2] & L.KEY_COLL_MASK
            ident = key_coll.to_bytes(4, "little") + bytes(
                mm[off + L.ENTRY_HEADER_BYTES:
                   off + L.ENTRY_HEADER_BYTES + (key_coll & L.KEY_LEN_MASK)])
            if ident in newest:
                stats["stale_copies"] += 1
                if L.newer_version(u32[(off + L.E_VERSION) >> 2],
                                   u32[(newest[ident] + L.E_VERSION) >> 2]):
                    newest[ident] = off
            else:
                newest[ident] = off
            off += size
        elif word & L.FREE_BIT and L.MIN_BLOCK_BYTES <= size <= end - off \
                and u32[(off + size - 4) >> 2] == size:
            off += size
        else:  # torn: look for the next block, skipping zeros (pages never written) at once
            found = _NONZERO.search(mm, off + L.ALIGN, end)
            step = (found.start() - off) & ~(L.ALIGN - 1) if found else end - off
            stats["torn_bytes"] += step
            off += step
    for ident, off in list(newest.items()):  # only the newest copy says whether it expired
        exp = q[(off + L.E_EXPIRES_AT) >> 3]
        if exp and exp <= now:
            del newest[ident]
            stats["expired"] += 1
    return newest, stats


def _add_gap(u32: memoryview, free_runs: list[tuple[int, int]], before: int, start: int,
             size: int) -> None:
    """Space between kept entries becomes a free run, unless it is smaller than any block: in a
    file whose pages come from different moments (a copy taken while a writer ran, a power
    loss), an entry can end a few words before the next kept one begins, where blocks were
    split differently. Such a sliver goes to the entry before it, as padding (its block grows;
    the entry's bytes are unchanged). Before the first entry there is none: left as a run."""
    if size < L.MIN_BLOCK_BYTES and before:
        word = u32[before >> 2]
        u32[before >> 2] = word & ~L.SIZE_MASK & 0xFFFFFFFF | ((word & L.SIZE_MASK) + size)
    else:
        free_runs.append((start, size))


def _whole_entry(region: SharedRegion, off: int, live: set[int]) -> bool:
    """A used block holding an entry that a writer published (a slot pointed to it: its
    PUBLISHED bit), of a live collection, not a retired block (held for a view that no longer
    exists), checksum right."""
    mm, u32 = region.mm, region.u32
    if not entry_is_sound(region, off):
        return False
    return (u32[(off + L.E_KEY_COLL) >> 2] >> 16 in live
            and mm[off + L.E_KIND] & L.PUBLISHED
            and u32[off >> 2] & L.SEG_BITS != L.SEG_RETIRED_WORD)


def _fill_index(region: SharedRegion, newest: dict[bytes, int]) -> set[int]:
    """Empty the index and the stripes' counters, then publish each entry; returns the
    offsets kept. A stripe fuller than MAX_LOAD (keys that came back) keeps its newest."""
    lay, q, u32, mm = region.layout, region.q, region.u32, region.mm
    index = region.index
    for start, nbytes in ((lay.index_offset, lay.index_slots * 8),
                          (lay.access_offset, lay.index_slots),
                          (lay.counts_offset, lay.n_stripes * lay.max_collections * 4)):
        mm[start:start + nbytes] = bytes(nbytes)
    by_stripe: list[list[tuple[int, int, int]]] = [[] for _ in range(lay.n_stripes)]
    for ident, off in newest.items():
        coll = int.from_bytes(ident[2:4], "little")
        h = xxh3_64(ident[4:], region.seed ^ coll)
        by_stripe[h & (lay.n_stripes - 1)].append((u32[(off + L.E_VERSION) >> 2], h, off))
    limit = int(lay.slots_per_stripe * L.MAX_LOAD)
    kept: set[int] = set()
    for stripe, entries in enumerate(by_stripe):
        rec = lay.stripes_offset + stripe * L.STRIPE_BYTES
        # Versions keep rising per key (cas): the stripe's counter goes past every version
        # found (its low 32 bits, by the wrapping difference: layout.py); then newest first,
        # by how far each lies behind it.
        writes = q[(rec + L.S_WRITES) >> 3]
        for version, _, _ in entries:
            if L.newer_version(version, writes):
                writes += (version - writes) & L.VERSION_MASK
        entries.sort(key=lambda e: (writes - e[0]) & L.VERSION_MASK)
        entries = entries[:limit]
        counts = region.colls.stripe_counts(stripe)
        payload = 0
        for _, h, off in entries:
            mm[off + L.E_KIND] &= ~L.KIND_PINNED  # no view survives: in-place writes may resume
            index.insert_locked(stripe, h, region.arena.ref(off))
            key_coll = u32[(off + L.E_KEY_COLL) >> 2]
            counts[key_coll >> 16] += 1
            payload += (key_coll & L.KEY_LEN_MASK) + u32[(off + L.E_VALUE_LEN) >> 2]
            kept.add(off)
        u32[(rec + L.S_COUNT) >> 2] = len(entries)
        u32[(rec + L.S_OWNER_PID) >> 2] = 0
        q[(rec + L.S_OWNER_TOKEN) >> 3] = 0
        q[(rec + L.S_PAYLOAD) >> 3] = payload
        q[(rec + L.S_SEQ) >> 3] += q[(rec + L.S_SEQ) >> 3] & 1
        q[(rec + L.S_CHANGES) >> 3] += 1
        q[(rec + L.S_WRITES) >> 3] = writes
    return kept


def _clear_process_state(region: SharedRegion) -> None:
    """No process that had the region open survives what made it torn: free every process
    record (and with it every pin), and forget the arena lock's last holder."""
    lay, mm, u32 = region.layout, region.mm, region.u32
    start = lay.procs_offset
    mm[start:start + lay.max_procs * L.PROC_BYTES] = bytes(lay.max_procs * L.PROC_BYTES)
    u32[L.H_ARENA_OWNER_PID >> 2] = 0
    region.q[L.H_ARENA_OWNER_TOKEN >> 3] = 0
    region.q[L.H_EXPIRE_CURSOR >> 3] = 0
