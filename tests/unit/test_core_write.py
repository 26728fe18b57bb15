"""shmkv._core.Writer, the compiled fast path of set, cas and incr: an in-place overwrite of a
key that is there, done in C under the stripe's robust mutex exactly as the Python engine's
in-place branch does it, and every other case handed to the Python engine (the fallbacks) before
anything was changed. So whatever goes through a Writer must leave the region byte for byte as
the Python engine leaves it, return what it returns and raise what it raises."""

from __future__ import annotations

import contextlib
import errno
import gc
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests_support import ctx, new_region_name, torn_reads

import shmkv
from shmkv import cache as C
from shmkv import layout as L
from shmkv.check import check_region
from shmkv.coerce import key_bytes
from shmkv.hashing import checksum32, xxh3_64

try:
    from shmkv import _core
except ImportError as exc:  # pragma: no cover - a build without a C compiler
    pytest.skip(f"shmkv._core is not built ({exc})", allow_module_level=True)
if not hasattr(_core, "Writer"):  # pragma: no cover - a core without the write path
    pytest.skip("shmkv._core has no Writer", allow_module_level=True)
try:  # where the write path's constants live (cache.py before the write path moved out)
    from shmkv import writer as _write_consts
except ImportError:  # pragma: no cover
    _write_consts = C  # type: ignore[assignment]

TTL_MAX_S = 10 * 365 * 86400
PY = shmkv.Cache  # the class's methods: the Python engine's, whatever a handle binds
CHECK_EVERY = int(os.environ.get("CHECK_EVERY", "100"))


def py_incr(c: shmkv.Cache) -> Callable[[object, int], int]:
    """Cache.incr's Python body, for handle c (the class's method: a handle may bind the
    compiled one in its place)."""
    body = shmkv.Cache.incr
    return lambda key, delta: body(c, key, delta)


def py_delete(c: shmkv.Cache) -> Callable[[object], bool]:
    """Cache.delete's Python body, for handle c."""
    body = shmkv.Cache.delete
    return lambda key: body(c, key)


def expire_pass(c: shmkv.Cache) -> Callable[[], None]:
    """What a handle gives as expire_hook: the real expiry pass, under the arena lock."""
    region = c._region

    def hook() -> None:
        with region.locks.arena_held:
            region.evictor.expire_sample_locked(_write_consts.WRITER_EXPIRY_SLOTS, -1, 0)

    return hook


def make_writer(c: shmkv.Cache, clock: Callable[[], int] | None = None,
                lock_timeout_s: float | None = None, **fallbacks: Any) -> _core.Writer:
    """The Writer a Cache handle would own: its region, its collection, its fallbacks."""
    region, lay = c._region, c._region.layout
    return _core.Writer(
        region.mm, lay.n_stripes, lay.slots_per_stripe, lay.stripes_offset,
        lay.collections_offset, lay.access_offset, lay.index_offset, lay.arena_offset,
        lay.arena_bytes, region.seed, c._coll, c._gen,
        region.locks.timeout_s if lock_timeout_s is None else lock_timeout_s,
        region.clock if clock is None else clock, key_bytes, shmkv.LockTimeout,
        shmkv.CorruptRegion, fallbacks.get("write_fallback", c._write),
        fallbacks.get("incr_fallback", py_incr(c)),
        fallbacks.get("expire_hook", expire_pass(c)),
        events_offset=lay.events_offset, event_ring_bytes=lay.event_ring_bytes,
        counts_offset=lay.counts_offset, max_collections=lay.max_collections,
        delete_fallback=fallbacks.get("delete_fallback", py_delete(c)))


Writers = Callable[..., "_core.Writer"]


@pytest.fixture
def writers(cache: shmkv.Cache) -> Iterator[Writers]:
    """make_writer, every writer closed before the cache (a writer holds the mapping's buffer:
    mmap.close() refuses while it does)."""
    made: list[_core.Writer] = []

    def make(c: shmkv.Cache = cache, **kw: Any) -> _core.Writer:
        made.append(make_writer(c, **kw))
        return made[-1]

    yield make
    for w in made:
        w.close()


def _error(call: Callable[[], object]) -> tuple[type, str]:
    with pytest.raises(Exception) as info:
        call()
    return info.type, str(info.value)


