"""The collection table: named, isolated key spaces inside one region (format in layout.py).

A collection is a record index (stored in every entry, and mixed into the key's hash seed) plus
a generation. Record 0 is the default collection, named "". Renaming touches only the record,
never the entries. Dropping bumps the generation first, so that handles still holding the old
one fail on write with CollectionNotFound instead of writing into a dead collection, then the
caller deletes the entries, then the record is freed. Records are handed out round-robin, so a
freed index is reused as late as possible.

Every function here needs the arena lock.

Records are shared memory and may hold anything. Every path that decides something from a record
(is it live, which index is free, what is its name) reads it through `_checked`: a state that is
not one of ours, a name longer than MAX_COLLECTION_NAME_BYTES or not UTF-8, raise CorruptRegion.
An item count is checked where it is read: no collection can hold more entries than the arena
holds blocks. Writes go on past a bad count (it costs no data), never below 0. `read` stays
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
    def __init__(self, mm, q: memoryview, layout: L.Layout) -> None:
        self._mm = mm
        self._q = q
        self._base = layout.collections_offset
        self.max = layout.max_collections
        self._max_items = layout.arena_bytes // L.MIN_BLOCK_BYTES  # every entry has a block

    def _rec(self, idx: int) -> int:
        return self._base + idx * L.COLLECTION_BYTES

    def read(self, idx: int) -> tuple[int, int, int, bytes]:
        """(generation, state, items, name) of record idx, as stored (unchecked)."""
        gen, state, name_len, items, name = L.COLLECTION.unpack_from(self._mm, self._rec(idx))
        return gen, state, items, name[:name_len]

    def damage(self, idx: int) -> str | None:
        """What is wrong with record idx, or None if it is well-formed."""
        _, state, name_len, _, name = L.COLLECTION.unpack_from(self._mm, self._rec(idx))
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
        gen, state, _, name = self.read(idx)
        return gen, state, name

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
                    self._write_locked(idx, (gen + 1) & 0xFFFF, L.COLL_FREE, 0, b"")
                else:
                    self._write_locked(0, gen, L.COLL_LIVE, 0, b"")
                reset += 1
            elif idx and self.read(idx)[1] == L.COLL_LIVE:
                live.add(idx)
        return live, reset

    def is_live(self, idx: int, gen: int) -> bool:
        g, state, _ = self._checked(idx)
        return state == L.COLL_LIVE and g == gen

    def items(self, idx: int) -> int:
        items = self._q[(self._rec(idx) + L.C_ITEMS) >> 3]
        if items > self._max_items:
            raise _corrupt(f"record {idx} counts {items} items")
        return items

    def add_items_locked(self, idx: int, delta: int) -> None:
        # idx comes from an entry, which may be garbage too: check it before writing there
        if idx >= self.max:
            raise _corrupt(f"an entry names collection {idx}, beyond the table's {self.max} "
                           "records")
        at = (self._base + idx * L.COLLECTION_BYTES + L.C_ITEMS) >> 3
        items = self._q[at] + delta
        if 0 <= items <= self._max_items:
            self._q[at] = items
        elif items < 0:
            # Off by the one operation a dead writer was in (repair.py): harmless, and no
            # reason to fail a write; `shmkv doctor --repair` recounts. A count beyond what
            # the arena can hold is garbage, left for items() to refuse.
            self._q[at] = 0

    def _write_locked(self, idx: int, gen: int, state: int, items: int, name: bytes) -> None:
        L.COLLECTION.pack_into(self._mm, self._rec(idx), gen, state, len(name), items, name)

    def init_default_locked(self) -> None:
        self._write_locked(0, 0, L.COLL_LIVE, 0, b"")

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
                self._write_locked(idx, gen, L.COLL_LIVE, 0, name)
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
        self._write_locked(idx, gen, L.COLL_LIVE, self.items(idx), new)

    def begin_drop_locked(self, name: bytes) -> int:
        found = self.find(name)
        if found is None:
            raise CollectionNotFound(f"no collection {name.decode()!r}")
        idx, gen = found
        self._write_locked(idx, (gen + 1) & 0xFFFF, COLL_DROPPING, self.items(idx), name)
        return idx

    def end_drop_locked(self, idx: int) -> None:
        gen, _, _ = self._checked(idx)
        self._write_locked(idx, gen, L.COLL_FREE, 0, b"")


def _corrupt(what: str) -> CorruptRegion:
    return CorruptRegion(f"collection table: {what}; the region is corrupt: run `shmkv doctor "
                         "--repair`, or unlink the region and create it again")
