"""Pipelining in RemoteCache: many requests in flight on one connection, replies matched by id
and returned in order, an error in one request raised by its own result only, timeouts that
send idempotent requests again and fail the others, late replies dropped, and get_many /
set_many of large batches riding on it."""

from __future__ import annotations

import time

import pytest
from fake_node import FIRST_ID, FakeNode
from fake_node import MAX_BATCH_REQUESTS as FAKE_BATCH_REQUESTS
from node_process import running_node
from tests_support import scrape

import shmkv
from shmkv.broker import protocol
from shmkv.clients import RemoteCache
from shmkv.clients import connection
from shmkv.clients import remote as remote_module

WAIT_S = 10


def value_reply(value: bytes):  # a step of a FakeNode's script
    return lambda r: [protocol.Reply(r.id, True, [value])]


# --- a real node ----------------------------------------------------------------------------
@pytest.mark.multiprocess
def test_a_pipeline_returns_each_result_in_order_and_an_error_only_from_its_own(
        region_name) -> None:
    with running_node(region_name) as node, RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:
        with remote.pipeline() as p:
            sets = [p.set(f"k{i}", b"%d" % i) for i in range(40)]  # > MAX_IN_FLIGHT
            bad = p.append("k0", b"!")
            not_int = p.incr("k0")  # "0!" is not an integer
            gets = [p.get(f"k{i}") for i in range(40)]
            absent = p.get("absent", b"default")
        assert [f.result() for f in sets] == [None] * 40
        assert bad.result() == 2
        with pytest.raises(shmkv.NotAnInteger):
            not_int.result()
        assert [f.result() for f in gets] == [b"0!"] + [b"%d" % i for i in range(1, 40)]
        assert absent.result() == b"default"
        assert remote.get("k39") == b"39"  # the connection goes on after the pipeline


@pytest.mark.multiprocess
def test_a_pipeline_of_a_collection_handle_works_in_that_collection(region_name) -> None:
    with running_node(region_name) as node, RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:
        users = remote.collection("users")
        with users.pipeline() as p:
            p.set("k", b"user")
            found = p.get_many(["k", "absent"])
        assert found.result() == {"k": b"user"}
        assert remote.get("k") is None


@pytest.mark.multiprocess
def test_get_many_and_set_many_of_large_batches_ride_on_a_pipeline(region_name,
                                                                     monkeypatch) -> None:
    monkeypatch.setattr(remote_module, "BATCH_KEYS", 100)
    items = {f"k{i}": b"v%d" % i for i in range(250)}
    with running_node(region_name) as node, RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:
        remote.set_many(items)
        assert remote.get_many([*items, "absent"]) == items
        host, port = node.ready["metrics"].rsplit(":", 1)
        ok = {op: ("shmkv_requests_total", (("command", op), ("outcome", "ok")))
              for op in ("set_many", "get_many")}
        # the node counts a request just after its reply is sent: wait for the last count
        deadline = time.monotonic() + WAIT_S
        while (samples := scrape(int(port), host)).get(ok["get_many"], 0) < 3:
            assert time.monotonic() < deadline, "the node did not count the batches"
            time.sleep(0.01)
    assert [samples[ok[op]] for op in ("set_many", "get_many")] == [3, 3]  # 3 batches each


# --- a fake node: in flight, timeouts, late replies ------------------------------------------
def test_a_pipeline_has_up_to_max_in_flight_requests_sent_before_any_reply() -> None:
    in_flight = protocol.MAX_IN_FLIGHT

    def answer_all(r: protocol.Request) -> list[protocol.Reply]:  # after the last one came
        return [protocol.Reply(FIRST_ID + i, True, [b"v%d" % i]) for i in range(in_flight)]

    with FakeNode([None] * (in_flight - 1) + [answer_all]) as node, \
            RemoteCache(node.endpoint, timeout_s=WAIT_S, retries=0) as remote:
        with remote.pipeline() as p:
            futures = [p.get(f"k{i}") for i in range(in_flight)]
        assert [f.result() for f in futures] == [b"v%d" % i for i in range(in_flight)]
    assert [request_id for _, request_id, _ in node.received] == \
        list(range(FIRST_ID, FIRST_ID + in_flight))


def test_a_timeout_in_a_pipeline_sends_idempotent_requests_again_and_fails_the_others() -> None:
    script = [None, None, None,  # get, incr, get: no reply; then on the new socket:
              value_reply(b"first"), value_reply(b"third")]
    with FakeNode(script) as node, RemoteCache(node.endpoint, timeout_s=0.2, retries=1) as remote:
        with remote.pipeline() as p:
            first, counted, third = p.get("a"), p.incr("n"), p.get("c")
        assert first.result() == b"first" and third.result() == b"third"
        with pytest.raises(shmkv.RemoteUnavailable, match="incr.*not sent again.*may or may not"):
            counted.result()
    sent = [(request_id, op) for _, request_id, op in node.received]
    get, incr, get2 = FIRST_ID, FIRST_ID + 1, FIRST_ID + 2
    assert sent == [(get, "get"), (incr, "incr"), (get2, "get"), (get, "get"), (get2, "get")]
    assert node.received[0][0] != node.received[3][0]  # again on a new connection


