"""The wire protocol (shmkv.broker.protocol) without sockets: frames in, messages out."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import shmkv
from shmkv.broker import compact, protocol
from shmkv.broker.protocol import PROTOCOL_TAG, PROTOCOL_VERSION, Reply
from shmkv.errors import ProtocolError, RequestTooLarge


def request_frames(fields: dict, *payload: bytes) -> list[bytes]:
    return [PROTOCOL_TAG + json.dumps(fields).encode(), *payload]


# --- round trips ----------------------------------------------------------------------------
def test_a_request_round_trips_its_id_command_fields_and_frames() -> None:
    frames = protocol.encode_request(7, "set", {"coll": "users", "ttl_s": 1.5}, [b"k", b"v"])
    request = protocol.decode_request(frames)
    assert (request.id, request.op, request.coll) == (7, "set", "users")
    assert request.fields["ttl_s"] == 1.5
    assert [bytes(f) for f in request.frames] == [b"k", b"v"]


def test_a_request_without_coll_is_in_the_default_collection() -> None:
    assert protocol.decode_request(request_frames({"id": 1, "op": "len"})).coll == ""


def test_a_publish_carries_its_channel_and_message_as_frames() -> None:
    request = protocol.decode_request(protocol.encode_request(3, "publish", {},
                                                              [b"news", b"\x00msg"]))
    assert request.op == "publish"
    assert [bytes(f) for f in request.frames] == [b"news", b"\x00msg"]


def test_values_travel_as_their_own_frames_untouched() -> None:
    value = bytes(range(256)) * 3
    frames = protocol.encode_request(1, "set", {}, [b"k", value])
    assert frames[-1] is value  # not copied, not encoded
    assert bytes(protocol.decode_request(frames).frames[1]) == value


def test_a_reply_round_trips_its_result_and_frames() -> None:
    frames = protocol.encode_reply(Reply(9, [True, False], [b"value"], op="get_many"))
    reply = protocol.decode_reply(frames)
    assert (reply.id, reply.ok, reply.result) == (9, True, [True, False])
    assert [bytes(f) for f in reply.frames] == [b"value"]


@pytest.mark.parametrize("items", [[], [b""], [b"k", b"", b"\x00" * 300]], ids=len)
def test_a_packed_batch_round_trips_in_two_frames(items) -> None:
    frames = protocol.pack(items)
    assert len(frames) == 2
    assert [bytes(v) for v in protocol.unpack(*frames)] == items


@pytest.mark.parametrize("lengths, data", [(b"\x01\x00\x00", b"x"), (b"\x02\x00\x00\x00", b"x"),
                                           (b"", b"extra")], ids=["torn", "short", "long"])
def test_a_packed_batch_that_does_not_add_up_is_a_protocol_error(lengths, data) -> None:
    with pytest.raises(ProtocolError, match="packed batch"):
        protocol.unpack(lengths, data)


def test_an_error_reply_round_trips_its_code_and_message() -> None:
    sent = protocol.error_reply(3, shmkv.KeyTooLarge("keys may be at most 4096 bytes"))
    reply = protocol.decode_reply(protocol.encode_reply(sent))
    assert (reply.id, reply.ok, reply.error, reply.message) == (
        3, False, "KeyTooLarge", "keys may be at most 4096 bytes")


def test_unknown_header_fields_are_ignored_by_both_sides() -> None:
    request = protocol.decode_request(
        request_frames({"id": 1, "op": "get", "trace": {"span": 5}, "future": [1]}, b"k"))
    assert request.op == "get" and request.fields["trace"] == {"span": 5}
    reply = protocol.decode_reply(
        [PROTOCOL_TAG + b'{"id":1,"ok":true,"result":3,"server_time_ns":12}'])
    assert reply.result == 3


# --- the compact header ---------------------------------------------------------------------
def test_a_get_is_two_frames_each_way_with_compact_headers() -> None:
    request = protocol.encode_request(5, "get", {"timeout_ms": 2000}, [b"k"])
    assert len(request) == 2 and request[0].startswith(PROTOCOL_TAG + b"\x01")
    assert protocol.decode_request(request).fields == {"id": 5, "op": "get", "timeout_ms": 2000}
    reply = protocol.encode_reply(Reply(5, True, [b"value"]))
    assert len(reply) == 2 and reply[0].startswith(PROTOCOL_TAG + b"\x02")
    decoded = protocol.decode_reply(reply)
    assert (decoded.id, decoded.result, decoded.frames) == (5, True, [b"value"])


@pytest.mark.parametrize("fields", [
    {}, {"coll": "users"}, {"coll": "k\u00fcche", "timeout_ms": 1}, {"ttl_s": 1.5},
    {"ttl_s": 300}, {"ttl_s": -2}, {"ttl_s": 0.0, "timeout_ms": 2**32 - 1},
], ids=str)
def test_a_compact_request_decodes_to_the_header_it_stands_for(fields) -> None:
    frames = protocol.encode_request(2**64 - 1, "set", dict(fields), [b"k", b"v"])
    assert frames[0][len(PROTOCOL_TAG)] == 1  # compact
    request = protocol.decode_request(frames)
    assert request.fields == {"id": 2**64 - 1, "op": "set", **fields}
    assert all(type(request.fields[k]) is type(v) for k, v in fields.items())  # int stays int


@pytest.mark.parametrize("request_id, op, fields", [
    (1, "incr", {"delta": 2}),  # a field the compact form does not have
    (1, "ping", {}),  # not a compact command
    (1, "set", {"ttl_s": "soon"}), (1, "set", {"ttl_s": True}), (1, "set", {"ttl_s": 2**60}),
    (1, "set", {"coll": 5}), (1, "set", {"coll": "\ud800"}),
    (-1, "set", {}), (2**64, "set", {}), (1, "set", {"timeout_ms": 2**32}),
], ids=str)
def test_a_request_the_compact_form_cannot_carry_goes_as_json_unchanged(request_id, op,
                                                                       fields) -> None:
    frames = protocol.encode_request(request_id, op, dict(fields), [b"k", b"v"][:1 if op ==
                                     "incr" else 0 if op == "ping" else 2])
    assert frames[0][len(PROTOCOL_TAG):len(PROTOCOL_TAG) + 1] == b"{"
    assert json.loads(frames[0][len(PROTOCOL_TAG):]) == {"id": request_id, "op": op, **fields}


@pytest.mark.parametrize("result", [None, True, False, 0, -2**63, 2**63 - 1, 2.5, -0.0,
                                    [True, False, True], []], ids=repr)
def test_a_compact_reply_round_trips_its_result(result) -> None:
    frames = protocol.encode_reply(Reply(7, result))
    assert frames[0][len(PROTOCOL_TAG)] == 2  # compact
    reply = protocol.decode_reply(frames)
    assert reply.id == 7 and reply.result == result and type(reply.result) is type(result)


# The plain get: the node knows it by its first bytes and size (zmq_door.py)
def _is_plain_get(head: bytes) -> bool:
    at = len(PROTOCOL_TAG)
    return len(head) == at + compact.PLAIN_GET_BYTES and head[at:].startswith(compact.PLAIN_GET)


@pytest.mark.parametrize("request_id", [0, 1, 2**32 + 5, 2**64 - 1])
@pytest.mark.parametrize("timeout_ms", [1, 2000, 2**32 - 1])
def test_a_get_with_a_timeout_and_nothing_else_is_a_plain_get(request_id, timeout_ms) -> None:
    head = protocol.encode_request(request_id, "get", {"timeout_ms": timeout_ms}, [b"k"])[0]
    assert _is_plain_get(head)
    before, after = compact.request_template("get", {"timeout_ms": timeout_ms, "coll": ""})
    assert head == PROTOCOL_TAG + before + compact.pack_id(request_id) + after  # the client's
    assert protocol.decode_request([head, b"k"]).fields == \
        {"id": request_id, "op": "get", "timeout_ms": timeout_ms}


@pytest.mark.parametrize("op, fields", [
    ("get", {}), ("get", {"coll": "users"}), ("get", {"timeout_ms": 5, "ttl_s": 1}),
    ("get", {"timeout_ms": 5, "ttl_s": 0.0}), ("get_with_version", {"timeout_ms": 5}),
    ("getdel", {"timeout_ms": 5}), ("contains", {"timeout_ms": 5}),
], ids=str)
def test_any_other_request_is_not_a_plain_get(op, fields) -> None:
    assert not _is_plain_get(protocol.encode_request(3, op, fields, [b"k"])[0])


@pytest.mark.parametrize("request_id", [0, 7, 2**64 - 1])
@pytest.mark.parametrize("found", [True, False])
def test_the_reply_to_a_plain_get_is_the_compact_reply_of_found(request_id, found) -> None:
    head = protocol.encode_request(request_id, "get", {"timeout_ms": 9}, [b"k"])[0]
    made = compact.plain_get_reply(head, len(PROTOCOL_TAG), found)
    assert PROTOCOL_TAG + made == protocol.encode_reply(Reply(request_id, found))[0]


@pytest.mark.parametrize("result", [2**63, "text", {"a": 1}, [1, 2], [True, 1]], ids=repr)
def test_a_reply_the_compact_form_cannot_carry_goes_as_json(result) -> None:
    frames = protocol.encode_reply(Reply(7, result))
    assert frames[0][len(PROTOCOL_TAG):len(PROTOCOL_TAG) + 1] == b"{"
    assert protocol.decode_reply(frames).result == result


# --- versions and malformed messages --------------------------------------------------------
def test_a_message_of_another_version_is_refused_naming_both_versions() -> None:
    frames = [b"SHMKV/3" + b'{"id":1,"op":"get"}', b"k"]
    with pytest.raises(ProtocolError, match=f"version 3.*version {PROTOCOL_VERSION}"):
        protocol.decode_request(frames)


def test_the_version_is_read_without_parsing_the_header() -> None:
    with pytest.raises(ProtocolError, match="version 9"):
        protocol.decode_request([b"SHMKV/9\x00 a binary header of version 9"])


def test_a_version_1_request_is_refused_in_an_envelope_a_version_1_client_reads() -> None:
    frames = [b"", b"SHMKV/1", b'{"id":4,"op":"get"}', b"k"]
    with pytest.raises(ProtocolError, match=f"version 1, this side speaks version "
                                            f"{PROTOCOL_VERSION}") as info:
        protocol.decode_request(frames)
    assert protocol.request_id_of(frames) == 4
    reply = protocol.encode_reply(protocol.error_reply(4, info.value, op="invalid"))
    # what a version 1 client reads: an empty frame, a tag frame, a JSON header
    assert reply[:2] == [b"", PROTOCOL_TAG] and len(reply) == 3
    assert json.loads(reply[2]) == {"id": 4, "ok": False, "error": "ProtocolError",
                                    "message": str(info.value)}


def test_a_version_1_reply_is_a_protocol_error_telling_to_upgrade_the_node() -> None:
    old_reply = [b"", b"SHMKV/1", b'{"id":null,"ok":false,"error":"ProtocolError",'
                                  b'"message":"the first frame must be the empty delimiter"}']
    with pytest.raises(ProtocolError, match="version 1.*older version.*upgrade the node"):
        protocol.decode_reply(old_reply)


def compact_request(op_code: int, flags: int = 0, *payload: bytes) -> list[bytes]:
    return [PROTOCOL_TAG + struct.pack("<BBBQId", 1, op_code, flags, 1, 0, 0.0), *payload]


@pytest.mark.parametrize("frames, problem", [
    ([], "got 0 frames"),
    ([b""], "not a shmkv message"),
    ([PROTOCOL_TAG], "the header is missing"),
    ([b"", PROTOCOL_TAG, b'{"id":1,"op":"len"}'], "one frame in version 2"),
    ([b"HTTP/1.1", b'{"id":1,"op":"len"}'], "not a shmkv message"),
    ([PROTOCOL_TAG + b'{"id":1,"op":"len"'], "neither a compact header nor a UTF-8 JSON"),
    ([PROTOCOL_TAG + b"\xff\xfe"], "neither a compact header nor a UTF-8 JSON"),
    ([PROTOCOL_TAG + b"[1, 2]"], "must be a JSON object"),
    ([PROTOCOL_TAG + b"\x01\x00"], "compact request header is at least 23 bytes"),
    (compact_request(200), "unknown compact command"),
    ([compact_request(0)[0] + b"\xff", b"k"], "not UTF-8"),
    (compact_request(0), "get takes 1 frame"),
    (compact_request(0, 4, b"k"), "timeout_ms must be"),
    (request_frames({"op": "len"}), "request id must be an int"),
    (request_frames({"id": True, "op": "len"}), "request id must be an int"),
    (request_frames({"id": "1", "op": "len"}), "request id must be an int"),
    (request_frames({"id": 1}), "unknown command None"),
    (request_frames({"id": 1, "op": "flushall"}), "unknown command 'flushall'"),
    (request_frames({"id": 1, "op": ["get"]}), "unknown command"),
    (request_frames({"id": 1, "op": "len", "coll": 5}), "coll must be"),
    (request_frames({"id": 1, "op": "get"}), "get takes 1 frame"),
    (request_frames({"id": 1, "op": "set"}, b"k"), "set takes 2 frame"),
    (request_frames({"id": 1, "op": "len"}, b"extra"), "len takes 0 frame"),
    (request_frames({"id": 1, "op": "set_many"}, b"k", b"v", b"k2"), "set_many takes 4 frame"),
    (request_frames({"id": 1, "op": "publish"}, b"channel"), "publish takes 2 frame"),
    (request_frames({"id": 1, "op": "len", "timeout_ms": 0}), "timeout_ms must be"),
    (request_frames({"id": 1, "op": "len", "timeout_ms": 1.5}), "timeout_ms must be"),
    (request_frames({"id": 1, "op": "len", "timeout_ms": True}), "timeout_ms must be"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_malformed_request_raises_protocol_error_saying_what_is_wrong(frames, problem) -> None:
    with pytest.raises(ProtocolError, match=problem):
        protocol.decode_request(frames)


@pytest.mark.parametrize("frames", [
    [PROTOCOL_TAG + b'{"ok":true}'],
    [PROTOCOL_TAG + b'{"id":"1","ok":true}'],
    [PROTOCOL_TAG + b'{"id":1,"ok":false}'],
    [PROTOCOL_TAG + b'{"id":1,"ok":false,"error":3,"message":""}'],
    [b"SHMKV/0" + b'{"id":1,"ok":true}'],
    [PROTOCOL_TAG + b"\x02\x01"],
    [PROTOCOL_TAG + struct.pack("<BQB", 2, 1, 3) + b"\x00"],  # an int of one byte
    [PROTOCOL_TAG + struct.pack("<BQB", 2, 1, 9)],
])
def test_a_malformed_reply_raises_protocol_error(frames) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode_reply(frames)


def test_a_header_nested_too_deep_for_the_parser_is_a_protocol_error() -> None:
    frames = [PROTOCOL_TAG + b"[" * 100_000 + b"]" * 100_000]
    with pytest.raises(ProtocolError, match="nor a UTF-8 JSON object"):
        protocol.decode_request(frames)
    assert protocol.request_id_of(frames) is None


def test_request_id_of_is_none_when_no_id_can_be_read() -> None:
    assert protocol.request_id_of([b""]) is None
    assert protocol.request_id_of([PROTOCOL_TAG + b"{bad"]) is None
    assert protocol.request_id_of([PROTOCOL_TAG + b'{"id":false}']) is None
    assert protocol.request_id_of([PROTOCOL_TAG + b"\x01\x00"]) is None


def test_an_argument_json_cannot_carry_raises_type_error_before_sending() -> None:
    with pytest.raises(TypeError, match="ttl_s"):
        protocol.encode_request(1, "set", {"ttl_s": object()}, [b"k", b"v"])


# --- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("code", sorted(protocol.ERROR_CLASSES))
def test_every_error_class_round_trips_as_the_same_class_and_message(code) -> None:
    cls = protocol.ERROR_CLASSES[code]
    sent = protocol.error_reply(1, cls("what to change"))
    received = protocol.exception_from(protocol.decode_reply(protocol.encode_reply(sent)))
    assert type(received) is cls
    assert str(received) == str(cls("what to change"))


def test_every_shmkv_error_class_has_a_code() -> None:
    assert set(shmkv.errors.__all__) <= set(protocol.ERROR_CLASSES)
    assert {"KeyError", "TypeError", "ValueError", "ProtocolError",
            "RemoteUnavailable"} <= set(protocol.ERROR_CLASSES)


def test_an_unlisted_subclass_is_sent_as_its_nearest_listed_class() -> None:
    class Private(shmkv.RegionFull):
        pass

    assert protocol.error_reply(1, Private("m")).error == "RegionFull"
    assert protocol.error_reply(1, UnicodeDecodeError("utf-8", b"", 0, 1, "x")).error \
        == "ValueError"


def test_an_unexpected_exception_is_sent_as_an_internal_error() -> None:
    reply = protocol.error_reply(1, ZeroDivisionError("division by zero"))
    assert reply.error == "ShmKVError" and "ZeroDivisionError" in reply.message
    assert type(protocol.exception_from(reply)) is shmkv.ShmKVError


def test_an_unknown_error_code_is_raised_as_shmkv_error() -> None:
    exc = protocol.exception_from(Reply(1, error="FromTheFuture", message="m"))
    assert type(exc) is shmkv.ShmKVError and "FromTheFuture" in str(exc)


def test_a_result_json_cannot_carry_is_sent_as_an_internal_error() -> None:
    reply = protocol.decode_reply(protocol.encode_reply(Reply(4, result={b"bytes": 1})))
    assert (reply.id, reply.error) == (4, "ShmKVError")


# --- arrays ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arr", [
    np.arange(6, dtype="<f4").reshape(2, 3),
    np.array([(1, [2.0, 3.0])], dtype=[("a", ">i2"), ("b", "<f8", (2,))]),
    np.zeros((0,), dtype="<M8[ms]"),
    np.array(b"xyz", dtype="S3"),
])
def test_array_fields_round_trip_through_json(arr) -> None:
    fields, data = protocol.array_fields(arr)
    wire = json.loads(json.dumps(fields))
    got = protocol.array_from(wire, bytes(data))
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("fields, error", [
    ({"dtype": "O", "shape": [1]}, TypeError),
    ({"dtype": "not a dtype", "shape": [1]}, ProtocolError),
    ({"dtype": None, "shape": [1]}, ProtocolError),
    ({"dtype": [["a"]], "shape": [1]}, ProtocolError),
    ({"dtype": "<f8", "shape": [-1]}, ProtocolError),
    ({"dtype": "<f8", "shape": "3"}, ProtocolError),
    ({"dtype": "<f8", "shape": [3]}, ValueError),  # 8 bytes of data for 3 doubles
])
def test_array_from_refuses_a_bad_description(fields, error) -> None:
    with pytest.raises(error):
        protocol.array_from(fields, b"\0" * 8)


def test_a_batch_over_max_batch_keys_is_refused_before_its_items_are_made() -> None:
    lengths = struct.pack(f"<{protocol.MAX_BATCH_KEYS + 1}I", *[0] * (protocol.MAX_BATCH_KEYS + 1))
    with pytest.raises(RequestTooLarge, match=f"limit of {protocol.MAX_BATCH_KEYS}"):
        protocol.unpack(lengths, b"")
    assert len(protocol.unpack(*protocol.pack([b""] * protocol.MAX_BATCH_KEYS))) == \
        protocol.MAX_BATCH_KEYS


def test_the_byte_limits_follow_the_arena() -> None:
    limits = protocol.limits_for(8 << 20)
    assert limits["max_message_bytes"] == limits["max_reply_bytes"] == \
        (8 << 20) + protocol.MESSAGE_HEADROOM_BYTES
    assert limits["max_frames"] == protocol.MAX_FRAMES
    assert protocol.MAX_FRAMES >= 1 + max(protocol.REQUEST_FRAMES.values())
