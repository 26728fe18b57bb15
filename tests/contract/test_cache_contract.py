"""The behaviour every implementation of the Cache API shares: one suite, run against a local
`shmkv.Cache` and against a `RemoteCache` talking to a real node process (`shmkv serve`).

Both backends live for the whole module (one region each, 2 MiB arena); each test starts from
an empty default collection and no named collections. Counters (stats) are therefore shared
between tests, and tests only look at how they move. Nothing here waits for time to pass: TTLs
are checked through ttl() bounds, and expiry through a TTL of one nanosecond.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from node_process import running_node
from tests_support import new_region_name

import shmkv
from shmkv.clients import RemoteCache
from shmkv.layout import MAX_KEY_BYTES

ARENA_BYTES = 2 << 20
HAS_ARRAYS = hasattr(shmkv.Cache, "set_array")
NO_ARRAYS = "Cache.set_array not available yet"


@pytest.fixture(scope="module")
def local_cache() -> Iterator[shmkv.Cache]:
    name = new_region_name()
    try:
        with shmkv.Cache.create(name, arena_bytes=ARENA_BYTES) as cache:
            yield cache
    finally:
        shmkv.Cache.unlink(name)


@pytest.fixture(scope="module")
def node_endpoint() -> Iterator[str]:
    with running_node(new_region_name(), "--arena-bytes", str(ARENA_BYTES)) as node:
        yield node.endpoint


@pytest.fixture(params=["local", pytest.param("remote", marks=pytest.mark.multiprocess)])
def store(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The backend under test, emptied before the test."""
    if request.param == "local":
        handle = request.getfixturevalue("local_cache")
        _empty(handle)
        yield handle
        return
    with RemoteCache(request.getfixturevalue("node_endpoint"), timeout_s=10, retries=0) as remote:
        _empty(remote)
        yield remote


def _empty(store: Any) -> None:
    store.clear()
    for name in store.collections():
        store.drop_collection(name)


def _needs(store: Any, method: str) -> None:
    if not hasattr(store, method):
        pytest.skip(f"Cache.{method} not available yet")


def _raised(call: Callable[[], object]) -> tuple[type[BaseException], str]:
    with pytest.raises(Exception) as info:
        call()
    return info.type, str(info.value)


# --- get / set / delete ---------------------------------------------------------------------
def test_get_returns_the_value_that_was_set(store) -> None:
    store.set("k", b"value")
    assert store.get("k") == b"value"


def test_get_returns_default_for_a_missing_key(store) -> None:
    assert store.get("missing") is None
    assert store.get("missing", b"fallback") == b"fallback"


def test_set_overwrites_the_previous_value(store) -> None:
    store.set("k", b"first")
    store.set("k", b"second, longer than the first")
    assert store.get("k") == b"second, longer than the first"


def test_str_key_and_its_utf8_bytes_are_the_same_key(store) -> None:
    store.set("clé", "välue")
    assert store.get("clé".encode()) == "välue".encode()


def test_values_may_be_empty_or_any_buffer(store) -> None:
    store.set("empty", b"")
    store.set("view", memoryview(b"abc"))
    store.set("array", np.arange(3, dtype="<u2"))
    assert store.get("empty") == b""
    assert store.get("view") == b"abc"
    assert store.get("array") == np.arange(3, dtype="<u2").tobytes()


def test_delete_reports_whether_the_key_was_present(store) -> None:
    store.set("k", b"v")
    assert store.delete("k") is True
    assert store.delete("k") is False
    assert store.get("k") is None


def test_a_failed_set_leaves_the_stored_value_untouched(store) -> None:
    store.set("k", b"kept")
    with pytest.raises(shmkv.ValueTooLarge):
        store.set("k", b"x" * (ARENA_BYTES + 1))
    assert store.get("k") == b"kept"


# --- the mapping protocol -------------------------------------------------------------------
def test_mapping_protocol_reads_writes_and_deletes(store) -> None:
    store["a"] = b"1"
    store["b"] = "2"
    assert store["a"] == b"1"
    assert "a" in store and "zzz" not in store
    assert len(store) == 2
    assert sorted(store) == sorted(store.keys()) == [b"a", b"b"]
    del store["a"]
    assert "a" not in store and len(store) == 1


def test_getitem_and_delitem_raise_keyerror_for_a_missing_key(store) -> None:
    with pytest.raises(KeyError):
        store["missing"]
    with pytest.raises(KeyError):
        del store["missing"]


