"""The node under hostile clients, over real sockets: oversize messages and batches, clients
that never read their replies, and requests stuck behind a lock that a stopped local process
holds. Memory is the node's own, read from /proc/<pid>/status (VmHWM: the peak)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import zmq
from node_process import dealer, running_node
from tests_support import scrape

from shmkv.broker import batches, protocol
from shmkv.clients import RemoteCache
from shmkv.errors import LockTimeout, RequestTooLarge, ValueTooLarge

WAIT_S = 20
MB = 1 << 20
# What the node may grow by while a hostile client does its worst. Without the limits each
# case below takes it to hundreds of MB; with them, the most is libzmq's own copy of a
# message, which it holds whole before the node sees any of it (64 bytes a frame: ~64 MB for
# the million empty frames below, freed once the node has dropped them).
GROWTH_BOUND_BYTES = 100 * MB


def memory(pid: int, field: str = "VmRSS") -> int:
    """A /proc/<pid>/status size field (VmRSS now, VmHWM the peak), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def reply_to(sock: zmq.Socket) -> protocol.Reply:
    assert sock.poll(WAIT_S * 1000), "no reply from the node"
    return protocol.decode_reply(sock.recv_multipart())


def request(request_id: int, op: str, frames: list[bytes], **fields: object) -> list[bytes]:
    return protocol.encode_request(request_id, op, fields, frames)


def requests_handled(node) -> float:
    port = int(node.ready["metrics"].rsplit(":", 1)[1])
    return sum(v for (name, _), v in scrape(port).items() if name == "shmkv_requests_total")


# --- message size, frames, batches ----------------------------------------------------------
@pytest.mark.multiprocess
def test_a_message_of_a_million_frames_is_refused_without_the_node_growing(region_name) -> None:
    with running_node(region_name) as node, dealer(node.endpoint) as hostile:
        pid = node.ready["pid"]
        before = memory(pid)
        hostile.send_multipart(request(7, "get", [b"k"]) + [b""] * 1_000_000)
        reply = reply_to(hostile)
        assert (reply.id, reply.error) == (7, "RequestTooLarge")
        assert "1000002 frames" in reply.message and "max_frames" in reply.message
        assert memory(pid, "VmHWM") - before < GROWTH_BOUND_BYTES
        with RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:
            remote.set("k", b"v")
            assert remote.get("k") == b"v"


@pytest.mark.multiprocess
def test_a_value_larger_than_the_arena_is_refused_before_it_is_sent(region_name) -> None:
    with running_node(region_name, "--arena-bytes", "8M") as node:
        pid = node.ready["pid"]
        before = memory(pid)
        with RemoteCache(node.endpoint, timeout_s=WAIT_S, retries=0) as remote:
            limit = remote.ping()["limits"]["max_message_bytes"]
            assert limit == 8 * MB + protocol.MESSAGE_HEADROOM_BYTES
            with pytest.raises(ValueTooLarge, match="max_message_bytes"):
                remote.set("big", bytes(100 * MB))
            with pytest.raises(RequestTooLarge):
                remote.set_many({"a": b"1", "big": bytes(limit + 1)})
            # a raw client that sends it anyway is disconnected by libzmq while the frame
            # arrives: the node never holds it
            with dealer(node.endpoint) as hostile:
                hostile.send_multipart(request(1, "set", [b"big", bytes(100 * MB)]))
                assert not hostile.poll(500)
            remote.set("small", b"v")
            assert remote.get("small") == b"v"
        assert memory(pid, "VmHWM") - before < GROWTH_BOUND_BYTES


@pytest.mark.multiprocess
def test_a_get_many_whose_reply_is_over_the_limit_gets_an_error_naming_it(region_name) -> None:
    with running_node(region_name, "--arena-bytes", "8M") as node:
        pid = node.ready["pid"]
        with RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:
            remote.set("big", bytes(4 * MB))
            before = memory(pid)
            with pytest.raises(RequestTooLarge, match="max_reply_bytes"):
                remote.get_many(["big"] * 40)
            assert memory(pid, "VmHWM") - before < GROWTH_BOUND_BYTES
            assert remote.get_many(["big", "big"]) == {"big": bytes(4 * MB)}


@pytest.mark.multiprocess
def test_a_batch_of_too_many_keys_is_refused_by_the_client_and_by_the_node(region_name) -> None:
    keys = [b"k%d" % i for i in range(protocol.MAX_BATCH_KEYS + 1)]
    with running_node(region_name) as node, dealer(node.endpoint) as hostile:
        with RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:
            with pytest.raises(RequestTooLarge, match=str(protocol.MAX_BATCH_KEYS)):
                remote.get_many(keys)
            with pytest.raises(RequestTooLarge):
                remote.set_many(dict.fromkeys(keys, b"v"))
            assert len(remote) == 0
        hostile.send_multipart(request(3, "get_many", protocol.pack(keys)))
        reply = reply_to(hostile)
        assert (reply.id, reply.error) == (3, "RequestTooLarge")


