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


def test_a_version_6_region_is_refused_with_how_to_move_its_data() -> None:
    lay = L.plan_layout(1 << 20)
    buf = bytearray(L.pack_header(lay, 1, 5))
    buf[0:8] = L.MAGIC
    buf[8] = 6
    with pytest.raises(shmkv.IncompatibleLayout) as info:
        L.unpack_header(bytes(buf), lay.region_bytes)
    message = str(info.value)
    assert "layout version 6" in message and "version 7" in message
    assert "shmkv snapshot PATH" in message and "shmkv restore PATH" in message


def test_header_of_a_truncated_region_is_refused() -> None:
    lay = L.plan_layout(1 << 20)
    buf = bytearray(L.pack_header(lay, 1, 5))
    buf[0:8] = L.MAGIC
    with pytest.raises(shmkv.IncompatibleLayout, match="truncated"):
        L.unpack_header(bytes(buf), lay.region_bytes - 4096)


def test_entry_fields_a_reader_needs_sit_next_to_the_key() -> None:
    # The get path reads expires_at_ns, version, value_len and key_coll in one go, and the key
    # follows: one cache miss per get.
    assert (L.E_EXPIRES_AT, L.E_VERSION, L.E_VALUE_LEN, L.E_KEY_COLL) == (16, 24, 28, 32)
    assert L.E_EXPIRES_AT + L.ENTRY_HEADER.size == L.ENTRY_HEADER_BYTES == 36
    assert L.E_KIND == L.E_KEY_COLL + 1  # the kind byte is key_coll's second byte
    assert mmap.PAGESIZE <= L.HEADER_BYTES


def test_key_len_and_kind_bits_share_key_coll_without_overlap() -> None:
    assert L.MAX_KEY_BYTES <= L.KEY_LEN_MASK
    kind_bits = (L.KIND_ARRAY | L.KIND_PINNED | L.PUBLISHED) << 8
    assert kind_bits & L.KEY_COLL_MASK == 0 and L.KEY_LEN_HI_MASK << 8 | 0xFF == L.KEY_LEN_MASK
    assert L.KEY_COLL_MASK | kind_bits == 0xFFFFFFFF


def test_segment_bits_of_the_block_word_round_trip_and_leave_size_and_flags_alone() -> None:
    flags = L.FREE_BIT | L.PREV_FREE_BIT
    assert L.SEG_BITS & (L.SIZE_MASK | flags) == 0
    for seg in (L.SEG_NONE, L.SEG_PROBATION, L.SEG_PROTECTED, L.SEG_RETIRED):
        assert L.SEG_WORD[seg] | L.SEG_BITS == L.SEG_BITS
        assert L.segment_of(L.SIZE_MASK | L.PREV_FREE_BIT | L.SEG_WORD[seg]) == seg


def test_stored_versions_compare_across_the_32_bit_wrap() -> None:
    assert L.newer_version(5, 4) and not L.newer_version(4, 5) and not L.newer_version(7, 7)
    assert L.newer_version(1, 0xFFFFFFFF) and not L.newer_version(0xFFFFFFFF, 1)


def test_every_entry_field_is_aligned_to_its_size() -> None:
    # u32/u64 views index by offset // size: a misaligned field would alias its neighbour
    for name, size in (("E_CHECKSUM", 4), ("E_LRU_PREV", 4), ("E_LRU_NEXT", 4),
                       ("E_VERSION", 4), ("E_EXPIRES_AT", 8), ("E_VALUE_LEN", 4),
                       ("E_KEY_COLL", 4), ("E_COLLECTION", 2)):
        assert getattr(L, name) % size == 0, name
