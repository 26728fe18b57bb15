"""The compiled ZeroMQ paths, on real sockets. The door's plain gets and get_manys
(broker/compiled_door.py, shmkv/_core_src/zmqdoor.c): those waiting are answered in C as the
Python path (dispatch.py) would answer them, and the first message of any other kind is handed
back whole, its frames intact, for the Python path to run. A client's round trip (zmqcall.c):
sent, and the reply read, its wait ended by a timeout or a signal handler's exception."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

import shmkv
from shmkv import backend
from shmkv.broker import compact, compiled_door, protocol
from shmkv.broker.dispatch import Dispatcher
from shmkv.broker.metrics import LATENCY_BUCKETS_S, Metrics
from shmkv.broker.router import RECEIVE_HWM, SEND_HWM
from shmkv.broker.zerocopy import ZeroCopy

pytestmark = pytest.mark.skipif(backend.PlainGets is None, reason="the compiled engine only")
TAG = protocol.PROTOCOL_TAG


class Door:
    """A ROUTER set up as the node's, a DEALER connected to it, and the compiled plain gets
    (and get_manys)."""

    def __init__(self, handle: shmkv.Cache, name: str, zero_copy: ZeroCopy,
                 max_reply_bytes: int | None = None) -> None:
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.dealer = self.context.socket(zmq.DEALER)
        for sock in (self.router, self.dealer):
            sock.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.router.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # inproc: a message sent is in the ROUTER's pipe when send returns (no I/O thread in
        # between), so every message a test sends is there to read, with no waiting
        self.router.bind(f"inproc://{name}")
        self.dealer.connect(f"inproc://{name}")
        self.metrics = Metrics()
        self.gets = compiled_door.plain_gets(handle, self.router, zero_copy, self.metrics,
                                             max_reply_bytes)
        assert self.gets is not None

    def send(self, *messages: list[bytes]) -> None:
        for message in messages:
            self.dealer.send_multipart(message)

    def reply(self) -> list[bytes]:
        return self.dealer.recv_multipart(zmq.NOBLOCK)  # sent already, as send's

    def close(self) -> None:
        self.gets = None  # before the socket
        self.router.close()
        self.dealer.close()
        self.context.term()


@pytest.fixture
def handle(region_name: str) -> Iterator[shmkv.Cache]:
    shmkv.Cache.create(region_name, arena_bytes=4 << 20).close()
    with shmkv.Cache.open(region_name) as c:
        yield c


@pytest.fixture
def door(handle: shmkv.Cache, region_name: str) -> Iterator[Door]:
    d = Door(handle, region_name, ZeroCopy(0))
    try:
        yield d
    finally:
        d.close()


def plain_get(request_id: int, key: bytes) -> list[bytes]:
    head = compact.request_header(request_id, "get", {"timeout_ms": 1000})
    assert head is not None and head.startswith(compact.PLAIN_GET)
    return [TAG + head, key]


def result_of(reply: list[bytes]) -> tuple[int, Any, list[bytes]]:
    request_id, found = compact.reply_result(reply[0], len(TAG))
    return request_id, found, reply[1:]


def test_plain_gets_are_answered_with_their_ids_values_and_misses(
        door: Door, handle: shmkv.Cache) -> None:
    handle.set(b"k", b"v" * 100)
    door.send(plain_get(7, b"k"), plain_get(8, b"absent"))
    assert door.gets.serve(64) == (2, None)
    assert result_of(door.reply()) == (7, True, [b"v" * 100])
    assert result_of(door.reply()) == (8, False, [])
    assert handle.stats()["hits"] == 1 and handle.stats()["misses"] == 1


def test_the_gets_answered_are_counted_in_the_metrics_with_their_latency(door: Door,
                                                                         handle: shmkv.Cache
                                                                         ) -> None:
    door.send(plain_get(1, b"a"), plain_get(2, b"b"))
    assert door.gets.serve(64)[0] == 2
    answered, per_bucket, sum_s = door.gets.counts(0)
    assert answered == 2 and sum(per_bucket) == 2 and sum_s > 0
    assert len(per_bucket) == len(LATENCY_BUCKETS_S) + 1
    families = {m.name: m for m in door.metrics.registry.collect()}
    counted = {tuple(s.labels.values()): s.value for s in families["shmkv_requests"].samples
               if s.name == "shmkv_requests_total"}
    assert counted == {("get", "ok"): 2}


def test_another_request_is_handed_back_whole_after_the_gets_before_it(
        door: Door, handle: shmkv.Cache) -> None:
    handle.set(b"k", b"1")
    big = bytes(range(256)) * 100  # past the size handed back as bytes: a Frame, no copy
    set_head = compact.request_header(3, "set", {"timeout_ms": 1000})
    door.send(plain_get(1, b"k"), [TAG + set_head, b"key", big], plain_get(2, b"k"))
    answered, (routing_id, frames, dropped) = door.gets.serve(64)
    assert answered == 1 and dropped == 0 and type(routing_id) is bytes
    assert frames[:2] == [TAG + set_head, b"key"]
    assert type(frames[2]) is not bytes and bytes(memoryview(frames[2])) == big
    assert not memoryview(frames[2]).readonly and len(frames[2]) == len(big)  # as zmq.Frame's
    assert door.gets.serve(64) == (1, None)  # the get after it, once Python has run it
    assert [result_of(door.reply())[0] for _ in range(2)] == [1, 2]


def test_serve_stops_at_its_budget_and_answers_the_rest_next_time(door: Door) -> None:
    door.send(*(plain_get(i, b"k") for i in range(3)))
    assert door.gets.serve(2) == (2, None)
    assert door.gets.serve(64) == (1, None)
    assert door.gets.serve(64) == (0, None)  # none waits: no blocking


def test_a_message_past_max_frames_is_handed_back_with_its_first_frames_and_the_count(
        door: Door) -> None:
    door.send([b"x"] * (protocol.MAX_FRAMES + 4))
    answered, (_, frames, dropped) = door.gets.serve(64)
    assert answered == 0 and frames == [b"x"] * protocol.MAX_FRAMES and dropped == 4


@pytest.mark.parametrize("message", [
    [TAG + compact.request_header(1, "get", {"timeout_ms": 1, "coll": "c"}), b"k"],  # a coll
    [TAG + compact.request_header(1, "get", {"timeout_ms": 1}), b"k" * 5000],  # key too long
    [TAG + compact.request_header(1, "get", {"timeout_ms": 1}), b"k", b"more"],
    [TAG + compact.request_header(1, "get", {"timeout_ms": 1})],
    [b"{\"id\": 1, \"op\": \"get\"}", b"k"],
])
def test_what_is_not_a_plain_get_the_c_path_can_answer_is_handed_back_untouched(
        door: Door, handle: shmkv.Cache, message: list[bytes]) -> None:
    door.send(message)
    answered, (_, frames, dropped) = door.gets.serve(64)
    assert answered == 0 and dropped == 0 and [bytes(f) for f in frames] == message
    assert handle.stats()["hits"] == 0 and handle.stats()["misses"] == 0


def test_a_value_lent_from_a_pin_is_left_to_python_and_its_hit_not_counted_twice(
        handle: shmkv.Cache, region_name: str) -> None:
    d = Door(handle, region_name, ZeroCopy(1024))
    try:
        handle.set(b"small", b"s")
        handle.set(b"large", b"L" * 4096)
        d.send(plain_get(1, b"small"), plain_get(2, b"large"))
        answered, (_, frames, _) = d.gets.serve(64)
        assert answered == 1 and frames == plain_get(2, b"large")
        assert handle.stats()["hits"] == 1  # the large one: counted when Python reads it
    finally:
        d.close()


# --- the wait: the loop's poll, in C while only the ROUTER has something ----------------------
@pytest.fixture
def other_fd() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A socket pair: the first's descriptor is another thing the loop polls."""
    pair = socket.socketpair()
    try:
        yield pair
    finally:
        for s in pair:
            s.close()


