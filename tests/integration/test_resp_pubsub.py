"""Pub/sub over the RESP door: channels and patterns, messages from RESP clients and from
local processes, keyspace notifications named as Redis names them, and RESP3 pushes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from integration.test_resp_support import client, redis, resp_node
from node_process import Node

import shmkv

pytestmark = pytest.mark.multiprocess
WAIT_S = 10  # a message the node must forward arrives well within this


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Node, str]]:
    with resp_node("--arena-bytes", "4M") as found:
        yield found


@pytest.fixture
def r(served: tuple[Node, str]) -> Iterator[redis.Redis]:
    c = client(served[0], protocol=2)
    c.flushall()
    c.config_set("notify-keyspace-events", "")
    try:
        yield c
    finally:
        c.close()


def next_message(ps: Any) -> dict[str, Any]:
    """The next message or pmessage (subscription confirmations are skipped)."""
    while True:
        message = ps.get_message(timeout=WAIT_S)
        assert message is not None, "no message within the wait"
        if message["type"] in ("message", "pmessage"):
            return message  # type: ignore[no-any-return]


def test_a_subscriber_gets_what_resp_clients_and_local_processes_publish(
        served: tuple[Node, str], r: redis.Redis) -> None:
    ps = r.pubsub()
    try:
        ps.subscribe("news")
        ps.psubscribe("sport.*")
        assert ps.get_message(timeout=WAIT_S)["type"] == "subscribe"
        assert ps.get_message(timeout=WAIT_S)["type"] == "psubscribe"
        publisher = client(served[0])
        try:
            assert publisher.publish("news", "from resp") == 1
            assert publisher.publish("sport.tennis", "set point") == 1
            assert publisher.publish("weather", "nobody listens") == 0
        finally:
            publisher.close()
        local = shmkv.Cache.open(served[1])
        try:
            local.publish("news", b"from a local process")
        finally:
            local.close()
        got = [next_message(ps) for _ in range(3)]
        assert [(m["type"], m["channel"], m["data"]) for m in got] == [
            ("message", b"news", b"from resp"),
            ("pmessage", b"sport.tennis", b"set point"),
            ("message", b"news", b"from a local process")]
        assert got[1]["pattern"] == b"sport.*"
        ps.unsubscribe("news")
        ps.punsubscribe()
        assert ps.get_message(timeout=WAIT_S)["type"] == "unsubscribe"
        assert ps.get_message(timeout=WAIT_S)["type"] == "punsubscribe"
    finally:
        ps.close()


def test_keyspace_notifications_are_named_as_redis_names_them(
        served: tuple[Node, str], r: redis.Redis) -> None:
    r.config_set("notify-keyspace-events", "KEA")
    assert r.config_get("notify-keyspace-events")["notify-keyspace-events"] == "AKE"
    ps = r.pubsub()
    try:
        ps.psubscribe("__key*@*__:*")
        writer = client(served[0], protocol=2)
        try:
            writer.set("watched", "1")
            writer.delete("watched")
            writer.execute_command("SELECT", "2")
            writer.set("in-db2", "x")
        finally:
            writer.close()
        got = [(m["channel"], m["data"]) for m in (next_message(ps) for _ in range(6))]
        assert got == [(b"__keyspace@0__:watched", b"set"), (b"__keyevent@0__:set", b"watched"),
                       (b"__keyspace@0__:watched", b"del"), (b"__keyevent@0__:del", b"watched"),
                       (b"__keyspace@2__:in-db2", b"set"), (b"__keyevent@2__:set", b"in-db2")]
    finally:
        ps.close()


def test_notifications_are_off_until_configured(served: tuple[Node, str],
                                                r: redis.Redis) -> None:
    ps = r.pubsub()
    try:
        ps.psubscribe("__key*")
        ps.subscribe("marker")
        r.set("unseen", "1")
        r.publish("marker", "after the write")
        assert next_message(ps)["channel"] == b"marker"  # the write sent nothing before it
    finally:
        ps.close()


def test_a_subscribed_resp2_connection_refuses_other_commands(r: redis.Redis,
                                                             served: tuple[Node, str]) -> None:
    from integration.test_resp_support import RawConnection, resp_address

    from shmkv.broker.resp import encode_request
    conn = RawConnection(*resp_address(served[0]))
    try:
        conn.send(encode_request("SUBSCRIBE", "a") + encode_request("GET", "k")
                  + encode_request("PING"))
        assert conn.reply() == b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"
        assert conn.reply() == (b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / "
                                b"(P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this "
                                b"context\r\n")
        assert conn.reply() == b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
    finally:
        conn.close()


def test_resp3_subscribers_get_pushes_and_may_run_commands(served: tuple[Node, str]) -> None:
    from integration.test_resp_support import RawConnection, resp_address

    from shmkv.broker.resp import encode_request
    conn = RawConnection(*resp_address(served[0]))
    try:
        conn.send(encode_request("HELLO", "3"))
        conn.reply()
        conn.send(encode_request("SUBSCRIBE", "c3") + encode_request("PUBLISH", "c3", "m"))
        assert conn.reply() == b">3\r\n$9\r\nsubscribe\r\n$2\r\nc3\r\n:1\r\n"
        replies = {conn.reply(), conn.reply()}  # the count and the push, in either order
        assert replies == {b":1\r\n", b">3\r\n$7\r\nmessage\r\n$2\r\nc3\r\n$1\r\nm\r\n"}
    finally:
        conn.close()
