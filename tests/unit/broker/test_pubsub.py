"""The published-message format, the node's Publisher and the Subscriber's matching and gap
counting (shmkv.broker.pubsub, shmkv.clients.subscribe), in one process over loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import zmq

from shmkv.broker import pubsub
from shmkv.broker.pubsub import Publisher, decode_published, encode_published
from shmkv.clients import Message, Subscriber
from shmkv.clients.subscribe import literal_prefix, prefix_cover
from shmkv.errors import ProtocolError
from shmkv.events import Event

WAIT_MS = 5000


# --- the format -------------------------------------------------------------------------------
def test_a_channel_message_round_trips() -> None:
    frames = encode_published(b"__channel__:news", 7, "message", "", b"\x00hello",
                              [(b"__channel__:", 3), (b"__channel__:ne", 1)])
    assert frames[0] == b"__channel__:news" and frames[2] == b"\x00hello"
    published = decode_published(frames)
    assert (published.seq, published.kind, published.name, published.data) == \
        (7, "message", b"news", b"\x00hello")
    assert published.sub_seq == {b"__channel__:": 3, b"__channel__:ne": 1}


def test_a_keyspace_event_carries_its_name_as_data_and_its_collection_in_the_header() -> None:
    # "__:" in a collection name would make the topic ambiguous: the header says where it ends
    topic = pubsub.topic_of("expired", "a__:b", b"c__:d")
    assert topic == b"__keyspace@a__:b__:c__:d"
    published = decode_published(encode_published(topic, 1, "expired", "a__:b", b""))
    assert (published.kind, published.collection, published.name, published.data) == \
        ("expired", "a__:b", b"c__:d", b"expired")


def test_topics_of_channels_and_of_the_default_collection() -> None:
    assert pubsub.topic_of("message", "users", b"news") == b"__channel__:news"
    assert pubsub.topic_of("set", "", b"k") == b"__keyspace@__:k"


def test_unknown_header_fields_are_ignored() -> None:
    header = json.dumps({"seq": 1, "kind": "message", "coll": "", "new": [1]}).encode()
    assert decode_published([b"__channel__:x", header, b"d"]).name == b"x"


@pytest.mark.parametrize("frames, problem", [
    ([b"__channel__:x", b"{}"], "3 frames"),
    ([b"__channel__:x", b"\xff", b""], "not UTF-8 JSON"),
    ([b"__channel__:x", b"[]", b""], "JSON object"),
    ([b"__channel__:x", b'{"seq": "1", "kind": "message"}', b""], "int seq"),
    ([b"__keyspace@__:x", b'{"seq": 1, "kind": "message"}', b""], "does not start with"),
    ([b"__channel__:x", b'{"seq": 1, "kind": "set", "coll": "c"}', b""], "does not start with"),
    ([b"__channel__:x", b'{"seq": 1, "kind": "message", "sub_seq": {}}', b""], "list"),
    ([b"__channel__:x", b'{"seq": 1, "kind": "message", "sub_seq": [[99, 1]]}', b""],
     "prefix length"),
])
def test_a_malformed_published_message_raises_protocol_error(frames, problem) -> None:
    with pytest.raises(ProtocolError, match=problem):
        decode_published(frames)


# --- patterns -----------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern, prefix", [
    (b"news", b"news"), (b"user:*", b"user:"), (b"log.?x*", b"log."), (b"[ab]*", b""),
    (b"*", b""), (b"", b""),
])
def test_the_literal_prefix_of_a_pattern_ends_at_its_first_wildcard(pattern, prefix) -> None:
    assert literal_prefix(pattern) == prefix


def test_the_prefix_cover_keeps_no_prefix_of_another() -> None:
    assert prefix_cover([b"ab", b"abc", b"b", b"a", b"ba", b"b"]) == {b"a", b"b"}
    assert prefix_cover([b"user:1", b"user:10", b"users"]) == {b"user:1", b"users"}
    assert prefix_cover([b"x", b""]) == {b""}
    assert prefix_cover([]) == set()


@pytest.fixture
def sub() -> Iterator[Subscriber]:
    with Subscriber("tcp://127.0.0.1:1") as s:  # connects lazily: nothing needs to listen
        yield s


def published(kind: str, name: bytes, collection: str = "", data: bytes = b"d"):
    topic = pubsub.topic_of(kind, collection, name)
    return decode_published(encode_published(topic, 5, kind, collection, data))


def test_a_channel_matches_exactly_and_each_matching_pattern_once(sub) -> None:
    sub.subscribe("news")
    sub.psubscribe("n*", "ne?s", "[!n]*")
    assert sub.matches(published("message", b"news")) == [
        Message("message", b"news", b"d", None, 5),
        Message("pmessage", b"news", b"d", b"n*", 5),
        Message("pmessage", b"news", b"d", b"ne?s", 5),
    ]
    # the ZeroMQ prefix of "news" also lets "newsletter" through; the exact match does not
    assert sub.matches(published("message", b"newsletter")) == [
        Message("pmessage", b"newsletter", b"d", b"n*", 5)]


def test_keyspace_subscriptions_match_their_collection_only(sub) -> None:
    sub.subscribe_keyspace("session:*", collection="web")
    sub.subscribe_keyspace()
    assert sub.matches(published("del", b"session:1", "web")) == [
        Message("del", b"session:1", b"del", b"session:*", 5, "web")]
    assert sub.matches(published("set", b"session:1")) == [
        Message("set", b"session:1", b"set", b"*", 5, "")]
    assert sub.matches(published("set", b"k", "other")) == []
    assert sub.matches(published("message", b"session:1")) == []


def test_unsubscribing_removes_what_it_names_or_everything(sub) -> None:
    sub.subscribe("a", "b")
    sub.psubscribe("x*")
    sub.unsubscribe("a")
    assert [m.channel for m in sub.matches(published("message", b"b"))] == [b"b"]
    assert sub.matches(published("message", b"a")) == []
    sub.unsubscribe()
    sub.punsubscribe()
    assert sub.matches(published("message", b"b")) == []
    assert sub.matches(published("message", b"xy")) == []


def test_subscriber_refuses_bad_arguments_and_use_after_close() -> None:
    with pytest.raises(ValueError, match="rcv_hwm"):
        Subscriber("tcp://127.0.0.1:1", rcv_hwm=-1)
    with pytest.raises(ValueError, match="cannot connect"):
        Subscriber("not an endpoint")
    s = Subscriber("tcp://127.0.0.1:1")
    with pytest.raises(TypeError, match="str or bytes"):
        s.subscribe(3)
    s.close()
    with pytest.raises(Exception, match="closed"):
        s.get_message(0)


# --- the publisher and a subscriber over loopback -----------------------------------------------
class FakeMetrics:
    def __init__(self) -> None:
        self.published = self.dropped = 0

    def count_published(self, messages: int = 1) -> None:
        self.published += messages

    def count_dropped(self, messages: int = 1) -> None:
        self.dropped += messages


class FakeSource:
    """Stands in for shmkv.events.EventReader."""

    def __init__(self) -> None:
        self.pending: list[Event] = []
        self.lost = 0
        self.polls = 0

    def poll(self, max_events: int = 4096) -> list[Event]:
        self.polls += 1
        events, self.pending = self.pending[:max_events], self.pending[max_events:]
        return events

    def skip(self) -> int | None:
        passed, self.pending = len(self.pending), []
        return passed


@pytest.fixture
def publisher() -> Iterator[Publisher]:
    context = zmq.Context()
    pub = Publisher(context, "tcp://127.0.0.1:*", hwm=1000, metrics=FakeMetrics())
    try:
        yield pub
    finally:
        pub.close()
        context.term()


def await_subscriptions(pub: Publisher, count: int) -> None:
    """Take (un)subscriptions as XPUB reports them until count prefixes are wanted."""
    while len(pub._counts) != count:
        assert pub.socket.poll(WAIT_MS), "the subscription never reached the publisher"
        pub.take_subscriptions()


def message(channel: bytes, data: bytes = b"") -> Event:
    return Event("message", "", channel, data)


def test_the_publisher_numbers_messages_per_subscription_so_filtering_is_no_gap(
        publisher) -> None:
    with Subscriber(publisher.endpoint) as one, Subscriber(publisher.endpoint) as every:
        one.subscribe("a")
        every.psubscribe("*")
        await_subscriptions(publisher, 2)
        assert publisher.listening
        sent = publisher.forward([message(b"a", b"1"), message(b"b"), message(b"a", b"2")])
        assert sent == 3 and publisher.metrics.published == 3
        got = [one.get_message(WAIT_MS / 1000) for _ in range(2)]
        assert [(m.data, m.seq) for m in got] == [(b"1", 1), (b"2", 3)]
        assert [every.get_message(WAIT_MS / 1000).seq for _ in range(3)] == [1, 2, 3]
        assert one.dropped == every.dropped == 0


def test_events_nobody_subscribed_to_are_not_sent(publisher) -> None:
    assert not publisher.listening
    assert publisher.forward([message(b"a")]) == 0
    with Subscriber(publisher.endpoint) as sub:
        sub.subscribe_keyspace("k*", collection="users")
        await_subscriptions(publisher, 1)
        events = [Event("set", "", b"k1"), Event("set", "users", b"x"),
                  Event("del", "users", b"k1")]
        assert publisher.forward(events) == 1
        # seq numbers every event, sent or not: this is the 4th
        assert sub.get_message(WAIT_MS / 1000) == Message("del", b"k1", b"del", b"k*", 4,
                                                          "users")
    await_subscriptions(publisher, 0)  # the subscriber left
    assert not publisher.listening


def test_ring_losses_advance_seq_and_count_as_dropped_only_while_someone_listens(
        publisher) -> None:
    source = FakeSource()
    source.lost = 5
    assert publisher.pump(source) is False
    assert publisher.metrics.dropped == 0  # nobody listened: nothing was dropped for anyone
    with Subscriber(publisher.endpoint) as sub:
        sub.subscribe("a")
        await_subscriptions(publisher, 1)
        source.lost = 7
        source.pending = [message(b"a")]
        publisher.pump(source)
        assert publisher.metrics.dropped == 2
        assert sub.get_message(WAIT_MS / 1000).seq == 8  # 1 event + 7 lost before it


def test_a_gap_in_a_subscription_number_is_counted_as_dropped() -> None:
    """What ZeroMQ drops for a slow subscriber shows as a jump in the numbers of its prefix;
    a raw PUB socket sends numbered messages with such a jump."""
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    try:
        pub.bind("tcp://127.0.0.1:*")
        with Subscriber(pub.getsockopt_string(zmq.LAST_ENDPOINT), context=context) as sub:
            sub.subscribe("a")
            prefix = b"__channel__:a"

            def send(n: int, data: bytes) -> None:
                pub.send_multipart(encode_published(prefix, n, "message", "", data,
                                                    [(prefix, n)]))

            first = None
            while first is None:  # the slow joiner: send until the subscription is in place
                send(1, b"probe")
                first = sub.get_message(0.01)
            for n in (2, 5, 6, 9):
                send(n, b"x")
            numbers: list[int] = []
            while len(numbers) < 4:
                m = sub.get_message(WAIT_MS / 1000)
                if m.data != b"probe":  # probes sent after the first one come before, as 1s
                    numbers.append(m.seq)
            assert numbers == [2, 5, 6, 9]
            assert sub.dropped == 2 + 2
    finally:
        pub.close(linger=0)
        context.term()


def test_the_publisher_refuses_an_endpoint_in_use(publisher) -> None:
    context = zmq.Context()
    try:
        with pytest.raises(Exception, match="--pub-bind"):
            Publisher(context, publisher.endpoint, hwm=10)
    finally:
        context.term()


def test_events_nobody_listens_to_are_skipped_unread_and_still_numbered(publisher) -> None:
    source = FakeSource()
    source.pending = [message(b"a"), message(b"b")]
    assert publisher.pump(source) is False
    assert source.pending == [] and source.polls == 0  # passed without being read
    with Subscriber(publisher.endpoint) as sub:
        sub.subscribe("a")
        await_subscriptions(publisher, 1)
        source.pending = [message(b"a")]
        publisher.pump(source)
        assert sub.get_message(WAIT_MS / 1000).seq == 3  # the two skipped count