def _outcome(call: Callable[..., object], *args: Any, **kwargs: Any) -> tuple[str, object]:
    try:
        return "ok", call(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - compared with the other engine's
        return "raised", (type(exc), str(exc))


def _stripe(c: shmkv.Cache, key: bytes) -> int:
    return xxh3_64(key, c._region.seed ^ c._coll) & (c._region.layout.n_stripes - 1)


def _rec(c: shmkv.Cache, stripe: int) -> int:
    return c._region.layout.stripes_offset + stripe * L.STRIPE_BYTES


def _u32(c: shmkv.Cache, at: int) -> int:
    return c._region.u32[at >> 2]


def _u64(c: shmkv.Cache, at: int) -> int:
    return c._region.q[at >> 3]


def _entry(c: shmkv.Cache, key: bytes) -> int:
    """Offset of key's entry (0 if absent)."""
    stripe = _stripe(c, key)
    h = xxh3_64(key, c._region.seed ^ c._coll)
    with _stripe_held(c, stripe):
        return c._region.index.find_locked(stripe, h, key, c._coll)[1]


class _stripe_held:
    def __init__(self, c: shmkv.Cache, stripe: int) -> None:
        self.locks, self.stripe = c._region.locks, stripe

    def __enter__(self) -> None:
        self.locks.acquire_stripe(self.stripe)

    def __exit__(self, *exc: object) -> None:
        self.locks.release_stripe(self.stripe)


def _counts(w: _core.Writer) -> tuple[int, int]:
    """(calls done in C, calls handed to Python) since the last look."""
    fast, fallbacks, _ = w.take_counts()
    return fast, fallbacks


# --- constants --------------------------------------------------------------------------------
def test_the_write_paths_constants_are_the_python_engines() -> None:
    assert {"S_OWNER_PID", "S_MUTEX", "S_WRITES", "S_CHANGES", "S_PAYLOAD", "S_COUNT",
            "H_ARENA_MUTEX", "H_EXPIRE_CURSOR", "H_EVENTS_ENABLED", "H_WRITABLE_UNTIL",
            "E_CHECKSUM", "E_KIND", "KIND_PINNED", "SIZE_MASK", "KEY_COLL_MASK",
            "SEG_RETIRED_WORD"} <= set(_core.LAYOUT)
    for name, value in _core.LAYOUT.items():
        assert getattr(L, name) == value, name
    for name in ("INPLACE_SLACK_BYTES", "INPLACE_MAX_BYTES", "WRITER_EXPIRY_EVERY",
                 "WRITER_EXPIRY_SLOTS"):
        assert getattr(_core, name) == getattr(_write_consts, name), name
    assert _core.MAX_LOAD == L.MAX_LOAD
    # the collection record's state byte follows its u16 generation
    rec = L.COLLECTION.pack(0xBEEF, 0x5A, 3, b"abc")
    assert rec[_core.C_STATE] == 0x5A and rec[L.C_GENERATION:L.C_GENERATION + 2] == b"\xef\xbe"
    assert rec[_core.C_NAME_LEN] == 3 and rec[_core.C_NAME:_core.C_NAME + 4] == b"abc\0"
    from shmkv import locks
    if hasattr(locks, "WAIT_SLICE_S"):
        assert _core.WAIT_SLICE_S == locks.WAIT_SLICE_S


# --- against the Python engine, byte for byte -------------------------------------------------
def _spans(c: shmkv.Cache) -> list[tuple[int, int]]:
    """Everything in a region that a write may change, except what differs between two regions
    by construction (creation time, file identity, the mutexes' internals) or by handle
    (hits and misses, flushed whenever a handle takes the arena lock) and process records."""
    lay = c._region.layout
    spans = [(8, 112), (120, L.H_HITS), (L.H_EXPIRE_CURSOR, L.H_FILE_DEV),
             (L.H_CLEAN_MARKER, L.H_ARENA_MUTEX)]
    spans += [(_rec(c, s), _rec(c, s) + L.S_MUTEX) for s in range(lay.n_stripes)]
    return spans + [(lay.collections_offset, lay.region_bytes)]


def _same_state(a: shmkv.Cache, b: shmkv.Cache) -> str:
    """"" if the two regions hold the same state, else where they first differ."""
    for start, end in _spans(a):
        x, y = a._region.mm[start:end], b._region.mm[start:end]
        if x != y:
            at = start + next(i for i in range(len(x)) if x[i] != y[i])
            lay = a._region.layout
            area = max((off, name) for name, off in [
                ("header", 0), ("stripes", lay.stripes_offset),
                ("collections", lay.collections_offset), ("counts", lay.counts_offset),
                ("access", lay.access_offset), ("index", lay.index_offset),
                ("events", lay.events_offset), ("arena", lay.arena_offset)] if off <= at)
            return f"offset {at} ({area[1]} + {at - area[0]}): {x[at - start]} != {y[at - start]}"
    return ""


@pytest.fixture
def twins(fake_clock, monkeypatch) -> Iterator[tuple[shmkv.Cache, shmkv.Cache]]:
    """Two regions made alike (same seed, same ids, same clock): one written through a Writer,
    one through the Python engine; they must stay identical."""
    names = [new_region_name(), new_region_name()]
    made: list[shmkv.Cache] = []
    try:
        with monkeypatch.context() as m:
            m.setattr(os, "urandom", lambda n: bytes(range(7, 7 + n)))
            for name in names:
                made.append(shmkv.Cache.create(name, arena_bytes=1 << 20, max_keys=4096,
                                               clock=fake_clock))
        assert made[0]._region.seed == made[1]._region.seed
        yield made[0], made[1]
    finally:
        for c in made:
            if not c.closed:
                c.close()
        for name in names:
            shmkv.Cache.unlink(name)


def test_a_random_workload_leaves_the_region_as_the_python_engine_does(twins,
                                                                     fake_clock) -> None:
    """set, cas and incr through a Writer on one region and through the Python engine on its
    twin, mixed with deletes, reads (access bytes), views (pins), events, collections and the
    clock moving: the same results and errors, and the same bytes in both regions."""
    a, b = twins
    rng = random.Random(20261130)
    a_users, b_users = a.collection("users"), b.collection("users")
    pairs = [(a, b), (a_users, b_users)]
    ws = [make_writer(a), make_writer(a_users)]
    keys: list[str | bytes] = [f"k{i}" for i in range(60)] + ["é" * 3, b"\xff", b""]
    numbers = [b"0", b"7", b"-12", b"007", b"9223372036854775806", b"-9223372036854775807",
               b"99999999999999999999", b"1e3", b" 1", b"+1", b"-", b""]
    sizes = [0, 1, 7, 8, 16, 17, 40, 100, 3000]
    try:
        for step in range(6000):
            which = rng.randrange(2)
            (ca, cb), w = pairs[which], ws[which]
            key, op = rng.choice(keys), rng.random()
            value = rng.randbytes(rng.choice(sizes)) if rng.random() < 0.8 \
                else rng.choice(numbers)
            ttl = rng.choice([None, None, None, 0.5, 3, 1e-12, 0, -1, True, TTL_MAX_S + 1])
            if op < 0.4:
                got = _outcome(w.set, key, value, ttl)
                want = _outcome(PY.set, cb, key, value, ttl)
            elif op < 0.55:
                found = cb.get_with_version(key)  # a read: marks the slot's access byte
                assert ca.get_with_version(key) == found
                version = found[1] if found and rng.random() < 0.7 \
                    else rng.choice([0, 1, 2**64 - 1, -5, 2**70])
                got = _outcome(w.cas, key, value, version, ttl_s=ttl)
                want = _outcome(PY.cas, cb, key, value, version, ttl_s=ttl)
            elif op < 0.75:
                delta = rng.choice([1, 1, -1, 5, 2**62, -(2**63), 2**63 - 1])
                got, want = _outcome(w.incr, key, delta), _outcome(PY.incr, cb, key, delta)
            elif op < 0.8:
                got, want = _outcome(w.delete, key), _outcome(PY.delete, cb, key)
            elif op < 0.88:
                got, want = _outcome(ca.get, key), _outcome(cb.get, key)
            elif op < 0.9:
                fake_clock.advance(rng.random())
                got = want = None
            elif op < 0.92:  # an overwrite while a view pins the entry
                with ca.view(key) if key in ca else _nothing(), \
                        cb.view(key) if key in cb else _nothing():
                    got, want = _outcome(w.set, key, value), _outcome(PY.set, cb, key, value)
            elif op < 0.93:
                on = rng.random() < 0.3
                a.enable_events(on)
                b.enable_events(on)
                got = want = None
            else:  # a shorter value: in place while it fits snugly, then relocated
                short = value[:rng.choice([0, 8, 17])]
                got, want = _outcome(w.set, key, short), _outcome(PY.set, cb, key, short)
            assert got == want, (step, op, key)
            if step % CHECK_EVERY == 0:
                assert _same_state(a, b) == "", (step, op, key, value, ttl)
        a.enable_events(False)
        b.enable_events(False)
        assert _same_state(a, b) == ""
        fast = [w.take_counts() for w in ws]
        assert sum(f[0] for f in fast) > 1000 and sum(f[1] for f in fast) > 500, fast
        assert check_region(a) == [] and check_region(b) == []
    finally:
        for w in ws:
            w.close()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# --- what goes in place and what goes to Python --------------------------------------------------
def _need(klen: int, vlen: int) -> int:
    return (L.ENTRY_HEADER_BYTES + klen + vlen + L.ALIGN - 1) & ~(L.ALIGN - 1)


def test_same_size_and_snug_overwrites_are_done_in_c_the_rest_in_python(cache,
                                                                        writers) -> None:
    w = writers()
    k = b"0123456789abcdef"
    cache.set(k, b"v" * 100)
    off = _entry(cache, k)
    block = _u32(cache, off) & L.SIZE_MASK
    assert block == _need(16, 100) == 152
    slack = _core.INPLACE_SLACK_BYTES
    _counts(w)
    w.set(k, b"w" * 100)  # same size
    assert _counts(w) == (1, 0) and cache.get(k) == b"w" * 100 and _entry(cache, k) == off
    w.set(k, b"x" * 44)  # smaller, still snug: need 96, 152 < 96 + 64
    assert _need(16, 44) == 96 and block < 96 + slack
    assert _counts(w) == (1, 0) and cache.get(k) == b"x" * 44 and _entry(cache, k) == off
    w.set(k, b"y" * 100)  # and back
    assert _counts(w) == (1, 0) and cache.get(k) == b"y" * 100 and _entry(cache, k) == off
    w.set(k, b"z" * 36)  # need 88: 152 >= 88 + 64 wastes too much: relocated
    assert _need(16, 36) == 88 and block >= 88 + slack
    # relocated in C: a free block fits
    assert _counts(w) == (1, 0) and cache.get(k) == b"z" * 36 and _entry(cache, k) != off
    off = _entry(cache, k)
    block = _u32(cache, off) & L.SIZE_MASK
    w.set(k, b"g" * (block - L.ENTRY_HEADER_BYTES - 16 + 1))  # one byte more than it holds
    assert _counts(w) == (1, 0) and _entry(cache, k) != off
    assert cache.get(k) == b"g" * (block - L.ENTRY_HEADER_BYTES - 16 + 1)
    w.set(b"new key", b"v")  # an insert, in C too
    assert _counts(w) == (1, 0) and cache.get(b"new key") == b"v"
    big = b"b" * _core.INPLACE_MAX_BYTES
    cache.set(b"big", big)
    w.set(b"big", b"c" * len(big))  # at the limit: in place
    assert _counts(w) == (1, 0) and cache.get(b"big") == b"c" * len(big)
    w.set(b"big", b"d" * (len(big) + 1))  # over it: never in place
    assert _counts(w) == (0, 1) and cache.get(b"big") == b"d" * (len(big) + 1)
    assert check_region(cache) == []


def test_an_in_place_write_is_the_python_engines_field_by_field(cache, writers,
                                                                fake_clock) -> None:
    w = writers()
    k = b"key"
    cache.set(k, b"a" * 30, ttl_s=5)
    off = _entry(cache, k)
    stripe = _stripe(cache, k)
    rec = _rec(cache, stripe)
    before = {f: _u64(cache, rec + f) for f in (L.S_SEQ, L.S_WRITES, L.S_CHANGES, L.S_PAYLOAD)}
    access = cache._region.layout.access_offset + _entry_slot(cache, k)
    cache._region.mm[access] = 0
    w.set(k, b"b" * 25, ttl_s=2.5)
    assert _counts(w) == (1, 0)
    assert _u64(cache, rec + L.S_SEQ) == before[L.S_SEQ] + 2
    assert _u64(cache, rec + L.S_WRITES) == before[L.S_WRITES] + 1
    assert _u64(cache, rec + L.S_CHANGES) == before[L.S_CHANGES] + 1
    assert _u64(cache, rec + L.S_PAYLOAD) == before[L.S_PAYLOAD] - 5
    assert _u32(cache, off + L.E_VERSION) == before[L.S_WRITES] + 1
    assert _u64(cache, off + L.E_EXPIRES_AT) == fake_clock.now_ns + 2_500_000_000
    assert _u32(cache, off + L.E_VALUE_LEN) == 25
    assert _u32(cache, off + L.E_KEY_COLL) == 3 | L.PUBLISHED << 8  # kind: KIND_BYTES
    body = off + L.ENTRY_HEADER_BYTES
    assert _u32(cache, off + L.E_CHECKSUM) == checksum32(
        cache._region.mm[body:body + 3 + 25], cache._region.seed)
    assert cache._region.mm[access] == 1  # a write is a use (lru.mark)
    assert _u32(cache, rec + L.S_OWNER_PID) == 0
    assert cache.get_with_version(k) == (b"b" * 25, (before[L.S_WRITES] + 1) << 8 | stripe)
    assert check_region(cache) == []


def test_versions_rise_and_stay_unique(cache, writers) -> None:
    w = writers()
    keys = [f"k{i}" for i in range(40)]
    for k in keys:
        cache.set(k, b"12345678")
    seen: dict[str, int] = {k: cache.get_with_version(k)[1] for k in keys}
    every = set(seen.values())
    rng = random.Random(3)
    for _ in range(2000):
        k = rng.choice(keys)
        w.set(k, rng.randbytes(8))
        v = cache.get_with_version(k)[1]
        assert v > seen[k] and v not in every
        assert v & 0xFF == _stripe(cache, k.encode())
        seen[k] = v
        every.add(v)
    assert _counts(w) == (2000, 0)


def test_an_array_entry_overwritten_with_bytes_becomes_bytes(cache, writers) -> None:
    np = pytest.importorskip("numpy")
    w = writers()
    cache.set_array("arr", np.arange(8, dtype=np.uint8))
    off = _entry(cache, b"arr")
    n = _u32(cache, off + L.E_VALUE_LEN)
    w.set("arr", b"q" * n)
    assert _counts(w) == (1, 0)
    assert cache.get("arr") == b"q" * n
    assert cache._region.mm[off + L.E_KIND] & L.KIND_MASK == L.KIND_BYTES
    with pytest.raises(TypeError):
        cache.get_array("arr")


# --- TTLs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("ttl, ns", [(None, 0), (1, 10**9), (2.5, 2_500_000_000),
                                     (1e-12, 1), (TTL_MAX_S, TTL_MAX_S * 10**9),
                                     (float(TTL_MAX_S), TTL_MAX_S * 10**9)])
