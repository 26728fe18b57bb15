"""The ZeroMQ door's lender (broker/zerocopy.py) in one process: which gets it lends, when
their pins go, and its setting. The sends themselves, with a real node: tests/integration/
test_zero_copy.py."""

from __future__ import annotations

import numpy as np
import pytest
import zmq

import shmkv
from shmkv.broker.dispatch import Dispatcher
from shmkv.broker.protocol import Request
from shmkv.broker.router import send_or_drop
from shmkv.broker.zerocopy import LEND, ZERO_COPY_MIN_BYTES, Lent, ZeroCopy
from shmkv.errors import ShmKVError

MIN_BYTES = 4096


class Tracker:
    """What a lender reads of pyzmq's MessageTracker."""

    def __init__(self) -> None:
        self.done = False


def open_views(c: shmkv.Cache) -> int:
    return int(c.stats()["open_views"])


def test_a_large_value_is_lent_and_its_pin_goes_once_libzmq_is_done(cache) -> None:
    value = bytes(range(256)) * (MIN_BYTES // 128)
    cache.set(b"big", value)
    lender, tracker = ZeroCopy(MIN_BYTES), Tracker()
    hits = cache.stats()["hits"]
    found, [lent] = lender.get(cache, b"big", False)  # type: ignore[misc]
    assert found is True and type(lent) is Lent and lent.mv == value
    assert cache.stats()["hits"] == hits + 1  # counted as a get's would be
    lent.sent(tracker)  # type: ignore[arg-type]
    cache.set(b"big", b"new")  # copy-on-write: the lent bytes stay
    assert lender.drain() == 1 and open_views(cache) == 1 and lent.mv == value
    tracker.done = True
    assert lender.drain() == 0 and open_views(cache) == 0
    assert cache.stats()["retired_blocks"] == 0  # the old block was freed with its pin


def test_a_lent_value_stays_until_its_reply_is_sent_or_dropped(cache) -> None:
    cache.set(b"big", b"v" * MIN_BYTES)
    lender = ZeroCopy(MIN_BYTES)
    _, [first] = lender.get(cache, b"big", False)  # type: ignore[misc]
    lender.get(cache, b"big", False)  # each get drains first: first, not sent yet, stays
    assert first.mv == b"v" * MIN_BYTES and lender.drain() == 2
    router = zmq.Context.instance().socket(zmq.ROUTER)
    try:
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        send_or_drop(router, [b"gone", b"header", first])  # no such client: dropped
    finally:
        router.close(linger=0)
    assert lender.drain() == 1 and open_views(cache) == 1
    lender.close()
    assert open_views(cache) == 0


def test_small_missing_and_array_values_are_read_as_before(cache) -> None:
    cache.set(b"small", b"s" * (MIN_BYTES - 1))
    cache.set_array(b"arr", np.zeros(MIN_BYTES, np.uint8))
    lender = ZeroCopy(MIN_BYTES)
    for key in (b"small", b"absent", b"arr"):  # the copying reads' answers, as dispatch shapes
        value, found = cache.get(key), cache.get_with_version(key)
        assert lender.get(cache, key, False) == ((True, [value]) if value is not None
                                                 else (False, []))
        assert lender.get(cache, key, True) == ((found[1], [found[0]]) if found is not None
                                                else (None, []))
        assert lender.sends == 0
    assert lender.get_array(cache, b"small") is None and lender.get_array(cache, b"x") is None
    assert open_views(cache) == 0


def test_get_with_version_and_get_array_lend_what_the_copying_reads_give(cache) -> None:
    arr = np.arange(MIN_BYTES, dtype=np.float32).reshape(64, -1)
    cache.set(b"big", b"v" * MIN_BYTES)
    cache.set_array(b"arr", arr)
    lender = ZeroCopy(MIN_BYTES)
    version, [lent] = lender.get(cache, b"big", True)  # type: ignore[misc]
    assert (bytes(lent.mv), version) == cache.get_with_version(b"big")
    fields, [data] = lender.get_array(cache, b"arr")  # type: ignore[misc]
    assert fields == {"dtype": "<f4", "shape": [64, MIN_BYTES // 64]}
    assert bytes(data.mv) == arr.tobytes()
    lender.close()
    assert open_views(cache) == 0


def test_the_dispatcher_lends_only_what_the_door_hands_it(cache) -> None:
    cache.set(b"big", b"v" * MIN_BYTES)
    dispatcher, lender = Dispatcher(cache, {"max_reply_bytes": 1 << 30}), ZeroCopy(MIN_BYTES)
    plain = dispatcher.run(Request(1, "get", "", {}, [b"big"], 1 << 30))
    assert plain == (True, [b"v" * MIN_BYTES]) and open_views(cache) == 0
    found, [lent] = dispatcher.run(Request(1, "get", "", {LEND: lender}, [b"big"], 1 << 30))
    assert found is True and type(lent) is Lent and open_views(cache) == 1
    cache.set(b"small", b"s")
    before = cache.stats()
    for key in (b"big", b"small", b"absent"):  # lent, copied, missed: counted as before
        dispatcher.run(Request(1, "get", "", {LEND: lender}, [key], 1 << 30))
    after = cache.stats()
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (2, 1)
    lender.close()


def test_past_max_outstanding_values_a_get_copies(cache) -> None:
    cache.set(b"big", b"v" * MIN_BYTES)
    lender = ZeroCopy(MIN_BYTES, max_outstanding=2)
    for _ in range(2):
        _, [lent] = lender.get(cache, b"big", False)  # type: ignore[misc]
        lent.sent(Tracker())  # type: ignore[arg-type]
    assert lender.get(cache, b"big", False) == (True, [b"v" * MIN_BYTES])  # copied
    assert open_views(cache) == 2 and lender.sends == 2
    lender.close()
    assert open_views(cache) == 0


def test_a_value_lent_when_its_handle_closes_keeps_the_region_until_it_goes(
        region_name) -> None:
    c = shmkv.Cache.create(region_name, arena_bytes=1 << 20)
    c.set(b"big", b"v" * MIN_BYTES)
    lender = ZeroCopy(MIN_BYTES)
    _, [lent] = lender.get(c, b"big", False)  # type: ignore[misc]
    region = c._region
    c.close()  # as the node does before its ZeroMQ context is destroyed
    assert not region.mapping.mm.closed and lent.mv == b"v" * MIN_BYTES
    lender.close()
    assert region.mapping.mm.closed


def test_the_threshold_is_a_setting_of_the_node_environment() -> None:
    assert ZeroCopy.from_environment({}).min_bytes == ZERO_COPY_MIN_BYTES
    assert ZeroCopy.from_environment({"SHMKV_ZERO_COPY_MIN_BYTES": "1048576"}).min_bytes == \
        1 << 20
    off = ZeroCopy.from_environment({"SHMKV_ZERO_COPY_MIN_BYTES": "0"})
    assert not off.ops and not off.min_bytes
    for bad in ("1M", "-1"):
        with pytest.raises(ShmKVError, match="SHMKV_ZERO_COPY_MIN_BYTES"):
            ZeroCopy.from_environment({"SHMKV_ZERO_COPY_MIN_BYTES": bad})
