"""A replica's link to its primary (broker/repl_link.py), against a bare ROUTER socket standing
for the primary: real ZeroMQ sockets over inproc, no node."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import zmq
from shmkv.broker.repl_link import Link, Stopped
from shmkv.broker.repl_wire import message, parse


@pytest.fixture
def primary_and_link() -> Iterator[tuple[zmq.Socket, Link, list[bool]]]:
    """(the primary's ROUTER, a Link to it, the answers its wait gives: False = stopped)."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("inproc://primary")
    waits: list[bool] = []

    def wait(poller: zmq.Poller, timeout_ms: int) -> bool:
        if waits and not waits[0]:
            return waits.pop(0)
        return bool(poller.poll(timeout_ms)) or True

    config = SimpleNamespace(replica_of="inproc://primary", repl_curve_server_key="",
                             repl_curve_client_cert="")
    link = Link(context, config, wait)
    try:
        yield router, link, waits
    finally:
        link._drop_socket()
        router.close()
        context.term()


def test_a_request_cut_short_by_a_stop_is_awaited_again_not_sent_twice(
        primary_and_link: tuple[zmq.Socket, Link, list[bool]]) -> None:
    """Under etcd the node's loop cuts a replica's wait short every moment; asking psync
    again must await the first one's reply, or the primary answers (and counts) each."""
    router, link, waits = primary_and_link
    waits.append(False)  # the first wait is cut short
    with pytest.raises(Stopped):
        link._request({"op": "psync", "repl_id": "x", "offset": 0})
    routing_id, *frames = router.recv_multipart()
    header, _ = parse(frames)
    router.send_multipart([routing_id, *message({"ok": True, "id": header["id"], "epoch": 0,
                                                 "mode": "full"})])
    reply, _ = link._request({"op": "psync", "repl_id": "x", "offset": 0})
    assert reply["mode"] == "full"
    assert router.poll(0) == 0, "the request was sent a second time"
