"""The client's quick ways to the wire's bytes, each against the general way it stands in for:
a request header from a template (compact.request_template, Connection._message) against
protocol.encode_request, and a reply batch read in place (batches.decode_replies) against
protocol.decode_reply of each entry. Same bytes in, same bytes or the same reading out."""

from __future__ import annotations

import struct
from typing import Any

import pytest

import shmkv
from shmkv.broker import batches, compact, protocol
from shmkv.broker.protocol import PROTOCOL_TAG, Reply
from shmkv.clients import connection
from shmkv.clients.connection import Connection
from shmkv.errors import ProtocolError

IDS = [0, 1, 255, 1 << 32, (1 << 64) - 1]
FIELDS = [{}, {"timeout_ms": 2000}, {"timeout_ms": 1, "coll": "users"},
          {"timeout_ms": 2000, "coll": ""}, {"ttl_s": 3}, {"ttl_s": 2.5, "coll": "ünï"},
          {"ttl_s": None, "timeout_ms": 5}]


@pytest.mark.parametrize("op", compact.OPS)
@pytest.mark.parametrize("fields", FIELDS)
def test_a_request_template_makes_the_compact_header_for_every_id(op, fields) -> None:
    before, after = compact.request_template(op, fields)
    for request_id in IDS:
        assert before + compact.pack_id(request_id) + after == \
            compact.request_header(request_id, op, fields)


@pytest.mark.parametrize("op, fields", [("ping", {}), ("incr", {"delta": 2}),
                                        ("get", {"coll": "\udc80"}), ("get", {"ttl_s": 1e300j})])
def test_a_request_without_a_compact_form_has_no_template(op, fields) -> None:
    assert compact.request_template(op, fields) is None


@pytest.fixture
def link():
    link = Connection("tcp://127.0.0.1:1", 2.0, 0, None)  # connects lazily: nothing is sent
    yield link
    link.close()


@pytest.mark.parametrize("op, fields, frames", [
    ("get", {}, [b"k"]),
    ("get", {"coll": "users"}, [b"k"]),
    ("set", {"ttl_s": None}, [b"k", b"v"]),
    ("set", {"ttl_s": None, "coll": "users"}, [b"k", b"v"]),
    ("set", {"ttl_s": 3}, [b"k", b"v"]),  # a ttl: request_header's own way
    ("get", {"coll": "\udc80"}, [b"k"]),  # not UTF-8: JSON
    ("incr", {"delta": 2}, [b"k"]),  # a field the compact form does not have: JSON
    ("ping", {}, []),  # not a compact op: JSON
    ("get_many", {}, protocol.pack([b"a", b"b"])),
])
def test_a_connection_sends_the_frames_protocol_encode_request_makes(link, op, fields,
                                                                   frames) -> None:
    for request_id in (1, 2, 1 << 40):  # the template is made once, then reused
        expected = protocol.encode_request(request_id, op,
                                           {**fields, "timeout_ms": 2000}, frames)
        assert link._message(request_id, op, dict(fields), frames) == expected


def test_a_connection_keeps_a_bounded_number_of_templates(link, monkeypatch) -> None:
    monkeypatch.setattr(connection, "MAX_TEMPLATES", 3)
    for n in range(10):
        coll = f"c{n}"
        assert link._message(n, "get", {"coll": coll}, [b"k"]) == \
            protocol.encode_request(n, "get", {"coll": coll, "timeout_ms": 2000}, [b"k"])
        assert len(link._templates) <= 3


def entry(reply: Reply) -> list[Any]:
    return protocol.encode_reply(reply)


REPLY_ENTRIES = [
    entry(Reply(1, True, [b"v"])),
    entry(Reply(2, None)),
    entry(Reply(3, -7)),
    entry(Reply(4, 0.5)),
    entry(Reply(5, [True, False], protocol.pack([b"x"]))),
    entry(Reply(6, {"role": "primary"}, [b"a", b"b"])),
    entry(protocol.error_reply(7, shmkv.KeyTooLarge("too long"))),
    entry(Reply(None, error="ProtocolError", message="?")),
    entry(Reply(9, True, [b"w" * 100_000])),
]


def reading(read) -> Any:
    """A reply's reading, or the error reading it raised."""
    try:
        reply = read()
    except ProtocolError as exc:
        return ("raised", str(exc))
    return (reply.id, reply.result, reply.error, reply.message,
            [bytes(frame) for frame in reply.frames])


def test_decode_replies_reads_each_entry_as_decode_reply_does() -> None:
    frames = batches.encode(batches.REPLY_FORM, REPLY_ENTRIES)
    got = [reading(lambda r=r: r) for r in batches.decode_replies(frames)]
    assert got == [reading(lambda e=e: protocol.decode_reply(e))
                   for e in batches.decode(frames, batches.REPLY_FORM)]
    assert got == [reading(lambda e=e: protocol.decode_reply(e)) for e in REPLY_ENTRIES]


@pytest.mark.parametrize("header", [
    b"",  # no header at all
    struct.pack("<BQB", compact.REPLY_FORM, 1, 3) + b"\x01",  # an int cut short
    bytes((compact.REPLY_FORM,)) + b"\x01\x02",  # the header itself cut short
    struct.pack("<BQB", compact.REPLY_FORM, 1, 0) + b"\x00",  # a null with a byte more
])
def test_a_malformed_reply_entry_raises_as_decode_reply_does(header) -> None:
    malformed, well_formed = [PROTOCOL_TAG + header], entry(Reply(2, 12345))
    expected = reading(lambda: protocol.decode_reply(malformed))
    assert expected[0] == "raised"
    # before a well-formed entry and last, so that a read past an entry's end would show
    for entries in ([malformed, well_formed], [well_formed, malformed]):
        frames = batches.encode(batches.REPLY_FORM, entries)
        assert reading(lambda: batches.decode_replies(frames)) == expected
