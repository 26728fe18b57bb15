"""What every connection of the Redis-protocol door shares (resp_door.py): the executor of the
request model (a dispatch.Dispatcher over the node's handle, which keeps the handles of the
databases' collections), the settings, the pub/sub registry (channels, patterns, keyspace
notifications) and the counters INFO shows. No sockets here: a subscriber is a Session whose
queue() takes what it is sent. Session is one connection's state (database, protocol, name,
authentication, subscriptions, buffers); EventTee hands the door the events the node's
publisher reads.
"""

from __future__ import annotations

import secrets
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import shmkv

from . import protocol
from .dispatch import Dispatcher
from .protocol import Request
from .resp import Encoder, Push, RequestParser
from .resp_commands import MAX_DB
from .resp_glob import glob_matcher

if TYPE_CHECKING:
    from shmkv.events import Event

    from .config import NodeConfig
    from .resp_door import CommandJob, RespDoor
    from .resp_lane import ReadLane
    from .resp_server_commands import WaitFor

# notify-keyspace-events: the event kinds of the rings and the class letter that selects each
_EVENT_CLASS = {"set": "$", "del": "g", "expired": "x", "evicted": "e"}
_ALL_CLASSES = "g$lshzxetd"  # what "A" stands for


class Context:
    """What every connection's commands share."""

    def __init__(self, cache: shmkv.Cache, config: NodeConfig, host: str, port: int,
                 requirepass: str) -> None:
        self.cache = cache
        # The executor of the request model (dispatch.py): every command that touches the
        # region runs as its operations, as the ZeroMQ door's requests do.
        self.dispatcher = Dispatcher(cache,
                                     protocol.limits_for(int(cache.stats()["arena_bytes"])))
        self.max_reply_bytes = self.dispatcher.max_reply_bytes
        # The requests of the hottest commands (GET, plain SET, INCR and its kin), filled anew
        # by each: making one per command cost 165 ns of the 700 a GET takes in the node
        # (measured on the project's VM). Safe because the door runs one command at a time and
        # the executor keeps no request after run() returns.
        self.hot = {op: Request(0, op, "", {}, (), self.max_reply_bytes)
                    for op in ("get", "set", "incr")}
        # The compiled handles _core.resp_serve answers the plainest GET, SET, INCR, DECR, MGET
        # on (resp_door.py), or None: the pure-Python engine, or writes that must first count
        # the replicas in sync (--min-replicas-to-write), which only the executor does.
        self.compiled = cache.compiled_pair() if not config.min_replicas_to_write else None
        self.config = config
        self.host, self.port = host, port
        self.requirepass = requirepass
        self.sessions: dict[int, Session] = {}  # fd -> session
        self.channels: dict[bytes, set[Session]] = {}
        self.patterns: dict[bytes, tuple[Callable[[bytes], bool], set[Session]]] = {}
        self.notify_flags = ""
        self._notify_classes = ""
        self._keyspace = self._keyevent = False
        self._last_id = 0
        self.run_id = secrets.token_hex(20)
        self.started = time.monotonic()
        self.connections_received = self.commands_processed = self.rejected_connections = 0
        self.lane: ReadLane | None = None  # the door's read lane, which counts its own commands
        self.last_lock_timeout = ""  # the engine's message of the last busy lock (BUSY)
        # --min-replicas-to-write: the executor refuses writes while too few replicas are in
        # sync (NotEnoughReplicas, answered as Redis's NOREPLICAS), as in the ZeroMQ door
        self.dispatcher.min_replicas = (config.min_replicas_to_write,
                                        config.min_replicas_max_lag_s)

    @property
    def replication(self) -> Any:
        """The primary's replication Source (repl_source.py; with workers, the positions the
        supervisor relays) while the node serves replicas, else None: WAIT counts its replicas
        and the executor checks --min-replicas-to-write on it (server.py, worker.py set it)."""
        return self.dispatcher.replication

    @replication.setter
    def replication(self, source: Any) -> None:
        self.dispatcher.replication = source

    def next_id(self) -> int:
        self._last_id += 1
        return self._last_id

    @staticmethod
    def now_s() -> float:
        return time.time()  # EXPIREAT and PXAT are Unix times, as the engine's TTLs are

    def databases(self) -> list[tuple[int, str]]:
        """The databases there are (db 0 always; db n once SELECTed), with their
        collections' names, from the request model's list of collections."""
        names = self.dispatcher.run(Request(0, "collections", "", {}, (), None))[0]
        found = sorted((n, name) for name in names if (n := _db_of(name)))
        return [(0, ""), *found]

    def close(self) -> None:
        self.dispatcher.close()  # the handles of the databases' collections are its

    # --- pub/sub ------------------------------------------------------------------------
    def set_notify_flags(self, flags: str) -> None:
        if any(c not in "KEAmn" + _ALL_CLASSES for c in flags):
            raise ValueError(flags)
        wanted = set(flags.replace("A", _ALL_CLASSES))
        classes = "".join(c for c in _ALL_CLASSES if c in wanted)
        # without K or E nothing is sent, whatever the classes (as in Redis)
        self._keyspace, self._keyevent = "K" in flags, "E" in flags
        self._notify_classes = classes if (self._keyspace or self._keyevent) else ""
        # how Redis shows them back (keyspaceEventsFlagsToString)
        # m (key misses) and n (new keys) are accepted; the rings have no such events
        self.notify_flags = ("A" if classes == _ALL_CLASSES else classes) + \
            ("K" if self._keyspace else "") + ("E" if self._keyevent else "") + \
            "".join(c for c in "mn" if c in flags)

    @property
    def listening(self) -> bool:
        """True while some connection is subscribed to something."""
        return bool(self.channels or self.patterns)

    def subscribe(self, s: Session, name: bytes, pattern: bool) -> None:
        if pattern:
            self.patterns.setdefault(name, (glob_matcher(name), set()))[1].add(s)
            s.patterns.add(name)
        else:
            self.channels.setdefault(name, set()).add(s)
            s.channels.add(name)

    def unsubscribe(self, s: Session, name: bytes, pattern: bool) -> None:
        if pattern:
            s.patterns.discard(name)
            entry = self.patterns.get(name)
            if entry is not None:
                entry[1].discard(s)
                if not entry[1]:
                    del self.patterns[name]
        else:
            s.channels.discard(name)
            members = self.channels.get(name)
            if members is not None:
                members.discard(s)
                if not members:
                    del self.channels[name]

    def receivers(self, channel: bytes) -> int:
        count = len(self.channels.get(channel, ()))
        return count + sum(len(members) for match, members in self.patterns.values()
                           if match(channel))

    def deliver(self, channel: bytes, message: bytes) -> None:
        for s in self.channels.get(channel, ()):
            s.queue(Push([b"message", channel, message]))
        for pattern, (match, members) in self.patterns.items():
            if members and match(channel):
                for s in members:
                    s.queue(Push([b"pmessage", pattern, channel, message]))

    def deliver_events(self, events: Iterable[Event]) -> None:
        """Channel messages and, as notify-keyspace-events asks, keyspace notifications."""
        classes = self._notify_classes
        for event in events:
            if event.kind == "message":
                self.deliver(event.key, event.data)
                continue
            if not classes or _EVENT_CLASS.get(event.kind, "?") not in classes:
                continue
            db = _db_of(event.collection)
            if db is None:
                continue
            kind = event.kind.encode()
            if self._keyspace:
                self.deliver(b"__keyspace@%d__:" % db + event.key, kind)
            if self._keyevent:
                self.deliver(b"__keyevent@%d__:" % db + kind, event.key)