def test_a_ttl_is_set_as_the_python_engine_sets_it(cache, writers, fake_clock, ttl,
                                                   ns) -> None:
    w = writers()
    cache.set("k", b"old value", ttl_s=100)
    w.set("k", b"new value", ttl)
    assert _counts(w) == (1, 0)
    assert _u64(cache, _entry(cache, b"k") + L.E_EXPIRES_AT) == \
        (fake_clock.now_ns + ns if ns else 0)
    assert cache.ttl("k") == (ns / 1e9 if ns else None)


@pytest.mark.parametrize("ttl", [0, -1, -0.5, 0.0, math.nan, math.inf, TTL_MAX_S + 1,
                                 TTL_MAX_S + 0.5, 2**100, True, False, "1", b"1", [1]])
def test_a_bad_ttl_raises_what_cache_set_raises(cache, writers, ttl) -> None:
    w = writers()
    cache.set("k", b"v")
    expected = _error(lambda: shmkv.Cache.set(cache, "k", b"w", ttl))
    assert expected[0] in (TypeError, ValueError)
    assert _error(lambda: w.set("k", b"w", ttl)) == expected
    assert _error(lambda: w.set("k", b"w", ttl_s=ttl)) == expected
    assert _error(lambda: w.cas("k", b"w", 0, ttl)) == \
        _error(lambda: shmkv.Cache.cas(cache, "k", b"w", 0, ttl))
    assert _counts(w) == (0, 3)
    assert cache.get("k") == b"v"


def test_an_int_subclass_ttl_or_float_subclass_goes_to_python(cache, writers,
                                                              fake_clock) -> None:
    class Seconds(float):
        pass

    w = writers()
    cache.set("k", b"v")
    w.set("k", b"w", Seconds(3))
    assert _counts(w) == (0, 1)
    assert cache.ttl("k") == 3.0


def test_the_default_clock_is_read_directly(region_name) -> None:
    c = shmkv.Cache.create(region_name, arena_bytes=1 << 20)  # time.time_ns
    w = make_writer(c)
    try:
        c.set("k", b"v" * 8)
        before = time.time_ns()
        w.set("k", b"w" * 8, ttl_s=60)
        after = time.time_ns()
        assert _counts(w) == (1, 0)
        exp = _u64(c, _entry(c, b"k") + L.E_EXPIRES_AT)
        assert before + 60 * 10**9 <= exp <= after + 60 * 10**9
        v = c.get_with_version("k")[1]
        assert w.cas("k", b"x" * 8, v, ttl_s=0.05) is True
        time.sleep(0.1)
        assert w.cas("k", b"y" * 8, v + 256) is False  # expired: False, in C
        assert _counts(w) == (2, 0)
    finally:
        w.close()
        c.close()


def test_a_clock_the_fast_path_does_not_read_goes_to_python(cache) -> None:
    """A float, a negative or a huge time: the write goes to Python (whose own clock is the
    region's here; what matters is that the compiled path does not use such a time)."""
    cache.set("k", b"v" * 8, ttl_s=10)
    for clock, fast in [(lambda: cache._clock() * 1.0, 0), (lambda: -1, 0),
                        (lambda: 2**64, 0), (lambda: cache._clock(), 1)]:
        w = make_writer(cache, clock=clock)
        try:
            w.set("k", b"w" * 8, ttl_s=1)
            assert _counts(w) == (fast, 1 - fast)
            w.cas("k", b"x" * 8, cache.get_with_version("k")[1])  # the entry has a TTL
            assert _counts(w) == (fast, 1 - fast)
        finally:
            w.close()


def test_a_clock_that_raises_propagates_and_releases_the_lock(cache) -> None:
    def broken() -> int:
        raise RuntimeError("clock broke")

    cache.set("k", b"v" * 8, ttl_s=10)
    w = make_writer(cache, clock=broken)
    try:
        with pytest.raises(RuntimeError, match="clock broke"):
            w.set("k", b"w" * 8, ttl_s=1)
        with pytest.raises(RuntimeError, match="clock broke"):
            w.cas("k", b"w" * 8, 1)  # the entry has a TTL: the clock is read under the lock
        with pytest.raises(RuntimeError, match="clock broke"):
            w.incr("k")
        rec = _rec(cache, _stripe(cache, b"k"))
        assert _u32(cache, rec + L.S_OWNER_PID) == 0
        assert cache._region.locks.try_acquire_stripe(_stripe(cache, b"k"))
        cache._region.locks.release_stripe(_stripe(cache, b"k"))
    finally:
        w.close()


# --- cas --------------------------------------------------------------------------------------
def test_cas_hits_misses_expiry_and_mismatches(cache, writers, fake_clock) -> None:
    w = writers()
    assert w.cas("absent", b"v", 256) is False
    assert _counts(w) == (1, 0)  # decided in C: nothing to write
    assert "absent" not in cache
    cache.set("k", b"v1", ttl_s=5)
    _, version = cache.get_with_version("k")
    assert w.cas("k", b"v2", version + 256) is False
    assert w.cas("k", b"v2", version) is True
    assert w.cas("k", b"v3", version) is False  # it moved
    _, v2 = cache.get_with_version("k")
    assert v2 > version and cache.get("k") == b"v2"
    assert cache.ttl("k") is None  # no ttl_s: the TTL goes, as in Cache.cas
    assert w.cas("k", b"v3", v2, ttl_s=1) is True
    _, v3 = cache.get_with_version("k")
    fake_clock.advance(1)  # expires at now: expired
    assert w.cas("k", b"v4", v3) is False
    assert _counts(w) == (5, 0)
    assert shmkv.Cache.cas(cache, "k", b"v4", v3) is False


@pytest.mark.parametrize("version", [True, False, 1.0, "1", None, b"1"])
def test_a_bad_version_raises_what_cache_cas_raises(cache, writers, version) -> None:
    w = writers()
    cache.set("k", b"v")
    expected = _error(lambda: shmkv.Cache.cas(cache, "k", b"w", version))
    assert _error(lambda: w.cas("k", b"w", version)) == expected
    assert _error(lambda: w.cas(object(), 1, version)) == expected  # checked first
    assert _counts(w) == (0, 0)


