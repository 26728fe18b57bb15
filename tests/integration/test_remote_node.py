"""RemoteCache against real and fake nodes: the endpoint a node reports, answering a request in
progress before a stop, timeouts, retries (Lazy Pirate) and late replies."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from fake_node import FakeNode
from node_process import dealer, running_node, start_node
from tests_support import new_region_name, scrape

import shmkv
from shmkv.broker import protocol
from shmkv.clients import RemoteCache

WAIT_S = 10


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition on another process (there is nothing to block on), up to WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.001)


@contextmanager
def stripe_lock_held(cache: shmkv.Cache, key: bytes) -> Iterator[Callable[[], bool]]:
    """Hold the writer lock of key's stripe, as a slow local writer would, and yield a function
    that tells whether anyone sleeps waiting for it. This reaches into the engine on purpose: no
    public API holds a lock, and a lock is the one way to keep a request of the node in
    progress for as long as a test needs."""
    _, _, stripe, _, _ = cache._lock_and_find(key)
    try:
        yield lambda: cache._locks.stripe_has_waiters(stripe)
    finally:
        cache._locks.release_stripe(stripe)


@contextmanager
def unused_endpoint() -> Iterator[str]:
    """A TCP endpoint nobody listens on: the port stays bound (not listening) meanwhile, so
    that no one else can take it, and connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"tcp://127.0.0.1:{s.getsockname()[1]}"


# --- a real node ----------------------------------------------------------------------------
@pytest.mark.multiprocess
def test_ready_event_reports_the_endpoint_actually_bound(region_name) -> None:
    with running_node(region_name) as node:
        assert node.ready["config"]["bind"] == "tcp://127.0.0.1:*"
        assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", node.endpoint)
        with RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:
            assert remote.ping()["protocol_version"] == protocol.PROTOCOL_VERSION


@pytest.mark.multiprocess
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_node_answers_a_request_in_progress_before_it_stops(region_name, stop) -> None:
    with running_node(region_name) as node, shmkv.Cache.open(region_name) as local, \
            dealer(node.endpoint) as sock:
        with stripe_lock_held(local, b"k") as waiting:
            sock.send_multipart(protocol.encode_request(1, "set", {}, [b"k", b"acknowledged"]))
            wait_until(waiting, "the node's set waits for the stripe lock")
            node.process.send_signal(stop)  # arrives while the request is in progress
        assert sock.poll(WAIT_S * 1000), "the request in progress was not answered"
        reply = protocol.decode_reply(sock.recv_multipart())
        assert (reply.id, reply.ok) == (1, True), reply.message
        line = node.process.stdout.readline()
        assert json.loads(line) == {"event": "stopping", "signal": signal.Signals(stop).name}
        assert node.process.wait(timeout=WAIT_S) == 0
        assert local.get("k") == b"acknowledged"


@pytest.mark.multiprocess
def test_node_refuses_to_start_on_an_endpoint_in_use_and_creates_no_region(region_name) -> None:
    with running_node(region_name) as first:
        other = new_region_name()
        try:
            process = start_node(other, "--bind", first.endpoint)
            _, err = process.communicate(timeout=WAIT_S)
            assert process.returncode == 1
            assert json.loads(err)["error"] == "ShmKVError" and first.endpoint in err
            with pytest.raises(shmkv.RegionNotFound):
                shmkv.Cache.open(other)
        finally:
            shmkv.Cache.unlink(other)


# --- no node --------------------------------------------------------------------------------
def test_node_serves_request_counts_and_region_counters_to_prometheus(region_name) -> None:
    with running_node(region_name) as node, RemoteCache(node.endpoint) as remote:
        remote.set("k", b"v")
        remote.get("k")
        remote.get("absent")
        with pytest.raises(shmkv.NotAnInteger):
            remote.incr("k")
        host, port = node.ready["metrics"].rsplit(":", 1)
        # the node counts a request just after its reply is sent: wait for the last count
        incr_refused = ("shmkv_requests_total", (("command", "incr"), ("outcome", "NotAnInteger")))
        deadline = time.monotonic() + WAIT_S
        while incr_refused not in (samples := scrape(int(port), host)):
            assert time.monotonic() < deadline, "the node did not count the last request"
            time.sleep(0.01)
    assert samples[("shmkv_requests_total", (("command", "get"), ("outcome", "ok")))] == 2
    assert samples[incr_refused] == 1
    assert samples[("shmkv_request_duration_seconds_count", (("command", "set"),))] == 1
    region = {name: value for (name, labels), value in samples.items() if not labels}
    assert region["shmkv_region_keys"] == 1


