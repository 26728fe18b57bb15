"""The ZeroMQ door: answering the requests read off the ROUTER (a mixin of the node, server.py,
whose loop serves them, and so of each worker, worker.py).

A request is read whole (router.py), decoded (protocol.py, compact.py), run (dispatch.py) or
parked while a lock it needs is busy (waits.py), and its reply sent after the events it caused
(pubsub.py). A batch (batches.py) runs its requests in order, each as if it came alone, and
gets one message of replies. The plain get, the request a node answers most, skips the
decoding and the Reply: _answer_plain_get.

The mixin reads these attributes of the node: metrics, _requests (the requests' handle),
_waits (LockWaits), _written (WrittenOffsets), _zero_copy (ZeroCopy), _compiled (the compiled
plain gets, compiled_door.py, or None).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from shmkv.errors import ProtocolError, RequestTooLarge

from . import batches, compact, protocol
from .dispatch import Dispatcher, get_result
from .protocol import WRITE_OPS
from .router import receive, send_or_drop, too_many_frames
from .waits import RequestJob
from .zerocopy import LEND

if TYPE_CHECKING:
    from shmkv.events import EventReader

    from .pubsub import Publisher
    from .signals import StopSignals

# Requests answered per wake-up before the loop looks at the clock and the signals again: a
# flood of requests must not starve maintenance or delay a stop for long.
MAX_BATCH = 64
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)  # plain ints: pyzmq's enums cost ~1 us
_REPLY_TAG, _AT = protocol.PROTOCOL_TAG, len(protocol.PROTOCOL_TAG)
_PLAIN_GET, _PLAIN_GET_BYTES = _REPLY_TAG + compact.PLAIN_GET, _AT + compact.PLAIN_GET_BYTES


class _PlainGetReply:
    """A plain get's reply in a batch, encoded already: what batches.Replies and _send_batch
    read of a protocol.Reply (frames, op, error), and the entry's frames (encoded)."""

    __slots__ = ("encoded", "frames")
    op, error = "get", None

    def __init__(self, encoded: list[Any]) -> None:
        self.encoded, self.frames = encoded, encoded[1:]


