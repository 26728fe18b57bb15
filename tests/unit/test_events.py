"""Keyspace events and published messages through the region's event rings (events.py)."""

from __future__ import annotations

import numpy as np
import pytest
from tests_support import run_workers

import shmkv
from shmkv.check import check_region
from shmkv.events import Event, EventReader, max_message_bytes


@pytest.fixture
def reader(cache: shmkv.Cache) -> EventReader:
    cache.enable_events(True)
    return EventReader(cache)


def kinds(reader: EventReader) -> list[tuple[str, bytes]]:
    return [(e.kind, e.key) for e in reader.poll()]


def test_keyspace_events_are_off_by_default_and_cost_writers_nothing(cache) -> None:
    reader = EventReader(cache)
    assert not cache.events_enabled
    cache.set("k", b"v")
    cache.delete("k")
    assert reader.poll() == []
    cache.enable_events(True)
    cache.set("k", b"v")
    assert kinds(reader) == [("set", b"k")]


def test_a_reader_sees_only_events_written_after_it_was_made(cache) -> None:
    cache.enable_events(True)
    cache.set("before", b"v")
    reader = EventReader(cache)
    cache.set("after", b"v")
    assert kinds(reader) == [("set", b"after")]
    assert reader.poll() == []


def test_every_kind_of_write_emits_set(cache, reader) -> None:
    cache.set("k", b"v")  # insert
    cache.set("k", b"w")  # in place
    cache.set("k", b"x" * 5000)  # relocated
    cache.incr("n")
    cache.cas("k", b"y", cache.get_with_version("k")[1])
    cache.set_array("a", np.arange(3))
    # order holds per key (per stripe), not across keys
    assert sorted(kinds(reader)) == [("set", b"a"), *[("set", b"k")] * 4, ("set", b"n")]


def test_removals_say_why_del_expired_or_evicted(region_name, fake_clock) -> None:
    with shmkv.Cache.create(region_name, arena_bytes=1 << 20, clock=fake_clock) as c:
        c.enable_events(True)
        reader = EventReader(c)
        c.set("gone", b"v")
        c.delete("gone")
        c.set("short", b"v", ttl_s=1)
        fake_clock.advance(2)
        c.maintain(max_slots=1 << 20)
        events = kinds(reader)
        assert [e for e in events if e[1] == b"gone"] == [("set", b"gone"), ("del", b"gone")]
        assert [e for e in events if e[1] == b"short"] == [("set", b"short"),
                                                           ("expired", b"short")]
        for i in range(300):  # 1.5 MiB through a 1 MiB arena
            c.set(f"fill{i}", b"x" * 5000)
        events = reader.poll()
        evicted = [e.key for e in events if e.kind == "evicted"]
        assert evicted and all(key.startswith(b"fill") for key in evicted)
        assert len(evicted) == c.stats()["evictions"]


def test_events_name_their_collection(cache, reader) -> None:
    users = cache.collection("users")
    users.set("bob", b"1")
    cache.set("bob", b"2")
    assert sorted((e.collection, e.key) for e in reader.poll()) == [("", b"bob"),
                                                                   ("users", b"bob")]


def test_publish_delivers_channel_and_message_even_with_keyspace_events_off(cache) -> None:
    reader = EventReader(cache)
    cache.publish("news", b"hello")
    cache.publish(b"news", "text is UTF-8")
    assert reader.poll() == [Event("message", "", b"news", b"hello"),
                             Event("message", "", b"news", "text is UTF-8".encode())]


def test_every_reader_sees_every_event(cache, reader) -> None:
    other = EventReader(cache)
    cache.publish("c", b"m")
    assert reader.poll() == other.poll() == [Event("message", "", b"c", b"m")]


def test_a_reader_that_falls_a_ring_behind_counts_what_it_lost_and_goes_on(cache,
                                                                        reader) -> None:
    # one channel: one stripe, one ring; 8 rings' worth of messages, never polled
    count = 8 * cache._region.layout.event_ring_bytes // 56
    for i in range(count):
        cache.publish("c", b"%032d" % i)  # 16 B header + 1 + 32, padded to 56 bytes
    assert reader.poll() == []
    assert reader.lost == count
    cache.publish("c", b"after")
    assert reader.poll() == [Event("message", "", b"c", b"after")]
    assert reader.lost == count