# --- TTL ------------------------------------------------------------------------------------
def test_ttl_is_within_bounds_after_set_with_ttl(store) -> None:
    store.set("k", b"v", ttl_s=100)
    assert 0 < store.ttl("k") <= 100


def test_ttl_is_none_without_expiry_and_for_a_missing_key(store) -> None:
    store.set("k", b"v")
    assert store.ttl("k") is None
    assert store.ttl("missing") is None


def test_expire_sets_a_ttl_and_persist_removes_it(store) -> None:
    store.set("k", b"v", ttl_s=1000)
    assert store.expire("k", 50) is True
    assert 0 < store.ttl("k") <= 50
    assert store.persist("k") is True
    assert store.ttl("k") is None
    assert store.get("k") == b"v"


def test_expire_and_persist_return_false_for_a_missing_key(store) -> None:
    assert store.expire("missing", 10) is False
    assert store.persist("missing") is False


def test_get_returns_default_once_the_ttl_has_elapsed(store) -> None:
    store.set("k", b"v", ttl_s=1e-9)  # expires one nanosecond after the write
    assert store.get("k") is None
    assert "k" not in store


def test_set_without_ttl_removes_the_previous_ttl(store) -> None:
    store.set("k", b"v", ttl_s=100)
    store.set("k", b"v")
    assert store.ttl("k") is None


def test_set_rejects_a_ttl_that_is_not_positive(store) -> None:
    with pytest.raises(ValueError):
        store.set("k", b"v", ttl_s=-1)
    assert "k" not in store


# --- incr and cas ---------------------------------------------------------------------------
def test_incr_counts_from_zero_by_delta(store) -> None:
    assert store.incr("n") == 1
    assert store.incr("n", 10) == 11
    assert store.incr("n", -12) == -1
    assert store.get("n") == b"-1"


def test_incr_keeps_the_ttl(store) -> None:
    store.set("n", b"5", ttl_s=100)
    assert store.incr("n") == 6
    assert 0 < store.ttl("n") <= 100


def test_incr_raises_not_an_integer_for_a_non_decimal_value(store) -> None:
    store.set("n", b"one")
    with pytest.raises(shmkv.NotAnInteger):
        store.incr("n")
    assert store.get("n") == b"one"


def test_cas_stores_for_the_current_version_and_refuses_a_stale_one(store) -> None:
    store.set("k", b"v0")
    value, version = store.get_with_version("k")
    assert value == b"v0"
    assert store.cas("k", b"winner", version) is True
    assert store.cas("k", b"loser", version) is False
    assert store.get("k") == b"winner"
    assert store.get_with_version("k")[1] != version


def test_cas_refuses_a_missing_key_and_get_with_version_returns_none(store) -> None:
    assert store.get_with_version("missing") is None
    assert store.cas("missing", b"v", 1) is False
    assert "missing" not in store


# --- collections ----------------------------------------------------------------------------
def test_collection_keys_are_isolated_from_the_default_collection(store) -> None:
    users = store.collection("users")
    users.set("k", b"in users")
    store.set("k", b"in default")
    assert users.get("k") == b"in users"
    assert store.get("k") == b"in default"
    assert users.keys() == [b"k"] and len(users) == 1
    assert users.stats()["collection"] == "users"


def test_collections_lists_the_named_collections(store) -> None:
    assert store.collections() == []
    store.collection("b")
    store.collection("a")
    assert store.collections() == ["a", "b"]


def test_collection_of_an_existing_name_opens_it(store) -> None:
    store.collection("users").set("k", b"v")
    assert store.collection("users").get("k") == b"v"


def test_rename_collection_keeps_its_keys_under_the_new_name(store) -> None:
    store.collection("old").set("k", b"v")
    store.rename_collection("old", "new")
    assert store.collections() == ["new"]
    assert store.collection("new").get("k") == b"v"


def test_rename_collection_refuses_a_missing_or_taken_name(store) -> None:
    store.collection("a")
    store.collection("b")
    with pytest.raises(shmkv.CollectionNotFound):
        store.rename_collection("missing", "c")
    with pytest.raises(shmkv.CollectionExists):
        store.rename_collection("a", "b")


def test_drop_collection_removes_its_keys_and_later_writes_fail(store) -> None:
    users = store.collection("users")
    users.set("a", b"1")
    users.set("b", b"2")
    assert store.drop_collection("users") == 2
    assert store.collections() == []
    with pytest.raises(shmkv.CollectionNotFound):
        users.set("c", b"3")


