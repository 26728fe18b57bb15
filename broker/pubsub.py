"""The node's publisher: channel messages and keyspace events, forwarded from the region's event
rings (shmkv/events.py) to subscribers over ZeroMQ, and the format of what it publishes.

Every message reaches the node the same way: a local process's `Cache.publish` or write, or the
node's own `publish`/`set`/... request, appends an event to a ring in shared memory; the node
tails the rings with one EventReader (server.py) and hands the events to `Publisher.pump`. Rings
are per stripe, so order holds per key and per channel; the node also pumps before it answers
each request, so the events of requests go out in the order the requests were answered. The
socket is an XPUB rather than a PUB: it sends the same way, and it also tells the node which
topic prefixes subscribers want (a subscription arrives as b"\\x01" + prefix, the end of the
last one for a prefix as b"\\x00" + prefix). The node uses that to number messages per
subscription, to skip encoding events nobody wants, and to tail the rings often only while
someone listens.

Published message (node -> subscriber), protocol version 1
----------------------------------------------------------
This format changes with protocol.PROTOCOL_VERSION (a subscriber can ask the node's version with
a ping on the request socket); within a version, fields are only added.
    frame  content   notes
    0      topic     what ZeroMQ subscriptions match, by prefix:
                       channel message   b"__channel__:" + channel
                       keyspace event    b"__keyspace@" + collection (UTF-8) + b"__:" + key
                     (the default collection is "": b"__keyspace@__:" + key)
    1      header    a UTF-8 JSON object; unknown fields are ignored:
                       seq      int    node-wide number of the event, from 1; it also advances
                                       past events the rings lost before the node read them
                       kind     str    "message", or the keyspace event: "set", "del",
                                       "expired", "evicted"
                       coll     str    the collection of a keyspace event ("" otherwise); a
                                       collection name may hold "__:", so the key is
                                       topic[len(b"__keyspace@" + coll + b"__:"):]
                       sub_seq  list   [[length, n], ...]: one pair for each subscription
                                       prefix (of any subscriber) that the topic starts with:
                                       the prefix is topic[:length], and n is this message's
                                       number among the messages sent that match it, from 1
    2      data      the message's bytes; for a keyspace event the event name (b"set"), as Redis
                     sends it

Gaps. A PUB socket drops messages for a subscriber whose queue is full (SNDHWM = pub_hwm on the
node, RCVHWM on the subscriber, plus the kernel's socket buffers between) and says nothing. A
node-wide seq cannot show those drops to a subscriber that filters: what its filter excluded
would look like gaps too. `sub_seq` can: every subscriber of prefix p receives every message
matching p unless ZeroMQ drops it, so a jump in p's number is exactly the count of messages
lost for that subscriber. A subscriber keeps its ZeroMQ prefixes free of prefixes of each other
(clients/subscribe.py), so each message it receives matches exactly one of them and is counted
once. The first message of a new subscription sets the baseline: the node learns of a prefix
only when XPUB reports it, and messages sent before that carry no number for it.

What is dropped, and who counts it:
  * messages ZeroMQ drops for a slow subscriber: the subscriber, from sub_seq gaps
    (`Subscriber.dropped`); the node never blocks on send and cannot see them;
  * events a ring overwrote before the node read them (a burst faster than the node tails):
    the node, in the shmkv_pubsub_dropped_messages metric, counted only while someone listens;
    `seq` skips them, so a subscriber of everything sees the gap in seq too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import zmq

from shmkv.errors import ProtocolError, ShmKVError

from .router import bind

if TYPE_CHECKING:
    from shmkv.events import Event

    from .metrics import Metrics

CHANNEL_PREFIX = b"__channel__:"
KEYSPACE_PREFIX = b"__keyspace@"
KEYSPACE_END = b"__:"
MESSAGE = "message"
KEYSPACE_KINDS = frozenset({"set", "del", "expired", "evicted"})
# Events taken from the rings per pump: bounds the time the loop spends forwarding before it
# answers requests again; the loop calls back at once when there may be more.
MAX_EVENTS_PER_PUMP = 4096


# --- the format ---------------------------------------------------------------------------------
def channel_topic(channel: bytes) -> bytes:
    return CHANNEL_PREFIX + channel


def keyspace_prefix(collection: str) -> bytes:
    """The topic prefix of every keyspace event of one collection."""
    return KEYSPACE_PREFIX + collection.encode("utf-8") + KEYSPACE_END


def topic_of(kind: str, collection: str, name: bytes) -> bytes:
    """The topic of an event: name is the channel of a message, else the key."""
    return channel_topic(name) if kind == MESSAGE else keyspace_prefix(collection) + name


def encode_published(topic: bytes, seq: int, kind: str, collection: str, data: bytes,
                     sub_seq: Sequence[tuple[bytes, int]] = ()) -> list[bytes]:
    """The frames of one published message (the table above); sub_seq holds (prefix, n) for
    prefixes of topic."""
    header = {"seq": seq, "kind": kind, "coll": collection,
              "sub_seq": [[len(prefix), n] for prefix, n in sub_seq]}
    if kind != MESSAGE:
        data = kind.encode()
    return [topic, json.dumps(header, separators=(",", ":")).encode(), data]


@dataclass(frozen=True, slots=True)
class Published:
    """A decoded published message. name is the channel, or the key of a keyspace event."""

    topic: bytes
    seq: int
    kind: str
    collection: str
    name: bytes
    data: bytes
    sub_seq: dict[bytes, int]


def decode_published(frames: Sequence[Any]) -> Published:
    """Parse the frames of a published message. Raises ProtocolError."""
    if len(frames) < 3:
        raise ProtocolError(f"a published message has 3 frames (topic, header, data), "
                            f"got {len(frames)}")
    topic, data = bytes(frames[0]), bytes(frames[2])
    try:
        header = json.loads(bytes(frames[1]))
    except (ValueError, RecursionError):
        raise ProtocolError("the header of a published message is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("the header of a published message must be a JSON object")
    seq, kind, coll = header.get("seq"), header.get("kind"), header.get("coll", "")
    if type(seq) is not int or type(kind) is not str or type(coll) is not str:
        raise ProtocolError("a published message's header needs an int seq, a str kind and "
                            "a str coll")
    prefix = CHANNEL_PREFIX if kind == MESSAGE else keyspace_prefix(coll)
    if not topic.startswith(prefix):
        raise ProtocolError(f"the topic {topic[:80]!r} does not start with {prefix!r} "
                            f"as a {kind!r} message's must")
    return Published(topic, seq, kind, coll, topic[len(prefix):], data,
                     _sub_seq(topic, header.get("sub_seq", [])))


def _sub_seq(topic: bytes, pairs: object) -> dict[bytes, int]:
    if not isinstance(pairs, list):
        raise ProtocolError("sub_seq must be a list of [length, n] pairs")
    numbers = {}
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and type(pair[0]) is int
                and type(pair[1]) is int and 0 <= pair[0] <= len(topic)):
            raise ProtocolError(f"each sub_seq entry is [prefix length, n], not {pair!r}")
        numbers[topic[:pair[0]]] = pair[1]
    return numbers


# --- the socket ---------------------------------------------------------------------------------
class EventSource(Protocol):
    """What the publisher tails: shmkv.events.EventReader."""

    def poll(self, max_events: int = ...) -> list[Event]: ...
    def skip(self) -> int | None: ...
    @property
    def lost(self) -> int: ...


class Publisher:
    """The node's XPUB socket. Never blocks: past pub_hwm queued messages for one subscriber,
    ZeroMQ drops that subscriber's messages (an hwm of 0 means no limit)."""

    def __init__(self, context: zmq.Context, endpoint: str, hwm: int,
                 metrics: Metrics | None = None,
                 secure: Callable[[zmq.Socket], None] | None = None) -> None:
        """Bind an XPUB socket to endpoint (raises ShmKVError if it cannot); counts go to
        metrics, which may also be set later. secure (auth.CurveServer.secure) sets the
        socket's security options before it binds."""
        self.socket = context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.LINGER, 0)  # any early exit closes at once
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        if secure is not None:
            secure(self.socket)
        try:
            self.endpoint = bind(self.socket, endpoint, "publish", "--pub-bind")
        except ShmKVError:
            self.socket.close()
            raise
        self.metrics = metrics
        self._seq = 0
        self._lost_seen = 0  # the reader's lost count already accounted for
        # prefix -> messages sent that match it, for each prefix some subscriber wants
        self._counts: dict[bytes, int] = {}
        self._lengths: list[int] = []  # the distinct lengths of those prefixes

    @property
    def listening(self) -> bool:
        """True while at least one subscriber is subscribed to something."""
        return bool(self._counts)

    def take_subscriptions(self) -> None:
        """Read the (un)subscriptions XPUB has queued; call when the socket is readable."""
        changed = False
        while True:
            try:
                message = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if message[:1] == b"\x01":
                self._counts.setdefault(message[1:], 0)
                changed = True
            elif message[:1] == b"\x00":
                changed |= self._counts.pop(message[1:], None) is not None
        if changed:
            self._lengths = sorted({len(p) for p in self._counts})

    def pump(self, source: EventSource) -> bool:
        """Forward what the source has (up to MAX_EVENTS_PER_PUMP); True if it may have more.
        With nobody listening the events are read and discarded, so that a new subscriber
        does not get a backlog, and ring losses are not counted as drops; skipped unread
        where the source allows (nothing else reads them)."""
        if not self._counts:
            passed = source.skip()
            if passed is not None:
                # as forward() and the lost count below would have numbered them
                self._seq += passed + source.lost - self._lost_seen
                self._lost_seen = source.lost
                return False
        events = source.poll(MAX_EVENTS_PER_PUMP)
        lost = source.lost - self._lost_seen  # overwritten before the events just read
        if lost > 0:
            self._lost_seen += lost
            self._seq += lost
            if self.listening and self.metrics is not None:
                self.metrics.count_dropped(lost)
        self.forward(events)
        return len(events) >= MAX_EVENTS_PER_PUMP

    def forward(self, events: Iterable[Event]) -> int:
        """Publish events; returns how many were sent (those that some subscription matches:
        XPUB would drop the others, so they are not even encoded)."""
        sent = 0
        counts, lengths = self._counts, self._lengths
        for event in events:
            self._seq += 1
            if not counts:
                continue
            topic = topic_of(event.kind, event.collection, event.key)
            sub_seq = []
            for length in lengths:
                if length > len(topic):
                    break
                prefix = topic[:length]
                if prefix in counts:
                    counts[prefix] += 1
                    sub_seq.append((prefix, counts[prefix]))
            if not sub_seq:
                continue
            # channels are region-wide: a message's collection (the publisher's handle) is moot
            collection = "" if event.kind == MESSAGE else event.collection
            frames = encode_published(topic, self._seq, event.kind, collection, event.data,
                                      sub_seq)
            try:
                # XPUB drops rather than blocks at the HWM; DONTWAIT is a guard, not a path
                self.socket.send_multipart(frames, zmq.DONTWAIT)
            except zmq.Again:
                if self.metrics is not None:
                    self.metrics.count_dropped()
                continue
            sent += 1
        if sent and self.metrics is not None:
            self.metrics.count_published(sent)
        return sent

    def close(self, linger_ms: int = 0) -> None:
        self.socket.close(linger=linger_ms)
