"""Pub/sub through a real node: subscriber processes get channel messages published remotely and
locally, pattern and keyspace subscriptions, keyspace events of a local writer process, and a
subscriber that never reads neither stalls the node nor loses messages uncounted.

Subscribers are forked processes with a Subscriber of their own; they report what they receive
through a pipe. No test sleeps to wait for a state:
  * slow joiner: each subscriber subscribes to PROBE after everything else, and the test
    publishes probes until every subscriber reports one; subscriptions travel in order on one
    connection, so by then all of them are in place at the node;
  * the end of a stream: the test makes one request (a ping) before it publishes STOP. The node
    forwards the events in the rings before it answers any request, so every event written
    before the ping goes out before STOP (the rings keep order only per stripe).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

import pytest
import zmq
from node_process import running_node
from tests_support import ctx

import shmkv
from shmkv.clients import RemoteCache, Subscriber

pytestmark = pytest.mark.multiprocess

WAIT_S = 20.0
PROBE, STOP = "test:probe", "test:stop"
Call = tuple[str, tuple[Any, ...]]  # a Subscriber method and its arguments


# --- worker processes ---------------------------------------------------------------------------
def subscriber_process(conn: Connection, pub_endpoint: str, calls: list[Call], rcv_hwm: int,
                       stall: bool) -> None:
    """Make the subscriptions, report ("synced",) on the first probe, then (after a "read" from
    the parent if stall) report each message until one on STOP or whose data starts with
    b"stop": then ("stopped", dropped, data)."""
    context = zmq.Context()  # never the parent's: a ZeroMQ context does not survive a fork
    try:
        with Subscriber(pub_endpoint, rcv_hwm=rcv_hwm, context=context) as sub:
            for method, args in calls:
                getattr(sub, method)(*args)
            sub.subscribe(PROBE, STOP)
            while (m := sub.get_message(WAIT_S)) is not None and m.channel != PROBE.encode():
                pass
            conn.send(("synced",) if m is not None else ("timeout", sub.dropped))
            if stall:
                conn.recv()  # the socket is not read meanwhile: its queues fill up
            while (m := sub.get_message(WAIT_S)) is not None:
                if m.channel == PROBE.encode():
                    continue
                if m.channel == STOP.encode() or m.data.startswith(b"stop"):
                    conn.send(("stopped", sub.dropped, m.data))
                    return
                conn.send(("message", m.kind, m.channel, m.data, m.pattern, m.collection))
            conn.send(("timeout", sub.dropped))
    finally:
        context.term()


def local_process(conn: Connection, region: str, actions: list[Call]) -> None:
    """Open the region as an unrelated local process would and run Cache calls on it, straight
    to shared memory; report ("done",)."""
    with shmkv.Cache.open(region) as cache:
        for method, args in actions:
            target = cache
            if method.startswith("users."):
                target, method = cache.collection("users"), method.removeprefix("users.")
            getattr(target, method)(*args)
    conn.send(("done",))


@contextmanager
def process(target: Callable[..., None], *args: Any) -> Iterator[Connection]:
    """A forked process running target(conn, *args); yields the parent's end of the pipe."""
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, *args), daemon=True)
    proc.start()
    try:
        yield parent
    finally:
        proc.join(WAIT_S)
        if proc.exitcode is None:
            proc.terminate()
            proc.join()
        parent.close()


def subscriber(node: Any, *calls: Call, rcv_hwm: int = 10_000,
               stall: bool = False) -> Any:
    return process(subscriber_process, node.ready["pub_endpoint"], list(calls), rcv_hwm, stall)


def receive(conn: Connection) -> tuple[Any, ...]:
    assert conn.poll(WAIT_S), "the worker reported nothing in time"
    return conn.recv()  # type: ignore[no-any-return]


def sync(remote: RemoteCache, *subscribers: Connection) -> None:
    """Publish probes until every subscriber has received one (the slow joiner)."""
    waiting = set(subscribers)
    deadline = time.monotonic() + WAIT_S
    while waiting:
        assert time.monotonic() < deadline, "a subscriber never received a probe"
        remote.publish(PROBE, b"")
        for conn in list(waiting):
            if conn.poll(0.02):
                assert conn.recv() == ("synced",)
                waiting.discard(conn)


