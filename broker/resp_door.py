"""The node's Redis-protocol door: a listening TCP socket and its client connections, served
from the node's one poll loop (server.py), non-blocking.

    listening socket readable -> accept every waiting connection (a Session each)
    a connection readable     -> read what is there, parse the complete requests (resp.py),
                                 run them in order (resp_commands.py), queue their replies,
                                 and write as much as the socket takes
    a connection writable     -> write more of what is queued; when nothing is left, the
                                 door stops asking the poller about writability
    events read from the rings -> channel messages and keyspace notifications for this
                                 door's subscribers (EventTee hands them over)

Each connection has its own input buffer (the parser's) and output buffer. A request that
breaks the protocol, or grows past the parser's limits, gets Redis's protocol error and the
connection is closed once that reply is written; nothing else is affected. A connection whose
queued output passes MAX_OUTPUT_BYTES (a client that sends requests or subscribes and never
reads) is closed at once: the node's memory is bounded by the number of connections times
that, not by what clients fail to read. Replies are queued in the order the requests came,
pipelined or not.

Context is what commands share (the Cache handles of the databases, the settings, the pub/sub
registry, the counters INFO shows); Session is one connection's state (database, protocol,
name, authentication, subscriptions).
"""

from __future__ import annotations

import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import zmq

import shmkv
from shmkv.errors import ShmKVError

from . import resp_server_commands  # noqa: F401  (adds its commands to the table)
from .resp import Encoder, Push, RequestParser
from .resp_commands import MAX_DB, execute
from .resp_glob import glob_matcher
from .resp_server_commands import Replies

if TYPE_CHECKING:
    from shmkv.events import Event

    from .config import NodeConfig

# A connection's queued replies past this are not going to be read soon: Redis's hard limit
# for pub/sub clients (client-output-buffer-limit pubsub 32mb).
MAX_OUTPUT_BYTES = 32 << 20
READ_BYTES = 256 << 10  # per recv(); up to READS_PER_WAKE of them per wake-up and connection
READS_PER_WAKE = 4
MAX_CLIENTS = 10_000  # Redis's maxclients
# notify-keyspace-events: the event kinds of the rings and the class letter that selects each
_EVENT_CLASS = {"set": "$", "del": "g", "expired": "x", "evicted": "e"}
_ALL_CLASSES = "g$lshzxetd"  # what "A" stands for
# The poll flags as plain ints: zmq's are enum members, whose & costs a call each (measured:
# 5% of the node's time under redis-benchmark).
POLLIN, POLLOUT, POLLERR = int(zmq.POLLIN), int(zmq.POLLOUT), int(zmq.POLLERR)


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
        self.waits_to_write = False  # registered for POLLOUT: output the socket did not take
        self.channels: set[bytes] = set()
        self.patterns: set[bytes] = set()
        self.authenticated = not ctx.requirepass
        self._ctx = ctx
        self.reset()

    def reset(self) -> None:
        self.db = 0
        self.cache = self._ctx.cache
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


class Context:
    """What every connection's commands share."""

    def __init__(self, cache: shmkv.Cache, config: NodeConfig, host: str, port: int,
                 requirepass: str) -> None:
        self.cache = cache
        self.config = config
        self.host, self.port = host, port
        self.requirepass = requirepass
        self.sessions: dict[int, Session] = {}  # fd -> session
        self.channels: dict[bytes, set[Session]] = {}
        self.patterns: dict[bytes, tuple[Callable[[bytes], bool], set[Session]]] = {}
        self.notify_flags = ""
        self._notify_classes = ""
        self._keyspace = self._keyevent = False
        self._dbs: dict[int, shmkv.Cache] = {}
        self._last_id = 0
        self.run_id = secrets.token_hex(20)
        self.started = time.monotonic()
        self.connections_received = self.commands_processed = self.rejected_connections = 0

    def next_id(self) -> int:
        self._last_id += 1
        return self._last_id

    @staticmethod
    def now_s() -> float:
        return time.time()  # EXPIREAT and PXAT are Unix times, as the engine's TTLs are

    def db(self, n: int, create: bool = True) -> shmkv.Cache | None:
        """The handle of database n (collection "db<n>"; 0 is the default collection)."""
        if n == 0:
            return self.cache
        handle = self._dbs.get(n)
        if handle is None and (create or f"db{n}" in self.cache.collections()):
            handle = self._dbs[n] = self.cache.collection(f"db{n}")
        return handle

    def reopen(self, n: int, stale: shmkv.Cache) -> shmkv.Cache:
        """Database n's handle after `stale` found its collection dropped."""
        if self._dbs.get(n) is stale:  # the first session to notice replaces it for all
            del self._dbs[n]
            stale.close()
        return self.db(n)  # type: ignore[return-value]  # create=True: never None

    def open_dbs(self) -> Iterable[tuple[int, shmkv.Cache]]:
        yield 0, self.cache
        for n in range(1, MAX_DB + 1):
            handle = self.db(n, create=False)
            if handle is not None:
                yield n, handle

    def close(self) -> None:
        for handle in self._dbs.values():
            handle.close()
        self._dbs.clear()

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


