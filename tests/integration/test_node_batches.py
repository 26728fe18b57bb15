"""Batches of requests in one message (shmkv.broker.batches) against a real node: each request
answered on its own in one reply batch, malformed and oversize batches answered with an error
while the node goes on serving."""

from __future__ import annotations

import struct

import pytest
import zmq
from node_process import dealer, running_node

from shmkv.broker import batches, protocol
from shmkv.broker.protocol import PROTOCOL_TAG
from shmkv.clients import RemoteCache

WAIT_S = 20


def request(request_id: int, op: str, frames: list[bytes], **fields: object) -> list[bytes]:
    return protocol.encode_request(request_id, op, fields, frames)


def replies_to(sock: zmq.Socket) -> list[protocol.Reply]:
    """The replies of the next message: a reply batch's entries, or a message's one reply."""
    assert sock.poll(WAIT_S * 1000), "no reply from the node"
    frames = sock.recv_multipart()
    if batches.is_batch(frames[0], batches.REPLY_FORM):
        return [protocol.decode_reply(e) for e in batches.decode(frames, batches.REPLY_FORM)]
    return [protocol.decode_reply(frames)]


@pytest.mark.multiprocess
def test_each_request_of_a_batch_gets_its_own_reply_in_one_message_in_order(
        region_name) -> None:
    with running_node(region_name) as node, dealer(node.endpoint) as sock:
        ping = request(1, "ping", [])
        assert replies_to(_sent(sock, ping))[0].result["limits"]["max_batch_requests"] == \
            protocol.MAX_BATCH_REQUESTS
        sock.send_multipart(batches.encode(batches.REQUEST_FORM, [
            request(10, "set", [b"n", b"not a number"]),
            request(11, "incr", [b"n"]),                    # fails: NotAnInteger
            [PROTOCOL_TAG + b'{"id": 12, "op": "nope"}'],     # fails: unknown command
            [PROTOCOL_TAG + b"\x01\xff"],                     # fails: its id unreadable
            request(14, "get", [b"n"]),
            request(15, "get_many", protocol.pack([b"n", b"absent"])),
            request(16, "get", [b"absent"]),
        ]))
        replies = replies_to(sock)
        assert [(r.id, r.error) for r in replies] == [
            (10, None), (11, "NotAnInteger"), (12, "ProtocolError"), (None, "ProtocolError"),
            (14, None), (15, None), (16, None)]
        assert [bytes(f) for f in replies[4].frames] == [b"not a number"]
        assert replies[5].result == [True, False]
        assert (replies[6].result, replies[6].frames) == (False, [])


@pytest.mark.multiprocess
@pytest.mark.parametrize("frames", [
    [PROTOCOL_TAG + bytes((batches.REQUEST_FORM,)) + struct.pack("<I", 1)],
    [PROTOCOL_TAG + bytes((batches.REQUEST_FORM,)) + struct.pack("<I", 1), b""],
    [PROTOCOL_TAG + bytes((batches.REQUEST_FORM,)) + struct.pack("<IBI", 1, 0, 1) + b"x",
     b"left over"],
    [PROTOCOL_TAG + bytes((batches.REPLY_FORM,)) + struct.pack("<I", 0), b""],
], ids=["one-frame", "count-past-table", "payload-left-over", "a-reply-batch"])
def test_a_malformed_batch_gets_an_error_reply_and_the_node_goes_on(region_name,
                                                                   frames) -> None:
    with running_node(region_name) as node, dealer(node.endpoint) as sock:
        (reply,) = replies_to(_sent(sock, frames))
        assert (reply.id, reply.error) == (None, "ProtocolError")
        with RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:
            remote.set("k", b"v")
            assert remote.get("k") == b"v"


@pytest.mark.multiprocess
def test_a_batch_of_more_requests_than_the_limit_is_refused(region_name) -> None:
    over = protocol.MAX_BATCH_REQUESTS + 1
    table = PROTOCOL_TAG + bytes((batches.REQUEST_FORM,)) + struct.pack("<I", over) + \
        (struct.pack("<IB", 0, 0) * over)
    with running_node(region_name) as node, dealer(node.endpoint) as sock:
        (reply,) = replies_to(_sent(sock, [table, b""]))
        assert reply.error == "RequestTooLarge" and "max_batch_requests" in reply.message
        (reply,) = replies_to(_sent(sock, request(2, "ping", [])))
        assert reply.ok


@pytest.mark.multiprocess
def test_a_batch_past_the_reply_limit_is_answered_too_large_for_the_rest(region_name) -> None:
    # max_reply_bytes is the arena plus 1 MiB: three 1.5 MiB values pass it with 4 MiB
    value = bytes(3 << 19)
    with running_node(region_name, "--arena-bytes", "4M") as node, \
            RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:
        remote.set("big", value)
        with remote.pipeline() as p:
            gets = [p.get("big") for _ in range(5)]
        outcomes = []
        for get in gets:
            try:
                outcomes.append(get.result() == value)
            except protocol.errors.RequestTooLarge as exc:
                assert "max_reply_bytes" in str(exc)
                outcomes.append("too large")
        assert outcomes == [True] * 4 + ["too large"]  # 6 MiB after the 4th: over 5 MiB
        assert remote.get("big") == value


def _sent(sock: zmq.Socket, frames: list[bytes]) -> zmq.Socket:
    sock.send_multipart(frames)
    return sock


@pytest.mark.multiprocess
def test_get_many_gives_the_present_keys_as_given_in_their_order(region_name) -> None:
    with running_node(region_name) as node, \
            RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:
        remote.set_many({b"b": b"2", "a": b"1", b"c": b"3"})
        found = remote.get_many(["c", b"missing", b"a", "b", "c", "gone"])
        assert list(found.items()) == [("c", b"3"), (b"a", b"1"), ("b", b"2")]
        assert remote.get_many([b"missing"]) == {}
        assert remote.get_many([]) == {}
