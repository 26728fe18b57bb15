"""shmkv._core, the compiled read path: a Reader over a real region reads exactly what the
pure-Python read path (reader.py, formerly Cache._read) reads: values, versions, expiry,
collections, errors, counts, access bytes. It never returns a torn value, and its constants are
layout.py's."""

from __future__ import annotations

import gc
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from tests_support import new_region_name, torn_reads

import shmkv
from shmkv import cache as C
from shmkv import layout as L
from shmkv.coerce import key_bytes
from shmkv.hashing import xxh3_64

try:
    from shmkv import _core
except ImportError as exc:  # pragma: no cover - a build without a C compiler
    pytest.skip(f"shmkv._core is not built ({exc})", allow_module_level=True)
try:  # the pure-Python read path, the reference the compiled one is held to
    from shmkv.reader import Reader as PureReader
except ImportError:  # pragma: no cover - a tree where Cache._read is still the reference
    PureReader = None

Reader = Callable[..., "_core.Reader"]


def make_reader(c: shmkv.Cache, clock: Callable[[], int] | None = None,
                engine: type | None = None) -> _core.Reader:
    """The Reader a Cache handle would own: its region, its collection, its callbacks."""
    region, lay = c._region, c._region.layout
    return (engine or _core.Reader)(
        region.mm, lay.n_stripes, lay.slots_per_stripe, lay.stripes_offset, lay.index_offset,
        lay.access_offset, lay.arena_offset, lay.arena_bytes, region.seed, c._coll,
        region.clock if clock is None else clock, key_bytes, c._wait_writer,
        shmkv.CorruptRegion)


@pytest.fixture
def readers(cache: shmkv.Cache) -> Iterator[Reader]:
    """make_reader, with every reader closed before the cache (a reader holds the mapping's
    buffer: mmap.close() refuses while it does)."""
    made: list[_core.Reader] = []

    def make(c: shmkv.Cache = cache, clock: Callable[[], int] | None = None,
             engine: type | None = None) -> _core.Reader:
        made.append(make_reader(c, clock, engine))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def reference(cache: shmkv.Cache, readers: Reader) -> Callable[..., object]:
    """What the compiled reader is compared with: the pure-Python Reader over the same
    region, or, in a tree without one, the Cache handle itself (its own _read)."""

    def make(c: shmkv.Cache = cache, clock: Callable[[], int] | None = None) -> object:
        if PureReader is not None:
            return readers(c, clock, PureReader)
        return _CacheAsReader(c)

    return make


class _CacheAsReader:
    def __init__(self, c: shmkv.Cache) -> None:
        self.get, self.get_with_version, self.get_many = c.get, c.get_with_version, c.get_many
        self.contains = c.__contains__


@pytest.fixture
def big_cache() -> Iterator[shmkv.Cache]:
    name = new_region_name()
    c = shmkv.Cache.create(name, arena_bytes=16 << 20)
    try:
        yield c
    finally:
        if not c.closed:
            c.close()
        shmkv.Cache.unlink(name)


