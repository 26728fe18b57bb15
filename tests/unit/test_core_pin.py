"""shmkv._core's views (pin.c): a view pinned in C is the same pin as one taken by the Python
path (pins.py), protects its bytes as that one does, and hands every unusual case (the first
view of a process, a forked child, no free slot, a closed handle) to the Python path. Views
across processes are in tests/integration/test_views_multiprocess.py."""

from __future__ import annotations

import numpy as np
import pytest
from tests_support import JOIN_TIMEOUT_S, ctx

import shmkv
from shmkv import arrays, backend
from shmkv import layout as L
from shmkv.check import check_region

try:
    from shmkv import _core
except ImportError as exc:  # pragma: no cover - a build without a C compiler
    pytest.skip(f"shmkv._core is not built ({exc})", allow_module_level=True)
if backend.ENGINE != "c":  # SHMKV_PURE_PYTHON=1: handles have no compiled Writer
    pytest.skip("handles use the pure-Python engine", allow_module_level=True)

VALUE = bytes(range(256)) * 40  # 10 KiB: relocated on overwrite
SMALL = b"s" * 100  # rewritten in place when not pinned


@pytest.fixture
def warm(cache: shmkv.Cache) -> shmkv.Cache:
    """A handle whose process has claimed its record (the first view does, in Python): its
    next views pin in C."""
    assert isinstance(cache._cw, _core.Writer)
    cache.set("warm-up", b"w")
    with cache.view("warm-up"):
        pass
    assert cache._cw.pins_fallback == 1
    return cache


def slot_ref(cache: shmkv.Cache, at: int) -> int:
    return cache._region.u32[at]


def test_the_first_view_claims_the_record_in_python_and_the_next_pin_in_c(cache) -> None:
    cache.set("k", VALUE)
    with cache.view("k") as mv:
        assert mv == VALUE
    assert (cache._cw.pins_fast, cache._cw.pins_fallback) == (0, 1)
    with cache.view("k") as mv:
        assert mv == VALUE and cache.stats()["open_views"] == 1
    assert (cache._cw.pins_fast, cache._cw.pins_fallback) == (1, 1)
    assert cache.stats()["open_views"] == 0


def test_a_c_pin_stores_the_blocks_ref_in_a_slot_and_marks_the_entry_pinned(warm) -> None:
    warm.set("k", VALUE)
    at, off, start, vlen, kind = warm._cw.pin("k")
    assert warm._cw.pins_fast == 1
    assert slot_ref(warm, at) == warm._region.arena.ref(off)
    assert warm._region.mm[off + L.E_KIND] & L.KIND_PINNED and kind & L.KIND_PINNED
    assert bytes(warm._region.mm[start:start + vlen]) == VALUE
    warm._cw.unpin(at, off)
    assert slot_ref(warm, at) == 0 and warm.stats()["open_views"] == 0


def test_a_pin_taken_in_c_is_dropped_by_python_and_the_other_way_round(warm) -> None:
    pins = warm._region.pins
    warm.set("c", VALUE)
    warm.set("py", VALUE)
    at, off, *_ = warm._cw.pin("c")  # in C ...
    warm.delete("c")
    assert warm.stats()["retired_blocks"] == 1 and warm.stats()["open_views"] == 1
    pins.unpin(at, off)  # ... dropped by Python, which sweeps the retired block
    assert slot_ref(warm, at) == 0
    assert warm.stats()["retired_blocks"] == 0 and warm.stats()["open_views"] == 0
    at, off, *_ = warm._pin_entry("py")  # in Python ...
    warm.delete("py")
    assert warm.stats()["retired_blocks"] == 1
    warm._cw.unpin(at, off)  # ... dropped by C, which calls the sweep
    assert slot_ref(warm, at) == 0
    assert warm.stats()["retired_blocks"] == 0 and warm.stats()["open_views"] == 0
    assert len(pins._free) == L.PINS_PER_PROC and check_region(warm) == []


@pytest.mark.parametrize("change", ["overwrite in place size", "overwrite", "delete", "evict"])
def test_a_view_pinned_in_c_keeps_its_bytes_whatever_happens_to_the_key(warm, change) -> None:
    value = SMALL if change == "overwrite in place size" else VALUE
    warm.set("k", value)
    with warm.view("k") as mv:
        assert warm._cw.pins_fast == 1
        if change.startswith("overwrite"):
            warm.set("k", bytes(len(value)))  # same size: would be rewritten in place
            assert warm.get("k") == bytes(len(value))
        elif change == "delete":
            warm.delete("k")
        else:
            for i in range(500):  # 5 MiB through the 4 MiB arena
                warm.set(f"fill{i}", VALUE)
            assert "k" not in warm
        assert mv == value
        assert check_region(warm) == []
    stats = warm.stats()
    assert stats["retired_blocks"] == 0 and stats["open_views"] == 0
    assert check_region(warm) == []