@pytest.mark.parametrize("version", [-1, -(2**63), 2**64, 2**100])
def test_a_version_no_entry_can_have_goes_to_python_and_fails(cache, writers,
                                                             version) -> None:
    w = writers()
    cache.set("k", b"v")
    assert w.cas("k", b"w", version) is False
    assert _counts(w) == (0, 1)


def test_an_int_subclass_version_goes_to_python(cache, writers) -> None:
    class Version(int):
        pass

    w = writers()
    cache.set("k", b"v")
    assert w.cas("k", b"w", Version(cache.get_with_version("k")[1])) is True
    assert _counts(w) == (0, 1) and cache.get("k") == b"w"


# --- incr -------------------------------------------------------------------------------------
def test_incr_in_place_and_through_python(cache, writers, fake_clock) -> None:
    w = writers()
    assert w.incr("n") == 1  # absent: inserted in C, in a block of 40 bytes
    assert _counts(w) == (1, 0)
    assert w.incr("n") == 2 and w.incr("n", 7) == 9 and w.incr("n", 1) == 10
    assert _counts(w) == (3, 0)
    assert w.incr("n", 990) == 1000  # 36 + 1 + 4 bytes: moved to a larger block, in C
    assert _counts(w) == (1, 0)
    assert w.incr("n", 32) == 1032 and w.incr("n", delta=-1040) == -8
    assert _counts(w) == (2, 0)
    assert cache.get("n") == b"-8"
    for form in (b"007", b"-0", b"+1"):  # not integers as Redis reads them
        cache.set("z", form)
        with pytest.raises(shmkv.errors.NotAnInteger):
            w.incr("z")  # C hands it to Python, which raises
        assert cache.get("z") == form
    cache.set("big", b"-9223372036854775807")
    assert w.incr("big", -1) == -(2**63) and cache.get("big") == b"-9223372036854775808"
    assert _counts(w) == (1, 3)
    # TTL kept
    cache.set("t", b"10", ttl_s=5)
    exp = _u64(cache, _entry(cache, b"t") + L.E_EXPIRES_AT)
    assert w.incr("t", 5) == 15
    assert _u64(cache, _entry(cache, b"t") + L.E_EXPIRES_AT) == exp
    assert _counts(w) == (1, 0)
    # expired: starts from 0, without the TTL, as Python does
    fake_clock.advance(5)
    assert w.incr("t", 3) == 3
    assert _counts(w) == (1, 0) and cache.ttl("t") is None
    # a value longer than its block: relocated, in C
    cache.set("grow", b"9")
    assert w.incr("grow", 10**17) == 10**17 + 9
    assert _counts(w) == (1, 0)
    assert check_region(cache) == []


@pytest.mark.parametrize("raw, delta", [
    (b"abc", 1), (b"", 1), (b"-", 1), (b"1.5", 1), (b" 1", 1), (b"1 ", 1), (b"+1", 1),
    (b"\xd9\xa1", 1), (b"1" * 20, 1), (b"9223372036854775807", 1),
    (b"-9223372036854775808", -1), (b"5", 2**63 - 1), (b"9999999999999999999", -1),
])
def test_incr_errors_and_edges_are_the_python_engines(cache, writers, raw, delta) -> None:
    w = writers()
    cache.set("x", raw)
    expected = _outcome(lambda: shmkv.Cache.incr(cache, "x", delta))
    cache.set("x", raw)
    got = _outcome(lambda: w.incr("x", delta))
    assert got == expected
    if expected[0] == "raised":
        assert expected[1][0] is shmkv.NotAnInteger and cache.get("x") == raw


@pytest.mark.parametrize("delta", [True, 1.0, "1", None, 2**63, -(2**63) - 1])
def test_a_bad_or_huge_delta_is_the_python_engines(cache, writers, delta) -> None:
    w = writers()
    cache.set("x", b"0")
    expected = _outcome(lambda: shmkv.Cache.incr(cache, "x", delta))
    cache.set("x", b"0")
    assert _outcome(lambda: w.incr("x", delta)) == expected


# --- keys, values, arguments ------------------------------------------------------------------
def test_str_bytes_and_buffer_keys_are_the_same_key(cache, writers) -> None:
    w = writers()
    cache.set("clé", b"v" * 8)
    for k in ["clé", "clé".encode(), bytearray("clé".encode()), memoryview("clé".encode())]:
        w.set(k, b"w" * 8)
        assert cache.get("clé") == b"w" * 8
    assert _counts(w) == (4, 0)
    cache.set(b"", b"e" * 8)
    w.set("", b"E" * 8)
    assert cache.get(b"") == b"E" * 8
    longest = "k" * L.MAX_KEY_BYTES
    cache.set(longest, b"l" * 8)
    w.set(longest.encode(), b"L" * 8)
    assert cache.get(longest) == b"L" * 8
    assert _counts(w) == (2, 0)


def test_exact_str_bytes_and_memoryview_keys_need_no_python_call(cache) -> None:
    coerced: list[object] = []

    def spy(key: object) -> bytes:
        coerced.append(key)
        return key_bytes(key)

    region, lay = cache._region, cache._region.layout
    w = _core.Writer(region.mm, lay.n_stripes, lay.slots_per_stripe, lay.stripes_offset,
                     lay.collections_offset, lay.access_offset, lay.index_offset,
                     lay.arena_offset, lay.arena_bytes, region.seed, 0, 0, 5.0, region.clock,
                     spy, shmkv.LockTimeout, shmkv.CorruptRegion, cache._write,
                     py_incr(cache), expire_pass(cache))
    try:
        cache.set("clé", b"12345678")
        w.set("clé", b"abcdefgh")
        w.set("clé".encode(), b"abcdefgh")
        w.set(memoryview("clé".encode()), b"ABCDEFGH")  # the node's keys: frames' views
        assert coerced == [] and cache.get("clé") == b"ABCDEFGH"
        w.set(bytearray(b"x"), b"abcdefgh")
        assert coerced == [bytearray(b"x")]
        coerced.clear()
        strided = memoryview(b"k-k-")[::2]  # not contiguous: Python copies it
        w.set(strided, b"abcdefgh")
        assert coerced == [strided] and cache.get(b"kk") == b"abcdefgh"
        released = memoryview(b"k")
        released.release()
        for key in (released, memoryview(b"k" * (L.MAX_KEY_BYTES + 1))):
            coerced.clear()  # Python raises what it raises
            assert _error(lambda key=key: w.set(key, b"abcdefgh")) == \
                _error(lambda key=key: shmkv.Cache.set(cache, key, b"abcdefgh"))
            assert coerced == [key]
    finally:
        w.close()


def test_str_values_are_utf8_and_other_buffers_go_to_python(cache, writers) -> None:
    np = pytest.importorskip("numpy")
    w = writers()
    cache.set("k", b"v" * 8)
    w.set("k", "é" * 4)
    assert cache.get("k") == "é".encode() * 4 and _counts(w) == (1, 0)
    for value in [bytearray(b"12345678"), np.arange(2, dtype="<i4"),
                  memoryview(b"a-b-c-d-e-f-g-h-")[::2]]:  # not contiguous: Python copies it
        w.set("k", value)
        assert cache.get("k") == bytes(value) and _counts(w) == (0, 1)


def test_a_contiguous_memoryview_value_is_written_in_c(cache, writers) -> None:
    """The node's values are views of the frames it received: no Python write for them."""
    np = pytest.importorskip("numpy")
    w = writers()
    cache.set("k", b"v" * 8)
    for value in [memoryview(b"abcdefgh"), memoryview(bytearray(b"12345678")),
                  memoryview(np.arange(2, dtype="<i4"))]:
        w.set("k", value)
        assert cache.get("k") == bytes(value) and _counts(w) == (1, 0)
        assert w.cas("k", value, cache.get_with_version("k")[1]) is True
        assert _counts(w) == (1, 0)
    released = memoryview(b"abcdefgh")
    released.release()
    assert _error(lambda: w.set("k", released)) == \
        _error(lambda: shmkv.Cache.set(cache, "k", released))
    assert cache.get("k") == bytes(np.arange(2, dtype="<i4"))


