"""The region format: planning, header round trip, and refusing what it cannot read."""

from __future__ import annotations

import mmap

import pytest

import shmkv
from shmkv import layout as L


def test_plan_layout_aligns_areas_and_fits_max_keys() -> None:
    lay = L.plan_layout(8 << 20, max_keys=10_000)
    offsets = [lay.stripes_offset, lay.procs_offset, lay.collections_offset,
               lay.access_offset, lay.index_offset, lay.arena_offset]
    assert offsets == sorted(offsets)
    assert all(o % 64 == 0 for o in offsets) and lay.arena_offset % 4096 == 0
    assert lay.index_slots * L.MAX_LOAD >= 10_000
    assert lay.region_bytes == lay.arena_offset + lay.arena_bytes


@pytest.mark.parametrize("kwargs", [
    {"arena_bytes": 100}, {"arena_bytes": 1 << 20, "n_stripes": 3},
    {"arena_bytes": 1 << 20, "n_stripes": 512}, {"arena_bytes": 1 << 20, "max_keys": 0},
])
def test_plan_layout_rejects_impossible_parameters(kwargs) -> None:
    with pytest.raises(ValueError):
        L.plan_layout(**kwargs)


def test_header_round_trips() -> None:
    lay = L.plan_layout(1 << 20)
    buf = bytearray(L.pack_header(lay, 1234, 5))
    buf[0:8] = L.MAGIC
    assert L.unpack_header(bytes(buf), lay.region_bytes) == (lay, 1234)


def test_header_with_other_version_is_refused_with_a_clear_error() -> None:
    lay = L.plan_layout(1 << 20)
    buf = bytearray(L.pack_header(lay, 1, 5))
    buf[0:8] = L.MAGIC
    buf[8] = L.LAYOUT_VERSION + 1
    with pytest.raises(shmkv.IncompatibleLayout, match="layout version"):
        L.unpack_header(bytes(buf), lay.region_bytes)


def test_header_of_a_truncated_region_is_refused() -> None:
    lay = L.plan_layout(1 << 20)
    buf = bytearray(L.pack_header(lay, 1, 5))
    buf[0:8] = L.MAGIC
    with pytest.raises(shmkv.IncompatibleLayout, match="truncated"):
        L.unpack_header(bytes(buf), lay.region_bytes - 4096)


def test_entry_fields_a_reader_needs_sit_next_to_the_key() -> None:
    # The get path reads value_len | key_len << 32 | collection << 48 as one u64.
    assert L.E_VALUE_LEN % 8 == 0 and L.E_KEY_COLL == L.E_VALUE_LEN + 4
    assert L.E_VERSION + L.ENTRY_HEADER.size == L.ENTRY_HEADER_BYTES
    assert mmap.PAGESIZE <= L.HEADER_BYTES


def test_every_entry_field_is_aligned_to_its_size() -> None:
    # u32/u64 views index by offset // size: a misaligned field would alias its neighbour
    for name, size in (("E_CHECKSUM", 4), ("E_LRU_PREV", 4), ("E_LRU_NEXT", 4),
                       ("E_VERSION", 8), ("E_EXPIRES_AT", 8), ("E_VALUE_LEN", 4),
                       ("E_KEY_COLL", 4), ("E_SLOT_NO", 4)):
        assert getattr(L, name) % size == 0, name