def test_drop_collection_raises_collection_not_found_for_a_missing_name(store) -> None:
    with pytest.raises(shmkv.CollectionNotFound):
        store.drop_collection("missing")


def test_clear_removes_the_keys_of_its_collection_only(store) -> None:
    users = store.collection("users")
    users.set("u", b"1")
    store.set("a", b"1")
    store.set("b", b"2")
    assert store.clear() == 2
    assert len(store) == 0 and users.get("u") == b"1"


def test_collection_refuses_a_bad_name(store) -> None:
    with pytest.raises(ValueError):
        store.collection("")
    with pytest.raises(TypeError):
        store.collection(5)


# --- stats ----------------------------------------------------------------------------------
def test_stats_reports_sizes_and_moving_counters(store) -> None:
    before = store.stats()
    store.set("k", b"v")
    store.get("k")
    store.get("missing")
    after = store.stats()
    assert {"region", "arena_bytes", "items", "hits", "misses", "sets", "deletes",
            "evictions", "expirations", "segments", "collection"} <= after.keys()
    assert after["arena_bytes"] <= ARENA_BYTES and after["items"] == 1
    assert after["sets"] == before["sets"] + 1
    assert after["hits"] >= before["hits"] + 1 and after["misses"] >= before["misses"] + 1


# --- errors ---------------------------------------------------------------------------------
def test_a_key_longer_than_the_format_allows_raises_key_too_large(store) -> None:
    with pytest.raises(shmkv.KeyTooLarge):
        store.set("k" * (MAX_KEY_BYTES + 1), b"v")
    with pytest.raises(shmkv.KeyTooLarge):
        store.get(b"k" * (MAX_KEY_BYTES + 1))


def test_a_value_larger_than_the_arena_raises_value_too_large(store) -> None:
    with pytest.raises(shmkv.ValueTooLarge):
        store.set("k", b"x" * (ARENA_BYTES + 1))


@pytest.mark.parametrize("key", [5, None, 1.5, ["k"]], ids=repr)
def test_a_key_of_the_wrong_type_raises_type_error(store, key) -> None:
    with pytest.raises(TypeError, match="key must be str or bytes"):
        store.set(key, b"v")
    with pytest.raises(TypeError, match="key must be str or bytes"):
        store.get(key)


@pytest.mark.parametrize("value", [5, None, 1.5, True, object(), np.array([object()])],
                         ids=lambda v: type(v).__name__)
def test_a_value_of_the_wrong_type_raises_type_error(store, value) -> None:
    with pytest.raises(TypeError):
        store.set("k", value)
    assert "k" not in store


@pytest.mark.parametrize("call", [
    lambda s: s.set("k", b"v", ttl_s="soon"),
    lambda s: s.expire("k", "soon"),
    lambda s: s.incr("n", 1.5),
    lambda s: s.cas("k", b"v", "version"),
], ids=["ttl_s", "expire", "delta", "version"])
def test_a_number_argument_of_the_wrong_type_raises_type_error(store, call) -> None:
    store.set("k", b"v")
    with pytest.raises(TypeError):
        call(store)
    assert store.get("k") == b"v"


def test_a_closed_handle_raises_cache_closed(store) -> None:
    if isinstance(store, shmkv.Cache):  # the module's handle: close a collection handle
        store = store.collection("c")
    store.close()
    assert store.closed
    with pytest.raises(shmkv.CacheClosed):
        store.set("k", b"v")


# --- batches --------------------------------------------------------------------------------
def test_get_many_returns_the_keys_that_are_present(store) -> None:
    _needs(store, "get_many")
    store.set("a", b"1")
    store.set(b"b", b"2")
    assert store.get_many(["a", b"b", "missing"]) == {"a": b"1", b"b": b"2"}
    assert store.get_many([]) == {}


def test_set_many_stores_every_pair_with_the_ttl(store) -> None:
    _needs(store, "set_many")
    store.set_many({"a": b"1", b"b": "2"}, ttl_s=100)
    assert store.get("a") == b"1" and store.get("b") == b"2"
    assert 0 < store.ttl("a") <= 100


def test_batches_work_in_a_collection(store) -> None:
    _needs(store, "set_many")
    users = store.collection("users")
    users.set_many({"a": b"1"})
    assert users.get_many(["a"]) == {"a": b"1"}
    assert store.get_many(["a"]) == {}