class ZmqDoor:
    def _answer_waiting(self, router: zmq.Socket, dispatcher: Dispatcher, publisher: Publisher,
                        events: EventReader) -> None:
        """Answer the requests waiting on the ROUTER, at most MAX_BATCH: the plain gets in C
        while nothing has to go out before their replies (compiled_door.py), the rest here."""
        budget = MAX_BATCH
        while budget > 0:
            compiled = self._compiled
            if compiled is not None and not self._waits.queue and not publisher.listening:
                answered, received = compiled.serve(budget)
                budget -= answered
                if received is None:
                    return
                budget -= 1
                self._answer_handed_back(router, dispatcher, publisher, events, received)
                continue
            # After the first (the poll said one is there), ask before reading: a receive
            # that finds none raises zmq.Again, twice the cost of asking (~2.5 us vs ~1 us)
            if budget < MAX_BATCH and not router.get(_EVENTS) & _POLLIN:
                return
            received = receive(router)
            if received is None:
                return
            routing_id, message = received
            budget -= 1
            self._answer(router, dispatcher, publisher, events, routing_id, message)

    def _poll(self, poller: zmq.Poller, stop: StopSignals, wake_at_s: float,
              router: zmq.Socket, dispatcher: Dispatcher, publisher: Publisher,
              events: EventReader) -> dict[object, int]:
        """The loop's poll until wake_at_s: in C while the compiled path may answer
        (compiled_door.py), which answers the plain requests that come while nothing else
        does, without a pass of the loop each; what is ready, as StopSignals.poll says."""
        compiled = self._compiled
        if compiled is None or self._waits.queue or publisher.listening:
            return stop.poll(poller, wake_at_s)
        _, ready, received = compiled.wait(poller.sockets, stop.timeout_ms(wake_at_s),
                                           MAX_BATCH)
        if received is not None:  # what it could not answer (the ROUTER is in ready: the rest)
            self._answer_handed_back(router, dispatcher, publisher, events, received)
        return stop.polled(ready)

    def _answer_handed_back(self, router: zmq.Socket, dispatcher: Dispatcher,
                            publisher: Publisher, events: EventReader,
                            received: tuple[Any, list[Any], int]) -> None:
        """Answer a message the compiled path handed back: (routing id, frames, dropped)."""
        routing_id, message, dropped = received
        if dropped:
            message = too_many_frames(message, dropped)
        self._answer(router, dispatcher, publisher, events, routing_id, message)

    def _answer(self, router: zmq.Socket, dispatcher: Dispatcher, publisher: Publisher,
                events: EventReader, routing_id: Any, message: list[Any] | protocol.Reply
                ) -> None:
        """Answer one request, as receive() read it."""
        started = time.monotonic()
        if type(message) is list and \
                self._answer_plain_get(router, routing_id, message, publisher, events, started):
            return
        if type(message) is list and message and \
                batches.is_batch(message[0], batches.REQUEST_FORM):
            self._answer_batch(router, dispatcher, publisher, events, routing_id, message,
                               started)
            return
        decoded = message if isinstance(message, protocol.Reply) else dispatcher.decode(message)
        if isinstance(decoded, protocol.Reply):
            reply: protocol.Reply | None = decoded
        else:
            if decoded.op == "wait":
                decoded.fields["after"] = self._written.after(bytes(routing_id))
            elif decoded.op in self._zero_copy.ops:  # sent from a pin if large
                decoded.fields[LEND] = self._zero_copy
            reply = self._run(routing_id, decoded, started, dispatcher,
                              lambda rid, late, at: self._send(router, [(rid, late, at)],
                                                               publisher, events))
        if reply is not None:  # else parked: waits.py answers it later (the lambda)
            self._send(router, [(routing_id, reply, started)], publisher, events)

    def _answer_plain_get(self, router: zmq.Socket, routing_id: Any, message: list[Any],
                          publisher: Publisher, events: EventReader, started: float) -> bool:
        """Answer a plain get as dispatch.py's get would, without decoding it or making its
        Reply (a fifth of what a get costs the node: bench/README.md); True if it was one and
        is answered. Not while any request is parked: it would pass its client's earlier one
        (waits.py)."""
        if self._waits.queue:
            return False
        reply = self._plain_get(message, self._zero_copy if self._zero_copy.ops else None)
        if reply is None:
            return False
        if publisher.listening:  # the events before it first, as _send
            publisher.pump(events)
        send_or_drop(router, [routing_id, *reply])
        if self.metrics is not None:  # _observe's, inline
            self.metrics.requests.observe("get", "ok", time.monotonic() - started)
        return True

    def _plain_get(self, message: list[Any], lender: Any) -> list[Any] | None:
        """The reply's frames if message is a plain get (compact.py), None if it is not. A
        read that raises is None too: the long way answers it, as it answers any error."""
        head = message[0]
        if len(message) != 2 or type(head) is not bytes or len(head) != _PLAIN_GET_BYTES \
                or not head.startswith(_PLAIN_GET):
            return None
        try:
            found, frames = get_result(self._requests, memoryview(message[1]), lender)
        except Exception:  # noqa: BLE001
            return None
        return [compact.plain_get_reply(head, _AT, found, _REPLY_TAG), *frames]

    def _answer_batch(self, router: zmq.Socket, dispatcher: Dispatcher, publisher: Publisher,
                      events: EventReader, routing_id: Any, message: list[Any],
                      started: float) -> None:
        """Run a batch's requests in order, each as if it came alone (parked on a busy lock
        like any other: waits.py); send their replies as one batch once all are in
        (batches.py)."""
        try:
            entries = batches.decode(message, batches.REQUEST_FORM)
        except (ProtocolError, RequestTooLarge) as exc:
            self._send(router, [(routing_id, protocol.error_reply(None, exc, op="invalid"),
                                 started)], publisher, events)
            return
        if not entries:
            self._send_batch(router, routing_id, [], started, publisher, events)
            return
        limits = dispatcher.limits
        replies = batches.Replies(
            len(entries), limits["max_reply_bytes"] if limits is not None else None,
            lambda done: self._send_batch(router, routing_id, done, started, publisher, events))
        key = bytes(routing_id)
        waiting, decode, attempt = self._waits.queue, dispatcher.decode, dispatcher.attempt
        cap = replies.max_reply_bytes
        for index, entry in enumerate(entries):
            if cap is not None and replies.payload_bytes > cap:  # the rest is not run
                replies.fill(index, protocol.error_reply(
                    protocol.request_id_of(entry), replies.over_limit(), op="invalid"))
                continue
            if not waiting and self._fill_plain_get(replies, index, entry):
                continue
            decoded = decode(entry)
            if isinstance(decoded, protocol.Reply):
                replies.fill(index, decoded)
                continue
            if decoded.op == "wait":  # after the writes before it, this batch's included
                decoded.fields["after"] = self._written.after(key)
            # _run's first step inline: the common case makes no closure
            reply = None if waiting else attempt(decoded)
            if reply is None:
                fill = self._batch_filler(replies, index, key)
                reply = self._run(routing_id, decoded, started, dispatcher,
                                  lambda rid, late, at, fill=fill: fill(late),
                                  tried=not waiting)
                if reply is not None:  # else parked: waits.py answers it later (fill)
                    fill(reply)
                continue
            if reply.error is None and reply.op in WRITE_OPS:
                self._written.note(key)
            replies.fill(index, reply)

    def _fill_plain_get(self, replies: batches.Replies, index: int, entry: list[Any]) -> bool:
        """A batch's entry that is a plain get, answered as _answer_plain_get answers one
        alone (a value copied: a batch's payload is one frame); True if it was one and is
        answered. Only while nothing is parked: the caller checks."""
        reply = self._plain_get(entry, None)
        if reply is None:
            return False
        replies.fill(index, _PlainGetReply(reply))
        return True

    def _run(self, routing_id: Any, request: protocol.Request, started: float,
             dispatcher: Dispatcher, answer: Callable[[Any, protocol.Reply, float], None],
             tried: bool = False) -> protocol.Reply | None:
        """The reply to a request, or None if it is parked on a busy lock (answer gets its
        reply later): waits.submit, without making a job for a request that is not parked
        when nothing waits (then nothing is there to keep order with: ~2 us a request).
        tried: the caller attempted it already while nothing waited, and found a lock busy."""
        waits = self._waits
        if waits.queue and not tried:
            return waits.submit(RequestJob(routing_id, request, started, dispatcher, answer,
                                           waits.lock_timeout_s))
        if not tried:
            reply = dispatcher.attempt(request)
            if reply is not None:
                return reply
        job = RequestJob(routing_id, request, started, dispatcher, answer, waits.lock_timeout_s)
        job.last_error = dispatcher.last_lock_timeout  # as job.attempt() would have noted
        return waits.park(job)

    def _batch_filler(self, replies: batches.Replies, index: int,
                      key: bytes) -> Callable[[protocol.Reply], None]:
        def fill(reply: protocol.Reply) -> None:
            # noted now, not when the batch is sent: a wait later in the batch counts it
            if reply.error is None and reply.op in WRITE_OPS:
                self._written.note(key)
            replies.fill(index, reply)
        return fill

    def _send_batch(self, router: zmq.Socket, routing_id: Any, replies: list[protocol.Reply],
                    started: float, publisher: Publisher, events: EventReader) -> None:
        """Send a batch's replies as one message (after its requests' events, as _send)."""
        if publisher.listening:
            publisher.pump(events)
        send_or_drop(router, [routing_id, *batches.encode(
            batches.REPLY_FORM, [reply.encoded if type(reply) is _PlainGetReply else
                                 protocol.encode_reply(reply) for reply in replies])])
        latency_s = time.monotonic() - started
        for reply in replies:
            self._observe(reply.op, latency_s, reply.error)

    def _send(self, router: zmq.Socket, replies: list[tuple[Any, protocol.Reply, float]],
              publisher: Publisher, events: EventReader) -> None:
        """Send (routing id, reply, when the request arrived: time.monotonic()) each."""
        for routing_id, reply, started in replies:
            # While someone listens, forward the request's events before replying: the rings
            # keep order only per stripe, so this is what publishes the events of requests in
            # the order they were made (publish("a") before publish("b")), and before anything
            # the client does once it has the reply. Nobody listening: the loop's pump drains.
            if publisher.listening:
                publisher.pump(events)
            send_or_drop(router, [routing_id, *protocol.encode_reply(reply)])
            self._observe(reply.op, time.monotonic() - started, reply.error)
            if reply.error is None and reply.op in WRITE_OPS:
                self._written.note(bytes(routing_id))

    def _observe(self, request: str, latency_s: float, error: str | None) -> None:
        if self.metrics is not None:
            self.metrics.observe_request(request or "invalid", error or "ok", latency_s)
