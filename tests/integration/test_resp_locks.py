"""The RESP door and a lock held by a stopped local process: the command that needs it waits
apart (the node's queue of waiting requests, shared with the ZeroMQ door) while every other
connection is served, keeps its connection's later commands behind it, and is answered
-LOCKTIMEOUT at the node's lock timeout."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from integration.test_node_limits import stopped_lock_holder
from integration.test_resp_support import RawConnection, client, redis, resp_address, resp_node

from redis.backoff import NoBackoff
from redis.retry import Retry

import shmkv
from shmkv.broker.resp import encode_request
from shmkv.hashing import xxh3_64
from shmkv.locks import DEFAULT_LOCK_TIMEOUT_S

pytestmark = pytest.mark.multiprocess
CLIENT_TIMEOUT_S = 1.0  # well under the node's lock timeout: a stalled node fails the test


def impatient_client(node: Any) -> redis.Redis:
    """A client that gives up after CLIENT_TIMEOUT_S, without retrying (redis-py retries a
    timed-out command by default, which would hide a stalled node)."""
    return client(node, socket_timeout=CLIENT_TIMEOUT_S, retry=Retry(NoBackoff(), 0))


def keys_on_other_stripes(region: str, held: bytes, count: int) -> list[bytes]:
    """Keys of the default collection whose stripe is not held's (a write to them takes
    another lock)."""
    with shmkv.Cache.open(region) as cache:
        def stripe(key: bytes) -> int:
            return xxh3_64(key, cache._seed) & cache._smask
        return [k for k in (b"free%d" % i for i in range(count * 4))
                if stripe(k) != stripe(held)][:count]


def test_a_set_behind_a_stopped_holder_holds_up_no_other_connection_and_gets_locktimeout(
        ) -> None:
    with resp_node() as (node, region), stopped_lock_holder(region, "held") as pid:
        free = keys_on_other_stripes(region, b"held", 50)
        results: list[Any] = []

        def pipelined() -> None:
            with client(node, socket_timeout=DEFAULT_LOCK_TIMEOUT_S * 3) as waiting:
                pipe = waiting.pipeline(transaction=False)
                pipe.set("held", "v")
                pipe.get(free[0])  # on a free stripe, but after the SET on its connection
                results.extend(pipe.execute(raise_on_error=False))

        thread = threading.Thread(target=pipelined)
        with impatient_client(node) as other:
            other.set(free[0], "before")
            thread.start()
            while other.info("clients")["blocked_clients"] == 0:  # until the SET waits
                assert thread.is_alive(), "the SET was answered without waiting"
            served = 0
            # Until the pipeline is answered, the other connection's SETs and GETs on other
            # stripes are served within CLIENT_TIMEOUT_S: a door that waited for the lock
            # would stall the node for its lock timeout, and redis-py would time out.
            while thread.is_alive():
                key = free[1 + served % (len(free) - 1)]
                assert other.set(key, b"x%d" % served)
                assert other.get(key) == b"x%d" % served
                served += 1
            thread.join()
            assert served > 10
            error, after = results
            assert isinstance(error, redis.ResponseError)
            assert str(error).startswith("LOCKTIMEOUT set: the stripe ")
            assert f"held by pid {pid}" in str(error)
            assert f"lock timeout of {DEFAULT_LOCK_TIMEOUT_S:g} s" in str(error)
            assert after == b"before"  # answered, in order, after the SET it came behind
            assert other.get("held") is None  # the SET changed nothing


def test_a_command_on_a_busy_key_waits_behind_the_parked_one_of_another_connection() -> None:
    """Order per key holds across connections: a GET (lock-free) of the key a parked SET
    waits for waits behind that SET, and is answered once the SET is (LockTimeout)."""
    with resp_node() as (node, region), stopped_lock_holder(region, "held"), \
            impatient_client(node) as probe:
        results: dict[str, Any] = {}

        def run(name: str, *command: str) -> threading.Thread:
            def call() -> None:
                with client(node, socket_timeout=DEFAULT_LOCK_TIMEOUT_S * 3) as c:
                    try:
                        results[name] = c.execute_command(*command)
                    except redis.ResponseError as exc:
                        results[name] = exc
            thread = threading.Thread(target=call)
            thread.start()
            return thread

        def wait_blocked(count: int, running: threading.Thread) -> None:
            # INFO is answered at once (the node is not stalled) and counts the waiting ones
            while probe.info("clients")["blocked_clients"] < count:
                assert running.is_alive(), "answered without waiting"

        setter = run("set", "SET", "held", "v")
        wait_blocked(1, setter)
        getter = run("get", "GET", "held")
        wait_blocked(2, getter)
        setter.join()
        getter.join()
        assert isinstance(results["set"], redis.ResponseError)
        assert str(results["set"]).startswith("LOCKTIMEOUT")
        assert results["get"] is None
        assert probe.info("clients")["blocked_clients"] == 0


def test_a_stop_answers_the_parked_command_and_the_ones_behind_it() -> None:
    """SIGTERM while a SET waits: it is answered LOCKTIMEOUT, and the commands its connection
    sent after it are run and answered too, before the node exits."""
    with resp_node() as (node, region), stopped_lock_holder(region, "held"), \
            impatient_client(node) as probe:
        free = keys_on_other_stripes(region, b"held", 1)[0]
        raw = RawConnection(*resp_address(node))
        try:
            raw.send(encode_request("SET", "held", "v") + encode_request("SET", free, "w")
                     + encode_request("SET", "held", "again") + encode_request("GET", free))
            while probe.info("clients")["blocked_clients"] == 0:  # until the SET waits
                pass
            stopping, status = node.stop()
            assert (stopping["event"], status) == ("stopping", 0)
            assert raw.reply().startswith(b"-LOCKTIMEOUT set: ")
            assert raw.reply() == b"+OK\r\n"
            assert raw.reply().startswith(b"-LOCKTIMEOUT set: ")  # the second SET waited too
            assert raw.reply() == b"$1\r\nw\r\n"
            assert raw.is_closed()
        finally:
            raw.close()
