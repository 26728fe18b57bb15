"""`Cache`: the public handle on a shared-memory region: argument checks, locks, reads,
writes, expiry, publish. shared_region.py holds what a region's handles share; reads go through
a Reader, compiled or pure (backend.py, reader.py), and take no lock; writes take the key's stripe lock
here (in the order locks.py gives) and go through writer.py; what takes entries out of the
region lives in evict.py; the region-wide operations (maintain, repair, flush, stats,
snapshots, collections, events on/off) in upkeep.py, a mixin of Cache; Redis's read-modify-write commands
(getdel, getex, append, rename, set's options) in commands.py.

A handle binds its reader's methods as its own `get`, `get_with_version` and `get_many`, and the
compiled writer's as its `set`, `cas`, `incr` and `delete` (instance attributes): a Python
wrapper around a compiled call would cost a fifth of it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from types import MethodType
from typing import Any

import numpy as np

from . import arrays, backend, commands
from . import layout as L
from . import region as R
from .coerce import expires_at_ns as _expires_at
from .coerce import key_bytes as _key_bytes
from .coerce import value_buffer as _value_bytes
from .errors import (CacheClosed, CorruptRegion, LockTimeout, NotAnInteger, ReadOnlyReplica,
                     RegionExists)
from .hashing import xxh3_64
from .events import emit_locked
from .events import want as want_events
from .listing import Listing
from .locks import DEFAULT_LOCK_TIMEOUT_S
from .reader import READ_SPINS_BEFORE_YIELD
from .shared_region import SharedRegion
from .upkeep import Upkeep
from .views import ValueView, copy_array
from .writer import WRITER_EXPIRY_SLOTS, Writer

DEFAULT_REGION = "shmkv"
DEFAULT_ARENA_BYTES = 64 << 20
DEFAULT_PROTECTED_PCT = 80  # of the arena, for entries read again since they came in
READ_SPINS_BEFORE_LOCK = 2000
_MISSING = object()
_BOUND = ("get", "get_with_version", "get_many", "get_list", "_contains", "set", "cas", "incr",
          "view", "view_array", "delete")  # _bind
# What incr() takes as an integer: Redis's form (string2ll): no "+", no leading zeros, no "-0"
_DECIMAL = re.compile(rb"0|-?[1-9][0-9]{0,18}")
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


def _check_timeout(lock_timeout_s: object) -> None:
    if isinstance(lock_timeout_s, bool) or not isinstance(lock_timeout_s, (int, float)):
        raise TypeError("lock_timeout_s must be a number of seconds")
    if not 0 < lock_timeout_s <= 3600:
        raise ValueError("lock_timeout_s must be > 0 and at most an hour")


class Cache(Upkeep, Listing):
    """A handle on a shared-memory key/value region (or on one collection inside it).

    Keys are str (UTF-8) or bytes; a str key and its UTF-8 bytes are the same key. Values are
    bytes-like or str; reads return bytes. Handles are cheap; open one per process (or share one
    between threads of a process). `with Cache.open(name) as c:` closes it at the end.
    """

    # --- construction -------------------------------------------------------------------
    def __init__(self, region: SharedRegion, coll: int = 0, gen: int = 0, name: str = "",
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
        self._index = region.index
        self._locks = region.locks
        self._clock = region.clock
        self._smask = lay.n_stripes - 1
        self._seq0 = lay.stripes_offset >> 3  # seq of stripe s is q[_seq0 + s * STRIPE_Q]
        self._aend = lay.arena_offset + lay.arena_bytes
        # It counts this handle's hits and misses until they are flushed into the region's
        # counters (stats()).
        self._reader = backend.Reader(
            region.mm, lay.n_stripes, lay.slots_per_stripe, lay.stripes_offset,
            lay.index_offset, lay.access_offset, lay.arena_offset, lay.arena_bytes, region.seed,
            coll, region.clock, _key_bytes, self._wait_writer, CorruptRegion)
        self._events_hold: int | None = None  # this handle's EVENTS lock (events.py)
        self._w = Writer(region, coll, gen, name, self._flush_counts_locked)
        # The compiled writer does the common writes (set, cas, incr, delete: in place or into a
        # free block, with events) itself and hands every other case (eviction above all) to
        # the Python methods given here, before it has changed anything.
        self._cw = None if backend.Writer is None else backend.Writer(
            region.mm, lay.n_stripes, lay.slots_per_stripe, lay.stripes_offset,
            lay.collections_offset, lay.access_offset, lay.index_offset, lay.arena_offset,
            lay.arena_bytes, region.seed, coll, gen, region.locks.timeout_s, region.clock,
            _key_bytes, LockTimeout, CorruptRegion, self._write, self._incr, self._expire_pass,
            set_fallback=MethodType(Cache.set, self),  # a set with an option, whole
            events_offset=lay.events_offset, event_ring_bytes=lay.event_ring_bytes,
            counts_offset=lay.counts_offset, max_collections=lay.max_collections,
            delete_fallback=MethodType(Cache.delete, self))
        if self._cw is not None:  # its views pin in C too, and hand every unusual case here
            self._cw.enable_views(region.pins._free, lay.procs_offset, lay.max_procs,
                                  self._pin_entry, region.pins.after_unpin, arrays.DECODED,
                                  arrays.decode_header, np.ndarray)
        self._bind(self._reader, self._cw)

    def _bind(self, reader: Any, writer: Any) -> None:
        self.get = reader.get  # type: ignore[method-assign]
        self.get_with_version = reader.get_with_version  # type: ignore[method-assign]
        self.get_many = reader.get_many  # type: ignore[method-assign]
        self.get_list = reader.get_list  # type: ignore[method-assign]
        self._contains = reader.contains  # type: ignore[method-assign]
        if writer is not None:
            self.set = writer.set  # type: ignore[method-assign]
            self.cas = writer.cas  # type: ignore[method-assign]
            self.incr = writer.incr  # type: ignore[method-assign]
            self.view = writer.view  # type: ignore[method-assign]
            self.view_array = writer.view_array  # type: ignore[method-assign]
            self.delete = writer.delete  # type: ignore[method-assign]

    @classmethod
    def create(
        cls,
        name: str = DEFAULT_REGION,
        arena_bytes: int = DEFAULT_ARENA_BYTES,
        *,
        max_keys: int | None = None,
        n_stripes: int = L.DEFAULT_STRIPES,
        max_collections: int = L.DEFAULT_MAX_COLLECTIONS,
        protected_pct: int = DEFAULT_PROTECTED_PCT,
        exist_ok: bool = False,
        mode: int = 0o600,
        owner: str | int | None = None,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        clock: Clock = time.time_ns,
    ) -> Cache:
        """Create a region (a /dev/shm name, or a file path containing '/') and open it.

        Raises RegionExists if it exists, unless exist_ok=True, which attaches instead (the
        other parameters are then ignored, but owner: see open()). OutOfSpace if /dev/shm
        cannot hold it. The object gets exactly `mode` (the umask does not apply); a
        world-writable mode is refused (ValueError).
        """
        R.check_name(name)
        _check_timeout(lock_timeout_s)
        if max_keys is not None and (isinstance(max_keys, bool) or not isinstance(max_keys, int)):
            raise TypeError("max_keys must be an int or None")
        if isinstance(protected_pct, bool) or not isinstance(protected_pct, int) \
                or not 0 <= protected_pct <= 95:
            raise ValueError("protected_pct must be an int between 0 and 95")
        layout = L.plan_layout(arena_bytes, max_keys, n_stripes, max_collections)
        try:
            region = SharedRegion.create(name, layout, protected_pct, mode, lock_timeout_s,
                                         clock)
        except RegionExists:
            if exist_ok:
                return cls.open(name, owner=owner, lock_timeout_s=lock_timeout_s, clock=clock)
            raise
        return cls(region)

    @classmethod
    def open(
        cls,
        name: str = DEFAULT_REGION,
        *,
        owner: str | int | None = None,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        clock: Clock = time.time_ns,
    ) -> Cache:
        """Attach to an existing region. RegionNotFound if absent, IncompatibleLayout if its
        header is not one this version reads. The first process to open a region that nobody
        has open re-initialises its locks (SharedRegion.attach).

        PermissionDenied if the system refuses access, if the region belongs to another user
        than the caller and `owner` (a user name or uid: the user meant to own a shared
        region), or if it is writable by every user (refused whoever owns it)."""
        R.check_name(name)
        _check_timeout(lock_timeout_s)
        return cls(SharedRegion.attach(name, lock_timeout_s, clock, owner))

    @staticmethod
    def unlink(name: str = DEFAULT_REGION) -> bool:
        """Remove a region's name. Processes that have it open keep using their mapping until
        they close it (everything a region needs lives in it); True if the region existed."""
        R.check_name(name)
        with R.permission_errors(name, "remove"):  # PermissionDenied, not a raw OSError
            return R.unlink_mapping(name)

    def close(self) -> None:
        """Close the handle. Closing the handle returned by create/open closes its collection
        handles too; a collection handle's close() closes only itself."""
        if self.closed:
            return
        with self._locks.arena_held:
            self._flush_counts_locked()
        if self._owns_region:
            self._region.close()
        else:
            self._detach()

    def _detach(self) -> None:
        if self._reader is _CLOSED:
            return
        if self._events_hold is not None:  # a closed handle wants no events
            self._events_hold = want_events(self._region, self._events_hold, False)
        self._mm = self._q = self._u32 = _CLOSED  # type: ignore[assignment]
        self._index = self._locks = _CLOSED  # type: ignore[assignment]
        self._reader.close()
        if self._cw is not None:
            self._cw.close()
        self._reader = self._w = self._cw = _CLOSED  # type: ignore[assignment]
        for name in _BOUND:  # the class's methods again, which raise CacheClosed now
            self.__dict__.pop(name, None)

    @property
    def closed(self) -> bool:
        return self._q is _CLOSED

    def compiled_pair(self) -> tuple[Any, Any] | None:
        """The compiled Reader and Writer under this handle (None on the pure-Python engine):
        the node's RESP door answers its plainest requests on them in C (_core.resp_serve)."""
        return None if self._cw is None or self.closed else (self._reader, self._cw)

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        coll = f" collection={self.collection_name!r}" if self._coll else ""
        return f"<shmkv.Cache {self._region.name!r}{coll} {state}>"

    # --- reads (no locks; reader.py, or its compiled twin) --------------------------------
    def _wait_writer(self, spins: int, stripe: int) -> int:
        # A writer is between its two seq bumps: a few stores. Spin, then give up the CPU (and
        # the GIL, in case the writer is a thread of this process). A seq that stays odd that
        # long means the writer may have died there: take the stripe lock once, which waits for
        # a live writer and repairs after a dead one (the kernel released its lock).
        if spins >= READ_SPINS_BEFORE_YIELD:
            time.sleep(0)
            # A stripe lock that is free while seq stays odd means that no writer is between
            # the bumps any more (it died, or the seq is garbage): taking it repairs the
            # stripe (locks.py) now rather than after READ_SPINS_BEFORE_LOCK spins, each of
            # which may be a scan of the whole stripe (iteration).
            if not spins % READ_SPINS_BEFORE_YIELD and self._locks.try_acquire_stripe(stripe):
                self._locks.release_stripe(stripe)
        if spins and not spins % READ_SPINS_BEFORE_LOCK:
            self._locks.acquire_stripe(stripe)
            self._locks.release_stripe(stripe)
        return spins + 1

    # These three are what an open handle binds from its reader (see _bind_reads); they
    # stand for the API here and serve a handle that was closed.
    def get(self, key: str | bytes, default: Any = None) -> Any:
        """The value of key as bytes, or default if it is absent or expired."""
        return self._reader.get(key, default)

    def get_with_version(self, key: str | bytes) -> tuple[bytes, int] | None:
        """(value, version) for use with cas(), or None if absent. A key's versions are unique
        and rise with each write for 2**32 writes to its stripe (layout.py)."""
        return self._reader.get_with_version(key)  # type: ignore[no-any-return]

    def get_many(self, keys: Iterable[str | bytes]) -> dict[Any, bytes]:
        """{key: value} of the keys that are present (keys as given); each read is
        consistent on its own, not the set of them."""
        return self._reader.get_many(keys)  # type: ignore[no-any-return]

    def get_list(self, keys: Iterable[str | bytes], max_bytes: int | None = None
                 ) -> list[bytes | None]:
        """[value or None], one per key in the keys' order: get_many without the dict (what
        a node sends back, in order). Given max_bytes, the list ends early, with the value
        that takes the values' bytes past it: a caller refusing that much copies one more."""
        return self._reader.get_list(keys, max_bytes)  # type: ignore[no-any-return]

    def _contains(self, key: object) -> bool:
        return self._reader.contains(key)  # type: ignore[no-any-return]

    # --- zero-copy reads and arrays (views.py, arrays.py) ---------------------------------
    def view(self, key: str | bytes) -> ValueView:
        """`with cache.view(key) as mv:` a read-only memoryview of the value, no copy. Its
        bytes do not change inside the block, whatever other processes write; the view is
        released at the end of it (see views.py for the lifetime rule). KeyError if absent."""
        return ValueView(self, key, as_array=False)

    def view_array(self, key: str | bytes) -> ValueView:
        """`with cache.view_array(key) as a:` the array stored by set_array, as a read-only
        ndarray over the region, no copy. KeyError if absent, TypeError if not an array."""
        return ValueView(self, key, as_array=True)

    def set_array(self, key: str | bytes, arr: np.ndarray, ttl_s: float | None = None) -> None:
        """Store a numpy array (dtype, shape and data, in C order) under key."""
        k = _key_bytes(key)
        self._write(k, arrays.encode(arr, len(k)), ttl_s, None, L.KIND_ARRAY)

    def get_array(self, key: str | bytes, default: Any = None) -> Any:
        """A copy of the array stored under key by set_array, or default if absent. TypeError
        if the value was stored with set()."""
        try:
            return copy_array(self, key)
        except KeyError:
            return default

    def _pin_entry(self, key: object) -> tuple[int, int, int, int, int]:
        """Pin key's entry for a view: (pin, entry offset, value offset, value bytes, kind)."""
        k, _, stripe, _, off = self._lock_and_find(key, write=False)
        try:
            if not off or self._w.expired(off):
                raise KeyError(key)
            pin = self._region.pins.pin_locked(off)
        finally:
            self._locks.release_stripe(stripe)
        # no lock needed from here: a pinned entry is never rewritten (pins.py)
        vlen = self._u32[(off + L.E_VALUE_LEN) >> 2]
        return pin, off, off + L.ENTRY_HEADER_BYTES + len(k), vlen, self._mm[off + L.E_KIND]

    def __getitem__(self, key: str | bytes) -> bytes:
        found = self.get(key, _MISSING)
        if found is _MISSING:
            raise KeyError(key)
        return found  # type: ignore[no-any-return]

    def __contains__(self, key: object) -> bool:
        return self._contains(key)  # type: ignore[no-any-return]

    def __len__(self) -> int:
        """Entries stored in this collection, counting expired ones that no read, write or
        maintain() has reclaimed yet (as Redis's DBSIZE does); iteration skips those. Exact
        through any crash: counts change with the slots, under the stripe lock."""
        self._q[0]  # raises CacheClosed on a closed handle
        return self._region.colls.items(self._coll)

    # --- writes -------------------------------------------------------------------------
    def set(self, key: str | bytes, value: Any, ttl_s: float | None = None, *,
            nx: bool = False, xx: bool = False, keepttl: bool = False, get: bool = False) -> Any:
        """Store value under key, replacing any previous value and TTL; as Redis's SET.

        nx: only if key is absent (an expired key is absent); xx: only if it is present.
        keepttl: keep key's expiry (none if it was absent); ttl_s must then be None. Returns
        the old value (bytes, or None if absent) if get=True, whether or not it stored; else
        True or False (stored or not) with nx or xx; else None. WrongType (nothing stored) if
        get=True meets an array; ValueError for nx with xx, or keepttl with a ttl_s."""
        if nx or xx or keepttl or get:  # (truth tests: the cheapest check for a plain set)
            return commands.set_with_options(self, key, value, ttl_s, nx, xx, keepttl, get)
        self._write(key, value, ttl_s, None)
        return None

    def set_many(self, mapping: Mapping[str | bytes, Any], ttl_s: float | None = None) -> None:
        """set() every pair. Every key and value is checked before the first is stored; each
        set is atomic, the batch is not."""
        pairs = [(_key_bytes(k), _value_bytes(v)) for k, v in mapping.items()]
        if ttl_s is not None:
            _expires_at(ttl_s, 0)
        for key, value in pairs:
            self.set(key, value, ttl_s)

    def __setitem__(self, key: str | bytes, value: Any) -> None:
        self.set(key, value)

    # --- read-modify-write commands (commands.py), atomic under the key's stripe lock --------
    def getdel(self, key: str | bytes) -> bytes | None:
        """Delete key and return the value it had; None if absent. WrongType on an array."""
        return commands.getdel(self, key)

    def getex(self, key: str | bytes, ttl_s: float | None = None, *,
              persist: bool = False) -> bytes | None:
        """The value of key (None if absent), giving it a TTL of ttl_s from now, or none with
        persist=True, or leaving its TTL alone with neither. WrongType on an array."""
        return commands.getex(self, key, ttl_s, persist)

    def append(self, key: str | bytes, value: Any) -> int:
        """Append value to key's value (an absent key starts empty); its TTL is kept. Returns
        the new length in bytes. WrongType on an array."""
        return commands.append(self, key, value)

    def rename(self, old: str | bytes, new: str | bytes, *, nx: bool = False) -> bool:
        """Move old's value and TTL to new, replacing new. KeyError if old is absent. With
        nx=True, nothing is done and False returned if new exists (also when new is old);
        else True. Atomic for writers, which wait on both keys' stripe locks; a reader takes
        no lock and may see the two keys change one after the other."""
        return commands.rename(self, old, new, nx)

    def strlen(self, key: str | bytes) -> int:
        """Length in bytes of key's value, 0 if absent. WrongType on an array."""
        return commands.strlen(self, key)

    def type(self, key: str | bytes) -> str | None:
        """"string" for a value stored by set(), "shmkv-array" for set_array's, None if
        absent."""
        return commands.type_of(self, key)

    def cas(self, key: str | bytes, value: Any, version: int,
            ttl_s: float | None = None) -> bool:
        """Store value only if key still has `version` (from get_with_version). True if it did."""
        if isinstance(version, bool) or not isinstance(version, int):
            raise TypeError("version must be the int returned by get_with_version")
        return self._write(key, value, ttl_s, version)

    def _lock_and_find(self, key: object,
                       write: bool = True) -> tuple[bytes, int, int, int, int]:
        """Take the key's stripe lock and find it: (key bytes, hash, stripe, position, entry
        offset or 0). The caller must release_stripe(stripe). A write also checks the fence."""
        k = _key_bytes(key)
        h = xxh3_64(k, self._seed)
        stripe = h & self._smask
        self._locks.acquire_stripe(stripe)
        try:
            if write:
                self._check_fence()
            if self._coll:
                self._w.check_collection_locked()
            pos, old = self._index.find_locked(stripe, h, k, self._coll)
        except BaseException:
            self._locks.release_stripe(stripe)
            raise
        return k, h, stripe, pos, old

    def _check_fence(self) -> None:
        """Refuse to write once the region's write fence has passed (layout.py:
        writable_until_ns, 0 = none): set by replication, checked by both engines under the
        key's lock, so that no write lands after the moment a lease ends."""
        if self._fenced():
            primary = bytes(self._mm[L.H_PRIMARY:L.H_PRIMARY + L.PRIMARY_BYTES]).rstrip(b"\0")
            if primary:  # written by the replica's node before it set the fence
                raise ReadOnlyReplica(f"this region is a replica of "
                                      f"{primary.decode(errors='replace')}: write to its primary")
            raise ReadOnlyReplica("writes to this region are fenced (its write lease ended, or "
                                 "it is a replica): write to the current primary")

    def _fenced(self) -> bool:
        until = self._q[_WRITABLE_UNTIL]
        return bool(until) and self._clock() >= until

    def _write(self, key: object, value: object, ttl_s: object, if_version: int | None,
               kind: int = L.KIND_BYTES) -> bool:
        # every argument is checked before the lock is taken (array values by set_array)
        v = _value_bytes(value) if kind == L.KIND_BYTES else value
        exp = 0 if ttl_s is None else _expires_at(ttl_s, self._clock())
        k, h, stripe, pos, old = self._lock_and_find(key)
        try:
            if if_version is not None:
                if not old or self._w.expired(old) or self._w.version_at(old, stripe) != if_version:
                    return False
            self._w.put_locked(stripe, h, k, v, exp, pos, old, kind)  # type: ignore[arg-type]
            return True
        finally:
            self._locks.release_stripe(stripe)

    def incr(self, key: str | bytes, delta: int = 1) -> int:
        """Add delta to the integer stored at key (absent counts as 0) and return the result.
        Atomic across processes. The value is stored as decimal ASCII and read as Redis reads
        it (no "+", no leading zeros, within int64); its TTL is kept."""
        return self._incr(key, delta)

    def _incr(self, key: object, delta: int) -> int:
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError("delta must be an int")
        k, h, stripe, pos, old = self._lock_and_find(key)
        try:
            current, exp = 0, 0
            if old and not self._w.expired(old):
                raw = self._w.value_at(old)
                current = int(raw) if _DECIMAL.fullmatch(raw) else _INT64_MAX + 1
                if current > _INT64_MAX or current < _INT64_MIN:
                    raise NotAnInteger(f"value at {k!r} is not a decimal integer; incr() needs"
                                       " one (set it to a number or delete it first)")
                exp = self._q[(old + L.E_EXPIRES_AT) >> 3]
            result = current + delta
            if not _INT64_MIN <= result <= _INT64_MAX:
                raise NotAnInteger(f"incr would overflow a signed 64-bit integer at {k!r}")
            self._w.put_locked(stripe, h, k, str(result).encode(), exp, pos, old)
            return result
        finally:
            self._locks.release_stripe(stripe)

    def _expire_pass(self) -> None:
        """What the compiled writer calls when its sampling of slots saw an expired entry: the
        writers' expiry pass, done here (writer.py does the same in its in-place branch). It
        is opportunistic: a busy arena lock skips it rather than fail the write just done."""
        try:
            with self._locks.arena_held:
                self._region.evictor.expire_sample_locked(WRITER_EXPIRY_SLOTS, -1, 0)
                self._flush_counts_locked()
        except LockTimeout:
            pass

    def delete(self, key: str | bytes) -> bool:
        """Remove key; True if it was present (and not expired)."""
        _, _, stripe, pos, old = self._lock_and_find(key)
        try:
            if not old:
                return False
            live = not self._w.expired(old)
            self._w.remove_locked(stripe, pos, old, L.H_DELETES if live else L.H_EXPIRATIONS)
            return live
        finally:
            self._locks.release_stripe(stripe)

    def __delitem__(self, key: str | bytes) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def clear(self) -> int:
        """Delete every key of this collection; returns how many were removed."""
        self._check_fence()
        return self._w.delete_collection_entries(self._coll)

    # --- events (events.py) ---------------------------------------------------------------
    def publish(self, channel: str | bytes, message: Any) -> None:
        """Send message to the subscribers of channel, through the region: the node forwards
        it (like every keyspace event) to its subscribers. Fire and forget, as in Redis."""
        data = _value_bytes(message)
        k, h, stripe, _, _ = self._lock_and_find(channel, write=False)  # not a key's write
        try:
            emit_locked(self._region, stripe, L.EV_MESSAGE, self._coll, k, data)
        finally:
            self._locks.release_stripe(stripe)

    # --- expiry ------------------------------------------------------------------------
    def ttl(self, key: str | bytes) -> float | None:
        """Seconds until key expires; None if it has no expiry or does not exist (tell the two
        apart with `key in cache`)."""
        _, _, stripe, _, off = self._lock_and_find(key, write=False)
        try:
            exp = self._q[(off + L.E_EXPIRES_AT) >> 3] if off else 0
            left = exp - self._clock()
            return left / 1e9 if exp and left > 0 else None
        finally:
            self._locks.release_stripe(stripe)

    def expire(self, key: str | bytes, ttl_s: float) -> bool:
        """Give key a TTL of ttl_s seconds from now; False if the key does not exist."""
        exp = _expires_at(ttl_s, self._clock())
        return self._set_expiry(key, exp)

    def persist(self, key: str | bytes) -> bool:
        """Remove key's TTL; False if the key does not exist."""
        return self._set_expiry(key, 0)

    def _set_expiry(self, key: object, exp: int) -> bool:
        _, _, stripe, _, off = self._lock_and_find(key)
        try:
            if not off or self._w.expired(off):
                return False
            # one aligned 8-byte store: a reader sees the old or the new time, never a mix
            self._q[(off + L.E_EXPIRES_AT) >> 3] = exp
            self._q[self._seq0 + stripe * L.STRIPE_Q + _CHANGES] += 1
            return True
        finally:
            self._locks.release_stripe(stripe)


_CHANGES = L.S_CHANGES >> 3
_WRITABLE_UNTIL = L.H_WRITABLE_UNTIL >> 3
