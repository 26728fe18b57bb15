"""The RESP door's read lane (broker/resp_lane.py, shmkv/_core_src/resp_lane.c), on a real node:
a connection that only reads moves to the lane's thread and is answered there, counted in
INFO; whatever else it sends (a write, another command, half a request) comes back to the door
and is answered in order, byte for byte as redis-server answers; a connection that closes in
the lane is dropped; a node stops cleanly with connections in it; SHMKV_RESP_LANE=0 keeps every
connection in the door."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from integration.test_node_limits import stopped_lock_holder
from integration.test_resp_support import RawConnection, client, redis_server, resp_address, \
    resp_node

import shmkv
from shmkv import backend
from shmkv.broker.resp import encode_request as req
from shmkv.broker.resp_lane import ENVIRONMENT, LANE_AFTER_READS, ReadLane

pytestmark = [pytest.mark.multiprocess,
              pytest.mark.skipif(backend.RespLane is None, reason="the compiled engine only")]
ENOUGH_READS = LANE_AFTER_READS + 2  # reads in a row that move a connection to the lane


def lane_info(node: Any) -> tuple[int, int]:
    """(connections in the lane, commands it answered), asked on a connection of its own (INFO
    is not the lane's: it would bring the asking one back)."""
    with client(node) as other:
        info = other.info()
    return info["shmkv_read_lane_clients"], info["shmkv_read_lane_commands"]


def into_lane(r: Any) -> None:
    for _ in range(ENOUGH_READS):
        r.get("warm-up")


@contextmanager
def in_lane(node: Any, key: str, value: str) -> Iterator[RawConnection]:
    """A raw connection that stored key's value, then moved to the lane by reads alone."""
    conn = RawConnection(*resp_address(node))
    try:
        conn.send(req("SET", key, value))
        assert conn.reply() == b"+OK\r\n"
        into_lane_raw(conn)
        assert lane_info(node)[0] == 1
        yield conn
    finally:
        conn.close()


def into_lane_raw(conn: RawConnection) -> None:
    for _ in range(ENOUGH_READS):
        conn.send(req("GET", "warm-up"))
        assert conn.reply() == b"$-1\r\n"


def test_a_connection_that_only_reads_is_served_by_the_lane_and_counted() -> None:
    with resp_node() as (node, _), client(node) as r:
        r.set("k", b"v")
        for _ in range(50):
            assert r.get("k") == b"v"
        assert r.mget("k", "absent") == [b"v", None]
        clients, commands = lane_info(node)
        assert clients == 1 and commands >= 50 - ENOUGH_READS
        info = r.info()  # this connection is back with the door for it
        assert info["total_commands_processed"] >= 52
        assert info["keyspace_hits"] >= 51 and info["keyspace_misses"] >= 1


def test_what_a_connection_in_the_lane_sends_besides_reads_is_answered_in_order() -> None:
    with resp_node() as (node, _), in_lane(node, "k", "old") as conn:
        conn.send(b"".join([req("GET", "k"), req("SET", "k", "new"), req("GET", "k"),
                            req("INCR", "n"), req("GET", "n"), req("MGET", "k", "n")]))
        assert [conn.reply() for _ in range(6)] == [
            b"$3\r\nold\r\n", b"+OK\r\n", b"$3\r\nnew\r\n", b":1\r\n", b"$1\r\n1\r\n",
            b"*2\r\n$3\r\nnew\r\n$1\r\n1\r\n"]
        assert lane_info(node)[0] == 0  # the SET brought it back; reads alone move it again
        into_lane_raw(conn)
        assert lane_info(node)[0] == 1


def exchange_in_steps(address: tuple[str, int], requests: list[bytes], rng: random.Random
                      ) -> bytes:
    """Send the requests one to three at a time, now and then one cut in two sends, reading
    the replies of each step before the next (as a client that waits for its replies does):
    all the replies, as the bytes on the wire."""
    conn = RawConnection(*address)
    try:
        replies, at = [], 0
        while at < len(requests):
            step = requests[at:at + rng.randrange(1, 4)]
            data = b"".join(step)
            if rng.random() < 0.05:
                cut = rng.randrange(1, len(data))
                conn.send(data[:cut])
                data = data[cut:]
            conn.send(data)
            replies += [conn.reply() for _ in step]
            at += len(step)
        return b"".join(replies)
    finally:
        conn.close()


@pytest.mark.parametrize("seed", range(2))
def test_mostly_reads_are_answered_byte_for_byte_as_redis_server_answers(seed: int) -> None:
    rng = random.Random(seed)
    keys = [f"k{i}" for i in range(5)]
    requests = [req("SET", k, str(i)) for i, k in enumerate(keys)]
    for _ in range(3000):
        kind = rng.randrange(40)
        key = rng.choice(keys)
        requests.append(req("GET", key) if kind < 33 else
                        req("MGET", *rng.choices(keys, k=3)) if kind < 37 else
                        req("INCR", key) if kind < 38 else
                        req("APPEND", key, "x") if kind < 39 else req("STRLEN", key))
    with resp_node() as (node, _), redis_server() as peer:
        ours = exchange_in_steps(resp_address(node), requests, random.Random(seed))
        theirs = exchange_in_steps(peer, requests, random.Random(seed))
        assert lane_info(node)[1] > 0  # the lane answered some of them
    assert ours == theirs


def test_a_request_cut_in_two_in_the_lane_is_answered_whole() -> None:
    with resp_node() as (node, _), in_lane(node, "k", "whole") as conn:
        request = req("GET", "k")
        conn.send(request[:9])
        conn.send(request[9:])
        assert conn.reply() == b"$5\r\nwhole\r\n"


def test_a_connection_closed_in_the_lane_is_dropped() -> None:
    with resp_node() as (node, _):
        r = client(node)
        into_lane(r)
        assert lane_info(node)[0] == 1
        r.close()
        with client(node) as other:
            while other.info()["connected_clients"] > 1:  # each INFO: a round trip, no sleep
                pass
        assert lane_info(node)[0] == 0


def test_a_read_in_the_lane_while_a_request_is_parked_is_answered_by_the_door() -> None:
    with resp_node() as (node, region), client(node) as r, client(node) as writer:
        r.set("free", b"1")
        into_lane(r)
        with stopped_lock_holder(region, "held"):
            conn = RawConnection(*resp_address(node))
            try:
                conn.send(req("SET", "held", "v"))  # parked on the stopped holder's lock
                while writer.info()["blocked_clients"] < 1:  # a round trip each, no sleep
                    pass
                assert r.get("free") == b"1"  # not held up by it
                assert lane_info(node)[0] == 0  # handed back: the door keeps their order
            finally:
                conn.close()


def test_a_node_stops_cleanly_with_connections_in_the_lane() -> None:
    with resp_node() as (node, _):
        readers = [client(node) for _ in range(3)]
        for r in readers:
            into_lane(r)
        assert lane_info(node)[0] == 3
        assert node.stop(signal.SIGTERM)[1] == 0
        for r in readers:
            r.close()


def test_with_the_lane_off_every_connection_stays_with_the_door() -> None:
    with resp_node(env={**os.environ, ENVIRONMENT: "0"}) as (node, _), client(node) as r:
        into_lane(r)
        assert lane_info(node) == (0, 0)


def test_the_lane_adds_its_counts_only_when_the_arena_lock_is_free(region_name: str) -> None:
    shmkv.Cache.create(region_name, arena_bytes=1 << 20).close()
    lane = ReadLane(region_name, None, 1 << 16, [])
    try:
        with stopped_lock_holder(region_name, "<arena>"):
            lane.count()  # tried, not waited for: the node's loop goes on
    finally:
        lane.close()
        shmkv.Cache.unlink(region_name)
