"""The collection table: named, isolated key spaces inside one region (format in layout.py).

A collection is a record index (stored in every entry, and mixed into the key's hash seed) plus
a generation. Record 0 is the default collection, named "". Renaming touches only the record,
never the entries. Dropping bumps the generation first, so that handles still holding the old
one fail on write with CollectionNotFound instead of writing into a dead collection, then the
caller deletes the entries, then the record is freed. Records are handed out round-robin, so a
freed index is reused as late as possible.

Every function here needs the arena lock.
"""

from __future__ import annotations

import struct

from . import layout as L
from .errors import CollectionExists, CollectionNotFound, TooManyCollections

COLL_DROPPING = 2
_U16 = struct.Struct("<H")
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

    def _rec(self, idx: int) -> int:
        return self._base + idx * L.COLLECTION_BYTES

    def read(self, idx: int) -> tuple[int, int, int, bytes]:
        """(generation, state, items, name) of record idx."""
        gen, state, name_len, items, name = L.COLLECTION.unpack_from(self._mm, self._rec(idx))
        return gen, state, items, name[:name_len]

    def generation(self, idx: int) -> int:
        return _U16.unpack_from(self._mm, self._rec(idx))[0]

    def is_live(self, idx: int, gen: int) -> bool:
        g, state, _, _ = self.read(idx)
        return state == L.COLL_LIVE and g == gen

    def items(self, idx: int) -> int:
        return self._q[(self._rec(idx) + L.C_ITEMS) >> 3]

    def add_items_locked(self, idx: int, delta: int) -> None:
        self._q[(self._base + idx * L.COLLECTION_BYTES + L.C_ITEMS) >> 3] += delta

    def _write_locked(self, idx: int, gen: int, state: int, items: int, name: bytes) -> None:
        L.COLLECTION.pack_into(self._mm, self._rec(idx), gen, state, len(name), items, name)

    def init_default_locked(self) -> None:
        self._write_locked(0, 0, L.COLL_LIVE, 0, b"")

    def live(self) -> list[tuple[int, int, bytes]]:
        """(index, generation, name) of every live named collection."""
        out = []
        for idx in range(1, self.max):
            gen, state, _, name = self.read(idx)
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
            gen, state, _, _ = self.read(idx)
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
        gen, _, _, _ = self.read(idx)
        self._write_locked(idx, gen, L.COLL_FREE, 0, b"")
