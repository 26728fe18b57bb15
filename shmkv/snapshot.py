"""Snapshots of a live region and their restore (the file format is snapshot_format.py's).

Writing never stops the world. For each stripe in turn, the stripe lock is taken only to copy
the stripe's slots (a memcpy of its sub-table), then released; the entries those slots point to
are read afterwards, without any lock, and kept only if they validate: a used block, a sane
header, a collection that was live when the snapshot began, and a checksum that matches the
key and value just copied, with the header fields read again after the copy. Why the slots are
copied under the lock rather than walked by a cursor: a delete's backward shift moves a later
slot of the probe run back, behind a cursor that already passed it, and the key would be
missed although nobody touched it. With the copy, every key nobody touched during the snapshot
is in it: an entry that is not rewritten never moves or changes (only its list links, slot_no,
access byte and pin bit do, none of which are copied), so it is read whole. A key rewritten
meanwhile is read at its old or its new value (each key consistent on its own): when its old
block was freed under the reader, the stripe's slots are copied again and the entries written
since are read too (REREADS times at most, so a key rewritten all the while may be missed). A
freed block can still validate (a block merged into the free one before it keeps its bytes),
and a reused one yields another key's whole entry: each is a value its key had during the
snapshot. A key read twice is written twice, and restore applies records in order, so it gets
one of the values the key had during the snapshot, not always the last one.
The header fields of a batch of entries are read at once through numpy views of the mapping;
only the copy and the checksum of each entry are a Python call each.

The snapshot is not point-in-time: entries are rewritten in place or freed as soon as their
writers are done, with no copy-on-write to keep the old version alive while a snapshot reads
it, so keys written during the snapshot come from various moments (as with Redis's BGSAVE if
it had no fork). The file goes to `path + ".tmp-<pid>"`, is fsynced, renamed over path, and
the directory is fsynced: a reader of path sees the old file or the new one, whole; the temp
file is removed if anything fails.

Restore validates the whole file first (snapshot_format.validate), checks that its entries fit
the target's arena and index and that its collections fit the collection table, and only then
changes the region: with replace=True it clears every collection, then writes each record
whose expiry (absolute unix ns) has not passed by the region's clock, with its kind, through
the ordinary write path (`put_absolute`), creating collections by name as needed. With
replace=False keys only in the region stay, and may be evicted to make room like on any write.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from . import layout as L
from . import snapshot_format as F
from .errors import IndexFull, RegionFull, TooManyCollections
from .hashing import xxh3_64

if TYPE_CHECKING:  # cache.py imports this module: no import of it at run time
    from .cache import Cache

Progress = Callable[[int, int], None] | None
PROGRESS_EVERY = 4096  # entries read, or records applied, between two progress calls
# What a region sized from a snapshot gets beyond its entries' bytes: allocator slack, so
# that a restore never has to evict what it just wrote.
SIZING_SLACK = 1.25
SIZING_MIN_EXTRA_BYTES = 1 << 20
# Times a stripe whose entries failed validation (rewritten or deleted while they were read) has
# its slots copied again, for the entries written since; a key rewritten all the while may
# still be missed.
REREADS = 3


# --- writing ------------------------------------------------------------------------------
def write(cache: Cache, path: str, progress: Progress = None) -> dict[str, Any]:
    """Write a snapshot of every collection of cache's region to path, atomically."""
    t0 = time.perf_counter()
    region = cache._region
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb", buffering=F.CHUNK_BYTES) as f:
            counts = _write_to(region, f, progress)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))
    counts.update(path=path, bytes=os.path.getsize(path),
                  elapsed_s=round(time.perf_counter() - t0, 6))
    return counts


