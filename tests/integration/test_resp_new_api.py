"""RESP commands that need Cache calls beyond get/set/incr/delete/expire: SET NX/XX/KEEPTTL/GET,
SETNX, GETDEL, GETEX, APPEND, RENAME, and WRONGTYPE on an array value. Compared with a real
redis-server reply for reply."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from integration.test_resp import run
from integration.test_resp_support import client, redis, redis_server, resp_node
from node_process import Node

import shmkv

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Node, str]]:
    with resp_node("--arena-bytes", "4M") as found:
        yield found


@pytest.fixture(scope="module")
def real_redis() -> Iterator[tuple[str, int]]:
    with redis_server() as address:
        yield address


def same_as_redis(served: tuple[Node, str], real_redis: tuple[str, int],
                  script: list[tuple[Any, ...]]) -> None:
    ours = client(served[0], protocol=2)
    theirs = redis.Redis(*real_redis, single_connection_client=True, protocol=2)
    try:
        ours.flushall()
        theirs.flushall()
        got, expected = run(ours, script), run(theirs, script)
    finally:
        ours.close()
        theirs.close()
    assert [(cmd, g, e) for cmd, g, e in zip(script, got, expected) if g != e] == []


def test_set_with_nx_xx_keepttl_and_get(served: tuple[Node, str],
                                        real_redis: tuple[str, int]) -> None:
    same_as_redis(served, real_redis, [
        ("SET", "k", "1", "NX"), ("SET", "k", "2", "NX"), ("GET", "k"),
        ("SET", "k", "3", "XX"), ("SET", "none", "3", "XX"), ("EXISTS", "none"),
        ("SET", "k", "4", "GET"), ("SET", "fresh", "1", "GET"), ("GET", "fresh"),
        ("SET", "k", "5", "NX", "GET"), ("SET", "k", "6", "XX", "GET"), ("GET", "k"),
        ("SET", "k", "7", "NX", "XX"), ("SET", "k", "7", "EX", "10", "KEEPTTL"),
        ("EXPIRE", "k", "100"), ("SET", "k", "8", "KEEPTTL"), ("TTL", "k"),
        ("SET", "k", "9"), ("TTL", "k"),
        ("SETNX", "n", "1"), ("SETNX", "n", "2"), ("GET", "n"),
    ])


def test_getdel(served: tuple[Node, str], real_redis: tuple[str, int]) -> None:
    same_as_redis(served, real_redis, [
        ("SET", "k", "v"), ("GETDEL", "k"), ("GETDEL", "k"), ("EXISTS", "k")])


def test_getex(served: tuple[Node, str], real_redis: tuple[str, int]) -> None:
    same_as_redis(served, real_redis, [
        ("SET", "k", "v"), ("GETEX", "k"), ("TTL", "k"), ("GETEX", "k", "EX", "100"),
        ("TTL", "k"), ("GETEX", "k", "PERSIST"), ("TTL", "k"), ("GETEX", "k", "PX", "100000"),
        ("TTL", "k"), ("GETEX", "k", "EX", "0"), ("GETEX", "k", "FOO"),
        ("GETEX", "none", "EX", "10"), ("GETEX", "k", "EXAT", "1"), ("EXISTS", "k")])


def test_append(served: tuple[Node, str], real_redis: tuple[str, int]) -> None:
    same_as_redis(served, real_redis, [
        ("APPEND", "k", "ab"), ("APPEND", "k", "cde"), ("GET", "k"), ("STRLEN", "k")])


def test_rename(served: tuple[Node, str], real_redis: tuple[str, int]) -> None:
    same_as_redis(served, real_redis, [
        ("SET", "a", "1"), ("EXPIRE", "a", "100"), ("RENAME", "a", "b"), ("GET", "b"),
        ("TTL", "b"), ("EXISTS", "a"), ("RENAME", "a", "c"), ("SET", "c", "2"),
        ("RENAME", "b", "c"), ("GET", "c"), ("RENAMENX", "c", "d"), ("SET", "e", "3"),
        ("RENAMENX", "d", "e"), ("GET", "d")])


def test_an_array_value_is_shmkv_array_and_string_commands_answer_wrongtype(
        served: tuple[Node, str]) -> None:
    local = shmkv.Cache.open(served[1])
    c = client(served[0], protocol=2)
    try:
        local.set_array("arr", np.arange(4))
        assert c.type("arr") == b"shmkv-array"
        for args in (("GET", "arr"), ("APPEND", "arr", "x"), ("STRLEN", "arr"),
                     ("INCR", "arr"), ("GETDEL", "arr")):
            with pytest.raises(redis.ResponseError, match="^WRONGTYPE Operation against a key "
                                                          "holding the wrong kind of value$"):
                c.execute_command(*args)
        assert c.mget("arr", "none") == [None, None]  # as Redis's MGET of a list
        assert local.get_array("arr").tolist() == [0, 1, 2, 3]
    finally:
        c.close()
        local.close()
