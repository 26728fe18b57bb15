"""The read path in pure Python: the reference for the compiled `shmkv._core.Reader`, and the
engine wherever that extension is missing (backend.py chooses). Both take the same arguments
and provide the same methods; tests/unit/test_core.py holds them to each other.

Reads take no lock. A get hashes the key, reads its stripe's seq, probes the sub-table, copies
the value out of the arena, and re-reads seq: if seq was odd or has changed, a writer touched
the stripe meanwhile and the read is retried. A writer frees a block only after its seq bump,
and only writers of the same stripe free a stripe's entries, so whatever a reader copied from a
block that was freed and reused under it is thrown away by that check.

This is the whole cost of a get, so it is written for the interpreter (measured in
instructions with callgrind, the machine being too noisy for timings): every constant comes
from one tuple, per-stripe offsets from a precomputed table, the entry's fields from one struct
unpack; arithmetic on 64-bit ints (which allocates) is kept to the hash and the slot.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any

from . import layout as L
from .hashing import xxh3_64

READ_SPINS_BEFORE_YIELD = 64  # as in the compiled reader: spin, then ask wait_writer
_MISSING = object()
_NO_LIMIT = 1 << 64  # copy_below for a value of any length
# What a reader needs of an entry, in one unpack at E_EXPIRES_AT: expires_at_ns, version,
# value_len, key_coll (key_len | kind bits << 8 | collection << 16)
_ENTRY_READ = struct.Struct("<QIII")
_KEY_COLL_MASK = L.KEY_COLL_MASK


class Reader:
    """Lock-free reads of one collection of a region (see the module docstring)."""

    def __init__(self, buffer: Any, n_stripes: int, slots_per_stripe: int, stripes_offset: int,
                 index_offset: int, access_offset: int, arena_offset: int, arena_bytes: int,
                 seed: int, coll: int, clock: Callable[[], int],
                 coerce_key: Callable[[object], bytes],
                 wait_writer: Callable[[int, int], int], corrupt_exc: type[Exception]) -> None:
        self._q = memoryview(buffer).cast("Q")
        slot0 = index_offset >> 3
        stripes = [((stripes_offset >> 3) + s * L.STRIPE_Q, slot0 + s * slots_per_stripe)
                   for s in range(n_stripes)]
        self._counts = [0, 0]  # hits, misses not yet taken (take_counts)
        self._coerce_key = coerce_key
        self._wait_writer = wait_writer
        self._corrupt_exc = corrupt_exc
        self._hot = (self._q, buffer, seed ^ coll, n_stripes - 1, stripes, slots_per_stripe,
                     coll << 16, arena_offset, arena_offset + arena_bytes, clock,
                     access_offset - slot0, self._counts)

    def _read(self, key: object, default: Any, versioned: bool,
              copy_below: int = _NO_LIMIT) -> Any:
        """The value of a live entry (with its version if asked), read consistently, or
        default; a value of copy_below bytes or more is not copied: its length instead."""
        if type(key) is not bytes or len(key) > L.MAX_KEY_BYTES:
            key = self._coerce_key(key)
        q, mm, seed, smask, stripes, per, key_coll, abase, aend, clock, access0, counts = \
            self._hot
        h = xxh3_64(key, seed)
        seq_at, base = stripes[h & smask]
        tag = h >> 32
        klen = len(key)
        key_coll |= klen
        spins = 0
        while True:
            s1 = q[seq_at]
            found = default
            i = tag % per
            left = per  # bounded: a read torn by a writer must not loop forever
            while left:
                v = q[base + i]
                if not v:
                    break
                if v >> 32 == tag:
                    off = (v & 0xFFFFFFFF) * 8 + abase
                    try:  # free unless raised (CPython 3.11+), unlike a check of the ref here
                        exp, ver, vlen, kc = _ENTRY_READ.unpack_from(mm, off + L.E_EXPIRES_AT)
                    except struct.error:  # the slot's ref points past the mapping: garbage
                        raise self._corrupt_exc(
                            f"index stripe {h & smask}, slot {i} holds {v:#x}, whose ref is "
                            "outside the arena: the region is corrupt; run `shmkv doctor "
                            "--repair`") from None
                    if kc & _KEY_COLL_MASK == key_coll:
                        start = off + L.ENTRY_HEADER_BYTES + klen
                        # bounds first: a block reused under us may hold any bytes
                        if start + vlen <= aend and mm[start - klen:start] == key:
                            if not exp or exp > clock():
                                if vlen >= copy_below:
                                    found = vlen
                                else:
                                    found = mm[start:start + vlen]
                                    if versioned:
                                        found = (found, ver << 8 | h & smask)
                            break
                i = (i + 1) % per
                left -= 1
            if q[seq_at] == s1 and not s1 & 1:
                if found is default:
                    counts[1] += 1
                else:
                    counts[0] += 1
                    # mark the entry read, for the segmented LRU: its slot's byte, outside the
                    # arena, written only when clear so that hot entries do not bounce lines
                    at = access0 + base + i
                    if not mm[at]:
                        mm[at] = 1
                return found
            if spins < READ_SPINS_BEFORE_YIELD:
                spins += 1
            else:
                spins = self._wait_writer(spins, h & smask)

    def get(self, key: object, default: Any = None) -> Any:
        return self._read(key, default, False)

    def get_with_version(self, key: object) -> tuple[bytes, int] | None:
        return self._read(key, None, True)  # type: ignore[no-any-return]

    def get_below(self, key: object, limit_bytes: int, versioned: bool) -> Any:
        """get (versioned: get_with_version), but the length (an int) of a value of
        limit_bytes or more, not a copy: for the node's zero-copy sends."""
        return self._read(key, None, versioned, limit_bytes)

    def contains(self, key: object) -> bool:
        return self._read(key, _MISSING, False) is not _MISSING

    def get_many(self, keys: Iterable[Any]) -> dict[Any, bytes]:
        found = {}
        for key in keys:
            value = self._read(key, _MISSING, False)
            if value is not _MISSING:
                found[key] = value
        return found

    def get_list(self, keys: Iterable[Any], max_bytes: int | None = None
                 ) -> list[bytes | None]:
        if max_bytes is None:
            return [self._read(key, None, False) for key in keys]
        if max_bytes < 0:
            raise ValueError("get_list(): max_bytes must be >= 0 or None")
        found: list[bytes | None] = []
        total_bytes = 0
        for key in keys:
            value = self._read(key, None, False)
            found.append(value)
            if value is not None:
                total_bytes += len(value)
                if total_bytes > max_bytes:  # this value is the last one copied
                    break
        return found

    def take_counts(self) -> tuple[int, int]:
        """(hits, misses) since the last call."""
        hits, misses = self._counts
        self._counts[0] = self._counts[1] = 0
        return hits, misses

    def close(self) -> None:
        self._q.release()
