"""Listing a collection's keys: iteration, keys() and a stripe at a time (what the node's scan
is made of). A mixin of Cache (cache.py); it uses the handle's region, index and locks as
Cache sets them up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from . import layout as L

if TYPE_CHECKING:
    from .index import Index
    from .locks import RegionLocks

# Lock-free listings of a stripe tried before it is listed under its lock (_stripe_keys)
STRIPE_LIST_TRIES = 8


class Listing:
    """__iter__, keys: see each method."""

    # set by Cache.__init__
    _q: memoryview
    _u32: memoryview
    _mm: Any
    _index: Index
    _locks: RegionLocks
    _clock: Any
    _coll: int
    _smask: int
    _seq0: int
    _aend: int

    def __iter__(self) -> Iterator[bytes]:
        """Keys of this collection, as bytes; a snapshot taken one stripe at a time."""
        for stripe in range(self._smask + 1):
            yield from self._stripe_keys(stripe)

    def keys(self) -> list[bytes]:
        return list(self)

    def _stripe_keys(self, stripe: int) -> list[bytes]:
        # Lock-free while the stripe stays still for a whole listing (a seqlock read); a
        # stripe that writers keep changing (a listing of a large one takes a millisecond of
        # Python) is listed under its lock, with writers held off, so that a scan ends under
        # any write load. Taking the lock also repairs a stripe whose writer died (locks.py).
        seq_at = self._seq0 + stripe * L.STRIPE_Q
        for _ in range(STRIPE_LIST_TRIES):
            s1 = self._q[seq_at]
            if not s1 & 1:
                keys = self._list_stripe(stripe)
                if self._q[seq_at] == s1:
                    return keys
            time.sleep(0)
        self._locks.acquire_stripe(stripe)
        try:
            return self._list_stripe(stripe)
        finally:
            self._locks.release_stripe(stripe)

    def _list_stripe(self, stripe: int) -> list[bytes]:
        q, u32, mm = self._q, self._u32, self._mm
        keys = []
        now = self._clock()
        for _, off in self._index.slots(stripe):
            key_coll = u32[(off + L.E_KEY_COLL) >> 2]
            klen = key_coll & L.KEY_LEN_MASK
            exp = q[(off + L.E_EXPIRES_AT) >> 3]
            if key_coll >> 16 == self._coll and (not exp or exp > now) \
                    and off + L.ENTRY_HEADER_BYTES + klen <= self._aend:
                keys.append(mm[off + L.ENTRY_HEADER_BYTES:off + L.ENTRY_HEADER_BYTES + klen])
        return keys

