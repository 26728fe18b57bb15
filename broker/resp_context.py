"""What every connection of the Redis-protocol door shares (resp_door.py): the Cache handles of
the databases, the settings, the pub/sub registry (channels, patterns, keyspace notifications)
and the counters INFO shows. No sockets here: a subscriber is a Session whose queue() takes
what it is sent.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import shmkv

from . import protocol
from .dispatch import Dispatcher
from .resp import Push
from .resp_commands import MAX_DB
from .resp_glob import glob_matcher

if TYPE_CHECKING:
    from shmkv.events import Event

    from .config import NodeConfig
    from .resp_door import Session

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
        self.dispatcher = Dispatcher(cache, protocol.limits_for(int(cache.stats()["arena_bytes"])))
        self.max_reply_bytes = self.dispatcher.max_reply_bytes
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
        self.last_lock_timeout = ""  # the engine's message of the last busy lock (BUSY)
        # The primary's replication Source (repl_source.py) while the node is one that serves
        # replicas, else None: WAIT counts its replicas (server.py sets it)
        self.replication: Any = None

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
