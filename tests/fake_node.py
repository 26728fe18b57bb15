"""A fake node for client tests: a ROUTER socket in a thread that answers by a script, so that
a test decides which request is answered, when, and with which id (importable by name: pytest
puts tests/ on sys.path)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import zmq

from shmkv.broker import batches, protocol

WAIT_S = 10
# The id of a client's first scripted request: its first call is preceded by a ping (id 1),
# which asks the node about its workers and which this node answers outside the script.
FIRST_ID = 2
# What a fake node that reads batches says is its limit (fewer than a client's batch size).
MAX_BATCH_REQUESTS = 100
Step = Callable[[protocol.Request], list[protocol.Reply] | list[list[bytes]]] | None


class FakeNode:
    """A ROUTER in a thread that runs a script: a list of what to do with each request it
    receives, in order (None: leave it unanswered; else a function request -> replies, sent
    to the connection the request came from, a message each; a reply may also be a list of
    frames, sent as they are). With reads_batches, its ping
    says that it reads batches, and each request of a batch is a step of its own."""

    def __init__(self, script: list[Step], reads_batches: bool = False) -> None:
        self.socket = zmq.Context.instance().socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind("tcp://127.0.0.1:*")
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.received: list[tuple[bytes, int, str]] = []  # (routing id, request id, op)
        self.messages: list[list[int]] = []  # the request ids of each message received
        self._reads_batches = reads_batches  # says so in its ping reply (broker/batches.py)
        self._pending: list[tuple[bytes, protocol.Request]] = []  # a batch's, one by one
        self._script = script
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for step in self._script:
            received = self._receive()
            if received is None:
                return
            routing_id, request = received
            self.received.append((routing_id, request.id, request.op))
            for reply in (step(request) if step else []):
                frames = reply if isinstance(reply, list) else protocol.encode_reply(reply)
                self.socket.send_multipart([routing_id, *frames])

    def _receive(self) -> tuple[bytes, protocol.Request] | None:
        """The next request that is not a ping; pings (a client's first call asks about the
        node's workers) are answered as a node without workers answers them, and are not
        steps of the script."""
        while self._pending or self.socket.poll(WAIT_S * 1000):
            if self._pending:
                return self._pending.pop(0)
            routing_id, *frames = self.socket.recv_multipart()
            if batches.is_batch(frames[0], batches.REQUEST_FORM):
                requests = [protocol.decode_request(entry)
                            for entry in batches.decode(frames, batches.REQUEST_FORM)]
                self.messages.append([r.id for r in requests])
                self._pending = [(routing_id, r) for r in requests]
                continue
            request = protocol.decode_request(frames)
            if request.op != "ping":
                self.messages.append([request.id])
                return routing_id, request
            limits = {"max_batch_requests": MAX_BATCH_REQUESTS} if self._reads_batches else None
            self.socket.send_multipart([routing_id, *protocol.encode_reply(
                protocol.Reply(request.id, {"limits": limits} if limits else {}))])
        return None

    def close(self) -> None:
        self._thread.join(WAIT_S)
        self.socket.close()

    def __enter__(self) -> FakeNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
