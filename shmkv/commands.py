"""The read-modify-write commands of the Cache API that Redis clients expect: SET with its
NX/XX/KEEPTTL/GET options, GETDEL, GETEX, APPEND, RENAME(NX), STRLEN and TYPE.

Each is a function over a `Cache`'s internals, bound as a method of Cache (whose stubs carry
the API docstrings). Each runs whole under the key's stripe lock, so it is atomic across
processes as set() and incr() are: what it reads (the old value, its expiry, whether the key is
live) is what it acts on. They live in the pure-Python write path only: they are rare next to
get and set, and a compiled Writer hands any call it does not know (a set with an option) here
before it has changed anything. An expired key counts as absent everywhere.

Values stored by set_array are not strings: the commands that read a value as a string
(set(get=True), getdel, getex, append, strlen) raise WrongType on them, as Redis does for a
string command on a list, and change nothing; plain get() still returns an array's raw bytes.

rename takes two stripe locks, in increasing stripe order (locks.py's lock rules). It stores
the value under the new key before it removes the old key, so that a failure (RegionFull)
leaves the old key as it was; keyspace events tell it as a SET of the new key, then a DEL of
the old one (EV_RENAME stays reserved: the node's event reader knows no such record).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import arrays
from . import layout as L
from .coerce import expires_at_ns, key_bytes, value_buffer
from .errors import WrongType
from .hashing import xxh3_64

if TYPE_CHECKING:
    from .cache import Cache

TYPE_STRING = "string"
TYPE_ARRAY = "shmkv-array"
_CHANGES = L.S_CHANGES >> 3


# --- helpers (the caller holds the key's stripe lock) -----------------------------------------
def _live(c: Cache, off: int) -> bool:
    return bool(off) and not c._w.expired(off)


def _is_array(c: Cache, off: int) -> bool:
    return c._mm[off + L.E_KIND] & L.KIND_MASK == L.KIND_ARRAY


def _string_at_locked(c: Cache, off: int, key: bytes) -> bytes:
    if _is_array(c, off):
        raise WrongType(f"the value at {key!r} is an array (set_array); use get_array or "
                        "view_array, or delete it first")
    return c._w.value_at(off)


def _expiry_at(c: Cache, off: int) -> int:
    return int(c._q[(off + L.E_EXPIRES_AT) >> 3])


def _set_expiry_locked(c: Cache, stripe: int, off: int, exp: int) -> None:
    # as Cache._set_expiry: one aligned 8-byte store, which a reader sees whole
    c._q[(off + L.E_EXPIRES_AT) >> 3] = exp
    c._q[c._seq0 + stripe * L.STRIPE_Q + _CHANGES] += 1


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {type(value).__name__}")
    return value


# --- commands ---------------------------------------------------------------------------------
def set_with_options(c: Cache, key: object, value: object, ttl_s: object, nx: object,
                     xx: object, keepttl: object, get: object) -> Any:
    """Cache.set with any of its options (the return rules are in Cache.set's docstring)."""
    nx, xx = _flag("nx", nx), _flag("xx", xx)
    keepttl, get = _flag("keepttl", keepttl), _flag("get", get)
    if nx and xx:
        raise ValueError("nx and xx exclude each other (only if absent, only if present)")
    if keepttl and ttl_s is not None:
        raise ValueError("keepttl keeps the key's expiry: pass no ttl_s with it")
    v = value_buffer(value)
    exp = 0 if ttl_s is None else expires_at_ns(ttl_s, c._clock())
    k, h, stripe, pos, old = c._lock_and_find(key)
    try:
        live = _live(c, old)
        previous = _string_at_locked(c, old, k) if get and live else None
        stored = not (nx and live or xx and not live)
        if stored:
            if keepttl and live:
                exp = _expiry_at(c, old)
            c._w.put_locked(stripe, h, k, v, exp, pos, old)
    finally:
        c._locks.release_stripe(stripe)
    if get:
        return previous
    return stored if nx or xx else None


def getdel(c: Cache, key: object) -> bytes | None:
    k, _, stripe, pos, off = c._lock_and_find(key)
    try:
        if not off:
            return None
        if c._w.expired(off):  # reclaimed now, counted as an expiry (as delete() does)
            c._w.remove_locked(stripe, pos, off, L.H_EXPIRATIONS)
            return None
        value = _string_at_locked(c, off, k)
        c._w.remove_locked(stripe, pos, off, L.H_DELETES)
        return value
    finally:
        c._locks.release_stripe(stripe)


def getex(c: Cache, key: object, ttl_s: object, persist: object) -> bytes | None:
    persist = _flag("persist", persist)
    if persist and ttl_s is not None:
        raise ValueError("getex takes a ttl_s or persist=True, not both")
    exp = None if ttl_s is None else expires_at_ns(ttl_s, c._clock())
    k, _, stripe, _, off = c._lock_and_find(key)
    try:
        if not _live(c, off):
            return None
        value = _string_at_locked(c, off, k)
        if exp is not None or persist:
            _set_expiry_locked(c, stripe, off, exp or 0)
        return value
    finally:
        c._locks.release_stripe(stripe)


def append(c: Cache, key: object, value: object) -> int:
    tail = value_buffer(value)
    k, h, stripe, pos, off = c._lock_and_find(key)
    try:
        live = _live(c, off)
        head = _string_at_locked(c, off, k) if live else b""
        joined = head + bytes(tail)
        # put_locked raises ValueTooLarge or RegionFull before it changes anything
        c._w.put_locked(stripe, h, k, joined, _expiry_at(c, off) if live else 0, pos, off)
        return len(joined)
    finally:
        c._locks.release_stripe(stripe)


def strlen(c: Cache, key: object) -> int:
    k, _, stripe, _, off = c._lock_and_find(key, write=False)  # a read: a replica answers
    try:
        if not _live(c, off):
            return 0
        if _is_array(c, off):
            _string_at_locked(c, off, k)  # raises WrongType
        return int(c._u32[(off + L.E_VALUE_LEN) >> 2])
    finally:
        c._locks.release_stripe(stripe)


def type_of(c: Cache, key: object) -> str | None:
    _, _, stripe, _, off = c._lock_and_find(key, write=False)  # a read: a replica answers
    try:
        if not _live(c, off):
            return None
        return TYPE_ARRAY if _is_array(c, off) else TYPE_STRING
    finally:
        c._locks.release_stripe(stripe)


def rename(c: Cache, old: object, new: object, nx: object) -> bool:
    nx = _flag("nx", nx)
    k_old, k_new = key_bytes(old), key_bytes(new)
    h_old, h_new = xxh3_64(k_old, c._seed), xxh3_64(k_new, c._seed)
    s_old, s_new = h_old & c._smask, h_new & c._smask
    locks = c._locks
    # Two stripes: lower stripe first, as every holder of several stripe locks does
    # (locks.py), so that two renames in opposite directions cannot wait for each other.
    first, second = min(s_old, s_new), max(s_old, s_new)
    locks.acquire_stripe(first)
    try:
        if second != first:
            locks.acquire_stripe(second)
        try:
            return _rename_locked(c, k_old, h_old, s_old, k_new, h_new, s_new, nx)
        finally:
            if second != first:
                locks.release_stripe(second)
    finally:
        locks.release_stripe(first)


def _rename_locked(c: Cache, k_old: bytes, h_old: int, s_old: int,
                   k_new: bytes, h_new: int, s_new: int, nx: bool) -> bool:
    if c._coll:
        c._w.check_collection_locked()
    index = c._index
    pos_old, off_old = index.find_locked(s_old, h_old, k_old, c._coll)
    if not _live(c, off_old):
        raise KeyError(f"cannot rename {k_old!r}: no such key (absent or expired)")
    if k_old == k_new:  # as Redis: RENAME onto itself succeeds, RENAMENX says the key exists
        return not nx
    pos_new, off_new = index.find_locked(s_new, h_new, k_new, c._coll)
    if nx and _live(c, off_new):
        return False
    kind = c._mm[off_old + L.E_KIND] & L.KIND_MASK
    value: Any = c._w.value_at(off_old)
    if kind == L.KIND_ARRAY and (len(k_old) - len(k_new)) % 8:
        value = arrays.encode(_array_of(value), len(k_new))  # its padding follows the key
    exp = _expiry_at(c, off_old)
    c._w.put_locked(s_new, h_new, k_new, value, exp, pos_new, off_new, kind)
    # Making room for the new entry may have evicted or moved entries of s_old when it is the
    # same stripe, the old key's included: look it up again.
    pos_old, off_old = index.find_locked(s_old, h_old, k_old, c._coll)
    if off_old:
        c._w.remove_locked(s_old, pos_old, off_old, L.H_DELETES)
    return True


def _array_of(value: bytes) -> np.ndarray:
    dtype, shape, data_offset = arrays.decode(value)
    count = 1
    for n in shape:
        count *= n
    if not count or not dtype.itemsize:
        return np.zeros(shape, dtype)
    return np.frombuffer(value, dtype=dtype, offset=data_offset).reshape(shape)