def test_a_call_that_is_not_idempotent_is_not_sent_again_after_a_timeout() -> None:
    with FakeNode([None, value_reply(b"unexpected")]) as node, \
            RemoteCache(node.endpoint, timeout_s=0.2, retries=2) as remote:
        with pytest.raises(shmkv.OutcomeUnknown, match="incr.*not sent again"):
            remote.incr("n")
    assert [op for _, _, op in node.received] == ["incr"]


def test_late_replies_to_abandoned_requests_are_dropped_also_after_a_reconnect() -> None:
    def late_then_right(r: protocol.Request) -> list[protocol.Reply]:
        return [protocol.Reply(FIRST_ID, True, [b"late"]),
                protocol.Reply(r.id, True, [b"right"])]

    # get (abandoned: no reply), get (a late reply to the first, then its own),
    # get (no reply: timeout, a new socket), the same get again (late replies, then its own)
    script = [None, late_then_right, None, late_then_right]
    with FakeNode(script) as node, RemoteCache(node.endpoint, timeout_s=0.3, retries=1) as remote:
        with pytest.raises(RuntimeError):
            with remote.pipeline() as p:
                abandoned = p.get("a")
                raise RuntimeError("the caller gives up on the pipeline")
        assert remote.get("b") == b"right"
        assert remote.get("c") == b"right"
        with pytest.raises(shmkv.CacheClosed, match="abandoned"):
            abandoned.result()
    first = FIRST_ID
    assert [request_id for _, request_id, _ in node.received] == \
        [first, first + 1, first + 2, first + 2]


def test_a_pipeline_to_a_node_that_reads_batches_sends_them_and_a_call_alone() -> None:
    def answer(r: protocol.Request) -> list[protocol.Reply]:
        return [protocol.Reply(r.id, True, [b"v%d" % r.id])]

    per = min(connection.BATCH_REQUESTS, FAKE_BATCH_REQUESTS)  # the node's limit, if less
    count = 2 * per + 3
    with FakeNode([answer] * (count + 1), reads_batches=True) as node, \
            RemoteCache(node.endpoint, timeout_s=WAIT_S, retries=0) as remote:
        with remote.pipeline() as p:
            futures = [p.get(f"k{i}") for i in range(count)]
        assert [f.result() for f in futures] == [b"v%d" % (FIRST_ID + i) for i in range(count)]
        assert remote.get("alone") == b"v%d" % (FIRST_ID + count)
    ids = list(range(FIRST_ID, FIRST_ID + count + 1))
    assert node.messages == [ids[:per], ids[per:2 * per], ids[2 * per:-1], ids[-1:]]


def test_a_timeout_sends_a_batch_again_without_the_requests_that_may_not_be() -> None:
    script = [None, None, None,  # get, incr, get in one batch: no reply; then, again:
              value_reply(b"first"), value_reply(b"third")]
    with FakeNode(script, reads_batches=True) as node, \
            RemoteCache(node.endpoint, timeout_s=0.2, retries=1) as remote:
        with remote.pipeline() as p:
            first, counted, third = p.get("a"), p.incr("n"), p.get("c")
        assert first.result() == b"first" and third.result() == b"third"
        with pytest.raises(shmkv.RemoteUnavailable, match="incr.*not sent again.*may or may not"):
            counted.result()
    get, incr, get2 = FIRST_ID, FIRST_ID + 1, FIRST_ID + 2
    assert node.messages == [[get, incr, get2], [get, get2]]


def test_a_result_asked_for_in_a_pipeline_sends_what_is_queued_first() -> None:
    def answer(r: protocol.Request) -> list[protocol.Reply]:
        return [protocol.Reply(r.id, True, [b"v"])]

    with FakeNode([answer] * 3, reads_batches=True) as node, \
            RemoteCache(node.endpoint, timeout_s=WAIT_S, retries=0) as remote:
        with remote.pipeline() as p:
            a, b = p.get("a"), p.get("b")
            assert b.result() == b"v"  # not sent yet: sends a and b, then waits
            c = p.get("c")
        assert (a.result(), c.result()) == (b"v", b"v")
    assert node.messages == [[FIRST_ID, FIRST_ID + 1], [FIRST_ID + 2]]
