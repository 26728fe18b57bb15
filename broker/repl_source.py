"""The primary's side of replication (broker/replication.py describes the protocol): answering
replicas (a `changes` request parked until a counter moves; each moved stripe hinted or left
to its digests, repl_hints.py), the history that partial resyncs use, and what replicas have
applied (for WAIT and --min-replicas-to-write).

History (the backlog). A replica's position is an offset: the sum of the primary's per-stripe
`changes` counters at the start of the last round it completed (a vector of monotone
counters, so a later position has a larger sum). The primary records the vector it hands out
in `changes` replies, at most every HISTORY_STEP_S and at most MAX_HISTORY of them, dropping
the oldest. A replica that comes back (reconnected, or restarted: its region keeps the repl_id
and offset) asks `psync`; if it follows this history (same repl_id), is at most
backlog_changes behind, and a recorded vector is at or before its offset, it gets that vector
(partial): it then compares only the stripes that moved since. Any older vector serves as
well as the exact one (counters only grow: it names a superset of the stripes that moved). A
replica of the previous history (repl_id2, up to repl_offset2: a promoted replica's old
primary) gets a partial resync without a vector: it compares every stripe, but only differing
ranges are sent. Anything else is a full resync: every stripe compared, counted as such. The
history lives in the node's memory: a primary node that restarted has none, and its replicas
resync fully (by digests: still only the differing ranges travel).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

import shmkv
from shmkv import layout as L
from shmkv import repl_digest as D
from shmkv import replica as RP
from shmkv.errors import ProtocolError, ShmKVError

from .repl_hints import Hints
from .repl_wire import message, parse
from .router import bind

if TYPE_CHECKING:
    from shmkv.events import EventReader

MAX_BATCH = 64  # requests a primary answers per wake-up of its loop
READER_IDLE_S = 60.0  # a replica's unfinished stripe read is dropped after this
MAX_READERS = 64
BACKLOG_CHANGES = 10_000_000  # default --repl-backlog-changes
HISTORY_STEP_S = 0.05
MAX_HISTORY = 8192  # at one vector per HISTORY_STEP_S: ~7 minutes of steady writes
REPLICA_GONE_S = 6.0  # a replica that has not asked for the counters for this long is gone
MAX_REPLICAS_NOTED = 1024
MAX_CLIENTS_NOTED = 65_536  # WrittenOffsets forgets the clients that wrote longest ago
# How often the node's loop looks at the counters while a replica's `changes` request is
# parked: nothing wakes the node when a local process writes to shared memory. Each wake-up
# costs ~150 us of the loop on the project's VM: ~7% of a core at 2 ms, so only while
# something moved in the last PUSH_BUSY_S; after that, every PUSH_IDLE_POLL_S (~1.5%: an idle
# replica's first change waits up to 10 ms, as when replicas polled).
PUSH_POLL_S = 0.002
PUSH_BUSY_S = 1.0
PUSH_IDLE_POLL_S = 0.01
MAX_WAIT_MS = 5000  # the longest a `changes` request may ask to be parked
MAX_PARKED = 64
MAX_HINT_BYTES = 1 << 20  # records of hinted stripes per reply; past that, digests
MAX_HINT_KEYS = 512  # keys of one stripe worth sending by name (more: its digests)


class WrittenOffsets:
    """Per client connection of the node, the primary's offset after its last write through
    the node: what WAIT waits for (Redis tracks the same per client)."""

    def __init__(self, source: Source | None) -> None:
        self.source = source
        self._after: dict[bytes, int] = {}  # in order of last write: the oldest go first

    def note(self, client: bytes) -> None:
        if self.source is None:
            return
        self._after.pop(client, None)
        self._after[client] = self.source.offset()
        if len(self._after) > MAX_CLIENTS_NOTED:
            del self._after[next(iter(self._after))]

    def after(self, client: bytes) -> int | None:
        """The client's offset; the current one for a client not noted (forgotten, or whose
        writes came on another connection): never less than what it wrote. None without a
        source."""
        if self.source is None:
            return None
        found = self._after.get(client)
        return found if found is not None else self.source.offset()


class RelayedReplicas:
    """What a worker process knows of the primary's replicas (broker/worker.py): their
    positions as the supervisor, where the Source runs, relays them after each report; the
    offset read from the region, which the worker shares. WAIT counts on it as on a Source."""

    def __init__(self, cache: shmkv.Cache) -> None:
        self.region = cache._region
        self._changes_at = _changes_slice(self.region)
        self._applied: list[tuple[int, float]] = []

    def update(self, applied: list[list[float]]) -> None:
        self._applied = [(int(at), float(t)) for at, t in applied]

    def offset(self) -> int:
        return sum(self.region.q[self._changes_at])

    def replicas_at(self, offset: int) -> int:
        now = time.monotonic()  # CLOCK_MONOTONIC: the same clock in every process
        return sum(1 for at, t in self._applied if at >= offset and now - t < REPLICA_GONE_S)

    def replicas_in_sync(self, max_lag_s: float) -> int:
        """As Source.replicas_in_sync: how many replicas reported within max_lag_s."""
        now = time.monotonic()
        return sum(1 for _, t in self._applied if now - t <= max_lag_s)


def _changes_slice(region: Any) -> slice:
    """Every stripe's changes counter in region.q, as one strided slice."""
    lay = region.layout
    first = (lay.stripes_offset + L.S_CHANGES) >> 3
    return slice(first, first + lay.n_stripes * L.STRIPE_Q, L.STRIPE_Q)


