"""Replication to peer hosts: a replica keeps a full copy of its primary's region in its own
shared memory, from the keys the event rings name (hints) where they are known to be exact,
else by comparing stripes, then the digests of their slot ranges.

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
         shows the stripes done), then asks for what moved, in pushed rounds: the primary
         parks the request until something moves (at most LONG_POLL_S).

Wire format (ZeroMQ multipart; the replica's DEALER sends requests, the primary's ROUTER
answers each with one message, in order)
-----------------------------------------------------------------------------------------
    frame 0   TAG = b"SHMKV-REPL/3"   magic and version: another tag gets an error reply
    frame 1   header, JSON object     "op", "id" (echoed in the reply), the op's fields
    frame 2   data                    digests or records, as the op says

    op        request fields   reply fields
    hello     -                params: arena_bytes, n_stripes, slots_per_stripe,
                               max_collections, max_procs, hash_seed, protected_pct,
                               region_id (shmkv/replica.py region_params)
    psync     repl_id, offset  mode ("partial" or "full"), changes (the counters to start
                               from, or null: compare every stripe), repl_id, offset,
                               region_id (broker/repl_source.py: the history)
    changes   replica,         changes, writes: per-stripe counters (lists, time T); offset
              applied,         (their sum), repl_id; region_id (a replica stops following
              synced,          another region than hello's: a primary restarted empty never
              wait_ms          wipes it); moved: [stripe, changes, writes, size] of each
                               stripe whose counter differs from synced[stripe], both
                               counters read under its lock after T; size >= 0: the next
                               size bytes of data are the records of the keys changed since
                               synced[stripe] (a tombstone, version 0 and no value, for a key
                               that is gone), size -1: compare its digests; collections:
                               [index, generation, name] of each live named collection, read
                               after the records. The request says who asks (a name per
                               replica process), the offset of its last complete round
                               (WAIT and --min-replicas-to-write count on it), each stripe's
                               counter at its last sync (-1: none), and how long the primary
                               may park it while no stripe moved (0: answer now; at most
                               repl_source.MAX_WAIT_MS)
    digests   stripe           stripe, + data: the stripe's slot-range digests
                               (shmkv/repl_digest.py: n_ranges u64, computed under its lock)
    stripe    stripe, ranges   stripe, done, records, + data: the first chunk of the entries
                               of those ranges (all if ranges is absent), expired ones
                               included (the primary copies its slots now, see StripeReader)
    next      stripe           the stripe's next chunk (the same reader, kept per replica)
    (error)                    ok false, error (class name), message

Every reply also carries "epoch": the primary's region's repl_epoch (layout.py; the leader
key's revision under etcd, else 0). A replica refuses a reply of an older epoch than its own
region's (StaleEpoch: counted, said on stdout, the connection dropped, the round failed, so
nothing of it is applied) and writes a newer one into its region's header.

A replica that waits longer than REQUEST_TIMEOUT_S for a reply (LONG_POLL_S more for a parked
`changes`) drops its socket (and any late reply with it) and starts a new round on a new one:
request and reply never get out of step.

Pushed rounds. A replica sends `changes` with wait_ms = LONG_POLL_S and returns to its node's
loop, which polls the replica's socket with the others: the node keeps answering its own
requests. The primary parks the request (its routing id kept, never blocking its loop) while no
stripe's counter differs from the replica's synced ones; its loop then looks at the counters
every repl_source.PUSH_POLL_S (a local write to shared memory wakes no node; PUSH_IDLE_POLL_S
once nothing moved for PUSH_BUSY_S) and answers as soon as one moved, or after wait_ms with
nothing moved. The replica applies the reply and sends the next request at once; its report of
what it applied rides on it.

Convergence
-----------
Every change to a stripe's keys (write, delete, expiry, eviction, TTL change, by anyone, with
or without a node running) bumps the stripe's `changes` counter under its lock. A round fetches
the counters (time T), each moved stripe's counter again under its lock (after T), and the
collection table, copies the table (by index: keys are hashed with their collection's index),
then for each stripe whose counter differs from the one recorded at its last sync: asks for the
digests of the stripe's slot ranges (taken under the primary's stripe lock, after T), computes
its own (its region changes only by this replicator), and for the ranges that differ reads the
primary's entries of those ranges and makes its ranges equal to what it read (upsert what
differs in version, expiry, kind or length, with the primary's version; remove what is not
listed); then it records the counter read under the lock, before the digests were taken (call
that time T too for the stripe). A range whose digests agree holds the same entries on both
sides (up to a 64-bit digest collision, repl_digest.py). A key nobody touches during the read
is read exactly (snapshot.py's argument); one that changes after T may come out at an old value
or be compared at an old digest, but its change moved the counter past the recorded one, so the
next round looks at the stripe again. Once writes pause for a round, every stripe equals the
primary's. After a complete round the replica writes the primary's repl_id and the offset of
that round (the sum of the counters seen at T) into its region's header: every change the
primary had made by T is applied (a later change may be too). A replica that starts, or whose
round failed, first asks psync (broker/repl_source.py) which counters to start from.

Hints (broker/repl_hints.py, whose docstring has the argument). For a moved stripe the
primary takes the stripe's lock, reads its ring up to the head (the node's one EventReader:
catch_up), reads its counters and closes the stripe's interval there. If every interval since
the replica's synced counter is exact (the counter moved by exactly the keyspace events named,
none lost), it sends the current record of each key named, read under the same lock (a
tombstone if gone; expired entries included); the replica applies them (tombstones first,
across the reply, so that its writes find the room the primary freed) and records that
counter: every key changed after its synced counter was named and is now exact, the others had
not changed. Otherwise (a ring overrun, a TTL change or a repair, which bump without an event,
events off while no node ran, more than repl_source.MAX_HINT_KEYS keys or MAX_HINT_BYTES of
records in the reply) the stripe is compared by its digests as above, from the counter read
under the lock, which is a mark: the next round can be hinted again. A record naming a
collection the replica does not have yet leaves the stripe unrecorded (sent again next round).
A gap in the rings only costs a digest comparison. A replica whose own writes evicted (its
arena fragmented otherwise than the primary's) compares every stripe in its next round.

Steps. A round from the node's loop compares at most MAX_COMPARED_PER_STEP stripes by digests
and asks for the rest at once, without recording its position. A replica started at run time
(`replicaof`, a demotion, etcd: Replica.begin) sends hello and returns; its node's loop reads
the reply (the socket is in its poller), opens the region, sends psync, whose reply starts the
rounds (a round after a failure asks psync so too): the node answers requests throughout, and
a primary silent for roles.FOLLOW_TIMEOUT_S is given up (roles.py). The first sync before
READY=1 (bootstrap) awaits hello and psync, and does every stripe in one round.

Cost. A hinted stripe costs the primary a lock, the ring's new events and one index lookup per
key named; the replica an upsert or removal per key. A compared stripe costs one pass over its
slots under its lock on both sides (the compiled range_digests: 14 ms per 1M entries), one
digest reply (8 bytes a range, ~8 slots a range) and the entries of the differing ranges only.
While a replica's request is parked, the primary's loop wakes every PUSH_POLL_S (2 ms; 10 ms
once idle for a second).
Measured (bench/results/replication-vm-20261130-hints.md, 100k keys, a shared 2-core VM): lag
1.6 ms median (p99 3.6 ms) at 1,000 writes/s, 2.1 ms (p99 3.8 ms) at 10,000 writes/s, against
59 ms and 329 ms with polled rounds and digests only (replication-vm-20261130.md); Redis
0.21-0.30 ms in the same run. Under heavier load an earlier run measured 1.8 ms and 4.4 ms (p99
8.7 ms and 42 ms). Full sync of 1 GiB: 17.8 s, Redis 9.9 s.

Known limits: a local write wakes no node, so a parked request is answered only at the
primary's next look (up to PUSH_POLL_S, PUSH_IDLE_POLL_S after a quiet second) and both nodes'
loops spend ~150 us a wake-up on it; the replica applies per key in Python and shares the cores
with the primary and its writers: under load the p99 grows to ten times the median, and a fast
local writer competes with replication for the cores (bench/results/repl-cost-vm-20261130.md:
local Cache.set at 0.40-0.80 of its rate with the replica SIGSTOPped, the nodes spending ~0.15
CPU s per million sets, whatever the primary's look interval; the stripe locks measurably hold
no writer); within a round, the digests and entries of the compared stripes are awaited in the
loop (pipelined: a few ms from a live primary; one that dies mid-round holds it up to
REQUEST_TIMEOUT_S, under etcd roles.YIELD_AFTER_S); the first sync before READY=1 runs in one
round, as the node serves nothing yet.

CurveZMQ, the request/reply discipline and fencing of replies: broker/repl_link.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import zmq

import shmkv
from shmkv import layout as L
from shmkv import repl_digest as D
from shmkv import replica as RP
from shmkv.errors import ProtocolError, RegionExists, RemoteUnavailable, ShmKVError
from shmkv.locks import DEFAULT_LOCK_TIMEOUT_S

from .repl_link import (REQUEST_TIMEOUT_S, HandshakeRefused, Link, StaleEpoch, Stopped,
                        curve_client)
from .repl_source import Source
from .repl_wire import TAG, message, parse

__all__ = ["TAG", "HandshakeRefused", "Replica", "Source", "StaleEpoch", "Stopped",
           "curve_client"]

# How long a replica's `changes` request waits at the primary for something to move: the
# primary answers at once when it does, and at the latest after this (so that a dead link is
# noticed within LONG_POLL_S + REQUEST_TIMEOUT_S, and the replica reports its position)
LONG_POLL_S = 1.0
RETRY_S = 0.5  # after a failed round
# A round from the node's loop compares at most this many stripes by digests; the others go
# in the next round, asked at once: a replica started at run time (roles.py) syncs in steps
# and its node answers in between. The first sync before READY=1 does them all in one.
MAX_COMPARED_PER_STEP = 8
# While hello or psync is awaited with CURVE, how often the socket's monitor is looked at: a
# refused handshake is said at once rather than after the request's timeout
HANDSHAKE_CHECK_S = 0.1

Emit = Callable[..., None]


# What fails a round (said once per cause, then tried again after RETRY_S)
_ROUND_ERRORS = (ShmKVError, zmq.ZMQError, ValueError, KeyError, TypeError)

class Replica(Link):
    """The replica's side: its region, its first sync and its rounds (tick())."""

    def __init__(self, context: zmq.Context, config: Any, emit: Emit,
                 status: Callable[[str], object],
                 wait: Callable[[zmq.Poller, int], bool]) -> None:
        super().__init__(context, config, wait)
        self.emit, self.status = emit, status
        # The request sent from the node's loop whose reply is awaited (op, id), until
        # _await_deadline: hello, psync or the parked `changes` (None: nothing awaited)
        self._awaiting: tuple[str, int] | None = None
        self._await_deadline = self._check_at = 0.0  # _check_at: HANDSHAKE_CHECK_S
        # A start at run time (begin()): when its hello is given up (None: not awaited), and
        # why it was ("": it was not)
        self._give_up_at: float | None = None
        self._give_up_after_s = 0.0
        self.gave_up = self._refused = ""  # _refused: the last refused handshake, said once
        self.name = uuid.uuid4().hex  # how the primary tells this replica from others
        self.applier: RP.Applier | None = None
        self.synced: list[int | None] = []  # each stripe's changes counter at its last sync
        self.seen: list[int] = []  # the counters of the last look
        self.primary_offset = 0  # the primary's offset at the last look
        self.applied = 0  # the offset of the last round completed (the header's repl_offset)
        self.last_sync_ns = 0
        self.rounds = 0
        self.ranges_compared = 0  # digest ranges compared, and found to differ (then read)
        self.ranges_sent = 0
        self.stripes_hinted = 0  # stripes synced from the primary's hints, and by digests
        self.stripes_compared = 0
        self.self_evictions = 0  # rounds whose writes evicted (every stripe compared again)
        self.steps = 0  # rounds that left stripes for the next (MAX_COMPARED_PER_STEP)
        self.full_resyncs = self.partial_resyncs = 0
        self.region_id = 0  # the primary region's, from hello
        self._resync = True  # ask psync before the next round (at start, after a failure)
        self._next = 0.0
        self._failing = ""  # the error class of the failing rounds ("": not failing)

    def _drop_socket(self) -> None:
        self._awaiting = None  # its reply, if any, goes with the socket
        super()._drop_socket()

    # --- start ------------------------------------------------------------------------
    def open_region(self) -> shmkv.Cache:
        """At the node's start: ask the primary for its region's parameters (until it
        answers), then open the replica's region (see _open)."""
        while True:
            try:
                params = self._request({"op": "hello"})[0]["params"]
                break
            except HandshakeRefused as exc:
                # said once per cause; tried again (a key added to the primary's allow-list
                # and a SIGHUP admit it), at the pace of a failed round
                self._said_refused(exc)
                if not self._wait(zmq.Poller(), int(RETRY_S * 1000)):
                    raise Stopped() from None
            except RemoteUnavailable as exc:
                self.status(f"waiting for the primary {self.primary}")
                self.emit("replication_waiting", message=str(exc))
        return self._open(params)

    def begin(self, give_up_after_s: float) -> None:
        """At run time (roles.follow): send hello and return; its reply, read from the node's
        loop (service()), opens the region, then psync and the rounds follow. A primary that
        has not answered after give_up_after_s is given up (gave_up says why)."""
        self._give_up_at = time.monotonic() + give_up_after_s
        self._give_up_after_s = give_up_after_s
        self.status(f"waiting for the primary {self.primary}")
        self._send_next()  # zmq.ZMQError: an endpoint ZeroMQ cannot connect to

    def _open(self, params: dict[str, Any]) -> shmkv.Cache:
        """Create the replica's region as a clone of the primary's (params: hello's), or
        reuse one that already is one; fence it."""
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
        self.applied = cache._region.q[L.H_REPL_OFFSET >> 3]
        return cache

    def _said_refused(self, exc: HandshakeRefused) -> None:
        self.status(f"refused by the primary {self.primary}: check the keys")
        if str(exc) != self._refused:
            self.emit("replication_refused", primary=self.primary, message=str(exc))
            self._refused = str(exc)

    def bootstrap(self) -> None:
        """The first sync: every stripe that may differ once (retried until it succeeds)."""
        while not self.round(progress=True):
            if not self._wait(zmq.Poller(), int(RETRY_S * 1000)):
                raise Stopped()

    # --- rounds -----------------------------------------------------------------------
    def due(self) -> float:
        if self.gave_up:  # roles.py closes it
            return float("inf")
        if self._awaiting is None:
            return self._next
        if self._watch is not None and self._awaiting[0] != "changes":
            # a refused CURVE handshake is seen only by looking at the monitor
            return min(self._await_deadline, self._check_at)
        return self._await_deadline

    def tick(self) -> None:
        """Due: send the next request (hello, psync, or `changes`, which the primary parks
        until something moves), or give up on one that was not answered in time. Never
        waits: the replies come through service()."""
        if self.gave_up:
            return
        if self._awaiting is not None:
            op = self._awaiting[0]
            self._check_at = time.monotonic() + HANDSHAKE_CHECK_S
            try:
                if op != "changes":
                    self._check_handshake()
            except HandshakeRefused as exc:
                self._fail(exc)
                return
            if time.monotonic() >= self._await_deadline:
                self._fail(RemoteUnavailable(f"the primary {self.primary} did not answer {op} "
                                             "in time"))
            return
        if time.monotonic() < self._next:
            return
        try:
            self._send_next()
        except _ROUND_ERRORS as exc:
            self._fail(exc)

    def _send_next(self) -> None:
        header: dict[str, Any] = {}
        op, wait_s = "hello", REQUEST_TIMEOUT_S
        if self.applier is not None and self._resync:
            op, header = "psync", self._psync_request()
        elif self.applier is not None:
            op, header = "changes", {**self._changes_request(),
                                     "wait_ms": int(LONG_POLL_S * 1000)}
            wait_s = LONG_POLL_S + REQUEST_TIMEOUT_S
        if self._socket is None:
            self._connect()
        assert self._socket is not None
        self._id += 1
        self._socket.send_multipart(message({**header, "op": op, "id": self._id}))
        self._awaiting = (op, self._id)
        self._await_deadline = time.monotonic() + wait_s
        self._check_at = time.monotonic() + HANDSHAKE_CHECK_S
        if self._give_up_at is not None:  # a start at run time: hello no later than this
            self._await_deadline = min(self._await_deadline, self._give_up_at)

    def service(self) -> None:
        """The socket is readable: the reply to the awaited request (a late reply to another
        is dropped). It is applied, and the next request sent at once."""
        while self._socket is not None and self._awaiting is not None:
            try:
                reply, data = parse(self._socket.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            except (zmq.ZMQError, ShmKVError, ValueError) as exc:
                self._fail(exc)
                return
            op, awaited = self._awaiting
            if reply.get("id") != awaited:
                continue
            self._awaiting = None
            try:
                self._check_epoch(reply.get("epoch", 0))
                if not reply.get("ok"):
                    raise ShmKVError(f"the primary {self.primary} refused {op}: "
                                     f"{reply.get('error')}: {reply.get('message')}")
                if op == "hello":
                    self._open(reply["params"])
                    self._give_up_at = None
                    self.status(f"replica of {self.primary}: syncing")
                elif op == "psync":
                    self._psynced(reply)
                elif self._apply(reply, data):
                    self._succeeded()
                else:
                    self.steps += 1
            except Stopped:
                self._next = time.monotonic() + RETRY_S
                return
            except _ROUND_ERRORS as exc:
                self._fail(exc)
                return
            self._next = 0.0
            self.tick()

    def _changes_request(self) -> dict[str, Any]:
        return {"op": "changes", "replica": self.name, "applied": self.applied,
                "synced": [-1 if n is None else n for n in self.synced]}

    def _check_region(self, region_id: int) -> None:
        if region_id != self.region_id:
            # the primary serves another region now (it restarted with an empty one, or
            # another --region): what it lists must not wipe this copy
            raise ShmKVError(f"the primary {self.primary} now serves another region (id "
                             f"{region_id:x}, not {self.region_id:x}); this replica keeps its "
                             "copy and stops following: unlink its region and restart it to "
                             "copy the new one")

    def _psync_request(self) -> dict[str, Any]:
        assert self.cache is not None
        region = self.cache._region
        return {"op": "psync", "repl_id": RP.repl_id(region),
                "offset": region.q[L.H_REPL_OFFSET >> 3]}

    def _psync(self) -> None:  # asked and awaited (the first sync)
        self._psynced(self._request(self._psync_request())[0])

    def _psynced(self, reply: dict[str, Any]) -> None:
        """Start from psync's reply: partial (the stripes moved since this region's offset)
        or full (every stripe compared); see broker/repl_source.py."""
        assert self.cache is not None
        self._check_region(reply["region_id"])
        n = self.cache._region.layout.n_stripes
        changes = reply["changes"]
        if reply["mode"] == "partial":
            self.partial_resyncs += 1
            self.synced = list(changes) if changes and len(changes) == n else [None] * n
        else:
            self.full_resyncs += 1
            self.synced = [None] * n
            if self.rounds:  # after the start (the "ready" event reports the first sync)
                self.emit("replication_full_resync", primary=self.primary,
                          repl_id=reply["repl_id"], offset=reply["offset"])
        self._resync = False

    def round(self, progress: bool = False) -> bool:
        """One round, asked and applied at once (the first sync; see the module docstring);
        False if it failed (said on stderr once)."""
        assert self.applier is not None and self.cache is not None
        try:
            if self._resync:
                self._psync()
            complete = self._apply(*self._request(self._changes_request()), progress=progress)
            while not complete:  # progress=False: in steps, all the same
                self.steps += 1
                complete = self._apply(*self._request(self._changes_request()))
        except Stopped:
            raise
        except _ROUND_ERRORS as exc:
            self._failed(exc)
            return False
        self._succeeded()
        return True

    def _fail(self, exc: Exception) -> None:
        """A request failed: a round (tried again after RETRY_S), or a start at run time
        whose hello was not answered (tried again on a new socket until it is given up)."""
        if self.applier is not None:
            self._failed(exc)
            return
        self._drop_socket()
        self._next = time.monotonic()
        if isinstance(exc, HandshakeRefused):
            self._said_refused(exc)
            self._next += RETRY_S
        elif not isinstance(exc, RemoteUnavailable):  # not a copy, refused hello: final
            self.gave_up = str(exc)
        if self._give_up_at is not None and self._next >= self._give_up_at and not self.gave_up:
            self.gave_up = str(exc) if isinstance(exc, HandshakeRefused) else \
                f"the primary {self.primary} did not answer within {self._give_up_after_s} s"

    def _failed(self, exc: Exception) -> None:
        self._drop_socket()
        self._resync = True
        self._next = time.monotonic() + RETRY_S
        # said once per cause (a primary restarting costs a timeout, then may say why it
        # cannot be followed), and every refused epoch
        if self._failing != type(exc).__name__ or isinstance(exc, StaleEpoch):
            self.emit("replication_refused" if isinstance(exc, HandshakeRefused) else
                      "replication_failed", error=type(exc).__name__, message=str(exc))
        self._failing = type(exc).__name__

    def _succeeded(self) -> None:
        if self._failing:
            self.emit("replication_resumed", primary=self.primary)
        self._failing = ""
        self.last_sync_ns = time.time_ns()
        self.rounds += 1

    def _apply(self, reply: dict[str, Any], data: bytes, progress: bool = False) -> bool:
        """Apply a `changes` reply: the hinted stripes' records, then the digest comparison
        of the other stripes that moved (all if progress, else MAX_COMPARED_PER_STEP); record
        the position once no stripe is left (True)."""
        assert self.applier is not None and self.cache is not None
        self._check_region(reply["region_id"])
        changes = reply["changes"]
        self.seen = changes
        self.primary_offset = reply["offset"]
        self.applier.sync_collections([tuple(c) for c in reply["collections"]])
        applier, region = self.applier, self.cache._region
        compare: list[tuple[int, int, int]] = []
        hinted: list[tuple[int, int, int, memoryview]] = []
        at = 0
        for stripe, counter, written, size in reply["moved"]:
            if size < 0:
                compare.append((stripe, counter, written))
                continue
            chunk = memoryview(data)[at:at + size]
            at += size
            # else a collection it names is not in the table yet: the next round again
            if applier.can_apply(chunk):
                hinted.append((stripe, counter, written, chunk))
        evicted = region.q[L.H_EVICTIONS >> 3]
        for stripe, _, _, chunk in hinted:  # removals first: the room the primary reused
            applier.remove_tombstoned(stripe, chunk)
        for stripe, counter, written, chunk in hinted:
            applier.upsert_hinted(stripe, chunk, written)
            self.synced[stripe] = counter
        self.stripes_hinted += len(hinted)
        left = 0 if progress else max(0, len(compare) - MAX_COMPARED_PER_STEP)
        if left:  # unrecorded, they move for the next round, asked at once
            compare = compare[:MAX_COMPARED_PER_STEP]
        self.stripes_compared += len(compare)
        counters = {stripe: counter for stripe, counter, _ in compare}
        writes = {stripe: written for stripe, _, written in compare}
        for done, stripe in enumerate(self._sync_stripes(list(counters), writes)):
            self.synced[stripe] = counters[stripe]
            if progress:
                self.status(f"replica of {self.primary}: first sync, stripe {done + 1} of "
                            f"{len(counters)}")
        if region.q[L.H_EVICTIONS >> 3] != evicted:
            # its writes made room on their own (another fragmentation than the primary's):
            # what went may be of any stripe, so every stripe is compared next round
            self.self_evictions += 1
            self.synced = [None] * len(self.synced)
        if left:
            return False
        RP.set_position(region, reply["repl_id"], reply["offset"])
        self.applied = reply["offset"]
        return True

    def _sync_stripes(self, moved: list[int], writes: dict[int, int]) -> Iterator[int]:
        """Make each stripe equal to the primary's, yielding each once done: compare the
        digests of its slot ranges, read only the ranges that differ."""
        assert self.applier is not None and self.cache is not None
        region = self.cache._region
        n_ranges = D.n_ranges(region.layout)
        work: list[tuple[int, list[int] | None]] = []
        replies = self._requests([{"op": "digests", "stripe": s} for s in moved])
        for stripe, (reply, theirs) in zip(moved, replies):
            if reply.get("stripe") != stripe:
                raise ProtocolError(f"asked for stripe {stripe}'s digests, got "
                                    f"{reply.get('stripe')}")
            differ = D.differing(D.stripe_digests(region, stripe), theirs)
            self.ranges_compared += n_ranges
            self.ranges_sent += len(differ)
            if differ:
                work.append((stripe, None if len(differ) == n_ranges else differ))
            else:
                self.applier.end_stripe(stripe, {}, writes[stripe], ranges=())
                yield stripe
        firsts = self._requests([{"op": "stripe", "stripe": s, "ranges": r} for s, r in work])
        for (stripe, ranges), first in zip(work, firsts):
            chunks: list[bytes] = []
            reply, data = first
            while True:
                if reply.get("stripe") != stripe:
                    raise ProtocolError(f"asked for stripe {stripe}, got {reply.get('stripe')}")
                if data:
                    chunks.append(data)
                if reply["done"]:
                    break
                reply, data = self._request({"op": "next", "stripe": stripe})
            # what the primary no longer has goes first: the upserts then find the room it
            # freed, and the replica's own writes do not evict (see _apply)
            listed = {(coll, key): version for chunk in chunks
                      for coll, _, _, version, key, _ in RP.records(chunk)}
            self.applier.end_stripe(stripe, listed, writes[stripe], ranges)
            seen: dict[tuple[int, bytes], int] = {}
            for chunk in chunks:
                self.applier.apply_chunk(stripe, chunk, seen)
            self.applier.upsert_hinted(stripe, b"", writes[stripe])  # the writes counter
            yield stripe

    def state(self) -> dict[str, Any]:
        behind = [s for s, n in enumerate(self.seen) if (self.synced[s] or 0) < n
                  or self.synced[s] is None]
        epoch = self.cache._region.q[L.H_REPL_EPOCH >> 3] if self.cache is not None else 0
        return {"role": "replica", "primary": self.primary,
                "last_sync_age_s": round((time.time_ns() - self.last_sync_ns) / 1e9, 3)
                if self.last_sync_ns else None,
                "stripes_behind": len(behind) if self.seen else len(self.synced),
                "changes_behind": max(0, self.primary_offset - self.applied),
                "offset": self.applied, "epoch": epoch,
                "repl_id": RP.repl_id(self.cache._region) if self.cache is not None else "",
                "rounds": self.rounds, "ranges_compared": self.ranges_compared,
                "ranges_sent": self.ranges_sent, "stripes_hinted": self.stripes_hinted,
                "stripes_compared": self.stripes_compared,
                "self_evictions": self.self_evictions, "steps": self.steps,
                "full_resyncs": self.full_resyncs,
                "partial_resyncs": self.partial_resyncs, "epoch_refusals": self.epoch_refusals,
                "failing": bool(self._failing)}

    def close(self) -> None:
        self._drop_socket()