def _fsync_dir(directory: str) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _write_to(region: Any, f: Any, progress: Progress) -> dict[str, Any]:
    lay = region.layout
    header = F.Header(created_at_ns=region.clock(),
                      region_id=region.q[L.H_REGION_ID >> 3], arena_bytes=lay.arena_bytes,
                      index_slots=lay.index_slots, n_stripes=lay.n_stripes,
                      max_collections=lay.max_collections)
    f.write(header.pack())  # a placeholder: counts are known at the end, written over it
    with region.locks.arena_held:  # the collection table is the arena lock's
        named = [(idx, name) for idx, _, name in region.colls.live()]
    payload = F.pack_collections(named)
    head, checksum = F.pack_chunk(F.CHUNK_COLLECTIONS, len(named), payload)
    f.write(head)
    f.write(payload)
    out = _ChunkWriter(f, [checksum])
    total = sum(region.u32[(lay.stripes_offset + s * L.STRIPE_BYTES + L.S_COUNT) >> 2]
                for s in range(lay.n_stripes))
    live = np.array(sorted({0, *(idx for idx, _ in named)}), dtype=np.uint32)
    fields = _EntryFields(region)
    try:
        for stripe in range(lay.n_stripes):
            offs = seen = _stripe_entries(region, stripe)
            for _ in range(1 + REREADS):
                failed = 0
                for at in range(0, offs.size, PROGRESS_EVERY):  # bounded batches of copies
                    failed += _write_entries(region, fields, offs[at:at + PROGRESS_EVERY],
                                             live, out)
                    if progress is not None:
                        progress(min(out.records, total), total)
                if not failed:
                    break
                # What failed was rewritten elsewhere or deleted under the reader: a key
                # rewritten meanwhile has its new entry at a ref the copy did not hold.
                fresh = _stripe_entries(region, stripe)
                offs = np.setdiff1d(fresh, seen)
                seen = np.union1d(seen, fresh)
    finally:
        fields.release()
    out.close_chunk()
    f.write(F.pack_trailer(len(out.checksums), out.records, out.payload, out.checksums))
    header.live_bytes, header.max_key_bytes = out.live, out.longest
    header.record_count = out.records
    f.seek(0)
    f.write(header.pack())
    if progress is not None:
        progress(out.records, max(total, out.records))
    return {"keys": out.records, "collections": sorted(n.decode() for _, n in named),
            "live_bytes": out.live, "skipped_expired": out.expired,
            "region_id": header.region_id}


class _ChunkWriter:
    """Records go into the current chunk, which is written out once it passes CHUNK_BYTES."""

    def __init__(self, f: Any, checksums: list[int]) -> None:
        self.f, self.checksums = f, checksums
        self.parts: list[bytes] = []
        self.chunk_bytes = self.in_chunk = 0
        self.records = self.payload = self.live = self.longest = self.expired = 0

    def close_chunk(self) -> None:
        if not self.in_chunk:
            return
        body = b"".join(self.parts)
        head, checksum = F.pack_chunk(F.CHUNK_RECORDS, self.in_chunk, body)
        self.f.write(head)
        self.f.write(body)
        self.checksums.append(checksum)
        self.parts.clear()
        self.chunk_bytes = self.in_chunk = 0


class _EntryFields:
    """numpy views of the whole mapping, to read the header fields of many entries at once
    (released before the snapshot returns: a region cannot close under a live export)."""

    def __init__(self, region: Any) -> None:
        self.u8 = np.frombuffer(region.mv, dtype=np.uint8)
        self.u32 = self.u8.view(np.uint32)
        self.u64 = self.u8.view(np.uint64)

    def read(self, offs: np.ndarray) -> tuple[np.ndarray, ...]:
        """(block word, key_coll, value_len, checksum, expires_at_ns, kind) of each entry."""
        w = offs >> 2
        return (self.u32[w], self.u32[w + _KEY_COLL], self.u32[w + _VALUE_LEN],
                self.u32[w + _CHECKSUM], self.u64[(offs >> 3) + _EXPIRES],
                self.u8[offs + L.E_KIND] & L.KIND_MASK)

    def release(self) -> None:
        del self.u8, self.u32, self.u64


