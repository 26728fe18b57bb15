"""Zero-copy views and array values in one process: what a view shows, when its memory comes
back, and the errors of every misuse. Views from other processes, and processes killed with
views open, are in tests/integration/test_views_multiprocess.py."""

from __future__ import annotations

import numpy as np
import pytest

import shmkv
from shmkv import layout as L
from shmkv.check import check_region

VALUE = bytes(range(256)) * 40  # 10 KiB: relocated on overwrite, never rewritten in place
SMALL = b"s" * 100  # small enough to be rewritten in place when not pinned


def used(cache: shmkv.Cache) -> int:
    return cache.stats()["arena_used_bytes"]


# --- view() ------------------------------------------------------------------------------
def test_view_yields_a_read_only_memoryview_of_the_value(cache) -> None:
    cache.set("k", VALUE)
    with cache.view("k") as mv:
        assert isinstance(mv, memoryview) and mv.readonly
        assert mv == VALUE
        with pytest.raises(TypeError):
            mv[0] = 1


def test_view_is_zero_copy_it_points_into_the_region(cache) -> None:
    cache.set("k", VALUE)
    with cache.view("k") as mv:
        address = np.frombuffer(mv, np.uint8).ctypes.data
    region = np.frombuffer(cache._region.mm, np.uint8)
    start = region.ctypes.data
    del region
    assert start <= address < start + cache._region.layout.region_bytes


@pytest.mark.parametrize("change", ["overwrite", "overwrite in place size", "delete", "clear",
                                    "expire"])
def test_view_bytes_do_not_change_when_the_key_changes_during_the_block(cache, fake_clock,
                                                                        change) -> None:
    value = SMALL if change == "overwrite in place size" else VALUE
    cache.set("k", value, ttl_s=10)
    with cache.view("k") as mv:
        if change.startswith("overwrite"):
            cache.set("k", bytes(len(value)))  # same size: would fit the block in place
            assert cache.get("k") == bytes(len(value))
        elif change == "delete":
            assert cache.delete("k")
        elif change == "clear":
            cache.clear()
        else:
            fake_clock.advance(11)
            cache.maintain()
        assert mv == value
        assert check_region(cache) == []
    assert check_region(cache) == []


def test_retired_memory_returns_when_the_view_closes(cache) -> None:
    cache.set("k", VALUE)
    before = used(cache)
    with cache.view("k"):
        cache.delete("k")
        assert cache.stats()["retired_bytes"] > len(VALUE)
        assert used(cache) == before  # held for the view
    stats = cache.stats()
    assert stats["retired_bytes"] == 0 and stats["retired_blocks"] == 0
    assert used(cache) == 0 and stats["open_views"] == 0


def test_using_a_view_after_its_block_raises_valueerror(cache) -> None:
    cache.set("k", VALUE)
    with cache.view("k") as mv:
        pass
    with pytest.raises(ValueError, match="released"):
        mv[0]
    with pytest.raises(ValueError, match="released"):
        bytes(mv)


def test_a_slice_kept_after_the_block_stays_valid_until_dropped(cache) -> None:
    cache.set("k", VALUE)
    with cache.view("k") as mv:
        part = mv[10:20]
        cache.delete("k")
    # the slice still pins the block: its bytes are intact, nothing was freed under it
    assert bytes(part) == VALUE[10:20]
    assert cache.stats()["retired_blocks"] == 1
    del part
    cache.maintain()  # the first call after the slice is gone drops the pin
    assert cache.stats()["retired_blocks"] == 0 and used(cache) == 0
    assert check_region(cache) == []


def test_an_array_made_from_a_view_keeps_its_pin_until_dropped(cache) -> None:
    cache.set("k", VALUE)
    with cache.view("k") as mv:
        arr = np.frombuffer(mv, np.uint8)
    cache.set("k", b"new")
    assert arr.tobytes() == VALUE
    del arr
    cache.maintain()
    assert cache.stats()["retired_blocks"] == 0