@pytest.mark.parametrize("key", ["\ud800", 1, 1.5, None, ["a"], b"x" * (L.MAX_KEY_BYTES + 1),
                                 "é" * (L.MAX_KEY_BYTES // 2 + 1),
                                 bytearray(L.MAX_KEY_BYTES + 1)])
def test_a_bad_key_raises_what_cache_raises(cache, writers, key) -> None:
    w = writers()
    for call, ref in [
        (lambda: w.set(key, b"v"), lambda: shmkv.Cache.set(cache, key, b"v")),
        (lambda: w.set(key, b"v", 5), lambda: shmkv.Cache.set(cache, key, b"v", 5)),
        (lambda: w.set(key, 1), lambda: shmkv.Cache.set(cache, key, 1)),  # the value's error
        (lambda: w.cas(key, b"v", 1), lambda: shmkv.Cache.cas(cache, key, b"v", 1)),
        (lambda: w.incr(key), lambda: shmkv.Cache.incr(cache, key)),
        (lambda: w.incr(key, 1.5), lambda: shmkv.Cache.incr(cache, key, 1.5)),
    ]:
        assert _error(call) == _error(ref)


@pytest.mark.parametrize("value", [1, 1.5, None, True, "\udfff", object(), [b"a"]])
def test_a_bad_value_raises_what_cache_raises(cache, writers, value) -> None:
    w = writers()
    cache.set("k", b"v")
    assert _error(lambda: w.set("k", value)) == _error(lambda: shmkv.Cache.set(cache, "k", value))
    assert _error(lambda: w.cas("k", value, 1)) == \
        _error(lambda: shmkv.Cache.cas(cache, "k", value, 1))
    assert cache.get("k") == b"v"


@pytest.mark.parametrize("method, args, kwargs", [
    ("set", (), {}), ("set", ("k",), {}), ("set", ("k", b"v", None, 1), {}),
    ("set", ("k", b"v"), {"ttl": 1}), ("set", ("k", b"v"), {"key": "k"}),
    ("set", ("k",), {"value": b"v", "self": 1}), ("set", (), {"value": b"v"}),
    ("set", ("k", b"v", 1, 2, 3), {"ttl_s": 1}), ("set", ("k", b"v", 1, 2), {"nope": 1}),
    ("cas", (), {}), ("cas", ("k", b"v"), {}), ("cas", ("k",), {"version": 1}),
    ("cas", ("k", b"v", 1, None, 2), {}), ("cas", ("k", b"v", 1), {"version": 2}),
    ("cas", ("k", b"v"), {"if_version": 1}),
    ("incr", (), {}), ("incr", ("k", 1, 2), {}), ("incr", ("k",), {"by": 1}),
    ("incr", ("k", 1), {"delta": 1}), ("incr", (), {"delta": 1}),
])
def test_wrong_arguments_raise_what_the_python_methods_raise(cache, writers, method, args,
                                                            kwargs) -> None:
    w = writers()
    expected = _error(lambda: getattr(shmkv.Cache, method)(cache, *args, **kwargs))
    assert expected[0] is TypeError
    assert _error(lambda: getattr(w, method)(*args, **kwargs)) == expected


def test_keyword_arguments_work_as_in_cache(cache, writers) -> None:
    w = writers()
    cache.set("k", b"v" * 8)
    w.set(key="k", value=b"w" * 8, ttl_s=None)
    w.set("k", value=b"x" * 8)
    v = cache.get_with_version("k")[1]
    assert w.cas(value=b"y" * 8, version=v, key="k", ttl_s=3) is True
    assert w.incr(key="n") == 1 and w.incr("n", delta=2) == 3
    assert cache.get("k") == b"y" * 8
    assert w.set("k", b"z" * 8) is None


# --- collections -------------------------------------------------------------------------------
def test_a_collection_writer_writes_its_collection_only(cache, writers) -> None:
    users = cache.collection("users")
    users.set("k", b"in users")
    cache.set("k", b"in default")
    w = writers(users)
    w.set("k", b"IN USERS")
    assert _counts(w) == (1, 0)
    assert users.get("k") == b"IN USERS" and cache.get("k") == b"in default"
    w.set("only-in-default", b"x")  # an insert into the collection, in C
    assert _counts(w) == (1, 0)
    assert users.get("only-in-default") == b"x" and cache.get("only-in-default") is None
    assert check_region(cache) == []


def test_a_dropped_collection_raises_collectionnotfound_through_python(cache,
                                                                      writers) -> None:
    users = cache.collection("users")
    users.set("k", b"12345678")
    users.set("n", b"1")
    w = writers(users)
    cache.drop_collection("users")
    for call in (lambda: w.set("k", b"abcdefgh"), lambda: w.incr("n"),
                 lambda: w.cas("k", b"abcdefgh", 1)):
        with pytest.raises(shmkv.CollectionNotFound, match="was dropped"):
            call()
    assert _counts(w) == (0, 3)
    again = cache.collection("users")  # the record reused, its generation moved on
    again.set("k", b"12345678")
    with pytest.raises(shmkv.CollectionNotFound):
        w.set("k", b"abcdefgh")
    assert again.get("k") == b"12345678"


@pytest.mark.parametrize("field, value", [("generation", 1), ("state", 2), ("state", 0)])
def test_a_collection_record_that_moved_on_sends_writes_to_python(cache, writers, field,
                                                                  value) -> None:
    """Another generation (the record was reused) or another state (being dropped, free):
    Python's CollectionNotFound, whichever changed alone."""
    users = cache.collection("users")
    users.set("k", b"12345678")
    w = writers(users)
    rec = cache._region.layout.collections_offset + users._coll * L.COLLECTION_BYTES
    mm = cache._region.mm
    saved = bytes(mm[rec:rec + L.COLLECTION_BYTES])
    if field == "generation":
        gen = int.from_bytes(saved[L.C_GENERATION:L.C_GENERATION + 2], "little")
        mm[rec + L.C_GENERATION:rec + L.C_GENERATION + 2] = ((gen + value) & 0xFFFF).to_bytes(
            2, "little")
    else:
        mm[rec + _core.C_STATE] = value
    try:
        expected = _error(lambda: shmkv.Cache.set(users, "k", b"abcdefgh"))
        assert expected[0] is shmkv.CollectionNotFound
        assert _error(lambda: w.set("k", b"abcdefgh")) == expected
        assert _counts(w) == (0, 1)
    finally:
        mm[rec:rec + L.COLLECTION_BYTES] = saved
    w.set("k", b"abcdefgh")
    assert _counts(w) == (1, 0)


@pytest.mark.parametrize("name_len, name", [(41, None), (255, None), (2, b"\xff\xfe")])
def test_a_damaged_collection_record_goes_to_python_which_raises(cache, writers, name_len,
                                                                 name) -> None:
    users = cache.collection("users")
    users.set("k", b"12345678")
    w = writers(users)
    rec = cache._region.layout.collections_offset + users._coll * L.COLLECTION_BYTES
    mm = cache._region.mm
    saved = bytes(mm[rec:rec + L.COLLECTION_BYTES])
    mm[rec + _core.C_NAME_LEN] = name_len
    if name is not None:
        mm[rec + _core.C_NAME:rec + _core.C_NAME + len(name)] = name
    try:
        expected = _error(lambda: shmkv.Cache.set(users, "k", b"abcdefgh"))
        assert expected[0] is shmkv.CorruptRegion
        assert _error(lambda: w.set("k", b"abcdefgh")) == expected
        assert _counts(w) == (0, 1)
    finally:
        mm[rec:rec + L.COLLECTION_BYTES] = saved
    cache.collection("café")  # a UTF-8 name beyond ASCII: correct, and left to Python
    cafe = cache.collection("café")
    cafe.set("k", b"12345678")
    w2 = writers(cafe)
    w2.set("k", b"abcdefgh")
    assert _counts(w2) == (0, 1) and cafe.get("k") == b"abcdefgh"
    w.set("k", b"abcdefgh")
    assert _counts(w) == (1, 0)


# --- what the fast path leaves to Python -----------------------------------------------------------
def test_with_events_on_writes_and_deletes_emit_in_c_what_python_emits(cache,
                                                                       writers) -> None:
    from shmkv.events import EventReader

    w = writers()
    cache.set("k", b"12345678")
    cache.set("n", b"1")
    events = EventReader(cache)
    cache.enable_events(True)
    w.set("k", b"abcdefgh")
    assert w.cas("k", b"ABCDEFGH", cache.get_with_version("k")[1]) is True
    assert w.incr("n") == 2
    assert w.set("new", b"v" * 200) is None and w.delete("new") is True
    assert _counts(w) == (5, 0)
    assert sorted((e.kind, e.key) for e in events.poll()) == \
        [("del", b"new"), ("set", b"k"), ("set", b"k"), ("set", b"n"), ("set", b"new")]
    cache.enable_events(False)
    w.set("k", b"12345678")
    assert _counts(w) == (1, 0)


def test_a_write_fence_sends_writes_to_python(cache, writers) -> None:
    w = writers()
    cache.set("k", b"12345678")
    calls: list[tuple] = []
    w2 = writers(write_fallback=lambda *a: calls.append(a) or True)
    cache._region.q[L.H_WRITABLE_UNTIL >> 3] = 1
    try:
        w2.set("k", b"abcdefgh")
        assert calls == [("k", b"abcdefgh", None, None)]
    finally:
        cache._region.q[L.H_WRITABLE_UNTIL >> 3] = 0
    w.set("k", b"abcdefgh")
    assert _counts(w) == (1, 0)


def test_a_lease_fence_still_ahead_keeps_writes_in_c_on_the_system_clock(cache, writers) -> None:
    """A primary under etcd always has a fence (the end of its lease): while it is ahead of
    time.time_ns(), writes stay on the fast path; once passed, they go to Python, which
    refuses them. A handle on another clock always leaves the comparison to Python."""
    cache.set("k", b"12345678")
    calls: list[tuple] = []
    real = writers(clock=time.time_ns, write_fallback=lambda *a: calls.append(a) or True)
    other = writers(write_fallback=lambda *a: calls.append(a) or True)  # the fake clock
    cache._region.q[L.H_WRITABLE_UNTIL >> 3] = time.time_ns() + 60 * 10**9
    try:
        real.set("k", b"abcdefgh")
        assert real.delete("k") is True
        assert _counts(real) == (2, 0) and calls == []
        other.set("k", b"ABCDEFGH")
        assert calls == [("k", b"ABCDEFGH", None, None)]
        cache._region.q[L.H_WRITABLE_UNTIL >> 3] = time.time_ns() - 1
        real.set("k", b"12345678")
        assert _counts(real) == (0, 1)
    finally:
        cache._region.q[L.H_WRITABLE_UNTIL >> 3] = 0


def test_a_pinned_entry_is_never_rewritten_in_place(cache, writers) -> None:
    w = writers()
    cache.set("k", b"a" * 64)
    with cache.view("k") as mv:
        w.set("k", b"b" * 64)
        assert _counts(w) == (0, 1)
        assert bytes(mv) == b"a" * 64  # the view's bytes did not move
        assert cache.get("k") == b"b" * 64
    w.set("k", b"c" * 64)  # the new block is not pinned
    assert _counts(w) == (1, 0)
    assert check_region(cache) == []


def test_a_recorded_pid_with_the_lock_free_sends_the_call_to_python_which_repairs(
        cache, writers) -> None:
    w = writers()
    cache.set("k", b"12345678")
    rec = _rec(cache, _stripe(cache, b"k"))
    repairs: list[int] = []
    locks = cache._region.locks
    real = locks._on_dead_stripe_holder
    locks._on_dead_stripe_holder = lambda s: (repairs.append(s), real(s))
    try:
        cache._region.u32[(rec + L.S_OWNER_PID) >> 2] = 999_999  # died inside, mutex free
        w.set("k", b"abcdefgh")
        assert _counts(w) == (0, 1) and repairs == [_stripe(cache, b"k")]
        assert _u32(cache, rec + L.S_OWNER_PID) == 0 and cache.get("k") == b"abcdefgh"
        cache._region.q[(rec + L.S_SEQ) >> 3] += 1  # left odd
        w.set("k", b"ABCDEFGH")
        assert cache.get("k") == b"ABCDEFGH"
        assert not _u64(cache, rec + L.S_SEQ) & 1
        assert _counts(w) == (0, 1) and repairs == [_stripe(cache, b"k")] * 2
        w.set("k", b"12345678")
        assert _counts(w) == (1, 0)
    finally:
        locks._on_dead_stripe_holder = real
    assert check_region(cache) == []


def test_a_stripe_that_looks_overfull_goes_to_python(cache, writers) -> None:
    w = writers()
    cache.set("k", b"12345678")
    rec = _rec(cache, _stripe(cache, b"k"))
    per = cache._region.layout.slots_per_stripe
    count_at = (rec + L.S_COUNT) >> 2
    count = cache._region.u32[count_at]
    cache._region.u32[count_at] = int(per * L.MAX_LOAD) + 1
    try:
        w.set("k", b"abcdefgh")
        assert _counts(w) == (0, 1)
    finally:
        cache._region.u32[count_at] = count
    w.set("k", b"ABCDEFGH")
    assert _counts(w) == (1, 0)


def test_a_writes_counter_at_its_limit_goes_to_python(cache, writers) -> None:
    w = writers()
    cache.set("k", b"12345678")
    at = (_rec(cache, _stripe(cache, b"k")) + L.S_WRITES) >> 3
    q = cache._region.q
    saved = q[at]
    q[at] = 2**56 - 2
    try:
        w.set("k", b"abcdefgh")  # the last write there is
        assert _counts(w) == (1, 0)
        assert q[at] == 2**56 - 1
        assert cache.get_with_version("k")[1] >> 8 == (2**56 - 1) & L.VERSION_MASK
        with pytest.raises(shmkv.CorruptRegion):
            w.set("k", b"ABCDEFGH")
        assert _counts(w) == (0, 1) and cache.get("k") == b"abcdefgh"
    finally:
        q[at] = saved


def test_a_slot_whose_ref_leaves_the_arena_goes_to_python_which_raises(cache,
                                                                      writers) -> None:
    w = writers()
    cache.set("victim", b"12345678")
    lay, q = cache._region.layout, cache._region.q
    stripe = _stripe(cache, b"victim")
    h = xxh3_64(b"victim", cache._region.seed)
    i = (h >> 32) % lay.slots_per_stripe
    at = lay.index_offset // 8 + stripe * lay.slots_per_stripe + i
    while q[at] >> 32 != h >> 32:
        at += 1
    good = q[at]
    q[at] = good | 0xFFFFFFFF
    try:
        with pytest.raises(shmkv.CorruptRegion, match="outside the arena"):
            w.set("victim", b"abcdefgh")
        assert _counts(w) == (0, 1)
    finally:
        q[at] = good
    w.set("victim", b"abcdefgh")
    assert _counts(w) == (1, 0)


# --- locks ------------------------------------------------------------------------------------
def test_our_pid_is_recorded_while_we_hold_the_lock_and_cleared_after(cache) -> None:
    cache.set("k", b"12345678", ttl_s=10)
    rec = _rec(cache, _stripe(cache, b"k"))
    seen: list[int] = []

    def clock() -> int:  # called under the lock (the entry has a TTL)
        seen.append(_u32(cache, rec + L.S_OWNER_PID))
        return cache._clock()

    w = make_writer(cache, clock=clock)
    try:
        cache.set("k", b"1", ttl_s=10)
        assert w.incr("k") == 2
        assert seen == [os.getpid()] and _core._writer_pid() == os.getpid()
        assert _u32(cache, rec + L.S_OWNER_PID) == 0
    finally:
        w.close()


@contextlib.contextmanager
def _held_by_another_thread(cache: shmkv.Cache, stripe: int) -> Iterator[threading.Event]:
    """A thread of ours holds the stripe's lock from the time this is entered (it has taken it
    by then) until the event it gives is set, or this is left."""
    locks = cache._region.locks
    taken, release = threading.Event(), threading.Event()

    def holder() -> None:
        locks.acquire_stripe(stripe)
        taken.set()
        release.wait(30)
        locks.release_stripe(stripe)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert taken.wait(10)
        yield release
    finally:
        release.set()
        t.join(30)


def test_a_busy_lock_is_waited_for_without_the_gil_and_times_out_naming_its_holder(
        cache) -> None:
    cache.set("k", b"12345678")
    stripe = _stripe(cache, b"k")
    w = make_writer(cache, lock_timeout_s=0.3)
    try:
        with _held_by_another_thread(cache, stripe) as release:
            started = time.monotonic()
            kind, message = _error(lambda: w.set("k", b"abcdefgh"))
            assert 0.25 < time.monotonic() - started < 5
            assert kind is shmkv.LockTimeout
            assert message == (f"stripe {stripe} lock not acquired within 0.3 s; held by pid "
                               f"{os.getpid()}, which is alive (a dead holder's lock passes to "
                               "the next locker). If it is stopped or stuck, stop it; if it is "
                               "just busy, raise lock_timeout_s")
            # released while we wait: the holder needs the GIL to let go
            threading.Timer(0.1, release.set).start()
            w2 = make_writer(cache, lock_timeout_s=10)
            try:
                w2.set("k", b"ABCDEFGH")
                assert _counts(w2) == (1, 0)
            finally:
                w2.close()
    finally:
        w.close()
    assert cache.get("k") == b"ABCDEFGH"


class _Interrupted(Exception):
    pass


def test_a_signal_handler_runs_while_a_busy_lock_is_waited_for(cache) -> None:
    """The wait is made in slices (as locks.py's), so that Ctrl-C is not held up for
    lock_timeout_s."""
    cache.set("k", b"12345678")
    stripe = _stripe(cache, b"k")

    def interrupted(signum: int, frame: object) -> None:
        raise _Interrupted

    old = signal.signal(signal.SIGUSR1, interrupted)
    w = make_writer(cache, lock_timeout_s=20)
    try:
        with _held_by_another_thread(cache, stripe):
            main = threading.main_thread().ident
            threading.Timer(0.2, lambda: signal.pthread_kill(main, signal.SIGUSR1)).start()
            started = time.monotonic()
            with pytest.raises(_Interrupted):
                w.set("k", b"abcdefgh")
            assert time.monotonic() - started < 5
    finally:
        signal.signal(signal.SIGUSR1, old)
        w.close()
    assert cache.get("k") == b"12345678"
    w2 = make_writer(cache)
    try:
        w2.set("k", b"abcdefgh")
        assert _counts(w2) == (1, 0)
    finally:
        w2.close()


def test_threads_mixing_compiled_and_python_incrs_count_every_one(cache) -> None:
    """A Python writer holds the mutex across GIL switches (ctypes lets the GIL go): a compiled
    writer of another thread that finds it busy must wait with the GIL released."""
    cache.set("counter", b"0")
    w = make_writer(cache)
    per_thread, errors = 2000, []

    def run(compiled: bool) -> None:
        try:
            for i in range(per_thread):
                if compiled:
                    w.incr("counter")
                else:
                    shmkv.Cache.incr(cache, "counter")
                if i % 100 == 0:  # relocations too, through Python
                    (w.set if compiled else cache.set)("other", b"x" * (8 + i % 300))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i % 2 == 0,)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert cache.get("counter") == str(4 * per_thread).encode()
        fast, _, _ = w.take_counts()
        assert fast >= 2 * per_thread - 100
    finally:
        w.close()
    assert check_region(cache) == []


