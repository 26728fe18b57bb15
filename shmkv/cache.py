"""`Cache`: the public handle on a shared-memory region, and the only module that composes
region, locks, index, arena and collections.

Reads take no lock. `get` hashes the key, reads its stripe's seq, probes the sub-table, copies
the value out of the arena, and re-reads seq: if seq was odd or has changed, a writer touched
the stripe meanwhile and the read is retried. A writer frees a block only after its seq bump,
and only writers of the same stripe free a stripe's entries, so whatever a reader copied from a
block that was freed and reused under it is thrown away by that check.

Writes follow one order (see locks.py): take the stripe lock; build the new entry in a freshly
allocated block that no reader can reach yet (checksum included); bump seq to odd; publish the
slot; bump seq to even; only then free the old block. A writer killed before the publish leaves
an unreachable block, never a torn entry; one killed between the two bumps leaves seq odd, which
recovery detects.

The get path is written inline on purpose: every Python-level call and attribute lookup costs
20-60 ns, and a cross-process get is budgeted at about 1 us (see bench/results/).
"""

from __future__ import annotations

import os
import re
import struct
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from . import layout as L
from . import region as R
from .arena import MAX_BLOCK_BYTES, Arena
from .errors import (
    CacheClosed,
    CollectionNotFound,
    IndexFull,
    KeyTooLarge,
    NotAnInteger,
    RegionExists,
    RegionFull,
    ValueTooLarge,
)
from .hashing import checksum32, xxh3_64
from .index import Index
from .locks import DEFAULT_LOCK_TIMEOUT_S, RegionLocks
from .namespaces import CollectionTable, check_collection_name

DEFAULT_REGION = "shmkv"
DEFAULT_ARENA_BYTES = 64 << 20
READ_SPINS_BEFORE_YIELD = 64
_MISSING = object()
# What a reader needs of an entry, in one unpack at E_EXPIRES_AT:
# expires_at_ns, value_len, key_len | collection << 16
_ENTRY_READ = struct.Struct("<QII")
# What an in-place overwrite changes, at E_VERSION: version, expires_at_ns, value_len
_ENTRY_REWRITE = struct.Struct("<QQI")
# An overwrite reuses the key's block when the new entry fits it and wastes less than this;
# larger values are relocated so that readers of the stripe never wait for a long copy.
INPLACE_SLACK_BYTES = 64
INPLACE_MAX_BYTES = 64 << 10
_DECIMAL = re.compile(rb"-?[0-9]{1,19}")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
Clock = Callable[[], int]


class _Closed:
    """Stands in for the views of a closed handle: any use raises CacheClosed."""

    def __getitem__(self, _: Any) -> Any:
        raise CacheClosed("this Cache handle is closed; open the region again")

    def __iter__(self) -> Any:
        return self[0]

    def __getattr__(self, _: str) -> Any:
        return self[0]

    __setitem__ = __getitem__


_CLOSED = _Closed()


def _key_bytes(key: object) -> bytes:
    if type(key) is str:
        raw = key.encode("utf-8")
    elif isinstance(key, (bytes, bytearray, memoryview)):
        raw = bytes(key)
    else:
        raise TypeError(f"key must be str or bytes, not {type(key).__name__}")
    if len(raw) > L.MAX_KEY_BYTES:
        raise KeyTooLarge(f"key is {len(raw)} bytes; keys may be at most {L.MAX_KEY_BYTES} bytes")
    return raw


def _value_bytes(value: object) -> bytes | memoryview:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (int, float, bool)) or value is None:
        raise TypeError(f"value must be bytes-like or str, not {type(value).__name__}")
    try:
        view = memoryview(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"value must be bytes-like or str, not {type(value).__name__}") from None
    return view if view.c_contiguous else memoryview(view.tobytes())


