"""`Subscriber`: channel messages and keyspace events from a node (`shmkv serve`), over ZeroMQ.

    from shmkv.clients import Subscriber
    with Subscriber("tcp://127.0.0.1:7371") as sub:       # the node's pub_endpoint
        sub.subscribe("news")                              # exactly this channel
        sub.psubscribe("user:*")                           # channels matching a glob
        sub.subscribe_keyspace("session:*", collection="web")   # set/del/expired/evicted
        for message in sub:                                # or sub.get_message(timeout_s=1.0)
            print(message.kind, message.channel, message.data)

Matching is split in two. ZeroMQ filters by prefix on the node's side, so each subscription
becomes the literal prefix of its topic (a pattern's text before its first `*`, `?` or `[`);
this client then keeps only what matches exactly (a channel) or by `fnmatch.fnmatchcase` (a
pattern: `*`, `?`, `[abc]`, `[!abc]`; unlike Redis, no backslash escapes). A message that
matches a channel and a pattern is delivered once for each, as Redis does.

Delivery is at most once. Subscriptions take effect some time after the call (ZeroMQ's "slow
joiner"): messages published meanwhile are not seen. A subscriber that falls behind by more
than its queue (rcv_hwm here, pub_hwm at the node, and the socket buffers between) loses
messages; `dropped` counts them, from the per-subscription numbers the node puts on each
message (the format is in broker/pubsub.py). It counts every lost message that matched the
ZeroMQ prefixes, which may include some that the exact match would have discarded anyway.

A node with CurveZMQ on (broker/auth.py) sends only to subscribers it admits:
Subscriber(url, curve_server_key="node.key", curve_client_cert="me.key_secret"). When the
node refuses the handshake (a key it does not allow, a wrong node key, or CURVE on one side
only), get_message raises RemoteUnavailable saying so, rather than waiting in silence.

A Subscriber is not thread-safe (a ZeroMQ socket belongs to one thread); after a fork, make a
new one in the child.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase

import zmq

from shmkv.broker import pubsub
from shmkv.broker.auth import CurveClient
from shmkv.broker.handshake import HandshakeWatch
from shmkv.errors import CacheClosed, RemoteUnavailable

DEFAULT_PUB_ENDPOINT = "tcp://127.0.0.1:7371"
DEFAULT_RCV_HWM = 10_000
_GLOB_CHARS = b"*?["


@dataclass(frozen=True, slots=True)
class Message:
    """One delivered message.

    kind       "message" (a channel subscription), "pmessage" (a pattern subscription), or
               the keyspace event: "set", "del", "expired", "evicted"
    channel    the channel; for a keyspace event, the key
    data       the message; for a keyspace event, the event name (b"set"), as Redis sends it
    pattern    the pattern that matched, for "pmessage" and keyspace events; else None
    seq        the node-wide number of the event (ordering and identity, not gap counting)
    collection the collection of a keyspace event; "" otherwise
    """

    kind: str
    channel: bytes
    data: bytes
    pattern: bytes | None = None
    seq: int = 0
    collection: str = ""


class Subscriber:
    """A SUB socket connected to a node's publish endpoint (its "ready" event's pub_endpoint).

    rcv_hwm is how many messages may wait here unread before ZeroMQ drops the rest; set it
    before anything arrives, so it is an argument rather than a method.
    """

    def __init__(self, pub_endpoint: str = DEFAULT_PUB_ENDPOINT, *,
                 rcv_hwm: int = DEFAULT_RCV_HWM, context: zmq.Context | None = None,
                 curve_server_key: str | os.PathLike[str] | None = None,
                 curve_client_cert: str | os.PathLike[str] | None = None) -> None:
        """curve_server_key and curve_client_cert: as for RemoteCache (clients/remote.py)."""
        if isinstance(rcv_hwm, bool) or not isinstance(rcv_hwm, int) or rcv_hwm < 0:
            raise ValueError("rcv_hwm must be an int >= 0 (0: no limit)")
        curve = CurveClient.from_files(curve_server_key, curve_client_cert)
        self.endpoint = pub_endpoint
        self._socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, rcv_hwm)  # before connect: it sizes the pipe
        if curve is not None:
            curve.secure(self._socket)
        self._watch = HandshakeWatch(self._socket)  # before connect: it sees every handshake
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._watch.monitor, zmq.POLLIN)  # a handshake's outcome wakes us
        try:
            self._socket.connect(pub_endpoint)
        except zmq.ZMQError as exc:
            self._watch.close()
            self._socket.close()
            raise ValueError(f"cannot connect to {pub_endpoint!r}: {exc.strerror} (an endpoint "
                             "looks like tcp://host:port or ipc:///path)") from None
        self._channels: set[bytes] = set()
        self._patterns: set[bytes] = set()
        self._keyspace: set[tuple[str, bytes]] = set()  # (collection, key pattern)
        self._prefixes: set[bytes] = set()  # what the socket is subscribed to
        self._last_n: dict[bytes, int] = {}  # prefix -> its number on the last message
        self._ready: deque[Message] = deque()
        self.dropped = 0
        self.closed = False

    # --- subscriptions ----------------------------------------------------------------------
    def subscribe(self, *channels: str | bytes) -> None:
        """Receive the messages published on these channels (kind "message")."""
        self._channels.update(map(_name, channels))
        self._update_prefixes()

    def psubscribe(self, *patterns: str | bytes) -> None:
        """Receive the messages of every channel that matches one of these globs ("pmessage")."""
        self._patterns.update(map(_name, patterns))
        self._update_prefixes()

    def subscribe_keyspace(self, pattern: str | bytes = "*", collection: str = "") -> None:
        """Receive keyspace events (set, del, expired, evicted) of the keys of collection ("":
        the default one) that match pattern, whichever process made them."""
        self._keyspace.add((_collection(collection), _name(pattern)))
        self._update_prefixes()

    def unsubscribe(self, *channels: str | bytes) -> None:
        """Stop receiving these channels; with no argument, every channel."""
        _remove(self._channels, channels)
        self._update_prefixes()

    def punsubscribe(self, *patterns: str | bytes) -> None:
        """Stop receiving these patterns; with no argument, every pattern."""
        _remove(self._patterns, patterns)
        self._update_prefixes()

    def unsubscribe_keyspace(self, pattern: str | bytes = "*", collection: str = "") -> None:
        self._keyspace.discard((_collection(collection), _name(pattern)))
        self._update_prefixes()

    def _update_prefixes(self) -> None:
        self._check_open()
        wanted = prefix_cover(
            [pubsub.channel_topic(c) for c in self._channels]
            + [pubsub.channel_topic(literal_prefix(p)) for p in self._patterns]
            + [pubsub.keyspace_prefix(c) + literal_prefix(p) for c, p in self._keyspace])
        # subscribe before unsubscribing, so that a message both cover is never missed
        for prefix in wanted - self._prefixes:
            self._socket.subscribe(prefix)
        for prefix in self._prefixes - wanted:
            self._socket.unsubscribe(prefix)
            self._last_n.pop(prefix, None)
        self._prefixes = wanted

    # --- receiving --------------------------------------------------------------------------
    def get_message(self, timeout_s: float | None = None) -> Message | None:
        """The next message, waiting up to timeout_s (None: for ever, 0: not at all); None if
        none came in time. Raises RemoteUnavailable if the node refused the handshake (the
        key or the mechanism; a handshake that fails for no stated reason, twice in a row)."""
        self._check_open()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._ready:
            failure = self._watch.lasting_failure()
            if failure is not None:
                raise RemoteUnavailable(f"no messages from {self.endpoint}: {failure}")
            wait_ms = -1 if deadline is None else \
                max(0, math.ceil((deadline - time.monotonic()) * 1000))
            ready = dict(self._poller.poll(wait_ms))
            if self._socket in ready:
                self._receive(self._socket.recv_multipart())
            elif not ready:
                return None
        return self._ready.popleft()

    def __iter__(self) -> Iterator[Message]:
        while True:
            message = self.get_message()
            if message is not None:
                yield message

    def _receive(self, frames: list[bytes]) -> None:
        published = pubsub.decode_published(frames)
        self._count_gap(published)
        self._ready.extend(self.matches(published))

    def _count_gap(self, published: pubsub.Published) -> None:
        # the socket's prefixes are a prefix-free set: the topic starts with at most one
        for prefix in self._prefixes:
            if published.topic.startswith(prefix):
                n = published.sub_seq.get(prefix)
                if n is None:  # sent before the node knew of the subscription
                    return
                last = self._last_n.get(prefix)
                if last is not None and n > last + 1:
                    self.dropped += n - last - 1
                self._last_n[prefix] = n  # n <= last: the node started the prefix anew
                return

    def matches(self, published: pubsub.Published) -> list[Message]:
        """The deliveries one published message makes under the current subscriptions."""
        name, data, seq = published.name, published.data, published.seq
        if published.kind == pubsub.MESSAGE:
            found = [Message("message", name, data, None, seq)] if name in self._channels else []
            return found + [Message("pmessage", name, data, pattern, seq)
                            for pattern in sorted(self._patterns)
                            if fnmatchcase(name, pattern)]
        return [Message(published.kind, name, data, pattern, seq, collection)
                for collection, pattern in sorted(self._keyspace)
                if collection == published.collection and fnmatchcase(name, pattern)]

    # --- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        if not self.closed:
            self._watch.close()
            self._socket.close(linger=0)
            self.closed = True

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<shmkv.clients.Subscriber {self.endpoint!r} {'closed' if self.closed else 'open'}>"

    def _check_open(self) -> None:
        if self.closed:
            raise CacheClosed("this Subscriber is closed; create a new one")


# --- pattern helpers (pure) -----------------------------------------------------------------
def literal_prefix(pattern: bytes) -> bytes:
    """The part of a glob before its first wildcard: what ZeroMQ can filter on."""
    cut = min((i for i in (pattern.find(bytes([c])) for c in _GLOB_CHARS) if i >= 0),
              default=len(pattern))
    return pattern[:cut]


def prefix_cover(prefixes: Iterable[bytes]) -> set[bytes]:
    """The smallest set of prefixes that matches what the given ones match: drops each one that
    another one starts. In sorted order every extension of a prefix follows it directly, so
    comparing with the last one kept is enough."""
    kept: list[bytes] = []
    for prefix in sorted(set(prefixes)):
        if not kept or not prefix.startswith(kept[-1]):
            kept.append(prefix)
    return set(kept)


def _name(name: object) -> bytes:
    if isinstance(name, str):
        return name.encode("utf-8")
    if isinstance(name, (bytes, bytearray, memoryview)):
        return bytes(name)
    raise TypeError(f"a channel, key or pattern must be str or bytes, not {type(name).__name__}")


def _remove(subscribed: set[bytes], names: tuple[str | bytes, ...]) -> None:
    if names:
        subscribed.difference_update(map(_name, names))
    else:
        subscribed.clear()


def _collection(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"collection name must be a str, not {type(name).__name__}")
    return name


__all__ = ["DEFAULT_PUB_ENDPOINT", "Message", "Subscriber"]
