"""Requests executed against a local region, without sockets (shmkv.broker.dispatch)."""

from __future__ import annotations

import json

import pytest

import shmkv
from shmkv.broker import dispatch, protocol
from shmkv.broker.dispatch import Dispatcher
from shmkv.errors import CollectionNotFound, ProtocolError
from shmkv.events import Event, EventReader


def call(dispatcher: Dispatcher, op: str, *frames: bytes, **fields) -> protocol.Reply:
    return dispatcher.handle(protocol.encode_request(1, op, fields, frames))


def test_every_command_of_the_protocol_has_a_handler() -> None:
    handled = set(dispatch._KEY_COMMANDS) | set(dispatch._ADMIN)
    assert handled == set(protocol.REQUEST_FRAMES) | set(dispatch.MODEL_ONLY_FRAMES)
    assert not set(protocol.REQUEST_FRAMES) & set(dispatch.MODEL_ONLY_FRAMES)


def run(d: Dispatcher, op: str, *frames: bytes, coll: str = "", **fields):
    return d.run(protocol.Request(0, op, coll, fields, frames))


def test_exists_counts_the_keys_present_and_a_key_named_twice_twice(cache) -> None:
    cache.set(b"a", b"1")
    cache.set(b"b", b"2")
    d = Dispatcher(cache)
    assert run(d, "exists", *protocol.pack([b"a", b"b", b"a", b"nope"])) == (3, [])


def test_delete_many_deletes_each_key_and_counts_those_that_were_there(cache) -> None:
    cache.set(b"a", b"1")
    cache.set(b"b", b"2")
    d = Dispatcher(cache)
    assert run(d, "delete_many", *protocol.pack([b"a", b"nope", b"b"])) == (2, [])
    assert len(cache) == 0


def test_scan_walks_the_stripes_and_returns_every_key_once_through(cache) -> None:
    keys = {b"k%d" % i for i in range(200)} | {b"other"}
    for key in keys:
        cache.set(key, b"v")
    d = Dispatcher(cache)
    found, cursor, calls = [], 0, 0
    while True:
        cursor, page = run(d, "scan", b"k*", cursor=cursor, count=10)
        found.extend(page)
        calls += 1
        if cursor == 0:
            break
    assert calls > 1 and set(found) == keys - {b"other"}
    assert len(found) == len(set(found))  # no rewrite meanwhile: each key once


def test_scan_without_a_count_is_keys_with_a_pattern(cache) -> None:
    for key in (b"user:1", b"user:2", b"item:1"):
        cache.set(key, b"v")
    cursor, found = run(Dispatcher(cache), "scan", b"user:*", cursor=0, count=None)
    assert cursor == 0 and sorted(found) == [b"user:1", b"user:2"]


def test_scan_refuses_a_cursor_that_is_no_int(cache) -> None:
    with pytest.raises(ProtocolError):
        run(Dispatcher(cache), "scan", b"*", cursor="0", count=10)


def test_an_operation_of_an_unknown_collection_raises_for_the_codec(cache) -> None:
    with pytest.raises(CollectionNotFound):
        run(Dispatcher(cache), "get", b"k", coll="nowhere")


def test_a_command_runs_against_the_cache_and_returns_its_result(cache) -> None:
    d = Dispatcher(cache)
    assert call(d, "set", b"k", b"v").ok
    reply = call(d, "get", b"k")
    assert (reply.id, reply.result, reply.op) == (1, True, "get")
    assert [bytes(f) for f in reply.frames] == [b"v"]
    assert cache.get("k") == b"v"


def test_a_malformed_request_gets_a_protocol_error_reply(cache) -> None:
    reply = Dispatcher(cache).handle([protocol.PROTOCOL_TAG + b'{"id": 5, "op": "nope"}'])
    assert (reply.id, reply.error, reply.op) == (5, "ProtocolError", "invalid")
    assert "unknown command 'nope'" in reply.message


def test_an_engine_error_becomes_an_error_reply(cache) -> None:
    reply = call(Dispatcher(cache), "set", b"k" * 5000, b"v")
    assert reply.error == "KeyTooLarge"


def test_a_missing_required_field_is_a_protocol_error(cache) -> None:
    reply = call(Dispatcher(cache), "cas", b"k", b"v")
    assert reply.error == "ProtocolError" and "'version'" in reply.message


def test_a_key_command_in_an_unknown_collection_fails_without_creating_it(cache) -> None:
    reply = call(Dispatcher(cache), "set", b"k", b"v", coll="users")
    assert reply.error == "CollectionNotFound"
    assert cache.collections() == []


