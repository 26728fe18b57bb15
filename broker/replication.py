"""Replication to peer hosts: a replica keeps a full copy of its primary's region in its own
shared memory, by comparing stripes, then the digests of their slot ranges.

Roles
-----
primary  `shmkv serve --repl-bind ENDPOINT`: a ROUTER socket (a door like the others: loopback
         unless allow_remote, and CURVE-protected then) answers replicas from the node's loop.
         The source is the region itself, not the node's requests: what local processes write
         straight in shared memory is replicated like the rest.
replica  `shmkv serve --replica-of ENDPOINT`: creates its region as a clone of the primary's
         (same layout and hash seed, so a key lands in the same stripe and slot run and its
         version means the same), fences it (writable_until_ns in the past and the primary's
         endpoint in the header: every local write raises ReadOnlyReplica naming it; the
         node's write requests too), syncs every stripe once (READY=1 only then; STATUS=
         shows the stripes done), then loops every SYNC_INTERVAL_S.

Wire format (ZeroMQ multipart; the replica's DEALER sends requests, the primary's ROUTER
answers each with one message, in order)
-----------------------------------------------------------------------------------------
    frame 0   TAG = b"SHMKV-REPL/2"   magic and version: another tag gets an error reply
    frame 1   header, JSON object     "op", "id" (echoed in the reply), the op's fields
    frame 2   data                    digests or records, as the op says

    op        request fields   reply fields
    hello     -                params: arena_bytes, n_stripes, slots_per_stripe,
                               max_collections, max_procs, hash_seed, protected_pct,
                               region_id (shmkv/replica.py region_params)
    counters  -                changes, writes: per-stripe counters (lists); region_id (a
                               replica stops following another region than hello's: a
                               primary restarted empty never wipes it); collections:
                               [index, generation, name] of each live named collection
    digests   stripe           stripe, + data: the stripe's slot-range digests
                               (shmkv/repl_digest.py: n_ranges u64, computed under its lock)
    stripe    stripe, ranges   stripe, done, records, + data: the first chunk of the entries
                               of those ranges (all if ranges is absent), expired ones
                               included (the primary copies its slots now, see StripeReader)
    next      stripe           the stripe's next chunk (the same reader, kept per replica)
    (error)                    ok false, error (class name), message

A replica that waits longer than REQUEST_TIMEOUT_S for a reply drops its socket (and any late
reply with it) and starts a new round on a new one: request and reply never get out of step.

Convergence
-----------
Every change to a stripe's keys (write, delete, expiry, eviction, TTL change, by anyone, with
or without a node running) bumps the stripe's `changes` counter under its lock. A round fetches
the counters and the collection table (time T), copies the table (by index: keys are hashed
with their collection's index), then for each stripe whose counter differs from the one
recorded at its last sync: asks for the digests of the stripe's slot ranges (taken under the
primary's stripe lock, after T), computes its own (its region changes only by this replicator),
and for the ranges that differ reads the primary's entries of those ranges and makes its
ranges equal to what it read (upsert what differs in version, expiry, kind or length, with the
primary's version; remove what is not listed); then it records the counter seen at T. A range
whose digests agree holds the same entries on both sides (up to a 64-bit digest collision,
repl_digest.py). A key nobody touches during the read is read exactly (snapshot.py's
argument); one that changes after T may come out at an old value or be compared at an old
digest, but its change moved the counter past the recorded one, so the next round looks at the
stripe again. Once writes pause for a round, every stripe equals the primary's. Nothing relies
on the event rings (at-most-once, overrun by fast local writers) or on the node having seen
the writes.

Cost. A changed stripe costs the primary one pass over its slots under its lock (the compiled
range_digests: see bench/results/), one digest reply (8 bytes a range, ~32 slots a range), and
the entries of the differing ranges only, instead of the whole stripe: a few writes among 1M
keys send a few ranges of ~24 entries each.

Known limits: the event rings are not used as hints of which keys moved, so each round still
passes over every entry of every stripe that moved, on both sides (C speed, no copy); the
replica's sync runs in the node's loop, which answers no requests meanwhile; a replica does
not yet connect to a CURVE-protected primary; no etcd, no promotion (broker/failover.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import zmq

import shmkv
from shmkv import layout as L
from shmkv import repl_digest as D
from shmkv import replica as RP
from shmkv.errors import ProtocolError, RegionExists, RemoteUnavailable, ShmKVError
from shmkv.locks import DEFAULT_LOCK_TIMEOUT_S

TAG = b"SHMKV-REPL/2"
# How often a replica asks for the counters: the lag of an idle replica, at one small request
SYNC_INTERVAL_S = 0.01
REQUEST_TIMEOUT_S = 5.0
RETRY_S = 0.5  # after a failed round
MAX_BATCH = 64  # requests a primary answers per wake-up of its loop
READER_IDLE_S = 60.0  # a replica's unfinished stripe read is dropped after this
MAX_READERS = 64

Emit = Callable[..., None]


def _message(header: dict[str, Any], data: bytes = b"") -> list[bytes]:
    frames = [TAG, json.dumps(header).encode()]
    return frames + [data] if data else frames


def _parse(frames: list[bytes]) -> tuple[dict[str, Any], bytes]:
    if len(frames) < 2 or frames[0] != TAG:
        raise ProtocolError(f"not a replication message of version {TAG.decode()}")
    header = json.loads(frames[1])
    if not isinstance(header, dict):
        raise ProtocolError("a replication header is a JSON object")
    return header, frames[2] if len(frames) > 2 else b""


# --- primary ---------------------------------------------------------------------------------
class Source:
    """The primary's side: answers replicas from the node's loop (service())."""

    def __init__(self, context: zmq.Context, cache: shmkv.Cache, endpoint: str,
                 secure: Callable[[zmq.Socket], None] | None = None) -> None:
        self.cache = cache
        self.region = cache._region
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if secure is not None:
            secure(self.socket)
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.socket.close()
            raise ShmKVError(f"cannot bind the replication socket to {endpoint!r}: "
                             f"{exc.strerror}; give another endpoint with --repl-bind") from None
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._readers: dict[bytes, tuple[RP.StripeReader, float]] = {}
        self._seen: dict[bytes, float] = {}  # replica -> when it last asked for the counters

    def service(self) -> None:
        for _ in range(MAX_BATCH):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            peer = frames[0]
            try:
                header, _ = _parse(frames[1:])
                reply, data = self._answer(peer, header)
            except (ShmKVError, ValueError, KeyError, TypeError) as exc:
                header = {}
                reply, data = {"ok": False, "error": type(exc).__name__,
                               "message": str(exc)}, b""
            reply["id"] = header.get("id")
            self.socket.send_multipart([peer, *_message(reply, data)])

    def _answer(self, peer: bytes, header: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        op = header.get("op")
        if op == "hello":
            return {"ok": True, "params": RP.region_params(self.region)}, b""
        if op == "counters":
            self._seen[peer] = time.monotonic()
            changes, writes = RP.stripe_counters(self.region)
            return {"ok": True, "changes": changes, "writes": writes,
                    "region_id": self.region.q[L.H_REGION_ID >> 3],
                    "collections": RP.live_collections(self.region)}, b""
        if op in ("digests", "stripe", "next"):
            stripe = header["stripe"]
            if not isinstance(stripe, int) or not 0 <= stripe < self.region.layout.n_stripes:
                raise ProtocolError(f"no stripe {stripe!r}")
            if op == "digests":
                return {"ok": True, "stripe": stripe}, D.stripe_digests(self.region, stripe)
            found = self._readers.get(peer)
            if op == "stripe" or found is None or found[0].stripe != stripe:
                self._forget_idle()
                ranges = header.get("ranges")
                if ranges is not None and (not isinstance(ranges, list) or not all(
                        isinstance(r, int) for r in ranges)):
                    raise ProtocolError("ranges is a list of digest range numbers")
                reader = RP.StripeReader(self.region, stripe, ranges, keep_expired=True)
            else:
                reader = found[0]
            data, done = reader.chunk()
            if done:
                self._readers.pop(peer, None)
            else:
                self._readers[peer] = (reader, time.monotonic())
            return {"ok": True, "stripe": stripe, "done": done,
                    "records": reader.records}, data
        raise ProtocolError(f"unknown replication op {op!r}")

    def _forget_idle(self) -> None:
        now = time.monotonic()
        for peer, (_, used) in list(self._readers.items()):
            if now - used > READER_IDLE_S or len(self._readers) >= MAX_READERS:
                del self._readers[peer]

    def state(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"role": "primary", "endpoint": self.endpoint,
                "replicas": sum(1 for t in self._seen.values() if now - t < 10 * RETRY_S + 1)}

    def close(self) -> None:
        self.socket.close()


# --- replica ---------------------------------------------------------------------------------
class Stopped(Exception):
    """A stop signal arrived while the replica waited for its primary."""


class Replica:
    """The replica's side: its region, its first sync and its rounds (tick())."""

    def __init__(self, context: zmq.Context, config: Any, emit: Emit,
                 status: Callable[[str], object],
                 wait: Callable[[zmq.Poller, int], bool]) -> None:
        self.context, self.config, self.emit, self.status = context, config, emit, status
        self.primary = config.replica_of
        self._wait = wait  # poll, with stop signals deliverable; False once one arrived
        self._socket: zmq.Socket | None = None
        self._id = 0
        self.cache: shmkv.Cache | None = None
        self.applier: RP.Applier | None = None
        self.synced: list[int | None] = []  # each stripe's changes counter at its last sync
        self.seen: list[int] = []  # the counters of the last look
        self.last_sync_ns = 0
        self.rounds = 0
        self.ranges_compared = 0  # digest ranges compared, and found to differ (then read)
        self.ranges_sent = 0
        self.region_id = 0  # the primary region's, from hello
        self._next = 0.0
        self._failing = False

    # --- the wire ---------------------------------------------------------------------
    def _request(self, header: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        if self._socket is None:
            self._socket = self.context.socket(zmq.DEALER)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.connect(self.primary)
        self._id += 1
        self._socket.send_multipart(_message({**header, "id": self._id}))
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                self._drop_socket()
                raise RemoteUnavailable(f"the primary {self.primary} did not answer within "
                                        f"{REQUEST_TIMEOUT_S} s")
            if not self._wait(poller, min(left_ms, 100)):
                raise Stopped()
            if not poller.poll(0):
                continue
            reply, data = _parse(self._socket.recv_multipart())
            if reply.get("id") != self._id:
                continue  # a late reply to an older request
            if not reply.get("ok"):
                raise ShmKVError(f"the primary {self.primary} refused {header['op']}: "
                                 f"{reply.get('error')}: {reply.get('message')}")
            return reply, data

    def _drop_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    # --- start ------------------------------------------------------------------------
    def open_region(self) -> shmkv.Cache:
        """Ask the primary for its region's parameters (until it answers), then create the
        replica's region as its clone, or reuse one that already is one; fence it."""
        while True:
            try:
                params = self._request({"op": "hello"})[0]["params"]
                break
            except RemoteUnavailable as exc:
                self.status(f"waiting for the primary {self.primary}")
                self.emit("replication_waiting", message=str(exc))
        config = self.config
        try:
            cache = RP.create_clone(config.region, params, 0o600, DEFAULT_LOCK_TIMEOUT_S,
                                    time.time_ns)
        except RegionExists:
            cache = shmkv.Cache.open(config.region, owner=config.region_owner or None)
            if not RP.same_format(cache._region, params):
                cache.close()
                raise ShmKVError(
                    f"region {config.region!r} exists and is not a copy of the primary "
                    f"{self.primary}'s region (another size, layout or hash seed): unlink it, "
                    "or give another --region, so that the replica can create its copy") from None
        RP.fence(cache._region, self.primary)
        self.region_id = params["region_id"]
        self.cache = cache
        self.applier = RP.Applier(cache)
        self.synced = [None] * params["n_stripes"]
        return cache

    def bootstrap(self) -> None:
        """The first full sync: every stripe once (retried until it succeeds)."""
        while not self.round(progress=True):
            if not self._wait(zmq.Poller(), int(RETRY_S * 1000)):
                raise Stopped()

    # --- rounds -----------------------------------------------------------------------
    def due(self) -> float:
        return self._next

    def tick(self) -> None:
        try:
            ok = self.round()
        except Stopped:  # the node's loop sees the signal and stops
            ok = False
        self._next = time.monotonic() + (SYNC_INTERVAL_S if ok else RETRY_S)

    def round(self, progress: bool = False) -> bool:
        """One round (see the module docstring); False if it failed (said on stderr once)."""
        assert self.applier is not None
        try:
            reply, _ = self._request({"op": "counters"})
            if reply["region_id"] != self.region_id:
                # the primary serves another region now (it restarted with an empty one, or
                # another --region): what it lists must not wipe this copy
                raise ShmKVError(f"the primary {self.primary} now serves another region (id "
                                 f"{reply['region_id']:x}, not {self.region_id:x}); this replica "
                                 "keeps its copy and stops following: unlink its region and "
                                 "restart it to copy the new one")
            changes, writes = reply["changes"], reply["writes"]
            self.seen = changes
            self.applier.sync_collections([tuple(c) for c in reply["collections"]])
            moved = [s for s, n in enumerate(changes) if self.synced[s] != n]
            for done, stripe in enumerate(moved):
                if progress:
                    self.status(f"replica of {self.primary}: first sync, stripe {done + 1} of "
                                f"{len(moved)}")
                self._sync_stripe(stripe, writes[stripe])
                self.synced[stripe] = changes[stripe]
        except Stopped:
            raise
        except (ShmKVError, zmq.ZMQError, ValueError, KeyError, TypeError) as exc:
            self._drop_socket()
            if not self._failing:
                self.emit("replication_failed", error=type(exc).__name__, message=str(exc))
            self._failing = True
            return False
        if self._failing:
            self.emit("replication_resumed", primary=self.primary)
        self._failing = False
        self.last_sync_ns = time.time_ns()
        self.rounds += 1
        return True

    def _sync_stripe(self, stripe: int, primary_writes: int) -> None:
        """Make the stripe equal to the primary's: compare the digests of its slot ranges,
        read only the ranges that differ."""
        assert self.applier is not None and self.cache is not None
        reply, theirs = self._request({"op": "digests", "stripe": stripe})
        if reply.get("stripe") != stripe:
            raise ProtocolError(f"asked for stripe {stripe}'s digests, got {reply.get('stripe')}")
        region = self.cache._region
        differ = D.differing(D.stripe_digests(region, stripe), theirs)
        self.ranges_compared += len(theirs) // 8
        self.ranges_sent += len(differ)
        if not differ:
            self.applier.end_stripe(stripe, {}, primary_writes, ranges=())
            return
        ranges = None if len(differ) == D.n_ranges(region.layout) else differ
        seen: dict[tuple[int, bytes], int] = {}
        op = "stripe"
        while True:
            request: dict[str, Any] = {"op": op, "stripe": stripe}
            if ranges is not None and op == "stripe":
                request["ranges"] = ranges
            reply, data = self._request(request)
            if reply.get("stripe") != stripe:
                raise ProtocolError(f"asked for stripe {stripe}, got {reply.get('stripe')}")
            if data:
                self.applier.apply_chunk(stripe, data, seen)
            if reply["done"]:
                break
            op = "next"
        self.applier.end_stripe(stripe, seen, primary_writes, ranges)

    def state(self) -> dict[str, Any]:
        behind = [s for s, n in enumerate(self.seen) if self.synced[s] != n]
        return {"role": "replica", "primary": self.primary,
                "last_sync_age_s": round((time.time_ns() - self.last_sync_ns) / 1e9, 3)
                if self.last_sync_ns else None,
                "stripes_behind": len(behind) if self.seen else len(self.synced),
                "changes_behind": sum(self.seen[s] - (self.synced[s] or 0) for s in behind),
                "rounds": self.rounds, "ranges_compared": self.ranges_compared,
                "ranges_sent": self.ranges_sent, "failing": self._failing}

    def close(self) -> None:
        self._drop_socket()
