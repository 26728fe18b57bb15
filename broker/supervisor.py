"""`shmkv serve --workers N`: N worker processes serve one region; the node supervises them.

The region is shared memory and every Cache handle locks what it changes, so N processes can
serve the same data with no lock in the node and no partitioning. What must happen once per
region stays in the node, the supervisor (server.py's _Node with `workers` set): maintenance,
persistence (flush thread, snapshots), replication, forwarding the rings' events to the
publish socket, the metrics endpoint, and talking to systemd. The workers (worker.py) only
serve requests. `--workers 1` is the single-process node, with no supervisor; the default is
one worker per CPU the node may run on.

    supervisor (the node's pid; stdout events, NOTIFY_SOCKET, XPUB, metrics, persistence)
      |-- link (AF_UNIX SOCK_SEQPACKET, pass_fds) --> worker 0: ROUTER on --bind
      |                                                         and ipc <dir>/<region>.sock
      |-- link --> worker 1: ROUTER on the host of --bind, port * (ipc <dir>/<region>.1.sock)
      ...              every worker: accept() on the one RESP listening socket (pass_fds)

Processes. Workers are started with subprocess (`python -P -m shmkv.broker.worker`), never
fork(): a forked copy of a process that holds a ZeroMQ context and region handles inherits
their threads' state half-way. Each worker opens the region itself. The supervisor starts
them all before it reports ready (stdout "ready", systemd READY=1), so that READY means every
worker serves.

ZeroMQ: one endpoint per worker, no extra hop. A ROUTER/DEALER device in front would add a
hop and a process to every request (the round trip the node is measured by), so each worker
binds its own: worker 0 the configured endpoint, the others the same host on an ephemeral port
(not port + i: that would collide with --pub-bind's default), and each its own ipc:// socket.
A restarted worker binds the same endpoints again, so clients' sockets reconnect to it. The
ping reply lists the workers (`"workers": [{"endpoint", "ipc_endpoint", "pid", "cpu"}, ...]`,
cpu being the one it is pinned to: broker/cpus.py); a
RemoteCache asks once, at its first call, and then sticks to one worker (the one the reply's
worker_hint names, each in turn: clients/workers.py): one worker answers one client's
requests in order, which is what a client relies on. Clients that never ask (a raw DEALER)
are served by worker 0.

RESP: the supervisor binds the listening socket once and passes it to every worker, which all
accept() on it (non-blocking: a worker that loses the race gets EAGAIN). Rather than
SO_REUSEPORT per worker: one accept queue, so a connection waiting to be accepted survives the
death of any worker (with SO_REUSEPORT the kernel drops the connections queued on a dead
worker's socket), port 0 is resolved once, and an idle worker accepts first (a busy one is not
polling), which spreads connections by load rather than by hash.

What each process does:

    supervisor                              worker
    maintenance, flush, snapshots           requests on its ROUTER (dispatch.py, waits.py)
    replication (Source or Replica)         RESP connections it accepted (resp_door.py)
    events -> XPUB (keyspace, publish)      events -> its own RESP subscribers only
    metrics endpoint: region stats, the     counts its requests; reports them every REPORT_S
      sum of the workers' request counts,
      worker restarts
    systemd: READY=1 once all serve,        nothing (NOTIFY_SOCKET is not passed on)
      WATCHDOG=1 only while every worker
      has reported within SILENT_S

A worker's events reach ZeroMQ subscribers through the supervisor's tail of the rings, every
EVENT_POLL_S: unlike the single-process node, a request's events may be published after its
reply has been sent. What Redis keeps server-wide for RESP connections lives in each worker's
door: INFO's counters, CLIENT ID/LIST, CONFIG SET notify-keyspace-events (channel messages
and keyspace events themselves go through the region, so every worker's subscribers get all).

Failures. A worker that exits (crash, SIGKILL, OOM) is counted (stderr "worker_exited", the
ping's worker_restarts, metric shmkv_worker_restarts_total) and started again after a backoff
that doubles with each death within STABLE_S of its start (RESTART_S up to MAX_RESTART_S), so
a crash loop does not spin. What it had acknowledged is in the region (a reply is sent after
the write); requests it had received and not answered are lost with it, and their clients'
retries (RemoteCache's Lazy Pirate) reach the restarted worker. SIGTERM/SIGINT to the
supervisor: it stops its loop, sends SIGTERM to every worker, waits for them to answer what
they received and exit (SIGKILL after STOP_TIMEOUT_S), then does the single-process node's
final flush, snapshot and event forwarding. The supervisor killed outright: the kernel kills
each worker (PR_SET_PDEATHSIG, SIGKILL), so that the node, killed, acknowledges nothing more,
as a single process would not; a worker whose link reads end-of-file stops as after SIGTERM.

The link carries JSON objects, one per datagram, each with a "kind":

    kind     from        fields
    start    supervisor  version (LINK_VERSION), parent (pid), index, config (NodeConfig as
                         a dict), bind, ipc (endpoint or null), cpu (the worker's, or
                         null: broker/cpus.py), resp_fd (fd or null)
    ready    worker      pid, endpoint (as bound), ipc_endpoint
    about    supervisor  about: what the worker's ping adds (workers, worker_restarts)
    replicas supervisor  applied: [[offset, time.monotonic()], ...] of the primary's replicas
                         after each of their reports, or null (no Source): for WAIT and
                         --min-replicas-to-write, in both doors
    counts   worker      families: [[name, help, type, [[sample, labels, value], ...]], ...]

The settings go over the link rather than on the command line, where any user could read
requirepass in /proc/PID/cmdline.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import zmq
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shmkv.errors import ConfigError, ShmKVError

from . import cpus, ipc
from .config import NodeConfig, resp_address, worker_count
from .metrics import Metrics
from .replication import Stopped
from .server import Notifier, _Node
from .server import serve as serve_alone
from .signals import StopSignals, held

LINK_VERSION = 1
LINK_MESSAGE_BYTES = 1 << 20
# Restart backoff: RESTART_S after a death, doubled for each death within STABLE_S of the
# worker's start, up to MAX_RESTART_S.
RESTART_S = 0.1
MAX_RESTART_S = 10.0
STABLE_S = 10.0
# How long all workers have to start (open the region, bind) before the node gives up.
START_TIMEOUT_S = 60.0
# How long stopping workers have to answer what they received and exit before SIGKILL.
STOP_TIMEOUT_S = 10.0
# A worker that has not reported for this long is not counted alive by the watchdog (it
# reports every worker.REPORT_S, 0.5 s).
SILENT_S = 5.0
# The environment a worker must not inherit: systemd's, which only the supervisor may use.
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                     "LISTEN_PID", "LISTEN_FDNAMES")


def serve(config: NodeConfig, out: TextIO = sys.stdout, *,
          notifier: Notifier | None = None) -> int:
    """Run the node with its workers (the single-process node for --workers 1) until
    SIGTERM/SIGINT; returns the process exit status."""
    count = worker_count(config)
    if count == 1:
        if config.cpu_affinity not in (cpus.AUTO, cpus.OFF):  # a list: the whole node on it
            cpus.pin_process(cpus.chosen(config.cpu_affinity))  # type: ignore[arg-type]
        return serve_alone(config, out, notifier=notifier)
    node = _Node(config, out, notifier)
    node.workers = WorkerPool(config, count)
    try:
        return node.run()
    except Stopped:
        return 0


@dataclass
class _Slot:
    """One worker's place: the endpoints it keeps across restarts, and its current process."""

    index: int
    bind: str
    ipc: str | None
    cpu: int | None  # the one it runs on (broker/cpus.py); None: any of the node's
    process: subprocess.Popen[bytes] | None = None
    link: socket.socket | None = None
    serving: bool = False  # it said ready
    started_s: float = 0.0
    heard_s: float = 0.0  # last message
    restart_at: float = math.inf  # while it has no process
    quick_deaths: int = 0  # deaths in a row within STABLE_S of the start
    counts: list[Any] = field(default_factory=list)  # its last report