def test_a_collection_dropped_and_created_again_elsewhere_is_found_by_name(cache) -> None:
    d = Dispatcher(cache)
    assert call(d, "collection", name="users").ok
    assert call(d, "set", b"k", b"1", coll="users").ok
    # another process drops it and creates it again: the node's handle is stale
    cache.drop_collection("users")
    cache.collection("users")
    assert call(d, "set", b"k", b"2", coll="users").ok
    assert cache.collection("users").get("k") == b"2"


def test_rename_through_the_node_moves_the_name(cache) -> None:
    d = Dispatcher(cache)
    call(d, "collection", name="old")
    call(d, "set", b"k", b"v", coll="old")
    assert call(d, "rename_collection", old="old", new="new").ok
    assert call(d, "get", b"k", coll="old").error == "CollectionNotFound"
    assert call(d, "get", b"k", coll="new").result is True


def test_an_unexpected_failure_is_an_internal_error_reply(cache, monkeypatch, capsys) -> None:
    monkeypatch.setattr(shmkv.Cache, "stats", lambda self: 1 / 0)
    reply = call(Dispatcher(cache), "stats")
    assert reply.error == "ShmKVError" and "ZeroDivisionError" in reply.message
    assert "Traceback" in capsys.readouterr().err  # a bug is worth a traceback in the log


def test_keys_travel_as_frames_with_their_count_as_result(cache) -> None:
    cache.set("a", b"1")
    cache.set("b", b"2")
    reply = call(Dispatcher(cache), "keys")
    assert reply.result == 2 and sorted(bytes(f) for f in reply.frames) == [b"a", b"b"]


def test_get_many_marks_each_key_found_or_not(cache) -> None:
    cache.set("a", b"1")
    reply = call(Dispatcher(cache), "get_many", *protocol.pack([b"a", b"missing", b"a"]))
    assert reply.result == [True, False, True]
    assert [bytes(f) for f in protocol.unpack(*reply.frames)] == [b"1", b"1"]


def test_ping_reports_the_protocol_version_and_the_limits(cache) -> None:
    reply = call(Dispatcher(cache), "ping")
    assert reply.result == {"protocol_version": protocol.PROTOCOL_VERSION,
                            "limits": protocol.limits_for(cache.stats()["arena_bytes"])}
    json.dumps(reply.result)


def test_ping_names_the_workers_in_turn_when_the_node_has_them(cache) -> None:
    d = Dispatcher(cache)
    d.about = {"workers": [{"endpoint": f"tcp://127.0.0.1:{port}"} for port in (1, 2, 3)]}
    assert [call(d, "ping").result["worker_hint"] for _ in range(5)] == [0, 1, 2, 0, 1]


def test_publish_goes_through_the_region_on_the_root_handle(cache) -> None:
    events = EventReader(cache)
    d = Dispatcher(cache)
    call(d, "collection", name="users")
    assert call(d, "publish", b"news", b"hello").ok
    assert call(d, "publish", b"news", b"again", coll="users").ok  # channels are node-wide
    assert events.poll() == [Event("message", "", b"news", b"hello"),
                             Event("message", "", b"news", b"again")]


def test_publish_refuses_what_cache_publish_refuses(cache) -> None:
    assert call(Dispatcher(cache), "publish", b"c" * 5000, b"m").error == "KeyTooLarge"


def test_get_many_over_the_reply_limit_is_refused(cache) -> None:
    for key in "abc":
        cache.set(key, b"x" * 10)
    d = Dispatcher(cache, {**protocol.limits_for(4 << 20), "max_reply_bytes": 25})
    reply = call(d, "get_many", *protocol.pack([b"a", b"b", b"c"]))
    assert reply.error == "RequestTooLarge" and "max_reply_bytes" in reply.message
    reply = call(d, "get_many", *protocol.pack([b"a", b"missing", b"b"]))
    assert reply.result == [True, False, True]


def test_get_each_answers_one_frame_per_key_none_where_not_found(cache) -> None:
    cache.set(b"a", b"1")
    cache.set(b"b", b"2")
    assert run(Dispatcher(cache), "get_each", b"a", b"nope", b"b") == (2, [b"1", None, b"2"])


def test_a_codecs_request_runs_as_the_wires_does(cache) -> None:
    d = Dispatcher(cache)
    d.run(protocol.Request(0, "set", "", {"ttl_s": 100}, (b"k", b"v")))
    wire = protocol.Request(0, "get", "", {}, (memoryview(b"k"),))
    assert d.run(protocol.Request(0, "get", "", {}, (b"k",))) == d.run(wire) \
        == (True, [b"v"])
    assert 99 < cache.ttl(b"k") <= 100
