"""The RESP door's compiled path (plain GET, SET, INCR, DECR, MGET answered in C) and its Python path
together answer a pipeline exactly as redis-server does, byte for byte, whatever the mix of
commands and however the bytes are split into reads."""

from __future__ import annotations

import bisect
import random

import pytest
from integration.test_resp_support import RawConnection, redis_server, resp_address, resp_node

from shmkv.broker.resp import encode_request as req

KEYS = [f"k{i}" for i in range(6)]
VALUES = [b"", b"1", b"41", b"-7", b"9223372036854775807", b"-9223372036854775808", b"text",
          b"v\r\n\x00", b"x" * 3000]


def random_request(rng: random.Random) -> bytes:
    key = rng.choice(KEYS)
    kind = rng.randrange(12)
    if kind < 3:
        return req(rng.choice(["GET", "get", "Get"]), key)
    if kind < 5:
        return req(rng.choice(["SET", "set"]), key, rng.choice(VALUES))
    if kind < 7:
        return req(rng.choice(["INCR", "DECR", "incr", "decr"]), key)
    if kind < 8:
        return req("MGET", *rng.choices(KEYS, k=rng.randrange(1, 12)))
    return rng.choice([
        req("SET", key, rng.choice(VALUES), "EX", "100"), req("APPEND", key, "9"),
        req("DEL", key), req("EXISTS", key), req("STRLEN", key), req("INCRBY", key, "5"),
        req("GET", key, "extra"), req("MGET", key, rng.choice(KEYS)), b"PING\r\n",
    ])


def exchange(address: tuple[str, int], requests: list[bytes], rng: random.Random) -> bytes:
    """Send the requests in chunks cut anywhere (a request split across reads, several in
    one), reading after each chunk the replies of the requests it completed: all of them, as
    the bytes on the wire."""
    data = b"".join(requests)
    ends = []
    for r in requests:
        ends.append((ends[-1] if ends else 0) + len(r))
    conn = RawConnection(*address)
    try:
        replies, sent, answered = [], 0, 0
        while sent < len(data):
            chunk = rng.choice([1, 7, 100, 1000, 20_000])
            conn.send(data[sent:sent + chunk])
            sent += chunk
            complete = bisect.bisect_right(ends, sent)
            replies += [conn.reply() for _ in range(complete - answered)]
            answered = complete
        return b"".join(replies)
    finally:
        conn.close()


@pytest.mark.parametrize("seed", range(3))
def test_a_random_pipeline_is_answered_byte_for_byte_as_redis_server_answers(seed: int) -> None:
    requests = [random_request(random.Random(seed * 1000 + i)) for i in range(3000)]
    with resp_node() as (node, _), redis_server() as peer:
        ours = exchange(resp_address(node), requests, random.Random(seed))
        theirs = exchange(peer, requests, random.Random(seed))
    assert ours == theirs
