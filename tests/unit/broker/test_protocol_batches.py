"""The batch form of the wire protocol (shmkv.broker.batches) without sockets."""

from __future__ import annotations

import struct

import pytest

from shmkv.broker import batches, protocol
from shmkv.broker.protocol import PROTOCOL_TAG, Reply
from shmkv.errors import ProtocolError, RequestTooLarge


def requests() -> list[list[bytes]]:
    return [protocol.encode_request(1, "get", {"coll": "users"}, [b"k"]),
            protocol.encode_request(2, "set", {"ttl_s": 3}, [b"k", b"value"]),
            protocol.encode_request(3, "ping", {}),
            protocol.encode_request(4, "set_many", {}, [*protocol.pack([b"a"]),
                                                        *protocol.pack([b"1"])])]


def test_a_request_batch_round_trips_each_request_whole() -> None:
    frames = batches.encode(batches.REQUEST_FORM, requests())
    assert len(frames) == 2 and batches.is_batch(frames[0], batches.REQUEST_FORM)
    decoded = [protocol.decode_request(entry)
               for entry in batches.decode(frames, batches.REQUEST_FORM)]
    assert [(r.id, r.op, r.coll) for r in decoded] == \
        [(1, "get", "users"), (2, "set", ""), (3, "ping", ""), (4, "set_many", "")]
    assert decoded[1].fields["ttl_s"] == 3
    assert [[bytes(f) for f in r.frames] for r in decoded] == \
        [[b"k"], [b"k", b"value"], [], [b"\x01\x00\x00\x00", b"a", b"\x01\x00\x00\x00", b"1"]]


def test_a_reply_batch_carries_each_reply_with_its_own_outcome() -> None:
    replies = [Reply(1, True, [b"v"]), protocol.error_reply(2, KeyError("k")),
               Reply(3, {"role": "primary"}), Reply(None, error="ProtocolError", message="?")]
    frames = batches.encode(batches.REPLY_FORM, [protocol.encode_reply(r) for r in replies])
    assert batches.is_batch(frames[0], batches.REPLY_FORM)
    assert not batches.is_batch(frames[0], batches.REQUEST_FORM)
    decoded = [protocol.decode_reply(entry)
               for entry in batches.decode(frames, batches.REPLY_FORM)]
    assert [(r.id, r.ok, r.result) for r in decoded] == \
        [(1, True, True), (2, False, None), (3, True, {"role": "primary"}), (None, False, None)]
    assert [bytes(f) for f in decoded[0].frames] == [b"v"]
    assert decoded[1].error == "KeyError"


def test_an_empty_batch_is_a_batch_of_nothing() -> None:
    frames = batches.encode(batches.REQUEST_FORM, [])
    assert batches.decode(frames, batches.REQUEST_FORM) == []


def _table(count: int, *entries: bytes) -> bytes:
    return PROTOCOL_TAG + bytes((batches.REQUEST_FORM,)) + struct.pack("<I", count) + \
        b"".join(entries)


@pytest.mark.parametrize("frames", [
    [_table(1)],                                                     # one frame
    [_table(1), b"", b""],                                           # three frames
    [_table(1), b""],                                                # count past the table
    [_table(0, b"junk"), b""],                                       # table past the count
    [_table(1, struct.pack("<IB", 100, 0) + b"short"), b""],         # header past the table
    [_table(1, struct.pack("<IBI", 0, 1, 10)), b"abc"],              # payload short
    [_table(1, struct.pack("<IBI", 0, 1, 1)), b"abc"],               # payload left over
    [_table(1, struct.pack("<IB", 0, protocol.MAX_FRAMES)), b""],    # too many frames
    [PROTOCOL_TAG + bytes((batches.REQUEST_FORM,)) + b"\x01", b""],  # count cut short
    [b"NOTSHMKV" + bytes((batches.REQUEST_FORM,)) + bytes(4), b""],  # no tag
], ids=["one-frame", "three-frames", "count-past-table", "table-past-count",
        "header-past-table", "payload-short", "payload-left-over", "too-many-frames",
        "count-cut", "no-tag"])
def test_a_batch_whose_framing_cannot_be_read_is_a_protocol_error(frames) -> None:
    with pytest.raises(ProtocolError):
        batches.decode(frames, batches.REQUEST_FORM)


def test_a_batch_of_more_requests_than_the_limit_is_refused_on_both_sides() -> None:
    over = protocol.MAX_BATCH_REQUESTS + 1
    with pytest.raises(RequestTooLarge, match="max_batch_requests"):
        batches.decode([_table(over), b""], batches.REQUEST_FORM)
    with pytest.raises(RequestTooLarge):
        batches.encode(batches.REQUEST_FORM, [protocol.encode_request(1, "ping", {})] * over)
    assert protocol.limits_for(1 << 20)["max_batch_requests"] == protocol.MAX_BATCH_REQUESTS


def test_a_malformed_entry_fails_alone_when_its_request_is_decoded() -> None:
    entries = [protocol.encode_request(1, "get", {}, [b"k"]),
               [PROTOCOL_TAG + b'{"id": 2, "op": "nope"}'],
               protocol.encode_request(3, "get", {}, [b"k", b"extra"])]
    decoded = batches.decode(batches.encode(batches.REQUEST_FORM, entries),
                             batches.REQUEST_FORM)
    assert protocol.decode_request(decoded[0]).id == 1
    for entry, request_id in ((decoded[1], 2), (decoded[2], 3)):
        with pytest.raises(ProtocolError):
            protocol.decode_request(entry)
        assert protocol.request_id_of(entry) == request_id


def test_replies_call_done_once_when_the_last_comes_in_any_order() -> None:
    done: list[list[Reply]] = []
    replies = batches.Replies(3, 10, done.append)
    replies.fill(2, Reply(3, True, [b"x" * 6]))
    assert replies.over_limit() is None
    replies.fill(0, Reply(1, True, [b"y" * 6]))
    assert isinstance(replies.over_limit(), RequestTooLarge)  # 12 bytes, limit 10
    assert done == []
    replies.fill(1, Reply(2, None))
    assert [[r.id for r in batch] for batch in done] == [[1, 2, 3]]
