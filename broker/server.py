"""The node process: owns one region for the lifetime of a service and serves the Cache API
over ZeroMQ request/reply, and publishes channel messages and keyspace events.

`shmkv serve` binds a ROUTER socket to config.bind and an XPUB socket to config.pub_bind (both
also to ipc:// endpoints in config.ipc_dir: ipc.py), creates the region if it does not exist
(or attaches to it), turns keyspace events on for every writer of the region, reports that it
is ready, and runs one loop until SIGTERM or SIGINT:

    poll(ROUTER, XPUB, signal wake-up socket; until the next maintenance, watchdog ping or
         retry of parked requests is due, or EVENT_POLL_S while anyone subscribes)
      subscriptions      -> note which topic prefixes subscribers want (pubsub.py)
      requests waiting   -> answer up to MAX_BATCH of them, one at a time (zmq_door.py,
                            dispatch.py); one that finds a lock busy is parked instead
                            (waits.py)
      parked retry due   -> try the parked requests again; answer those done or out of time
      ring events        -> forward them to subscribers (pubsub.py), whoever wrote them
      maintenance due    -> one bounded Cache.maintain() pass (active expiry, segment
                            balance), so expired memory is reclaimed even when nobody writes
      replication        -> the role's work (roles.py: a Source answers replicas, a Replica's
                            round is due); with etcd, the election loop (failover.py)
      watchdog due       -> tell the supervisor the loop is alive (when it asked for that)
      SIGHUP             -> read the CurveZMQ allow-list again (auth.py), log how many keys
      stop signal        -> leave the loop

With curve_secret_key and curve_allow set, both sockets are CurveZMQ servers and a ZAP thread
admits only the allowed client keys (auth.py); the loop does not see it.

With --workers N (N > 1) this loop is the supervisor's: it binds no request socket and serves
no requests; N worker processes do, and the loop also watches them (supervisor.py).

This module is the transport only: the wire format is protocol.py, how a request read is
answered zmq_door.py, what it does dispatch.py, what is published and how is pubsub.py. On
the way out the node turns keyspace events off (writers stop paying for them), closes its
sockets and its handle and leaves the region in place, so local processes keep their data
across a restart.

Signals: signals.py. The ROUTER's reading, sending and binding, and what a hostile client
can do to them: router.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import zmq

import shmkv
from shmkv.errors import ShmKVError
from shmkv.events import EventReader
from shmkv.locks import DEFAULT_LOCK_TIMEOUT_S

from . import compiled_door, protocol, resp_tls
from .auth import CurveServer
from .config import NodeConfig, metrics_address, resp_address
from .dispatch import Dispatcher
from .ipc import IpcEndpoints
from .ipc import prepare as ipc_endpoints
from .metrics import Metrics
from .persistence import Persistence, arena_bytes_to_serve, open_or_restore
from .pubsub import Publisher
from .repl_source import WrittenOffsets
from .replication import Source, Stopped
from .resp_context import EventTee
from .resp_door import RespDoor
from .roles import Roles
from .router import RECEIVE_HWM, SEND_HWM, bind
from .signals import StopSignals
from .waits import TRY_LOCK_S, LockWaits
from .zerocopy import ZeroCopy
from .zmq_door import ZmqDoor

if TYPE_CHECKING:  # imported when etcd is configured (etcd3gw: an optional extra)
    from .failover import Failover

# How long closing waits for replies still queued to live clients. LINGER 0 would discard a
# reply sent just before the stop (zmq_close(3)) and break the promise above; a peer that has
# gone is dropped at once by the ROUTER, so only a client too slow to read can use it all up.
STOP_LINGER_MS = 1000
# How often the loop tails the event rings while someone subscribes: the most a local writer's
# event waits before it is forwarded (nothing wakes the node when a process writes to shared
# memory; events of requests go out at once). Each wake-up costs ~150 µs on the project's VM,
# so at 10 ms an idle node with subscribers spends ~2% more of a core than without (5 ms: 3%).
# Nobody subscribed, the node only drains the rings when it wakes for other reasons.
EVENT_POLL_S = 0.01


class Notifier(Protocol):
    """What the node tells its supervisor (broker/notify.py implements it for systemd)."""

    def ready(self, status: str | None = None) -> object: ...
    def status(self, text: str) -> object: ...
    def extend_timeout(self, seconds: float) -> object: ...
    def watchdog(self) -> object: ...
    def stopping(self, status: str | None = None) -> object: ...
    def watchdog_interval_s(self) -> float | None: ...


class Workers(Protocol):
    """The processes that serve requests for a node that serves none itself (supervisor.py)."""

    def start(self, stop: StopSignals, metrics: Metrics | None) -> dict[str, object]: ...
    node_ops: dict[str, Callable[[dict[str, Any]], Any]]

    def attach(self, poller: zmq.Poller) -> None: ...
    def reload(self) -> None: ...
    def due(self) -> float: ...
    def service(self, ready: dict[Any, int]) -> None: ...
    def alive(self) -> bool: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


def serve(config: NodeConfig, out: TextIO = sys.stdout, *,
          notifier: Notifier | None = None) -> int:
    """Run the node until SIGTERM/SIGINT; returns the process exit status."""
    try:
        return _Node(config, out, notifier).run()
    except Stopped:  # stopped while a replica waited for its primary: nothing to serve
        return 0


class _Node(ZmqDoor):
    def __init__(self, config: NodeConfig, out: TextIO, notifier: Notifier | None) -> None:
        self.config = config
        self.out = out
        self.notifier = notifier
        self.metrics: Metrics | None = None
        self.endpoint = ""
        self.roles: Roles | None = None
        self.failover: Failover | None = None
        self._watchdog_s: float | None = None  # how often the supervisor wants a ping
        self._next_watchdog = math.inf
        self._waits = LockWaits(DEFAULT_LOCK_TIMEOUT_S)
        self._requests: shmkv.Cache  # the requests' handle (run() opens it)
        self._maintain_failing = False
        self._curve: CurveServer | None = None
        # Set, the node serves no requests itself: these processes do (supervisor.py)
        self.workers: Workers | None = None
        self._written = WrittenOffsets(None)  # per client, the offset after its last write
        self._resp_door: RespDoor | None = None
        self._zero_copy = ZeroCopy.from_environment()  # large values, sent from the arena
        self._compiled: Any = None  # the plain gets answered in C (compiled_door.py)

    def run(self) -> int:
        with StopSignals() as stop:
            context = zmq.Context()
            router = context.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 0)  # any early exit closes at once
            router.setsockopt(zmq.SNDHWM, SEND_HWM)
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full or gone client: an error
            router.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
            publisher: Publisher | None = None
            curve: CurveServer | None = None
            ipc: IpcEndpoints | None = None
            linger_ms = 0
            try:
                if self.config.curve_secret_key or self.config.curve_allow:  # before any bind
                    curve = CurveServer(context, self.config.curve_secret_key,
                                        self.config.curve_allow)
                    curve.secure(router)
                    self._curve = curve
                resp_tls.server_context(self.config)  # its files checked before any bind
                # before binding: a listener gives its connections the options it was bound with
                limits = protocol.limits_for(arena_bytes_to_serve(self.config))
                router.setsockopt(zmq.MAXMSGSIZE, limits["max_message_bytes"])
                if self.workers is None:
                    self.endpoint = bind(router, self.config.bind)
                publisher = Publisher(context, self.config.pub_bind, self.config.pub_hwm,
                                      secure=curve.secure if curve else None)
                ipc = ipc_endpoints(self.config.ipc_dir, self.config.region)
                if ipc is not None:  # the same sockets, also on same-host-only endpoints
                    if self.workers is None:
                        bind(router, ipc.request)
                    bind(publisher.socket, ipc.publish)
                roles = self.roles = Roles(context, self.config, self._emit, self._status,
                                           stop.wait, curve.secure if curve else None)
                cache = self._open_region(roles)
                persistence: Persistence | None = None
                door: RespDoor | None = None
                requests: shmkv.Cache | None = None
                try:
                    if roles.replica is not None:
                        roles.replica.bootstrap()  # READY=1 only after the first full sync
                    roles.start(cache)
                    # The requests' own handle: it waits only a moment for a lock (waits.py)
                    requests = shmkv.Cache.open(self.config.region, lock_timeout_s=TRY_LOCK_S,
                                                owner=self.config.region_owner or None)
                    dispatcher = Dispatcher(requests, limits)
                    # WAIT and --min-replicas-to-write count on the Source of the moment
                    roles.on_source = lambda source: self._guard_writes(dispatcher, source)
                    roles.on_source(roles.source)
                    self._requests = requests
                    persistence = Persistence(self.config, cache, self.notifier, self._emit)
                    events = EventReader(cache)  # made before events are on: it misses none
                    roles.use_events(events)  # a Source's hints: the same reader, teed
                    cache.enable_events(True)
                    metrics_at = self._start_metrics(cache)
                    publisher.metrics = self.metrics
                    self._compiled = compiled_door.plain_gets(
                        requests, router, self._zero_copy, self.metrics,
                        limits["max_reply_bytes"])
                    door = self._open_door(requests)
                    if door is not None:
                        events = EventTee(events, door)  # the door's subscribers get them too
                        door.pump = lambda: publisher.pump(events)  # type: ignore[union-attr]
                    ready = dict(pid=os.getpid(), endpoint=self.endpoint,
                                 pub_endpoint=publisher.endpoint, metrics=metrics_at,
                                 ipc_endpoint=ipc and ipc.request,
                                 ipc_pub_endpoint=ipc and ipc.publish,
                                 resp=door.address if door else None,
                                 config={**asdict(self.config), "requirepass":
                                         "(set)" if self.config.requirepass else ""},
                                 stats=cache.stats(), replication=self._replication())
                    if self.workers is not None:  # their endpoints, once all serve
                        ready.update(self.workers.start(stop, self.metrics))
                        self.endpoint = str(ready["endpoint"])
                    self._emit("ready", **ready)
                    self._notify_ready()
                    self._loop(router, publisher, events, dispatcher, cache, stop,
                               persistence, door)
                    self._emit("stopping", signal=signal.Signals(stop.received).name)
                    self._notify_stopping()
                    if self.workers is not None:  # they answer what they received
                        self.workers.stop()
                    cache.enable_events(False)
                    publisher.pump(events)  # local writers' last events
                    linger_ms = STOP_LINGER_MS  # deliver the last replies and messages
                    router.setsockopt(zmq.LINGER, linger_ms)
                    persistence.stop()
                finally:
                    if self.failover is not None:
                        self.failover.close()
                    if self.workers is not None:
                        self.workers.close()
                    roles.close()
                    if door is not None:
                        door.close()
                    if self.metrics is not None:
                        self.metrics.stop_http()
                    if persistence is not None:
                        persistence.close()
                    if requests is not None:
                        requests.close()
                    cache.close()  # the region itself stays
            finally:
                self._compiled = None  # it uses the socket
                router.close()
                if publisher is not None:
                    publisher.close(linger_ms)
                if curve is not None:  # after the sockets: lingering ones need no handshake
                    curve.stop()
                if ipc is not None:
                    ipc.remove()
                # destroy, not term: term waits for every socket of the context to be closed,
                # and a socket whose setup failed half-way (a Publisher refused an option) has
                # no owner left to close it; the node would hang here with its stop signals
                # blocked. destroy closes what is left at once; the sockets closed above keep
                # the linger they were given.
                context.destroy(linger=0)
                self._zero_copy.close()  # libzmq has let go of every value lent
        return 0

    def _loop(self, router: zmq.Socket, publisher: Publisher, events: EventReader,
              dispatcher: Dispatcher, cache: shmkv.Cache, stop: StopSignals,
              persistence: Persistence, door: RespDoor | None = None) -> None:
        poller = zmq.Poller()
        if door is not None:
            door.attach(poller)
        poller.register(router, zmq.POLLIN)
        poller.register(publisher.socket, zmq.POLLIN)  # subscriptions arrive as messages
        poller.register(stop.wakeup_fd, zmq.POLLIN)  # the poller reports it by fd
        roles = self.roles
        assert roles is not None
        roles.attach(poller)
        dispatcher.node_ops = roles.node_ops()
        workers = self.workers
        if workers is not None:
            workers.attach(poller)
            workers.node_ops = dispatcher.node_ops  # the workers forward these here
        interval_s = self.config.maintain_interval_s
        next_maintain = time.monotonic() + interval_s
        events_left = False  # the last pump stopped at its limit
        waits = self._waits
        while stop.received is None:
            wake_at = min(next_maintain, self._next_watchdog, persistence.due(), waits.due())
            wake_at = min(wake_at, roles.due())
            if self.failover is not None:
                wake_at = min(wake_at, self.failover.due())
            if door is not None:
                wake_at = min(wake_at, door.due())  # TLS handshakes' deadlines
            if workers is not None:
                wake_at = min(wake_at, workers.due())
            if publisher.listening or (door is not None and door.listening):
                wake_at = min(wake_at, time.monotonic() + (0 if events_left else EVENT_POLL_S))
            ready = self._poll(poller, stop, wake_at, router, dispatcher, publisher, events)
            if stop.take_reload():
                self._reload()
                if self.workers is not None:
                    self.workers.reload()
            if publisher.socket in ready:
                publisher.take_subscriptions()
            if router in ready:
                self._answer_waiting(router, dispatcher, publisher, events)
            if waits.queue and time.monotonic() >= waits.due():
                waits.retry()  # both doors' parked requests: each is answered by its door
            if door is not None:
                door.service(ready)
            if workers is not None:
                workers.service(ready)
            roles.service(ready)
            if workers is not None:
                workers.relay_replicas(roles.source)
            events_left = publisher.pump(events)  # local writers' events
            now = time.monotonic()
            if now >= next_maintain:
                self._maintain(cache)
                next_maintain = now + interval_s
            if now >= persistence.due():
                persistence.tick()
            if self.failover is not None and now >= self.failover.due():
                self.failover.tick()
            if now >= self._next_watchdog:
                self._notify_alive()
                self._next_watchdog = now + (self._watchdog_s or math.inf)
        # a received request is answered before the node stops, if only with LockTimeout
        while waits.expire_all():  # an answer may run its connection's next commands,
            pass                   # which may wait in turn (resp_door.py): until none does

    def _guard_writes(self, dispatcher: Dispatcher, source: Source | None) -> None:
        """WAIT and --min-replicas-to-write: both count on the primary's replicas."""
        dispatcher.replication = source
        dispatcher.replication_state = self._replication
        dispatcher.min_replicas = (self.config.min_replicas_to_write,
                                   self.config.min_replicas_max_lag_s)
        self._written = WrittenOffsets(source)
        if self._resp_door is not None:
            self._resp_door.ctx.replication = source

    def _maintain(self, cache: shmkv.Cache) -> None:
        self._zero_copy.drain()  # what libzmq is done with, though no get came since
        # On the requests' handle, which waits only TRY_LOCK_S for the arena lock: with the
        # node's lock timeout, a stopped local process holding it would stall the loop for 5 s
        # every maintain_interval_s. It also adds that handle's hit/miss counts to the region's
        # (both doors read through it). Then the main handle's: the lock was free a moment ago.
        try:
            self._requests.maintain()
            cache.maintain(max_slots=1)
        except ShmKVError as exc:  # a lock held too long by a local process: try next time
            if not self._maintain_failing:  # once a streak, not every interval
                print(json.dumps({"event": "maintain_failed", "error": type(exc).__name__,
                                  "message": str(exc)}), file=sys.stderr, flush=True)
            self._maintain_failing = True
        else:
            self._maintain_failing = False

    def _reload(self) -> None:
        """SIGHUP: the CurveZMQ allow-list again, from the next handshake on (auth.py)."""
        if self._curve is None:
            self._emit("reload", curve=False,
                       message="SIGHUP: nothing to reload (CurveZMQ is off)")
            return
        try:
            count = self._curve.reload()
        except ShmKVError as exc:
            self._emit("reload_failed", curve=True, directory=self.config.curve_allow,
                       error=type(exc).__name__, message=str(exc))
            return
        self._emit("reload", curve=True, directory=self.config.curve_allow, keys=count)

    # --- seams for the supervisor and the metrics ----------------------------------------
    def _notify_ready(self) -> None:
        if self.notifier is not None:
            self.notifier.ready(f"serving region {self.config.region} on {self.endpoint}")
            self._watchdog_s = self.notifier.watchdog_interval_s()
            if self._watchdog_s is not None:
                self._next_watchdog = time.monotonic()

    def _status(self, text: str) -> None:
        if self.notifier is not None:
            self.notifier.status(text)

    def _stats_source(self, cache: shmkv.Cache) -> Callable[[], dict[str, object]]:
        """cache.stats, plus a replica's lag (for the metrics' scrapes, on their thread)."""
        def stats() -> dict[str, object]:
            found = cache.stats()
            state = self._replication()
            if state is not None:
                found.update({f"replication_{key}": state[key] for key in _EXPORTED
                              if key in state})
            return found
        return stats

    def _replication(self) -> dict[str, object] | None:
        return self.roles.state() if self.roles is not None else None

    def _open_region(self, roles: Roles) -> shmkv.Cache:
        """The region, as the node's role says: a replica's copy, or its own (under etcd,
        the election decides first whether it copies the primary's)."""
        if self.config.etcd:
            from .failover import Failover  # etcd3gw: an optional extra
            self.failover = Failover(self.config, roles, self._emit)
            leader = self.failover.start()
            if leader:
                return roles.open_replica(leader)
        elif self.config.replica_of:
            return roles.open_replica(self.config.replica_of)
        return open_or_restore(self.config, self.notifier, self._emit)

    def _notify_alive(self) -> None:
        """Called by the loop every watchdog interval: it is alive and not stuck (and so are
        its workers, if it has any)."""
        if self.notifier is not None and (self.workers is None or self.workers.alive()):
            self.notifier.watchdog()

    def _notify_stopping(self) -> None:
        if self.notifier is not None:
            self.notifier.stopping("stopping")

    def _open_door(self, requests: shmkv.Cache) -> RespDoor | None:
        """The Redis-protocol door, if configured: on the requests' handle, which waits only
        a moment for a lock, parking what finds one busy in the same queue (waits.py)."""
        address = resp_address(self.config)
        if address is None or self.workers is not None:  # the workers serve it
            return None
        self._resp_door = RespDoor(requests, self.config, *address, self._waits,
                              requirepass=self.config.requirepass)
        self._resp_door.ctx.replication = self._written.source  # WAIT counts its replicas
        return self._resp_door

    def _start_metrics(self, cache: shmkv.Cache) -> str | None:
        """Serve the Prometheus endpoint, if configured; returns "host:port" bound."""
        address = metrics_address(self.config)
        if address is None:
            return None
        self.metrics = Metrics(self._stats_source(cache))
        try:
            port = self.metrics.start_http(*address)
        except OSError as exc:
            raise ShmKVError(f"cannot serve metrics on {self.config.metrics_bind!r}: "
                             f"{exc.strerror}; give another address with --metrics-bind, "
                             "or turn it off with --metrics-bind off") from None
        return f"{address[0]}:{port}"

    def _emit(self, event: str, **fields: object) -> None:
        self.out.write(json.dumps({"event": event, **fields}) + "\n")
        self.out.flush()


# replication state (Replica.state(), Source.state()) that the metrics export
_EXPORTED = ("stripes_behind", "changes_behind", "last_sync_age_s", "replicas", "full_resyncs",
             "partial_resyncs", "epoch_refusals", "stripes_hinted", "stripes_compared")
