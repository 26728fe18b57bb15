"""A direct link: the client's end of a ZeroMQ connection to a node without libzmq, for the usual
call (clients/connection.py's _call_alone) when nothing else is in flight.

Why: a libzmq socket moves every message through its I/O thread, so a round trip wakes a
thread twice more at the client's end than a Redis client's does, and on a small VM a wake-up
on another CPU costs tens of microseconds (bench/README.md, "A direct link": a get's round
trip 0.71-0.86x (tcp) and 0.61-0.66x (ipc) of one through libzmq). The link is a plain
blocking socket to the same endpoint the client's DEALER uses, with ZMTP 3.0 (RFC 23) spoken
here; to the node's ROUTER it is one more DEALER peer, and its replies are the same bytes. One
request at a time: anything else (pipelines, batches, large frames, CurveZMQ, timeouts and
sending again) stays with the DEALER, and a link that fails in any way is closed and the
request handled as one whose reply did not come.

The handshake, NULL security only (a node that requires CurveZMQ closes it: no link):

    greeting, 64 octets each way
      0      signature   0xFF, 8 octets (any), 0x7F      (GREETING_SIGNATURE)
      10     version     major 3, minor 0                 (a peer's major must be >= 3)
      12     mechanism   "NULL", zero-padded to 20 octets
      32     as-server   0 (this end is the client)
      33     filler      31 zero octets
    then a READY command each way
      0x04 size | 0x06 size64   command flags and size (network order)
      5 "READY"                 name length, name
      properties                name length (1 octet), name, value length (4 octets), value:
                                Socket-Type "DEALER" ours, "ROUTER" the node's; Identity ""

Frames after it: flags (MORE 0x01, LONG 0x02), size in 1 octet or 8 with LONG, the bytes
(shmkv/_core_src/zmtp.c sends and reads them). SHMKV_DIRECT_LINK=0 turns links off: every
call then goes through libzmq.
"""

from __future__ import annotations

import os
import socket
import struct
import weakref
from typing import Any

from shmkv import backend

DIRECT_LINK_ENV = "SHMKV_DIRECT_LINK"
GREETING_BYTES = 64
GREETING_SIGNATURE = (0, 0xFF), (9, 0x7F)  # (offset, octet): what marks a ZMTP 3 peer
VERSION_AT, ZMTP_MAJOR, ZMTP_MINOR = 10, 3, 0
MECHANISM_AT, MECHANISM_BYTES, MECHANISM = 12, 20, b"NULL"
# Connect and handshake within this (or the client's timeout, if shorter): the DEALER reached
# the node already, so a link that takes longer is not worth waiting for.
OPEN_TIMEOUT_S = 1.0
# Frames of a request a link carries, its header included (zmtp.c's MAX_CALL_FRAMES).
MAX_CALL_FRAMES = 16
# A handshake command larger than this is not a node's READY.
MAX_COMMAND_BYTES = 4096
_COMMAND, _COMMAND_LONG = 0x04, 0x06

_ZMTP_CALL = backend.zmtp_call


def enabled() -> bool:
    """Whether calls may take direct links in this process: the compiled core is here and
    SHMKV_DIRECT_LINK is not 0."""
    return _ZMTP_CALL is not None and os.environ.get(DIRECT_LINK_ENV, "1") != "0"


def greeting() -> bytes:
    head = bytearray(GREETING_BYTES)
    for offset, octet in GREETING_SIGNATURE:
        head[offset] = octet
    head[VERSION_AT], head[VERSION_AT + 1] = ZMTP_MAJOR, ZMTP_MINOR
    head[MECHANISM_AT:MECHANISM_AT + len(MECHANISM)] = MECHANISM
    return bytes(head)


def ready_command(socket_type: bytes) -> bytes:
    body = b"\x05READY" + _property(b"Socket-Type", socket_type) + _property(b"Identity", b"")
    return bytes((_COMMAND, len(body))) + body


def _property(name: bytes, value: bytes) -> bytes:
    return bytes((len(name),)) + name + struct.pack(">I", len(value)) + value


def read_ready(body: bytes) -> dict[bytes, bytes]:
    """The properties of a READY command's body; ValueError if it is not one."""
    name_len = body[0] if body else 0
    if body[1:1 + name_len] != b"READY":
        raise ValueError(f"expected READY, got the command {body[1:1 + name_len]!r}")
    props: dict[bytes, bytes] = {}
    pos = 1 + name_len
    while pos < len(body):
        size = body[pos]
        name = body[pos + 1:pos + 1 + size]
        pos += 1 + size
        if pos + 4 > len(body):
            raise ValueError("a READY property cut short")
        (value_len,) = struct.unpack_from(">I", body, pos)
        value = body[pos + 4:pos + 4 + value_len]
        if len(value) != value_len:
            raise ValueError("a READY property cut short")
        props[name.lower()] = value
        pos += 4 + value_len
    return props