def test_wait_answers_the_plain_gets_that_come_while_nothing_else_is_ready(
        door: Door, handle: shmkv.Cache, other_fd: tuple[socket.socket, socket.socket]) -> None:
    handle.set(b"k", b"v")
    door.send(*(plain_get(i, b"k") for i in range(3)))
    items = [(door.router, zmq.POLLIN), (other_fd[0].fileno(), zmq.POLLIN)]
    assert door.gets.wait(items, 0, 64) == (3, [], None)  # then the time was up
    assert [result_of(door.reply())[:2] for _ in range(3)] == [(i, True) for i in range(3)]


def test_wait_returns_what_else_is_ready_as_the_poller_says_it(
        door: Door, other_fd: tuple[socket.socket, socket.socket]) -> None:
    other_fd[1].send(b"x")
    fd = other_fd[0].fileno()
    items = [(door.router, zmq.POLLIN), (fd, zmq.POLLIN)]
    assert door.gets.wait(items, 10_000, 64) == (0, [(fd, zmq.POLLIN)], None)
    door.send(plain_get(1, b"k"))  # both ready: nothing answered, both reported
    assert door.gets.wait(items, 10_000, 64) == (0, [(door.router, zmq.POLLIN),
                                                     (fd, zmq.POLLIN)], None)