def _write_entries(region: Any, fields: _EntryFields, offs: np.ndarray, live: np.ndarray,
                  out: _ChunkWriter) -> int:
    """Read the entries at offs without a lock and add those that validate (see the module
    docstring) to out; expired ones are counted, not written. Returns how many failed."""
    if not offs.size:
        return 0
    now_ns = region.clock()
    word, key_coll, vlen, checksum, exp, kind = fields.read(offs)
    klen, coll, size = key_coll & L.KEY_LEN_MASK, key_coll >> 16, word & L.SIZE_MASK
    sound = ((word & L.FREE_BIT) == 0) & np.isin(coll, live) & (kind <= L.KIND_ARRAY) \
        & (klen <= L.MAX_KEY_BYTES) & (L.ENTRY_HEADER_BYTES + klen + vlen <= size) \
        & (offs + size <= region.arena.end)
    expired = sound & (exp != 0) & (exp <= np.uint64(now_ns))
    out.expired += int(expired.sum())
    pick = np.flatnonzero(sound & ~expired)
    failed = offs.size - pick.size - int(expired.sum())
    if not pick.size:
        return failed
    offs, klen, vlen, checksum = offs[pick], klen[pick], vlen[pick], checksum[pick]
    body0 = offs + L.ENTRY_HEADER_BYTES
    mm, seed = region.mm, region.seed
    bodies = [mm[a:b] for a, b in zip(body0.tolist(), (body0 + klen + vlen).tolist())]
    whole = np.array([xxh3_64(b, seed) & 0xFFFFFFFF for b in bodies], dtype=np.uint32) \
        == checksum
    # A rewrite that finished between the header reads and the copy: the checksum of the new
    # value against the old one's fails, and a same-value rewrite with a new TTL shows here.
    again = fields.read(offs)
    same = whole & ((again[0] & L.FREE_BIT) == 0) & (again[1] == key_coll[pick]) \
        & (again[2] == vlen) & (again[3] == checksum) & (again[4] == exp[pick])
    heads = np.zeros(pick.size, dtype=_RECORD_DTYPE)
    heads["exp"], heads["vlen"], heads["klen"] = exp[pick], vlen, klen
    heads["coll"] = coll[pick]
    heads["kind"] = np.where(kind[pick] == L.KIND_ARRAY, F.RECORD_ARRAY, F.RECORD_BYTES)
    raw = heads.tobytes()
    hb, parts = F.RECORD_HEADER_BYTES, out.parts
    for i in np.flatnonzero(same).tolist():
        body = bodies[i]
        parts.append(raw[i * hb:i * hb + hb])
        parts.append(body)
        out.in_chunk += 1
        out.chunk_bytes += hb + len(body)
        if out.chunk_bytes >= F.CHUNK_BYTES:
            out.close_chunk()
    kept = same.nonzero()[0]
    out.records += kept.size
    out.payload += int((klen[kept].astype(np.int64) + vlen[kept]).sum())
    out.live += int(np.maximum(L.MIN_BLOCK_BYTES, (L.ENTRY_HEADER_BYTES + klen[kept].astype(
        np.int64) + vlen[kept] + L.ALIGN - 1) & ~(L.ALIGN - 1)).sum())
    out.longest = max(out.longest, int(klen[kept].max(initial=0)))
    return failed + pick.size - kept.size


def _stripe_entries(region: Any, stripe: int) -> np.ndarray:
    """The entry offsets of a stripe's occupied slots, copied under its lock (held for a
    memcpy of the sub-table only). Slots whose ref is not one are left out."""
    index = region.index
    start = index.slot0 + stripe * index.per
    region.locks.acquire_stripe(stripe)
    try:
        raw = region.q[start:start + index.per].tobytes()
    finally:
        region.locks.release_stripe(stripe)
    refs = np.frombuffer(raw, dtype=np.uint64) & np.uint64(0xFFFFFFFF)
    refs = refs[(refs > 0) & (refs <= index.max_ref)]
    return refs.astype(np.int64) * L.ALIGN + index.arena_base


_KEY_COLL, _VALUE_LEN = L.E_KEY_COLL >> 2, L.E_VALUE_LEN >> 2
_CHECKSUM, _EXPIRES = L.E_CHECKSUM >> 2, L.E_EXPIRES_AT >> 3
_RECORD_DTYPE = np.dtype({"names": ["exp", "vlen", "klen", "coll", "kind"],
                          "formats": ["<u8", "<u4", "<u2", "<u2", "u1"],
                          "offsets": [0, 8, 12, 14, 16], "itemsize": F.RECORD_HEADER_BYTES})


# --- restoring ----------------------------------------------------------------------------
def read_file(path: str) -> bytes:
    with open(os.fspath(path), "rb") as f:
        return f.read()