def test_events_that_wrap_around_the_ring_end_are_read_whole(cache, reader) -> None:
    ring = cache._region.layout.event_ring_bytes
    message = bytes(range(256)) * (ring // 256 // 5)  # 1/5 ring: some straddle the ring's end
    for round_ in range(3 * ring // len(message)):
        cache.publish("c", message)
        assert reader.poll() == [Event("message", "", b"c", message)], round_
    assert reader.lost == 0


def test_a_message_too_large_for_the_ring_is_refused_and_nothing_else_changes(cache,
                                                                             reader) -> None:
    cache.set("k", b"v")
    most = max_message_bytes(cache._region, len(b"c"))
    with pytest.raises(shmkv.ValueTooLarge, match=str(most)):
        cache.publish("c", bytes(most + 1))
    cache.publish("c", bytes(most))
    assert sorted(e.kind for e in reader.poll()) == ["message", "set"]
    assert cache.get("k") == b"v" and check_region(cache) == []


def test_the_largest_message_is_read_even_right_after_other_events_of_its_ring(cache,
                                                                               reader) -> None:
    most = max_message_bytes(cache._region, len(b"c"))
    for _ in range(5):  # one channel, one ring: records wrap around its end too
        cache.publish("c", b"small")
        cache.publish("c", bytes(most))
        assert [len(e.data) for e in reader.poll()] == [5, most]
    assert reader.lost == 0


def test_publish_rejects_what_set_rejects(cache) -> None:
    with pytest.raises(TypeError):
        cache.publish("c", 42)
    with pytest.raises(TypeError):
        cache.publish(42, b"m")


def write_and_publish(name: str) -> int:
    with shmkv.Cache.open(name) as c:
        for i in range(100):
            c.set(f"k{i}", b"v")
        c.delete("k0")
        c.publish("done", b"bye")
    return 0


@pytest.mark.multiprocess
def test_events_of_writers_in_other_processes_reach_the_reader(cache, reader) -> None:
    run_workers(write_and_publish, [(cache._region.name,)] * 2)
    assert "k0" not in cache
    events = reader.poll()
    assert sum(e.kind == "set" for e in events) == 200
    k0 = [e.kind for e in events if e.key == b"k0"]  # the two writers race on it
    assert k0.count("set") == 2 and k0[-1] == "del"
    assert [e.data for e in events if e.kind == "message"] == [b"bye", b"bye"]


def _stripe_of(cache: shmkv.Cache, key: bytes, index: int = 0) -> int:
    from shmkv.hashing import xxh3_64
    region = cache._region
    return xxh3_64(key, region.seed ^ index) & (region.layout.n_stripes - 1)


def test_catch_up_reads_one_stripe_now_and_the_next_poll_still_returns_its_events(
        cache, reader) -> None:
    told: list[tuple[int, bytes, int]] = []

    class Told:
        def seen(self, stripe: int, events: list[Event]) -> None:
            told.extend((stripe, e.key, e.collection_index) for e in events)

        def overrun(self, stripe: int) -> None:
            told.append((stripe, b"", -1))

    reader.observer = Told()
    cache.set("a", b"1")
    stripe = _stripe_of(cache, b"a")
    with cache.collection("c") as c:
        index = c._coll
        other = next(f"b{i}".encode() for i in range(10_000)
                     if _stripe_of(cache, f"b{i}".encode(), index) != stripe)
        c.set(other, b"2")
    reader.catch_up(stripe)
    assert told == [(stripe, b"a", 0)]
    assert [(e.kind, e.key) for e in reader.poll()] == [("set", b"a"), ("set", other)]
    assert told[1:] == [(_stripe_of(cache, other, index), other, index)]


def test_an_overrun_ring_is_told_to_the_observer(cache, reader) -> None:
    overruns: list[int] = []

    class Told:
        def seen(self, stripe: int, events: list[Event]) -> None:
            pass

        def overrun(self, stripe: int) -> None:
            overruns.append(stripe)

    reader.observer = Told()
    ring = cache._region.layout.event_ring_bytes
    key = next(f"k{i}" for i in range(10_000) if _stripe_of(cache, f"k{i}".encode()) == 0)
    for _ in range(ring // 16):
        cache.set(key, b"v")
    reader.poll()
    assert overruns == [0]


def test_skip_passes_every_event_unread_and_counts_them(cache, reader) -> None:
    cache.set("a", b"1")
    cache.set("b", b"2")
    cache.delete("a")
    reader.catch_up(_stripe_of(cache, b"a"))  # held events are passed too
    assert reader.skip() == 3
    assert reader.poll() == []
    assert reader.skip() == 0
    cache.set("c", b"3")
    assert kinds(reader) == [("set", b"c")]


def test_skip_leaves_the_events_to_poll_while_an_observer_must_see_them(cache, reader) -> None:
    class Told:
        def seen(self, stripe: int, events: list[Event]) -> None:
            pass

        def overrun(self, stripe: int) -> None:
            pass

    reader.observer = Told()
    cache.set("a", b"1")
    assert reader.skip() is None
    assert kinds(reader) == [("set", b"a")]
