"""The node's replication role at run time, switchable while it runs.

    role        what runs                  the region's fence (layout.py: writable_until_ns)
    primary     a Source (if repl_bind)    0 (no fence), or the end of its etcd lease
    replica     a Replica of `primary`     FENCED, the primary named in the header
    candidate   nothing                    FENCED, no primary named (a node under etcd that
                                           holds no leader key and follows nobody yet)
    none        nothing                    0: a node that does not replicate

Switches (each one in the node's loop, between two requests):

    promote(epoch, writable_until_ns)   close the Replica (and its handle), write repl_epoch
                                        (if an epoch is given), start a new history
                                        (shmkv/replica.py new_history), lift the fence up to
                                        writable_until_ns, open a Source
    follow(primary, takeover)           fence first (no write lands after the call), close the
                                        Source, then start a Replica toward primary and
                                        return: its hello, psync and rounds run in the node's
                                        loop (a primary silent for FOLLOW_TIMEOUT_S is given
                                        up: candidate, "follow_failed" in the event and in
                                        "role"); the first round after a demotion counts and
                                        logs what it discarded (below)
    fence_until(ns)                     a primary under etcd pushes its fence forward on every
                                        renewal of its lease (broker/failover.py)

`shmkv promote` and `shmkv replicaof URL|none` call these by hand (dispatch.py's node ops);
broker/failover.py calls them from its loop.

What a demoted node discarded (its "discarded" event, after its first round as a replica).
Versions tell it: an entry's version is its stripe's writes counter after the write
(layout.py), a replica's counters are its primary's, so the new primary's counter of a stripe
when it took over (`takeover`: under etcd, its leader key says, broker/failover.py) splits
this node's history in two: versions up to it were written before the new primary's last
copy of that stripe (it had them), later ones after. Counted, one per (collection, key):
    set      this node held the key at a version written after that copy, and after its
             first round holds it at another version or value, or not at all (the write was
             undone; both histories may give a key the same version: values are compared)
    delete   this node did not hold the key (deleted, expired or evicted after that copy),
             and after its first round holds it at a version up to that copy (the new
             primary had it when it took over, unchanged since: the delete was undone)
So neither what the new primary wrote since it took over nor what this node wrote that the
new primary had copied is counted. `exact` is true when the new primary took over from this
node's own term (the epoch it had copied is this node's); it is false after a failover by hand
(no takeover is known: every key held at demotion and then gone or at another version is
counted, also those the new primary changed since it took over, and no delete is) or when
terms passed in between (writes of this node that later primaries' counters passed are not
counted). Not counted either: a TTL change alone (expire, persist: the version stays). A write
made while the new primary's last round read its stripe may have been copied with a version
past the primary's counter at the round's start: the replica's counter then ends past it
(replica.py's Applier.end_stripe), so it counts as copied. One exception even when exact: a
promotion that cuts a stripe's read short, before its end, leaves that stripe's counter at
the last entry applied, and a copied entry of a later version, if the new primary changed it
since, is counted though it was not lost.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

import shmkv
from shmkv import layout as L
from shmkv import replica as RP
from shmkv.errors import ShmKVError

from .config import NodeConfig

if TYPE_CHECKING:
    from shmkv.events import EventReader
from .replication import Emit, Replica, Source, curve_client

# A Source closed a moment ago may still hold its port (libzmq unbinds in its I/O thread)
BIND_RETRY_S = 2.0
# Under etcd, how long a replica's request may wait for its primary's reply before the round
# gives the node's loop back to the election (a live primary answers a chunk well within it;
# the round resumes from the stripes it had done)
YIELD_AFTER_S = 0.1
# How long a Replica started by follow() waits for its new primary's hello, from the node's
# loop, before it gives up (the node stays fenced, following nobody; etcd's loop tries again,
# a user can repeat replicaof)
FOLLOW_TIMEOUT_S = 10.0
# (collection, key) -> (version, digest of the value): what a demoted node compares (_versions)
Entries = dict[tuple[str, bytes], tuple[int, bytes]]


class Roles:
    """The node's Source or Replica, and the switches between them."""

    def __init__(self, context: zmq.Context, config: NodeConfig, emit: Emit,
                 status: Callable[[str], object], wait: Callable[[zmq.Poller, int], bool],
                 secure: Callable[[zmq.Socket], None] | None = None) -> None:
        self.context, self.config, self.emit, self.status = context, config, emit, status
        self._wait, self._secure = wait, secure
        curve_client(config)  # its key files checked at start, not at the first follow
        # Under etcd, a replica whose primary stopped answering must not hold the node's loop
        # for a whole request timeout: the election runs there (see _replica_wait)
        self.yield_after_s = min(YIELD_AFTER_S, config.loop_interval_s) if config.etcd else None
        self._in_tick = False
        self._waiting: tuple[tuple[int, object], float] | None = None  # (request, since)
        self.follow_failed = ""  # why the last follow() was given up ("": it was not)
        self.cache: shmkv.Cache | None = None  # the node's main handle
        self.source: Source | None = None
        # Told each time the Source changes (the node rebinds WAIT and min-replicas to it)
        self.on_source: Callable[[Source | None], object] = lambda source: None
        self.replica: Replica | None = None
        self.role = "candidate" if config.etcd else "none"
        self._poller: zmq.Poller | None = None
        self._before_demotion: Entries | None = None
        self._takeover: Takeover | None = None  # the new primary's, and this node's epoch
        self._epoch_at_demotion = 0
        self._events: EventReader | None = None  # the node's reader of the rings (hints)

    # --- start (server.py) -------------------------------------------------------------
    def open_replica(self, primary: str) -> shmkv.Cache:
        """At start: the Replica of primary and its region (the node's main handle)."""
        self.replica = self._new_replica(primary)
        self.role = "replica"
        self.cache = self.replica.open_region()
        return self.cache

    def start(self, cache: shmkv.Cache) -> None:
        """At start, once the region is open (and a replica's first sync is done)."""
        self.cache = cache
        if self.replica is not None:
            return
        if self.config.etcd:  # a candidate until etcd says otherwise: fenced, follows nobody
            RP.unfence(cache._region, RP.FENCED)
            return
        if self.config.repl_bind:
            self._set_source(self._open_source())
            self.role = "primary"

    def attach(self, poller: zmq.Poller) -> None:
        """The node's poller: a Source's socket is registered there while it runs."""
        self._poller = poller
        if self.source is not None:
            poller.register(self.source.socket, zmq.POLLIN)
        if self.replica is not None and self.replica.socket is not None:
            poller.register(self.replica.socket, zmq.POLLIN)

    def use_events(self, events: EventReader) -> None:
        """The node's reader of the event rings: a Source takes its hints from it."""
        self._events = events
        if self.source is not None:
            self.source.use_events(events)

    # --- the loop ------------------------------------------------------------------------
    def due(self) -> float:
        due = self.replica.due() if self.replica is not None else float("inf")
        return min(due, self.source.due()) if self.source is not None else due

    def service(self, ready: dict[Any, int]) -> None:
        if self.source is not None:
            if self.source.socket in ready:
                self.source.service()
            self.source.poll_parked()
        if self.replica is not None and self.replica.socket is not None \
                and self.replica.socket in ready:
            self._in_tick = True
            try:
                self.replica.service()
            finally:
                self._in_tick = False
        if self.replica is not None and time.monotonic() >= self.replica.due():
            self._in_tick = True
            try:
                self.replica.tick()
            finally:
                self._in_tick = False
        if self.replica is not None and self.replica.gave_up:
            self._give_up()
        # a round completes in tick() or in service() (a pushed round's reply)
        if self.replica is not None and self._before_demotion is not None \
                and self.replica.rounds:
            self._count_discarded()

    def state(self) -> dict[str, Any] | None:
        if self.source is not None:
            return self.source.state()
        if self.replica is not None:
            return self.replica.state()
        return None if self.role == "none" else {"role": self.role}

    @property
    def primary(self) -> str:
        return self.replica.primary if self.replica is not None else ""

    # --- switches ------------------------------------------------------------------------
    def promote(self, epoch: int | None = None, writable_until_ns: int = 0) -> dict[str, Any]:
        """Become the primary (see the module docstring); returns the new state."""
        cache = self._cache()
        region = cache._region
        self._close_replica()
        if epoch is not None:
            region.q[L.H_REPL_EPOCH >> 3] = epoch
        repl_id = RP.new_history(region)
        RP.unfence(region, writable_until_ns)
        if self.source is None and self.config.repl_bind:
            self._set_source(self._open_source())
        self.role = "primary"
        self.follow_failed = ""
        self.emit("promoted", epoch=int(region.q[L.H_REPL_EPOCH >> 3]), repl_id=repl_id,
                  writable_until_ns=writable_until_ns, at_ns=time.time_ns())
        return {"role": "primary", "repl_id": repl_id,
                "epoch": int(region.q[L.H_REPL_EPOCH >> 3]),
                "endpoint": self.source.endpoint if self.source is not None else ""}

    def follow(self, primary: str, takeover: Takeover | None = None) -> dict[str, Any]:
        """Become (or stay) a replica of primary (see the module docstring; takeover: how
        it took over, if known, to count what this node discards). Returns at once: the
        Replica's hello is answered in the node's loop (a primary silent for
        FOLLOW_TIMEOUT_S is given up: see service())."""
        cache = self._cache()
        RP.fence(cache._region, primary)  # first: no write lands after this call
        if self.replica is not None and self.replica.primary == primary:
            return {"role": "replica", "primary": primary}
        was = self.role
        self._close_source()
        self._close_replica()
        before = _versions(cache) if was != "replica" else None  # what it may discard
        self.replica = self._new_replica(primary)
        try:
            self.replica.begin(FOLLOW_TIMEOUT_S)
        except zmq.ZMQError as exc:  # an endpoint ZeroMQ refuses
            self._close_replica()
            self.role = "candidate"
            raise ValueError(f"cannot follow {primary!r}: {exc}") from None
        self._before_demotion, self._takeover = before, takeover
        self._epoch_at_demotion = int(cache._region.q[L.H_REPL_EPOCH >> 3])
        self.role = "replica"
        self.follow_failed = ""
        self.emit("following", primary=primary, was=was)
        return {"role": "replica", "primary": primary}

    def fence_until(self, writable_until_ns: int) -> None:
        """Move a primary's write fence (a renewed lease)."""
        self._cache()._region.q[L.H_WRITABLE_UNTIL >> 3] = writable_until_ns

    def fence(self) -> None:
        """Stop every write now, following nobody (a primary that lost its leader key)."""
        RP.unfence(self._cache()._region, RP.FENCED)
        self._close_source()
        self.role = "candidate"

    def node_ops(self) -> dict[str, Callable[[dict[str, Any]], object]]:
        """The requests that change the role by hand (dispatch.py's node ops), refused while
        etcd elects the primary; and "role", which ping adds to its reply."""
        def by_hand(op: str) -> None:
            if self.config.etcd:
                raise ShmKVError(f"{op}: this node's primary is elected through etcd "
                                 f"({self.config.etcd}); stop the node to change it by hand")

        def promote(fields: dict[str, Any]) -> object:
            by_hand("promote")
            return self.promote()

        def replicaof(fields: dict[str, Any]) -> object:
            by_hand("replicaof")
            primary = fields.get("primary")
            if not isinstance(primary, str) or not primary:
                raise ValueError("replicaof needs a primary: an endpoint, or none")
            return self.promote() if primary.lower() == "none" else self.follow(primary)

        def role(fields: dict[str, Any]) -> object:
            found = {"role": self.role, "primary": self.primary,
                     "epoch": int(self._cache()._region.q[L.H_REPL_EPOCH >> 3])}
            if self.follow_failed:  # why the last replicaof (or demotion) follows nobody
                found["follow_failed"] = self.follow_failed
            return found

        return {"promote": promote, "replicaof": replicaof, "role": role}

    def close(self) -> None:
        self._close_source()
        self._close_replica()

    # --- helpers -------------------------------------------------------------------------
    def _cache(self) -> shmkv.Cache:
        if self.cache is None:
            raise ShmKVError("the node has not opened its region yet")
        return self.cache

    def _new_replica(self, primary: str) -> Replica:
        config = dataclasses.replace(self.config, replica_of=primary)
        replica = Replica(self.context, config, self.emit, self.status, self._replica_wait)
        replica.watch = self._watch_replica
        return replica

    def _watch_replica(self, socket: zmq.Socket, on: bool) -> None:
        """The Replica's socket, in the node's poller while it exists (its pushed rounds'
        replies wake the loop)."""
        if self._poller is None:
            return
        if on:
            self._poller.register(socket, zmq.POLLIN)
        elif socket in self._poller:
            self._poller.unregister(socket)

    def _replica_wait(self, poller: zmq.Poller, timeout_ms: int) -> bool:
        """The Replica's wait for a reply: the node's (False once a stop signal came); and
        under etcd, False too once one request of a round has waited YIELD_AFTER_S, so that
        the round ends (Replica.tick takes it as a stop and retries later) and the node's
        loop runs the election: a replica of a dead primary must be able to take over within
        the lease. A request is told from the next by its Poller (each has its own) and the
        Replica's request id: either changing means a new one started."""
        if not self._wait(poller, timeout_ms):
            return False
        if self.yield_after_s is None or not self._in_tick:
            return True
        now = time.monotonic()
        request = (id(poller), getattr(self.replica, "_id", None))
        if self._waiting is None or self._waiting[0] != request:
            self._waiting = (request, now)
        return now - self._waiting[1] < self.yield_after_s

    def _open_source(self) -> Source:
        deadline = time.monotonic() + BIND_RETRY_S
        while True:
            try:
                return Source(self.context, self._cache(), self.config.repl_bind, self._secure,
                              self.config.repl_backlog_changes)
            except ShmKVError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _set_source(self, source: Source) -> None:
        self.source = source
        if self._events is not None:
            source.use_events(self._events)
        if self._poller is not None:
            self._poller.register(source.socket, zmq.POLLIN)
        self.on_source(source)

    def _close_source(self) -> None:
        if self.source is not None:
            if self._poller is not None:
                self._poller.unregister(self.source.socket)
            self.source.close()
            self.source = None
            self.on_source(None)

    def _close_replica(self) -> None:
        if self.replica is not None:
            self.replica.close()
            if self.replica.cache is not None and self.replica.cache is not self.cache:
                self.replica.cache.close()  # its own handle, opened at run time
            self.replica = None
        self._before_demotion, self._takeover = None, None

    def _give_up(self) -> None:
        """A Replica started at run time whose primary never answered its hello (or whose
        region cannot be a copy): the node stays fenced and follows nobody (etcd's loop
        tries again; a user can repeat replicaof); "role" and the event say why."""
        assert self.replica is not None
        primary = self.replica.primary
        self.follow_failed = f"{self.replica.gave_up}: this node stays fenced and follows nobody"
        self._close_replica()
        self.role = "candidate"
        self.emit("follow_failed", primary=primary, message=self.follow_failed)

    def _count_discarded(self) -> None:
        """After the first round that followed a demotion: what this node had written that
        its new primary never had, counted and logged (see the module docstring)."""
        before, self._before_demotion = self._before_demotion or {}, None
        takeover, self._takeover = self._takeover, None
        after = _versions(self._cache())
        if takeover is None:
            sets = sum(1 for key, entry in before.items() if after.get(key) != entry)
            self.emit("discarded", count=sets, sets=sets, deletes=None, exact=False,
                      primary=self.primary,
                      message="keys this node held that its new primary does not have (or has "
                              "at another version) were replaced by the primary's: its own "
                              "writes it never had, and what it changed since it took over")
            return
        sets, deletes = discarded(before, after, takeover.writes)
        exact = takeover.epoch_before == self._epoch_at_demotion
        self.emit("discarded", count=sets + deletes, sets=sets, deletes=deletes, exact=exact,
                  primary=self.primary,
                  message="keys this node wrote or deleted after its new primary's last copy "
                          "of them, undone by the new primary's" + ("" if exact else
                          " (not exact: terms passed in between, its writes that later "
                          "primaries' counters passed are not counted)"))


