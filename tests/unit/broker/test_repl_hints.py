"""The hint bookkeeping (broker/repl_hints.py): an interval between two marks of a stripe's
counter names its keys only when the counter moved by exactly the events seen, with none lost;
anything else starts the stripe's history again."""

from __future__ import annotations

from shmkv.broker.repl_hints import MAX_MARKS, Hints
from shmkv.events import Event


def event(key: bytes, kind: str = "set", index: int = 0) -> Event:
    return Event(kind, "", key, b"", index)


def test_keys_named_between_exact_marks_are_what_moved_since_a_mark() -> None:
    hints = Hints(4)
    assert not hints.mark(1, 10)  # the first mark: nothing known before it
    hints.seen(1, [event(b"a"), event(b"b", "del", 2)])
    assert hints.mark(1, 12)
    hints.seen(1, [event(b"a", "expired")])
    assert hints.mark(1, 13)
    assert hints.since(1, 10) == {(0, b"a"), (2, b"b")}
    assert hints.since(1, 12) == {(0, b"a")}
    assert hints.since(1, 13) == set()
    assert hints.since(1, 11) is None and hints.since(0, 10) is None


def test_a_change_without_an_event_starts_the_history_again() -> None:
    hints = Hints(2)
    hints.mark(0, 5)
    hints.seen(0, [event(b"a")])
    assert not hints.mark(0, 7)  # two bumps, one event: a TTL change, say
    assert hints.since(0, 5) is None
    assert hints.since(0, 7) == set()


def test_an_overrun_ring_starts_the_history_again() -> None:
    hints = Hints(2)
    hints.mark(0, 5)
    hints.seen(0, [event(b"a")])
    hints.overrun(0)
    hints.seen(0, [event(b"b")])
    assert not hints.mark(0, 7)
    assert hints.since(0, 5) is None


def test_channel_messages_count_as_no_change() -> None:
    hints = Hints(1)
    hints.mark(0, 3)
    hints.seen(0, [event(b"chan", "message"), event(b"k")])
    assert hints.mark(0, 4)
    assert hints.since(0, 3) == {(0, b"k")}


def test_events_of_one_stripe_say_nothing_of_another() -> None:
    hints = Hints(2)
    hints.mark(0, 1)
    hints.mark(1, 1)
    hints.seen(0, [event(b"a")])
    assert hints.mark(0, 2)
    assert not hints.mark(1, 2)  # its counter moved with no event of its own


def test_the_oldest_marks_are_dropped_past_the_limit() -> None:
    hints = Hints(1)
    hints.mark(0, 0)
    for n in range(1, MAX_MARKS + 5):
        hints.seen(0, [event(b"k%d" % n)])
        assert hints.mark(0, n)
    assert hints.since(0, 0) is None
    last = MAX_MARKS + 4
    assert hints.since(0, last - 2) == {(0, b"k%d" % (last - 1)), (0, b"k%d" % last)}