def test_wait_hands_back_the_first_other_request_and_reports_the_router_ready(
        door: Door) -> None:
    set_head = compact.request_header(3, "set", {"timeout_ms": 1000})
    door.send(plain_get(1, b"k"), [TAG + set_head, b"key", b"v"], plain_get(2, b"k"))
    answered, ready, (_, frames, _) = door.gets.wait([(door.router, zmq.POLLIN)], 10_000, 64)
    assert answered == 1 and frames == [TAG + set_head, b"key", b"v"]
    assert ready == [(door.router, zmq.POLLIN)]  # the get behind it waits: Python reads on
    assert door.gets.wait([(door.router, zmq.POLLIN)], 10_000, 1) == \
        (1, [(door.router, zmq.POLLIN)], None)  # its budget: one


def test_wait_refuses_what_is_not_a_poller_s_items(door: Door) -> None:
    with pytest.raises(TypeError):
        door.gets.wait([door.router], 0, 64)
    with pytest.raises(TypeError):
        door.gets.wait(((door.router, zmq.POLLIN),), 0, 64)


# --- get_many ----------------------------------------------------------------------------------
def plain_get_many(request_id: int, keys: list[bytes]) -> list[bytes]:
    head = compact.request_header(request_id, "get_many", {"timeout_ms": 1000})
    assert head is not None and head.startswith(compact.PLAIN_GET_MANY)
    return [TAG + head, *protocol.pack(keys)]


def python_reply(handle: shmkv.Cache, message: list[bytes]) -> list[bytes]:
    """What the Python path (dispatch.py) answers to message."""
    dispatcher = Dispatcher(handle, protocol.limits_for(4 << 20))
    request = dispatcher.decode(message)
    return [bytes(f) for f in protocol.encode_reply(dispatcher.attempt(request))]


def test_a_get_many_is_answered_as_the_python_path_answers_it(door: Door,
                                                               handle: shmkv.Cache) -> None:
    handle.set(b"a", b"1" * 300)
    handle.set(b"empty", b"")
    handle.set(b"k" * 4096, b"longest key")
    handle.set(b"", b"the empty key")
    keys = [b"a", b"absent", b"empty", b"a", b"k" * 4096, b""] + [b"x%d" % i for i in range(70)]
    for i in range(0, 70, 3):
        handle.set(b"x%d" % i, bytes([i]) * i)
    door.send(plain_get_many(5, keys))
    assert door.gets.serve(64) == (1, None)
    reply = [bytes(f) for f in door.reply()]
    hits, misses = handle.stats()["hits"], handle.stats()["misses"]
    assert (hits, misses) == (5 + 24, 1 + 46)  # each key read once, as a loop of get
    assert reply == python_reply(handle, plain_get_many(5, keys))
    decoded = protocol.decode_reply(reply)
    assert decoded.id == 5 and decoded.result[:4] == [True, False, True, True]
    assert protocol.unpack_bytes(*decoded.frames)[:3] == [b"1" * 300, b"", b"1" * 300]


def test_the_get_manys_answered_are_counted_apart_from_the_gets(door: Door) -> None:
    door.send(plain_get_many(1, [b"a", b"b"]), plain_get(2, b"a"), plain_get_many(3, [b"c"]))
    assert door.gets.serve(64) == (3, None)
    assert door.gets.counts(0)[0] == 1 and door.gets.counts(1)[0] == 2
    families = {m.name: m for m in door.metrics.registry.collect()}
    counted = {tuple(s.labels.values()): s.value for s in families["shmkv_requests"].samples
               if s.name == "shmkv_requests_total"}
    assert counted == {("get", "ok"): 1, ("get_many", "ok"): 2}
    with pytest.raises(ValueError, match="get_many"):
        door.gets.counts(2)