def _die_holding(name: str, key: bytes, repaired_seq: bool) -> None:
    c = shmkv.Cache.open(name)
    stripe = _stripe(c, key)
    c._region.locks.acquire_stripe(stripe)  # pid recorded
    if repaired_seq:
        c._region.q[(_rec(c, stripe) + L.S_SEQ) >> 3] += 1  # killed between the bumps
    os._exit(0)


@pytest.mark.multiprocess
@pytest.mark.parametrize("odd_seq", [False, True])
def test_a_holder_that_died_is_recovered_and_repaired_by_python(cache, writers,
                                                               odd_seq) -> None:
    w = writers()
    cache.set("k", b"12345678")
    p = ctx.Process(target=_die_holding, args=(cache._region.name, b"k", odd_seq))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    rec = _rec(cache, _stripe(cache, b"k"))
    assert _u32(cache, rec + L.S_OWNER_PID) == p.pid
    w.set("k", b"abcdefgh")  # EOWNERDEAD: made consistent; the pid sends it to Python
    assert _counts(w) == (0, 1)
    assert _u32(cache, rec + L.S_OWNER_PID) == 0 and not _u64(cache, rec + L.S_SEQ) & 1
    assert cache.get("k") == b"abcdefgh"
    w.set("k", b"ABCDEFGH")
    assert _counts(w) == (1, 0)
    assert check_region(cache) == []


