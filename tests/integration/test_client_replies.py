"""How a RemoteCache connection reads a reply: the usual one (a compact ok reply) in one step of
its own, every other form through protocol.decode_reply. Each reply below is sent as raw frames
by a fake node, and what the connection makes of it must be what protocol.decode_reply makes of
the same frames: the same id, result and payload, or the same error. Each is read by a
connection's first call (sent the usual way, after a ping) and by a later one (sent and read by
Connection._call_alone, which hands anything but the reply it expects to the usual way)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

import pytest
import zmq
from fake_node import FakeNode

import shmkv
from shmkv.broker import compact, protocol
from shmkv.clients import RemoteCache, connection
from shmkv.clients.connection import Connection

WAIT_S = 10
TAG = protocol.PROTOCOL_TAG
BIG_VALUE = os.urandom(3 << 20)  # past pyzmq's copy threshold: a message of its own


def compact_reply(result: Any, *payload: bytes) -> Callable[[int], list[bytes]]:
    return lambda request_id: [TAG + compact.reply_header(request_id, result), *payload]


def encoded(make: Callable[[int], protocol.Reply]) -> Callable[[int], list[bytes]]:
    return lambda request_id: protocol.encode_reply(make(request_id))


REPLIES = {
    "a value": compact_reply(True, b"v"),
    "a large value": compact_reply(True, BIG_VALUE),
    "an empty value": compact_reply(True, b""),
    "null": compact_reply(None),
    "false": compact_reply(False),
    "an int": compact_reply(-(1 << 40)),
    "a float": compact_reply(2.5),
    "bools and packed values": compact_reply([True, False, True],
                                             *protocol.pack([b"a", b"c"])),
    "a JSON result": encoded(lambda i: protocol.Reply(i, {"n": [1, 2]}, [b"x"])),
    "an error": encoded(lambda i: protocol.error_reply(i, shmkv.KeyTooLarge("too long"))),
    "an error of a class this side does not know": lambda i: [
        TAG + b'{"id":%d,"ok":false,"error":"NoSuchError","message":"m"}' % i],
    "a compact reply of the wrong length": lambda i: [
        TAG + struct.pack("<BQB", compact.REPLY_FORM, i, 3) + b"\x01\x02"],
    "a compact reply cut short": lambda i: [TAG + bytes((compact.REPLY_FORM,)) + b"\x01"],
    "another version's tag": lambda i: [b"SHMKV/3" + compact.reply_header(i, True), b"v"],
}


def outcome_of(read: Callable[[], protocol.Reply]) -> tuple[Any, ...]:
    """What a reply reads as: its id, result and payload as bytes, or the error raised."""
    try:
        reply = read()
    except Exception as exc:  # the errors are what is compared
        return ("raised", type(exc), str(exc))
    return ("ok", reply.id, reply.result, [bytes(frame) for frame in reply.frames])


def decoded(frames: list[bytes]) -> protocol.Reply:
    """The reply as protocol.decode_reply reads it, raised as a call raises an error reply."""
    reply = protocol.decode_reply(frames)
    if reply.error is not None:
        raise protocol.exception_from(reply)
    return reply


CALLS = ["the first call", "a later call"]


def get_answered(step: Callable[[Any], list[Any]], which: str) -> tuple[object, int]:
    """What a Connection's get returns (or raises) when a fake node answers with step's
    messages, and the id the request carried; the get is its first call, or one after a
    get answered as usual."""
    earlier = [lambda r: [REPLIES["a value"](r.id)]] if which == "a later call" else []
    node = FakeNode([*earlier, step])
    try:
        link = Connection(node.endpoint, WAIT_S, 0, None)
        try:
            if earlier:
                assert link.call("get", {}, [b"k"]).result is True
            got = outcome_of(lambda: link.call("get", {}, [b"k"]))
            assert not link._in_flight  # nothing is left behind either way
        finally:
            link.close()
        return got, node.received[-1][1]
    finally:
        node.close()


@pytest.mark.parametrize("which", CALLS)
@pytest.mark.parametrize("name", REPLIES)
def test_a_connection_reads_a_reply_as_protocol_decode_reply_does(name: str, which: str) -> None:
    got, request_id = get_answered(lambda r: [REPLIES[name](r.id)], which)
    assert got == outcome_of(lambda: decoded(REPLIES[name](request_id)))


@pytest.mark.parametrize("which", CALLS)
@pytest.mark.parametrize("name", ["a value", "null", "an int", "a JSON result", "an error"])
def test_a_reply_to_an_older_request_is_dropped_and_the_next_one_read(name: str,
                                                                      which: str) -> None:
    got, request_id = get_answered(
        lambda r: [REPLIES["a value"](r.id - 1), REPLIES[name](r.id)], which)
    assert got == outcome_of(lambda: decoded(REPLIES[name](request_id)))


def test_a_later_call_of_the_usual_kind_makes_no_request_in_flight(monkeypatch) -> None:
    """What the quick way is for: a get or a set alone, answered as expected, makes none of
    the objects that keep a request in flight (each with its allocations)."""
    made: list[int] = []
    real = connection._Sent

    def counted(*args: Any) -> Any:
        made.append(args[0])
        return real(*args)

    steps = [lambda r: [REPLIES["a value"](r.id)], lambda r: [compact_reply(None)(r.id)],
             lambda r: [REPLIES["a value"](r.id)]]
    with FakeNode(steps) as node, \
            RemoteCache(node.endpoint, timeout_s=WAIT_S, retries=0) as remote:
        assert remote.get("k") == b"v"  # the first: after a ping, the usual way
        monkeypatch.setattr(connection, "_Sent", counted)
        remote.set("k", b"v")
        assert remote.get("k") == b"v"
    assert made == []


@pytest.mark.parametrize("value", [b"v", b"", BIG_VALUE])
def test_get_returns_the_value_of_a_compact_reply_as_bytes(value: bytes) -> None:
    node = FakeNode([lambda r: [compact_reply(True, value)(r.id)]])
    try:
        with RemoteCache(node.endpoint, timeout_s=WAIT_S, retries=0) as remote:
            got = remote.get("k")
    finally:
        node.close()
    assert type(got) is bytes and got == value


def test_a_socket_of_a_context_of_its_own_sends_through_its_own_send() -> None:
    sent_flags: list[int] = []

    class Socket(zmq.Socket):  # as a context with its own socket class (zmq.green's) makes
        def send(self, data: Any, flags: int = 0, copy: bool = True,
                 track: bool = False, **options: Any) -> Any:
            sent_flags.append(int(flags))
            return super().send(data, flags, copy, track, **options)

    class Context(zmq.Context):
        _socket_class = Socket

    context = Context()
    node = FakeNode([lambda r: [compact_reply(True, b"v")(r.id)]])
    try:
        with RemoteCache(node.endpoint, timeout_s=WAIT_S, retries=0,
                         context=context) as remote:
            assert remote.get("k") == b"v"
    finally:
        node.close()
        context.term()
    assert sent_flags == [0, zmq.SNDMORE, 0]  # the ping (its header), then the get
