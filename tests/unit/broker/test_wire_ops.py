"""exists, delete_many and scan on the wire (shmkv.broker.wire_ops): requests encoded as a
client does, run by the node's dispatcher and read back, without sockets; malformed ones
answered with an error reply."""

from __future__ import annotations

import json

import pytest

from shmkv.broker import batches, dispatch, protocol, waits
from shmkv.broker.dispatch import Dispatcher
from shmkv.broker.protocol import PROTOCOL_TAG
from shmkv.clients.commands import scan_reply


def round_trip(d: Dispatcher, op: str, frames, **fields) -> protocol.Reply:
    """A request as the client encodes it, through the node's decode and attempt, and its
    reply as the client decodes it."""
    decoded = d.decode(protocol.encode_request(7, op, fields, frames))
    reply = decoded if isinstance(decoded, protocol.Reply) else d.attempt(decoded)
    return protocol.decode_reply(protocol.encode_reply(reply))


@pytest.fixture
def node(cache) -> Dispatcher:
    return Dispatcher(cache, protocol.limits_for(cache.stats()["arena_bytes"]))


def test_the_new_commands_are_on_the_wire_and_only_get_each_is_model_only() -> None:
    for op in ("exists", "delete_many", "scan"):
        assert op in protocol.REQUEST_FRAMES
    assert set(dispatch.MODEL_ONLY_FRAMES) == {"get_each"}


def test_delete_many_is_a_write_never_resent_and_exists_and_scan_are_resendable() -> None:
    assert "delete_many" in dispatch.WRITE_OPS and "delete_many" not in protocol.RESENDABLE
    assert {"exists", "scan"} <= protocol.RESENDABLE
    assert not {"exists", "scan"} & dispatch.WRITE_OPS


def test_exists_counts_present_keys_over_the_wire_a_key_twice_twice(cache, node) -> None:
    cache.set(b"a", b"1")
    cache.set(b"b", b"2")
    reply = round_trip(node, "exists", protocol.pack([b"a", b"nope", b"b", b"a"]))
    assert (reply.id, reply.error, reply.result) == (7, None, 3)


def test_delete_many_deletes_over_the_wire_and_counts_what_was_there(cache, node) -> None:
    for key in (b"a", b"b", b"keep"):
        cache.set(key, b"v")
    reply = round_trip(node, "delete_many", protocol.pack([b"a", b"nope", b"b", b"a"]))
    assert (reply.error, reply.result) == (None, 2)
    assert cache.keys() == [b"keep"]


def test_scan_over_the_wire_follows_cursors_to_every_matching_key_once(cache, node) -> None:
    keys = {b"k%d" % i for i in range(300)}
    for key in keys | {b"other"}:
        cache.set(key, b"v")
    found, cursor, steps = [], 0, 0
    while True:
        reply = round_trip(node, "scan", [b"k*"], cursor=cursor, count=10)
        assert reply.error is None, reply.message
        cursor, page = scan_reply(reply)
        found.extend(page)
        steps += 1
        if not cursor:
            break
    assert steps > 1 and sorted(found) == sorted(keys)


def test_scan_keys_travel_packed_so_a_reply_batch_can_carry_them(cache, node) -> None:
    for i in range(50):
        cache.set(b"k%d" % i, b"v")
    reply = node.attempt(node.decode(protocol.encode_request(1, "scan", {"cursor": 0,
                                                                          "count": 1000},
                                                             [b"*"])))
    assert len(reply.frames) == 2  # packed, not one frame per key
    entry = protocol.encode_reply(reply)
    (back,) = batches.decode_replies(batches.encode(batches.REPLY_FORM, [entry]))
    assert sorted(scan_reply(back)[1]) == sorted(b"k%d" % i for i in range(50))


def test_the_parked_request_order_treats_the_new_commands_as_touching_any_key() -> None:
    for op, frames in (("exists", protocol.pack([b"a"])),
                       ("delete_many", protocol.pack([b"a"])), ("scan", [b"a"])):
        request = protocol.decode_request(protocol.encode_request(
            1, op, {"cursor": 0} if op == "scan" else {}, frames))
        assert waits.keys_of(request) is None, op


def raw(header: dict, *payload: bytes) -> list[bytes]:
    return [PROTOCOL_TAG + json.dumps(header).encode(), *payload]


@pytest.mark.parametrize("frames, code", [
    (raw({"id": 3, "op": "exists"}, b"\x01\x00\x00\x00"), "ProtocolError"),  # one frame
    (raw({"id": 3, "op": "exists"}, b"\x05\x00\x00\x00", b"abc"), "ProtocolError"),
    (raw({"id": 3, "op": "delete_many"}, b"\x01\x00\x00", b"a"), "ProtocolError"),
    (raw({"id": 3, "op": "scan", "cursor": 0}), "ProtocolError"),  # no pattern
    (raw({"id": 3, "op": "scan", "cursor": "0"}, b"*"), "ProtocolError"),
    (raw({"id": 3, "op": "scan"}, b"*"), "ProtocolError"),  # no cursor
    (raw({"id": 3, "op": "scan", "cursor": 0, "count": 0}, b"*"), "ProtocolError"),
    (raw({"id": 3, "op": "scan", "cursor": 0, "count": 1.5}, b"*"), "ProtocolError"),
    (raw({"id": 3, "op": "exists"},
         b"\x00" * 4 * (protocol.MAX_BATCH_KEYS + 1), b""), "RequestTooLarge"),
])
def test_a_malformed_request_gets_an_error_reply_and_changes_nothing(cache, node, frames,
                                                                     code) -> None:
    cache.set(b"a", b"1")
    reply = protocol.decode_reply(protocol.encode_reply(node.handle(frames)))
    assert (reply.id, reply.error) == (3, code)
    assert cache.get(b"a") == b"1"
    assert round_trip(node, "exists", protocol.pack([b"a"])).result == 1  # still serving


def test_a_scan_whose_keys_pass_max_reply_bytes_is_refused_naming_the_limit(cache) -> None:
    for i in range(20):
        cache.set(b"key%02d" % i, b"v")
    limits = {**protocol.limits_for(cache.stats()["arena_bytes"]), "max_reply_bytes": 50}
    reply = round_trip(Dispatcher(cache, limits), "scan", [b"*"], cursor=0, count=None)
    assert reply.error == "RequestTooLarge" and "max_reply_bytes" in reply.message