class RespDoor:
    """The listening socket and the connections; the node's loop calls attach() once, then
    service() with what each poll reported, and close() on the way out."""

    def __init__(self, cache: shmkv.Cache, config: NodeConfig, host: str, port: int,
                 requirepass: str = "", listener: socket.socket | None = None) -> None:
        """listener: a listening socket to accept on instead of binding host:port (the
        workers of a node share the one their supervisor bound: broker/supervisor.py)."""
        try:
            self.listener = listener or socket.create_server(
                (host, port), backlog=511, family=_family(host), reuse_port=False)
        except OSError as exc:
            raise ShmKVError(f"cannot listen for the Redis protocol on {host}:{port}: "
                             f"{exc.strerror}; give another address with --resp-bind") from None
        self.listener.setblocking(False)
        self.fd = self.listener.fileno()
        bound = self.listener.getsockname()
        self.address = f"{host}:{bound[1]}" if ":" not in host else f"[{host}]:{bound[1]}"
        self.ctx = Context(cache, config, host, bound[1], requirepass)
        self._poller: zmq.Poller | None = None
        self.pump: Callable[[], object] = lambda: None  # set by the node: read the rings

    @property
    def listening(self) -> bool:
        return self.ctx.listening

    def attach(self, poller: zmq.Poller) -> None:
        self._poller = poller
        poller.register(self.fd, POLLIN)

    def service(self, ready: dict[Any, int]) -> None:
        """Handle what the poll reported for the door's sockets (others are ignored)."""
        if self.fd in ready:
            self._accept()
        sessions = self.ctx.sessions
        for fd, flags in ready.items():
            s = sessions.get(fd) if type(fd) is int else None
            if s is None:
                continue
            if flags & POLLIN:
                self._read(s)
            if flags & POLLOUT and fd in sessions:
                self._write(s)
            if flags & POLLERR and fd in sessions:
                self._drop(s)

    def deliver_events(self, events: Iterable[Event]) -> None:
        if self.ctx.listening:
            self.ctx.deliver_events(events)
            for s in list(self.ctx.sessions.values()):
                if s.out:
                    self._write(s)

    def close(self) -> None:
        """Write what each connection has queued, as far as its socket takes it at once
        (replies to requests the node read are not dropped by a stop), then close all."""
        for s in list(self.ctx.sessions.values()):
            self._write(s, flush_only=True)
            self._drop(s)
        if self._poller is not None:
            self._poller.unregister(self.fd)
        self.listener.close()
        self.ctx.close()

    # --- connections ----------------------------------------------------------------------
    def _accept(self) -> None:
        ctx = self.ctx
        while True:
            try:
                sock, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the others are still served
                print(f"resp: accept failed: {exc}", file=sys.stderr, flush=True)
                return
            ctx.connections_received += 1
            if len(ctx.sessions) >= MAX_CLIENTS:
                ctx.rejected_connections += 1
                sock.close()
                continue
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s = Session(ctx, sock, f"{peer[0]}:{peer[1]}")
            ctx.sessions[s.fd] = s
            if self._poller is not None:
                self._poller.register(s.fd, POLLIN)

    def _read(self, s: Session) -> None:
        for _ in range(READS_PER_WAKE):
            try:
                data = s.sock.recv(READ_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(s)
                return
            if not data:  # the client closed its side
                self._drop(s)
                return
            if s.closing:
                continue  # a QUIT or a protocol error came before: the rest is not read
            requests = s.parser.parse(data)
            if requests or s.parser.error is not None:
                self._run(s, requests)
                if s.closing or self.ctx.sessions.get(s.fd) is not s:
                    return
            if len(data) < READ_BYTES:
                break
        if s.closing:
            self._write(s)

    def _run(self, s: Session, requests: list[list[bytes]]) -> None:
        broken = s.parser.error
        ctx, encode, out = self.ctx, s.encoder._add, []
        queued, counted = len(s.out), 0
        for args in requests:
            reply = execute(ctx, s, args)
            if type(reply) is Replies:
                for one in reply:
                    encode(one, out)
            else:
                encode(reply, out)
            if s.closing:
                break
            # Counted as it grows: one read can hold thousands of GETs of a large value,
            # whose replies must not all be made before the cap is looked at.
            for part in out[counted:]:
                queued += len(part)
            counted = len(out)
            if queued > MAX_OUTPUT_BYTES:
                self._cut_off(s, queued)
                return
        if broken is not None:
            out.append(b"-ERR " + str(broken).encode("utf-8", "replace") + b"\r\n")
            s.closing = True
        if out:
            s.out += b"".join(out)
        if self.ctx.listening:
            self.pump()  # this batch's messages reach subscribers before the replies are read
        self._write(s)

    def _write(self, s: Session, flush_only: bool = False) -> None:
        out = s.out
        while out:
            try:
                sent = s.sock.send(out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(s)
                return
            del out[:sent]
        if flush_only:
            return
        if not out and s.closing:
            self._drop(s)
        elif len(out) > MAX_OUTPUT_BYTES:
            self._cut_off(s, len(out))
        elif self._poller is not None and bool(out) != s.waits_to_write \
                and s.fd in self.ctx.sessions:
            # ask about writability only while something waits: else poll would spin
            s.waits_to_write = bool(out)
            self._poller.register(s.fd, POLLIN | (POLLOUT if out else 0))

    def _cut_off(self, s: Session, queued: int) -> None:
        """A client that does not read what it asked for: closed, so the node stays bounded."""
        print(f"resp: closing client id={s.id} addr={s.peer}: {queued} bytes of replies "
              "unread", file=sys.stderr, flush=True)
        self._drop(s)

    def _drop(self, s: Session) -> None:
        if self.ctx.sessions.pop(s.fd, None) is None:
            return
        for name in list(s.channels):
            self.ctx.unsubscribe(s, name, False)
        for name in list(s.patterns):
            self.ctx.unsubscribe(s, name, True)
        if self._poller is not None:
            self._poller.unregister(s.fd)
        s.out.clear()
        s.sock.close()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


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

    @property
    def lost(self) -> int:
        return self._source.lost  # type: ignore[no-any-return]


__all__ = ["Context", "EventTee", "MAX_OUTPUT_BYTES", "RespDoor", "Session"]