@pytest.mark.parametrize("retries", [0, 2])
def test_remote_cache_raises_remote_unavailable_after_its_retries(retries) -> None:
    timeout_s = 0.05
    with unused_endpoint() as endpoint, \
            RemoteCache(endpoint, timeout_s=timeout_s, retries=retries) as remote:
        started = time.monotonic()
        with pytest.raises(shmkv.RemoteUnavailable, match=f"{retries + 1} attempt") as info:
            remote.get("k")
        assert time.monotonic() - started >= timeout_s * (retries + 1)
        assert isinstance(info.value, ConnectionError)
        with pytest.raises(shmkv.RemoteUnavailable):  # and again, not some other error
            remote.set("k", b"v")


def test_remote_cache_refuses_a_malformed_endpoint_or_timeout() -> None:
    with pytest.raises(ValueError, match="cannot connect"):
        RemoteCache("not an endpoint")
    with pytest.raises(ValueError, match="timeout_s"):
        RemoteCache("tcp://127.0.0.1:1", timeout_s=0)
    with pytest.raises(ValueError, match="retries"):
        RemoteCache("tcp://127.0.0.1:1", retries=-1)


# --- a fake node that replies late ----------------------------------------------------------
def answered(r: protocol.Request) -> list[protocol.Reply]:
    return [protocol.Reply(r.id, True, [b"v"])]


# A connection's first call goes the usual way (after a ping); a later one alone goes
# Connection._call_alone's, which hands a request whose reply is late to the usual way.
@pytest.mark.parametrize("earlier", [[], [answered]], ids=["first call", "later call"])
def test_a_lost_request_is_sent_again_on_a_new_socket_with_the_same_id(earlier) -> None:
    node = FakeNode([*earlier, None, answered])
    try:
        with RemoteCache(node.endpoint, timeout_s=0.2, retries=1) as remote:
            for _ in range(len(earlier) + 1):
                assert remote.get("k") == b"v"
        (first_peer, first_id, _), (second_peer, second_id, _) = node.received[-2:]
        assert first_id == second_id and first_peer != second_peer
    finally:
        node.close()


@pytest.mark.parametrize("earlier", [[], [answered]], ids=["first call", "later call"])
def test_a_request_unanswered_raises_after_its_attempts_what_its_command_allows(
        earlier) -> None:
    """A get is sent again, then RemoteUnavailable; a getdel is not (a second may not do
    what the first did): OutcomeUnknown."""
    node = FakeNode([*earlier, None, None, None])
    try:
        with RemoteCache(node.endpoint, timeout_s=0.1, retries=1) as remote:
            for _ in earlier:
                assert remote.get("k") == b"v"
            with pytest.raises(shmkv.RemoteUnavailable, match="2 attempt"):
                remote.get("k")
            with pytest.raises(shmkv.OutcomeUnknown, match="getdel"):
                remote.getdel("k")
        assert [op for _, _, op in node.received[len(earlier):]] == ["get", "get", "getdel"]
    finally:
        node.close()


def test_a_reply_with_another_request_id_is_discarded() -> None:
    def late_then_right(r: protocol.Request) -> list[protocol.Reply]:
        return [protocol.Reply(r.id - 1, True, [b"stale"]), protocol.Reply(r.id, False, [])]

    node = FakeNode([lambda r: [protocol.Reply(r.id, True)], late_then_right])
    try:
        with RemoteCache(node.endpoint, timeout_s=WAIT_S, retries=0) as remote:
            remote.set("k", b"v")
            assert remote.get("k", b"default") == b"default"
    finally:
        node.close()


def test_an_error_reply_is_raised_as_its_class_and_message() -> None:
    def refuse(r: protocol.Request) -> list[protocol.Reply]:
        return [protocol.error_reply(r.id, shmkv.RegionFull("make the arena larger"))]

    node = FakeNode([refuse])
    try:
        with RemoteCache(node.endpoint, timeout_s=WAIT_S, retries=0) as remote:
            with pytest.raises(shmkv.RegionFull, match="^make the arena larger$"):
                remote.set("k", b"v")
    finally:
        node.close()