@pytest.mark.parametrize("message", [
    plain_get_many(1, []),  # no key
    [plain_get_many(1, [b"a", b"b"])[0], b"ab"],  # no length table
    [plain_get_many(1, [b"a"])[0], b"\x01\x00\x00", b"a"],  # a table not of whole u32s
    [plain_get_many(1, [b"a"])[0], b"\x02\x00\x00\x00", b"a"],  # does not add up
    plain_get_many(1, [b"a", b"k" * 4097]),  # a key too long
    plain_get_many(1, [b"a"] * (protocol.MAX_BATCH_KEYS + 1)),  # too many keys
    [TAG + compact.request_header(1, "get_many", {"timeout_ms": 1, "coll": "c"}),
     *protocol.pack([b"a"])],  # a collection
])
def test_what_is_not_a_get_many_the_c_path_can_answer_is_handed_back_untouched(
        door: Door, handle: shmkv.Cache, message: list[bytes]) -> None:
    handle.set(b"a", b"1")
    door.send(message)
    answered, (_, frames, dropped) = door.gets.serve(64)
    assert answered == 0 and dropped == 0 and [bytes(f) for f in frames] == message
    assert handle.stats()["hits"] == 0 and handle.stats()["misses"] == 0


def test_a_get_many_whose_reply_passes_the_limit_is_handed_back_its_reads_uncounted(
        handle: shmkv.Cache, region_name: str) -> None:
    d = Door(handle, region_name, ZeroCopy(0), max_reply_bytes=1000)
    try:
        handle.set(b"a", b"1" * 600)
        keys = [b"absent", b"a", b"a", b"a"]  # the second value passes 1000 bytes
        d.send(plain_get_many(1, [b"a"]), plain_get_many(2, keys))
        answered, (_, frames, _) = d.gets.serve(64)
        assert answered == 1 and frames == plain_get_many(2, keys)
        assert (handle.stats()["hits"], handle.stats()["misses"]) == (1, 0)  # the first's
    finally:
        d.close()


# --- a client's round trip in C (shmkv/_core_src/zmqcall.c) -----------------------------------
@pytest.fixture
def pair(region_name: str) -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    """A DEALER (the client's) connected to a ROUTER over inproc; closed after the test."""
    context = zmq.Context()
    router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    try:
        router.bind(f"inproc://{region_name}")
        dealer.connect(f"inproc://{region_name}")
        dealer.setsockopt(zmq.RCVTIMEO, 10_000)
        yield router, dealer
    finally:
        router.close(linger=0)
        dealer.close(linger=0)
        context.term()


def echo_reply(router: zmq.Socket, *frames: bytes) -> list[bytes]:
    """Read the request waiting (inproc: there once sent) and queue frames as its reply."""
    request = router.recv_multipart(zmq.NOBLOCK)
    router.send_multipart([request[0], *frames])
    return request[1:]


def test_zmq_call_sends_the_frames_and_returns_the_reply_s_frames(
        pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    router, dealer = pair
    large = b"x" * (128 << 10)  # a large frame comes as a Frame, no copy until asked

    def answer() -> None:
        assert router.poll(10_000)
        assert echo_reply(router, b"head", b"v", large) == [b"h", b"k1", b"k2"]

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        reply = backend.zmq_call(dealer, b"h", [b"k1", b"k2"])
    finally:
        thread.join()
    assert reply[:2] == [b"head", b"v"] and type(reply[0]) is bytes
    assert type(reply[2]) is backend.Frame and bytes(reply[2]) == large


def test_zmq_call_returns_none_when_no_reply_comes_within_the_socket_s_timeout(
        pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    router, dealer = pair
    dealer.setsockopt(zmq.RCVTIMEO, 1)
    assert backend.zmq_call(dealer, b"h", ()) is None
    assert router.recv_multipart(zmq.NOBLOCK)[1:] == [b"h"]  # it was sent


def test_a_signal_handler_that_raises_ends_zmq_call_s_wait(
        pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    _, dealer = pair

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)  # the reply never comes: 10 s otherwise
        with pytest.raises(KeyboardInterrupt):
            backend.zmq_call(dealer, b"h", ())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_zmq_call_refuses_what_is_not_bytes_and_a_closed_socket(
        pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    _, dealer = pair
    with pytest.raises(TypeError):
        backend.zmq_call(dealer, b"h", [memoryview(b"k")])
    dealer.close()
    with pytest.raises(ValueError, match="closed"):
        backend.zmq_call(dealer, b"h", ())
