"""The node's Redis-protocol door with real clients: redis-py against a live node for every
command, compared reply for reply with a real redis-server where the wording matters; data
shared with local processes; pipelines; RESP3; redis-cli."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from integration.test_resp_support import (
    REDIS_CLI, RawConnection, client, redis, redis_server, resp_address, resp_node,
)
from node_process import Node

import shmkv
from shmkv.broker.resp import encode_request

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Node, str]]:
    with resp_node("--arena-bytes", "8M") as found:
        yield found


@pytest.fixture
def node(served: tuple[Node, str]) -> Node:
    return served[0]


@pytest.fixture
def r(node: Node) -> Iterator[redis.Redis]:
    c = client(node)
    c.flushall()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def real_redis() -> Iterator[tuple[str, int]]:
    with redis_server() as address:
        yield address


def run(c: redis.Redis, script: list[tuple[Any, ...]]) -> list[Any]:
    """Each command's reply, or (error class, message) for an error reply; KEYS and SCAN
    results sorted (neither promises an order)."""
    out: list[Any] = []
    for args in script:
        try:
            reply = c.execute_command(*args)
        except (redis.ResponseError, redis.AuthenticationError) as exc:
            reply = (type(exc).__name__, str(exc))
        if args[0] in ("KEYS",) and isinstance(reply, list):
            reply = sorted(reply)
        out.append(reply)
    return out


# Commands the engine serves today, with their edge cases and errors. Compared with Redis
# reply for reply (redis-py strips "ERR " from messages; the raw test below checks it).
SCRIPT: list[tuple[Any, ...]] = [
    ("SET", "k1", "v1"), ("GET", "k1"), ("GET", "missing"),
    ("SET", "k2", "10", "EX", "100"), ("TTL", "k2"), ("PTTL", "missing"), ("TTL", "missing"),
    ("SET", "k2", "10", "PX", "100000"), ("TTL", "k2"),
    ("SETEX", "k3", "50", "v"), ("TTL", "k3"), ("PSETEX", "k4", "50000", "v"), ("TTL", "k4"),
    ("SETEX", "k3", "0", "v"), ("PSETEX", "k3", "-1", "v"), ("SET", "k1", "v", "EX", "0"),
    ("SET", "k1", "v", "EX", "abc"), ("SET", "k1", "v", "FOO"), ("SET", "k1", "v", "EX"),
    ("SET", "k1", "v", "EX", "10", "PX", "10"), ("GET", "k1"),
    ("MSET", "a", "1", "b", "2", "c", "3"), ("MSET", "a"), ("MSET", "a", "1", "b"),
    ("MGET", "a", "b", "nope", "c"),
    ("DEL", "a", "nope"), ("UNLINK", "b"), ("EXISTS", "a", "b", "c", "c"),
    ("INCR", "counter"), ("INCRBY", "counter", "10"), ("DECR", "counter"),
    ("DECRBY", "counter", "3"), ("GET", "counter"), ("INCR", "k1"), ("INCRBY", "counter", "1.5"),
    ("INCRBY", "counter", "99999999999999999999"), ("INCRBY", "counter", "+1"),
    ("SET", "big", "9223372036854775807"), ("INCR", "big"),
    ("SET", "small", "-9223372036854775808"), ("DECR", "small"),
    ("EXPIRE", "c", "100"), ("TTL", "c"), ("PERSIST", "c"), ("TTL", "c"), ("PERSIST", "c"),
    ("EXPIRE", "nope", "10"), ("EXPIRE", "c", "x"), ("PEXPIRE", "c", "100000"), ("TTL", "c"),
    ("EXPIREAT", "c", "1"), ("EXISTS", "c"), ("SET", "c", "1"), ("PEXPIREAT", "c", "1"),
    ("EXISTS", "c"), ("SET", "c", "1"), ("EXPIRE", "c", "-5"), ("EXISTS", "c"),
    ("STRLEN", "k1"), ("STRLEN", "nope"), ("TYPE", "k1"), ("TYPE", "nope"),
    ("MSET", "hello", "1", "hallo", "1", "hxllo", "1", "hllo", "1", "heeeello", "1",
     "h*llo", "1"),
    ("KEYS", "h?llo"), ("KEYS", "h*llo"), ("KEYS", "h[ae]llo"), ("KEYS", "h[^e]llo"),
    ("KEYS", "h[a-b]llo"), ("KEYS", "h\\*llo"), ("KEYS", "nothing*"),
    ("DBSIZE",), ("SELECT", "1"), ("SET", "x", "y"), ("DBSIZE",), ("KEYS", "*"),
    ("SELECT", "0"), ("EXISTS", "x"), ("SELECT", "99"), ("SELECT", "abc"), ("SELECT", "-1"),
    ("FLUSHDB",), ("DBSIZE",), ("SELECT", "1"), ("DBSIZE",), ("FLUSHALL",), ("DBSIZE",),
    ("SELECT", "0"), ("FLUSHDB", "ASYNC"), ("FLUSHDB", "NOW"),
    ("PING",), ("PING", "hi"), ("PING", "a", "b"), ("ECHO", "hello"), ("ECHO",),
    ("FOO",), ("FOO", "a", "b"), ("GET",), ("GET", "a", "b"), ("WAIT", "0", "0"),
    ("WAIT", "x", "0"), ("SET", "k1", "v1"),
    ("CONFIG", "GET", "appendonly"), ("CLIENT", "SETNAME", "tester"),
    ("CLIENT", "GETNAME"), ("CLIENT", "SETNAME", "bad name"), ("CLIENT", "NOSUCH"),
    ("CLIENT", "SETNAME"), ("CONFIG", "NOSUCH"), ("CONFIG", "GET"),
    ("CONFIG", "SET", "notify-keyspace-events", "KQ"),
    ("CONFIG", "SET", "notify-keyspace-events", "Kx"),
    ("CONFIG", "GET", "notify-keyspace-events"),
    ("CONFIG", "SET", "notify-keyspace-events", "E$"),
    ("CONFIG", "GET", "notify-keyspace-events"),
    ("CONFIG", "SET", "notify-keyspace-events", ""),
]


def test_commands_answer_as_redis_does(r: redis.Redis, real_redis: tuple[str, int]) -> None:
    peer = redis.Redis(*real_redis, single_connection_client=True)
    peer.flushall()
    try:
        expected = run(peer, SCRIPT)
    finally:
        peer.close()
    got = run(r, SCRIPT)
    assert [(cmd, g, e) for cmd, g, e in zip(SCRIPT, got, expected) if g != e] == []


@pytest.mark.parametrize("args", [("LPUSH", "l", "x"), ("HSET", "h", "f", "v"),
                                  ("SADD", "s", "m"), ("ZADD", "z", "1", "m"),
                                  ("XADD", "x", "*", "f", "v"), ("MULTI",), ("EXEC",),
                                  ("EVAL", "return 1", "0"), ("CLUSTER", "INFO")])
def test_what_is_not_supported_answers_redis_unknown_command(r: redis.Redis,
                                                             args: tuple[str, ...]) -> None:
    shown = "".join(f"'{a}' " for a in args[1:])
    with pytest.raises(redis.ResponseError) as info:
        r.execute_command(*args)
    assert str(info.value) == f"unknown command '{args[0]}', with args beginning with: {shown}"


ERRORS = [
    encode_request("FOO", "a", "b"), encode_request("FOO"), b"GET\r\n", encode_request("get"),
    encode_request("INCRBY", "k", "x"), encode_request("SET", "k", "v", "XYZ"),
    encode_request("SETEX", "k", "0", "v"), encode_request("SELECT", "16"),
]


def test_error_replies_are_byte_for_byte_those_of_redis(
        node: Node, real_redis: tuple[str, int]) -> None:
    ours, theirs = RawConnection(*resp_address(node)), RawConnection(*real_redis)
    try:
        for request in ERRORS:
            ours.send(request)
            theirs.send(request)
            assert ours.reply() == theirs.reply(), request
    finally:
        ours.close()
        theirs.close()


def test_a_key_written_locally_is_read_over_resp_and_the_other_way_round(
        served: tuple[Node, str], r: redis.Redis) -> None:
    local = shmkv.Cache.open(served[1])
    try:
        local.set("from-local", b"\x00bytes\xff")
        local.collection("db3").set("in-db3", b"3")
        r.set("from-resp", b"\x01\x02")
        r.incr("n")
        assert r.get("from-local") == b"\x00bytes\xff"
        assert local.get("from-resp") == b"\x01\x02" and local.get("n") == b"1"
        r.execute_command("SELECT", "3")
        assert r.get("in-db3") == b"3"
        r.set("set-in-db3", "x", ex=100)
        assert local.collection("db3").get("set-in-db3") == b"x"
        assert 99 < local.collection("db3").ttl("set-in-db3") <= 100
    finally:
        local.close()


def test_a_database_whose_collection_another_process_dropped_is_made_anew(
        served: tuple[Node, str], r: redis.Redis) -> None:
    r.execute_command("SELECT", "4")
    r.set("before", "1")
    local = shmkv.Cache.open(served[1])
    try:
        assert local.drop_collection("db4") == 1
        assert r.get("before") is None
        assert r.set("after", "2") is True and r.dbsize() == 1
        assert local.collection("db4").get("after") == b"2"
    finally:
        local.close()


def test_a_pipeline_is_answered_in_order(r: redis.Redis) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(2000):
        pipe.set(f"p{i}", i)
        pipe.incr(f"p{i}")
        pipe.get(f"p{i}")
    replies = pipe.execute()
    assert replies == [x for i in range(2000) for x in (True, i + 1, str(i + 1).encode())]


def test_large_values_cross_the_door_whole(r: redis.Redis) -> None:
    value = bytes(range(256)) * 4096  # 1 MiB, every byte value
    r.set("large", value)
    assert r.get("large") == value
    assert r.mget("large", "none", "large") == [value, None, value]


def test_scan_returns_every_key_present_throughout(r: redis.Redis) -> None:
    keys = {f"scan:{i}".encode() for i in range(500)}
    r.mset({k: b"1" for k in keys})
    r.set("other", "1")
    seen: list[bytes] = []
    cursor, calls = 0, 0
    while True:
        cursor, found = r.scan(cursor, match="scan:*", count=10)
        seen += found
        calls += 1
        r.set(f"written-meanwhile-{calls}", "x")  # changes under the cursor
        if cursor == 0:
            break
    assert keys <= set(seen) and b"other" not in seen and calls > 1


def test_info_has_redis_sections_and_field_names(r: redis.Redis) -> None:
    r.set("i", "1")
    r.get("i")
    info = r.info("all")
    for name in ("redis_version", "process_id", "tcp_port", "uptime_in_seconds",
                 "connected_clients", "used_memory", "maxmemory", "total_commands_processed",
                 "keyspace_hits", "keyspace_misses", "expired_keys", "evicted_keys", "role",
                 "connected_slaves"):
        assert name in info, name
    assert info["db0"]["keys"] == 1 and info["role"] == "master"
    assert set(r.info("keyspace")) == {"db0"}


def test_config_get_tells_the_facts_and_set_refuses_what_it_cannot_change(
        r: redis.Redis) -> None:
    got = r.config_get("*")
    assert {"notify-keyspace-events", "save", "appendonly", "maxmemory"} <= set(got)
    assert got["appendonly"] == "no" and int(got["maxmemory"]) == 8 << 20
    with pytest.raises(redis.ResponseError, match="can't set immutable config"):
        r.config_set("maxmemory", "1")
    assert r.config_set("notify-keyspace-events", "") is True


def test_client_id_and_command_are_there_for_client_tools(r: redis.Redis) -> None:
    assert isinstance(r.client_id(), int)
    assert r.command_count() > 30
    table = r.command()
    assert table["get"]["arity"] == 2 and table["set"]["arity"] == -3
    assert "write" in table["set"]["flags"]


def test_hello_3_switches_the_connection_to_resp3(node: Node) -> None:
    c = client(node, protocol=3)
    try:
        c.set("h", "1")
        assert c.get("h") == b"1" and c.get("none") is None
        hello = c.execute_command("HELLO", "3")
        assert hello[b"proto"] == 3 and hello[b"server"] == b"redis"
        assert c.config_get("appendonly") == {"appendonly": "no"}
        with pytest.raises(redis.ResponseError, match="NOPROTO"):
            c.execute_command("HELLO", "4")
    finally:
        c.close()


def test_the_raw_resp3_encoding_of_null_and_map(node: Node) -> None:
    conn = RawConnection(*resp_address(node))
    try:
        conn.send(encode_request("HELLO", "3"))
        assert conn.reply().startswith(b"%7\r\n")
        conn.send(encode_request("GET", "no-such-key"))
        assert conn.reply() == b"_\r\n"
    finally:
        conn.close()


@pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed")
def test_redis_cli_works_unmodified(node: Node) -> None:
    host, port = resp_address(node)

    def cli(*args: str) -> str:
        done = subprocess.run([REDIS_CLI, "-h", host, "-p", str(port), *args],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert cli("PING") == "PONG"
    assert cli("SET", "cli-key", "cli value") == "OK"
    assert cli("GET", "cli-key") == "cli value"
    assert cli("--no-raw", "NOSUCH") == "(error) ERR unknown command 'NOSUCH', with args " \
                                        "beginning with:"
    # the inline form, as typed into a terminal
    done = subprocess.run([REDIS_CLI, "-h", host, "-p", str(port)], input="GET cli-key\n",
                          capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "cli value"


def test_a_quit_closes_the_connection_after_its_ok(node: Node) -> None:
    conn = RawConnection(*resp_address(node))
    try:
        conn.send(encode_request("PING") + encode_request("QUIT") + encode_request("PING"))
        assert conn.reply() == b"+PONG\r\n" and conn.reply() == b"+OK\r\n"
        assert conn.is_closed() and conn.buf == b""
    finally:
        conn.close()


def test_the_door_is_off_unless_asked_for(served: tuple[Node, str]) -> None:
    from node_process import running_node
    from tests_support import new_region_name
    with running_node(new_region_name()) as plain:
        assert plain.ready["resp"] is None
    assert served[0].ready["config"]["requirepass"] == ""


def test_auth_with_requirepass() -> None:
    with resp_node("--requirepass", "s3cret") as (node, _):
        assert node.ready["config"]["requirepass"] == "(set)"  # never the password itself
        host, port = resp_address(node)
        anon = RawConnection(host, port)
        try:
            anon.send(encode_request("GET", "k"))
            assert anon.reply() == b"-NOAUTH Authentication required.\r\n"
            anon.send(encode_request("HELLO", "3"))
            assert anon.reply().startswith(b"-NOAUTH HELLO must be called")
            anon.send(encode_request("AUTH", "wrong"))
            assert anon.reply() == b"-WRONGPASS invalid username-password pair or user is " \
                                   b"disabled.\r\n"
            anon.send(encode_request("AUTH", "s3cret") + encode_request("SET", "k", "v"))
            assert anon.reply() == b"+OK\r\n" and anon.reply() == b"+OK\r\n"
        finally:
            anon.close()
        good = redis.Redis(host=host, port=port, password="s3cret", protocol=2)
        try:
            assert good.get("k") == b"v"
        finally:
            good.close()
        hello = redis.Redis(host=host, port=port, password="s3cret", protocol=3)
        try:
            assert hello.get("k") == b"v"  # HELLO 3 AUTH default s3cret
        finally:
            hello.close()


def test_auth_without_requirepass_says_so_as_redis_does(
        r: redis.Redis, real_redis: tuple[str, int]) -> None:
    peer = redis.Redis(*real_redis, single_connection_client=True)
    try:
        assert run(r, [("AUTH", "x")]) == run(peer, [("AUTH", "x")])
    finally:
        peer.close()


def test_sigterm_closes_the_door_cleanly() -> None:
    with resp_node() as (node, _):
        c = client(node)
        c.set("k", "v")
        stopping, status = node.stop()
        assert status == 0 and stopping["event"] == "stopping"
        with pytest.raises(redis.ConnectionError):
            c.get("k")
        c.close()
