"""Requests that wait for a busy lock, so that the node's one loop keeps serving the others:
one queue for both doors (the ZeroMQ door's requests, RequestJob here; the Redis door's
commands, resp_door.py's CommandJob).

The node's handle on the region waits only TRY_LOCK_S for a lock (server.py). A request that
finds a lock busy for longer (a local writer stopped or stuck while holding it) is parked here
and retried from the loop every RETRY_S, while every other request is served. It is answered
when a try succeeds, or with LockTimeout at its deadline: the node's lock timeout, or sooner
if the client said how long it waits (a ZeroMQ request's timeout_ms: DEADLINE_SHARE of it).

A door hands in a Job: what it touches (keys), how to try it (attempt: the reply, or None
while a lock is busy), how to say LockTimeout in its protocol (refuse), and where a reply
made later goes (answer). The queue knows nothing of either wire.

Order. Requests on the same key are served in the order they arrived, whichever door they came
through: a request that shares a key with a parked one is parked behind it without a try, and a
parked request is retried only when no earlier parked one shares a key with it. A request whose
keys are not known (batches, whole-collection and region commands) counts as sharing a key with
every other, so it waits for all the parked requests before it, and all the later ones wait for
it; one that touches no key (NO_KEYS: PING, AUTH, ...) waits for none (a ZeroMQ client's
first call is a ping). Order per connection is the door's business (the Redis door runs none of
a connection's later commands while one of them is parked). At most MAX_WAITING requests, of at
most MAX_WAITING_BYTES of payload in all, wait; one more is refused LockTimeout at once (a
parked request keeps its message, values included).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from shmkv.errors import LockTimeout

from . import protocol
from .protocol import Reply, Request
from .wire_ops import KEY_BATCH_OPS

if TYPE_CHECKING:
    from .dispatch import Dispatcher

# How long the node's handle waits for a lock before the request is parked: a live writer
# holds a lock for microseconds, so a wait this long means that its holder is not running.
TRY_LOCK_S = 0.001
RETRY_S = 0.002  # how often parked requests are tried again
MAX_WAITING = 256  # each retry may cost TRY_LOCK_S of the loop: bound the work per round
MAX_WAITING_BYTES = 64 << 20

# Commands whose first frame is the one key they touch (rename: its two frames are two keys;
# a batch of keys and scan's pattern are not one key: they may touch any).
_ONE_KEY = frozenset(op for op, n in protocol.REQUEST_FRAMES.items() if n in (1, 2)) \
    - KEY_BATCH_OPS - {"publish", "rename", "scan"}
Keys = frozenset[tuple[str, bytes]] | None  # (collection, key) pairs; None: every key
NO_KEYS: Keys = frozenset()


class Job(Protocol):
    """One request of a door, as the queue sees it."""

    op: str  # the command's name, for messages
    keys: Keys
    payload_bytes: int  # what parking it keeps in memory
    received_s: float  # when it arrived (the queue's clock)
    budget_s: float | None  # how long its client waits for it; None: not said
    last_error: str  # the engine's message of the last busy lock it met (set by attempt)

    def attempt(self) -> Any | None:
        """The reply, or None while a lock it needs is busy (nothing was changed then)."""

    def refuse(self, message: str, timed_out: bool) -> Any:
        """The reply that says LockTimeout with message (timed_out: at its deadline, else
        refused at once because too many wait)."""

    def answer(self, reply: Any) -> None:
        """Hand a reply made after submit() returned to the job's door."""


def keys_of(request: Request) -> Keys:
    """The keys a ZeroMQ request touches, for ordering; None for "maybe any"."""
    if request.op in _ONE_KEY:
        return frozenset({(request.coll, bytes(request.frames[0]))})
    if request.op == "rename":
        return frozenset((request.coll, bytes(f)) for f in request.frames)
    if request.op == "ping":
        return NO_KEYS
    return None


def _overlap(a: Keys, b: Keys) -> bool:
    if a == NO_KEYS or b == NO_KEYS:  # no key at all: nothing to keep in order with
        return False
    return a is None or b is None or not a.isdisjoint(b)


@dataclass(slots=True)
class _Waiting:
    job: Job
    deadline_s: float


