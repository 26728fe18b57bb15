"""What a RESP client cannot do to the node: malformed, truncated and oversized requests close
that connection only; a client that never reads what it asked for is cut off, and the node's
memory stays bounded."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator

import pytest
from integration.test_resp_support import RawConnection, client, redis, resp_address, resp_node
from node_process import Node

from shmkv.broker.resp import encode_request
from shmkv.broker.resp_door import MAX_OUTPUT_BYTES

pytestmark = pytest.mark.multiprocess
FUZZ_CASES = 300
CLOSE_WAIT_S = 10


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with resp_node("--arena-bytes", "16M") as (found, _):
        yield found


@pytest.fixture
def canary(node: Node) -> Iterator[redis.Redis]:
    """A well-behaved client that must be served throughout."""
    c = client(node, protocol=2)
    c.set("canary", "alive")
    try:
        yield c
    finally:
        c.close()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def send_and_see_closed(node: Node, data: bytes) -> bytes:
    """Send data, end our side, and read until the node closes: what it answered."""
    with socket.create_connection(resp_address(node), timeout=CLOSE_WAIT_S) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return b""  # closed while we sent: what we wanted to see
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


def fuzz_input(rng: random.Random) -> bytes:
    valid = encode_request(*[rng.randbytes(rng.randint(0, 20))
                             for _ in range(rng.randint(1, 5))])
    kind = rng.randrange(4)
    if kind == 0:  # random bytes, often with protocol characters
        return bytes(rng.choice(b"*$:\r\n-0123456789abcGETSET \x00\xff")
                     for _ in range(rng.randint(1, 200)))
    if kind == 1:  # a valid request cut anywhere
        return valid[:rng.randrange(len(valid))]
    if kind == 2:  # a valid request with bytes changed
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    return rng.randbytes(rng.randint(1, 4096))


def test_random_and_truncated_input_never_stops_the_node(node: Node,
                                                         canary: redis.Redis) -> None:
    rng = random.Random(20261130)
    for case in range(FUZZ_CASES):
        data = fuzz_input(rng)
        send_and_see_closed(node, data)  # returns only once the node has closed it
        assert canary.get("canary") == b"alive", (case, data)
    assert node.process.poll() is None


@pytest.mark.parametrize("request_bytes, error", [
    (b"*1\r\n$%d\r\n" % ((512 << 20) + 1), b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*2000000000\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"*1\r\n:1\r\n", b"-ERR Protocol error: expected '$', got ':'\r\n"),
    (b"*1\r\n$" + b"9" * (70 << 10), b"-ERR Protocol error: too big bulk count string\r\n"),
])
def test_an_oversized_or_malformed_request_closes_that_connection_only(
        node: Node, canary: redis.Redis, request_bytes: bytes, error: bytes) -> None:
    conn = RawConnection(*resp_address(node))
    try:
        conn.send(encode_request("PING") + request_bytes)
        assert conn.reply() == b"+PONG\r\n"
        assert conn.reply() == error
        assert conn.is_closed()
    finally:
        conn.close()
    assert canary.get("canary") == b"alive"


def test_a_client_that_never_reads_is_cut_off_and_the_node_stays_bounded(
        node: Node, canary: redis.Redis) -> None:
    value = b"v" * (1 << 20)
    canary.set("big", value)
    pid = node.ready["pid"]
    before = rss_bytes(pid)
    # Ten times the cap in replies, asked for and never read
    requests = encode_request("GET", "big") * (10 * MAX_OUTPUT_BYTES // len(value))
    with socket.create_connection(resp_address(node), timeout=CLOSE_WAIT_S) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            sock.sendall(requests)
        except (BrokenPipeError, ConnectionResetError):
            pass
        # The node reads everything and cuts us off: the end of the stream, or a reset
        closed = False
        try:
            while sock.recv(1 << 20):
                pass
            closed = True
        except ConnectionResetError:
            closed = True
        assert closed
    grown = rss_bytes(pid) - before
    assert grown < 3 * MAX_OUTPUT_BYTES, f"the node grew by {grown} bytes"
    assert canary.get("canary") == b"alive"
    info = canary.info("stats")
    assert info["total_connections_received"] >= 2


def test_a_value_larger_than_the_output_cap_is_served_whole() -> None:
    """The cap bounds what a client leaves unread, not one reply: Redis serves a GET of a
    value of any size."""
    value = bytes(range(256)) * ((MAX_OUTPUT_BYTES + (8 << 20)) // 256)
    with resp_node("--arena-bytes", "192M") as (node, _):
        c = client(node, protocol=2, socket_timeout=60)
        try:
            c.set("big", value)
            assert c.get("big") == value
            with c.pipeline(transaction=False) as p:
                p.get("big")
                p.strlen("big")
                assert p.execute() == [value, len(value)]
        finally:
            c.close()