def test_view_of_a_missing_or_expired_key_raises_keyerror(cache, fake_clock) -> None:
    with pytest.raises(KeyError):
        with cache.view("absent"):
            pass
    cache.set("k", b"v", ttl_s=1)
    fake_clock.advance(2)
    with pytest.raises(KeyError):
        with cache.view("k"):
            pass
    assert cache.stats()["open_views"] == 0


def test_view_of_a_key_in_a_collection_sees_only_that_collection(cache) -> None:
    cache.set("k", b"default")
    col = cache.collection("c")
    col.set("k", b"in c")
    with col.view("k") as mv:
        assert mv == b"in c"


def test_a_view_can_be_entered_only_once(cache) -> None:
    cache.set("k", b"v")
    view = cache.view("k")
    with view:
        with pytest.raises(RuntimeError):
            view.__enter__()


def test_many_views_open_at_once_then_too_many_raises(cache) -> None:
    for i in range(L.PINS_PER_PROC + 1):
        cache.set(f"k{i}", b"v%d" % i)
    views = [cache.view(f"k{i}") for i in range(L.PINS_PER_PROC)]
    mvs = [v.__enter__() for v in views]
    assert [bytes(m) for m in mvs] == [b"v%d" % i for i in range(L.PINS_PER_PROC)]
    with pytest.raises(shmkv.TooManyViews):
        with cache.view(f"k{L.PINS_PER_PROC}"):
            pass
    for v in views:
        v.close()
    del mvs
    with cache.view(f"k{L.PINS_PER_PROC}") as mv:
        assert mv == b"v%d" % L.PINS_PER_PROC


def test_pinned_entries_are_not_evicted_and_the_space_comes_back(region_name) -> None:
    with shmkv.Cache.create(region_name, arena_bytes=1 << 20) as c:
        c.set("pinned", VALUE)
        with c.view("pinned") as mv:
            for i in range(400):  # 4 MiB through a 1 MiB arena: "pinned" is evicted meanwhile
                c.set(f"fill{i}", VALUE)
            assert mv == VALUE
            assert c.stats()["evictions"] > 0 and c.stats()["retired_blocks"] == 1
            assert check_region(c) == []
        assert c.stats()["retired_blocks"] == 0
        assert check_region(c) == []


def test_closing_the_handle_with_a_view_open_keeps_the_view_valid(region_name) -> None:
    c = shmkv.Cache.create(region_name, arena_bytes=1 << 20)
    c.set("k", VALUE)
    view = c.view("k")
    mv = view.__enter__()
    c.close()
    assert mv == VALUE  # the mapping goes away with the last view, not with the handle
    view.close()
    with pytest.raises(ValueError):
        mv[0]


def test_repair_keeps_retired_blocks_of_open_views(cache) -> None:
    cache.set("k", VALUE)
    with cache.view("k") as mv:
        cache.delete("k")
        cache.repair()
        assert mv == VALUE and cache.stats()["retired_blocks"] == 1
        assert check_region(cache) == []
    assert cache.stats()["retired_blocks"] == 0


# --- arrays --------------------------------------------------------------------------------
ARRAYS = [
    np.arange(12, dtype=np.float64).reshape(3, 4),
    np.arange(24, dtype=np.int16).reshape(2, 3, 4)[:, ::2],  # not contiguous: stored C-order
    np.asfortranarray(np.arange(6, dtype=np.uint32).reshape(2, 3)),
    np.array(3.5, dtype=np.float32),  # 0-d
    np.zeros((0, 5), dtype=np.int8),  # empty
    np.array(["a", "bcd"], dtype="<U3"),
    np.array([1 + 2j], dtype=np.complex128),
    np.array(["2026-11-22"], dtype="datetime64[ns]"),
    np.array([(1, 2.5)], dtype=[("a", "<i4"), ("b", "<f8")]),
    np.array([True, False]),
    np.arange(5, dtype=">i8"),  # big-endian stays big-endian
]


