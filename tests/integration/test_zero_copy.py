"""Zero-copy sends of large values by a real node (broker/zerocopy.py): a get's value goes from
a pin on the arena, which stays while libzmq sends it and goes once it is sent, dropped (its
client gone) or the node stops.

A reply is held in flight by a client that does not read: its DEALER takes at most RCVHWM
messages (and the one it is decoding) off a small socket buffer, so the node's I/O thread
holds the rest of its replies, and their pins, until the client reads or goes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import zmq
from integration.test_node_limits import stopped_lock_holder
from node_process import dealer, running_node
from shmkv.broker import protocol
from shmkv.clients import RemoteCache
from tests_support import until

import shmkv
from shmkv import layout as L

pytestmark = pytest.mark.multiprocess

WAIT_S = 30.0
MIB = 1 << 20
LARGE_BYTES = 16 * MIB  # more than the socket buffers between node and client hold
HELD_REPLIES = 3  # a DEALER with RCVHWM 1 leaves at least one of three replies to the node


def pins(c: shmkv.Cache) -> int:
    """Pins held in the region by live processes (this test's process holds none)."""
    return sum(int(r["pins"]) for r in c._region.pins.records() if r["owner_alive"])


@contextmanager
def slow_reader(endpoint: str) -> Iterator[zmq.Socket]:
    """A DEALER that takes one reply off the wire and leaves the rest to the node."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 64 << 10)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close()


def ask(sock: zmq.Socket, op: str, key: bytes, c: shmkv.Cache,
        count: int = HELD_REPLIES) -> None:
    """Send count requests, then a set of a marker key; return once the node has run them
    all (it runs a client's requests in order), its replies are queued."""
    for request_id in range(1, count + 1):
        sock.send_multipart(protocol.encode_request(request_id, op, {}, [key]))
    c.delete(b"marker")
    sock.send_multipart(protocol.encode_request(count + 1, "set", {}, [b"marker", b"1"]))
    until(lambda: c.get(b"marker") is not None, "the node ran the requests")


def replies(sock: zmq.Socket, count: int = HELD_REPLIES) -> list[protocol.Reply]:
    """The replies to ask()'s requests (the marker's left out)."""
    found = []
    for _ in range(count + 1):
        assert sock.poll(int(WAIT_S * 1000)), "no reply from the node"
        found.append(protocol.decode_reply(sock.recv_multipart()))
    assert found[-1].error is None
    return found[:-1]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_large_get_is_sent_from_a_pin_that_goes_once_it_is_sent(region_name, workers) -> None:
    value = bytes(range(256)) * (LARGE_BYTES // 256)
    with running_node(region_name, "--arena-bytes", "128M", "--workers", workers) as node, \
            shmkv.Cache.open(region_name) as c:
        c.set(b"big", value)
        version = c.get_with_version(b"big")[1]  # type: ignore[index]
        with slow_reader(node.endpoint) as sock:
            ask(sock, "get", b"big", c)
            assert pins(c) >= 1, "the node holds a pin on the value it sends"
            assert [(r.result, bytes(r.frames[0])) for r in replies(sock)] == \
                [(True, value)] * HELD_REPLIES
            ask(sock, "get_with_version", b"big", c, 1)
            [reply] = replies(sock, 1)
            assert (reply.result, bytes(reply.frames[0])) == (version, value)
        until(lambda: pins(c) == 0, "the node dropped its pins once the replies were sent")
        with RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:  # small ones, as before
            c.set(b"small", b"s" * 100)
            assert remote.get(b"small") == b"s" * 100 and remote.get(b"absent") is None
            assert remote.get(b"big") == value
        until(lambda: pins(c) == 0, "no pin left")


def test_a_large_array_is_sent_from_a_pin(region_name) -> None:
    arr = np.arange(LARGE_BYTES // 8, dtype=np.float64).reshape(-1, 1024)
    with running_node(region_name, "--arena-bytes", "128M") as node, \
            shmkv.Cache.open(region_name) as c:
        c.set_array(b"arr", arr)
        with slow_reader(node.endpoint) as sock:
            ask(sock, "get_array", b"arr", c)
            assert pins(c) >= 1, "the node holds a pin on the array it sends"
            for reply in replies(sock):
                assert reply.result == {"dtype": "<f8", "shape": list(arr.shape)}
                assert bytes(reply.frames[0]) == arr.tobytes()
        until(lambda: pins(c) == 0, "the node dropped its pins once the replies were sent")
        with RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:
            np.testing.assert_array_equal(remote.get_array(b"arr"), arr)
            with pytest.raises(TypeError):
                remote.get_array(b"marker")  # a value stored by set(): as before
        until(lambda: pins(c) == 0, "no pin left")


def test_an_overwrite_or_delete_while_a_value_is_sent_does_not_change_the_bytes_sent(
        region_name) -> None:
    old, new = b"o" * LARGE_BYTES, b"n" * LARGE_BYTES
    with running_node(region_name, "--arena-bytes", "128M") as node, \
            shmkv.Cache.open(region_name) as c:
        c.set(b"big", old)
        with slow_reader(node.endpoint) as sock:
            ask(sock, "get", b"big", c)
            assert pins(c) >= 1, "the node holds a pin on the value it sends"
            c.set(b"big", new)  # copy-on-write: a new block
            c.delete(b"big")  # the new block is freed, the pinned one retired
            for i in range(4):  # would reuse the old block, were it freed
                c.set(f"other{i}".encode(), new)
            assert [bytes(r.frames[0]) == old for r in replies(sock)] == [True] * HELD_REPLIES
        until(lambda: pins(c) == 0, "the node dropped its pins once the replies were sent")
        until(lambda: c.stats()["retired_blocks"] == 0, "the retired block was freed")


def test_a_client_that_disconnects_mid_transfer_leaves_no_pin(region_name) -> None:
    with running_node(region_name, "--arena-bytes", "128M") as node, \
            shmkv.Cache.open(region_name) as c:
        c.set(b"big", b"v" * LARGE_BYTES)
        with slow_reader(node.endpoint) as sock:
            ask(sock, "get", b"big", c)
            assert pins(c) >= 1, "the node holds a pin on the value it sends"
        # the client has gone; nobody asks the node anything more
        until(lambda: pins(c) == 0, "the node dropped the pins of the replies it dropped")
        c.delete(b"big")
        assert c.stats()["retired_blocks"] == 0


def test_a_node_stopped_while_it_sends_a_large_value_closes_the_region_cleanly(
        region_name) -> None:
    with running_node(region_name, "--arena-bytes", "128M") as node:
        with shmkv.Cache.open(region_name) as c, slow_reader(node.endpoint) as sock:
            c.set(b"big", b"v" * LARGE_BYTES)
            ask(sock, "get", b"big", c)
            assert pins(c) >= 1, "the node holds a pin on the value it sends"
            c.close()  # the node's handles are the last: it marks the region clean
            event, status = node.stop(signal.SIGTERM)
        assert (event["event"], status) == ("stopping", 0)
        with open(f"/dev/shm/{region_name}", "rb") as f:
            f.seek(L.H_CLEAN_MARKER)
            assert f.read(8) != bytes(8), "the node's last handle closed and marked it clean"
        with shmkv.Cache.open(region_name) as c:
            assert pins(c) == 0 and c.get(b"big") == b"v" * LARGE_BYTES


def test_large_gets_parked_behind_a_busy_lock_are_each_sent_when_it_frees(region_name) -> None:
    # A write waits apart for a lock a stopped process holds, and the gets of its key wait
    # behind it; once the lock frees they are all run, then all answered (waits.py).
    value = b"n" * LARGE_BYTES
    with running_node(region_name, "--arena-bytes", "128M") as node, \
            shmkv.Cache.open(region_name) as c, dealer(node.endpoint) as sock:
        with stopped_lock_holder(region_name, "big"):
            sock.send_multipart(protocol.encode_request(1, "set", {}, [b"big", value]))
            for request_id in range(2, 5):
                sock.send_multipart(protocol.encode_request(request_id, "get", {}, [b"big"]))
            assert not sock.poll(200), "answered while the lock was held"
        # the holder is gone (killed): the next holder of the lock repairs what it left
        found = []
        for _ in range(4):
            assert sock.poll(int(WAIT_S * 1000)), "no reply from the node"
            found.append(protocol.decode_reply(sock.recv_multipart()))
        assert [r.error for r in found] == [None] * 4
        assert [bytes(r.frames[0]) == value for r in found[1:]] == [True] * 3
        until(lambda: pins(c) == 0, "the node dropped its pins once the replies were sent")


def test_zero_copy_sends_can_be_turned_off(region_name) -> None:
    with running_node(region_name, "--arena-bytes", "128M",
                      env={**os.environ, "SHMKV_ZERO_COPY_MIN_BYTES": "0"}) as node, \
            shmkv.Cache.open(region_name) as c:
        c.set(b"big", b"v" * LARGE_BYTES)
        with slow_reader(node.endpoint) as sock:
            ask(sock, "get", b"big", c)
            assert sock.poll(int(WAIT_S * 1000))  # one reply is in: the others were copied
            assert pins(c) == 0
            assert [bytes(r.frames[0]) == b"v" * LARGE_BYTES for r in replies(sock)] == \
                [True] * HELD_REPLIES