class LockWaits:
    """The parked requests of one node, in arrival order."""

    def __init__(self, lock_timeout_s: float, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.lock_timeout_s = lock_timeout_s
        self.clock = clock
        # The parked requests, in arrival order. Always this list, changed in place: a door
        # keeps it to see at the cost of a truth test whether anything waits (its hot path).
        self.queue: list[_Waiting] = []
        self._payload_bytes = 0  # of the requests in queue
        self._next_retry_s = float("inf")

    def __len__(self) -> int:
        return len(self.queue)

    def due(self) -> float:
        """When the loop should call retry() next (monotonic seconds; inf: nothing waits)."""
        return self._next_retry_s if self.queue else float("inf")

    def deadline_of(self, job: Job) -> float:
        budget_s = self.lock_timeout_s
        if job.budget_s is not None:
            budget_s = min(budget_s, job.budget_s)
        return job.received_s + budget_s

    def submit(self, job: Job) -> Any | None:
        """Serve a request that just arrived: its reply, or None if it is parked (its reply
        then goes to job.answer, from retry() or expire_all())."""
        if not any(_overlap(job.keys, w.job.keys) for w in self.queue):
            reply = job.attempt()
            if reply is not None:
                return reply
        return self.park(job)

    def park(self, job: Job) -> Any | None:
        """Park a job whose first try found a lock busy: None, or its refusal if too many
        wait. (submit() tries first; a door that tried already calls this.)"""
        if len(self.queue) >= MAX_WAITING \
                or self._payload_bytes + job.payload_bytes > MAX_WAITING_BYTES:
            return job.refuse(
                f"{len(self.queue)} requests of {self._payload_bytes} bytes already wait for "
                f"busy locks on this node (at most {MAX_WAITING}, of {MAX_WAITING_BYTES} "
                f"bytes); try again later (last lock error: {job.last_error or 'none'})",
                timed_out=False)
        if not self.queue:
            self._next_retry_s = self.clock() + RETRY_S
        self.queue.append(_Waiting(job, self.deadline_of(job)))
        self._payload_bytes += job.payload_bytes
        return None

    def retry(self) -> int:
        """Try the parked requests again, in order; those done are answered (job.answer).
        Returns how many were."""
        done: list[tuple[Job, Any]] = []
        still: list[_Waiting] = []
        for w in self.queue:
            reply = None
            if not any(_overlap(w.job.keys, earlier.job.keys) for earlier in still):
                reply = w.job.attempt()
            if reply is None and self.clock() >= w.deadline_s:
                reply = self._timed_out(w.job)
            if reply is None:
                still.append(w)
            else:
                done.append((w.job, reply))
                self._payload_bytes -= w.job.payload_bytes
        self.queue[:] = still
        self._next_retry_s = self.clock() + RETRY_S
        # after the queue is consistent: an answer may make its door submit more
        for job, reply in done:
            job.answer(reply)
        return len(done)

    def _timed_out(self, job: Job) -> Any:
        waited_s = self.clock() - job.received_s
        # the engine's message names the lock and its holder; its advice (lock_timeout_s) is
        # for a local handle, not for a client of the node
        what = re.search(r"(stripe \d+|arena) lock", job.last_error)
        holder = re.search(r"held by pid (\S+?),", job.last_error)
        return job.refuse(
            f"{job.op}: the {what.group(0) if what else 'lock'} it needs stayed busy for "
            f"{waited_s:.2f} s, held by pid {holder.group(1) if holder else '?'}", timed_out=True)

    def expire_all(self) -> int:
        """The node is stopping: try every parked request once more, in order (a lock freed
        since the last retry lets it finish), and answer the others LockTimeout now; returns
        how many were answered. An answer may make its door submit more: call again until
        it returns 0."""
        queue, self._payload_bytes = self.queue[:], 0
        self.queue.clear()
        busy: list[_Waiting] = []
        for w in queue:
            reply = None
            if not any(_overlap(w.job.keys, earlier.job.keys) for earlier in busy):
                reply = w.job.attempt()
            if reply is None:
                busy.append(w)
                reply = self._timed_out(w.job)
            w.job.answer(reply)
        return len(queue)


@dataclass(slots=True, eq=False)
class RequestJob:
    """A request of the ZeroMQ door, run by dispatch.py's Dispatcher (attempt)."""

    routing_id: Any
    request: Request
    received_s: float
    dispatcher: Dispatcher
    send: Callable[[Any, Reply, float], None]  # (routing id, reply, received_s)
    lock_timeout_s: float  # the node's, for the message
    keys: Keys = field(init=False)
    payload_bytes: int = field(init=False)
    budget_s: float | None = field(init=False)
    last_error: str = ""

    def __post_init__(self) -> None:
        self.keys = keys_of(self.request)
        self.payload_bytes = sum(f.nbytes for f in self.request.frames)
        timeout_ms = self.request.fields.get("timeout_ms")
        self.budget_s = None if timeout_ms is None else \
            timeout_ms / 1000 * protocol.DEADLINE_SHARE

    @property
    def op(self) -> str:
        return self.request.op

    def attempt(self) -> Reply | None:
        reply = self.dispatcher.attempt(self.request)
        if reply is None:
            self.last_error = self.dispatcher.last_lock_timeout
        return reply

    def refuse(self, message: str, timed_out: bool) -> Reply:
        if timed_out:
            message += (f", to the request's deadline ({protocol.DEADLINE_SHARE:g} of the "
                        "client's timeout_s, at most the node's lock timeout of "
                        f"{self.lock_timeout_s:g} s). If that process is stopped or stuck, "
                        "stop it; if it is just busy, give the client a longer timeout_s")
        return protocol.error_reply(self.request.id, LockTimeout(message), op=self.request.op)

    def answer(self, reply: Any) -> None:
        self.send(self.routing_id, reply, self.received_s)