class WorkerPool:
    """The workers of one node; the node's loop drives it through server.Workers."""

    def __init__(self, config: NodeConfig, count: int,
                 python: tuple[str, ...] = (sys.executable, "-P")) -> None:
        self.config = config
        self.python = python
        self.slots = [_Slot(i, *_endpoints(config, i), cpu)
                      for i, cpu in enumerate(cpus.worker_cpus(
                          config.cpu_affinity, count, resp_door=bool(config.resp_bind)))]
        self.restarts = 0
        self._relayed: tuple[int, int] | None = None  # (Source, its reports) last relayed
        self.stopping = False
        self.sums = WorkerCounts(self)
        self._poller: zmq.Poller | None = None
        self._resp: socket.socket | None = None
        self._resp_address: str | None = None
        self._lock = threading.Lock()  # the counts: reports here, scrapes on the HTTP thread
        self._retired: dict[tuple[Any, ...], float] = {}  # counts of workers that are gone
        self._families: dict[str, tuple[str, str]] = {}  # name -> (help, type)
        # The node's own requests (role, promote, replicaof: roles.py), which workers forward
        # over their link: the role lives here, where replication runs.
        self.node_ops: dict[str, Callable[[dict[str, Any]], Any]] = {}

    # --- server.Workers -------------------------------------------------------------------
    def start(self, stop: StopSignals, metrics: Metrics | None) -> dict[str, object]:
        """Start every worker and wait until each serves; the ready event's fields."""
        address = resp_address(self.config)
        if address is not None:
            host, port = address
            try:
                self._resp = socket.create_server((host, port), backlog=511,
                                                  family=socket.AF_INET6 if ":" in host
                                                  else socket.AF_INET)
            except OSError as exc:
                raise ShmKVError(f"cannot listen for the Redis protocol on {host}:{port}: "
                                 f"{exc.strerror}; give another address with --resp-bind") \
                    from None
            self._resp.setblocking(False)  # shared by the workers' accept() calls
            bound = self._resp.getsockname()[1]
            self._resp_address = f"{host}:{bound}" if ":" not in host else f"[{host}]:{bound}"
        if metrics is not None:  # the workers count the requests: serve their sum instead
            metrics.registry.unregister(metrics.requests)
            metrics.registry.register(self.sums)
        for slot in self.slots:
            self._spawn(slot)
        poller = zmq.Poller()
        poller.register(stop.wakeup_fd, zmq.POLLIN)
        for slot in self.slots:
            poller.register(slot.link.fileno(), zmq.POLLIN)  # type: ignore[union-attr]
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(slot.serving for slot in self.slots) and stop.received is None:
            left_ms = math.ceil((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise ShmKVError(f"the workers did not start within {START_TIMEOUT_S} s: "
                                 f"{sum(s.serving for s in self.slots)} of {len(self.slots)} "
                                 "serve")
            ready = dict(poller.poll(left_ms))
            if stop.wakeup_fd in ready:
                stop.drain()
            for slot in self.slots:
                if slot.link is not None and slot.link.fileno() in ready:
                    self._read(slot)
                if slot.process is None:  # it exited before it served: a setting it refused
                    raise ShmKVError(f"worker {slot.index} exited before it served (its "
                                     "error is above, on stderr)")
        self._tell_all()
        first = self.slots[0]
        return {"endpoint": first.bind, "ipc_endpoint": first.ipc, "resp": self._resp_address,
                "workers": self.about()["workers"]}

    def attach(self, poller: zmq.Poller) -> None:
        self._poller = poller
        for slot in self.slots:
            if slot.link is not None:
                poller.register(slot.link.fileno(), zmq.POLLIN)

    def due(self) -> float:
        return min(slot.restart_at for slot in self.slots)

    def service(self, ready: dict[Any, int]) -> None:
        for slot in self.slots:
            if slot.link is not None and slot.link.fileno() in ready:
                self._read(slot)
        now = time.monotonic()
        for slot in self.slots:
            if slot.process is None and now >= slot.restart_at and not self.stopping:
                try:
                    self._spawn(slot)
                except OSError as exc:  # out of processes or fds: the others serve on
                    slot.quick_deaths += 1
                    slot.restart_at = now + restart_delay_s(slot.quick_deaths)
                    print(json.dumps({"event": "worker_start_failed", "index": slot.index,
                                      "error": str(exc)}), file=sys.stderr, flush=True)

    def alive(self) -> bool:
        now = time.monotonic()
        return all(slot.serving and now - slot.heard_s < SILENT_S for slot in self.slots)

    def reload(self) -> None:
        """SIGHUP to the supervisor: each worker reads the CurveZMQ allow-list again (each
        runs the ZAP handler of its own sockets)."""
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        """SIGTERM every worker and wait for them to answer what they received and exit."""
        self.stopping = True
        for slot in self.slots:
            if slot.process is not None:
                slot.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for slot in self.slots:
            while slot.link is not None:  # until end-of-file: the last report comes first
                left_s = deadline - time.monotonic()
                if left_s <= 0 or not _readable(slot.link, left_s):
                    break
                self._read(slot)
        self.close()

    def close(self) -> None:
        """Kill what is still running (a failed start, a worker stuck past STOP_TIMEOUT_S)
        and release the sockets."""
        self.stopping = True
        for slot in self.slots:
            if slot.process is not None:
                if slot.process.poll() is None:
                    slot.process.kill()
                self._reap(slot, quiet=True)
            if slot.ipc and slot.index > 0:  # a killed worker leaves its socket file
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(slot.ipc.removeprefix("ipc://"))
        if self._resp is not None:
            self._resp.close()
            self._resp = None

    # --- what the workers are told and tell -------------------------------------------------
    def about(self) -> dict[str, Any]:
        """What each worker's ping adds."""
        return {"workers": [{"endpoint": s.bind, "ipc_endpoint": s.ipc,
                             "pid": s.process.pid if s.process is not None else None,
                             "cpu": s.cpu}
                            for s in self.slots],
                "worker_restarts": self.restarts}

    def relay_replicas(self, source: Any) -> None:
        """Tell the workers where the replicas are after each of their reports (WAIT and
        --min-replicas-to-write count on it in the workers' doors), or that the node serves
        none (source None)."""
        seen = (id(source), source.reports) if source is not None else None
        if seen == self._relayed:
            return
        self._relayed = seen
        message = {"kind": "replicas",
                   "applied": source.applied_positions() if source is not None else None}
        for slot in self.slots:
            if slot.serving:
                _send(slot.link, message)

    def _tell_all(self) -> None:
        self._relayed = (0, -1)  # a worker (re)started: relay the replicas to it too
        message = {"kind": "about", "about": self.about()}
        for slot in self.slots:
            if slot.serving:
                _send(slot.link, message)

    def _read(self, slot: _Slot) -> None:
        while slot.link is not None:
            try:
                data = slot.link.recv(LINK_MESSAGE_BYTES, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._reap(slot)
                return
            message = json.loads(data)
            slot.heard_s = time.monotonic()
            if message["kind"] == "counts":
                with self._lock:
                    slot.counts = message["families"]
            elif message["kind"] == "node_op":
                _send(slot.link, self._node_op(message["op"], message["fields"]))
            elif message["kind"] == "ready":
                slot.serving = True
                slot.bind = message["endpoint"]  # a port * is now a number: kept on restarts
                if self._poller is not None:  # a restart: the others learn the new count
                    self._tell_all()

    def _node_op(self, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Run a node request a worker forwarded; its result or error, for the worker."""
        try:
            return {"kind": "node_op_result", "ok": True, "result": self.node_ops[op](fields)}
        except (ShmKVError, KeyError, TypeError, ValueError) as exc:
            return {"kind": "node_op_result", "ok": False, "error": type(exc).__name__,
                    "message": str(exc)}

    def _spawn(self, slot: _Slot) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds = [theirs.fileno()] + ([self._resp.fileno()] if self._resp is not None else [])
        env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES}
        try:
            with held():
                slot.process = subprocess.Popen(
                    [*self.python, "-m", "shmkv.broker.worker", "--link-fd",
                     str(theirs.fileno())],
                    pass_fds=fds, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(), env=env)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        slot.link = ours
        slot.serving = False
        slot.started_s = slot.heard_s = time.monotonic()
        slot.restart_at = math.inf
        _send(ours, {"kind": "start", "version": LINK_VERSION, "parent": os.getpid(),
                     "index": slot.index, "config": asdict(self.config), "bind": slot.bind,
                     "ipc": slot.ipc, "cpu": slot.cpu,
                     "resp_fd": self._resp.fileno() if self._resp is not None else None})
        if self._poller is not None:
            self._poller.register(ours.fileno(), zmq.POLLIN)

    def _reap(self, slot: _Slot, quiet: bool = False) -> None:
        """The worker's link has closed: wait for its exit, retire its counts, and (unless
        the node is stopping) count the death and plan the restart."""
        process, link = slot.process, slot.link
        if link is not None:
            if self._poller is not None:
                self._poller.unregister(link.fileno())
            link.close()
        slot.link, slot.process, slot.serving = None, None, False
        if process is None:
            return
        try:
            status = process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # closed its link yet still runs: not a worker now
            process.kill()
            status = process.wait()
        with self._lock:
            self._retire(slot.counts)
            slot.counts = []
        if self.stopping or quiet:
            return
        self.restarts += 1
        lived_s = time.monotonic() - slot.started_s
        slot.quick_deaths = slot.quick_deaths + 1 if lived_s < STABLE_S else 0
        delay_s = restart_delay_s(slot.quick_deaths)
        slot.restart_at = time.monotonic() + delay_s
        print(json.dumps({"event": "worker_exited", "index": slot.index, "pid": process.pid,
                          "status": _status(status), "restart_in_s": delay_s,
                          "worker_restarts": self.restarts}), file=sys.stderr, flush=True)
        self._tell_all()

    # --- the sum of the workers' counts (under self._lock) ---------------------------------
    def _retire(self, families: list[Any]) -> None:
        for key, value in _samples(families, self._families):
            self._retired[key] = self._retired.get(key, 0.0) + value

    def totals(self) -> tuple[dict[tuple[Any, ...], float], dict[str, tuple[str, str]]]:
        """Every sample summed over the workers, those gone included, and the families."""
        with self._lock:
            summed = dict(self._retired)
            for slot in self.slots:
                for key, value in _samples(slot.counts, self._families):
                    summed[key] = summed.get(key, 0.0) + value
            return summed, dict(self._families)


def restart_delay_s(quick_deaths: int) -> float:
    """How long a dead worker waits before it is started again, after quick_deaths deaths
    in a row each within STABLE_S of its start (0: it had run for longer)."""
    return min(MAX_RESTART_S, RESTART_S * 2 ** max(0, quick_deaths - 1))


class WorkerCounts(Collector):
    """The metrics a node with workers serves in place of its own request counts: the sum
    of what its workers reported, and how many workers died."""

    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        summed, families = self._pool.totals()
        by_family: dict[str, list[tuple[tuple[Any, ...], float]]] = {}
        for key, value in summed.items():
            by_family.setdefault(key[0], []).append((key, value))
        for name, (text, kind) in families.items():
            family = Metric(name, text, kind)
            for (_, sample, labels), value in sorted(by_family.get(name, []),
                                                     key=lambda kv: _sample_order(kv[0])):
                family.add_sample(sample, dict(labels), value)
            yield family
        yield CounterMetricFamily("shmkv_worker_restarts",
                                  "Worker processes that exited and were started again",
                                  value=self._pool.restarts)
        yield GaugeMetricFamily("shmkv_workers", "Worker processes serving",
                                value=sum(s.serving for s in self._pool.slots))


def _samples(families: list[Any], known: dict[str, tuple[str, str]]
             ) -> Iterator[tuple[tuple[Any, ...], float]]:
    """((family, sample name, labels as a sorted tuple), value) of a worker's report; notes
    each family's help and type in known."""
    for name, text, kind, samples in families:
        known.setdefault(name, (text, kind))
        for sample, labels, value in samples:
            yield (name, sample, tuple(sorted(labels.items()))), float(value)


_SUFFIX_ORDER = {"_bucket": 0, "_count": 1, "_sum": 2}


def _sample_order(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """A histogram's samples by label set, then buckets by le, then _count and _sum: the
    order the text format expects."""
    _, sample, labels = key
    rest = tuple(item for item in labels if item[0] != "le")
    le = next((float(v) for k, v in labels if k == "le"), 0.0)
    suffix = next((rank for end, rank in _SUFFIX_ORDER.items() if sample.endswith(end)), 0)
    return rest, suffix, le, sample


def _endpoints(config: NodeConfig, index: int) -> tuple[str, str | None]:
    """(ZeroMQ endpoint, ipc:// endpoint or None) where worker index first binds."""
    transport, _, rest = config.bind.partition("://")
    if index == 0:
        bind = config.bind
    elif transport == "tcp":
        bind = f"tcp://{rest.rpartition(':')[0]}:*"
    elif transport == "ipc":
        bind = f"{config.bind}.{index}"
    else:
        raise ConfigError(f"--workers {config.workers}: each worker needs its own endpoint, "
                          f"made from --bind {config.bind!r}; give a tcp:// or ipc:// one, "
                          "or --workers 1")
    found = ipc.prepare(config.ipc_dir, config.region if index == 0 else
                        f"{config.region}.{index}")
    return bind, found and found.request


def _send(link: socket.socket | None, message: dict[str, Any]) -> None:
    if link is None:
        return
    try:
        link.send(json.dumps(message).encode())
    except OSError:  # the worker has gone; its end-of-file is read next
        pass


def _readable(sock: socket.socket, timeout_s: float) -> bool:
    poller = zmq.Poller()
    poller.register(sock.fileno(), zmq.POLLIN)
    return bool(poller.poll(max(1, math.ceil(timeout_s * 1000))))


def _status(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