def _slot_of(c: shmkv.Cache, key: bytes) -> int:
    """The index position (stripe * per + i) of key's slot: the one with its tag."""
    lay = c._region.layout
    h = xxh3_64(key, c._region.seed ^ c._coll)
    stripe, per = h & (lay.n_stripes - 1), lay.slots_per_stripe
    i = (h >> 32) % per
    q = c._region.q
    while q[lay.index_offset // 8 + stripe * per + i] >> 32 != h >> 32:
        i = (i + 1) % per
    return stripe * per + i


def _error(call: Callable[[], object]) -> tuple[type, str]:
    with pytest.raises(Exception) as info:
        call()
    return info.type, str(info.value)


# --- constants and hashing ------------------------------------------------------------------
def test_every_layout_constant_of_the_c_code_equals_layout_py() -> None:
    assert {"LAYOUT_VERSION", "STRIPE_BYTES", "S_SEQ", "ENTRY_HEADER_BYTES", "E_VERSION",
            "E_EXPIRES_AT", "E_VALUE_LEN", "E_KEY_COLL", "MAX_KEY_BYTES", "ALIGN"} \
        <= set(_core.LAYOUT)
    for name, value in _core.LAYOUT.items():
        assert getattr(L, name) == value, name


def test_read_path_constants_equal_cache_py(cache: shmkv.Cache) -> None:
    assert _core.READ_SPINS_BEFORE_YIELD == C.READ_SPINS_BEFORE_YIELD
    at = _core.H_LAYOUT_VERSION  # the header's layout_version, right after the magic
    assert int.from_bytes(cache._region.mm[at:at + 4], "little") == L.LAYOUT_VERSION


@pytest.mark.parametrize("seed", [0, 1, 0x9E3779B97F4A7C15, 2**64 - 1])
def test_c_xxh3_equals_python_xxhash_at_every_length(seed: int) -> None:
    rng = random.Random(seed)
    for n in [*range(0, 260), 1000, 4095, 4096, 100_000]:
        data = rng.randbytes(n)
        assert _core.xxh3_64(data, seed) == xxh3_64(data, seed), n


# --- what a read returns ------------------------------------------------------------------
def test_get_contains_and_versions_agree_with_the_reference(cache, readers, reference,
                                                          fake_clock) -> None:
    r, ref = readers(), reference()
    cache.set("forever", b"v1")
    cache.set("short", b"v2", ttl_s=10)
    cache.set("exact", b"v3", ttl_s=1)
    cache.set("forever", b"v1 again")  # a version that is not the first
    keys = ["forever", "short", "exact", "absent", b"forever", b"absent"]

    def agree() -> None:
        for k in keys:
            for other in (ref, cache):
                assert r.get(k) == other.get(k), k
                assert r.get(k, b"dflt") == other.get(k, b"dflt"), k
                assert r.get_with_version(k) == other.get_with_version(k), k
            assert r.contains(k) is ref.contains(k) is (k in cache), k

    agree()
    assert r.get_with_version("forever")[0] == b"v1 again"
    fake_clock.advance(1)  # "exact" expires at now: expired (exp <= now), as in Cache
    assert r.get("exact") is None and r.get("short") == b"v2"
    agree()
    fake_clock.advance(10)
    assert r.get("short") is None and not r.contains("short")
    agree()


def test_get_returns_the_default_object_itself_and_takes_keywords(cache, readers) -> None:
    r = readers()
    sentinel = object()
    assert r.get("nope", sentinel) is sentinel
    assert r.get(key="nope", default=sentinel) is sentinel
    cache.set("k", b"v")
    assert r.get("k", default=sentinel) == b"v"
    for bad in [lambda: r.get(), lambda: r.get("k", 1, 2), lambda: r.get("k", nope=1),
                lambda: r.get("k", key="k")]:
        with pytest.raises(TypeError):
            bad()


def test_the_default_clock_is_read_directly_and_expires_entries() -> None:
    name = new_region_name()
    c = shmkv.Cache.create(name, arena_bytes=1 << 20)  # time.time_ns
    r = make_reader(c)
    try:
        c.set("soon", b"v", ttl_s=0.05)
        assert r.get("soon") == b"v"
        time.sleep(0.1)
        assert r.get("soon") is None and c.get("soon") is None
    finally:
        r.close()
        c.close()
        shmkv.Cache.unlink(name)


@pytest.mark.parametrize("now, live", [
    (lambda ns: float(ns), True), (lambda ns: float(ns + 10**10), False),
    (lambda ns: -1, True), (lambda ns: 2**70, False), (lambda ns: ns + 5 * 10**9, False),
])
def test_a_clock_of_any_numeric_kind_compares_as_python_does(cache, readers, reference,
                                                             fake_clock, now, live) -> None:
    """The read path keeps an entry while `expires_at_ns > clock()`, whatever clock()
    returns."""
    cache.set("k", b"v", ttl_s=5)  # expires at fake_clock.now_ns + 5 s
    r = readers(clock=lambda: now(fake_clock.now_ns))
    assert r.get("k") == (b"v" if live else None)
    assert r.contains("k") is live
    if PureReader is not None:
        assert reference(clock=lambda: now(fake_clock.now_ns)).get("k") == r.get("k")


def test_str_bytes_bytearray_and_memoryview_keys_are_the_same_key(cache, readers) -> None:
    r = readers()
    cache.set("clé", b"v")
    for k in ["clé", "clé".encode(), bytearray("clé".encode()), memoryview("clé".encode())]:
        assert r.get(k) == b"v" and r.contains(k)
        assert r.get_with_version(k) == cache.get_with_version(k)
    cache.set("日本語🔑", b"w")
    assert r.get("日本語🔑") == b"w"
    cache.set(b"", b"empty key")
    assert r.get("") == b"empty key"


@pytest.mark.parametrize("key", ["\ud800", "a\udfffb", 1, 1.5, None, ["a"], object(),
                                 b"x" * (L.MAX_KEY_BYTES + 1), "x" * (L.MAX_KEY_BYTES + 1),
                                 "é" * (L.MAX_KEY_BYTES // 2 + 1),
                                 bytearray(L.MAX_KEY_BYTES + 1)])
def test_a_bad_key_raises_the_projects_own_error(cache, readers, reference, key) -> None:
    r, ref = readers(), reference()
    expected = _error(lambda: key_bytes(key))  # coerce.py's rule and message
    assert expected[0] in (TypeError, ValueError, shmkv.KeyTooLarge)
    assert _error(lambda: cache.get(key)) == _error(lambda: ref.get(key)) == expected
    for call in (lambda: r.get(key), lambda: r.contains(key), lambda: r.get_with_version(key),
                 lambda: r.get_many([key])):
        assert _error(call) == expected
    assert r.take_counts() == (0, 0)


def test_keys_up_to_max_key_bytes_are_read(cache, readers) -> None:
    r = readers()
    longest = b"k" * L.MAX_KEY_BYTES
    cache.set(longest, b"long")
    cache.set("é" * (L.MAX_KEY_BYTES // 2), b"long str")  # 4096 bytes of UTF-8
    assert r.get(longest) == b"long"
    assert r.get("k" * L.MAX_KEY_BYTES) == b"long"
    assert r.get("é" * (L.MAX_KEY_BYTES // 2)) == b"long str"


def test_a_collection_reader_sees_only_its_collection(cache, readers) -> None:
    users = cache.collection("users")
    users["k"] = "in users"
    cache["k"] = "in default"
    users["only-users"] = "u"
    root, r_users = readers(), readers(users)
    assert r_users.get("k") == b"in users" and root.get("k") == b"in default"
    assert r_users.get("only-users") == b"u" and root.get("only-users") is None
    assert r_users.get_with_version("k") == users.get_with_version("k")
    assert not r_users.contains("absent") and "absent" not in users


@pytest.mark.parametrize("size", [0, 1, 100, 4096, 70_000])
def test_values_of_any_size_read_back_exactly(cache, readers, size) -> None:
    r = readers()
    value = random.Random(size).randbytes(size)
    cache.set("v", value)
    assert r.get("v") == value
    assert r.get_with_version("v") == (value, cache.get_with_version("v")[1])


def test_a_value_over_the_gil_release_size_reads_back_exactly(big_cache) -> None:
    value = random.Random(2).randbytes(2 << 20)
    assert len(value) >= _core.GIL_RELEASE_BYTES
    big_cache.set("big", value)
    r = make_reader(big_cache)
    try:
        assert r.get("big") == value
        assert r.get_with_version("big") == big_cache.get_with_version("big")
        assert r.get_many(["big", "big"]) == {"big": value}
    finally:
        r.close()


def test_close_from_another_thread_during_big_copies_is_safe(big_cache) -> None:
    value = b"z" * (2 << 20)
    big_cache.set("big", value)
    r = make_reader(big_cache)
    outcome: list[object] = []
    done = threading.Event()

    def read() -> None:
        n = 0
        try:
            while True:
                assert r.get("big") == value
                n += 1
                if n == 5:
                    done.set()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            outcome.append(exc)
            done.set()

    t = threading.Thread(target=read)
    t.start()
    assert done.wait(30)
    r.close()
    t.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], ValueError), outcome
    big_cache.close()  # the buffer is released: mmap.close() would refuse otherwise


def test_close_inside_a_callback_lets_the_read_finish_and_releases_after(cache) -> None:
    cache.set("k", b"v", ttl_s=60)
    r: _core.Reader

    def closing_clock() -> int:
        r.close()  # reentrant: the read in progress still holds the buffer
        return cache._clock()

    r = make_reader(cache, clock=closing_clock)
    assert r.get("k") == b"v"
    assert r.closed
    with pytest.raises(ValueError, match="closed"):
        r.get("k")
    cache.close()  # no BufferError: the read released the buffer as it left


# --- get_many, counts, access bytes --------------------------------------------------------
def test_get_many_keeps_keys_as_given_and_skips_misses(cache, readers, reference) -> None:
    r, ref = readers(), reference()
    cache.set("a", b"1")
    cache.set("b", b"2", ttl_s=1)
    keys = ["a", b"a", "a", "missing", "b", b"missing"]
    assert r.get_many(keys) == ref.get_many(keys) == {"a": b"1", b"a": b"1", "b": b"2"}
    assert r.get_many(k for k in ["a", "zz"]) == {"a": b"1"}
    assert r.get_many([]) == {}
    with pytest.raises(TypeError):
        r.get_many(1)
    with pytest.raises(TypeError):  # present, and unhashable as a dict key: as in Cache
        r.get_many([bytearray(b"a")])
    assert r.get_many([bytearray(b"missing")]) == {}


def _stripes_of(c: shmkv.Cache, keys: list) -> set[int]:
    lay = c._region.layout
    return {xxh3_64(key_bytes(k), c._region.seed ^ c._coll) & (lay.n_stripes - 1) for k in keys}


def _read_many_both(c: shmkv.Cache, readers, keys_of: Callable[[], object]) -> object:
    """get_many through the compiled and the pure reader: the results (or the errors), the
    counts and the access bytes marked, which must all be the same."""
    if PureReader is None:
        pytest.skip("this tree has no pure-Python Reader to compare with")
    lay, mm = c._region.layout, c._region.mm
    area = slice(lay.access_offset, lay.access_offset + lay.index_slots)
    outcome = []
    for engine in (None, PureReader):
        r = readers(c, engine=engine)
        mm[area] = bytes(lay.index_slots)
        try:
            got: object = r.get_many(keys_of())
        except Exception as exc:  # noqa: BLE001 - compared between the engines
            got = (type(exc), str(exc))
        outcome.append((got, r.take_counts(), bytes(mm[area])))
    assert outcome[0] == outcome[1]
    return outcome[0][0]


@pytest.mark.parametrize("n", [31, 32, 33, 64, 65, 100, 257])
def test_get_many_of_batches_larger_than_a_group(cache, readers, n) -> None:
    keys = [f"k{i}" for i in range(n)]
    for i, k in enumerate(keys[::2]):
        cache.set(k, b"v%d" % i * (i % 7))
    batch = keys + keys[::3] + [b"k0", "absent"]  # duplicates, bytes and str, misses
    random.Random(n).shuffle(batch)
    got = _read_many_both(cache, readers, lambda: batch)
    assert got == {k: cache.get(k) for k in batch if cache.get(k) is not None}
    assert list(got) == list(dict.fromkeys(k for k in batch if k in got))  # the keys' order
    assert _read_many_both(cache, readers, lambda: iter(batch)) == got
    assert _read_many_both(cache, readers, lambda: tuple(batch)) == got


def test_get_many_mixes_present_absent_and_expired_keys_across_stripes_and_collections(
        cache, readers, fake_clock) -> None:
    rng = random.Random(5)
    handles = [cache, cache.collection("users"), cache.collection("other")]
    keys = [f"key{i}" for i in range(120)]
    for h in handles:
        for k in rng.sample(keys, 80):
            h.set(k, rng.randbytes(rng.choice([0, 1, 100, 3000])),
                  ttl_s=rng.choice([None, None, 1, 5]))
    fake_clock.advance(2)  # the 1 s ones expire, the 5 s ones do not
    batch = keys + rng.choices(keys, k=80)
    rng.shuffle(batch)
    assert len(_stripes_of(cache, batch)) == cache._region.layout.n_stripes > 1
    for h in handles:
        got = _read_many_both(h, readers, lambda: batch)
        assert got == {k: h.get(k) for k in batch if h.get(k) is not None}
        assert 0 < len(got) < len(set(batch))


@pytest.mark.parametrize("at", [0, 5, 31, 32, 50, 99])
@pytest.mark.parametrize("bad", [1, None, "\ud800", b"x" * (L.MAX_KEY_BYTES + 1)])
def test_a_bad_key_in_a_batch_raises_what_get_raises_after_the_keys_before_it(
        cache, readers, at, bad) -> None:
    keys: list[object] = [f"k{i}" for i in range(100)]
    for k in keys[::2]:
        cache.set(k, b"v")
    expected = _error(lambda: readers().get(bad))
    batch = keys[:at] + [bad] + keys[at:]
    # the same error, with the keys before it read and counted (their access bytes marked)
    # and none after it, as the pure reader's loop does
    assert _read_many_both(cache, readers, lambda: batch) == expected
    assert _read_many_both(cache, readers, lambda: (k for k in batch)) == expected
    r = readers()
    with pytest.raises(expected[0]):
        r.get_many(batch)
    assert sum(r.take_counts()) == at


@pytest.mark.parametrize("at", [0, 7, 32, 70])
def test_an_iterator_that_raises_mid_batch_raises_after_the_keys_before_it(
        cache, readers, at) -> None:
    keys = [f"k{i}" for i in range(100)]
    for k in keys[::3]:
        cache.set(k, b"v")

    def gen() -> Iterator[str]:
        yield from keys[:at]
        raise RuntimeError("keys ran dry")

    assert _read_many_both(cache, readers, gen) == (RuntimeError, "keys ran dry")


def test_get_many_of_a_generator_of_keys(cache, readers) -> None:
    for i in range(0, 300, 3):
        cache.set(f"k{i}", str(i).encode())
    got = _read_many_both(cache, readers, lambda: (f"k{i}" for i in range(300)))
    assert got == {f"k{i}": str(i).encode() for i in range(0, 300, 3)}
    assert _read_many_both(cache, readers, lambda: (k for k in [])) == {}


def test_hits_and_misses_are_counted_once_per_read(cache, readers, reference,
                                                  fake_clock) -> None:
    r, ref = readers(), reference()
    cache.set("a", b"1")
    cache.set("gone", b"x", ttl_s=1)
    fake_clock.advance(2)
    ops: list[tuple[str, object]] = [
        ("get", "a"), ("get", "nope"), ("get", "gone"), ("contains", "a"),
        ("contains", "nope"), ("get_with_version", "a"), ("get_with_version", "nope"),
        ("get_many", ["a", "a", "nope", b"a"]),
    ]
    for op, arg in ops:
        getattr(r, op)(arg)
        getattr(ref, op)(arg)
    assert (r.hits, r.misses) == (6, 5)
    if PureReader is not None:
        assert ref.take_counts() == (6, 5)
    assert r.take_counts() == (6, 5)
    assert r.take_counts() == (0, 0) and (r.hits, r.misses) == (0, 0)


def test_a_hit_sets_its_slots_access_byte_and_a_miss_does_not(cache, readers,
                                                              reference) -> None:
    r, ref = readers(), reference()
    for i in range(50):
        cache.set(f"k{i}", b"v")
    mm, lay = cache._region.mm, cache._region.layout
    area = slice(lay.access_offset, lay.access_offset + lay.index_slots)
    at = lay.access_offset + _slot_of(cache, b"k7")
    mm[area] = bytes(lay.index_slots)
    r.get("nope")
    r.get_with_version("nope")
    assert not any(mm[area])
    for read in (lambda: r.get("k7"), lambda: r.contains("k7"),
                 lambda: r.get_with_version("k7"), lambda: r.get_many(["k7"])):
        mm[at] = 0
        read()
        assert mm[at] == 1
        assert [i for i, b in enumerate(mm[area]) if b] == [at - lay.access_offset]
    mm[at] = 0
    ref.get("k7")  # the same byte the pure read path sets
    assert mm[at] == 1


def test_a_random_workload_reads_the_same_through_both_engines(cache, readers,
                                                               fake_clock) -> None:
    """Values, versions, misses, counts and access bytes: the compiled reader against the
    pure-Python one, over writes, deletes, TTLs, collections and the clock moving."""
    if PureReader is None:
        pytest.skip("this tree has no pure-Python Reader to compare with")
    rng = random.Random(20261129)
    handles = [cache, cache.collection("users"), cache.collection("other")]
    pairs = [(readers(h), readers(h, engine=PureReader)) for h in handles]
    keys: list[str | bytes] = [f"k{i}" for i in range(200)] + [b"\xff\xfe", "é" * 9, "", b"k1"]
    lay, mm = cache._region.layout, cache._region.mm
    area = slice(lay.access_offset, lay.access_offset + lay.index_slots)
    zero = bytes(lay.index_slots)
    reads = 0
    for _ in range(4000):
        handle = rng.choice(handles)
        key, op = rng.choice(keys), rng.random()
        if op < 0.3:
            handle.set(key, rng.randbytes(rng.choice([0, 1, 17, 100, 3000])),
                       ttl_s=rng.choice([None, None, 0.5, 3]))
        elif op < 0.35:
            handle.delete(key)
        elif op < 0.4:
            fake_clock.advance(rng.random())
        else:
            compiled, pure = pairs[handles.index(handle)]
            method = rng.choice(["get", "contains", "get_with_version", "get_many",
                                 "get_below"])
            args = ([rng.choice(keys) for _ in range(4)],) if method == "get_many" else \
                (key, rng.choice([0, 17, 101, 4000]), rng.random() < 0.5) \
                if method == "get_below" else (key,)
            mm[area] = zero
            got = getattr(compiled, method)(*args)
            marked = bytes(mm[area])
            mm[area] = zero
            assert got == getattr(pure, method)(*args), (method, args)
            assert marked == bytes(mm[area]), (method, args)
            reads += 1
    for compiled, pure in pairs:
        assert compiled.take_counts() == pure.take_counts()
    assert reads > 2000


# --- lifecycle, errors, robustness --------------------------------------------------------
def test_close_twice_then_every_method_raises_valueerror(cache) -> None:
    r = make_reader(cache)
    cache.set("k", b"v")
    assert r.get("k") == b"v" and not r.closed
    r.close()
    r.close()
    assert r.closed
    for call in (lambda: r.get("k"), lambda: r.contains("k"), lambda: r.get_with_version("k"),
                 lambda: r.get_many(["k"])):
        with pytest.raises(ValueError, match="closed"):
            call()
    assert r.take_counts() == (1, 0)
    cache.close()  # the buffer is released: mmap.close() would refuse otherwise


def test_a_slot_whose_ref_leaves_the_arena_raises_corruptregion_like_the_reference(
        cache, readers, reference) -> None:
    r, ref = readers(), reference()
    cache.set("victim", b"v")
    q, lay = cache._region.q, cache._region.layout
    at = lay.index_offset // 8 + _slot_of(cache, b"victim")
    good = q[at]
    q[at] = good | 0xFFFFFFFF  # the key's tag, a ref past the mapping
    try:
        expected = _error(lambda: ref.get("victim"))
        assert expected[0] is shmkv.CorruptRegion and "doctor --repair" in expected[1]
        for call in (lambda: r.get("victim"), lambda: r.contains("victim"),
                     lambda: r.get_with_version("victim"), lambda: r.get_many(["victim"])):
            assert _error(call) == expected
    finally:
        q[at] = good
    assert r.get("victim") == b"v"


def test_a_stripe_held_odd_is_waited_through_wait_writer_after_spinning(cache) -> None:
    cache.set("k", b"v")
    lay = cache._region.layout
    stripe = xxh3_64(b"k", cache._region.seed) & (lay.n_stripes - 1)
    seq_at = (lay.stripes_offset + stripe * L.STRIPE_BYTES + L.S_SEQ) >> 3
    q = cache._region.q
    calls: list[tuple[int, int]] = []

    def wait_writer(spins: int, s: int) -> int:
        calls.append((spins, s))
        if len(calls) == 3:
            q[seq_at] += 1  # the writer's second bump
        return spins + 1

    region = cache._region
    r = _core.Reader(region.mm, lay.n_stripes, lay.slots_per_stripe, lay.stripes_offset,
                     lay.index_offset, lay.access_offset, lay.arena_offset, lay.arena_bytes,
                     region.seed, 0, region.clock, key_bytes, wait_writer,
                     shmkv.CorruptRegion)
    try:
        q[seq_at] += 1  # a writer between its bumps
        assert r.get("k") == b"v"
        assert calls == [(C.READ_SPINS_BEFORE_YIELD + i, stripe) for i in range(3)]
        assert r.take_counts() == (1, 0)  # one read, however many tries
    finally:
        r.close()


def test_a_stripe_left_odd_without_an_owner_is_repaired_by_the_next_reader(cache,
                                                                           readers) -> None:
    r = readers()
    cache.set("k", b"v")
    lay = cache._region.layout
    stripe = xxh3_64(b"k", cache._region.seed) & (lay.n_stripes - 1)
    seq_at = (lay.stripes_offset + stripe * L.STRIPE_BYTES + L.S_SEQ) >> 3
    cache._region.q[seq_at] += 1
    started = time.monotonic()
    assert r.get("k") == b"v"
    assert time.monotonic() - started < 1
    assert not cache._region.q[seq_at] & 1


def test_an_error_in_wait_writer_propagates(cache) -> None:
    cache.set("k", b"v")
    lay, region = cache._region.layout, cache._region
    stripe = xxh3_64(b"k", region.seed) & (lay.n_stripes - 1)
    seq_at = (lay.stripes_offset + stripe * L.STRIPE_BYTES + L.S_SEQ) >> 3

    def boom(spins: int, s: int) -> int:
        raise shmkv.LockTimeout("stuck")

    r = _core.Reader(region.mm, lay.n_stripes, lay.slots_per_stripe, lay.stripes_offset,
                     lay.index_offset, lay.access_offset, lay.arena_offset, lay.arena_bytes,
                     region.seed, 0, region.clock, key_bytes, boom, shmkv.CorruptRegion)
    region.q[seq_at] += 1
    try:
        with pytest.raises(shmkv.LockTimeout):
            r.get("k")
    finally:
        region.q[seq_at] += 1
        r.close()


def test_a_reader_refuses_a_layout_that_is_not_the_regions(cache) -> None:
    region, lay = cache._region, cache._region.layout
    args = [region.mm, lay.n_stripes, lay.slots_per_stripe, lay.stripes_offset,
            lay.index_offset, lay.access_offset, lay.arena_offset, lay.arena_bytes,
            region.seed, 0, region.clock, key_bytes, cache._wait_writer, shmkv.CorruptRegion]
    for i, bad in [(1, 3), (1, 0), (2, 0), (7, lay.arena_bytes * 2), (3, 4), (9, 1 << 16),
                   (9, -1), (8, -1)]:
        with pytest.raises((ValueError, OverflowError)):
            _core.Reader(*args[:i], bad, *args[i + 1:])
    with pytest.raises(BufferError):
        _core.Reader(bytes(region.mm[:4096]), *args[1:])  # read-only
    with pytest.raises(TypeError):
        _core.Reader(*args[:11], None, *args[12:])
    with pytest.raises(TypeError):
        _core.Reader(*args[:13], ValueError("not a class"))
    buf = bytearray(len(region.mm))
    with pytest.raises(ValueError, match="layout version"):
        _core.Reader(buf, *args[1:])  # zeroes: not a region


def test_reads_hold_no_references(cache, readers) -> None:
    r = readers()
    cache.set("k", b"v", ttl_s=100)
    key, miss, default, keys = "k", "nope", object(), ["k", "nope"]
    before = [sys.getrefcount(o) for o in (key, miss, default, keys)]
    for _ in range(1000):
        r.get(key, default)
        r.get(miss, default)
        r.contains(key)
        r.get_with_version(key)
        r.get_many(keys)
    assert [sys.getrefcount(o) for o in (key, miss, default, keys)] == before


def test_the_garbage_collector_sees_the_readers_callbacks(cache) -> None:
    r = make_reader(cache)
    try:
        referents = gc.get_referents(r)
        assert key_bytes in referents and shmkv.CorruptRegion in referents
        assert cache._region.mm in referents
    finally:
        r.close()


# --- torn reads ------------------------------------------------------------------------------
# About 1 MiB, two of them over GIL_RELEASE_BYTES: every overwrite relocates the value, and the
# next one reuses the block just freed while a reader that started before may still copy it. A
# reader that skips the seq re-check returns hundreds of torn values out of 20,000 here (values
# of 32 KiB, rewritten in place, tear too rarely to catch it: the copy is shorter than the
# writer's time between its seq bump and its own copy).
TORN_LENGTHS = ((1 << 20) + 8, 1 << 20, (1 << 20) - 8, (1 << 20) - 16)
TORN_READS = 20_000
_WRITER = r"""
import sys, time
import shmkv
c = shmkv.Cache.open(sys.argv[1])
lengths = [int(n) for n in sys.argv[2].split(",")]
deadline, n = time.monotonic() + 120, 0
print("ready", flush=True)
while time.monotonic() < deadline and c.get(b"stop") is None:
    for j in range(26):  # back to back: a pause between writes hides a missing re-check
        c.set(b"torn", bytes([97 + j]) * lengths[(n + j) % len(lengths)])
    n += 26
print(n, flush=True)
c.close()
"""


@pytest.mark.multiprocess
def test_a_reader_never_returns_a_torn_value_while_another_process_overwrites(
        big_cache) -> None:
    assert min(TORN_LENGTHS) < _core.GIL_RELEASE_BYTES <= max(TORN_LENGTHS)
    r = make_reader(big_cache)
    big_cache.set(b"torn", b"a" * TORN_LENGTHS[0])
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, big_cache._region.name,
         ",".join(map(str, TORN_LENGTHS))],
        stdout=subprocess.PIPE, text=True,
        cwd=os.path.dirname(__file__))  # the installed shmkv, not the checkout's (CI installs)
    try:
        out, torn, seen, _ = torn_reads(writer, lambda: big_cache.set(b"stop", b"1"),
                                        lambda: r.get(b"torn"), TORN_LENGTHS, TORN_READS)
    finally:
        r.close()
    assert int(out.strip()) > 0
    assert len(seen) > 2, "the writer did not overlap the reads; the test proved nothing"
    assert not torn, f"{len(torn)} torn reads out of {TORN_READS}, e.g. {torn[:3]}"


def test_get_below_gives_a_large_values_length_instead_of_a_copy(cache, readers) -> None:
    cache.set("small", b"s" * 99)
    cache.set("large", b"l" * 100)
    for r in (readers(), readers(engine=PureReader)):  # compiled, then the pure one
        assert r.get_below("small", 100, False) == b"s" * 99
        assert r.get_below("large", 100, False) == 100
        assert r.get_below("small", 100, True) == cache.get_with_version("small")
        assert r.get_below("large", 100, True) == 100
        assert r.get_below("absent", 100, False) is None
        assert r.get_below(memoryview(b"large"), 101, False) == b"l" * 100
        assert r.take_counts() == (5, 1)  # counted as get counts
