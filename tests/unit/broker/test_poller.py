"""The node's poller (broker/poller.py): zmq.Poller's answers on epoll, for ZeroMQ sockets and
plain descriptors, with the settled sockets it does not ask before sleeping."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import zmq

from shmkv.broker.poller import Poller

POLLIN, POLLOUT, POLLERR = int(zmq.POLLIN), int(zmq.POLLOUT), int(zmq.POLLERR)
WAIT_MS = 10_000  # a poll told to wait this long that returns at once was woken


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    """(ours, theirs): two connected ZeroMQ PAIR sockets."""
    context = zmq.Context.instance()
    ours, theirs = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    endpoint = f"inproc://test-poller-{id(ours)}"
    ours.bind(endpoint)
    theirs.connect(endpoint)
    yield ours, theirs
    ours.close(linger=0)
    theirs.close(linger=0)


@pytest.fixture
def poller() -> Iterator[Poller]:
    p = Poller()
    yield p
    p.close()


@pytest.mark.parametrize("tracked", [False, True])
def test_a_zeromq_socket_is_reported_while_a_message_waits(pair, poller, tracked) -> None:
    ours, theirs = pair
    poller.register(ours, POLLIN, tracked=tracked)
    assert poller.poll(0) == []
    theirs.send(b"one")
    theirs.send(b"two")
    assert poller.poll(WAIT_MS) == [(ours, POLLIN)]
    assert ours.recv() == b"one"
    # nothing new signals the second: the poll asks before it sleeps
    assert poller.poll(WAIT_MS) == [(ours, POLLIN)]
    assert ours.recv() == b"two"
    assert poller.poll(0) == []


@pytest.mark.parametrize("tracked", [False, True])
def test_a_message_that_comes_during_the_sleep_ends_it(pair, poller, tracked) -> None:
    ours, theirs = pair
    poller.register(ours, POLLIN, tracked=tracked)
    assert ours.getsockopt(zmq.EVENTS) & POLLIN == 0
    poller.settled(ours)  # the ask just made found nothing
    theirs.send(b"late")
    assert poller.poll(WAIT_MS) == [(ours, POLLIN)]


def test_a_settled_socket_is_not_asked_until_unsettled(pair, poller) -> None:
    ours, theirs = pair
    poller.register(ours, POLLIN)
    theirs.send(b"waiting")
    ours.getsockopt(zmq.EVENTS)  # takes in the news: its ZMQ_FD will not signal it again
    poller.settled(ours)  # a promise broken on purpose: the poll trusts it
    assert poller.poll(0) == []
    poller.unsettled(ours)
    assert poller.poll(0) == [(ours, POLLIN)]


def test_a_tracked_socket_found_idle_is_settled_and_a_reported_one_is_not(pair,
                                                                          poller) -> None:
    ours, theirs = pair
    poller.register(ours, POLLIN, tracked=True)
    assert poller.poll(0) == []  # asked: idle, so settled
    theirs.send(b"m")
    ours.getsockopt(zmq.EVENTS)  # as a send or recv of the caller would: takes in the news
    assert poller.poll(0) == []  # the caller broke its promise (no unsettled()): missed
    poller.unsettled(ours)
    assert poller.poll(0) == [(ours, POLLIN)]  # reported: no longer settled
    assert poller.poll(0) == [(ours, POLLIN)]  # so asked again while it is not read


def test_an_untracked_socket_is_asked_at_every_poll(pair, poller) -> None:
    ours, theirs = pair
    poller.register(ours, POLLIN)
    assert poller.poll(0) == []
    theirs.send(b"m")
    ours.getsockopt(zmq.EVENTS)  # the news taken in elsewhere
    assert poller.poll(0) == [(ours, POLLIN)]


def both(fds: list[tuple[object, int]]) -> tuple[set, set]:
    """What this poller and zmq.Poller report for the same registrations, at once."""
    ours, theirs = Poller(), zmq.Poller()
    try:
        for obj, flags in fds:
            ours.register(obj, flags)
            theirs.register(obj, flags)
        return set(ours.poll(0)), set(theirs.poll(0))
    finally:
        ours.close()


def test_plain_descriptors_are_reported_as_zmq_poller_reports_them() -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        b.send(b"x")  # a readable and writable; c writable only
        found, expected = both([(a.fileno(), POLLIN | POLLOUT), (c, POLLIN | POLLOUT),
                                (d.fileno(), POLLIN)])
        assert found == expected == {(a.fileno(), POLLIN | POLLOUT), (c.fileno(), POLLOUT)}
        d.close()  # c's peer has gone: readable (end of file) and an error
        found, expected = both([(c, POLLIN)])
        assert found == expected == {(c.fileno(), POLLIN | POLLERR)}
    finally:
        for s in (a, b, c, d):
            s.close()


def test_registering_again_changes_the_flags_and_zero_unregisters(poller) -> None:
    a, b = socket.socketpair()
    try:
        poller.register(a.fileno(), POLLIN)
        assert a.fileno() in poller and a in poller and b not in poller
        assert poller.poll(0) == []
        poller.register(a.fileno(), POLLIN | POLLOUT)
        assert poller.poll(0) == [(a.fileno(), POLLOUT)]
        poller.register(a.fileno(), 0)
        assert poller.poll(0) == []
        with pytest.raises(KeyError):
            poller.unregister(a.fileno())
    finally:
        a.close()
        b.close()


def test_an_unregistered_zeromq_socket_is_not_reported(pair, poller) -> None:
    ours, theirs = pair
    poller.register(ours, POLLIN, tracked=True)
    assert ours in poller and theirs not in poller
    theirs.send(b"m")
    poller.unregister(ours)
    assert ours not in poller
    assert poller.poll(0) == []
    with pytest.raises(KeyError):
        poller.unregister(ours)
