"""One worker of a node started with --workers N (N > 1): a process that serves requests on
its own ZeroMQ endpoint, and Redis-protocol connections accepted on the listening socket it
shares with its siblings, and does nothing else. Its supervisor (supervisor.py, where the
design is) starts it as `python -P -m shmkv.broker.worker --link-fd FD` and tells it the rest
over that link: which region, which endpoints, which settings.

    poll(ROUTER, the RESP door, the link, signal wake-up socket; until a parked request's
         retry, the next report to the supervisor, or EVENT_POLL_S while a RESP client
         subscribes)
      requests waiting    -> answered as the single-process node answers them (zmq_door.py,
                             dispatch.py, waits.py)
      RESP door           -> as in the single-process node (resp_door.py)
      link readable       -> what ping tells (the workers' endpoints), the replicas'
                             positions (WAIT, --min-replicas-to-write), or the supervisor
                             has gone: stop
      report due          -> the request counters, to the supervisor (it serves their sum)
      stop signal         -> leave the loop, answer what was received, report, close

It never maintains the region, persists it, replicates it, or forwards events to the publish
socket: the supervisor does that once for all. Its RESP door reads the event rings itself, for
the door's own subscribers only. If the supervisor dies, the kernel kills the worker
(PR_SET_PDEATHSIG, SIGKILL: the node died, so it acknowledges nothing more); where that is
not available, its link reads end-of-file and it stops as after a SIGTERM.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

import shmkv
from shmkv.errors import ShmKVError
from shmkv.events import EventReader

from . import compiled_door, cpus, protocol
from .auth import CurveServer
from .config import NodeConfig
from .dispatch import Dispatcher
from .metrics import Metrics
from .repl_source import RelayedReplicas, WrittenOffsets
from .resp_context import EventTee
from .resp_door import RespDoor
from .router import RECEIVE_HWM, SEND_HWM, bind
from .server import EVENT_POLL_S, STOP_LINGER_MS, _Node
from .signals import StopSignals
from .waits import TRY_LOCK_S

# How often a worker sends its request counters to the supervisor: how far behind the sum a
# scrape may be, and what a worker killed with SIGKILL takes with it (its supervisor has the
# last report). Each report is ~1 ms of a worker's time for a few hundred samples.
REPORT_S = 0.5
# The metric families whose samples a worker reports (its own Metrics counts them).
REPORTED = ("shmkv_requests", "shmkv_request_duration_seconds")
LINK_MESSAGE_BYTES = 1 << 20  # the largest link message (a report is ~30 KB)
# The node's own requests, which a worker forwards to its supervisor (roles.py), and how long
# it waits for the answer (a promotion may wait for a primary's first reply: roles.py).
NODE_OPS = ("role", "promote", "replicaof")
NODE_OP_TIMEOUT_S = 30.0
_PR_SET_PDEATHSIG = 1  # prctl(2)


class _NoPublisher:
    """What server.py's _send asks of a publisher, for a worker that publishes nothing: its
    requests' events reach subscribers through the supervisor, which tails the rings."""

    listening = False

    def pump(self, events: Any) -> bool:
        return False


