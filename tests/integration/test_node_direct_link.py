"""A RemoteCache's direct link to a real node (clients/direct.py): its calls answer as the same
calls through libzmq, and a node that restarts or stops answering meets the same handling
(resent, RemoteUnavailable, OutcomeUnknown) as through libzmq, with nothing answered wrongly."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from node_process import paused, running_node
from replication_support import CONVERGE_S, free_port, primary_region, replica_node

import shmkv
from shmkv.clients import RemoteCache, direct
from shmkv.clients.direct import DirectLink

pytestmark = pytest.mark.skipif(not direct.enabled(), reason="the compiled core only")


@pytest.fixture
def link_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes | None]:
    """The heads of the requests direct links sent (None: a read with nothing sent)."""
    calls: list[bytes | None] = []
    real = DirectLink.call

    def counted(self: DirectLink, head: bytes | None, frames: Any) -> Any:
        calls.append(head)
        return real(self, head, frames)

    monkeypatch.setattr(DirectLink, "call", counted)
    return calls


@contextmanager
def remote(endpoint: str, links: bool, monkeypatch: pytest.MonkeyPatch,
           **options: Any) -> Iterator[RemoteCache]:
    with monkeypatch.context() as env:
        env.setenv(direct.DIRECT_LINK_ENV, "1" if links else "0")
        handle = RemoteCache(endpoint, **options)
    with handle:
        yield handle


def outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except shmkv.ShmKVError as exc:
        return type(exc), str(exc)


def test_calls_over_a_link_answer_as_through_libzmq(region_name: str, link_calls: list,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB: a reply frame larger than a look at the socket
    with running_node(region_name) as node:
        results = {}
        for links in (True, False):
            with remote(node.endpoint, links, monkeypatch) as cache:
                results[links] = [outcome(call) for call in [
                    lambda: cache.set("k", b"v" * 300),
                    lambda: cache.get("k"),
                    lambda: cache.get("missing", b"default"),
                    lambda: cache.set("big", big),
                    lambda: cache.get("big") == big,
                    lambda: cache.incr("n", 5),
                    lambda: cache.incr("k"),  # not an integer: the node's error
                    lambda: sorted(cache.get_many(["k", "n", "x"]).values()),
                    lambda: cache.exists("k", "x"),
                    lambda: cache.getdel("n"),
                    lambda: cache.delete("k"),
                    lambda: cache.get("k"),
                ]]
                used = cache._link._direct is not None
            assert used == links
        assert results[True] == results[False]
        # the link carried the first handle's calls of the usual form: the gets, get_many,
        # getdel and delete (not the first call, which picks a worker, nor a 1 MiB set, nor
        # incr and exists, which have no header template)
        assert len(link_calls) >= 7


def test_a_node_restarted_while_a_link_idles_takes_the_next_call(
        region_name: str, link_calls: list, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with remote(endpoint, True, monkeypatch, timeout_s=10, retries=0) as cache:
        with running_node(region_name, "--bind", endpoint):
            cache.set("k", b"v")
            assert cache.getdel("k") == b"v"
            assert link_calls  # the getdel went over the link
        with running_node(region_name, "--bind", endpoint):
            # getdel is never sent again (OutcomeUnknown if lost): the link the first node
            # closed must be seen as closed before anything is sent on it
            assert cache.getdel("k") is None
            cache.set("k", b"w")
            assert cache.getdel("k") == b"w"


@pytest.mark.parametrize("op, expected", [
    (lambda cache: cache.get("k"), shmkv.RemoteUnavailable),  # sent again, retries=0: no more
    (lambda cache: cache.getdel("k"), shmkv.OutcomeUnknown),  # never sent again
])
def test_a_node_that_stops_answering_is_handled_as_through_libzmq(
        region_name: str, link_calls: list, monkeypatch: pytest.MonkeyPatch,
        op: Callable[[RemoteCache], Any], expected: type) -> None:
    with running_node(region_name) as node:
        for links in (True, False):
            with remote(node.endpoint, links, monkeypatch, timeout_s=0.3, retries=0) as cache:
                cache.set("k", b"v")
                assert cache.get("k") == b"v"  # the link opened, if links
                sent_before = len(link_calls)
                node.process.send_signal(signal.SIGSTOP)
                try:
                    with pytest.raises(expected):
                        op(cache)
                finally:
                    node.process.send_signal(signal.SIGCONT)
                assert (len(link_calls) > sent_before) == links  # lost on the link
                cache.set("k", b"w")
                assert cache.get("k") == b"w"  # answered again, nothing mixed up


def test_wait_counts_the_writes_of_the_link_and_of_libzmq_both(
        region_name: str, link_calls: list) -> None:
    """The node counts a wait against the writes of the connection it comes on, and the link
    is a connection of its own: a write on either must hold wait back until it is applied."""
    with primary_region(region_name), \
            running_node(region_name, "--repl-bind", "tcp://127.0.0.1:*") as node, \
            replica_node(node, f"{region_name}-copy") as (replica, _), \
            RemoteCache(node.endpoint) as remote:
        remote.set("first", b"1")  # a client's first call goes through libzmq
        assert remote.wait(1, CONVERGE_S) == 1
        with paused(replica):
            remote.set("on the link", b"2")
            assert link_calls  # it went over the link
            assert remote.wait(1, 0.3) == 0  # libzmq's write is applied, not the link's
        assert remote.wait(1, CONVERGE_S) == 1
        with paused(replica):
            remote.incr("through libzmq")  # incr has no header template: never on the link
            assert remote.wait(1, 0.3) == 0  # the link's write is applied, not libzmq's
        assert remote.wait(1, CONVERGE_S) == 1