# --- arrays ---------------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_ARRAYS, reason=NO_ARRAYS)
@pytest.mark.parametrize("arr", [
    np.arange(12, dtype="<f8").reshape(3, 4),
    np.arange(5, dtype=">i4"),
    np.array(7, dtype=np.int16),
    np.zeros((0, 3), dtype=np.float32),
    np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "<i4"), ("b", "<f8")]),
    np.arange(4, dtype="<i8").view("<M8[ns]"),
    np.arange(24, dtype=np.uint8).reshape(2, 3, 4)[:, ::2],  # not contiguous
], ids=["2d-f8", "big-endian", "0d", "empty", "structured", "datetime", "strided"])
def test_set_array_round_trips_dtype_shape_and_data(store, arr) -> None:
    store.set_array("a", arr)
    got = store.get_array("a")
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)


@pytest.mark.skipif(not HAS_ARRAYS, reason=NO_ARRAYS)
def test_get_array_returns_default_for_a_missing_key(store) -> None:
    assert store.get_array("missing") is None
    assert store.get_array("missing", default=0) == 0


@pytest.mark.skipif(not HAS_ARRAYS, reason=NO_ARRAYS)
def test_set_array_refuses_what_is_not_an_array_of_plain_values(store) -> None:
    with pytest.raises(TypeError):
        store.set_array("a", [1, 2, 3])
    with pytest.raises(TypeError):
        store.set_array("a", np.array([object()]))


@pytest.mark.skipif(not HAS_ARRAYS, reason=NO_ARRAYS)
def test_get_array_of_a_value_stored_with_set_raises_type_error(store) -> None:
    store.set("b", b"bytes")
    with pytest.raises(TypeError, match="stored with set"):
        store.get_array("b")


@pytest.mark.skipif(not HAS_ARRAYS, reason=NO_ARRAYS)
def test_get_array_returns_an_array_the_caller_may_change(store) -> None:
    store.set_array("a", np.arange(3))
    got = store.get_array("a")
    got[0] = 7
    assert store.get_array("a")[0] == 0


@pytest.mark.skipif(not HAS_ARRAYS, reason=NO_ARRAYS)
def test_set_array_with_ttl_has_a_ttl(store) -> None:
    store.set_array("a", np.arange(3), ttl_s=100)
    assert 0 < store.ttl("a") <= 100


def test_publish_takes_str_or_bytes_and_returns_nothing(store) -> None:
    # fire and forget on both: what subscribers get is tests/integration/test_pubsub.py
    assert store.publish("news", b"\x00bytes") is None
    assert store.publish(b"news", "text") is None


# --- Redis's string commands: set options, getdel, getex, append, rename, strlen, type ----------
def test_set_nx_stores_only_when_the_key_is_absent(store) -> None:
    assert store.set("k", b"first", nx=True) is True
    assert store.set("k", b"second", nx=True) is False
    assert store.get("k") == b"first"


def test_set_xx_stores_only_when_the_key_is_present(store) -> None:
    assert store.set("k", b"v", xx=True) is False
    assert "k" not in store
    store.set("k", b"first")
    assert store.set("k", b"second", xx=True) is True
    assert store.get("k") == b"second"


def test_set_nx_and_xx_count_an_expired_key_as_absent(store) -> None:
    store.set("k", b"old", ttl_s=1e-9)
    assert store.set("k", b"v", xx=True) is False
    assert store.set("k", b"new", nx=True) is True
    assert store.get("k") == b"new" and store.ttl("k") is None


def test_set_keepttl_keeps_the_expiry_and_ttl_s_replaces_it(store) -> None:
    store.set("k", b"v", ttl_s=100)
    assert store.set("k", b"w", keepttl=True) is None
    assert store.get("k") == b"w" and 0 < store.ttl("k") <= 100
    store.set("k", b"x", ttl_s=1000)
    assert 100 < store.ttl("k") <= 1000


def test_set_keepttl_on_an_absent_key_stores_it_without_expiry(store) -> None:
    store.set("k", b"v", keepttl=True)
    assert store.get("k") == b"v" and store.ttl("k") is None


def test_set_get_returns_the_old_value_whether_or_not_it_stored(store) -> None:
    assert store.set("k", b"first", get=True) is None
    assert store.set("k", b"second", get=True) == b"first"
    assert store.set("k", b"third", nx=True, get=True) == b"second"  # not stored
    assert store.get("k") == b"second"
    assert store.set("gone", b"v", xx=True, get=True) is None and "gone" not in store


