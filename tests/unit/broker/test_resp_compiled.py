"""_core.resp_serve, the RESP door's compiled path (shmkv/_core_src/resp.c): the plain GET, SET,
INCR, DECR and MGET at the start of what a connection sent are answered in C, and it stops before
the first request it does not take, with nothing of that one done, so that the door's Python
path runs it whole."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pytest
from integration.test_node_limits import stopped_lock_holder

import shmkv
from shmkv import backend
from shmkv.arrays import ARRAY_MAGIC
from shmkv.broker.resp import RequestParser
from shmkv.broker.resp import encode_request as req

pytestmark = pytest.mark.skipif(backend.resp_serve is None, reason="the compiled engine only")
MAX_VALUE_BYTES = 64 << 10


@pytest.fixture
def handle(region_name: str) -> Iterator[shmkv.Cache]:
    """A region on the real clock, opened as the node opens its requests handle: its lock
    wait is short (a busy lock is handed back quickly)."""
    shmkv.Cache.create(region_name, arena_bytes=4 << 20).close()
    with shmkv.Cache.open(region_name, lock_timeout_s=0.01) as c:
        yield c


def serve(c: shmkv.Cache, data: bytes, resp3: bool = False) -> tuple[int, bytes, int, int]:
    pair = c.compiled_pair()
    assert pair is not None
    return backend.resp_serve(*pair, data, resp3, MAX_VALUE_BYTES, ARRAY_MAGIC)  # type: ignore[misc]


def test_plain_gets_sets_incrs_and_decrs_are_answered_in_order_as_redis_words_them(
        handle: shmkv.Cache) -> None:
    data = (req("SET", "k", "v\r\n") + req("get", "k") + req("GET", "none") + req("INCR", "n")
            + req("incr", "n") + req("DeCr", "n") + req("DECR", "m") + req("SET", "k", ""))
    assert serve(handle, data) == (
        len(data), b"+OK\r\n$3\r\nv\r\n\r\n$-1\r\n:1\r\n:2\r\n:1\r\n:-1\r\n+OK\r\n", 8, 6)
    assert handle.get("k") == b"" and handle.get("n") == b"1" and handle.get("m") == b"-1"


def test_a_miss_in_resp3_is_its_null(handle: shmkv.Cache) -> None:
    assert serve(handle, req("GET", "none"), resp3=True)[1] == b"_\r\n"
    assert serve(handle, req("MGET", "none"), resp3=True)[1] == b"*1\r\n_\r\n"


def test_mget_answers_every_key_in_order_and_counts_each_read(handle: shmkv.Cache) -> None:
    handle.set("a", b"1")
    handle.set("b", b"")
    stats = handle.stats()
    data = req("mget", "a", "none", "b", "a")
    assert serve(handle, data) == (
        len(data), b"*4\r\n$1\r\n1\r\n$-1\r\n$0\r\n\r\n$1\r\n1\r\n", 1, 0)
    handle.close()  # its counts go to the region
    with shmkv.Cache.open(handle._region.name) as again:
        after = again.stats()
    assert (after["hits"] - stats["hits"], after["misses"] - stats["misses"]) == (3, 1)


@pytest.mark.parametrize("case", ["array", "large", "reply past its cap"])
def test_an_mget_it_cannot_answer_whole_is_left_to_python_with_no_read_counted(
        handle: shmkv.Cache, case: str) -> None:
    handle.set("a", b"1")
    keys = ["a", "x"]
    if case == "array":
        handle.set_array("x", np.arange(3))
    elif case == "large":
        handle.set("x", b"x" * MAX_VALUE_BYTES)
    else:
        handle.set("x", b"x" * 60_000)
        keys = ["a", *["x"] * 20]  # 1.2 MB
    before = handle._reader.hits, handle._reader.misses
    assert serve(handle, req("MGET", *keys)) == (0, b"", 0, 0)
    assert (handle._reader.hits, handle._reader.misses) == before


def test_a_plain_set_drops_the_keys_ttl_as_redis_does(handle: shmkv.Cache) -> None:
    handle.set("k", b"old", ttl_s=100)
    serve(handle, req("SET", "k", "new"))
    assert handle.ttl("k") is None and handle.get("k") == b"new"


@pytest.mark.parametrize("other", [
    req("SET", "k", "v", "EX", "10"), req("EXISTS", "k"), req("GET", "k", "extra"), req("PING"),
    req("MGET", "k", "k" * 4097), req("MGET", *["k"] * 1001), req("MGET"),
    b"GET k\r\n", req("GET", "k" * 4097), req("GETX", "k"), b"*2\r\n$3\r\nGET\r\n$1\r\nkk\r\n",
    b"*2\r\n$3\r\nGET\r\n$-1\r\n", b"*02\r\n$3\r\nGET\r\n$1\r\nk\r\n",
])
def test_it_stops_before_a_request_it_does_not_take_and_leaves_the_rest(
        handle: shmkv.Cache, other: bytes) -> None:
    first = req("SET", "k", "v")
    data = first + other + req("SET", "after", "x")
    assert serve(handle, data) == (len(first), b"+OK\r\n", 1, 1)
    assert handle.get("after") is None


@pytest.mark.parametrize("cut", [1, 4, 10, 18, 22, 26])
def test_an_incomplete_request_is_left_for_the_parser(handle: shmkv.Cache, cut: int) -> None:
    first, last = req("GET", "k"), req("SET", "key", "value")
    assert serve(handle, first + last[:cut])[0] == len(first)
    assert handle.get("key") is None


def test_a_get_of_an_array_is_left_to_python_and_counted_once_there(
        handle: shmkv.Cache) -> None:
    handle.set_array("a", np.arange(3))
    hits = handle.stats()["hits"]
    assert serve(handle, req("GET", "a")) == (0, b"", 0, 0)
    assert handle.stats()["hits"] == hits


def test_a_value_of_max_value_bytes_or_more_is_left_to_python(handle: shmkv.Cache) -> None:
    handle.set("big", b"x" * MAX_VALUE_BYTES)
    handle.set("small", b"x" * (MAX_VALUE_BYTES - 1))
    taken, replies, _, _ = serve(handle, req("GET", "small") + req("GET", "big"))
    assert taken == len(req("GET", "small")) and replies.endswith(b"x\r\n")


def test_an_incr_of_a_value_that_is_not_an_integer_is_left_to_python_unchanged(
        handle: shmkv.Cache) -> None:
    handle.set("k", b"text")
    assert serve(handle, req("INCR", "k"))[0] == 0
    assert handle.get("k") == b"text"


def test_a_write_that_needs_eviction_is_left_to_python(handle: shmkv.Cache) -> None:
    value = b"v" * 60_000
    data = b"".join(req("SET", f"k{i}", value) for i in range(200))  # 12 MB into 4 MiB
    taken, _, ran, _ = serve(handle, data)
    assert 0 < ran < 200 and taken < len(data)
    assert handle.get(f"k{ran}") is None  # the one it stopped at was not written


@pytest.mark.multiprocess
def test_a_write_whose_lock_stays_busy_is_left_to_python_and_a_read_is_not(
        handle: shmkv.Cache, region_name: str) -> None:
    with stopped_lock_holder(region_name, "held"):
        data = req("GET", "held") + req("SET", "held", "v") + req("GET", "other")
        assert serve(handle, data) == (len(req("GET", "held")), b"$-1\r\n", 1, 0)
    assert handle.get("held") is None


def test_replies_past_the_budget_stop_it_at_a_request_boundary(handle: shmkv.Cache) -> None:
    handle.set("k", b"x" * 60_000)
    one = req("GET", "k")
    taken, replies, ran, _ = serve(handle, one * 100)
    assert 0 < ran < 100 and taken == ran * len(one) and len(replies) >= 1 << 20


@pytest.mark.parametrize("seed", range(20))
def test_mangled_input_never_crashes_it_and_it_takes_only_whole_hot_requests(
        handle: shmkv.Cache, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(1000):
        data = bytearray(b"".join(rng.choice([
            req("GET", "k"), req("SET", "k", rng.randbytes(rng.randrange(20))),
            req("INCR", "n"), req("DECR", "n"), req("MGET", "k", "n"), req("PING"),
            b"GET k\r\n"])
            for _ in range(rng.randrange(1, 6))))
        for _ in range(rng.randrange(4)):  # flip, cut or insert bytes anywhere
            at = rng.randrange(len(data) + 1)
            what = rng.randrange(3)
            if what == 0 and at < len(data):
                data[at] = rng.choice(b"*$\r\n\r\n0123401234-GETSINCRX")
            elif what == 1:
                del data[at:at + rng.randrange(1, 8)]
            else:
                data[at:at] = rng.randbytes(rng.randrange(1, 4))
        taken, _, ran, _ = serve(handle, bytes(data))
        parser = RequestParser()
        requests = parser.parse(bytes(data[:taken])) if taken else []
        assert parser.pending_bytes == 0 and parser.error is None and len(requests) == ran
        assert all(r[0].upper() in (b"GET", b"SET", b"INCR", b"DECR", b"MGET")
                   for r in requests)
