"""Fuzz of the public Cache API: random calls with arguments of every kind (hypothesis).

Every call must either succeed or raise a documented error: a `ShmKVError`, a plain
`TypeError` or `ValueError` for a wrong type or value, or `KeyError` from `cache[key]` and
`del cache[key]`. Anything else (AttributeError, OverflowError, struct.error, IndexError,
BufferError, UnicodeEncodeError, a posix_ipc/sysv_ipc error, ...) means an argument slipped
past validation into the engine: the test fails on it. Builtin errors are matched by exact type,
so a subclass such as UnicodeEncodeError (a ValueError) does not pass for a documented
ValueError.

The test is single-process, so two ShmKVErrors are failures here too: LockTimeout (nobody else
can hold a lock: a call left one taken) and CacheClosed (nothing closes the handle).

After each example the region must pass the full consistency check, and the sentinel entries
written at its start must still hold exactly their values (they may only be missing if the
arena evicted entries, or if the default collection was cleared).

Inputs that trip bugs already documented by the strict xfails in this file are kept
out of the generated arguments (see KNOWN_BUG_*), so that the fuzz keeps looking for new ones;
when one of those xfails starts passing, put its inputs back.
"""

from __future__ import annotations

import enum
import operator
import time
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from tests_support import FakeClock, new_region_name

import shmkv
from shmkv.check import check_region

ARENA_BYTES = 2 << 20
LOCK_TIMEOUT_S = 0.5  # single process: a lock still held after a call is a bug, fail fast
MAX_OPS = 40
CLOCK_STEPS_S = [0.001, 0.5, 1, 60, 3600]
SENTINEL_COLLECTION = "sentinels"
SENTINEL_TTL_S = 10**7  # far beyond what MAX_OPS clock steps can reach
# key -> (value as passed to set, ttl_s, the bytes get() must return)
SENTINELS: dict[Any, tuple[Any, float | None, bytes]] = {
    b"\xffsentinel\x00bytes": (b"\x00\x01payload\xff", None, b"\x00\x01payload\xff"),
    "\U0010fffdsentinel-str": ("välue \0 ✓", None, "välue \0 ✓".encode()),
    b"\xffsentinel\x00numpy": (np.arange(16, dtype=np.uint16),
                               None, np.arange(16, dtype=np.uint16).tobytes()),
    b"\xffsentinel\x00ttl": (b"t" * 100, SENTINEL_TTL_S, b"t" * 100),
    b"\xffsentinel\x00big": (b"B" * 70_000, None, b"B" * 70_000),  # beyond the in-place limit
}
SENTINEL_IN_COLLECTION = (b"\xffsentinel\x00coll", b"in a collection")

# Inputs kept out of the fuzz because a strict xfail here documents what they break:
#  * maintain(n) does work proportional to n, without a cap: a huge n never returns, so n is
#    kept at or under KNOWN_BUG_MAINTAIN_LIMIT;
#  * a plain bytes subclass as a value raises AttributeError, so none is generated (numpy's
#    np.bytes_ is, and works);
#  * str with lone surrogates raises a bare UnicodeEncodeError; hypothesis' text() leaves
#    surrogates out.
# Object-dtype arrays are generated: storing them succeeds (their xfail says it should not).
KNOWN_BUG_MAINTAIN_LIMIT = 10**6


# --- arguments of every kind -----------------------------------------------------------
class Opaque:
    def __repr__(self) -> str:
        return "<Opaque>"


class Color(enum.IntEnum):
    RED = 5


class Label(str):
    pass


class Buffer(bytearray):
    pass


def _released_memoryview(data: bytes) -> memoryview:
    mv = memoryview(data)
    mv.release()
    return mv


def _object_array(items: list) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


# Hypothesis does not draw again from a finite choice it has tried out, so every kind below
# carries a payload drawn afresh: that keeps each kind coming back all along a long run.
SIZES = [0, 1, 4095, 4096, 4097, 5000, 65_535, 65_536, 65_537, 300_000, ARENA_BYTES,
         ARENA_BYTES + 1]