def _db_of(collection: str) -> int | None:
    if not collection:
        return 0
    if collection.startswith("db") and collection[2:].isdigit():
        n = int(collection[2:])
        return n if 0 < n <= MAX_DB and collection == f"db{n}" else None
    return None


class Session:
    """One client connection's state."""

    def __init__(self, ctx: Context, sock: socket.socket, peer: str) -> None:
        self.id = ctx.next_id()
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.parser = RequestParser()
        self.out = bytearray()
        self.encoder = Encoder(2)
        self.closing = False  # close once the queued output is written
        self.channels: set[bytes] = set()
        self.patterns: set[bytes] = set()
        self.authenticated = not ctx.requirepass
        self.pending: list[list[bytes]] = []  # requests read after the parked one
        # the request waiting for a lock, or a WAIT for its replicas, if any
        self.parked: CommandJob | WaitFor | None = None
        self.wrote = False  # a write since the last WAIT took the offset to wait for
        self.write_offset = 0  # the primary's offset the last WAIT took
        self.broken: Exception | None = None  # the protocol error after the pending ones
        self.poll_flags = 0  # what the poller is asked about this connection
        self.tls = isinstance(sock, ssl.SSLSocket)
        self.handshake_deadline_s: float | None = None  # while a TLS handshake is under way
        self.handshake_wants = ""  # resp_tls.WANT_READ or WANT_WRITE, during it
        self.read_wants_write = False  # a TLS read stopped until the socket takes a write
        # the largest reply queued since the output was last empty: the output may be that
        # much more than MAX_OUTPUT_BYTES (one large value is served whole)
        self.allowance = 0
        self.in_lane = False  # served by the read lane (resp_lane.py) until handed back
        self.lane_reads = 0  # reads in a row the compiled path answered whole, writing nothing
        self._ctx = ctx
        self.reset()

    def reset(self) -> None:
        self.db = 0
        self.coll = ""  # the collection of the database: "" for db 0, "db<n>" for db n
        self.name: bytes | None = None
        self.set_protocol(2)

    @property
    def resp3(self) -> bool:
        return self.encoder.resp3

    @property
    def subscribed(self) -> bool:
        return bool(self.channels or self.patterns)

    def set_protocol(self, version: int) -> None:
        self.encoder.resp3 = version == 3

    def queue(self, message: object) -> None:
        """Add an out-of-band message (pub/sub) to what the connection will be sent."""
        self.out += self.encoder.encode(message)


class EventTee:
    """An event source (shmkv.events.EventReader) whose events the door sees too: the node's
    publisher and the door share one reader of the rings."""

    def __init__(self, source: Any, door: RespDoor) -> None:
        self._source = source
        self._door = door

    def poll(self, max_events: int = 4096) -> list[Event]:
        events = self._source.poll(max_events)
        if events:
            self._door.deliver_events(events)
        return events  # type: ignore[no-any-return]

    def skip(self) -> int | None:
        return None if self._door.listening else self._source.skip()  # type: ignore[no-any-return]

    @property
    def lost(self) -> int:
        return self._source.lost  # type: ignore[no-any-return]