def messages_until_stop(remote: RemoteCache, conn: Connection) -> tuple[list[tuple], int]:
    """Every message the subscriber reports up to STOP, and its dropped count."""
    remote.ping()  # forwards every event written so far before STOP (module docstring)
    remote.publish(STOP, b"")
    received = []
    while (report := receive(conn))[0] == "message":
        received.append(report[1:])
    assert report[0] == "stopped", report
    return received, report[1]


# --- channels ------------------------------------------------------------------------------------
def test_channel_messages_from_remote_and_local_publishers_reach_every_subscriber(
        region_name) -> None:
    with running_node(region_name) as node, RemoteCache(node.endpoint) as remote, \
            subscriber(node, ("subscribe", ("news",))) as first, \
            subscriber(node, ("subscribe", ("news", "sport"))) as second:
        sync(remote, first, second)
        remote.publish("news", b"from the network")
        with process(local_process, region_name, [("publish", ("news", "from this host")),
                                                  ("publish", ("sport", b"\x00\xff"))]) as local:
            assert receive(local) == ("done",)
        news = [("message", b"news", b"from the network", None, ""),
                ("message", b"news", b"from this host", None, "")]
        assert messages_until_stop(remote, first) == (news, 0)
        received, dropped = messages_until_stop(remote, second)
        assert sorted(received) == sorted([*news, ("message", b"sport", b"\x00\xff", None, "")])
        assert dropped == 0


def test_patterns_match_channels_and_unsubscribed_channels_are_not_received(region_name) -> None:
    calls = [("subscribe", ("user:1", "gone")), ("psubscribe", ("user:*", "log.[ab]")),
             ("unsubscribe", ("gone",))]
    with running_node(region_name) as node, RemoteCache(node.endpoint) as remote, \
            subscriber(node, *calls) as conn:
        sync(remote, conn)
        for channel in ("user:1", "gone", "users", "user:2", "log.a", "log.c", "other"):
            remote.publish(channel, channel)
        received, _ = messages_until_stop(remote, conn)
    assert received == [
        ("message", b"user:1", b"user:1", None, ""),
        ("pmessage", b"user:1", b"user:1", b"user:*", ""),
        ("pmessage", b"user:2", b"user:2", b"user:*", ""),
        ("pmessage", b"log.a", b"log.a", b"log.[ab]", ""),
    ]


# --- keyspace events ------------------------------------------------------------------------------
FILL_VALUE_BYTES = 64 << 10
FILL_KEYS = 400  # 25 MiB of values into a 16 MiB arena: the writer's own sets evict


def test_keyspace_events_of_a_local_writer_reach_a_subscriber(region_name) -> None:
    actions = [("set", ("k1", b"v")), ("delete", ("k1",)), ("set", ("k2", b"v", 1e-9)),
               ("users.set", ("u1", b"v")),
               *[("set", (f"fill:{i}", bytes(FILL_VALUE_BYTES))) for i in range(FILL_KEYS)]]
    calls = [("subscribe_keyspace", ("k*",)), ("subscribe_keyspace", ("u*", "users")),
             ("subscribe_keyspace", ("fill:*",))]
    wanted = {("set", b"k1", ""), ("del", b"k1", ""), ("set", b"k2", ""),
              ("expired", b"k2", ""), ("set", b"u1", "users")}
    with running_node(region_name, "--arena-bytes", "16M") as node, \
            RemoteCache(node.endpoint) as remote, subscriber(node, *calls) as conn:
        sync(remote, conn)
        with process(local_process, region_name, actions) as local:
            assert receive(local) == ("done",)
        # k2 expires when the node's maintenance pass finds it (or a read does): wait for it
        seen: set[tuple[str, bytes, str]] = set()
        evicted: set[bytes] = set()
        deadline = time.monotonic() + WAIT_S
        while not (wanted <= seen and any(key.startswith(b"fill:") for key in evicted)):
            assert time.monotonic() < deadline, f"missing {wanted - seen}, evicted {evicted}"
            kind, key, data, pattern, collection = receive(conn)[1:]
            assert data == kind.encode() and pattern is not None
            if kind == "evicted":  # the fill evicts the oldest keys, u1 as well maybe
                evicted.add(key)
            elif key.startswith(b"fill:"):
                assert kind == "set"
            else:
                seen.add((kind, key, collection))
        assert seen == wanted
        messages_until_stop(remote, conn)  # the rest of the fill's events
        with shmkv.Cache.open(region_name) as cache:
            assert not any(key in cache for key in evicted)
            assert cache.stats()["evictions"] >= len(evicted)