def region_sizes(path: str) -> dict[str, int]:
    """Cache.create() arguments for a region that can hold the snapshot at path: the source's
    arena, or enough for the snapshot's entries, whichever is larger; as many index slots and
    stripes as the source. Validates the header only (restore validates the rest)."""
    with open(os.fspath(path), "rb") as f:
        head = F.read_header(f.read(F.HEADER_BYTES), os.fspath(path))
    need = int(head.live_bytes * SIZING_SLACK) + SIZING_MIN_EXTRA_BYTES
    arena_bytes = min(max(head.arena_bytes, need), L.MAX_ARENA_BYTES)
    max_keys = max(int(head.index_slots * L.TARGET_LOAD), head.record_count, 1)
    return {"arena_bytes": arena_bytes, "max_keys": max_keys, "n_stripes": head.n_stripes,
            "max_collections": max(head.max_collections, 1)}


def put_absolute(handle: Cache, key: bytes, value: bytes | memoryview, expires_at_ns: int,
                 kind: int) -> None:
    """Store key -> value in handle's collection with an absolute expiry and a kind: the
    write path of set() (Cache._lock_and_find, Writer.put_locked), minus the relative TTL."""
    cw = handle._cw  # the compiled writer does the common case, or hands it back untouched
    if cw is not None and kind == L.KIND_BYTES and cw.put_absolute(key, value, expires_at_ns):
        return
    k, h, stripe, pos, old = handle._lock_and_find(key)
    try:
        handle._w.put_locked(stripe, h, k, value, expires_at_ns, pos, old, kind)
    finally:
        handle._locks.release_stripe(stripe)


def restore(cache: Cache, path: str, replace: bool = False,
            progress: Progress = None) -> dict[str, Any]:
    """Load the snapshot at path into cache's region (see the module docstring)."""
    t0 = time.perf_counter()
    region = cache._region
    path = os.fspath(path)
    buf = read_file(path)
    # every region this release opens has this limit (layout.unpack_header checks it)
    snap = F.validate(buf, path, L.MAX_KEY_BYTES)
    _check_fits(cache, snap)
    root = _default_handle(cache)
    handles: dict[int, Cache] = {0: root}
    try:
        if replace:
            root.clear()
            for name in root.collections():
                with root.collection(name) as handle:
                    handle.clear()
        for idx, name in snap.collections.items():
            handles[idx] = root.collection(name)
        clock, applied, expired = region.clock, 0, 0
        total = snap.header.record_count
        for coll, kind, exp, key, value in F.records(buf, snap):
            if exp and exp <= clock():
                expired += 1
                continue
            put_absolute(handles[coll], bytes(key), value, exp,
                         L.KIND_ARRAY if kind == F.RECORD_ARRAY else L.KIND_BYTES)
            applied += 1
            if progress is not None and not (applied + expired) % PROGRESS_EVERY:
                progress(applied + expired, total)
        if progress is not None:
            progress(total, total)
    finally:
        for handle in handles.values():
            if handle is not cache:
                handle.close()
    return {"path": path, "keys": applied, "skipped_expired": expired, "bytes": len(buf),
            "collections": sorted(snap.collections.values()),
            "source_region_id": snap.header.region_id,
            "elapsed_s": round(time.perf_counter() - t0, 6)}


def _default_handle(cache: Cache) -> Cache:
    """A handle on the default collection of cache's region (cache itself if it is one)."""
    if cache._coll == 0:
        return cache
    region = cache._region
    return type(cache)(region, 0, region.colls.read(0)[0], "", owns_region=False)


def _check_fits(cache: Cache, snap: F.Snapshot) -> None:
    """Refuse, before anything is written, a snapshot the target can never hold."""
    region = cache._region
    arena, lay, head = region.arena, region.layout, snap.header
    room = arena.end - arena.first_block
    if head.live_bytes > room:
        raise RegionFull(
            f"the snapshot's entries take {head.live_bytes} arena bytes, this region's arena "
            f"holds {room}; restore into a region with a larger arena_bytes (`shmkv restore` "
            "creates one sized from the snapshot when the region does not exist)")
    slots = region.index.max_count * lay.n_stripes
    if head.record_count > slots:
        raise IndexFull(f"the snapshot holds {head.record_count} keys, this region's index "
                        f"{slots}; restore into a region with a larger max_keys")
    existing = set(cache.collections())
    missing = [n for n in snap.collections.values() if n not in existing]
    if len(existing) + len(missing) > lay.max_collections - 1:
        raise TooManyCollections(
            f"the snapshot needs {len(missing)} collections this region does not have, and "
            f"its table has room for {lay.max_collections - 1 - len(existing)}; drop some or "
            "restore into a region with a larger max_collections")