@dataclasses.dataclass(frozen=True)
class Takeover:
    """How a new primary took over (its leader key, broker/failover.py): each stripe's writes
    counter then, and the epoch of the history it had copied."""

    writes: list[int]
    epoch_before: int

    @classmethod
    def of(cls, leader: dict[str, Any]) -> Takeover | None:
        writes, epoch = leader.get("writes"), leader.get("epoch_before")
        if not isinstance(writes, list) or not all(type(w) is int for w in writes) \
                or type(epoch) is not int:
            return None  # a leader that says nothing of it
        return cls(writes, epoch)


def discarded(before: Entries, after: Entries, writes: list[int]) -> tuple[int, int]:
    """(sets, deletes) of before (this node's keys at demotion) that after (its keys after its
    first round) undid, given its new primary's writes counters at its takeover (see the
    module docstring)."""
    def unseen(version: int) -> bool:  # written after the new primary's copy of its stripe
        stripe, stored = version & 0xFF, version >> 8
        return stripe >= len(writes) or L.newer_version(stored, writes[stripe] & L.VERSION_MASK)

    sets = sum(1 for key, entry in before.items()
               if unseen(entry[0]) and after.get(key) != entry)
    deletes = sum(1 for key, entry in after.items()
                  if key not in before and not unseen(entry[0]))
    return sets, deletes


def _versions(cache: shmkv.Cache) -> Entries:
    """(collection, key) -> (version, digest of the value) of every live key of the region:
    two histories (a demoted node's and its new primary's) can give a key the same version."""
    found: Entries = {}
    handles = [("", cache)] + [(name, cache.collection(name)) for name in cache.collections()]
    for name, handle in handles:
        try:
            for key in handle.keys():
                got = handle.get_with_version(key)
                if got is not None:
                    found[(name, key if isinstance(key, bytes) else str(key).encode())] = \
                        (got[1], hashlib.blake2b(got[0], digest_size=16).digest())
        finally:
            if handle is not cache:
                handle.close()
    return found
