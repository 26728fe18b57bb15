"""The public Cache API in one process: behaviour, errors, and nothing harmed by bad calls."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

import shmkv
from shmkv import layout as L
from shmkv import listing
from shmkv.check import check_region
from shmkv.hashing import xxh3_64
from tests_support import region_objects


def test_set_then_get_returns_bytes(cache: shmkv.Cache) -> None:
    cache.set("k", b"v")
    assert cache.get("k") == b"v"


def test_str_key_equals_its_utf8_bytes(cache: shmkv.Cache) -> None:
    cache.set("clé", "välue")
    assert cache.get("clé".encode()) == "välue".encode()
    assert "clé".encode() in cache


def test_get_returns_default_when_absent(cache: shmkv.Cache) -> None:
    assert cache.get("nope") is None
    assert cache.get("nope", b"dflt") == b"dflt"


def test_getitem_raises_keyerror_when_absent(cache: shmkv.Cache) -> None:
    with pytest.raises(KeyError):
        cache["nope"]


def test_mapping_protocol_set_get_del_len_iter(cache: shmkv.Cache) -> None:
    cache["a"] = b"1"
    cache[b"b"] = bytearray(b"2")
    assert cache["a"] == b"1" and len(cache) == 2
    assert sorted(cache) == [b"a", b"b"]
    del cache["a"]
    assert "a" not in cache and len(cache) == 1
    with pytest.raises(KeyError):
        del cache["a"]


def test_overwrite_replaces_value_and_frees_the_old_block(cache: shmkv.Cache) -> None:
    cache.set("k", b"x" * 1000)
    used = cache.stats()["arena_used_bytes"]
    for i in range(100):
        cache.set("k", bytes([i]) * 1000)
    assert cache.get("k") == bytes([99]) * 1000
    assert cache.stats()["arena_used_bytes"] == used
    assert check_region(cache) == []


def test_delete_returns_whether_the_key_was_present(cache: shmkv.Cache) -> None:
    cache.set("k", b"v")
    assert cache.delete("k") is True
    assert cache.delete("k") is False


def test_values_accept_buffers_and_numpy_arrays(cache: shmkv.Cache) -> None:
    cache.set("mv", memoryview(b"abcdef")[1:4])
    cache.set("np", np.arange(4, dtype=np.uint8))
    cache.set("empty", b"")
    assert cache.get("mv") == b"bcd"
    assert cache.get("np") == bytes([0, 1, 2, 3])
    assert cache.get("empty") == b""


def test_empty_key_is_a_key(cache: shmkv.Cache) -> None:
    cache.set(b"", b"v")
    assert cache.get("") == b"v"


@pytest.mark.parametrize("key", [1, 1.5, None, ["a"], object()])
def test_wrong_key_type_raises_typeerror_and_changes_nothing(cache, key) -> None:
    cache.set("k", b"v")
    for call in (lambda: cache.set(key, b"v"), lambda: cache.get(key),
                 lambda: cache.delete(key), lambda: cache.incr(key)):
        with pytest.raises(TypeError):
            call()
    assert cache.get("k") == b"v" and len(cache) == 1


@pytest.mark.parametrize("value", [1, 2.5, None, True, object(), ["x"]])
def test_wrong_value_type_raises_typeerror_and_changes_nothing(cache, value) -> None:
    cache.set("k", b"v")
    with pytest.raises(TypeError):
        cache.set("k", value)
    assert cache.get("k") == b"v"


def test_key_too_large_is_refused_and_changes_nothing(cache: shmkv.Cache) -> None:
    with pytest.raises(shmkv.KeyTooLarge, match="at most"):
        cache.set(b"k" * 5000, b"v")
    with pytest.raises(shmkv.KeyTooLarge):
        cache.get(b"k" * 5000)
    assert len(cache) == 0 and check_region(cache) == []


def test_value_larger_than_the_arena_raises_valuetoolarge(cache: shmkv.Cache) -> None:
    cache.set("k", b"v")
    with pytest.raises(shmkv.ValueTooLarge, match="arena_bytes"):
        cache.set("big", b"x" * (8 << 20))
    assert cache.get("k") == b"v" and "big" not in cache


def test_a_value_past_the_largest_entry_raises_valuetoolarge_whatever_the_arena(
        cache: shmkv.Cache) -> None:
    # a block's size leaves the block word's top bit to the segment (layout.py): < 2 GiB
    cache.set("k", b"v")
    huge = np.zeros(2**31, dtype=np.uint8)  # calloc'd: no page is touched before the refusal
    with pytest.raises(shmkv.ValueTooLarge, match="split the value"):
        cache.set("k", huge)
    assert cache.get("k") == b"v"


def test_full_arena_evicts_the_oldest_instead_of_failing(cache: shmkv.Cache) -> None:
    blob = b"x" * (256 << 10)
    for i in range(100):  # 25 MiB through a 4 MiB arena
        cache.set(f"k{i}", blob)
    assert cache.get("k99") == blob and cache.get("k0") is None
    assert cache.stats()["evictions"] > 0
    assert check_region(cache) == []


def test_bad_ttl_raises_and_changes_nothing(cache: shmkv.Cache) -> None:
    for ttl, exc in ((0, ValueError), (-1, ValueError), (float("nan"), ValueError),
                     (1e12, ValueError), ("10", TypeError), (True, TypeError)):
        with pytest.raises(exc):
            cache.set("k", b"v", ttl_s=ttl)
    assert "k" not in cache


def test_ttl_expires_on_the_injected_clock(cache: shmkv.Cache, fake_clock) -> None:
    cache.set("k", b"v", ttl_s=10)
    fake_clock.advance(9.9)
    assert cache.get("k") == b"v"
    fake_clock.advance(0.2)
    assert cache.get("k") is None and "k" not in cache
    assert list(cache) == []


def test_set_without_ttl_clears_a_previous_ttl(cache: shmkv.Cache, fake_clock) -> None:
    cache.set("k", b"v", ttl_s=1)
    cache.set("k", b"w")
    fake_clock.advance(5)
    assert cache.get("k") == b"w"


def test_incr_starts_at_zero_and_stores_decimal_ascii(cache: shmkv.Cache) -> None:
    assert cache.incr("n") == 1
    assert cache.incr("n", 41) == 42
    assert cache.incr("n", -50) == -8
    assert cache.get("n") == b"-8"


def test_incr_keeps_the_ttl(cache: shmkv.Cache, fake_clock) -> None:
    cache.set("n", b"1", ttl_s=10)
    assert cache.incr("n") == 2
    fake_clock.advance(11)
    assert cache.get("n") is None


def test_incr_on_a_non_integer_raises_notaninteger(cache: shmkv.Cache) -> None:
    # Redis's form, as its INCR reads it: no "+", no leading zeros, no "-0", within int64
    for bad in (b"abc", b"1.5", b" 1", b"", b"1_000", b"+1", b"007", b"-0", b"-01",
                b"9223372036854775808", b"-9223372036854775809"):
        cache.set("n", bad)
        with pytest.raises(shmkv.NotAnInteger):
            cache.incr("n")
        assert cache.get("n") == bad


def test_incr_refuses_to_overflow_int64(cache: shmkv.Cache) -> None:
    cache.set("n", str(2**63 - 1))
    with pytest.raises(shmkv.NotAnInteger, match="overflow"):
        cache.incr("n")
    assert cache.get("n") == str(2**63 - 1).encode()


def test_cas_succeeds_only_with_the_current_version(cache: shmkv.Cache) -> None:
    cache.set("k", b"a")
    value, version = cache.get_with_version("k")
    assert value == b"a"
    assert cache.cas("k", b"b", version) is True
    assert cache.cas("k", b"c", version) is False
    assert cache.get("k") == b"b"


def test_cas_fails_on_an_absent_key(cache: shmkv.Cache) -> None:
    assert cache.cas("k", b"v", 1) is False
    assert "k" not in cache


def test_every_write_gets_a_new_version(cache: shmkv.Cache) -> None:
    cache.set("k", b"a")
    v1 = cache.get_with_version("k")[1]
    cache.set("k", b"a")
    assert cache.get_with_version("k")[1] > v1
    assert cache.get_with_version("absent") is None


def test_a_stored_version_is_never_zero_and_cas_tells_versions_apart_across_its_wrap(
        cache: shmkv.Cache) -> None:
    # an entry stores its stripe's writes counter's low 32 bits (layout.py): make it wrap
    cache.set("k", b"a")
    region = cache._region
    stripe = xxh3_64(b"k", region.seed) & (region.layout.n_stripes - 1)
    writes_at = (region.layout.stripes_offset + stripe * L.STRIPE_BYTES + L.S_WRITES) >> 3
    region.q[writes_at] = 2**32 - 2
    cache.set("k", b"b")  # the counter's low 32 bits all ones
    before = cache.get_with_version("k")[1]
    assert before == (2**32 - 1) << 8 | stripe
    cache.set("k", b"c")  # 2**32 would store 0, which means "never written": skipped
    assert region.q[writes_at] == 2**32 + 1
    value, version = cache.get_with_version("k")
    assert (value, version) == (b"c", 1 << 8 | stripe)
    assert cache.cas("k", b"d", before) is False and cache.cas("k", b"d", version) is True
    assert cache.get("k") == b"d" and check_region(cache) == []


def test_collections_isolate_keys(cache: shmkv.Cache) -> None:
    users = cache.collection("users")
    cache.set("k", b"root")
    users.set("k", b"user")
    assert cache.get("k") == b"root" and users.get("k") == b"user"
    assert len(cache) == 1 and len(users) == 1
    assert list(users) == [b"k"]
    assert cache.collections() == ["users"]


def test_collection_handles_on_the_same_name_share_keys(cache: shmkv.Cache) -> None:
    cache.collection("a").set("k", b"v")
    assert cache.collection("a").get("k") == b"v"


def test_rename_collection_keeps_keys_and_open_handles(cache: shmkv.Cache) -> None:
    old = cache.collection("old")
    old.set("k", b"v")
    cache.rename_collection("old", "new")
    assert cache.collections() == ["new"]
    assert cache.collection("new").get("k") == b"v"
    assert old.get("k") == b"v"


def test_rename_to_an_existing_name_raises_collectionexists(cache: shmkv.Cache) -> None:
    cache.collection("a"), cache.collection("b")
    with pytest.raises(shmkv.CollectionExists):
        cache.rename_collection("a", "b")
    with pytest.raises(shmkv.CollectionNotFound):
        cache.rename_collection("zzz", "c")


def test_drop_collection_deletes_its_keys_only(cache: shmkv.Cache) -> None:
    c = cache.collection("c")
    for i in range(500):
        c.set(f"k{i}", b"v")
        cache.set(f"k{i}", b"root")
    assert cache.drop_collection("c") == 500
    assert cache.collections() == [] and len(cache) == 500
    with pytest.raises(shmkv.CollectionNotFound, match="dropped"):
        c.set("k", b"v")
    assert check_region(cache) == []


def test_recreated_collection_starts_empty(cache: shmkv.Cache) -> None:
    cache.collection("c").set("k", b"v")
    cache.drop_collection("c")
    assert len(cache.collection("c")) == 0


def test_clear_empties_only_this_collection(cache: shmkv.Cache) -> None:
    c = cache.collection("c")
    c.set("a", b"1"), c.set("b", b"2"), cache.set("a", b"root")
    assert c.clear() == 2
    assert len(c) == 0 and cache.get("a") == b"root"


@pytest.mark.parametrize("name", ["", "x" * 41, "a\0b", 5])
def test_bad_collection_names_are_refused(cache: shmkv.Cache, name) -> None:
    with pytest.raises((ValueError, TypeError)):
        cache.collection(name)


def test_stats_counts_sets_deletes_and_items(cache: shmkv.Cache) -> None:
    for i in range(10):
        cache.set(f"k{i}", b"v")
    cache.delete("k0")
    s = cache.stats()
    assert (s["items"], s["sets"], s["deletes"]) == (9, 10, 1)
    assert s["arena_used_bytes"] + s["arena_free_bytes"] <= s["arena_bytes"]


def test_create_existing_region_raises_regionexists(cache, region_name) -> None:
    with pytest.raises(shmkv.RegionExists, match="exist_ok"):
        shmkv.Cache.create(region_name)


def test_create_with_exist_ok_attaches(cache, region_name) -> None:
    cache.set("k", b"v")
    with shmkv.Cache.create(region_name, exist_ok=True) as other:
        assert other.get("k") == b"v"


def test_open_absent_region_raises_regionnotfound(region_name) -> None:
    with pytest.raises(shmkv.RegionNotFound, match="create"):
        shmkv.Cache.open(region_name)


@pytest.mark.parametrize("name", ["", "a b", "x" * 300, 5, "a\0b"])
def test_bad_region_names_are_refused(name) -> None:
    with pytest.raises((ValueError, TypeError)):
        shmkv.Cache.create(name)


def test_closed_handle_raises_cacheclosed(region_name) -> None:
    c = shmkv.Cache.create(region_name, arena_bytes=1 << 20)
    coll = c.collection("c")
    c.close()
    for call in (lambda: c.get("k"), lambda: c.set("k", b"v"), lambda: len(c),
                 lambda: coll.get("k"), lambda: list(c)):
        with pytest.raises(shmkv.CacheClosed):
            call()
    c.close()  # idempotent


def test_with_block_closes_the_handle(region_name) -> None:
    with shmkv.Cache.create(region_name, arena_bytes=1 << 20) as c:
        c.set("k", b"v")
    assert c.closed


def test_region_objects_are_created_private(cache, region_name) -> None:
    mode = os.stat(f"/dev/shm/{region_name}").st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_unlink_removes_the_region(region_name) -> None:
    shmkv.Cache.create(region_name, arena_bytes=1 << 20).close()
    assert region_objects(region_name)
    assert shmkv.Cache.unlink(region_name) is True
    assert region_objects(region_name) == []
    assert shmkv.Cache.unlink(region_name) is False


def test_file_backed_region_keeps_data_across_close_and_open(tmp_path) -> None:
    path = str(tmp_path / "data.shmkv")
    try:
        with shmkv.Cache.create(path, arena_bytes=1 << 20) as c:
            c.set("k", b"v")
        with shmkv.Cache.open(path) as c:
            assert c.get("k") == b"v"
    finally:
        shmkv.Cache.unlink(path)


def test_garbage_region_file_is_refused_with_incompatiblelayout(tmp_path) -> None:
    path = tmp_path / "garbage.shmkv"
    path.write_bytes(os.urandom(1 << 16))
    with pytest.raises(shmkv.IncompatibleLayout):
        shmkv.Cache.open(str(path))


def test_many_keys_keep_the_region_consistent(cache: shmkv.Cache) -> None:
    for i in range(5000):
        cache.set(f"key-{i}", b"v" * (i % 300))
    for i in range(0, 5000, 3):
        cache.delete(f"key-{i}")
    assert len(cache) == 5000 - len(range(0, 5000, 3))
    assert all(cache.get(f"key-{i}") == (None if i % 3 == 0 else b"v" * (i % 300))
               for i in range(5000))
    assert check_region(cache) == []


def test_get_list_gives_one_value_or_none_per_key_in_the_keys_order(cache) -> None:
    cache.set("a", b"1")
    cache.set(b"b", b"22")
    users = cache.collection("users")
    users.set("a", b"in users")
    assert cache.get_list(["b", b"missing", "a", b"a", "b"]) == [b"22", None, b"1", b"1", b"22"]
    assert users.get_list(["a", "b"]) == [b"in users", None]
    assert cache.get_list([]) == []
    hits_before = cache.stats()["hits"]
    cache.get_list(["a", "a"])
    assert cache.stats()["hits"] == hits_before + 2  # each key read and counted, as get does


def test_get_list_stops_after_the_value_that_passes_max_bytes(cache) -> None:
    for key in "abcd":
        cache.set(key, b"x" * 10)
    assert cache.get_list(["a", "b", "c", "d"], 25) == [b"x" * 10] * 3
    assert cache.get_list(["a", "missing", "b"], 20) == [b"x" * 10, None, b"x" * 10]
    assert cache.get_list(["missing", "a"], 0) == [None, b"x" * 10]
    with pytest.raises(ValueError, match="max_bytes"):
        cache.get_list(["a"], -1)
    with pytest.raises(TypeError):
        cache.get_list(["a", 5])


def test_a_stripe_that_writers_keep_changing_is_listed_under_its_lock(
        cache: shmkv.Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every lock-free listing sees the stripe's seqlock move, as under a writer that never
    # stops (a Python listing of a large stripe takes a millisecond): the listing must still
    # end, under the stripe's lock, which holds writers off.
    cache.set("k", b"v")
    stripe = next(s for s in range(cache._smask + 1) if cache._stripe_keys(s))
    seq_at = cache._seq0 + stripe * L.STRIPE_Q
    real, listings = cache._list_stripe, []

    def listed_while_a_writer_goes_on(s: int) -> list[bytes]:
        listings.append(s)
        if len(listings) <= 1000:
            cache._q[seq_at] += 2  # a write that began and ended meanwhile
        return real(s)
    monkeypatch.setattr(cache, "_list_stripe", listed_while_a_writer_goes_on)
    assert cache._stripe_keys(stripe) == [b"k"]
    assert len(listings) == listing.STRIPE_LIST_TRIES + 1
    assert cache.get("k") == b"v"