@pytest.mark.multiprocess
def test_a_mutex_left_unrecoverable_raises_corruptregion(cache, writers) -> None:
    import ctypes

    w = writers()
    cache.set("k", b"12345678")
    p = ctx.Process(target=_die_holding, args=(cache._region.name, b"k", False))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    stripe = _stripe(cache, b"k")
    libc = ctypes.CDLL(None)
    anchor = ctypes.c_char.from_buffer(cache._region.mm)
    try:
        m = ctypes.c_void_p(ctypes.addressof(anchor) + _rec(cache, stripe) + L.S_MUTEX)
        assert libc.pthread_mutex_trylock(m) == errno.EOWNERDEAD
        assert libc.pthread_mutex_unlock(m) == 0  # not made consistent: unrecoverable
    finally:
        del anchor
    kind, message = _error(lambda: w.set("k", b"abcdefgh"))
    assert kind is shmkv.CorruptRegion, message
    assert message == (f"stripe {stripe} lock: pthread says {os.strerror(errno.ENOTRECOVERABLE)}"
                       f" (error {errno.ENOTRECOVERABLE}); close every process using the region"
                       " and open it again, which re-initialises its locks")
    assert _counts(w) == (0, 0) and cache.get("k") == b"12345678"
    cache._region.locks.init_all(cache._region.mm, cache._region.layout)  # as a reopen does
    w.set("k", b"abcdefgh")  # the recorded pid: Python repairs
    assert _counts(w) == (0, 1) and cache.get("k") == b"abcdefgh"


