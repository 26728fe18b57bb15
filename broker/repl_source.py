"""The primary's side of replication (broker/replication.py describes the protocol): answering
replicas, the history that partial resyncs use, and what replicas have applied (for WAIT and
--min-replicas-to-write).

History (the backlog). A replica's position is an offset: the sum of the primary's per-stripe
`changes` counters at the start of the last round it completed (a vector of monotone
counters, so a later position has a larger sum). The primary records the vector it hands out
in `counters` replies, at most every HISTORY_STEP_S and at most MAX_HISTORY of them, dropping
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
from typing import Any

import zmq

import shmkv
from shmkv import layout as L
from shmkv import repl_digest as D
from shmkv import replica as RP
from shmkv.errors import ProtocolError, ShmKVError

from .repl_wire import message, parse
from .router import bind

MAX_BATCH = 64  # requests a primary answers per wake-up of its loop
READER_IDLE_S = 60.0  # a replica's unfinished stripe read is dropped after this
MAX_READERS = 64
BACKLOG_CHANGES = 10_000_000  # default --repl-backlog-changes
HISTORY_STEP_S = 0.05
MAX_HISTORY = 8192  # at one vector per HISTORY_STEP_S: ~7 minutes of steady writes
REPLICA_GONE_S = 6.0  # a replica that has not asked for the counters for this long is gone
MAX_REPLICAS_NOTED = 1024
MAX_CLIENTS_NOTED = 65_536  # WrittenOffsets forgets the clients that wrote longest ago


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
        epoch = self.region.q[L.H_REPL_EPOCH >> 3]
        for _ in range(MAX_BATCH):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            peer = frames[0]
            try:
                header, _ = parse(frames[1:])
                reply, data = self._answer(peer, header)
            except (ShmKVError, ValueError, KeyError, TypeError) as exc:
                header = {}
                reply, data = {"ok": False, "error": type(exc).__name__,
                               "message": str(exc)}, b""
            reply["id"] = header.get("id")
            reply["epoch"] = epoch  # fencing: a replica refuses an epoch older than its own
            self.socket.send_multipart([peer, *message(reply, data)])

    def _answer(self, peer: bytes, header: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        op = header.get("op")
        region = self.region
        if op == "hello":
            return {"ok": True, "params": RP.region_params(region)}, b""
        if op == "psync":
            return self._psync(header), b""
        if op == "counters":
            changes, writes = RP.stripe_counters(region)
            offset = sum(changes)
            name, applied = header.get("replica"), header.get("applied")
            if isinstance(name, str) and isinstance(applied, int):
                self._applied[name] = (applied, time.monotonic())
                self.reports += 1
                if len(self._applied) > MAX_REPLICAS_NOTED:  # restarted replicas' old names
                    self._applied = {k: v for k, v in self._applied.items()
                                     if time.monotonic() - v[1] < REPLICA_GONE_S}
            self._record(offset, changes)
            return {"ok": True, "changes": changes, "writes": writes, "offset": offset,
                    "repl_id": RP.repl_id(region), "region_id": region.q[L.H_REGION_ID >> 3],
                    "collections": RP.live_collections(region)}, b""
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
                "full_resyncs": self.full_resyncs, "partial_resyncs": self.partial_resyncs}

    def close(self) -> None:
        self.socket.close()