class Worker(_Node):
    """The serving half of _Node, fed by a supervisor instead of a command line."""

    def __init__(self, link: socket.socket, start: dict[str, Any]) -> None:
        config = NodeConfig(**start["config"])
        super().__init__(config, sys.stderr, None)
        self.link = link
        self.index: int = start["index"]
        self.bind: str = start["bind"]
        self.ipc: str | None = start.get("ipc")
        self.resp_fd: int | None = start.get("resp_fd")
        self.cpu: int | None = start.get("cpu")
        self.orphaned = False  # the link read end-of-file: the supervisor has gone
        self.metrics = Metrics()  # counts requests; the supervisor serves the sum
        self._dispatcher: Dispatcher | None = None
        self._about: dict[str, Any] = {}
        # what WAIT and --min-replicas-to-write count on (relayed by the supervisor)
        self._replicas: RelayedReplicas | None = None
        self._resp: RespDoor | None = None

    def run(self) -> int:
        if self.cpu is not None:  # before the context: its I/O thread shares the CPU (cpus.py)
            refused = cpus.try_pin_process([self.cpu])
            if refused is not None:
                print(json.dumps({"event": "worker_unpinned", "index": self.index,
                                  "message": refused}), file=sys.stderr, flush=True)
        with StopSignals() as stop:
            context = zmq.Context()
            router = context.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 0)
            router.setsockopt(zmq.SNDHWM, SEND_HWM)
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            router.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
            curve: CurveServer | None = None
            requests = cache = None
            door: RespDoor | None = None
            try:
                if self.config.curve_secret_key or self.config.curve_allow:
                    curve = CurveServer(context, self.config.curve_secret_key,
                                        self.config.curve_allow)
                    curve.secure(router)
                    self._curve = curve  # SIGHUP reloads its allow-list (_reload)
                owner = self.config.region_owner or None
                requests = shmkv.Cache.open(self.config.region, lock_timeout_s=TRY_LOCK_S,
                                            owner=owner)
                self._requests = requests
                limits = protocol.limits_for(int(requests.stats()["arena_bytes"]))
                self._compiled = compiled_door.plain_gets(requests, router, self._zero_copy,
                                                          self.metrics,
                                                          limits["max_reply_bytes"])
                router.setsockopt(zmq.MAXMSGSIZE, limits["max_message_bytes"])
                self.endpoint = bind(router, self.bind)
                if self.ipc:
                    bind(router, self.ipc)
                dispatcher = self._dispatcher = Dispatcher(requests, limits)
                dispatcher.about = self._about
                dispatcher.node_ops = {op: self._forward(op) for op in NODE_OPS}
                dispatcher.min_replicas = (self.config.min_replicas_to_write,
                                           self.config.min_replicas_max_lag_s)
                # what WAIT and --min-replicas-to-write count on, in both doors
                self._replicas = RelayedReplicas(requests)
                reader: EventReader | None = None
                if self.resp_fd is not None:
                    cache = shmkv.Cache.open(self.config.region, owner=owner)  # its events
                    # on the requests' handle: it parks what finds a lock busy (waits.py)
                    door = self._resp = self._door(requests)
                    reader = EventReader(cache)
                    door.pump = EventTee(reader, door).poll
                self._tell({"kind": "ready", "pid": os.getpid(), "endpoint": self.endpoint,
                            "ipc_endpoint": self.ipc})
                self._serve(router, dispatcher, stop, door, reader)
                router.setsockopt(zmq.LINGER, STOP_LINGER_MS)  # deliver the last replies
            finally:
                if door is not None:
                    door.close()
                self._compiled = None  # it uses the socket
                router.close()
                if curve is not None:
                    curve.stop()
                if requests is not None:
                    requests.close()
                if cache is not None:
                    cache.close()
                context.destroy(linger=0)
                self._zero_copy.close()  # libzmq has let go of every value lent
                self._report()  # the counts up to the end (the link may be gone: ignored)
        return 0

    def _door(self, cache: shmkv.Cache) -> RespDoor:
        listener = socket.socket(fileno=self.resp_fd)
        host, port = listener.getsockname()[:2]
        return RespDoor(cache, self.config, host, port, self._waits,
                        requirepass=self.config.requirepass, listener=listener)

    def _serve(self, router: zmq.Socket, dispatcher: Dispatcher, stop: StopSignals,
               door: RespDoor | None, events: EventReader | None) -> None:
        poller = zmq.Poller()
        if door is not None:
            door.attach(poller)
        poller.register(router, zmq.POLLIN)
        poller.register(stop.wakeup_fd, zmq.POLLIN)
        link_fd = self.link.fileno()  # the link is never replaced
        poller.register(link_fd, zmq.POLLIN)
        no_publisher: Any = _NoPublisher()
        waits = self._waits
        next_report = time.monotonic() + REPORT_S
        next_events = time.monotonic() + EVENT_POLL_S
        while stop.received is None and not self.orphaned:
            wake_at = min(next_report, waits.due(), next_events if events is not None else math.inf)
            if door is not None:
                wake_at = min(wake_at, door.due())  # TLS handshakes' deadlines
            ready = self._poll(poller, stop, wake_at, router, dispatcher, no_publisher,
                               None)  # type: ignore[arg-type]
            if stop.take_reload():
                self._reload()
            if link_fd in ready:
                self._listen()
            if router in ready:
                self._answer_waiting(router, dispatcher, no_publisher,
                                     None)  # type: ignore[arg-type]
            if waits.queue and time.monotonic() >= waits.due():
                waits.retry()  # both doors' parked requests: each is answered by its door
            if door is not None:
                door.service(ready)
            now = time.monotonic()
            if door is not None and events is not None and now >= next_events:
                # move past them even while nobody subscribes: a new subscriber gets no backlog
                if door.listening or events.skip() is None:
                    door.pump()
                next_events = now + EVENT_POLL_S
            if now >= next_report:
                self._report()
                self._zero_copy.drain()  # sends done though no get came (zerocopy.py)
                next_report = now + REPORT_S
        # A received request is answered before the worker stops, if only with LockTimeout
        # (expire_all tries each once more first: a lock may have been freed since the last
        # retry). An answer may run its RESP connection's next commands, which may wait too.
        while waits.expire_all():
            pass

    # --- the link to the supervisor -------------------------------------------------------
    def _listen(self, until: str | None = None) -> dict[str, Any] | None:
        """Read what the supervisor sent (end-of-file means it has gone); the first message
        of kind `until`, if one came."""
        while True:
            try:
                data = self.link.recv(LINK_MESSAGE_BYTES, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return None
            except OSError:
                data = b""
            if not data:
                self.orphaned = True
                return None
            message = json.loads(data)
            if message.get("kind") == "about":
                self._about.clear()
                self._about.update(message["about"])
            elif message.get("kind") == "replicas":
                self._relayed(message["applied"])
            elif until is not None and message.get("kind") == until:
                return message  # type: ignore[no-any-return]

    def _relayed(self, applied: list[list[float]] | None) -> None:
        """The replicas' positions the supervisor relayed (None: the node has no Source, it
        is no primary now). Both doors' WAIT and the min-replicas check count on them, as a
        single-process node's on its Source; the offsets noted after each client's writes
        are kept while the node stays a primary, started anew when it becomes one."""
        replicas = self._replicas
        if replicas is None or self._dispatcher is None:
            return
        if applied is not None:
            replicas.update(applied)
        found = replicas if applied is not None else None
        if self._written.source is not found:
            self._written = WrittenOffsets(found)
        self._dispatcher.replication = found
        if self._resp is not None:
            self._resp.ctx.replication = found

    def _forward(self, op: str) -> Callable[[dict[str, Any]], Any]:
        """A node request (the role, promote, replicaof), run by the supervisor, where the
        role lives: asked over the link, the worker waiting for the answer (rare requests)."""
        def ask(fields: dict[str, Any]) -> Any:
            self._tell({"kind": "node_op", "op": op, "fields": fields})
            deadline = time.monotonic() + NODE_OP_TIMEOUT_S
            while not self.orphaned:
                left_s = deadline - time.monotonic()
                if left_s <= 0 or not select.select([self.link], [], [], left_s)[0]:
                    break
                answer = self._listen(until="node_op_result")
                if answer is not None:
                    if answer["ok"]:
                        return answer["result"]
                    raise protocol.exception_from(protocol.Reply(
                        None, error=answer["error"], message=answer["message"]))
            raise ShmKVError(f"{op}: the node did not answer its worker within "
                             f"{NODE_OP_TIMEOUT_S:g} s")
        return ask

    def _tell(self, message: dict[str, Any]) -> None:
        try:
            self.link.send(json.dumps(message).encode())
        except OSError:  # the supervisor has gone; the loop notices at its next read
            self.orphaned = True

    def _report(self) -> None:
        if self.metrics is None or self.orphaned:
            return
        families = [[m.name, m.documentation, m.type,
                     [[s.name, s.labels, s.value] for s in m.samples
                      if not s.name.endswith("_created")]]
                    for m in self.metrics.registry.collect() if m.name in REPORTED]
        self._tell({"kind": "counts", "families": families})


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL when the supervisor dies; if it died already, stop now. Not SIGTERM, which
    would have the worker answer what it received first: the node died, so its workers must
    acknowledge nothing more, as one process killed would not (a client's write then goes
    to the next primary instead of a region whose lease nobody renews any more)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the link's end-of-file still says so
        pass
    if os.getppid() != parent_pid:
        sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shmkv.broker.worker",
                                     description="A worker of `shmkv serve --workers N`; "
                                     "started by the node, not by hand.")
    parser.add_argument("--link-fd", type=int, required=True)
    args = parser.parse_args(argv)
    link = socket.socket(fileno=args.link_fd)
    start = json.loads(link.recv(LINK_MESSAGE_BYTES) or b"null")
    if not start:  # the supervisor went before it said what to do
        return 0
    _die_with_parent(start["parent"])
    try:
        return Worker(link, start).run()
    except shmkv.ShmKVError as exc:
        print(json.dumps({"event": "worker_failed", "index": start["index"],
                          "error": type(exc).__name__, "message": str(exc)}),
              file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