def test_the_node_turns_keyspace_events_on_while_it_runs(region_name) -> None:
    with running_node(region_name) as node, shmkv.Cache.open(region_name) as cache:
        assert cache.events_enabled
        assert node.stop()[1] == 0
        assert not cache.events_enabled


# --- a subscriber that never reads ----------------------------------------------------------------
FLOOD_MESSAGES = 1200
FLOOD_MESSAGE_BYTES = 12_000  # 14 MB in all: far more than the queues and socket buffers hold
# Messages published before waiting for the reading subscriber to catch up: so few that the
# reader never has more queued for it than the node keeps (--pub-hwm below), however late the
# machine schedules it (50 lost messages once on 2 busy cores). libzmq learns what a pipe's
# reader has taken only every half of its high-water mark (protocol.MAX_IN_FLIGHT says the
# same), so up to half of it minus one may count as queued still: half of it, then.
PUB_HWM = 8
WINDOW = PUB_HWM // 2


def test_a_subscriber_that_never_reads_stalls_nobody_and_its_losses_are_counted(
        region_name) -> None:
    with running_node(region_name, "--pub-hwm", str(PUB_HWM)) as node, \
            RemoteCache(node.endpoint) as remote, \
            subscriber(node, ("subscribe", ("flood",)), rcv_hwm=1, stall=True) as slow, \
            subscriber(node, ("subscribe", ("flood",))) as fast:
        sync(remote, slow, fast)
        fast_indices: list[int] = []
        for start in range(0, FLOOD_MESSAGES, WINDOW):
            for i in range(start, start + WINDOW):
                remote.publish("flood", str(i).encode().ljust(FLOOD_MESSAGE_BYTES, b"."))
            while len(fast_indices) < start + WINDOW:  # the reader keeps up all along ...
                fast_indices.append(int(receive(fast)[3].split(b".")[0]))
            remote.set("alive", str(start))  # ... and so do requests
            assert remote.get("alive") == str(start).encode()
        assert fast_indices == list(range(FLOOD_MESSAGES))

        slow.send(("read",))
        # The newest messages are the ones dropped, and a loss shows only when a later message
        # gets through: publish numbered stop markers until one does.
        reports: list[tuple] = []
        stops, deadline = 0, time.monotonic() + WAIT_S
        while not reports or reports[-1][0] == "message":
            assert time.monotonic() < deadline, "no stop marker reached the slow subscriber"
            stops += 1
            remote.publish("flood", f"stop:{stops}")
            while slow.poll(0.02):
                reports.append(slow.recv())
        assert reports[-1][0] == "stopped", reports[-1]
        slow_indices = [int(report[3].split(b".")[0]) for report in reports[:-1]]
        dropped, stop_data = reports[-1][1:]
        assert receive(fast)[0] == "stopped"

    assert slow_indices == sorted(set(slow_indices)) and slow_indices[-1] < FLOOD_MESSAGES
    assert 0 < len(slow_indices) < FLOOD_MESSAGES
    # every message published on the channel up to the stop marker that arrived is either
    # received or counted as dropped, exactly
    stops_sent_before = int(stop_data.split(b":")[1]) - 1
    assert dropped == FLOOD_MESSAGES - len(slow_indices) + stops_sent_before
