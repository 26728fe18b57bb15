"""Events: keyspace notifications and published messages, through rings in the region.

Any process that writes to the region can tell the others what changed without a socket: a
writer appends an event (the key and what happened to it: set, del, expired, evicted) to the
event ring of the key's stripe, and `Cache.publish` appends a message to the ring of the
channel's stripe. One reader, the node, tails every ring with `EventReader` and forwards the
events to subscribers over ZeroMQ (broker/pubsub.py). The ring format is in layout.py.

Why one ring per stripe: a writer already holds its key's stripe lock, so appending costs no
lock of its own and writers of different stripes never contend; events of one key (one stripe)
stay in order, which is the order subscribers need. Keyspace events are off until someone turns
them on (`Cache.enable_events`, the node does at start): until then a writer pays one flag read.

Who wants events is the set of live holders of the EVENTS lock (holders.py), not the last word
written: a second node started and stopped on a region must not turn events off under the first,
and a holder that died (SIGKILL, a failed start) must not leave them on. The header's
events_enabled word stays the writers' one fast flag; it is recomputed from the holders, under
the arena lock so that two recomputations never cross, whenever a handle starts or stops
wanting events and at every maintain().

Rings are overwritten oldest first and never wait for their reader: a writer must not stall
because the node is slow or gone. The reader notices that it was overtaken (the ring's head has
moved more than a ring's worth past what it has read) and counts the events it lost. Records
are read optimistically, like the index: copied, then kept only if the head has not moved so far
meanwhile that a writer could have reached them. A record is at most a quarter of a ring, so a
reader can be up to three quarters of a ring behind and still read everything (at most half,
and a single record of half a ring could never be read once anything else was written).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from . import holders
from . import layout as L
from .errors import ValueTooLarge

if TYPE_CHECKING:
    from .cache import Cache
    from .shared_region import SharedRegion

KIND_NAMES = {L.EV_SET: "set", L.EV_DEL: "del", L.EV_EXPIRED: "expired",
              L.EV_EVICTED: "evicted", L.EV_MESSAGE: "message"}
_ENABLED = L.H_EVENTS_ENABLED >> 2


@dataclass(frozen=True)
class Event:
    kind: str  # "set", "del", "expired", "evicted", or "message" (a publish)
    collection: str  # "" for the default collection
    key: bytes  # the key; for "message", the channel
    data: bytes = b""  # for "message", the message
    collection_index: int = 0  # the collection's index in the table (what keys hash with)


class StripeObserver(Protocol):
    """Told what an EventReader reads, stripe by stripe (broker/repl_hints.py)."""

    def seen(self, stripe: int, events: list[Event]) -> None: ...
    def overrun(self, stripe: int) -> None: ...


def enabled(region: SharedRegion) -> bool:
    return bool(region.u32[_ENABLED])


def want(region: SharedRegion, hold_fd: int | None, on: bool) -> int | None:
    """Start (on) or stop wanting keyspace events for the handle whose EVENTS hold is hold_fd
    (None: it holds none); returns its hold now. The flag follows every live holder."""
    with region.locks.arena_held:
        if on and hold_fd is None:
            # a description of its own, not the mapping's: closing it drops this handle's
            # share alone, and the kernel drops it when the process dies (a forked child that
            # inherited the descriptor keeps the share until it exits too)
            hold_fd = holders.own_fd(region.mapping.fd)
            try:
                holders.hold_events(hold_fd)
            except BaseException:
                os.close(hold_fd)
                raise
        elif not on and hold_fd is not None:
            os.close(hold_fd)  # drops the lock
            hold_fd = None
        refresh_locked(region)
    return hold_fd


def refresh_locked(region: SharedRegion) -> None:
    """Set the flag to whether any live handle wants events (the arena lock held)."""
    on = int(holders.events_wanted(region.mapping.fd))
    if region.u32[_ENABLED] != on:
        region.u32[_ENABLED] = on


def max_message_bytes(region: SharedRegion, channel_bytes: int) -> int:
    """The longest message publish() takes on a channel of that length in this region: a
    record may fill a quarter of a ring."""
    return max_record_bytes(region.layout) - L.EVENT_HEADER.size - channel_bytes


def max_record_bytes(layout: L.Layout) -> int:
    return layout.event_ring_bytes // 4


def emit_locked(region: SharedRegion, stripe: int, kind: int, coll: int, key: bytes,
                data: bytes | memoryview = b"") -> None:
    """Append one event to the stripe's ring (the stripe's lock held by the caller)."""
    ring = region.layout.event_ring_bytes
    body = L.EVENT_HEADER.size + len(key) + len(data)
    size = (body + 7) & ~7
    if size > max_record_bytes(region.layout):
        raise ValueTooLarge(f"a message on this channel may be at most "
                            f"{max_message_bytes(region, len(key))} bytes in this region (its "
                            "event rings are 1/64 of the arena, at most 64 KiB a stripe); "
                            "send large payloads as values and publish their keys")
    record = b"".join((L.EVENT_HEADER.pack(size, kind, coll, len(key), len(data)), key, data,
                       bytes(size - body)))
    lay, q = region.layout, region.q
    rec_at = (lay.stripes_offset + stripe * L.STRIPE_BYTES) >> 3
    head = q[rec_at + (L.S_EVENTS_HEAD >> 3)]
    ring0 = lay.events_offset + stripe * ring
    at = head % ring
    first = min(size, ring - at)
    region.mm[ring0 + at:ring0 + at + first] = record[:first]
    if first < size:  # wraps around the end of the ring
        region.mm[ring0:ring0 + size - first] = record[first:]
    # the record is in place before the head moves past it: a reader never parses half of one
    q[rec_at + (L.S_EVENTS_HEAD >> 3)] = head + size
    q[rec_at + (L.S_EVENTS_COUNT >> 3)] += 1


class EventReader:
    """Tails every event ring of a region, from the moment it is made. One per process: each
    reader has its own position and sees every event (none is consumed)."""

    def __init__(self, cache: Cache) -> None:
        self._region = cache._region
        lay = self._region.layout
        self._rec_at = [(lay.stripes_offset + s * L.STRIPE_BYTES) >> 3
                        for s in range(lay.n_stripes)]
        self._ring = ring = lay.event_ring_bytes
        # the largest record: how far a writer may be writing ahead of the head
        self._slack = max_record_bytes(lay)
        self._ring0 = [lay.events_offset + s * ring for s in range(lay.n_stripes)]
        q = self._region.q
        self._read = [q[at + (L.S_EVENTS_HEAD >> 3)] for at in self._rec_at]  # bytes read
        # every stripe's head in one slice of q (the stripe records are evenly spaced): an
        # idle poll compares two lists, 0.15 us, instead of looking at each stripe (2.6 us;
        # the node polls at every turn of its loop)
        heads = [at + (L.S_EVENTS_HEAD >> 3) for at in self._rec_at]
        self._heads = slice(heads[0], heads[-1] + 1, L.STRIPE_BYTES >> 3)
        self._counted = [q[at + (L.S_EVENTS_COUNT >> 3)] for at in self._rec_at]
        self._lost = 0
        # told each stripe's events as they are read, and every overrun (None: nobody)
        self.observer: StripeObserver | None = None
        self._held: list[Event] = []  # read by catch_up, for the next poll

    @property
    def lost(self) -> int:
        """Events the rings overwrote before this reader got to them."""
        return self._lost

    def poll(self, max_events: int = 4096) -> list[Event]:
        """The events written since the last poll (up to about max_events); never blocks."""
        events, self._held = self._held, []
        heads, read = self._region.q[self._heads].tolist(), self._read
        if heads == read:
            return events
        for stripe, head in enumerate(heads):
            if len(events) >= max_events:
                break
            if head != read[stripe]:  # else _poll_stripe would find nothing new
                self._poll_stripe(stripe, events)
        return events

    def skip(self) -> int | None:
        """Move to the rings' heads without reading what is there, for a reader whose events
        nobody wants now (parsing them costs the node ~2 us a write); returns how many were
        passed, or None if an observer must see them (then poll instead)."""
        if self.observer is not None:
            return None
        q, passed = self._region.q, len(self._held)
        self._held = []
        heads = q[self._heads].tolist()
        if heads == self._read:
            return passed
        for stripe, at in enumerate(self._rec_at):
            count = q[at + (L.S_EVENTS_COUNT >> 3)]
            passed += max(0, count - self._counted[stripe])
            # not under the stripe's lock: a record appended since the heads were read is
            # counted here and counted again by the poll that reads it, which can only make
            # a later overrun's count of lost events short by that many
            self._counted[stripe], self._read[stripe] = count, heads[stripe]
        return passed

    def catch_up(self, stripe: int) -> None:
        """Read the stripe's ring up to its head now. Called with the stripe's lock held,
        nothing is appended meanwhile: the observer has then seen every event of the stripe
        made before the lock was taken. The events are kept for the next poll (its caller
        sees them as if that poll had read them)."""
        self._poll_stripe(stripe, self._held)

    def _poll_stripe(self, stripe: int, events: list[Event]) -> None:
        before = len(events)
        lost = self._read_stripe(stripe, events)
        observer = self.observer
        if observer is not None:
            if len(events) > before:
                observer.seen(stripe, events[before:])
            if lost:
                observer.overrun(stripe)

    def _read_stripe(self, stripe: int, events: list[Event]) -> bool:
        """Append the stripe's new events; True if some were lost (overwritten, or a record
        that does not parse)."""
        region = self._region
        q, mm = region.q, region.mm
        head_at = self._rec_at[stripe] + (L.S_EVENTS_HEAD >> 3)
        count_at = self._rec_at[stripe] + (L.S_EVENTS_COUNT >> 3)
        start, head = self._read[stripe], q[head_at]
        if head == start:
            return False
        ring = self._ring
        if head - start <= ring - self._slack:
            ring0, at = self._ring0[stripe], start % ring
            n = head - start
            first = min(n, ring - at)
            raw = mm[ring0 + at:ring0 + at + first] + mm[ring0:ring0 + n - first]
            if q[head_at] - start <= ring - self._slack:  # nobody wrote over it meanwhile
                parsed = self._parse(raw, events)
                if parsed >= 0:
                    self._read[stripe] = head
                    self._counted[stripe] += parsed
                    return False
        # overtaken (or a record that does not parse: a writer died mid-append): start again
        # at the head, and count what was skipped
        head, count = q[head_at], q[count_at]
        self._lost += max(0, count - self._counted[stripe])
        self._read[stripe], self._counted[stripe] = head, count
        return True

    def _parse(self, raw: bytes, events: list[Event]) -> int:
        """Append the events in raw; returns how many, or -1 if a record is malformed."""
        colls = self._region.colls
        pos, parsed = 0, 0
        while pos < len(raw):
            if len(raw) - pos < L.EVENT_HEADER.size:
                return -1
            size, kind, coll, klen, dlen = L.EVENT_HEADER.unpack_from(raw, pos)
            body = pos + L.EVENT_HEADER.size
            if kind not in KIND_NAMES or size < L.EVENT_HEADER.size + klen + dlen \
                    or pos + size > len(raw) or size % 8:
                return -1
            if coll >= colls.max:
                return -1
            # the record's name, read now: a collection renamed since reports its new name
            name = colls.read(coll)[2].decode("utf-8", "replace")
            events.append(Event(KIND_NAMES[kind], name, raw[body:body + klen],
                                raw[body + klen:body + klen + dlen], coll))
            pos += size
            parsed += 1
        return parsed
