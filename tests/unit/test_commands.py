"""The read-modify-write commands (shmkv/commands.py) on a local region and the fake clock:
exact expiry, keyspace events, what the compiled engine hands to Python, rename's two stripes.
What RemoteCache shares with Cache is in tests/contract/test_cache_contract.py."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import shmkv
from shmkv.check import check_region
from shmkv.events import EventReader
from shmkv.hashing import xxh3_64


def stripe_of(cache: shmkv.Cache, key: bytes) -> int:
    return xxh3_64(key, cache._seed) & cache._smask


def keys_in_stripes(cache: shmkv.Cache, same: bool) -> tuple[bytes, bytes]:
    """Two keys whose stripes are the same, or differ."""
    first = b"key-0"
    for i in range(1, 10_000):
        other = f"key-{i}".encode()
        if (stripe_of(cache, other) == stripe_of(cache, first)) is same:
            return first, other
    raise AssertionError("no such pair of keys")


# --- expiry, exactly, on the fake clock ----------------------------------------------------------
def test_set_keepttl_keeps_the_exact_expiry_time(cache, fake_clock) -> None:
    cache.set("k", b"v", ttl_s=10)
    fake_clock.advance(4)
    cache.set("k", b"w" * 3000, keepttl=True)  # relocated to a larger block: the time moves too
    assert cache.ttl("k") == pytest.approx(6)
    fake_clock.advance(6)
    assert cache.get("k") is None


def test_a_key_expires_at_the_exact_instant_for_nx_xx_getdel_getex_append(cache,
                                                                          fake_clock) -> None:
    for key in ("nx", "xx", "getdel", "getex", "append"):
        cache.set(key, b"v", ttl_s=1)
    fake_clock.advance(1 - 1e-9)
    assert cache.set("nx", b"w", nx=True) is False  # one nanosecond before: still there
    fake_clock.advance(1e-9)
    assert cache.set("nx", b"w", nx=True) is True
    assert cache.set("xx", b"w", xx=True) is False
    assert cache.getdel("getdel") is None
    assert cache.getex("getex", persist=True) is None
    assert cache.append("append", b"w") == 1
    assert cache.stats()["expirations"] >= 1
    assert check_region(cache) == []


def test_rename_moves_the_exact_expiry_time(cache, fake_clock) -> None:
    cache.set("old", b"v", ttl_s=10)
    fake_clock.advance(3)
    cache.rename("old", "new")
    assert cache.ttl("new") == pytest.approx(7)
    fake_clock.advance(7)
    assert "new" not in cache and "old" not in cache


def test_getex_gives_a_ttl_from_now(cache, fake_clock) -> None:
    cache.set("k", b"v", ttl_s=100)
    fake_clock.advance(50)
    assert cache.getex("k", 5) == b"v"
    assert cache.ttl("k") == pytest.approx(5)


# --- the compiled engine hands every option to Python -------------------------------------------
def test_set_with_an_unknown_keyword_raises_type_error_and_stores_nothing(cache) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'px'"):
        cache.set("k", b"v", px=100)
    assert "k" not in cache


def test_set_options_given_as_false_behave_as_a_plain_set(cache) -> None:
    assert cache.set("k", b"v", ttl_s=None, nx=False, xx=False, keepttl=False, get=False) is None
    assert cache.get("k") == b"v"


def test_set_with_an_option_runs_in_python_on_the_compiled_engine(cache, engine) -> None:
    if engine != "c" or cache._cw is None:
        pytest.skip("the compiled engine only")
    cache.set("k", b"v")
    cache.set("k", b"w")  # in place, in C
    before = cache._cw.fallbacks
    assert cache.set("k", b"x", xx=True) is True
    assert cache._cw.fallbacks == before + 1
    assert cache.get("k") == b"x"


# --- keyspace events -----------------------------------------------------------------------------
def test_commands_emit_the_events_of_the_writes_they_make(cache) -> None:
    cache.enable_events(True)
    reader = EventReader(cache)
    cache.set("k", b"v", nx=True)
    cache.set("k", b"w", nx=True)  # not stored: no event
    cache.append("k", b"x")
    assert cache.getdel("k") == b"vx"
    cache.set("a", b"v")
    cache.rename("a", "b")
    events = [(e.kind, e.key) for e in reader.poll()]
    # in order per key (per stripe), and a rename is a set of the new key then a del of the old
    assert [kind for kind, key in events if key == b"k"] == ["set", "set", "del"]
    assert [kind for kind, key in events if key == b"a"] == ["set", "del"]
    assert [kind for kind, key in events if key == b"b"] == ["set"]


# --- rename's two stripes -------------------------------------------------------------------------
@pytest.mark.parametrize("same_stripe", [True, False], ids=["same stripe", "two stripes"])
def test_rename_moves_a_key_within_a_stripe_or_across_two(cache, same_stripe) -> None:
    old, new = keys_in_stripes(cache, same_stripe)
    cache.set(old, b"v", ttl_s=100)
    cache.set(new, b"replaced")
    assert cache.rename(old, new) is True
    assert cache.get(new) == b"v" and old not in cache and len(cache) == 1
    assert check_region(cache) == []
    for stripe in range(cache._smask + 1):  # both locks given back
        assert cache._locks.try_acquire_stripe(stripe)
        cache._locks.release_stripe(stripe)


def test_rename_moves_a_value_that_needs_the_old_one_evicted_first(region_name) -> None:
    # One stripe, and room for one such value: storing it under the new key evicts the old key
    # (the same stripe), which rename must then not remove a second time.
    with shmkv.Cache.create(region_name, arena_bytes=64 << 10, n_stripes=1) as c:
        value = bytes(range(256)) * 160  # 40 KiB of a 64 KiB arena
        c.set("old", value)
        assert c.rename("old", "new") is True
        assert c.get("new") == value and "old" not in c
        assert check_region(c) == []


def test_rename_gives_the_first_lock_back_when_the_second_times_out(region_name) -> None:
    with shmkv.Cache.create(region_name, arena_bytes=1 << 20, lock_timeout_s=0.05) as c:
        old, new = keys_in_stripes(c, same=False)
        c.set(old, b"v")
        held = max(stripe_of(c, old), stripe_of(c, new))  # the one rename takes second
        other = shmkv.Cache.open(region_name, lock_timeout_s=0.05)
        try:
            taken, done = threading.Event(), threading.Event()

            def hold() -> None:  # a lock belongs to a thread: hold it from another one
                other._locks.acquire_stripe(held)
                taken.set()
                done.wait(10)
                other._locks.release_stripe(held)

            thread = threading.Thread(target=hold)
            thread.start()
            taken.wait(10)
            try:
                with pytest.raises(shmkv.LockTimeout):
                    c.rename(old, new)
            finally:
                done.set()
                thread.join(10)
        finally:
            other.close()
        first = min(stripe_of(c, old), stripe_of(c, new))
        assert c._locks.try_acquire_stripe(first)
        c._locks.release_stripe(first)
        assert c.get(old) == b"v" and new not in c


def test_rename_in_a_dropped_collection_raises_collection_not_found(cache) -> None:
    users = cache.collection("users")
    users.set("a", b"v")
    cache.drop_collection("users")
    with pytest.raises(shmkv.CollectionNotFound):
        users.rename("a", "b")


@pytest.mark.parametrize("new", ["ab", "abc", "a" * 9, "b"])
def test_a_renamed_array_keeps_its_data_8_aligned_in_a_view(cache, new) -> None:
    arr = np.arange(12, dtype="<f8").reshape(3, 4)
    cache.set_array("a", arr)
    cache.rename("a", new)
    with cache.view_array(new) as view:
        assert (view == arr).all()
        assert view.ctypes.data % 8 == 0
        del view  # (the array would keep the entry pinned after the block)
    assert check_region(cache) == []


def test_a_failed_command_on_an_array_leaves_it_whole(cache) -> None:
    cache.set_array("a", np.arange(3))
    with pytest.raises(shmkv.WrongType):
        cache.set("a", b"v", get=True)
    with pytest.raises(TypeError):  # WrongType is a TypeError, as view_array's refusal is
        cache.append("a", b"v")
    assert (cache.get_array("a") == np.arange(3)).all()
