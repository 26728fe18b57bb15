"""The collection table: named, isolated key spaces inside one region (format in layout.py).

A collection is a record index (stored in every entry, and mixed into the key's hash seed) plus
a generation. Record 0 is the default collection, named "". Renaming touches only the record,
never the entries. Dropping bumps the generation first, so that handles still holding the old
one fail on write with CollectionNotFound instead of writing into a dead collection, then the
caller deletes the entries, then the record is freed. Records are handed out round-robin, so a
freed index is reused as late as possible.

Every function here needs the arena lock, except the item counts: a collection's entries are
counted per stripe in the counts area (layout.py), changed with their slots under the stripe
lock (`count_locked`), so that they stay exact through any crash.

Records are shared memory and may hold anything. Every path that decides something from a record
(is it live, which index is free, what is its name) reads it through `_checked`: a state that is
not one of ours, a name longer than MAX_COLLECTION_NAME_BYTES or not UTF-8, raise CorruptRegion.
`read` stays
raw, for event readers that must never stop on a bad record (they print a damaged name with
replacement characters).
"""

from __future__ import annotations

import struct

from . import layout as L
from .errors import CollectionExists, CollectionNotFound, CorruptRegion, TooManyCollections

COLL_DROPPING = 2
_STATES = (L.COLL_FREE, L.COLL_LIVE, COLL_DROPPING)
_U32 = struct.Struct("<I")


def check_collection_name(name: object) -> bytes:
    if not isinstance(name, str):
        raise TypeError(f"collection name must be a str, not {type(name).__name__}")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("collection name is not valid Unicode (it holds a lone surrogate)") \
            from None
    if not raw or len(raw) > L.MAX_COLLECTION_NAME_BYTES or "\0" in name:
        raise ValueError(
            f"collection name must be 1-{L.MAX_COLLECTION_NAME_BYTES} UTF-8 bytes without NUL"
        )
    return raw