def test_a_view_in_c_of_an_expired_or_missing_key_raises_keyerror(warm, fake_clock) -> None:
    warm.set("k", b"v", ttl_s=1)
    with warm.view("k") as mv:
        assert mv == b"v"
    fake_clock.advance(2)
    for key in ("k", "absent"):
        with pytest.raises(KeyError) as info:
            with warm.view(key):
                pass
        assert info.value.args == (key,)
    assert warm._cw.pins_fast == 1 and warm._cw.pins_fallback == 1  # decided in C
    assert warm.stats()["open_views"] == 0 and len(warm._region.pins._free) == L.PINS_PER_PROC


def test_a_slice_kept_after_a_c_view_holds_the_pin_exactly_as_long_as_it_lives(warm) -> None:
    warm.set("k", VALUE)
    with warm.view("k") as mv:
        part = mv[10:20]
        warm.delete("k")
    assert bytes(part) == VALUE[10:20] and warm.stats()["retired_blocks"] == 1
    del part  # the last user of the bytes: the pin goes now, and the block with it
    assert warm.stats()["retired_blocks"] == 0 and warm.stats()["open_views"] == 0


def test_an_array_view_in_c_is_read_only_and_its_array_holds_the_pin(warm) -> None:
    arr = np.arange(12, dtype=np.float64).reshape(3, 4)
    warm.set_array("a", arr)
    with warm.view_array("a") as a:
        assert a.flags.writeable is False and np.array_equal(a, arr)
        kept = a
    warm.delete("a")
    assert warm.stats()["retired_blocks"] == 1 and np.array_equal(kept, arr)
    del a, kept
    assert warm.stats()["retired_blocks"] == 0 and warm.stats()["open_views"] == 0


def test_a_cached_array_header_over_a_value_of_another_length_is_damaged(warm) -> None:
    warm.set_array("a", np.arange(4, dtype=np.int64))
    with warm.view_array("a") as a:  # its header is decoded and cached
        assert list(a) == [0, 1, 2, 3]
    del a  # it would keep its pin
    header, data = arrays.encode(np.arange(4, dtype=np.int64), len(b"a"))
    assert any(h == header for h in arrays.DECODED)
    warm._write(b"a", (header, memoryview(bytes(data) + bytes(8))), None, None, L.KIND_ARRAY)
    with pytest.raises(TypeError, match="damaged"):
        with warm.view_array("a"):
            pass
    assert warm.stats()["open_views"] == 0


def test_a_view_entered_after_its_handle_closed_raises_cacheclosed(warm) -> None:
    warm.set("k", b"v")
    view = warm.view("k")
    warm.close()
    with pytest.raises(shmkv.CacheClosed):
        view.__enter__()


def _view_in_child(cache: shmkv.Cache, parent_view, results) -> None:
    pins = cache._region.pins
    with cache.view("k") as mv:  # the inherited slots are the parent's record's: Python claims
        first = (bytes(mv), cache._cw.pins_fast, cache._cw.pins_fallback, pins.record)
    with cache.view("k") as mv:  # now in C, in the child's own record
        second = (bytes(mv), cache._cw.pins_fast, pins.record)
    parent_view.close()  # the parent's pin, inherited: the child must not drop it
    results.put((first, second))


def test_a_forked_child_views_through_its_own_record_and_never_drops_its_parents_pin(
        warm) -> None:
    warm.set("k", b"value")
    parent_record = warm._region.pins.record
    view = warm.view("k")
    mv = view.__enter__()
    first_slot = warm._region.pins._pins_at(parent_record)
    [at] = [i for i in range(first_slot, first_slot + L.PINS_PER_PROC) if slot_ref(warm, i)]
    results = ctx.Queue()
    child = ctx.Process(target=_view_in_child, args=(warm, view, results))
    child.start()
    try:
        first, second = results.get(timeout=JOIN_TIMEOUT_S)
    finally:
        child.join(JOIN_TIMEOUT_S)
    assert child.exitcode == 0
    fast_before = warm._cw.pins_fast
    assert first == (b"value", fast_before, 2, first[3]) and first[3] != parent_record
    assert second == (b"value", fast_before + 1, first[3])
    assert slot_ref(warm, at) != 0 and mv == b"value"  # the parent's pin stands
    view.close()
    assert slot_ref(warm, at) == 0



def test_a_stripe_that_needs_a_repair_is_left_to_python_which_repairs_it(warm) -> None:
    from shmkv.hashing import xxh3_64
    warm.set("k", VALUE)
    lay = warm._region.layout
    stripe = xxh3_64(b"k", warm._seed) & (lay.n_stripes - 1)
    owner_at = (lay.stripes_offset + stripe * L.STRIPE_BYTES + L.S_OWNER_PID) >> 2
    warm._region.u32[owner_at] = 0x7FFFFFFF  # a holder that died inside: the repair mark
    with warm.view("k") as mv:
        assert mv == VALUE
        assert (warm._cw.pins_fast, warm._cw.pins_fallback) == (0, 2)
    assert warm._region.u32[owner_at] == 0  # repaired by the Python path
    with warm.view("k"):
        assert warm._cw.pins_fast == 1
    assert check_region(warm) == []