def _expires_at(ttl_s: object, now_ns: int) -> int:
    if ttl_s is None:
        return 0
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)):
        raise TypeError(f"ttl_s must be a number of seconds or None, not {type(ttl_s).__name__}")
    if not ttl_s > 0 or ttl_s > 10 * 365 * 86400:
        raise ValueError("ttl_s must be > 0 and at most ten years (None means no expiry)")
    return now_ns + max(1, int(ttl_s * 1e9))


class _Region:
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
        self.q = self.mv.cast("Q")
        self.u32 = self.mv.cast("I")
        self.locks = RegionLocks(R.lock_prefix(mapping.name), self.u32, layout, lock_timeout_s)
        self.index = Index(self.mm, self.q, self.u32, layout)
        self.arena = Arena(self.q, self.u32, layout)
        self.colls = CollectionTable(self.mm, self.q, layout)
        self.handles: weakref.WeakSet[Cache] = weakref.WeakSet()
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for handle in list(self.handles):
            handle._detach()
        self.index = self.arena = self.colls = None  # type: ignore[assignment]
        self.q.release()
        self.u32.release()
        self.mv.release()
        self.locks.close()
        self.mapping.close()


class Cache:
    """A handle on a shared-memory key/value region (or on one collection inside it).

    Keys are str (UTF-8) or bytes; a str key and its UTF-8 bytes are the same key. Values are
    bytes-like or str; reads return bytes. Handles are cheap; open one per process (or share one
    between threads of a process). `with Cache.open(name) as c:` closes it at the end.
    """

    # --- construction -------------------------------------------------------------------
    def __init__(self, region: _Region, coll: int = 0, gen: int = 0, name: str = "",
                 owns_region: bool = True) -> None:
        self._region = region
        self._owns_region = owns_region
        self.collection_name = name
        self._coll = coll
        self._gen = gen
        region.handles.add(self)
        lay = region.layout
        # Everything the hot paths touch lives on the instance: one attribute lookup each.
        self._mm = region.mm
        self._q = region.q
        self._u32 = region.u32
        self._seed = region.seed ^ coll
        self._key_coll = coll << 16
        self._index = region.index
        self._locks = region.locks
        self._clock = region.clock
        self._smask = lay.n_stripes - 1
        self._pmask = lay.slots_per_stripe - 1
        self._per = lay.slots_per_stripe
        self._pshift = lay.slots_per_stripe.bit_length() - 1
        self._slot0 = lay.index_offset >> 3
        self._seq0 = lay.stripes_offset >> 3  # seq of stripe s is q[_seq0 + s * 8]
        self._count0 = (lay.stripes_offset + L.S_COUNT) >> 2  # u32[_count0 + s * 16]
        self._abase = lay.arena_offset
        self._aend = lay.arena_offset + lay.arena_bytes
        # q-indexes of each stripe's seq and first slot
        stripes = [(self._seq0 + (s << 3), self._slot0 + (s << self._pshift))
                   for s in range(lay.n_stripes)]
        self._hot = (self._q, self._mm, self._seed, self._smask, stripes, self._pmask,
                     self._key_coll, self._abase, self._aend, self._clock)

    @classmethod
    def create(
        cls,
        name: str = DEFAULT_REGION,
        arena_bytes: int = DEFAULT_ARENA_BYTES,
        *,
        max_keys: int | None = None,
        n_stripes: int = L.DEFAULT_STRIPES,
        max_collections: int = L.DEFAULT_MAX_COLLECTIONS,
        exist_ok: bool = False,
        mode: int = 0o600,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        clock: Clock = time.time_ns,
    ) -> Cache:
        """Create a region (a /dev/shm name, or a file path containing '/') and open it.

        Raises RegionExists if it exists, unless exist_ok=True, which attaches instead (the
        other parameters are then ignored). OutOfSpace if /dev/shm cannot hold it.
        """
        R.check_name(name)
        layout = L.plan_layout(arena_bytes, max_keys, n_stripes, max_collections)
        try:
            mapping = R.create_mapping(name, layout.region_bytes, mode)
        except RegionExists:
            if exist_ok:
                return cls.open(name, lock_timeout_s=lock_timeout_s, clock=clock)
            raise
        try:
            seed = int.from_bytes(os.urandom(8), "little")
            mm = mapping.mm
            mm[0:L.HEADER.size] = L.pack_header(layout, seed, time.time_ns())
            RegionLocks.create_all(R.lock_prefix(name), layout.n_stripes, mode)
            region = _Region(mapping, layout, seed, lock_timeout_s, clock)
            region.arena.init_locked()
            region.colls.init_default_locked()
            region.u32[L.H_STATE >> 2] = L.STATE_READY
            mm[0:8] = L.MAGIC  # last: until now, openers wait
        except BaseException:
            mapping.close()
            cls.unlink(name)
            raise
        return cls(region)

    @classmethod
    def open(
        cls,
        name: str = DEFAULT_REGION,
        *,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        clock: Clock = time.time_ns,
    ) -> Cache:
        """Attach to an existing region. RegionNotFound if absent, IncompatibleLayout if its
        header is not one this version reads."""
        R.check_name(name)
        mapping = R.open_mapping(name)
        try:
            layout, seed = L.unpack_header(mapping.mm, len(mapping.mm))
            region = _Region(mapping, layout, seed, lock_timeout_s, clock)
        except BaseException:
            mapping.close()
            raise
        return cls(region)

    @staticmethod
    def unlink(name: str = DEFAULT_REGION) -> bool:
        """Remove a region and its semaphores. Processes that have it open keep using their
        mapping until they close it; True if the region existed."""
        R.check_name(name)
        n_stripes = 256  # if the header is unreadable, try every possible semaphore name
        try:
            mapping = R.open_mapping(name)
        except Exception:
            pass
        else:
            try:
                n_stripes = L.unpack_header(mapping.mm, len(mapping.mm))[0].n_stripes
            except Exception:
                pass
            mapping.close()
        RegionLocks.unlink_all(R.lock_prefix(name), n_stripes)
        return R.unlink_mapping(name)

    def close(self) -> None:
        """Close the handle. Closing the handle returned by create/open closes its collection
        handles too; a collection handle's close() closes only itself."""
        if self._owns_region:
            self._region.close()
        else:
            self._detach()

    def _detach(self) -> None:
        self._mm = self._q = self._u32 = self._hot = _CLOSED  # type: ignore[assignment]
        self._index = self._locks = _CLOSED  # type: ignore[assignment]

    @property
    def closed(self) -> bool:
        return self._q is _CLOSED

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        coll = f" collection={self.collection_name!r}" if self._coll else ""
        return f"<shmkv.Cache {self._region.name!r}{coll} {state}>"

    # --- reads (no locks) ---------------------------------------------------------------
    def _read(self, key: object, default: Any, versioned: bool) -> Any:
        """The value of a live entry (with its version if asked), read consistently, or
        default.

        This is the whole cost of a get, so it is written for the interpreter (measured in
        instructions with callgrind, the machine being too noisy for timings): every constant
        comes from one tuple, per-stripe offsets from a precomputed table, the entry's fields
        from one struct unpack; arithmetic on 64-bit ints (which allocates) is kept to the
        hash and the slot."""
        if type(key) is not bytes or len(key) > L.MAX_KEY_BYTES:
            key = _key_bytes(key)
        q, mm, seed, smask, stripes, mask, key_coll, abase, aend, clock = self._hot
        h = xxh3_64(key, seed)
        seq_at, base = stripes[h & smask]
        tag = h >> 32
        klen = len(key)
        key_coll |= klen
        spins = 0
        while True:
            s1 = q[seq_at]
            found = default
            i = tag & mask
            left = mask  # bounded: a read torn by a writer must not loop forever
            while left:
                v = q[base + i]
                if not v:
                    break
                if v >> 32 == tag:
                    off = (v & 0xFFFFFFFF) * 8 + abase
                    exp, vlen, kc = _ENTRY_READ.unpack_from(mm, off + L.E_EXPIRES_AT)
                    if kc == key_coll:
                        start = off + L.ENTRY_HEADER_BYTES + klen
                        # bounds first: a block reused under us may hold any bytes
                        if start + vlen <= aend and mm[start - klen:start] == key:
                            if not exp or exp > clock():
                                found = mm[start:start + vlen]
                                if versioned:
                                    found = (found, q[(off + L.E_VERSION) >> 3])
                            break
                i = (i + 1) & mask
                left -= 1
            if q[seq_at] == s1 and not s1 & 1:
                return found
            spins = self._wait_writer(spins, stripe=h & smask)

    def _wait_writer(self, spins: int, stripe: int) -> int:
        # A writer is between its two seq bumps: a few stores. Spin, then give up the CPU (and
        # the GIL, in case the writer is a thread of this process).
        if spins >= READ_SPINS_BEFORE_YIELD:
            time.sleep(0)
        return spins + 1

    def get(self, key: str | bytes, default: Any = None) -> Any:
        """The value of key as bytes, or default if it is absent or expired."""
        return self._read(key, default, False)

    def get_with_version(self, key: str | bytes) -> tuple[bytes, int] | None:
        """(value, version) for use with cas(), or None if absent."""
        return self._read(key, None, True)  # type: ignore[no-any-return]

    def __getitem__(self, key: str | bytes) -> bytes:
        found = self._read(key, _MISSING, False)
        if found is _MISSING:
            raise KeyError(key)
        return found  # type: ignore[no-any-return]

    def __contains__(self, key: object) -> bool:
        return self._read(key, _MISSING, False) is not _MISSING

    def __len__(self) -> int:
        self._q[0]  # raises CacheClosed on a closed handle
        return self._region.colls.items(self._coll)

    def __iter__(self) -> Iterator[bytes]:
        """Keys of this collection, as bytes; a snapshot taken one stripe at a time."""
        for stripe in range(self._smask + 1):
            yield from self._stripe_keys(stripe)

    def keys(self) -> list[bytes]:
        return list(self)

    def _stripe_keys(self, stripe: int) -> list[bytes]:
        q, u32, mm = self._q, self._u32, self._mm
        seq_at = self._seq0 + (stripe << 3)
        spins = 0
        while True:
            s1 = q[seq_at]
            keys = []
            now = self._clock()
            for _, off in self._index.slots(stripe):
                key_coll = u32[(off + L.E_KEY_COLL) >> 2]
                klen = key_coll & 0xFFFF
                exp = q[(off + L.E_EXPIRES_AT) >> 3]
                if key_coll >> 16 == self._coll and (not exp or exp > now) \
                        and off + 42 + klen <= self._aend:
                    keys.append(mm[off + 42:off + 42 + klen])
            if q[seq_at] == s1 and not s1 & 1:
                return keys
            spins = self._wait_writer(spins, stripe)

    # --- writes -------------------------------------------------------------------------
    def set(self, key: str | bytes, value: Any, ttl_s: float | None = None) -> None:
        """Store value under key, replacing any previous value and TTL."""
        self._write(key, value, ttl_s, None)

    def __setitem__(self, key: str | bytes, value: Any) -> None:
        self._write(key, value, None, None)

    def cas(self, key: str | bytes, value: Any, version: int,
            ttl_s: float | None = None) -> bool:
        """Store value only if key still has `version` (from get_with_version). True if it did."""
        if isinstance(version, bool) or not isinstance(version, int):
            raise TypeError("version must be the int returned by get_with_version")
        return self._write(key, value, ttl_s, version)

    def _lock_and_find(self, key: object) -> tuple[bytes, int, int, int, int]:
        """Take the key's stripe lock and find it: (key bytes, hash, stripe, position, entry
        offset or 0). The caller must release_stripe(stripe)."""
        k = _key_bytes(key)
        h = xxh3_64(k, self._seed)
        stripe = h & self._smask
        self._locks.acquire_stripe(stripe)
        try:
            if self._coll:
                self._check_collection_locked()
            pos, old = self._index.find_locked(stripe, h, k, self._coll)
        except BaseException:
            self._locks.release_stripe(stripe)
            raise
        return k, h, stripe, pos, old

    def _write(self, key: object, value: object, ttl_s: object, if_version: int | None) -> bool:
        v = _value_bytes(value)  # every argument is checked before the lock is taken
        exp = 0 if ttl_s is None else _expires_at(ttl_s, self._clock())
        k, h, stripe, pos, old = self._lock_and_find(key)
        try:
            if if_version is not None:
                if not old or self._expired(old) or self._version_at(old) != if_version:
                    return False
            self._put_locked(stripe, h, k, v, exp, pos, old)
            return True
        finally:
            self._locks.release_stripe(stripe)

    def incr(self, key: str | bytes, delta: int = 1) -> int:
        """Add delta to the integer stored at key (absent counts as 0) and return the result.
        Atomic across processes. The value is stored as decimal ASCII, like Redis; its TTL is
        kept."""
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError("delta must be an int")
        k, h, stripe, pos, old = self._lock_and_find(key)
        try:
            current, exp = 0, 0
            if old and not self._expired(old):
                raw = self._value_at(old)
                if not _DECIMAL.fullmatch(raw):
                    raise NotAnInteger(f"value at {k!r} is not a decimal integer; incr() needs"
                                       " one (set it to a number or delete it first)")
                current = int(raw)
                exp = self._q[(old + L.E_EXPIRES_AT) >> 3]
            result = current + delta
            if not _INT64_MIN <= result <= _INT64_MAX:
                raise NotAnInteger(f"incr would overflow a signed 64-bit integer at {k!r}")
            self._put_locked(stripe, h, k, str(result).encode(), exp, pos, old)
            return result
        finally:
            self._locks.release_stripe(stripe)

    def delete(self, key: str | bytes) -> bool:
        """Remove key; True if it was present (and not expired)."""
        _, _, stripe, pos, old = self._lock_and_find(key)
        try:
            if not old:
                return False
            live = not self._expired(old)
            self._unpublish_locked(stripe, [pos])
            self._free_locked([old], L.H_DELETES if live else L.H_EXPIRATIONS)
            return live
        finally:
            self._locks.release_stripe(stripe)

    def __delitem__(self, key: str | bytes) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def clear(self) -> int:
        """Delete every key of this collection; returns how many were removed."""
        return self._delete_collection_entries(self._coll)

    # --- collections --------------------------------------------------------------------
    def collection(self, name: str) -> Cache:
        """A handle on the named collection, created if it does not exist. Its keys are
        isolated from the keys of every other collection (and of the default one)."""
        raw = check_collection_name(name)
        region = self._region
        self._q[0]
        self._locks.acquire_arena()
        try:
            found = region.colls.find(raw) or region.colls.create_locked(raw)
        finally:
            self._locks.release_arena()
        return Cache(region, found[0], found[1], name, owns_region=False)

    def collections(self) -> list[str]:
        """Names of the named collections (the default collection is not listed)."""
        self._q[0]
        return sorted(name.decode() for _, _, name in self._region.colls.live())

    def rename_collection(self, old: str, new: str) -> None:
        """Rename a collection; open handles on it keep working."""
        raw_old, raw_new = check_collection_name(old), check_collection_name(new)
        self._locks.acquire_arena()
        try:
            self._region.colls.rename_locked(raw_old, raw_new)
        finally:
            self._locks.release_arena()

    def drop_collection(self, name: str) -> int:
        """Delete a collection and all its keys; returns how many keys it held. Handles on it
        raise CollectionNotFound on their next write."""
        raw = check_collection_name(name)
        self._locks.acquire_arena()
        try:
            idx = self._region.colls.begin_drop_locked(raw)
        finally:
            self._locks.release_arena()
        removed = self._delete_collection_entries(idx)
        self._locks.acquire_arena()
        try:
            self._region.colls.end_drop_locked(idx)
        finally:
            self._locks.release_arena()
        return removed

    # --- stats --------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters and sizes of the region, plus this handle's collection."""
        self._q[0]
        region = self._region
        lay = region.layout
        counters = {name: self._q[off >> 3] for name, off in (
            ("items", L.H_ITEMS), ("deletes", L.H_DELETES),
            ("evictions", L.H_EVICTIONS), ("expirations", L.H_EXPIRATIONS))}
        used = region.arena.used_bytes()
        return {
            "region": region.name,
            "layout_version": L.LAYOUT_VERSION,
            "region_bytes": lay.region_bytes,
            "arena_bytes": lay.arena_bytes,
            "arena_used_bytes": used,
            "arena_free_bytes": region.arena.free_bytes(),
            "index_slots": lay.index_slots,
            "n_stripes": lay.n_stripes,
            "collections": len(region.colls.live()),
            "collection": self.collection_name,
            "collection_items": len(self),
            "sets": sum(self._q[s + (L.S_WRITES >> 3)] for s, _ in self._hot[4]),
            **counters,
        }

    # --- internals (callers hold the stripe lock) ----------------------------------------
    def _check_collection_locked(self) -> None:
        if not self._region.colls.is_live(self._coll, self._gen):
            raise CollectionNotFound(
                f"collection {self.collection_name!r} was dropped; get a new handle with "
                "collection()"
            )

    def _expired(self, off: int) -> bool:
        exp = self._q[(off + L.E_EXPIRES_AT) >> 3]
        return bool(exp) and exp <= self._clock()

    def _version_at(self, off: int) -> int:
        return self._q[(off + L.E_VERSION) >> 3]

    def _value_at(self, off: int) -> bytes:
        start = off + 42 + (self._u32[(off + L.E_KEY_COLL) >> 2] & 0xFFFF)
        return self._mm[start:start + self._u32[(off + L.E_VALUE_LEN) >> 2]]

    def _put_locked(self, stripe: int, h: int, k: bytes, v: bytes | memoryview, exp: int,
                    pos: int, old: int, kind: int = L.KIND_BYTES) -> None:
        """Store k -> v: rewrite the key's block in place when the new entry fits it snugly,
        else build a new entry off to the side and publish it with one slot store."""
        klen = len(k)
        vlen = len(v) if type(v) is bytes else v.nbytes  # type: ignore[union-attr]
        need = (L.ENTRY_HEADER_BYTES + klen + vlen + L.ALIGN - 1) & ~(L.ALIGN - 1)
        q, u32, mm = self._q, self._u32, self._mm
        seq_at = self._seq0 + (stripe << 3)
        q[seq_at + (L.S_WRITES >> 3)] += 1
        version = q[seq_at + (L.S_WRITES >> 3)] << 8 | stripe
        if old and vlen <= INPLACE_MAX_BYTES \
                and need <= u32[old >> 2] & L.SIZE_MASK < need + INPLACE_SLACK_BYTES:
            # Readers of this stripe retry while seq is odd, as they do for a slot change.
            q[seq_at] += 1
            self._fill_entry(old, k, v, version, exp, kind, new=False)
            q[seq_at] += 1
            return
        arena = self._region.arena
        if vlen > L.MAX_VALUE_BYTES or need > min(MAX_BLOCK_BYTES, arena.end - arena.first_block):
            raise ValueTooLarge(
                f"value of {vlen} bytes can never fit: this region's arena is "
                f"{arena.bytes} bytes; create the region with a larger arena_bytes"
            )
        if not old and u32[self._count0 + (stripe << 4)] >= self._index.max_count:
            raise IndexFull(
                "the index stripe for this key is full; create the region with a larger "
                "max_keys, or delete keys"
            )
        locks = self._locks
        locks.acquire_arena()
        try:
            off = arena.alloc_locked(need)
            if not off:
                raise RegionFull(
                    f"no free block of {need} bytes in the arena ({arena.free_bytes()} bytes "
                    "free in all); delete keys or create the region with a larger arena_bytes"
                )
            if not old:
                q[_ITEMS] += 1
                self._region.colls.add_items_locked(self._coll, 1)
        finally:
            locks.release_arena()
        self._fill_entry(off, k, v, version, exp, kind, new=True)
        ref = (off - self._abase) >> 3
        q[seq_at] += 1
        if old:
            self._index.replace_locked(stripe, pos, h, ref)
        else:
            self._index.insert_locked(stripe, h, ref)
            u32[self._count0 + (stripe << 4)] += 1
        q[seq_at] += 1
        if old:  # only now: a reader that still copies from it will see seq moved and retry
            locks.acquire_arena()
            try:
                arena.free_locked(old)
            finally:
                locks.release_arena()

    def _fill_entry(self, off: int, k: bytes, v: bytes | memoryview, version: int, exp: int,
                    kind: int, new: bool) -> None:
        """Write key, value, header fields and checksum into the block at off. A new block
        also gets its list links and segment cleared; a rewritten one keeps them."""
        mm = self._mm
        klen = len(k)
        body = off + L.ENTRY_HEADER_BYTES
        end = body + klen + len(v) if type(v) is bytes else body + klen + v.nbytes
        if new:
            mm[body:body + klen] = k
        mm[body + klen:end] = v
        checksum = checksum32(self._region.mv[body:end], self._region.seed)
        if new:
            L.ENTRY_WRITE.pack_into(mm, off + L.E_CHECKSUM, checksum, 0, 0, version, exp,
                                    end - body - klen, klen, self._coll, kind, 0)
        else:
            _ENTRY_REWRITE.pack_into(mm, off + L.E_VERSION, version, exp, end - body - klen)
            self._u32[(off + L.E_CHECKSUM) >> 2] = checksum
            mm[off + L.E_KIND] = kind

    def _unpublish_locked(self, stripe: int, positions: list[int]) -> None:
        """Remove slots between the two seq bumps (positions are taken in the order given)."""
        seq_at = self._seq0 + (stripe << 3)
        self._q[seq_at] += 1
        for pos in positions:
            self._index.remove_locked(stripe, pos)
        self._u32[self._count0 + (stripe << 4)] -= len(positions)
        self._q[seq_at] += 1

    def _free_locked(self, offs: list[int], counter: int) -> None:
        """Free the blocks of unpublished entries and count them (after the seq bump)."""
        colls = self._region.colls
        q, u32 = self._q, self._u32
        self._locks.acquire_arena()
        try:
            for off in offs:
                colls.add_items_locked(u32[(off + L.E_KEY_COLL) >> 2] >> 16, -1)
                self._region.arena.free_locked(off)
            q[_ITEMS] -= len(offs)
            q[counter >> 3] += len(offs)
        finally:
            self._locks.release_arena()

    def _delete_collection_entries(self, coll: int) -> int:
        removed = 0
        for stripe in range(self._smask + 1):
            self._locks.acquire_stripe(stripe)
            try:
                offs = []
                seq_at = self._seq0 + (stripe << 3)
                self._q[seq_at] += 1
                pos = 0
                while pos < self._per:
                    off = self._index.entry_offset(stripe, pos)
                    if off and self._u32[(off + L.E_KEY_COLL) >> 2] >> 16 == coll:
                        # the backward shift may pull a later entry into pos: look again
                        self._index.remove_locked(stripe, pos)
                        offs.append(off)
                    else:
                        pos += 1
                self._u32[self._count0 + (stripe << 4)] -= len(offs)
                self._q[seq_at] += 1
                if offs:
                    self._free_locked(offs, L.H_DELETES)
                removed += len(offs)
            finally:
                self._locks.release_stripe(stripe)
        return removed


_ITEMS = L.H_ITEMS >> 3
