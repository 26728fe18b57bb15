"""One RemoteCache connection to one node: a DEALER socket, the requests on it, their replies,
timeouts and sending again (remote.py's docstring says what a caller sees).

Requests are queued in order and sent by flush(): as a message each, or, to a node whose ping
lists max_batch_requests, as batches of up to BATCH_REQUESTS requests in one message
(broker/batches.py), at most MAX_IN_FLIGHT messages in flight. A call flushes at once (a batch
of one is a message of its own); a pipeline flushes when BATCH_REQUESTS are queued, when a
result is asked for that was not sent yet, and at its end. Replies are matched by id. A call
with nothing else in flight may go over the connection's direct link instead (direct.py).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import zmq

from shmkv import backend
from shmkv.broker import batches, compact, protocol
from shmkv.broker.auth import AUTH_HINT, CurveClient
from shmkv.broker.handshake import HandshakeWatch
from shmkv.broker.protocol import Reply
from shmkv.clients import direct
from shmkv.clients.direct import MAX_CALL_FRAMES, DirectLink
from shmkv.clients.workers import choose_worker
from shmkv.errors import (
    CacheClosed,
    OutcomeUnknown,
    ProtocolError,
    RemoteUnavailable,
    RequestTooLarge,
)

# A request with a frame larger than this asks the node for its limits first (once): smaller
# frames are under any node's max_message_bytes (an arena is at least 4 KiB, plus headroom).
CHECK_LIMITS_ABOVE_BYTES = protocol.MESSAGE_HEADROOM_BYTES
# Requests per batch message, and their payload bytes at most: a batch is decoded whole before
# the node runs its first request, so a few hundred keep both ends busy at once (the node runs
# one batch while the next travels); under MESSAGE_HEADROOM_BYTES, a batch fits any node's
# max_message_bytes. A request with a frame over SOLO_FRAME_BYTES goes in a message of its own
# (a large value is not copied into a batch, and a get_array reply stays a view).
BATCH_REQUESTS = 256
BATCH_BYTES = 512 << 10
SOLO_FRAME_BYTES = 64 << 10
# A round trip in C (shmkv/_core_src/zmqcall.c), for the usual request; None where the compiled
# ZeroMQ paths do not run (backend.compiled_zmq).
_ZMQ_CALL = backend.zmq_call if backend.compiled_zmq() else None
_WRITE_OPS = protocol.WRITE_OPS
# After a direct link fails, calls go through libzmq for this long before another is tried:
# a node that is down costs a connect attempt a second, not one a call. After a link that
# could not be opened, twice as long each time, up to DIRECT_MAX_RETRY_S (a node behind
# something that is not a ROUTER, say: each try may wait up to direct.OPEN_TIMEOUT_S).
DIRECT_RETRY_S = 1.0
DIRECT_MAX_RETRY_S = 60.0
# Flags as plain ints: pyzmq's are enums, whose `|` costs ~1 us each.
_SNDMORE = int(zmq.SNDMORE)
# pyzmq's own send, not its Python wrapper's (zmq.Socket.send, ~0.3 us a frame, for options a
# DEALER has no use for: routing_id, group); a socket of another class (a context's own, e.g.
# zmq.green's) keeps its send, which may do more.
_BACKEND_SEND = zmq.backend.Socket.send
# What a compact ok reply's first frame starts with (compact.py): the usual reply, read here in
# one step rather than through protocol.decode_reply's checks for every other form.
_COMPACT_REPLY = protocol.PROTOCOL_TAG + bytes((compact.REPLY_FORM,))
_TAG_BYTES = len(protocol.PROTOCOL_TAG)
# Header templates (Connection._message): the fields a templated request may have, and how
# many templates a connection keeps at most (ops x collections in use).
_TEMPLATE_FIELDS = frozenset({"coll", "ttl_s"})
MAX_TEMPLATES = 1024
_UNKNOWN = object()


class _Message:
    """A message in flight: the requests it carries, and how many still await their reply."""

    __slots__ = ("members", "left")

    def __init__(self, members: list[_Sent]) -> None:
        self.members, self.left = members, len(members)


class _Sent:
    """A request queued or in flight, and then its reply (or the error that stands for it)."""

    __slots__ = ("id", "op", "message", "deadline", "attempts", "reply", "error", "sent_in",
                 "payload_bytes", "solo")

    def __init__(self, request_id: int, op: str, message: list[Any], attempts: int,
                 payload_bytes: int, solo: bool) -> None:
        self.id, self.op, self.message = request_id, op, message
        self.deadline = 0.0
        self.attempts = attempts  # sends left, this one included
        self.reply: Reply | None = None
        self.error: Exception | None = None
        self.sent_in: _Message | None = None  # None: queued, not sent (yet, or again)
        self.payload_bytes, self.solo = payload_bytes, solo


class Connection:
    """One DEALER socket to one node, shared by a RemoteCache and its collection handles, with
    the requests queued and in flight on it."""

    def __init__(self, endpoint: str, timeout_s: float, retries: int,
                 context: zmq.Context | None, curve: CurveClient | None = None) -> None:
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) \
                or not 0 < timeout_s <= 3600:
            raise ValueError("timeout_s must be a number of seconds, > 0 and at most an hour")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError("retries must be an int >= 0")
        self.endpoint = endpoint
        self.timeout_s = float(timeout_s)
        self.retries = retries
        self.curve = curve
        self._context = context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._recv_timeout_ms = -1  # the socket's ZMQ_RCVTIMEO
        # the direct link _call_alone uses (clients/direct.py), and when one may be opened
        self._direct: DirectLink | None = None
        self._direct_at = 0.0 if direct.enabled() and curve is None else math.inf
        self._direct_wait_s = DIRECT_RETRY_S  # before another try, after one that failed
        # whether the DEALER and the link carried a write since they were opened (_wait_both)
        self._dealer_wrote = self._link_wrote = False
        self._watch: HandshakeWatch | None = None
        self._last_id = 0
        # queued and in flight, by id, in the order queued (= the replies' order)
        self._in_flight: dict[int, _Sent] = {}
        self._queued: deque[_Sent] = deque()
        self._messages = 0  # messages in flight with a reply still due
        self._timeout_ms = max(1, round(self.timeout_s * 1000))
        self._worker_chosen = False  # a node with workers: which one, at the first call
        # the header templates of the usual requests, by (op, coll); None: the JSON form
        self._templates: dict[tuple[str, str], tuple[bytes, bytes] | None] = {}
        self._node_limits: dict[str, Any] | None = None  # the ping reply's, once asked
        self._batch_requests = 1  # per message: more once the node says it reads batches
        self.closed = False
        self._open()  # now: a malformed endpoint fails here, not at the first call

    def _open(self) -> zmq.Socket:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        # A send waits for a connection to send on at most this long: libzmq gives a
        # connection up for good when its handshake fails (another security, say), and a
        # send made after that would wait for ever; it is then handled as a reply overdue.
        sock.setsockopt(zmq.SNDTIMEO, self._timeout_ms)
        if self.curve is not None:
            self.curve.secure(sock)  # before connect: the handshake starts with it
        watch = HandshakeWatch(sock)  # before connect too, or it could miss the handshake
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            watch.close()
            sock.close()
            raise ValueError(f"cannot connect to {self.endpoint!r}: {exc.strerror} (an "
                             "endpoint looks like tcp://host:port or ipc:///path)") from None
        self._socket, self._watch = sock, watch
        self._recv_timeout_ms = -1  # libzmq's default: none
        self._dealer_wrote = False
        return sock

    def _drop_socket(self) -> str | None:
        """Close the socket; returns why its last handshake failed, if it did."""
        self._node_limits = None  # the node may come back serving another region size
        self._drop_direct()
        failure = None
        if self._watch is not None:
            failure = self._watch.failure()
            self._watch.close()
            self._watch = None
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        return failure

    def _direct_link(self) -> DirectLink | None:
        """The direct link, opened if there is none and it is time to try again."""
        if self._direct is None and time.monotonic() >= self._direct_at:
            self._direct = DirectLink.open(self.endpoint, self.timeout_s)
            self._link_wrote = False
            if self._direct is None:  # tried again later, and less often each time
                self._direct_at = time.monotonic() + self._direct_wait_s
                self._direct_wait_s = min(2 * self._direct_wait_s, DIRECT_MAX_RETRY_S)
            else:
                self._direct_wait_s = DIRECT_RETRY_S
        return self._direct

    def _drop_direct(self) -> None:
        """Close the direct link (a reply still due on it is lost with it); a new one is tried
        after DIRECT_RETRY_S."""
        if self._direct is not None:
            self._direct.close()
            self._direct = None
            self._direct_at = time.monotonic() + DIRECT_RETRY_S

    def _lose_direct(self) -> None:
        """The direct link failed: closed, and the DEALER with it (nothing else is in flight
        while the link is used). The node answers a wait for the writes of the connection it
        comes on (_wait_both); the lost link's would be out of sight, and a new DEALER is a
        connection the node has not seen, for which it counts every write up to now."""
        self._drop_socket()

    def close(self) -> None:
        self._drop_socket()
        self._in_flight.clear()
        self._queued.clear()
        self._messages = 0
        self.closed = True

    def call(self, op: str, fields: dict[str, Any], frames: Sequence[Any] = ()) -> Reply:
        """Send one request and return its reply; raise what an error reply carries."""
        if not self._in_flight and self._socket is not None and self._worker_chosen:
            if op == "wait" and self._link_wrote:
                return self._wait_both(fields)
            template = self._template_of(op, fields)
            if template is not None:
                for frame in frames:
                    if type(frame) is not bytes or len(frame) > SOLO_FRAME_BYTES:
                        break
                else:
                    request_id = self._last_id = self._last_id + 1
                    head = template[0] + compact.pack_id(request_id) + template[1]
                    return self._call_alone(op, request_id, head, frames)
        return self.wait(self.send(op, fields, frames))

    def _call_alone(self, op: str, request_id: int, head: bytes,
                    frames: Sequence[bytes]) -> Reply:
        """call() of the usual request (a header from a template, small frames; or a wait,
        _wait_both), nothing else in flight: sent and its reply read here (over the direct
        link, clients/direct.py, if there is one, else through libzmq), the request kept in
        flight (_Sent, _Message) only if that reply is not the compact ok one it expects,
        when the usual way takes over. A third of a client's instructions a get
        (bench/README.md), and fewer objects made: fewer rounds of the garbage collector."""
        sock = self._socket
        received: Any = False
        link = self._direct_link() if len(frames) < MAX_CALL_FRAMES else None
        if link is not None:  # the round trip in C, no libzmq at this end
            if op in _WRITE_OPS:
                self._link_wrote = True
            deadline = time.monotonic() + self.timeout_s
            received = self._direct_call(link, head, frames)
            if received is False:  # not sent: a new DEALER takes it
                link, sock = None, self._open()
        if link is None and op in _WRITE_OPS:
            self._dealer_wrote = True
        if received is False and _ZMQ_CALL is not None and type(sock) is zmq.Socket:
            # the round trip in C
            if self._recv_timeout_ms != self._timeout_ms:  # as _receive sets it
                sock.setsockopt(zmq.RCVTIMEO, self._timeout_ms)
                self._recv_timeout_ms = self._timeout_ms
            deadline = time.monotonic() + self.timeout_s
            received = _ZMQ_CALL(sock, head, frames)
        if received is False:  # not sent (its pipe is full), or no compiled path
            # _transmit's sending, inline: a helper shared with it cost 1.3k instructions
            send = _BACKEND_SEND if type(sock) is zmq.Socket else type(sock).send
            last = len(frames) - 1
            deadline = time.monotonic() + self.timeout_s
            try:
                send(sock, head, _SNDMORE if last >= 0 else 0, True)
                for i, frame in enumerate(frames):
                    send(sock, frame, _SNDMORE if i < last else 0, True)
            except zmq.Again:  # no connection to send on (_open): as a reply overdue
                received = None
            else:
                received = self._receive(deadline)
        if received is not None:
            reply_head = bytes(received[0])  # bytes from C: itself, no copy
            if reply_head.startswith(_COMPACT_REPLY):
                try:
                    reply_id, result = compact.reply_result(reply_head, _TAG_BYTES)
                except ProtocolError:  # raised by the usual way, below
                    reply_id = None
                if reply_id == request_id:
                    return Reply(request_id, result, received[1:])
        sent = _Sent(request_id, op, [head, *frames],
                     self.retries + 1 if op in protocol.RESENDABLE else 1, 0, False)
        self._in_flight[request_id] = sent
        self._sent_now([sent], deadline)
        # the reply is not the one expected (another id, an error): the usual way reads it,
        # and what comes after it on the link
        while received is not None:
            self._take_message(received, sent)
            if link is None or sent.reply is not None or sent.error is not None:
                break
            received = self._direct_call(link, None, ())
        if received is None:
            self._timed_out()
        return self.wait(sent)

    def _direct_call(self, link: DirectLink, head: bytes | None,
                     frames: Sequence[bytes]) -> Any:
        """link.call, the link dropped if it fails: the reply's frames, None if it failed or
        no reply came in time (the request is lost, as an unanswered one), False if it was
        not sent (the node closed the link)."""
        try:
            received = link.call(head, frames)
        except OSError:
            received = None
        except BaseException:  # a signal handler's, say: what is left on the link is unknown
            self._lose_direct()
            raise
        if received is None or received is False:
            self._lose_direct()
        return received

    def _wait_both(self, fields: dict[str, Any]) -> Reply:
        """wait's reply while the direct link is open. The node counts the replicas that
        have applied the last write of the connection a wait comes on (broker/repl_source.py,
        WrittenOffsets), and the link is a connection of its own: asked on both, the fewer
        replicas is the answer (a replica that applied the later write applied the earlier,
        and one asked later has applied at least as much). A link found closed takes its
        DEALER with it (_lose_direct): the wait then goes to a new DEALER, for which the node
        counts every write up to now."""
        request_id = self._last_id = self._last_id + 1
        head, *frames = self._message(request_id, "wait", fields, ())
        through_link = self._call_alone("wait", request_id, head, frames)
        if not self._dealer_wrote:  # the link's writes are all there is
            return through_link
        through_dealer = self.wait(self.send("wait", fields))
        if through_link.result["replicas"] < through_dealer.result["replicas"]:
            return through_link
        return through_dealer

    def send(self, op: str, fields: dict[str, Any], frames: Sequence[Any] = (),
             hold: bool = False) -> _Sent:
        """Queue a request and return it: wait() gives its reply. Sent now, or with the
        queue's next batch if hold (a pipeline's), once fewer than MAX_IN_FLIGHT messages
        are in flight."""
        if self.closed:
            raise CacheClosed("this RemoteCache is closed; create a new one")
        if not self._worker_chosen:  # stick to one of the node's workers (clients/workers.py)
            self._choose_worker()
        if op in _WRITE_OPS:
            self._dealer_wrote = True
        payload_bytes, solo = 0, False
        if len(frames) == 1 and type(frames[0]) is bytes \
                and len(frames[0]) <= SOLO_FRAME_BYTES:  # a key: the usual request
            payload_bytes = len(frames[0])
        elif frames:
            sizes = [memoryview(f).nbytes for f in frames]
            largest, payload_bytes = max(sizes), sum(sizes)
            if largest > CHECK_LIMITS_ABOVE_BYTES:
                self._check_message_bytes(op, largest)
            solo = largest > SOLO_FRAME_BYTES
        self._last_id += 1
        request_id = self._last_id
        sent = _Sent(request_id, op, self._message(request_id, op, fields, frames),
                     self.retries + 1 if op in protocol.RESENDABLE else 1, payload_bytes, solo)
        self._in_flight[request_id] = sent
        if not hold and not self._queued and self._messages < protocol.MAX_IN_FLIGHT:
            self._transmit([sent])  # a call, nothing queued: flush() would do just this
            return sent
        self._queued.append(sent)
        if not hold or len(self._queued) >= self._batch_requests:
            self.flush()
            # a pipeline far ahead of its replies: take some in before queuing more
            while len(self._queued) >= 2 * self._batch_requests:
                self._next_reply()
        return sent

    def _message(self, request_id: int, op: str, fields: dict[str, Any],
                 frames: Sequence[Any]) -> list[Any]:
        """The frames of a request, as protocol.encode_request makes them. The usual request
        (an op with a compact form and no field but coll, and ttl_s if it is None) has its
        header made from a template kept per op and collection, in which only the id changes
        (compact.request_template)."""
        template = self._template_of(op, fields)
        if template is not None:
            return [template[0] + compact.pack_id(request_id) + template[1], *frames]
        fields["timeout_ms"] = self._timeout_ms
        return protocol.encode_request(request_id, op, fields, frames)

    def _template_of(self, op: str, fields: dict[str, Any]) -> tuple[bytes, bytes] | None:
        """(before, after) of the header of a request with these fields, if it has a
        template; None if it needs protocol.encode_request."""
        coll = ""
        if fields:  # a get in the default collection has none
            coll = fields.get("coll", "")
            if type(coll) is not str or fields.get("ttl_s") is not None \
                    or not fields.keys() <= _TEMPLATE_FIELDS:
                return None
        template = self._templates.get((op, coll), _UNKNOWN)
        return self._template(op, coll) if template is _UNKNOWN else template

    def _template(self, op: str, coll: str) -> tuple[bytes, bytes] | None:
        if len(self._templates) >= MAX_TEMPLATES:  # a program that names many collections
            self._templates.clear()
        made = compact.request_template(op, {"timeout_ms": self._timeout_ms, "coll": coll})
        template = None if made is None else (protocol.PROTOCOL_TAG + made[0], made[1])
        self._templates[op, coll] = template
        return template

    def _choose_worker(self) -> None:
        """Ask the node (ping) for its workers and stick to one of them: a client's requests
        stay in order on one worker (clients/workers.py says which). The reply also says
        whether the node reads batches."""
        self._worker_chosen = True  # the ping itself goes where the endpoint says
        try:
            ping = self.call("ping", {}).result
        except RemoteUnavailable:  # ask again at the next call
            self._worker_chosen = False
            raise
        chosen = choose_worker(self.endpoint, ping)
        limits = ping.get("limits") if isinstance(ping, dict) else None
        most = limits.get("max_batch_requests") if isinstance(limits, dict) else None
        if type(most) is int and most > 1:
            self._batch_requests = min(most, BATCH_REQUESTS)
        if chosen != self.endpoint:
            self._drop_socket()
            self.endpoint = chosen

    def wait(self, sent: _Sent) -> Reply:
        """The reply to a request queued; raise what an error reply carries, or
        RemoteUnavailable. Replies to the requests before it are kept for their wait()."""
        while sent.reply is None and sent.error is None:
            if sent.id not in self._in_flight:  # abandoned, or the connection closed
                raise CacheClosed("this request was abandoned: its pipeline or RemoteCache "
                                  "was closed before its reply came")
            self._next_reply()
        if sent.error is not None:
            raise sent.error
        reply = sent.reply
        if reply.error is not None:  # type: ignore[union-attr]
            raise protocol.exception_from(reply)  # type: ignore[arg-type]
        return reply  # type: ignore[return-value]

    def settle(self, sent: Iterable[_Sent]) -> None:
        """Take in the replies to these requests (their errors stay with them)."""
        for each in sent:
            while each.reply is None and each.error is None and each.id in self._in_flight:
                self._next_reply()

    def abandon(self, sent: Iterable[_Sent]) -> None:
        """Forget requests queued or in flight: those queued are not sent, and the late
        replies of the others are dropped as they come."""
        for each in sent:
            if self._in_flight.pop(each.id, None) is not None:
                self._done(each)

    def _done(self, sent: _Sent) -> None:
        """sent is out of _in_flight: its message has one reply less due."""
        message = sent.sent_in
        if message is not None:
            message.left -= 1
            if not message.left:
                self._messages -= 1

    def flush(self) -> None:
        """Send what is queued, in order, while fewer than MAX_IN_FLIGHT messages are in
        flight: as batches, to a node that reads them, else a message each."""
        queued, in_flight = self._queued, self._in_flight
        while queued and self._messages < protocol.MAX_IN_FLIGHT:
            first = queued.popleft()
            if first.id not in in_flight:  # abandoned before it was sent
                continue
            group = [first]
            if not first.solo:
                payload_bytes, most = first.payload_bytes, self._batch_requests
                while queued and len(group) < most:
                    nxt = queued[0]
                    if nxt.id not in in_flight:
                        queued.popleft()
                        continue
                    if nxt.solo or payload_bytes + nxt.payload_bytes > BATCH_BYTES:
                        break
                    payload_bytes += nxt.payload_bytes
                    group.append(queued.popleft())
            self._transmit(group)

    def _transmit(self, group: list[_Sent]) -> None:
        sock = self._socket or self._open()
        send = _BACKEND_SEND if type(sock) is zmq.Socket else type(sock).send
        message = group[0].message if len(group) == 1 else \
            batches.encode(batches.REQUEST_FORM, [sent.message for sent in group])
        # a request's frames are copied into its messages (cheaper than copy=False's view,
        # which pyzmq then copies anyway below its copy threshold, 64 KiB), but not a large
        # value's (a solo request) or a batch's payload (up to BATCH_BYTES)
        last, copy = len(message) - 1, len(group) == 1 and not group[0].solo
        try:
            for i in range(last):  # frame by frame: cheaper than send_multipart
                send(sock, message[i], _SNDMORE, copy)
            send(sock, message[last], 0, copy)
        except zmq.Again:  # no connection to send on (_open): as sent, its reply overdue
            self._sent_now(group, time.monotonic())
            return
        self._sent_now(group, time.monotonic() + self.timeout_s)

    def _sent_now(self, group: list[_Sent], deadline: float) -> None:
        """group has gone, as one message: its replies are due by deadline."""
        in_flight = _Message(group)
        for sent in group:
            sent.attempts -= 1
            sent.deadline = deadline
            sent.sent_in = in_flight
        self._messages += 1

    def _next_reply(self) -> None:
        """Take the next reply in (for whichever requests in flight it answers), send what is
        queued if nothing older is in flight, or handle the timeout of the oldest request."""
        oldest = next(iter(self._in_flight.values()))
        if oldest.sent_in is None:  # queued: nothing before it is in flight
            self.flush()
            return
        frames = self._receive(oldest.deadline)
        if frames is None:
            self._timed_out()
            return
        self._take_message(frames, oldest)
        if self._queued:
            self.flush()

    def _take_message(self, frames: list[zmq.Frame], oldest: _Sent) -> None:
        """A message received: the reply (or the batch of replies) to requests in flight,
        oldest the oldest of them. One this side cannot read is taken as the oldest
        message's, as one whose id the node could not read: its requests raise the error."""
        try:
            self._read_message(frames, oldest)
        except ProtocolError as exc:
            for sent in oldest.sent_in.members:  # type: ignore[union-attr]
                if self._in_flight.pop(sent.id, None) is not None:
                    sent.error = exc
                    self._done(sent)

    def _read_message(self, frames: list[Any], oldest: _Sent) -> None:
        head = bytes(frames[0])  # a zmq.Frame, or bytes (zmq_call's)
        if head.startswith(_COMPACT_REPLY):
            request_id, result = compact.reply_result(head, _TAG_BYTES)
            self._take(request_id, Reply(request_id, result, frames[1:]))
        elif batches.is_batch(head, batches.REPLY_FORM):
            self._take_batch(batches.decode_replies([head, *frames[1:]]))
        else:
            reply = protocol.decode_reply(frames)
            if reply.id is None and not reply.ok:  # a node that could not read the id
                # answers in order: this is the oldest message's reply, all of it
                for sent in oldest.sent_in.members:
                    self._take(sent.id, Reply(sent.id, error=reply.error,
                                              message=reply.message))
            else:
                self._take(reply.id, reply)  # type: ignore[arg-type]

    def _receive(self, deadline: float) -> list[zmq.Frame] | None:
        """The next message, or None if none came by deadline. A blocking recv with a
        timeout (ZMQ_RCVTIMEO, set again only when it changes: pyzmq's setsockopt costs
        ~0.4 us) rather than zmq_poll then recv (~1 us more). Frames, not bytes: a Frame
        says whether more follow, where getsockopt(RCVMORE) costs ~0.6 us a frame; a value is
        copied once all the same, out of the Frame, and get_array's data is viewed, not
        copied."""
        sock = self._socket or self._open()
        left_ms = math.ceil((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            return None
        if left_ms != self._recv_timeout_ms:
            sock.setsockopt(zmq.RCVTIMEO, left_ms)
            self._recv_timeout_ms = left_ms
        try:
            frame = sock.recv(0, False)
        except zmq.Again:
            return None
        frames = [frame]
        while frame.more:  # the rest of a message is there once its first frame is
            frame = sock.recv(0, False)
            frames.append(frame)
        return frames

    def _take_batch(self, replies: list[Reply]) -> None:
        """A batch's replies: by id, or by position for one whose id the node could not read
        (batches.py), in the message that the others' ids name."""
        message = next((self._in_flight[r.id].sent_in for r in replies
                        if r.id in self._in_flight), None)
        for at, reply in enumerate(replies):
            if reply.id is None and message is not None and at < len(message.members):
                reply.id = message.members[at].id
            self._take(reply.id, reply)  # type: ignore[arg-type]

    def _take(self, request_id: int, reply: Reply) -> None:
        sent = self._in_flight.pop(request_id, None)
        if sent is not None:  # else: the late reply to a request given up on
            sent.reply = reply
            self._done(sent)

    def _timed_out(self) -> None:
        """Lazy Pirate: the oldest request got no reply in time. A fresh socket; the requests
        in flight are sent again on it if they have attempts left and may be
        (protocol.RESENDABLE), in the order they were first sent, or fail with
        RemoteUnavailable."""
        failure = self._drop_socket()
        why = failure or (AUTH_HINT if self.curve is not None else
                          "is the node running (shmkv serve)?")
        self._messages = 0
        again: deque[_Sent] = deque()
        for sent in list(self._in_flight.values()):
            if sent.sent_in is None or sent.attempts > 0:  # queued, or may go again
                sent.sent_in = None
                again.append(sent)
                continue
            del self._in_flight[sent.id]
            if sent.op in protocol.RESENDABLE:
                sent.error = RemoteUnavailable(
                    f"no reply from {self.endpoint} to {sent.op} within {self.timeout_s} s, "
                    f"{self.retries + 1} attempt(s); {why}")
            else:
                sent.error = OutcomeUnknown(
                    f"no reply from {self.endpoint} to {sent.op} within {self.timeout_s} s; "
                    f"not sent again, as a second {sent.op} may not do what the first did: it "
                    f"may or may not have been applied (read the key to find out); {why}")
        self._queued = again
        self.flush()

    def _check_message_bytes(self, op: str, frame_bytes: int) -> None:
        if self._node_limits is None:
            self._node_limits = self.call("ping", {}).result.get("limits") or {}
        cap = self._node_limits.get("max_message_bytes")
        if type(cap) is int and frame_bytes > cap:
            raise RequestTooLarge(
                f"{op}: a frame of {frame_bytes} bytes is over the node's limit of {cap} bytes "
                "per message (max_message_bytes, from its arena size); no value that large "
                "fits its region: split it, or serve a region with a larger arena")
