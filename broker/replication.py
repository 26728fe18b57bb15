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
requests. The primary parks the request (its routing id kept, never blocking its loop) while
no stripe's counter differs from the replica's synced ones; its loop then looks at the counters
every repl_source.PUSH_POLL_S (a local write to shared memory wakes no node) and answers as soon
as one moved, or after wait_ms with nothing moved. The replica applies the reply and sends the
next request at once; its report of what it applied rides on it.

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
stripe again. Once writes pause for a round, every stripe equals the primary's. After a
complete round the replica writes the primary's repl_id and the offset of that round (the sum
of the counters seen at T) into its region's header: every change the primary had made by T
is applied (a later change may be too). A replica that starts, or whose round failed, first
asks psync (broker/repl_source.py) which counters to start from.

Hints (broker/repl_hints.py). The primary's node tails the event rings with one EventReader
(for its subscribers); the Source observes it. For a moved stripe the primary takes the
stripe's lock, reads its ring up to the head (EventReader.catch_up), reads its counters and
closes the stripe's interval there: the counter and the events are taken at the same point of
the stripe's history, since writers bump the counter and append the event under that lock. An
interval is exact when no event was lost and the counter moved by exactly the number of
keyspace events in it (every event comes with a bump, so equal counts leave no bump unnamed).
If every interval since the replica's synced counter is exact, the primary sends, read under
the same lock, the current record of each key named (a tombstone if gone; expired entries
included), and the replica applies them (tombstones first, across the reply, so that its
writes find the room the primary freed) and records that counter: every key that changed after
its synced counter was named and is now exact, the others had not changed. Otherwise (a ring
overrun, a TTL change or a repair, which bump without an event, events off while no node ran,
more than MAX_HINT_KEYS keys, MAX_HINT_BYTES of records in the reply) the stripe is compared by
its digests as above, from the counter read under the lock, which is a mark: the next round can
be hinted again. A record naming a collection the replica does not have yet leaves the stripe
unrecorded (the next round sends it again). Nothing relies on the rings being complete: a gap
only costs a digest comparison. A replica whose own writes evicted (its arena fragmented
otherwise than the primary's) compares every stripe in its next round: what went may be of any
stripe.

Cost. A changed stripe costs the primary one pass over its slots under its lock (the compiled
range_digests: 14 ms per 1M entries), one digest reply (8 bytes a range, ~8 slots a range),
and the entries of the differing ranges only, instead of the whole stripe: a few writes among
1M keys send a few ranges of ~6-15 entries each. A round pipelines its requests (all digests,
then all first reads): a few round trips through both nodes' loops, not a few per stripe.
Measured (bench/results/replication-vm-20261130.md, 100k keys, a loaded 2-core VM): lag 59 ms
median at 1,000 writes/s (the first increment: 690 ms at 130k keys), 329 ms at 10,000 writes/s
(45-50 ms in shorter runs: under load a replica falls behind 10,000 writes/s).

Known limits: the event rings are not used as hints of which keys moved, so each round still
passes over every entry of every stripe that moved, on both sides (C speed, no copy), and a
changed key costs the read of its whole range (~6-15 entries); the replica polls (every
SYNC_INTERVAL_S) rather than being pushed the changes, so the lag stays far above Redis's
streamed replication (0.26-0.29 ms in the same run); the replica's sync runs in the node's loop,
which answers no requests meanwhile.

CurveZMQ. A primary whose repl_bind is CURVE-protected (curve_secret_key, curve_allow: a door
like the others) admits a replica whose DEALER is a CURVE client (auth.CurveClient) with
repl_curve_server_key (the primary's PATH.key) and repl_curve_client_cert (this node's
PATH.key_secret, whose PATH.key is in the primary's curve_allow). A refused handshake is told
from a silent primary by the socket's monitor (handshake.py): a "replication_refused"
event names both public keys, nothing is exchanged, and the replica tries again every RETRY_S
(a key added to the primary's allow-list is admitted after its SIGHUP).
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
from shmkv.broker.handshake import HandshakeWatch
from shmkv.errors import ConfigError, ProtocolError, RegionExists, RemoteUnavailable, ShmKVError
from shmkv.locks import DEFAULT_LOCK_TIMEOUT_S

from .auth import CurveClient
from .repl_source import Source
from .repl_wire import TAG, message, parse

__all__ = ["TAG", "HandshakeRefused", "Replica", "Source", "StaleEpoch", "Stopped",
           "curve_client"]

# How long a replica's `changes` request waits at the primary for something to move: the
# primary answers at once when it does, and at the latest after this (so that a dead link is
# noticed within LONG_POLL_S + REQUEST_TIMEOUT_S, and the replica reports its position)
LONG_POLL_S = 1.0
REQUEST_TIMEOUT_S = 5.0
RETRY_S = 0.5  # after a failed round

Emit = Callable[..., None]


class Stopped(Exception):
    """A stop signal arrived while the replica waited for its primary."""


class StaleEpoch(ShmKVError):
    """A primary answered with an epoch older than the replica's: it is no longer the primary
    (fencing), and what it sends is refused."""


class HandshakeRefused(RemoteUnavailable):
    """The primary's CurveZMQ handshake failed: it refused this replica's key, or it is not
    the key this replica expects, or one side speaks no CURVE. Nothing was exchanged."""


# What fails a round (said once per cause, then tried again after RETRY_S)
_ROUND_ERRORS = (ShmKVError, zmq.ZMQError, ValueError, KeyError, TypeError)

_CURVE_SETTINGS = ("repl_curve_server_key", "repl_curve_client_cert")


def curve_client(config: Any) -> CurveClient | None:
    """The replica's CURVE keys (None: it speaks no CURVE); ConfigError naming the setting if
    a file cannot be read, or holds no usable key."""
    try:
        return CurveClient.from_files(config.repl_curve_server_key or None,
                                      config.repl_curve_client_cert or None, _CURVE_SETTINGS)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class Replica:
    """The replica's side: its region, its first sync and its rounds (tick())."""

    def __init__(self, context: zmq.Context, config: Any, emit: Emit,
                 status: Callable[[str], object],
                 wait: Callable[[zmq.Poller, int], bool]) -> None:
        self.context, self.config, self.emit, self.status = context, config, emit, status
        self.primary = config.replica_of
        self._wait = wait  # poll, with stop signals deliverable; False once one arrived
        self.curve = curve_client(config)
        self._socket: zmq.Socket | None = None
        # told (socket, True) when a socket is made and (socket, False) before it is closed:
        # the node's poller watches it for the replies to the pushed rounds (roles.py)
        self.watch: Callable[[zmq.Socket, bool], object] = lambda socket, on: None
        self._polling: int | None = None  # the id of the `changes` request parked upstream
        self._poll_deadline = 0.0
        self._watch: HandshakeWatch | None = None  # why the primary does not answer, if CURVE
        self._id = 0
        self.name = uuid.uuid4().hex  # how the primary tells this replica from others
        self.cache: shmkv.Cache | None = None
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
        self.full_resyncs = self.partial_resyncs = 0
        self.epoch_refusals = 0
        self.region_id = 0  # the primary region's, from hello
        self._resync = True  # ask psync before the next round (at start, after a failure)
        self._next = 0.0
        self._failing = ""  # the error class of the failing rounds ("": not failing)

    # --- the wire ---------------------------------------------------------------------
    def _request(self, header: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        return self._requests([header])[0]

    def _requests(self, headers: list[dict[str, Any]]) -> list[tuple[dict[str, Any], bytes]]:
        """Send every request, then read their replies (in order: the primary answers one
        socket's requests in turn). Pipelined: a round costs a few round trips through both
        nodes' loops, not a few per stripe."""
        if self._socket is None:
            self._connect()
        assert self._socket is not None
        first = self._id + 1
        for header in headers:
            self._id += 1
            self._socket.send_multipart(message({**header, "id": self._id}))
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        replies: list[tuple[dict[str, Any], bytes]] = []
        while len(replies) < len(headers):
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                self._drop_socket()
                raise RemoteUnavailable(f"the primary {self.primary} did not answer within "
                                        f"{REQUEST_TIMEOUT_S} s")
            if not poller.poll(0) and not self._wait(poller, min(left_ms, 100)):
                raise Stopped()
            if not poller.poll(0):
                self._check_handshake()
                continue
            reply, data = parse(self._socket.recv_multipart())
            if reply.get("id") != first + len(replies):
                continue  # a late reply to an older request
            self._check_epoch(reply.get("epoch", 0))
            if not reply.get("ok"):
                op = headers[len(replies)]["op"]
                raise ShmKVError(f"the primary {self.primary} refused {op}: "
                                 f"{reply.get('error')}: {reply.get('message')}")
            replies.append((reply, data))
            deadline = time.monotonic() + REQUEST_TIMEOUT_S  # per reply, as before
        return replies

    def _check_epoch(self, epoch: object) -> None:
        """Refuse a reply from an older epoch than the region's; adopt a newer one."""
        if self.cache is None:
            return
        if not isinstance(epoch, int):
            raise ProtocolError(f"epoch {epoch!r} is not a whole number")
        q = self.cache._region.q
        mine = q[L.H_REPL_EPOCH >> 3]
        if epoch < mine:
            self.epoch_refusals += 1
            self._drop_socket()
            raise StaleEpoch(f"the primary {self.primary} answers in epoch {epoch}, older than "
                             f"this replica's {mine}: refused")
        if epoch > mine:
            q[L.H_REPL_EPOCH >> 3] = epoch

    def _connect(self) -> None:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.secure(sock)  # before connect: the handshake starts with it
            self._watch = HandshakeWatch(sock)  # before connect too, not to miss it
        sock.connect(self.primary)
        self._socket = sock
        self.watch(sock, True)

    def _check_handshake(self) -> None:
        """A refused handshake is told from a silent primary at once (the monitor says so):
        raise HandshakeRefused naming both keys, rather than wait for the request timeout."""
        failure = self._watch.lasting_failure() if self._watch is not None else None
        if failure is None:
            return
        assert self.curve is not None
        self._drop_socket()
        raise HandshakeRefused(
            f"the primary {self.primary} refused the CurveZMQ handshake: {failure}. This "
            f"replica's public key is {self.curve.keys.public.decode()} (from "
            f"repl_curve_client_cert {self.config.repl_curve_client_cert}: its .key file must "
            f"be in the primary's curve_allow directory, then SIGHUP the primary); the "
            f"primary's key it expects is {self.curve.server_public.decode()} (from "
            f"repl_curve_server_key {self.config.repl_curve_server_key}: it must be the "
            "public key of the primary's curve_secret_key)")

    def _drop_socket(self) -> None:
        if self._watch is not None:
            self._watch.close()  # before its socket
            self._watch = None
        self._polling = None  # its reply, if any, goes with the socket
        if self._socket is not None:
            self.watch(self._socket, False)
            self._socket.close()
            self._socket = None

    # --- start ------------------------------------------------------------------------
    def open_region(self) -> shmkv.Cache:
        """Ask the primary for its region's parameters (until it answers), then create the
        replica's region as its clone, or reuse one that already is one; fence it."""
        refused = ""
        while True:
            try:
                params = self._request({"op": "hello"})[0]["params"]
                break
            except HandshakeRefused as exc:
                # said once per cause; tried again (a key added to the primary's allow-list
                # and a SIGHUP admit it), at the pace of a failed round
                self.status(f"refused by the primary {self.primary}: check the keys")
                if str(exc) != refused:
                    self.emit("replication_refused", primary=self.primary, message=str(exc))
                refused = str(exc)
                if not self._wait(zmq.Poller(), int(RETRY_S * 1000)):
                    raise Stopped() from None
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
        self.applied = cache._region.q[L.H_REPL_OFFSET >> 3]
        return cache

    def bootstrap(self) -> None:
        """The first sync: every stripe that may differ once (retried until it succeeds)."""
        while not self.round(progress=True):
            if not self._wait(zmq.Poller(), int(RETRY_S * 1000)):
                raise Stopped()

    # --- rounds -----------------------------------------------------------------------
    @property
    def socket(self) -> zmq.Socket | None:
        return self._socket

    def due(self) -> float:
        return self._poll_deadline if self._polling is not None else self._next

    def tick(self) -> None:
        """Due: send the next `changes` request (the primary parks it until something moves),
        or give up on one that was not answered in time."""
        if self._polling is not None:  # no reply within LONG_POLL_S + REQUEST_TIMEOUT_S
            self._failed(RemoteUnavailable(f"the primary {self.primary} did not answer within "
                                           f"{LONG_POLL_S + REQUEST_TIMEOUT_S} s"))
            return
        try:
            self._send_poll()
        except Stopped:  # the node's loop sees the signal and stops
            self._next = time.monotonic() + RETRY_S
        except _ROUND_ERRORS as exc:
            self._failed(exc)

    def _send_poll(self) -> None:
        if self._resync:
            self._psync()
        if self._socket is None:
            self._connect()
        assert self._socket is not None
        self._id += 1
        self._socket.send_multipart(message({**self._changes_request(), "id": self._id,
                                             "wait_ms": int(LONG_POLL_S * 1000)}))
        self._polling = self._id
        self._poll_deadline = time.monotonic() + LONG_POLL_S + REQUEST_TIMEOUT_S

    def service(self) -> None:
        """The socket is readable: the reply to the parked request (a late reply to another
        is dropped). The round is applied, and the next request sent at once."""
        while self._socket is not None and self._polling is not None:
            try:
                reply, data = parse(self._socket.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            except (zmq.ZMQError, ShmKVError, ValueError) as exc:
                self._failed(exc)
                return
            if reply.get("id") != self._polling:
                continue
            self._polling = None
            try:
                self._check_epoch(reply.get("epoch", 0))
                if not reply.get("ok"):
                    raise ShmKVError(f"the primary {self.primary} refused changes: "
                                     f"{reply.get('error')}: {reply.get('message')}")
                self._apply(reply, data)
            except Stopped:
                self._next = time.monotonic() + RETRY_S
                return
            except _ROUND_ERRORS as exc:
                self._failed(exc)
                return
            self._succeeded()
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

    def _psync(self) -> None:
        """Where to start from: partial (the stripes moved since this region's offset) or
        full (every stripe compared); see broker/repl_source.py."""
        assert self.cache is not None
        region = self.cache._region
        reply, _ = self._request({"op": "psync", "repl_id": RP.repl_id(region),
                                  "offset": region.q[L.H_REPL_OFFSET >> 3]})
        self._check_region(reply["region_id"])
        n = region.layout.n_stripes
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
            self._apply(*self._request(self._changes_request()), progress=progress)
        except Stopped:
            raise
        except _ROUND_ERRORS as exc:
            self._failed(exc)
            return False
        self._succeeded()
        return True

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

    def _apply(self, reply: dict[str, Any], data: bytes, progress: bool = False) -> None:
        """Apply a `changes` reply: the hinted stripes' records, then the digest comparison
        of the other stripes that moved; record the position."""
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
        RP.set_position(region, reply["repl_id"], reply["offset"])
        self.applied = reply["offset"]

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
                "self_evictions": self.self_evictions, "full_resyncs": self.full_resyncs,
                "partial_resyncs": self.partial_resyncs, "epoch_refusals": self.epoch_refusals,
                "failing": bool(self._failing)}

    def close(self) -> None:
        self._drop_socket()