# --- clients that never read ----------------------------------------------------------------
@pytest.mark.multiprocess
def test_a_client_that_never_reads_its_replies_holds_little_of_the_node(region_name) -> None:
    sends = 400
    with running_node(region_name, "--arena-bytes", "8M") as node, \
            dealer(node.endpoint) as hostile:
        pid = node.ready["pid"]
        with RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:
            remote.set("big", bytes(MB))
            before = memory(pid)
            handled = requests_handled(node)
            for i in range(sends):
                hostile.send_multipart(request(i + 1, "get", [b"big"]))
            wait_until(lambda: requests_handled(node) >= handled + sends,
                       "the node has answered every request")
            assert memory(pid, "VmHWM") - before < GROWTH_BOUND_BYTES
            assert remote.get("big") == bytes(MB)


# --- a lock held by a stopped local process -------------------------------------------------
HOLDER = textwrap.dedent("""
    import os, signal, sys
    import shmkv
    cache = shmkv.Cache.open(sys.argv[1])
    if sys.argv[2] == "<arena>":
        cache._locks.acquire_arena()
    else:
        cache._lock_and_find(sys.argv[2].encode())  # holds the key's stripe lock
    print("holding", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
""")


@contextmanager
def stopped_lock_holder(region: str, key: str) -> Iterator[int]:
    """A local process that holds key's stripe lock (key "<arena>": the arena lock) and is
    stopped (SIGSTOP); killed after."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, region, key],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"  # type: ignore[union-attr]
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]


@pytest.mark.multiprocess
def test_a_request_behind_a_stopped_holder_gets_lock_timeout_before_its_client_gives_up(
        region_name) -> None:
    with running_node(region_name) as node, stopped_lock_holder(region_name, "held") as pid:
        # 1 s: shorter than the node's 5 s lock timeout, so only the request's deadline helps
        with RemoteCache(node.endpoint, timeout_s=1.0, retries=0) as remote:
            with pytest.raises(LockTimeout, match=f"pid {pid}"):
                remote.set("held", b"v")
            assert remote.get("held") is None  # reads take no lock


@pytest.mark.multiprocess
def test_a_request_waiting_for_a_lock_does_not_hold_up_the_others(region_name) -> None:
    with running_node(region_name) as node, stopped_lock_holder(region_name, "held"), \
            dealer(node.endpoint) as waiting, \
            RemoteCache(node.endpoint, timeout_s=1.0, retries=0) as other:
        waiting.send_multipart(request(1, "set", [b"held", b"v"], timeout_ms=3000))
        # Until the set is answered (LockTimeout, at 80% of its 3 s), every get (lock-free) is
        # served within 1 s: a node that waited for the lock instead would fail them all
        # with RemoteUnavailable for the node's 5 s lock timeout.
        served = 0
        while not waiting.poll(0):
            assert other.get(f"free{served}") is None
            served += 1
        reply = protocol.decode_reply(waiting.recv_multipart())
        assert (reply.id, reply.error) == (1, "LockTimeout")
        assert served > 10


@pytest.mark.multiprocess
def test_a_stopped_holder_of_the_arena_lock_does_not_stop_the_node_serving_reads(
        region_name) -> None:
    # The loop's maintenance takes the arena lock every maintain_interval_s (0.1 s): with the
    # node's lock timeout it would stall the loop for 5 s each time.
    with running_node(region_name) as node:
        with RemoteCache(node.endpoint, timeout_s=WAIT_S) as setup:
            setup.set("k", b"v")
        with stopped_lock_holder(region_name, "<arena>"), \
                RemoteCache(node.endpoint, timeout_s=1.0, retries=0) as remote:
            deadline = time.monotonic() + 3  # several maintenance intervals
            while time.monotonic() < deadline:
                assert remote.get("k") == b"v"
            with pytest.raises(LockTimeout, match="arena lock"):
                remote.set("new", b"v")


@pytest.mark.multiprocess
def test_a_request_parked_in_a_batch_holds_its_reply_and_the_requests_on_its_key(
        region_name) -> None:
    batch = batches.encode(batches.REQUEST_FORM, [
        request(1, "set", [b"held", b"v"], timeout_ms=2000),  # parked: the lock is held
        request(2, "get", [b"free"], timeout_ms=2000),        # another key: run at once
        request(3, "get", [b"held"], timeout_ms=2000),        # its key: parked behind it,
    ])                                                        # run once the set is answered
    with running_node(region_name) as node, stopped_lock_holder(region_name, "held"), \
            dealer(node.endpoint) as waiting, \
            RemoteCache(node.endpoint, timeout_s=1.0, retries=0) as other:
        waiting.send_multipart(batch)
        served = 0
        while not waiting.poll(0):  # the node serves others meanwhile
            assert other.get(f"free{served}") is None
            served += 1
        frames = waiting.recv_multipart()
        replies = [protocol.decode_reply(entry)
                   for entry in batches.decode(frames, batches.REPLY_FORM)]
        assert [(r.id, r.error) for r in replies] == \
            [(1, "LockTimeout"), (2, None), (3, None)]
        assert served > 10
