"""The ZeroMQ door's socket: reading a request off the ROUTER, sending a reply, binding (used by
the node's loop, server.py, and by each worker, worker.py).

The ROUTER drops the connection of a client that sends a frame over the
region's max_message_bytes (ZMQ_MAXMSGSIZE; protocol.py's limits), reads a message frame by
frame and drops what is past MAX_FRAMES without keeping it, and queues at most SEND_HWM
replies to a client that does not read them (then drops them, as it does for a client that
has gone), so a client holds at most SEND_HWM * max_reply_bytes of the node's memory. A
request that needs a lock a stopped local process holds waits apart (waits.py): the loop goes
on serving the others, and answers it LockTimeout before its client gives up.
"""

from __future__ import annotations

from typing import Any

import zmq

from shmkv.errors import RequestTooLarge, ShmKVError

from . import protocol
from .zerocopy import Lent

# Replies queued to one client before the ROUTER drops more (a RemoteCache keeps at most
# protocol.MAX_IN_FLIGHT = SEND_HWM/2 requests in flight; a client that sends more without
# reading loses the replies past this), and requests queued from one client before libzmq
# stops reading its connection.
SEND_HWM = 16
RECEIVE_HWM = 64

# Flags as plain ints: pyzmq's are enums, whose `|` costs ~1 us each in the hot path.
_NOBLOCK, _SNDMORE, _RCVMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE), int(zmq.RCVMORE)
_BACKEND_SEND = zmq.backend.Socket.send
_COPY_BELOW_BYTES = zmq.COPY_THRESHOLD  # pyzmq copies a smaller frame even with copy=False


def send_or_drop(router: zmq.Socket, frames: list[object]) -> None:
    """Send a reply (its routing id first); drop it if its client has gone or has SEND_HWM
    replies unread. The count libzmq checks lags behind what the client has read (its
    connection's thread tells the socket every SEND_HWM/2 messages, through a queue the socket
    reads when it is used), so a full pipe is checked again after reading that queue, or a
    client that reads every reply would lose one now and then. ROUTER_MANDATORY refuses a
    message on its first frame or not at all, so the frames are sent one by one (cheaper than
    send_multipart) once the routing id is accepted; those above pyzmq's copy threshold go
    without a copy. A frame that is a zerocopy.Lent goes from the arena, tracked (zerocopy.py);
    one of a reply dropped is marked so, and its ZeroCopy closes it."""
    # pyzmq's own send, not its Python wrapper's (~0.3 us a frame, for options a ROUTER has
    # no use for); a socket of another class keeps its own
    send = _BACKEND_SEND if type(router) is zmq.Socket else type(router).send
    for attempt in range(2):
        try:
            send(router, frames[0], _NOBLOCK | _SNDMORE)
            break
        except zmq.Again:
            if attempt == 1:
                return _dropped(frames)
            router.getsockopt(zmq.EVENTS)  # processes the socket's pending commands
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:  # the client has gone
                return _dropped(frames)
            raise
    last = len(frames) - 1
    for i in range(1, last + 1):
        frame = frames[i]
        flags = _SNDMORE if i < last else 0
        if type(frame) is Lent:  # a value sent from its pin, which stays until libzmq is done
            frame.sent(send(router, frame.mv, flags, False, True))
        else:  # copied when small: cheaper than the zero-copy message pyzmq then copies anyway
            send(router, frame, flags, type(frame) is bytes and len(frame) < _COPY_BELOW_BYTES)


def _dropped(frames: list[object]) -> None:
    for frame in frames:
        if type(frame) is Lent:  # libzmq never had it: its pin may go (zerocopy.py)
            frame.dropped()


def receive(router: zmq.Socket) -> tuple[bytes, list[Any] | protocol.Reply] | None:
    """(routing id, the message's frames) of the next message, or None if none waits. The
    header frame comes as bytes (small, and parsed at once), the payload frames as zmq.Frames,
    so that a value reaches the arena with one copy. A message of more than MAX_FRAMES frames
    is read to its end and dropped frame by frame, never held whole (a million empty frames are
    2 MB on the wire and ~600 MB as Python objects): the error reply that answers it comes
    instead of its frames."""
    try:  # zmq.Frames say whether more follow: no RCVMORE look-up (~0.3 us each)
        first = router.recv(_NOBLOCK, False)  # copy=False, positional: no keywords to parse
    except zmq.Again:
        return None
    routing_id = first.bytes
    frames: list[Any] = []
    # a multipart message is delivered whole, so its other frames are there: no waiting
    more = first.more
    if more:
        header = router.recv(0, False)
        frames.append(header.bytes)
        more = header.more
    while more and len(frames) < protocol.MAX_FRAMES:
        frame = router.recv(0, False)
        frames.append(frame)
        more = frame.more
    if not more:
        return routing_id, frames
    # recv_into a scratch buffer: no object per frame, and half the time of recv() (~1 us a
    # frame: the loop serves nobody meanwhile, and a message is all there or not at all)
    dropped, scratch = 0, bytearray(64)
    recv_into, option = router.recv_into, router.get
    while option(_RCVMORE):
        recv_into(scratch)
        dropped += 1
    return routing_id, too_many_frames(frames, dropped)


def too_many_frames(frames: list[Any], dropped: int) -> protocol.Reply:
    """The error reply to a message of more than MAX_FRAMES frames: its first frames, and how
    many more were dropped unread."""
    return protocol.error_reply(protocol.request_id_of(frames), RequestTooLarge(
        f"a message of {len(frames) + dropped} frames is over this node's limit of "
        f"{protocol.MAX_FRAMES} (max_frames)"), op="invalid")


def bind(sock: zmq.Socket, endpoint: str, which: str = "", option: str = "") -> str:
    """Bind and return the endpoint actually bound (a port of * becomes a number). A failure
    is a ShmKVError naming the socket (which) and the setting to change (option); the caller
    closes the socket."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        option = option or ("--ipc-dir" if endpoint.startswith("ipc:") else "--bind")
        which = which or ("publish" if sock.type == zmq.XPUB else "request")
        raise ShmKVError(f"cannot bind the {which} socket to {endpoint!r}: {exc.strerror}; "
                         f"give another endpoint with {option}") from None
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)
