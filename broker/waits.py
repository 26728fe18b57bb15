"""Requests that wait for a busy lock, so that the node's one loop keeps serving the others.

The node's handle on the region waits only TRY_LOCK_S for a lock (server.py). A request that
finds a lock busy for longer (a local writer stopped or stuck while holding it) is parked here
and retried from the loop every RETRY_S, while every other request is served. It is answered
when a try succeeds, or with LockTimeout at its deadline: DEADLINE_SHARE of the client's
timeout_ms (protocol.py), at most the node's lock timeout.

Order. Requests on the same key are served in the order they arrived: a request that shares a
key with a parked one is parked behind it without a try, and a parked request is retried only
when no earlier parked one shares a key with it. A request whose keys are not known from its
frames (batches, whole-collection and region commands) counts as sharing a key with every
other, so it waits for all the parked requests before it, and all the later ones wait for it.
A ping touches no key and takes no lock: it never waits (a client's first call is one).
At most MAX_WAITING requests, of at most MAX_WAITING_BYTES of payload in all, wait; one more is
answered LockTimeout at once (a parked request keeps its message, values included).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shmkv.errors import LockTimeout

from . import protocol
from .protocol import Reply, Request

# How long the node's handle waits for a lock before the request is parked: a live writer
# holds a lock for microseconds, so a wait this long means that its holder is not running.
TRY_LOCK_S = 0.001
RETRY_S = 0.002  # how often parked requests are tried again
MAX_WAITING = 256  # each retry may cost TRY_LOCK_S of the loop: bound the work per round
MAX_WAITING_BYTES = 64 << 20

# Commands whose first frame is the one key they touch (rename: its two frames are two keys).
_ONE_KEY = frozenset(op for op, n in protocol.REQUEST_FRAMES.items() if n in (1, 2)) \
    - {"get_many", "publish", "rename"}
Keys = frozenset[tuple[str, bytes]] | None  # None: every key
Answer = tuple[Any, Reply, float]  # (routing id, reply, when the request arrived)


def keys_of(request: Request) -> Keys:
    """The keys a request touches, for ordering; None for "maybe any"."""
    if request.op in _ONE_KEY:
        return frozenset({(request.coll, bytes(request.frames[0]))})
    if request.op == "rename":
        return frozenset((request.coll, bytes(f)) for f in request.frames)
    if request.op == "ping":
        return frozenset()
    return None


def _overlap(a: Keys, b: Keys) -> bool:
    if a == frozenset() or b == frozenset():  # no key at all: nothing to keep in order with
        return False
    return a is None or b is None or not a.isdisjoint(b)


@dataclass(slots=True)
class _Waiting:
    routing_id: Any
    request: Request
    keys: Keys
    received_s: float
    deadline_s: float
    payload_bytes: int


class LockWaits:
    """The parked requests of one node, in arrival order."""

    def __init__(self, lock_timeout_s: float, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.lock_timeout_s = lock_timeout_s
        self._clock = clock
        self._queue: list[_Waiting] = []
        self._payload_bytes = 0  # of the requests in _queue
        self._next_retry_s = float("inf")

    def __len__(self) -> int:
        return len(self._queue)

    def due(self) -> float:
        """When the loop should call retry() next (monotonic seconds; inf: nothing waits)."""
        return self._next_retry_s if self._queue else float("inf")

    def deadline_of(self, request: Request, received_s: float) -> float:
        budget_s = self.lock_timeout_s
        timeout_ms = request.fields.get("timeout_ms")
        if timeout_ms is not None:
            budget_s = min(budget_s, timeout_ms / 1000 * protocol.DEADLINE_SHARE)
        return received_s + budget_s

    def submit(self, routing_id: Any, request: Request,
               attempt: Callable[[Request], Reply | None], last_error: Callable[[], str]
               ) -> Reply | None:
        """Serve a request that just arrived: its reply, or None if it is parked."""
        now = self._clock()
        keys = keys_of(request)
        if not any(_overlap(keys, w.keys) for w in self._queue):
            reply = attempt(request)
            if reply is not None:
                return reply
        payload_bytes = sum(f.nbytes for f in request.frames)
        if len(self._queue) >= MAX_WAITING \
                or self._payload_bytes + payload_bytes > MAX_WAITING_BYTES:
            return protocol.error_reply(request.id, LockTimeout(
                f"{len(self._queue)} requests of {self._payload_bytes} bytes already wait for "
                f"busy locks on this node (at most {MAX_WAITING}, of {MAX_WAITING_BYTES} "
                f"bytes); try again later (last lock error: {last_error() or 'none'})"),
                op=request.op)
        if not self._queue:
            self._next_retry_s = now + RETRY_S
        self._queue.append(_Waiting(routing_id, request, keys, now,
                                    self.deadline_of(request, now), payload_bytes))
        self._payload_bytes += payload_bytes
        return None

    def retry(self, attempt: Callable[[Request], Reply | None], last_error: Callable[[], str]
              ) -> list[Answer]:
        """Try the parked requests again, in order; those done, answered."""
        done: list[Answer] = []
        still: list[_Waiting] = []
        for w in self._queue:
            reply = None
            if not any(_overlap(w.keys, earlier.keys) for earlier in still):
                reply = attempt(w.request)
            if reply is None and self._clock() >= w.deadline_s:
                reply = self._timed_out(w, last_error())
            if reply is None:
                still.append(w)
            else:
                done.append((w.routing_id, reply, w.received_s))
                self._payload_bytes -= w.payload_bytes
        self._queue = still
        self._next_retry_s = self._clock() + RETRY_S
        return done

    def _timed_out(self, w: _Waiting, last_error: str) -> Reply:
        waited_s = self._clock() - w.received_s
        # the engine's message names the lock and its holder; its advice (lock_timeout_s) is
        # for a local handle, not for a client of the node
        what = re.search(r"(stripe \d+|arena) lock", last_error)
        holder = re.search(r"held by pid (\S+?),", last_error)
        return protocol.error_reply(w.request.id, LockTimeout(
            f"{w.request.op}: the {what.group(0) if what else 'lock'} it needs stayed busy for "
            f"{waited_s:.2f} s, held by pid {holder.group(1) if holder else '?'}, to the "
            f"request's deadline ({protocol.DEADLINE_SHARE:g} of the client's timeout_s, at "
            f"most the node's lock timeout of {self.lock_timeout_s:g} s). If that process is "
            "stopped or stuck, stop it; if it is just busy, give the client a longer "
            "timeout_s"), op=w.request.op)

    def expire_all(self, last_error: str) -> list[Answer]:
        """Answer every parked request LockTimeout now (the node is stopping)."""
        done = [(w.routing_id, self._timed_out(w, last_error), w.received_s)
                for w in self._queue]
        self._queue, self._payload_bytes = [], 0
        return done
