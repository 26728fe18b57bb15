"""Which keys moved in a stripe between two reads of its counter, from the event rings: the hints
that let a primary send a replica a stripe's changed keys instead of comparing its digests
(broker/replication.py describes the protocol and the convergence argument).

The node tails the rings with one EventReader (server.py); `Hints` is its observer: told each
stripe's events as the reader reads them, and every overrun. A checkpoint (`mark`) closes the
stripe's current interval at the stripe's `changes` counter, read under the stripe's lock right
after `EventReader.catch_up` read the ring to its head: both the counter and the ring's head are
then taken at the same point of the stripe's history (writers bump the counter and append the
event under that lock). An interval is exact when no event of it was lost and the counter moved
by exactly the number of keyspace events it holds:

    every keyspace event in a ring was appended together with a bump of its stripe's counter
    (shmkv/writer.py, evict.py, the compiled writer: set, del, expired, evicted), so
    bumps >= events; equal counts leave no bump without an event naming its key.

A change without an event (a TTL change, events off while no node held them, a repair, a
recovery) or a lost event (a ring overrun) makes the interval inexact, and the stripe's
history starts again at that mark: a replica positioned before it compares digests once.
Channel messages go through the rings too but bump nothing: they are not counted.

Per stripe, the marks kept are (counter, keys named since the previous mark), oldest first,
at most MAX_MARKS of them and MAX_KEYS_KEPT keys in all (the oldest go first: a replica that
far behind compares digests). `since(stripe, counter)` is the union of the keys named after
the mark at counter, or None when no mark is at counter.
"""

from __future__ import annotations

from shmkv.events import Event

MAX_MARKS = 64
MAX_KEYS_KEPT = 4096  # per stripe, over its marks
MAX_PENDING = 4096  # keys of one open interval; past that it is dropped (digests are cheaper)

Key = tuple[int, bytes]  # (collection index, key)


class Hints:
    """Per stripe, the keys named by the event rings between checkpoints of its counter."""

    def __init__(self, n_stripes: int) -> None:
        self._pending: list[set[Key] | None] = [set() for _ in range(n_stripes)]  # None: lost
        self._counted = [0] * n_stripes  # keyspace events in the open interval
        self._marks: list[list[tuple[int, frozenset[Key]]]] = [[] for _ in range(n_stripes)]
        self._kept = [0] * n_stripes  # keys held in the stripe's marks
        self.resets = 0  # intervals found inexact (or the first mark of a stripe)

    # --- the reader's observer (shmkv.events.StripeObserver) ------------------------------
    def seen(self, stripe: int, events: list[Event]) -> None:
        pending = self._pending[stripe]
        if pending is None:
            return
        counted = 0
        for event in events:
            if event.kind != "message":
                pending.add((event.collection_index, event.key))
                counted += 1
        self._counted[stripe] += counted
        if len(pending) > MAX_PENDING:
            self._pending[stripe] = None

    def overrun(self, stripe: int) -> None:
        self._pending[stripe] = None

    # --- checkpoints ------------------------------------------------------------------------
    def mark(self, stripe: int, changes: int) -> bool:
        """Close the stripe's open interval at its counter `changes` (read under the stripe's
        lock, after the reader caught up with its ring); True if the interval was exact."""
        marks, pending = self._marks[stripe], self._pending[stripe]
        exact = pending is not None and bool(marks) \
            and changes - marks[-1][0] == self._counted[stripe]
        if not exact:
            marks.clear()
            marks.append((changes, frozenset()))
            self._kept[stripe] = 0
            self.resets += 1
        elif changes != marks[-1][0]:
            assert pending is not None
            marks.append((changes, frozenset(pending)))
            self._kept[stripe] += len(pending)
            while len(marks) > MAX_MARKS or (self._kept[stripe] > MAX_KEYS_KEPT
                                             and len(marks) > 1):
                marks.pop(0)  # the next one's keys are of an interval nobody can ask for now
                self._kept[stripe] -= len(marks[0][1])
                marks[0] = (marks[0][0], frozenset())
        self._pending[stripe] = set()
        self._counted[stripe] = 0
        return exact

    def since(self, stripe: int, changes: int) -> set[Key] | None:
        """The keys named after the mark at `changes` up to the last mark; None if there is
        no mark at `changes` (never made, or dropped)."""
        marks = self._marks[stripe]
        for at in range(len(marks) - 1, -1, -1):
            if marks[at][0] == changes:
                keys: set[Key] = set()
                for _, named in marks[at + 1:]:
                    keys |= named
                return keys
            if marks[at][0] < changes:
                return None
        return None