def test_set_refuses_nx_with_xx_and_keepttl_with_a_ttl(store) -> None:
    store.set("k", b"kept", ttl_s=100)
    with pytest.raises(ValueError, match="exclude"):
        store.set("k", b"v", nx=True, xx=True)
    with pytest.raises(ValueError, match="keepttl"):
        store.set("k", b"v", ttl_s=5, keepttl=True)
    with pytest.raises(TypeError, match="nx must be True or False"):
        store.set("k", b"v", nx="yes")
    assert store.get("k") == b"kept" and 5 < store.ttl("k") <= 100


def test_getdel_returns_the_value_and_removes_the_key(store) -> None:
    store.set("k", b"v")
    assert store.getdel("k") == b"v"
    assert "k" not in store
    assert store.getdel("k") is None


def test_getdel_counts_an_expired_key_as_absent(store) -> None:
    store.set("k", b"v", ttl_s=1e-9)
    assert store.getdel("k") is None
    assert len(store) == 0  # and it is reclaimed


def test_getex_sets_or_clears_the_ttl_and_returns_the_value(store) -> None:
    store.set("k", b"v")
    assert store.getex("k") == b"v" and store.ttl("k") is None
    assert store.getex("k", 100) == b"v" and 0 < store.ttl("k") <= 100
    assert store.getex("k", persist=True) == b"v" and store.ttl("k") is None
    assert store.getex("missing", 100) is None and "missing" not in store


def test_getex_counts_an_expired_key_as_absent(store) -> None:
    store.set("k", b"v", ttl_s=1e-9)
    assert store.getex("k", persist=True) is None
    assert "k" not in store


def test_getex_refuses_a_ttl_with_persist(store) -> None:
    store.set("k", b"v", ttl_s=100)
    with pytest.raises(ValueError, match="not both"):
        store.getex("k", 5, persist=True)
    assert 5 < store.ttl("k") <= 100


def test_append_creates_extends_and_returns_the_new_length(store) -> None:
    assert store.append("k", b"ab") == 2
    assert store.append("k", "cd") == 4
    assert store.append("k", b"") == 4
    assert store.get("k") == b"abcd"


def test_append_keeps_the_ttl(store) -> None:
    store.set("k", b"ab", ttl_s=100)
    assert store.append("k", b"c" * 500) == 502  # relocated: a larger block
    assert 0 < store.ttl("k") <= 100


def test_append_to_an_expired_key_starts_from_empty_without_ttl(store) -> None:
    store.set("k", b"old", ttl_s=1e-9)
    assert store.append("k", b"new") == 3
    assert store.get("k") == b"new" and store.ttl("k") is None


def test_append_that_cannot_fit_leaves_the_value_untouched(store) -> None:
    store.set("k", b"kept")
    with pytest.raises(shmkv.ValueTooLarge):
        store.append("k", b"x" * ARENA_BYTES)
    assert store.get("k") == b"kept"


def test_rename_moves_the_value_and_the_ttl(store) -> None:
    store.set("old", b"v", ttl_s=100)
    store.set("new", b"replaced")
    assert store.rename("old", "new") is True
    assert "old" not in store
    assert store.get("new") == b"v" and 0 < store.ttl("new") <= 100
    assert len(store) == 1


def test_rename_without_ttl_drops_the_ttl_of_the_key_it_replaces(store) -> None:
    store.set("old", b"v")
    store.set("new", b"w", ttl_s=100)
    store.rename("old", "new")
    assert store.ttl("new") is None


def test_rename_of_an_absent_or_expired_key_raises_keyerror(store) -> None:
    store.set("new", b"kept")
    with pytest.raises(KeyError):
        store.rename("missing", "new")
    store.set("old", b"v", ttl_s=1e-9)
    with pytest.raises(KeyError):
        store.rename("old", "new")
    assert store.get("new") == b"kept"


def test_rename_nx_does_nothing_when_the_new_key_exists(store) -> None:
    store.set("old", b"v")
    store.set("new", b"w")
    assert store.rename("old", "new", nx=True) is False
    assert store.get("old") == b"v" and store.get("new") == b"w"
    store.set("expired", b"x", ttl_s=1e-9)
    assert store.rename("old", "expired", nx=True) is True
    assert store.get("expired") == b"v" and "old" not in store


def test_rename_onto_itself_does_nothing(store) -> None:
    store.set("k", b"v", ttl_s=100)
    assert store.rename("k", "k") is True
    assert store.rename("k", b"k", nx=True) is False  # as RENAMENX: the new key exists
    assert store.get("k") == b"v" and 0 < store.ttl("k") <= 100
    with pytest.raises(KeyError):
        store.rename("missing", "missing")