class CollectionTable:
    def __init__(self, mm, u32: memoryview, layout: L.Layout) -> None:
        self._mm = mm
        self._u32 = u32
        self._base = layout.collections_offset
        self.max = layout.max_collections
        self._counts0 = layout.counts_offset >> 2  # u32 index of counts[stripe 0][coll 0]
        self._counts_end = self._counts0 + layout.n_stripes * self.max
        self._max_items = layout.index_slots

    def _rec(self, idx: int) -> int:
        return self._base + idx * L.COLLECTION_BYTES

    def read(self, idx: int) -> tuple[int, int, bytes]:
        """(generation, state, name) of record idx, as stored (unchecked)."""
        gen, state, name_len, name = L.COLLECTION.unpack_from(self._mm, self._rec(idx))
        return gen, state, name[:name_len]

    def damage(self, idx: int) -> str | None:
        """What is wrong with record idx, or None if it is well-formed."""
        _, state, name_len, name = L.COLLECTION.unpack_from(self._mm, self._rec(idx))
        if state not in _STATES or name_len > L.MAX_COLLECTION_NAME_BYTES:
            return f"record {idx} holds state {state} and a name of {name_len} bytes"
        if idx == 0 and (state != L.COLL_LIVE or name_len):
            return f"record 0 (the default collection) holds state {state}, name {name!r}"
        if state != L.COLL_FREE:
            try:
                name[:name_len].decode("utf-8")
            except UnicodeDecodeError:
                return f"record {idx} holds a name that is not UTF-8 ({name[:name_len]!r})"
        return None

    def _checked(self, idx: int) -> tuple[int, int, bytes]:
        """(generation, state, name) of record idx, which must be well-formed."""
        what = self.damage(idx)
        if what:
            raise _corrupt(what)
        return self.read(idx)

    def reset_damaged_locked(self) -> tuple[set[int], int]:
        """Free every malformed record, its generation bumped so that handles on it fail, and
        make record 0 the default collection again: (indexes of the live collections, how many
        records were reset). For repair: the caller drops the entries of collections that are
        not live, which a reused record would otherwise inherit."""
        live, reset = {0}, 0
        for idx in range(self.max):
            if self.damage(idx):
                gen = self.read(idx)[0]
                if idx:
                    self._write_locked(idx, (gen + 1) & 0xFFFF, L.COLL_FREE, b"")
                else:
                    self._write_locked(0, gen, L.COLL_LIVE, b"")
                reset += 1
            elif idx and self.read(idx)[1] == L.COLL_LIVE:
                live.add(idx)
        return live, reset

    def is_live(self, idx: int, gen: int) -> bool:
        g, state, _ = self._checked(idx)
        return state == L.COLL_LIVE and g == gen

    # --- item counts (stripe lock) -------------------------------------------------------
    def items(self, idx: int) -> int:
        """Entries of collection idx (expired ones not yet reclaimed included): its column of
        the counts area. No lock: each stripe's count is exact, the sum is a moment's view."""
        items = sum(self._u32[self._counts0 + idx:self._counts_end:self.max])
        if items > self._max_items:  # shared memory may hold anything: no slot, no entry
            raise _corrupt(f"the counts area says collection {idx} holds {items} entries, "
                           f"more than the index's {self._max_items} slots")
        return items

    def stripe_counts(self, stripe: int) -> memoryview:
        """The row of counts of one stripe, indexed by collection (stripe lock to write)."""
        start = self._counts0 + stripe * self.max
        return self._u32[start:start + self.max]

    def count_locked(self, stripe: int, idx: int, delta: int) -> None:
        """Count an entry of collection idx in or out of stripe, with its slot (stripe lock,
        between the seq bumps)."""
        if idx >= self.max:  # idx comes from an entry, which may be garbage: check it first
            raise _corrupt(f"an entry names collection {idx}, beyond the table's {self.max} "
                           "records")
        at = self._counts0 + stripe * self.max + idx
        self._u32[at] = (self._u32[at] + delta) & 0xFFFFFFFF

    def _write_locked(self, idx: int, gen: int, state: int, name: bytes) -> None:
        L.COLLECTION.pack_into(self._mm, self._rec(idx), gen, state, len(name), name)

    def init_default_locked(self) -> None:
        self._write_locked(0, 0, L.COLL_LIVE, b"")

    def live(self) -> list[tuple[int, int, bytes]]:
        """(index, generation, name) of every live named collection."""
        out = []
        for idx in range(1, self.max):
            gen, state, name = self._checked(idx)
            if state == L.COLL_LIVE:
                out.append((idx, gen, name))
        return out

    def find(self, name: bytes) -> tuple[int, int] | None:
        for idx, gen, existing in self.live():
            if existing == name:
                return idx, gen
        return None

    def create_locked(self, name: bytes) -> tuple[int, int]:
        start = _U32.unpack_from(self._mm, L.H_NEXT_COLLECTION)[0]
        for step in range(self.max - 1):
            idx = 1 + (start + step) % (self.max - 1)
            gen, state, _ = self._checked(idx)
            if state == L.COLL_FREE:
                gen = (gen + 1) & 0xFFFF
                self._write_locked(idx, gen, L.COLL_LIVE, name)
                _U32.pack_into(self._mm, L.H_NEXT_COLLECTION, idx % (self.max - 1))
                return idx, gen
        raise TooManyCollections(
            f"all {self.max - 1} collections are in use; drop one or create the region with a "
            "larger max_collections"
        )

    def rename_locked(self, old: bytes, new: bytes) -> None:
        found = self.find(old)
        if found is None:
            raise CollectionNotFound(f"no collection {old.decode()!r}")
        if self.find(new) is not None:
            raise CollectionExists(f"collection {new.decode()!r} already exists")
        idx, gen = found
        self._write_locked(idx, gen, L.COLL_LIVE, new)

    def begin_drop_locked(self, name: bytes) -> int:
        found = self.find(name)
        if found is None:
            raise CollectionNotFound(f"no collection {name.decode()!r}")
        idx, gen = found
        self._write_locked(idx, (gen + 1) & 0xFFFF, COLL_DROPPING, name)
        return idx

    def end_drop_locked(self, idx: int) -> None:
        gen, _, _ = self._checked(idx)
        self._write_locked(idx, gen, L.COLL_FREE, b"")


def _corrupt(what: str) -> CorruptRegion:
    return CorruptRegion(f"collection table: {what}; the region is corrupt: run `shmkv doctor "
                         "--repair`, or unlink the region and create it again")
