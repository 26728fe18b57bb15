"""A direct link (clients/direct.py, shmkv/_core_src/zmtp.c): the handshake with a real libzmq
ROUTER, the frames it sends as libzmq receives them, the replies it reads whole however they
are cut, exactly one message a call (what follows stays for the next), and every failure as a
clear error or None, never a wrong reply."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from shmkv import backend
from shmkv.clients import direct
from shmkv.clients.direct import DirectLink

pytestmark = pytest.mark.skipif(not direct.enabled(), reason="the compiled core only")
WAIT_S = 10


def zmtp(*frames: bytes) -> bytes:
    """A message as ZMTP 3 puts it on the wire."""
    out = b""
    for i, frame in enumerate(frames):
        more = 1 if i < len(frames) - 1 else 0
        if len(frame) > 255:
            out += bytes((more | 2,)) + struct.pack(">Q", len(frame))
        else:
            out += bytes((more, len(frame)))
        out += frame
    return out


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(the link's end, the node's end) of a unix socket pair, the link's end waiting up to
    WAIT_S for a reply as a DirectLink's does."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", WAIT_S, 0))
    try:
        yield ours, theirs
    finally:
        ours.close()
        theirs.close()


@pytest.fixture
def router() -> Iterator[zmq.Socket]:
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, WAIT_S * 1000)
    sock.bind("tcp://127.0.0.1:*")
    try:
        yield sock
    finally:
        sock.close()


def call(fd: int, head: bytes | None, frames: list[bytes]) -> object:
    return backend.zmtp_call(fd, head, frames)  # type: ignore[misc]


# --- the handshake and a round trip with libzmq ---------------------------------------------
def test_a_link_to_a_libzmq_router_carries_a_request_and_its_reply(router: zmq.Socket) -> None:
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    link = DirectLink.open(endpoint, WAIT_S)
    assert link is not None
    try:
        big = bytes(range(256)) * 400  # a LONG frame, larger than a look at the socket
        answered = threading.Thread(target=lambda: router.send_multipart(
            [router.recv_multipart()[0], b"head", b"", big]))
        answered.start()
        assert link.call(b"request", [b"k" * 300, b""]) == [b"head", b"", big]
        answered.join()
    finally:
        link.close()


def test_libzmq_receives_the_frames_a_link_sends(router: zmq.Socket) -> None:
    link = DirectLink.open(router.getsockopt_string(zmq.LAST_ENDPOINT), WAIT_S)
    assert link is not None
    try:
        received: list[list[bytes]] = []
        answered = threading.Thread(target=lambda: (
            received.append(router.recv_multipart()),
            router.send_multipart([received[0][0], b"ok"])))
        answered.start()
        assert link.call(b"h", [b"x" * 255, b"y" * 256, b""]) == [b"ok"]
        answered.join()
        assert received[0][1:] == [b"h", b"x" * 255, b"y" * 256, b""]
    finally:
        link.close()


def test_no_link_opens_to_what_is_not_a_null_security_router(tmp_path) -> None:
    curve = zmq.Context.instance().socket(zmq.ROUTER)
    _, secret = zmq.curve_keypair()
    curve.curve_server, curve.curve_secretkey = True, secret
    curve.setsockopt(zmq.LINGER, 0)
    port = curve.bind_to_random_port("tcp://127.0.0.1")
    plain = socket.create_server(("127.0.0.1", 0))  # accepts, then says something else
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer_port = dealer.bind_to_random_port("tcp://127.0.0.1")

    def http() -> None:
        conn, _ = plain.accept()
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"\0" * 64)
        conn.close()

    talker = threading.Thread(target=http)
    talker.start()
    try:
        assert DirectLink.open(f"tcp://127.0.0.1:{port}", WAIT_S) is None
        assert DirectLink.open(f"tcp://127.0.0.1:{plain.getsockname()[1]}", WAIT_S) is None
        assert DirectLink.open(f"tcp://127.0.0.1:{dealer_port}", WAIT_S) is None
        assert DirectLink.open(f"ipc://{tmp_path}/nothing.sock", WAIT_S) is None
    finally:
        talker.join()
        plain.close()
        curve.close()
        dealer.close()


def test_a_forked_child_sends_nothing_on_its_parents_link(router: zmq.Socket) -> None:
    link = DirectLink.open(router.getsockopt_string(zmq.LAST_ENDPOINT), WAIT_S)
    assert link is not None
    try:
        pid = os.fork()
        if pid == 0:  # the child: its call must not take the parent's socket
            os._exit(0 if link.call(b"child", [b"k"]) is False else 1)
        assert os.waitpid(pid, 0)[1] == 0
        answered = threading.Thread(target=lambda: router.send_multipart(
            [(got := router.recv_multipart())[0], *got[1:]]))
        answered.start()
        assert link.call(b"parent", [b"k"]) == [b"parent", b"k"]  # nothing of the child's
        answered.join()
    finally:
        link.close()


def test_links_are_off_with_the_environment_switch(router: zmq.Socket,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(direct.DIRECT_LINK_ENV, "0")
    assert DirectLink.open(router.getsockopt_string(zmq.LAST_ENDPOINT), WAIT_S) is None


@pytest.mark.parametrize("endpoint, expected", [
    ("tcp://127.0.0.1:5555", (socket.AF_INET, ("127.0.0.1", 5555))),
    ("tcp://[::1]:5555", (socket.AF_INET6, ("::1", 5555, 0, 0))),
    ("ipc:///run/shmkv/a.sock", (socket.AF_UNIX, "/run/shmkv/a.sock")),
    ("ipc://@abstract", (socket.AF_UNIX, "\0abstract")),
    ("tcp://eth0;127.0.0.1:5555", None), ("tcp://127.0.0.1", None), ("inproc://x", None),
    ("ipc://", None), ("tcp://:5555", None), ("tcp://no-such-host.invalid:5555", None),
])
def test_endpoints_a_link_takes(endpoint: str, expected: object) -> None:
    assert direct.address_of(endpoint) == expected


def test_a_ready_command_is_read_back() -> None:
    command = direct.ready_command(b"ROUTER")
    assert command[0] == 0x04 and command[1] == len(command) - 2
    assert direct.read_ready(command[2:]) == {b"socket-type": b"ROUTER", b"identity": b""}
    with pytest.raises(ValueError):
        direct.read_ready(b"\x05ERROR")
    with pytest.raises(ValueError):
        direct.read_ready(command[2:-1] + b"\x05")  # a property cut short


# --- replies as zmtp.c reads them -------------------------------------------------------
def test_frames_on_the_wire_are_libzmqs_bytes(pair) -> None:
    ours, theirs = pair
    theirs.sendall(zmtp(b"r"))  # the reply first: then the call's look says the link is busy
    assert call(ours.fileno(), b"h", [b"k"]) is False  # ...and nothing is sent
    theirs.setblocking(False)
    with pytest.raises(BlockingIOError):
        theirs.recv(1)
    assert call(ours.fileno(), None, []) == [b"r"]
    theirs.setblocking(True)
    long = b"v" * 300
    request = zmtp(b"h", long, b"")
    received: list[bytes] = []
    replied = threading.Thread(target=lambda: (
        received.append(theirs.recv(len(request), socket.MSG_WAITALL)),
        theirs.sendall(zmtp(b"ok"))))
    replied.start()
    assert call(ours.fileno(), b"h", [long, b""]) == [b"ok"]
    replied.join()
    assert received == [request]


@pytest.mark.parametrize("frames", [
    [b""], [b"a", b""], [b"x" * 255, b"y" * 256], [b"h", bytes(70_000)], [b"h"] * 40,
])
def test_a_reply_cut_anywhere_is_read_whole(pair, frames: list[bytes]) -> None:
    ours, theirs = pair
    wire = zmtp(*frames)
    cuts = sorted({1, 2, 3, 9, 10, len(wire) // 2, len(wire) - 1} & set(range(1, len(wire))))

    def trickle() -> None:
        start = 0
        for cut in [*cuts, len(wire)]:
            theirs.sendall(wire[start:cut])
            start = cut
            time.sleep(0.002)  # not a wait for state: it lets the reader see the cuts

    writer = threading.Thread(target=trickle)
    writer.start()
    assert call(ours.fileno(), None, []) == frames
    writer.join()


def test_a_call_takes_one_message_and_leaves_the_next(pair) -> None:
    ours, theirs = pair
    theirs.sendall(zmtp(b"first", b"1") + zmtp(b"second", bytes(40_000)) + zmtp(b"third"))
    assert call(ours.fileno(), None, []) == [b"first", b"1"]
    assert call(ours.fileno(), None, []) == [b"second", bytes(40_000)]
    assert call(ours.fileno(), None, []) == [b"third"]


def test_no_reply_in_time_is_none(pair) -> None:
    ours, _ = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 20_000))
    assert call(ours.fileno(), b"h", [b"k"]) is None


@pytest.mark.parametrize("wire, message", [
    (b"", "closed"), (b"\x01\x02ab", "closed"), (b"\x02\x00\x00", "closed"),
    (b"\x04\x05READY", "command"), (b"\x08\x00", "unknown flags"),
    (b"\x02" + b"\xff" * 8, "larger than any reply"),
])
def test_a_node_that_breaks_the_protocol_or_leaves_fails_the_call(pair, wire: bytes,
                                                                  message: str) -> None:
    ours, theirs = pair
    theirs.sendall(wire)
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(OSError, match=message):
        call(ours.fileno(), None, [])


def test_wrong_arguments_are_type_errors(pair) -> None:
    ours, _ = pair
    with pytest.raises(TypeError):
        call(ours.fileno(), "head", [])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        call(ours.fileno(), b"h", [memoryview(b"k")])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        call(-1, b"h", [])
    assert call(ours.fileno(), b"h", [b"k"] * direct.MAX_CALL_FRAMES) is False