INTS = st.one_of(
    st.integers(),
    st.integers(-10, 10),
    st.sampled_from([0, -1, 1, 2**31, 2**32, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1,
                     2**64, 2**64 + 1, 10**100, -(10**100)]),
)
FLOATS = st.one_of(
    st.floats(),  # nan, inf, -0.0 and subnormals included
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 0.0, 1e300, -1e300,
                     5e-324, 1e-9, 0.25, 1.5, 3600.0, 315_360_000.0, 315_360_000.5]),
)
TEXT = st.one_of(
    st.text(max_size=20),  # hypothesis leaves out lone surrogates by default
    st.text(alphabet=st.sampled_from(["\0", "a", "é", "\U0001f600", "/", " "]), max_size=12),
    st.sampled_from(["", "\0", "0", "-1", "9223372036854775807", "9223372036854775808",
                     "a" * 4096, "é" * 2048, "é" * 2049]),
    st.builds(lambda ch, n: ch * n, st.characters(), st.sampled_from(SIZES[:8])),
)
BYTES = st.one_of(
    st.binary(max_size=24),
    st.sampled_from([b"", b"\0", b"0", b"-5", b"\xff\xfe", b"x" * 5000, b"k" * 4096]),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=1), st.sampled_from(SIZES)),
)
SMALL_ARRAYS = hnp.arrays(hnp.scalar_dtypes(),
                          hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
NUMPY = st.one_of(
    SMALL_ARRAYS,
    SMALL_ARRAYS.map(lambda a: a[::2] if a.ndim else a),  # non-contiguous
    SMALL_ARRAYS.map(lambda a: a.T),  # Fortran order when 2-D or more
    hnp.arrays(np.uint8, st.integers(0, 4096)).map(lambda a: a[::3]),
    hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2)),  # 2-D, C order
    hnp.scalar_dtypes().flatmap(lambda dtype: hnp.arrays(dtype, ())).map(lambda a: a[()]),
    # ^ numpy scalars: np.float64 is a float, np.int64 is not an int, np.bytes_ is bytes
    st.lists(st.one_of(st.integers(), st.text(max_size=3), st.none()), max_size=4)
    .map(_object_array),  # object dtype: a buffer of PyObject pointers
    st.lists(st.tuples(st.integers(-(2**31), 2**31 - 1), st.floats()), max_size=3)
    .map(lambda rows: np.array(rows, dtype=[("a", "<i4"), ("b", "<f8")])),  # structured
)
MEMORYVIEWS = st.one_of(
    BYTES.map(memoryview),
    BYTES.map(lambda b: memoryview(bytearray(b))[::2]),  # non-contiguous
    st.binary(max_size=64).map(lambda b: memoryview(b[: len(b) // 8 * 8]).cast("Q")),
    st.binary(min_size=8, max_size=8).map(lambda b: memoryview(b).cast("Q", shape=[])),  # 0-d
    SMALL_ARRAYS.filter(lambda a: a.dtype.kind not in "Mm").map(memoryview),
    st.binary(max_size=8).map(_released_memoryview),
)
# Subclasses of the accepted types (no plain bytes subclass: see KNOWN_BUG_* above).
SUBCLASSES = st.one_of(
    st.text(max_size=8).map(Label),
    BYTES.map(Buffer),
    st.binary(max_size=8).map(np.bytes_),
    st.text(max_size=8).map(np.str_),
    st.floats().map(np.float64),
    st.integers(-(2**63), 2**63 - 1).map(np.int64),
    st.just(Color.RED),
)
OBJECTS = st.one_of(
    st.builds(object),
    st.builds(Opaque),
    st.sampled_from([Ellipsis, int, frozenset(), range(3)]),
    st.complex_numbers(),
    st.decimals(),  # includes NaN and infinities
    st.fractions(),
    st.sets(st.integers(), max_size=2),
    st.tuples(st.integers(), st.binary(max_size=2)),
    st.functions(),
)
BUFFERS = st.one_of(BYTES, BYTES.map(bytearray), MEMORYVIEWS, NUMPY)
WEIRD = st.one_of(
    st.none(),
    st.booleans(),
    INTS,
    FLOATS,
    st.lists(st.one_of(st.integers(), st.binary(max_size=4)), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    OBJECTS,
    SUBCLASSES,
)
ANY = st.one_of(WEIRD, TEXT, BUFFERS)
OMIT = object()  # "leave this optional argument out"
# Each argument has a usual strategy (values the method accepts, mostly) and an odd one
# (anything at all). A call gets one odd argument, or none, or now and then only odd ones: so
# that it usually gets past its other arguments to the one that is odd.
DECIMALS = st.integers(-(10**20), 10**20).map(str)
USUAL_VALUES = st.one_of(st.binary(max_size=64), st.text(max_size=20), DECIMALS,
                         DECIMALS.map(str.encode))
# values are where buffer handling can go wrong: odd buffers and subclasses get extra weight
ODD_VALUES = st.one_of(BUFFERS, MEMORYVIEWS, NUMPY, SUBCLASSES, SUBCLASSES, TEXT, ANY)
USUAL_TTLS = st.one_of(st.just(OMIT), st.none(), st.sampled_from([0.5, 1, 30, 3600]))
ODD_TTLS = st.one_of(FLOATS, INTS, ANY)
USUAL_DELTAS = st.one_of(st.just(OMIT), st.integers(-5, 5))
ODD_DELTAS = st.one_of(INTS, ANY)
COLLECTION_POOL = ["a", "b", "users", "é" * 20, "x" * 40]
ODD_COLLECTION_NAMES = st.one_of(TEXT, ANY)
USUAL_DEFAULTS = st.one_of(st.just(OMIT), st.none(), st.just(b"default"))


def _is_sentinel_collection(name: object) -> bool:
    return isinstance(name, str) and name == SENTINEL_COLLECTION


def _bounded_work(n: object) -> bool:
    try:
        return operator.index(n) <= KNOWN_BUG_MAINTAIN_LIMIT  # type: ignore[arg-type]
    except Exception:
        return True  # not an integer: maintain() must refuse it


USUAL_MAX_SLOTS = st.one_of(st.just(OMIT), st.integers(-10, 5000))
ODD_MAX_SLOTS = st.one_of(INTS, ANY).filter(_bounded_work)


_PLAIN = (type(None), bool, int, float, str, bytes, bytearray, list, dict)


def _short(value: object) -> str:
    text = repr(value)
    if isinstance(value, memoryview):
        try:
            text = f"memoryview(format={value.format!r}, shape={value.shape}, " \
                   f"c_contiguous={value.c_contiguous})"
        except ValueError:
            text = "memoryview(released)"
    elif type(value) not in _PLAIN and type(value).__repr__ in {r.__repr__ for r in _PLAIN}:
        if not text.startswith(type(value).__qualname__):  # a subclass that repr()s as its base
            text = f"{type(value).__qualname__}({text})"
    return text if len(text) <= 80 else f"{text[:60]}...<{len(text)} chars>"


# --- bugs found while writing the fuzz ---------------------------------------------
def test_a_bytes_subclass_value_is_stored_like_bytes(cache: shmkv.Cache) -> None:
    class Blob(bytes):
        pass

    cache.set("k", Blob(b"payload"))
    assert cache.get("k") == b"payload"


def test_an_object_dtype_array_is_refused_not_stored_as_pointers(cache: shmkv.Cache) -> None:
    with pytest.raises(TypeError):
        cache.set("k", np.array([object(), "a", None], dtype=object))
    assert "k" not in cache


@pytest.mark.parametrize("call", ["key", "value", "collection"])
def test_text_with_lone_surrogates_is_refused_with_a_clear_error(cache: shmkv.Cache,
                                                                  call: str) -> None:
    cache.set("kept", b"v")
    do = {"key": lambda: cache.set("bad\udc80", b"v"),
          "value": lambda: cache.set("k", "bad\ud800"),
          "collection": lambda: cache.collection("bad\udfff")}[call]
    with pytest.raises((TypeError, ValueError)) as info:
        do()
    assert cache.get("kept") == b"v" and check_region(cache) == []
    assert not isinstance(info.value, UnicodeError), f"bare codec error: {info.value}"


def test_maintain_with_a_huge_max_slots_does_at_most_one_pass(cache: shmkv.Cache) -> None:
    cache.set("k", b"v", ttl_s=1)
    for huge in (10**7, 2**62):  # far over the index: one sweep of it at most
        assert cache.maintain(huge)["slots_scanned"] == cache.stats()["index_slots"]
    assert cache.get("k") == b"v"


# --- the test ----------------------------------------------------------------------------
class Fuzz:
    """One example: a fresh region, sentinels, then random calls on random handles."""

    def __init__(self, data: st.DataObject, root: shmkv.Cache, clock: FakeClock) -> None:
        self.data = data
        self.root = root
        self.clock = clock
        self.handles: list[shmkv.Cache] = [root]
        self.keys: list[Any] = [b"k", "k", b"", "0"]  # keys worth hitting again
        self.versions: list[int] = [0]
        self.root_cleared = False
        self.odd: int | str | None = None  # which argument of the call is odd (1-based)
        self.position = 0

    def draw(self, strategy: st.SearchStrategy) -> Any:
        return self.data.draw(strategy)

    def arg(self, usual: st.SearchStrategy, odd: st.SearchStrategy) -> Any:
        """The next argument of the call being built: odd if it is the odd one's turn."""
        self.position += 1
        return self.draw(odd if self.odd in (self.position, "all") else usual)

    def key(self) -> Any:
        # by index: sampled_from() would try to hash the keys, and a writable memoryview
        # refuses to be hashed
        keys = self.keys
        again = st.integers(0, len(keys) - 1).map(lambda i: keys[i])
        return self.arg(st.one_of(again, st.text(max_size=12), st.binary(max_size=12)),
                        st.one_of(TEXT, BYTES, ANY))

    def collection_name(self, allow_sentinels: bool = False) -> Any:
        name = self.arg(st.sampled_from(COLLECTION_POOL), ODD_COLLECTION_NAMES)
        if not allow_sentinels and _is_sentinel_collection(name):
            name = COLLECTION_POOL[0]  # leave the sentinels' collection alone
        return name

    def step(self) -> None:
        op = self.draw(st.sampled_from([
            "get", "set", "set", "delete", "incr", "cas", "get_with_version", "ttl", "expire",
            "persist", "contains", "getitem", "setitem", "setitem", "delitem", "collection",
            "rename_collection", "drop_collection", "clear", "stats", "len", "iter",
            "maintain", "advance_clock",
        ]))
        if op == "advance_clock":
            seconds = self.draw(st.sampled_from(CLOCK_STEPS_S))
            note(f"clock.advance({seconds})")
            self.clock.advance(seconds)
            return
        h_index = self.draw(st.integers(0, len(self.handles) - 1))
        h = self.handles[h_index]
        self.odd, self.position = self.draw(st.sampled_from([1, 2, 3, 4, None, "all"])), 0
        args: tuple[Any, ...]
        if op == "get":
            args = (self.key(), self.arg(USUAL_DEFAULTS, ANY))
            call = h.get
        elif op in ("set", "cas"):
            args = (self.key(), self.arg(USUAL_VALUES, ODD_VALUES))
            if op == "cas":
                args += (self.arg(st.sampled_from(self.versions), ANY),)
            args += (self.arg(USUAL_TTLS, ODD_TTLS),)
            call = getattr(h, op)
        elif op == "incr":
            args = (self.key(), self.arg(USUAL_DELTAS, ODD_DELTAS))
            call = h.incr
        elif op == "expire":
            args = (self.key(), self.arg(USUAL_TTLS.filter(lambda t: t is not OMIT), ODD_TTLS))
            call = h.expire
        elif op in ("delete", "get_with_version", "ttl", "persist"):
            args = (self.key(),)
            call = getattr(h, op)
        elif op in ("contains", "getitem", "delitem"):  # key in h, h[key], del h[key]
            args = (self.key(),)
            call = lambda key: getattr(operator, op)(h, key)  # noqa: E731
        elif op == "setitem":  # h[key] = value
            args = (self.key(), self.arg(USUAL_VALUES, ODD_VALUES))
            call = lambda key, value: operator.setitem(h, key, value)  # noqa: E731
        elif op in ("collection", "drop_collection"):
            args = (self.collection_name(),)
            call = getattr(h, op)
        elif op == "rename_collection":
            args = (self.collection_name(), self.collection_name(allow_sentinels=True))
            call = h.rename_collection
        elif op == "maintain":
            args = (self.arg(USUAL_MAX_SLOTS, ODD_MAX_SLOTS),)
            call = h.maintain
        elif op == "iter":
            args = ()
            call = lambda: list(h)  # noqa: E731
        elif op == "len":
            args = ()
            call = lambda: len(h)  # noqa: E731
        else:  # clear, stats
            args = ()
            call = getattr(h, op)
        args = tuple(a for a in args if a is not OMIT)  # optional arguments come last
        shown = f"handles[{h_index}].{op}({', '.join(_short(a) for a in args)})"
        note(shown)
        try:
            result = call(*args)
        except Exception as exc:  # noqa: BLE001 - classifying every exception is the point
            self.check_exception(op, shown, exc)
            return
        note(f"  -> {_short(result)}")
        self.after_success(op, args, result, h_index)

    def check_exception(self, op: str, shown: str, exc: Exception) -> None:
        note(f"  -> raised {type(exc).__name__}: {exc}")
        if isinstance(exc, shmkv.LockTimeout):
            raise AssertionError(f"{shown} timed out on a lock in a single-process test: an "
                                 f"earlier call left it held ({exc})") from exc
        if isinstance(exc, shmkv.CacheClosed):
            raise AssertionError(f"{shown} raised CacheClosed, but nothing closed the handle"
                                 ) from exc
        if isinstance(exc, shmkv.ShmKVError):
            return
        if type(exc) in (TypeError, ValueError):
            return
        if type(exc) is KeyError and op in ("getitem", "delitem"):
            return
        raise AssertionError(
            f"{shown} raised {type(exc).__module__}.{type(exc).__qualname__}: {exc!s:.300}; "
            "only ShmKVError, TypeError, ValueError (and KeyError from [] and del) are "
            "documented"
        ) from exc

    def after_success(self, op: str, args: tuple[Any, ...], result: Any, h_index: int) -> None:
        if op in ("set", "setitem", "incr") and len(self.keys) < 32:
            self.keys.append(args[0])
        elif op == "get_with_version" and result is not None:
            self.versions.append(result[1])
        elif op == "collection":
            self.handles.append(result)
        elif op == "clear" and h_index == 0:
            self.root_cleared = True


def _write_sentinels(root: shmkv.Cache) -> shmkv.Cache:
    for key, (value, ttl, _) in SENTINELS.items():
        root.set(key, value, ttl_s=ttl)
    coll = root.collection(SENTINEL_COLLECTION)
    coll.set(*SENTINEL_IN_COLLECTION)
    return coll


def _check_sentinels(fuzz: Fuzz, coll: shmkv.Cache) -> None:
    evicted = fuzz.root.stats()["evictions"] > 0
    stored = [(fuzz.root, key, want, fuzz.root_cleared) for key, (_, _, want) in SENTINELS.items()]
    stored.append((coll, SENTINEL_IN_COLLECTION[0], SENTINEL_IN_COLLECTION[1], False))
    for handle, key, want, cleared in stored:
        got = handle.get(key)
        if got is None and (evicted or cleared):
            continue  # removed on purpose: eviction, or clear() of its collection
        assert got == want, f"sentinel {key!r} holds {_short(got)}, expected {_short(want)}"


# Kept last: pytest reports a failure of a session fixture's teardown (the check that no
# region was left behind) as one more xfail when the last test of a run is a strict xfail.
@settings(max_examples=600, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(data=st.data())
def test_random_calls_raise_only_documented_errors_and_keep_the_region_whole(data) -> None:
    clock = FakeClock()
    name = new_region_name()
    root = shmkv.Cache.create(name, arena_bytes=ARENA_BYTES, clock=clock,
                              lock_timeout_s=LOCK_TIMEOUT_S)
    try:
        coll = _write_sentinels(root)
        fuzz = Fuzz(data, root, clock)
        for _ in range(data.draw(st.integers(1, MAX_OPS), label="n_ops")):
            fuzz.step()
        assert check_region(root) == []
        _check_sentinels(fuzz, coll)
        # Every lock must be free again: these take the arena lock and every stripe lock.
        root.maintain(64)
        root.stats()
        root.clear()
        coll.clear()
        assert check_region(root) == []
    finally:
        if not root.closed:
            root.close()
        shmkv.Cache.unlink(name)