def test_a_forked_child_records_its_own_pid(cache) -> None:
    r, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(wfd, str(_core._writer_pid()).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    got = int(os.read(r, 64))
    os.close(r)
    os.waitpid(pid, 0)
    assert got == pid and _core._writer_pid() == os.getpid()


# --- expiry sampling -------------------------------------------------------------------------------
def test_a_process_that_only_overwrites_in_place_reclaims_expired_entries(cache, writers,
                                                                          fake_clock) -> None:
    w = writers()
    lay = cache._region.layout
    hot = [f"hot{i}".encode() for i in range(50)]
    for k in hot:
        cache.set(k, b"12345678")
    for i in range(100):
        cache.set(f"cold{i}", b"c" * 20, ttl_s=1)
    fake_clock.advance(2)
    expirations = _u64(cache, L.H_EXPIRATIONS)
    items = len(cache)
    _counts(w)
    rng = random.Random(5)
    for _ in range(2 * lay.index_slots):
        w.set(rng.choice(hot), rng.randbytes(8))
    fast, fallbacks, hook_calls = w.take_counts()
    assert (fast, fallbacks) == (2 * lay.index_slots, 0)
    assert 0 < hook_calls <= 100
    assert _u64(cache, L.H_EXPIRATIONS) - expirations == 100
    assert len(cache) == items - 100
    assert check_region(cache) == []


def test_the_sampling_moves_the_cursor_only_when_nothing_looked_expired(cache,
                                                                        fake_clock) -> None:
    calls: list[int] = []
    q, total = cache._region.q, cache._region.layout.index_slots
    w = make_writer(cache, expire_hook=lambda: calls.append(q[L.H_EXPIRE_CURSOR >> 3]))
    try:
        cache.set("k", b"12345678")
        at = (_rec(cache, _stripe(cache, b"k")) + L.S_WRITES) >> 3
        q[L.H_EXPIRE_CURSOR >> 3] = total - 3  # wraps
        q[at] = 15  # the next write is the stripe's 16th
        w.set("k", b"abcdefgh")
        assert q[L.H_EXPIRE_CURSOR >> 3] == 13 and calls == []
        w.set("k", b"abcdefgh")  # the 17th: no sampling
        assert q[L.H_EXPIRE_CURSOR >> 3] == 13
        cache.set("gone", b"x", ttl_s=1)
        fake_clock.advance(1)
        slot = _entry_slot(cache, b"gone")
        q[L.H_EXPIRE_CURSOR >> 3] = slot - 5
        q[at] = 31
        w.set("k", b"ABCDEFGH")
        assert calls == [slot - 5]  # the cursor left for the Python pass to start from
    finally:
        w.close()


def _entry_slot(c: shmkv.Cache, key: bytes) -> int:
    return c._region.index.slot_of(_entry(c, key))


def test_an_error_in_the_expiry_pass_propagates_after_the_write(cache, fake_clock) -> None:
    def boom() -> None:
        raise shmkv.LockTimeout("arena busy")

    w = make_writer(cache, expire_hook=boom)
    try:
        cache.set("k", b"12345678")
        cache.set("gone", b"x", ttl_s=1)
        fake_clock.advance(1)
        q = cache._region.q
        q[L.H_EXPIRE_CURSOR >> 3] = _entry_slot(cache, b"gone")
        q[(_rec(cache, _stripe(cache, b"k")) + L.S_WRITES) >> 3] = 15
        with pytest.raises(shmkv.LockTimeout, match="arena busy"):
            w.set("k", b"abcdefgh")
        assert cache.get("k") == b"abcdefgh"
    finally:
        w.close()


# --- lifecycle ---------------------------------------------------------------------------------
def test_close_then_every_method_raises_valueerror(cache) -> None:
    w = make_writer(cache)
    cache.set("k", b"12345678")
    w.set("k", b"abcdefgh")
    w.close()
    w.close()
    assert w.closed
    for call in (lambda: w.set("k", b"v"), lambda: w.cas("k", b"v", 1), lambda: w.incr("k")):
        with pytest.raises(ValueError, match="closed"):
            call()
    cache.close()  # the buffer is released: mmap.close() would refuse otherwise


def test_close_inside_a_fallback_lets_the_call_finish_and_releases_after(cache) -> None:
    w: _core.Writer

    def closing_write(*args: Any) -> bool:
        w.close()
        return cache._write(*args)

    w = make_writer(cache, write_fallback=closing_write)
    w.set("k", bytearray(b"v"))  # a value that is not exact bytes: Python's
    assert w.closed and cache.get("k") == b"v"
    cache.close()


def test_the_constructor_refuses_what_is_not_the_regions_layout(cache) -> None:
    region, lay = cache._region, cache._region.layout
    args = [region.mm, lay.n_stripes, lay.slots_per_stripe, lay.stripes_offset,
            lay.collections_offset, lay.access_offset, lay.index_offset, lay.arena_offset,
            lay.arena_bytes, region.seed, 0, 0, 5.0, region.clock, key_bytes,
            shmkv.LockTimeout, shmkv.CorruptRegion, cache._write, py_incr(cache),
            expire_pass(cache)]
    for i, bad in [(1, 3), (1, 0), (2, 0), (8, lay.arena_bytes * 2), (3, 4), (10, 1 << 16),
                   (10, -1), (11, 1 << 16), (12, 0), (12, 3601), (12, math.nan), (9, -1)]:
        with pytest.raises((ValueError, OverflowError)):
            _core.Writer(*args[:i], bad, *args[i + 1:])
    for i in (13, 14, 17, 18, 19):
        with pytest.raises(TypeError):
            _core.Writer(*args[:i], None, *args[i + 1:])
    for i in (15, 16):
        with pytest.raises(TypeError):
            _core.Writer(*args[:i], ValueError("not a class"), *args[i + 1:])
    with pytest.raises(TypeError):
        _core.Writer(*args[:12], True, *args[13:])
    with pytest.raises(BufferError):
        _core.Writer(bytes(region.mm[:8192]), *args[1:])
    buf = bytearray(region.mm[:])
    buf[L.H_LOCK_KIND:L.H_LOCK_KIND + 4] = (1).to_bytes(4, "little")
    with pytest.raises(ValueError, match="robust"):
        _core.Writer(buf, *args[1:])
    with pytest.raises(ValueError, match="layout version"):
        _core.Writer(bytearray(len(region.mm)), *args[1:])
    w = _core.Writer(*args[:12], 2, *args[13:])  # an int timeout, formatted as Python does
    w.close()


def test_writes_hold_no_references(cache, writers) -> None:
    w = writers()
    cache.set("k", b"12345678")
    cache.set("n", b"1")
    key, value, ttl, n = "k", b"abcdefgh", 100.5, "n"
    version = 1 << 70
    before = [sys.getrefcount(o) for o in (key, value, ttl, n, version)]
    for _ in range(1000):
        w.set(key, value)
        w.set(key, value, ttl)
        w.cas(key, value, version)
        w.cas(key, value, cache.get_with_version(key)[1])
        w.incr(n)
        w.set("absent", value)
        cache.delete("absent")
    assert [sys.getrefcount(o) for o in (key, value, ttl, n, version)] == before


def test_the_garbage_collector_sees_the_writers_callbacks(cache) -> None:
    w = make_writer(cache)
    try:
        referents = gc.get_referents(w)
        assert key_bytes in referents and shmkv.LockTimeout in referents
        assert cache._region.mm in referents
        assert any(getattr(r, "__self__", None) is cache for r in referents)  # cache._write
    finally:
        w.close()


# --- several processes ---------------------------------------------------------------------------
INCR_PROCESSES, INCRS = 4, 5000


def _incr_worker(name: str, start: Any, out: Any) -> None:
    c = shmkv.Cache.open(name)
    w = make_writer(c)
    start.wait(30)
    for _ in range(INCRS):
        w.incr("counter")
    out.put(w.take_counts())
    w.close()
    c.close()


@pytest.mark.multiprocess
def test_concurrent_incrs_from_four_processes_are_all_counted(cache) -> None:
    cache.set("counter", b"10000")  # a block that "10001" .. "30000" all fit snugly
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_incr_worker, args=(cache._region.name, start, out))
             for _ in range(INCR_PROCESSES)]
    for p in procs:
        p.start()
    start.set()
    counts = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert cache.get("counter") == str(10000 + INCR_PROCESSES * INCRS).encode()
    assert sum(c[0] for c in counts) == INCR_PROCESSES * INCRS  # all in C, in place
    assert check_region(cache) == []


def _mixed_worker(name: str, compiled: bool, start: Any) -> None:
    c = shmkv.Cache.open(name)
    w = make_writer(c) if compiled else None
    start.wait(30)
    for i in range(INCRS // 2):
        if compiled:
            w.incr("counter")
        else:
            shmkv.Cache.incr(c, "counter")
        if i % 50 == 0:  # and some relocations, through Python, under the same locks
            (w.set if compiled else c.set)("other", b"x" * (8 + i % 200))
    if w is not None:
        w.close()
    c.close()


@pytest.mark.multiprocess
def test_compiled_and_python_writers_exclude_each_other(cache) -> None:
    cache.set("counter", b"0")
    start = ctx.Event()
    procs = [ctx.Process(target=_mixed_worker, args=(cache._region.name, i % 2 == 0, start))
             for i in range(4)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert cache.get("counter") == str(4 * (INCRS // 2)).encode()
    assert check_region(cache) == []


TORN_LENGTH = 60 << 10  # in place (at most INPLACE_MAX_BYTES), long enough to tear
# A writer rewriting back to back keeps seq odd most of the time: a reader gets a few hundred
# consistent reads a second here (while the writer does ~200,000 writes).
TORN_READS, TORN_MIN_READS, TORN_SECONDS = 20_000, 300, 3.0
_TORN_WRITER = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
import shmkv
from test_core_write import make_writer
c = shmkv.Cache.open(sys.argv[1])
w = make_writer(c)
n = 0
deadline = time.monotonic() + 120
print("ready", flush=True)
while time.monotonic() < deadline and c.get(b"stop") is None:
    for j in range(26):
        w.set(b"torn", bytes([97 + j]) * int(sys.argv[3]))
    n += 26
fast, fallbacks, _ = w.take_counts()
print(n, fast, fallbacks, flush=True)
w.close()
c.close()
"""


@pytest.mark.multiprocess
def test_a_reader_never_sees_a_torn_value_while_a_writer_rewrites_in_place(cache) -> None:
    lay, region = cache._region.layout, cache._region
    r = _core.Reader(region.mm, lay.n_stripes, lay.slots_per_stripe, lay.stripes_offset,
                     lay.index_offset, lay.access_offset, lay.arena_offset, lay.arena_bytes,
                     region.seed, 0, region.clock, key_bytes, cache._wait_writer,
                     shmkv.CorruptRegion)
    cache.set(b"torn", b"a" * TORN_LENGTH)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(__file__)), os.environ.get("PYTHONPATH", "")]))
    writer = subprocess.Popen([sys.executable, "-c", _TORN_WRITER, region.name,
                               os.path.dirname(__file__), str(TORN_LENGTH)],
                              stdout=subprocess.PIPE, text=True, env=env,
                              cwd=os.path.dirname(__file__))  # not the checkout: CI installs
    try:
        # Bounded in time too: on a machine whose cores are all busy, a writer preempted
        # between its seq bumps holds every reader up for a scheduler tick.
        out, torn, seen, reads = torn_reads(writer, lambda: cache.set(b"stop", b"1"),
                                            lambda: r.get(b"torn"), (TORN_LENGTH,), TORN_READS,
                                            TORN_MIN_READS, TORN_SECONDS)
    finally:
        r.close()
    n, fast, fallbacks = map(int, out.split())
    assert n > 0 and fast == n and fallbacks == 0  # every write was in place, in C
    assert len(seen) > 2, "the writer did not overlap the reads; the test proved nothing"
    assert not torn, f"{len(torn)} torn reads out of {reads}, e.g. {torn[:3]}"