def address_of(endpoint: str) -> tuple[int, Any] | None:
    """(address family, address) of a tcp:// or ipc:// endpoint a DEALER connects to; None for
    one a link does not take (another transport, a source address, a host name that does not
    resolve)."""
    transport, _, rest = endpoint.partition("://")
    if transport == "ipc":
        if not rest:
            return None
        return socket.AF_UNIX, "\0" + rest[1:] if rest.startswith("@") else rest
    if transport != "tcp" or ";" in rest:
        return None
    host, _, port = rest.rpartition(":")
    # IPv4 unless the host is an IPv6 address: libzmq resolves names to IPv4 (ZMQ_IPV6 off)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit():
        return None
    try:
        found = socket.getaddrinfo(host, int(port), family, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    return family, found[0][4]


class DirectLink:
    """One open link: call() sends a request and returns its reply (see the module)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        _links.add(self)

    @classmethod
    def open(cls, endpoint: str, timeout_s: float) -> DirectLink | None:
        """A link to the node at endpoint whose replies are waited for up to timeout_s, or
        None if there cannot be one (links off, another transport, no node there, a node
        that would not shake hands: CurveZMQ, another protocol)."""
        address = address_of(endpoint) if enabled() else None
        if address is None:
            return None
        family, where = address
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(min(timeout_s, OPEN_TIMEOUT_S))
            sock.connect(where)
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _handshake(sock)
            sock.settimeout(None)  # blocking; the C call waits with SO_RCVTIMEO
            wait = struct.pack("ll", int(timeout_s), int(timeout_s % 1 * 1e6))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, wait)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, wait)
        except (OSError, ValueError):
            sock.close()
            return None
        return cls(sock)

    def call(self, head: bytes | None, frames: Any) -> list[bytes] | None | bool:
        """The reply's frames, None if none came in time, False if nothing was sent (the
        link cannot carry it: the node closed it, or it holds a message no request asked
        for). OSError if the link failed; the caller then closes it. head None: nothing
        sent, the next message read."""
        return _ZMTP_CALL(self._fd, head, frames) if self._fd >= 0 else False

    def close(self) -> None:
        self._sock.close()

    def _forked(self) -> None:
        self._fd = -1  # call() sends nothing; close() closes this process's copy only


# A forked child has its parent's links, the same sockets: what one sent, the other could read
# the reply of, under the same request id. In the child they carry nothing (the caller then
# drops them); the parent's go on.
_links: weakref.WeakSet[DirectLink] = weakref.WeakSet()
os.register_at_fork(after_in_child=lambda: [link._forked() for link in list(_links)])


def _handshake(sock: socket.socket) -> None:
    """Greetings and READY commands both ways; ValueError (or OSError) if the node is not a
    ZMTP 3 ROUTER with NULL security."""
    sock.sendall(greeting() + ready_command(b"DEALER"))
    theirs = _receive_exactly(sock, GREETING_BYTES)
    if any(theirs[offset] != octet for offset, octet in GREETING_SIGNATURE):
        raise ValueError("not a ZeroMQ peer")
    mechanism = theirs[MECHANISM_AT:MECHANISM_AT + MECHANISM_BYTES].rstrip(b"\0")
    if theirs[VERSION_AT] < ZMTP_MAJOR or mechanism != MECHANISM:
        raise ValueError("not a ZMTP 3 peer with NULL security")
    flags = _receive_exactly(sock, 1)[0]
    if flags == _COMMAND:
        size = _receive_exactly(sock, 1)[0]
    elif flags == _COMMAND_LONG:
        (size,) = struct.unpack(">Q", _receive_exactly(sock, 8))
    else:
        raise ValueError("expected a handshake command")
    if size > MAX_COMMAND_BYTES:
        raise ValueError("a handshake command too large")
    props = read_ready(_receive_exactly(sock, size))
    if props.get(b"socket-type") != b"ROUTER":
        raise ValueError(f"the node's socket is not a ROUTER: {props.get(b'socket-type')!r}")


def _receive_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ValueError("the node closed the connection in the handshake")
        data += chunk
    return data