class Source:
    """The primary's side: answers replicas from the node's loop (service())."""

    def __init__(self, context: zmq.Context, cache: shmkv.Cache, endpoint: str,
                 secure: Callable[[zmq.Socket], None] | None = None,
                 backlog_changes: int = BACKLOG_CHANGES) -> None:
        self.cache = cache
        self.region = cache._region
        self.backlog_changes = backlog_changes
        if not RP.repl_id(self.region):
            RP.new_history(self.region)
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if secure is not None:
            secure(self.socket)
        try:
            self.endpoint = bind(self.socket, endpoint, "replication", "--repl-bind")
        except ShmKVError:
            self.socket.close()
            raise
        # (replica's socket, stripe) -> its unfinished read, and when it was last used
        self._readers: dict[tuple[bytes, int], tuple[RP.StripeReader, float]] = {}
        # replica name -> (offset it has applied, when it said so: time.monotonic())
        self._applied: dict[str, tuple[int, float]] = {}
        self._history: list[tuple[int, list[int]]] = []  # (offset, changes), oldest first
        self._recorded_at = 0.0
        self.full_resyncs = self.partial_resyncs = 0
        self._changes_at = _changes_slice(self.region)  # offset() runs after every write
        self.reports = 0  # replicas' reports of what they applied, so far
        lay = self.region.layout
        self._stripe_q0 = [(lay.stripes_offset >> 3) + s * L.STRIPE_Q
                           for s in range(lay.n_stripes)]
        self.hints = Hints(lay.n_stripes)
        self._events: EventReader | None = None  # the node's reader of the rings, once given
        # `changes` requests parked until something moves: (peer, id, synced, deadline)
        self._parked: list[tuple[bytes, object, list[int], np.ndarray, float]] = []
        self.stripes_hinted = self.stripes_compared = 0  # in `changes` replies, so far
        self._moved_at = 0.0  # when a `changes` reply last had a stripe that moved

    def use_events(self, events: EventReader | None) -> None:
        """Take hints from the node's reader of the event rings (server.py): the same
        reader that feeds its publisher, never a second one. None: no hints (digests)."""
        if self._events is not None:
            self._events.observer = None
        self._events = events
        self.hints = Hints(self.region.layout.n_stripes)  # what it saw before is not known
        if events is not None:
            events.observer = self.hints

    # --- positions ----------------------------------------------------------------------
    def offset(self) -> int:
        """The primary's position now: the sum of its stripes' changes counters."""
        return sum(self.region.q[self._changes_at])

    def replicas_at(self, offset: int) -> int:
        """How many live replicas have applied everything up to offset."""
        now = time.monotonic()
        return sum(1 for at, t in self._applied.values()
                   if at >= offset and now - t < REPLICA_GONE_S)

    def applied_positions(self) -> list[tuple[int, float]]:
        """(offset applied, when it was said: time.monotonic()) of each replica noted."""
        return list(self._applied.values())

    def replicas_in_sync(self, max_lag_s: float) -> int:
        """How many replicas reported within max_lag_s (Redis's min-replicas-max-lag)."""
        now = time.monotonic()
        return sum(1 for _, t in self._applied.values() if now - t <= max_lag_s)

    # --- serving ------------------------------------------------------------------------
    def service(self) -> None:
        for _ in range(MAX_BATCH):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            peer = frames[0]
            try:
                header, _ = parse(frames[1:])
                answer = self._answer(peer, header)
            except (ShmKVError, ValueError, KeyError, TypeError) as exc:
                header = {}
                answer = {"ok": False, "error": type(exc).__name__, "message": str(exc)}, b""
            if answer is not None:  # else parked: answered from poll_parked()
                self._send(peer, header.get("id"), *answer)

    def _send(self, peer: bytes, request_id: object, reply: dict[str, Any],
              data: bytes) -> None:
        reply["id"] = request_id
        # fencing: a replica refuses an epoch older than its own
        reply["epoch"] = self.region.q[L.H_REPL_EPOCH >> 3]
        self.socket.send_multipart([peer, *message(reply, data)])

    # --- parked `changes` requests (the pushed rounds) ---------------------------------
    def due(self) -> float:
        """When the node's loop must call poll_parked() next."""
        if not self._parked:
            return float("inf")
        now = time.monotonic()
        look = PUSH_POLL_S if now - self._moved_at < PUSH_BUSY_S else PUSH_IDLE_POLL_S
        return min(now + look, min(p[4] for p in self._parked))

    def poll_parked(self) -> None:
        """Answer the parked requests whose replica has something to fetch now, or whose
        wait is over (the reply then says that nothing moved)."""
        if not self._parked:
            return
        now = time.monotonic()
        counters = np.asarray(self.region.q[self._changes_at])
        still = []
        for parked in self._parked:
            peer, request_id, synced, wanted, deadline = parked
            if now >= deadline or bool(np.any(counters != wanted)):
                try:
                    self._send(peer, request_id, *self._changes_reply(synced))
                except (ShmKVError, ValueError, KeyError, TypeError) as exc:
                    self._send(peer, request_id, {"ok": False, "error": type(exc).__name__,
                                                  "message": str(exc)}, b"")
            else:
                still.append(parked)
        self._parked = still

    def _answer(self, peer: bytes, header: dict[str, Any]
                ) -> tuple[dict[str, Any], bytes] | None:
        op = header.get("op")
        region = self.region
        if op == "hello":
            return {"ok": True, "params": RP.region_params(region)}, b""
        if op == "psync":
            return self._psync(header), b""
        if op == "changes":
            return self._changes(peer, header)
        if op in ("digests", "stripe", "next"):
            stripe = header["stripe"]
            if not isinstance(stripe, int) or not 0 <= stripe < region.layout.n_stripes:
                raise ProtocolError(f"no stripe {stripe!r}")
            if op == "digests":
                return {"ok": True, "stripe": stripe}, D.stripe_digests(region, stripe)
            found = self._readers.get((peer, stripe))
            if op == "stripe" or found is None:
                self._forget_idle()
                ranges = header.get("ranges")
                if ranges is not None and (not isinstance(ranges, list) or not all(
                        isinstance(r, int) for r in ranges)):
                    raise ProtocolError("ranges is a list of digest range numbers")
                reader = RP.StripeReader(region, stripe, ranges, keep_expired=True)
            else:
                reader = found[0]
            data, done = reader.chunk()
            if done:
                self._readers.pop((peer, stripe), None)
            else:
                self._readers[(peer, stripe)] = (reader, time.monotonic())
            return {"ok": True, "stripe": stripe, "done": done,
                    "records": reader.records}, data
        raise ProtocolError(f"unknown replication op {op!r}")

    def _changes(self, peer: bytes, header: dict[str, Any]
                 ) -> tuple[dict[str, Any], bytes] | None:
        """A replica's round: note what it applied; answer now if a stripe moved since its
        `synced` counters (or it will not wait), else park the request (see poll_parked)."""
        n = self.region.layout.n_stripes
        synced, wait_ms = header.get("synced"), header.get("wait_ms", 0)
        if not isinstance(synced, list) or len(synced) != n \
                or not all(isinstance(c, int) for c in synced):
            raise ProtocolError(f"synced is a list of {n} counters (-1: not synced)")
        if not isinstance(wait_ms, int) or not 0 <= wait_ms <= MAX_WAIT_MS:
            raise ProtocolError(f"wait_ms is a whole number of ms, at most {MAX_WAIT_MS}")
        name, applied = header.get("replica"), header.get("applied")
        if isinstance(name, str) and isinstance(applied, int):
            self._applied[name] = (applied, time.monotonic())
            self.reports += 1
            if len(self._applied) > MAX_REPLICAS_NOTED:  # restarted replicas' old names
                self._applied = {k: v for k, v in self._applied.items()
                                 if time.monotonic() - v[1] < REPLICA_GONE_S}
        wanted = np.asarray(synced, dtype=np.int64).astype(np.uint64)  # -1: never equal
        if wait_ms and not bool(np.any(np.asarray(self.region.q[self._changes_at]) != wanted)):
            if len(self._parked) >= MAX_PARKED:  # the oldest is answered now, not dropped
                old = self._parked.pop(0)
                self._send(old[0], old[1], *self._changes_reply(old[2]))
            self._parked.append((peer, header.get("id"), synced, wanted,
                                 time.monotonic() + wait_ms / 1000))
            return None
        return self._changes_reply(synced)

    def _changes_reply(self, synced: list[int]) -> tuple[dict[str, Any], bytes]:
        """The counters now, and for each stripe that moved since synced: its counter and
        writes read under its lock, with the records of the keys that changed since synced
        if the hints know them exactly (else the replica compares its digests)."""
        region = self.region
        changes, writes = RP.stripe_counters(region)
        offset = sum(changes)
        self._record(offset, changes)
        moved: list[list[int]] = []
        parts: list[bytes] = []
        budget = MAX_HINT_BYTES
        for stripe, now in enumerate(changes):
            if now == synced[stripe]:
                continue
            counter, written, data = self._stripe_hint(stripe, synced[stripe], budget)
            if data is None:
                self.stripes_compared += 1
                moved.append([stripe, counter, written, -1])
            else:
                self.stripes_hinted += 1
                budget -= len(data)
                parts.append(data)
                moved.append([stripe, counter, written, len(data)])
        if moved:
            self._moved_at = time.monotonic()
        # after the records: a collection a record names was live when it was read, and
        # is in this table unless dropped since (the replica then takes no hint from it)
        return {"ok": True, "changes": changes, "writes": writes, "offset": offset,
                "moved": moved, "repl_id": RP.repl_id(region),
                "region_id": region.q[L.H_REGION_ID >> 3],
                "collections": RP.live_collections(region)}, b"".join(parts)

    def _stripe_hint(self, stripe: int, since: int, budget: int
                     ) -> tuple[int, int, bytes | None]:
        """(changes, writes, records or None) of the stripe, all read under its lock, with
        its ring read up to the same point (repl_hints.py)."""
        region = self.region
        at = self._stripe_q0[stripe]
        region.locks.acquire_stripe(stripe)
        try:
            if self._events is not None:
                self._events.catch_up(stripe)
            counter = int(region.q[at + (L.S_CHANGES >> 3)])
            written = int(region.q[at + (L.S_WRITES >> 3)])
            data = None
            if self._events is not None:
                self.hints.mark(stripe, counter)
                keys = self.hints.since(stripe, since) if since >= 0 else None
                if keys is not None and len(keys) <= MAX_HINT_KEYS:
                    data = RP.key_records_locked(region, stripe, sorted(keys), budget)
        finally:
            region.locks.release_stripe(stripe)
        return counter, written, data

    def _record(self, offset: int, changes: list[int]) -> None:
        now = time.monotonic()
        self.region.q[L.H_REPL_OFFSET >> 3] = offset
        if self._history and (self._history[-1][0] == offset
                              or now - self._recorded_at < HISTORY_STEP_S):
            return
        self._history.append((offset, changes))
        self._recorded_at = now
        if len(self._history) > MAX_HISTORY:
            del self._history[:len(self._history) - MAX_HISTORY]

    def _psync(self, header: dict[str, Any]) -> dict[str, Any]:
        """Where a replica that comes back starts from (see the module docstring)."""
        region = self.region
        their_id, their_offset = header.get("repl_id"), header.get("offset")
        offset = self.offset()
        found: list[int] | None = None
        mode = "full"
        if isinstance(their_offset, int) and their_id:
            if their_id == RP.repl_id(region) and offset - their_offset <= self.backlog_changes:
                at = bisect.bisect_right(self._history, their_offset, key=lambda e: e[0]) - 1
                if at >= 0 and their_offset <= offset:
                    mode, found = "partial", self._history[at][1]
            elif their_id == RP.repl_id(region, previous=True) \
                    and their_offset <= region.q[L.H_REPL_OFFSET2 >> 3]:
                mode = "partial"
        if mode == "full":
            self.full_resyncs += 1
        else:
            self.partial_resyncs += 1
        return {"ok": True, "mode": mode, "changes": found, "repl_id": RP.repl_id(region),
                "offset": offset, "region_id": region.q[L.H_REGION_ID >> 3]}

    def _forget_idle(self) -> None:
        now = time.monotonic()
        for held, (_, used) in list(self._readers.items()):
            if now - used > READER_IDLE_S or len(self._readers) >= MAX_READERS:
                del self._readers[held]

    def state(self) -> dict[str, Any]:
        now = time.monotonic()
        offset = self.offset()
        # list(): the metrics' thread asks too, while the loop may add a replica
        live = {name: at for name, (at, t) in list(self._applied.items())
                if now - t < REPLICA_GONE_S}
        return {"role": "primary", "endpoint": self.endpoint, "replicas": len(live),
                "repl_id": RP.repl_id(self.region), "offset": offset,
                "epoch": self.region.q[L.H_REPL_EPOCH >> 3],
                "replica_changes_behind": {name: max(0, offset - at)
                                           for name, at in sorted(live.items())},
                "full_resyncs": self.full_resyncs, "partial_resyncs": self.partial_resyncs,
                "stripes_hinted": self.stripes_hinted,
                "stripes_compared": self.stripes_compared, "hints_reset": self.hints.resets}

    def close(self) -> None:
        self.use_events(None)
        self.socket.close()
