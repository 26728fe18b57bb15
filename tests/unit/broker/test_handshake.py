"""broker.handshake: how the outcome of a client socket's security handshakes (its monitor's
events, fed here by hand) becomes an error, and when a failure counts as lasting."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

import pytest
import zmq

from shmkv.broker.handshake import HandshakeWatch

AUTH = zmq.EVENT_HANDSHAKE_FAILED_AUTH
NO_DETAIL = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
PROTOCOL = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
SUCCEEDED = zmq.EVENT_HANDSHAKE_SUCCEEDED


@pytest.fixture
def watch_and_feed() -> Iterator[tuple[HandshakeWatch, Callable[[int], None]]]:
    """A HandshakeWatch of a real DEALER, and a function that delivers a monitor event to it
    (in the wire format of zmq_socket_monitor(3): event id and value, then the endpoint)."""
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    watch = HandshakeWatch(dealer)
    # the events come from a socket of ours instead of libzmq (a PAIR has only one peer)
    watch.monitor.close(linger=0)
    watch.monitor = context.socket(zmq.PAIR)
    watch.monitor.bind("inproc://fed-events")
    feeder = context.socket(zmq.PAIR)
    feeder.connect("inproc://fed-events")

    def feed(event: int) -> None:
        feeder.send_multipart([struct.pack("=HI", event, 0), b"tcp://127.0.0.1:1"])
        assert watch.monitor.poll(1000)

    try:
        yield watch, feed
    finally:
        feeder.close(linger=0)
        watch.close()
        dealer.close(linger=0)
        context.term()


def test_no_handshake_means_no_failure(watch_and_feed) -> None:
    watch, _ = watch_and_feed
    assert watch.failure() is None and watch.lasting_failure() is None


@pytest.mark.parametrize(("event", "says"), [(AUTH, "refused this client's key"),
                                             (PROTOCOL, "do not use the same security")])
def test_a_refusal_by_the_node_lasts_from_the_first_time(watch_and_feed, event: int,
                                                         says: str) -> None:
    watch, feed = watch_and_feed
    feed(event)
    assert says in watch.lasting_failure()  # type: ignore[operator]
    assert watch.failure().startswith("authentication failed")  # type: ignore[union-attr]


def test_a_failure_without_detail_lasts_only_when_it_repeats(watch_and_feed) -> None:
    watch, feed = watch_and_feed
    feed(NO_DETAIL)
    assert watch.failure() is not None and watch.lasting_failure() is None
    feed(NO_DETAIL)
    assert "check the keys" in watch.lasting_failure()  # type: ignore[operator]


def test_a_successful_handshake_clears_the_failure(watch_and_feed) -> None:
    watch, feed = watch_and_feed
    feed(AUTH)
    feed(SUCCEEDED)
    assert watch.failure() is None and watch.lasting_failure() is None
    feed(NO_DETAIL)
    assert watch.lasting_failure() is None