@pytest.mark.parametrize("arr", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
def test_set_array_then_get_array_returns_an_equal_writable_copy(cache, arr) -> None:
    cache.set_array("a", arr)
    got = cache.get_array("a")
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)
    assert got.flags.writeable and got.flags.c_contiguous
    got[...] = 0 if got.dtype.kind != "M" else np.datetime64(0, "ns")  # a copy: region intact
    np.testing.assert_array_equal(cache.get_array("a"), arr)


@pytest.mark.parametrize("key", ["k", "ke", "key", "a-longer-key-1"])
def test_view_array_is_read_only_aligned_and_zero_copy(cache, key) -> None:
    arr = np.arange(100, dtype=np.float64)
    cache.set_array(key, arr)
    with cache.view_array(key) as a:
        np.testing.assert_array_equal(a, arr)
        assert not a.flags.writeable and a.flags.aligned
        assert a.ctypes.data % 8 == 0
        with pytest.raises(ValueError):
            a[0] = 1
        del a


def test_an_array_kept_after_its_block_stays_valid_until_dropped(cache) -> None:
    arr = np.arange(1000, dtype=np.int64)
    cache.set_array("a", arr)
    with cache.view_array("a") as a:
        pass
    cache.set_array("a", arr * 2)
    np.testing.assert_array_equal(a, arr)  # still the bytes it showed
    assert cache.stats()["retired_blocks"] == 1
    del a
    cache.maintain()
    assert cache.stats()["retired_blocks"] == 0 and check_region(cache) == []


def test_get_array_of_a_missing_key_returns_the_default(cache) -> None:
    assert cache.get_array("nope") is None
    assert cache.get_array("nope", default=7) == 7


def test_array_and_bytes_values_are_not_confused(cache) -> None:
    cache.set("b", b"plain bytes")
    with pytest.raises(TypeError, match="set_array"):
        cache.get_array("b")
    with pytest.raises(TypeError):
        with cache.view_array("b"):
            pass
    cache.set_array("a", np.arange(3))
    assert isinstance(cache.get("a"), bytes)  # the stored form: header and data
    assert cache.stats()["open_views"] == 0


@pytest.mark.parametrize("bad", [np.array([object()]), [1, 2, 3], b"bytes", None],
                         ids=["object dtype", "list", "bytes", "None"])
def test_set_array_rejects_what_is_not_a_plain_array(cache, bad) -> None:
    with pytest.raises(TypeError):
        cache.set_array("a", bad)
    assert "a" not in cache


def test_set_array_keeps_ttl_semantics(cache, fake_clock) -> None:
    cache.set_array("a", np.arange(3), ttl_s=5)
    fake_clock.advance(6)
    assert cache.get_array("a") is None


def test_a_64_mib_value_can_be_stored_viewed_and_read(region_name) -> None:
    size = 64 << 20
    with shmkv.Cache.create(region_name, arena_bytes=size + (1 << 20)) as c:
        value = np.arange(size // 8, dtype=np.uint64)
        c.set_array("big", value)
        with c.view_array("big") as a:
            assert a.shape == value.shape and int(a[-1]) == size // 8 - 1
            assert np.array_equal(a, value)
            del a
        c.set("raw", b"x")  # the region still works beside it
        with c.view("big") as mv:
            assert len(mv) > size
        assert check_region(c) == []


def test_a_handle_closed_while_an_array_outlives_its_view_closes_once(cache: shmkv.Cache) -> None:
    """The lingering view is released inside close(), which finishes closing the region; the
    rest of close() must not close it a second time (the mapping's descriptor is gone)."""
    cache.set_array("a", np.arange(12))
    with cache.view_array("a") as arr:
        pass
    total = int(arr.sum())  # the array outlives its block: the view lingers
    del arr
    cache.close()
    assert cache.closed and total == 66