def test_rename_stays_within_the_handle_collection(store) -> None:
    users = store.collection("users")
    users.set("old", b"v")
    store.set("new", b"root's")
    assert users.rename("old", "new") is True
    assert users.get("new") == b"v" and store.get("new") == b"root's"
    with pytest.raises(KeyError):
        store.rename("old", "other")


def test_strlen_and_type_of_a_string_and_of_an_absent_key(store) -> None:
    store.set("k", b"12345")
    assert store.strlen("k") == 5 and store.type("k") == "string"
    assert store.strlen("missing") == 0 and store.type("missing") is None
    store.set("e", b"v", ttl_s=1e-9)
    assert store.strlen("e") == 0 and store.type("e") is None


@pytest.mark.skipif(not HAS_ARRAYS, reason=NO_ARRAYS)
def test_string_commands_on_an_array_raise_wrongtype_and_change_nothing(store) -> None:
    store.set_array("a", np.arange(4), ttl_s=100)
    for call in (lambda: store.append("a", b"x"), lambda: store.getdel("a"),
                 lambda: store.getex("a", persist=True), lambda: store.strlen("a"),
                 lambda: store.set("a", b"v", get=True)):
        with pytest.raises(shmkv.WrongType):
            call()
    assert store.type("a") == "shmkv-array"
    assert (store.get_array("a") == np.arange(4)).all() and 0 < store.ttl("a") <= 100


@pytest.mark.skipif(not HAS_ARRAYS, reason=NO_ARRAYS)
def test_rename_moves_an_array_to_a_key_of_any_length(store) -> None:
    arr = np.arange(12, dtype="<f8").reshape(3, 4)
    store.set_array("a", arr)
    for new in ("ab", "abc", "a" * 9, "a"):  # the data's alignment follows the key's length
        store.rename(next(iter(store)), new)
        assert (store.get_array(new) == arr).all() and store.type(new) == "shmkv-array"


# --- the remote client raises what the engine raises -----------------------------------------
FAILING_CALLS: list[tuple[str, Callable[[Any], object]]] = [
    ("key type", lambda s: s.set(5, b"v")),
    ("value type", lambda s: s.set("k", 5)),
    ("lone surrogate", lambda s: s.set("\ud800", b"v")),
    ("key too large", lambda s: s.set("k" * (MAX_KEY_BYTES + 1), b"v")),
    ("value too large", lambda s: s.set("k", b"x" * (ARENA_BYTES + 1))),
    ("ttl type", lambda s: s.set("k", b"v", ttl_s="soon")),
    ("ttl value", lambda s: s.expire("k", -1)),
    ("not an integer", lambda s: (s.set("n", b"x"), s.incr("n"))),
    ("delta type", lambda s: s.incr("n", 1.5)),
    ("version type", lambda s: s.cas("k", b"v", "1")),
    ("collection name", lambda s: s.collection("")),
    ("collection name type", lambda s: s.collection(5)),
    ("drop missing", lambda s: s.drop_collection("missing")),
    ("rename missing", lambda s: s.rename_collection("missing", "x")),
    ("publish channel type", lambda s: s.publish(5, b"m")),
    ("publish message type", lambda s: s.publish("news", 5)),
    ("publish message too large", lambda s: s.publish("news", b"x" * (ARENA_BYTES // 16))),
    ("set nx with xx", lambda s: s.set("k", b"v", nx=True, xx=True)),
    ("set keepttl with ttl", lambda s: s.set("k", b"v", ttl_s=1, keepttl=True)),
    ("set option type", lambda s: s.set("k", b"v", get=1)),
    ("getex ttl with persist", lambda s: s.getex("k", 1, persist=True)),
    ("rename missing key", lambda s: s.rename("missing", "x")),
    ("append wrong type", lambda s: (s.set_array("a", np.arange(2)), s.append("a", b"x"))),
]


@pytest.mark.multiprocess
@pytest.mark.parametrize("call", [c for _, c in FAILING_CALLS], ids=[n for n, _ in FAILING_CALLS])
def test_remote_errors_have_the_class_and_message_of_local_errors(local_cache, node_endpoint,
                                                                   call) -> None:
    _empty(local_cache)
    with RemoteCache(node_endpoint, timeout_s=10, retries=0) as remote:
        _empty(remote)
        assert _raised(lambda: call(remote)) == _raised(lambda: call(local_cache))
