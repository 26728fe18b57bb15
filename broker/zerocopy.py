"""Zero-copy sends of large values by the ZeroMQ door: the reply to a get, get_with_version or
get_array of a value of at least ZERO_COPY_MIN_BYTES carries the value's bytes (an array's
data) straight from the arena, pinned (shmkv/views.py's PinnedValue), instead of a copy.

Why: a get of a 64 MiB value copied it into a new bytes object (a fresh 64 MiB allocation, its
page faults, and a memcpy) before libzmq wrote it out. A pinned value's block stays unchanged
until the pin goes, whatever other processes do to the key (an overwrite goes to a new block,
a delete retires the block: pins.py), so libzmq can write it from the arena itself.

The pin's lifetime. A reply frame that is a `Lent` (what `ZeroCopy.get` returns) is sent by
router.send_or_drop with copy=False and track=True: pyzmq gives libzmq the pointer, and keeps
a reference to the memoryview in its garbage collector's table until libzmq is done with the
message. libzmq frees a message from its I/O thread (sent, or dropped: its client disconnected,
the socket closed), which tells pyzmq's collector thread (zmq/utils/garbage.py), which sets the
send's MessageTracker and drops its reference to the memoryview. Nothing of ours runs on those
threads: the node's loop owns every Lent until it closes it itself, in `drain`, once its
tracker says done. The pure-Python unpin is several Python steps over PinTable._free, which the
loop's next pin pops from (the compiled one is atomic under the GIL, but its after_unpin may
sweep under the arena lock): run from a foreign thread it could race them. The collector
thread's late drop of the memoryview is harmless: it was released by then, and holds no pin.

    step                                  thread           the Lent (in ZeroCopy._lent)
    get handler (dispatch.py)             the node's loop  pinned, no tracker yet (a get
                                                           retried after a busy lock waits
                                                           for the others retried with it)
    router.send_or_drop                   the node's loop  handed to libzmq, its tracker
                                                           noted; a reply dropped (client
                                                           gone, queue full): marked done
    libzmq frees the message              libzmq I/O       -
    pyzmq's collector sets the tracker    pyzmq gc         -
    drain (each get, and periodically:    the node's loop  closed once its tracker is done
    maintenance, a worker's report)
    close (the node stops, after its      the node's loop  every one closed (its context is
    ZeroMQ context is destroyed)                           destroyed: libzmq has let go of
                                                           every message)

The node's own handles close before its context is destroyed: the region then stays mapped
while a pin is held, and the last pin dropped by `close` finishes its close (pins.py), so the
region is flushed and marked clean as after any stop.

Limits: at most MAX_OUTSTANDING values are lent at a time (a process has PINS_PER_PROC pin
slots for all its views); past that, or when the pin finds its stripe lock busy (the get
then reads lock-free, as always), or the value is smaller than the threshold or an array,
the get copies as before. So do the gets of a batch (batches.py packs its replies into one
frame) and the RESP door's GET: only the ZeroMQ door's single requests are lent. A get of a
missing key reads it lock-free, so that misses are counted; one served from a pin adds its hit
to the region's counter itself, as a handle adds its reads' (views count none).

The threshold. A value of ZERO_COPY_MIN_BYTES or more is sent from its pin. Below pyzmq's
copy_threshold (64 KiB) pyzmq copies anyway; the default is measured by
bench/bench_large_values.py (bench/results/large-values-*.md, the project's 2-CPU VM): a node
idle between gets sent 256 KiB to 1 MiB in 0.55-0.8x the copying node's time and 64 MiB in
0.5-0.7x; gets back to back, whose copies reuse a warm block, took 1.03-1.06x up to 1 MiB
(about the noise) and 0.47x at 64 MiB; at 64 KiB it lost (1.15x back to back).
A get on the ZeroMQ door reads lock-free as always (the reader's get_below), which copies a
value below the threshold and gives a larger one's length instead: only large values are
pinned (a pin takes the stripe's lock), and a small get costs what it did. A value that
changed between the two reads is read again, copied: its hit may then be counted twice.
SHMKV_ZERO_COPY_MIN_BYTES in the node's environment sets the threshold in bytes; 0 turns
zero-copy sends off (every get is read lock-free and copied, as before).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from numpy.lib import format as npy_format

from shmkv import arrays
from shmkv import layout as L
from shmkv.errors import LockTimeout, ShmKVError, TooManyViews
from shmkv.views import PinnedValue, pin_value

if TYPE_CHECKING:
    import zmq

    from shmkv import Cache

# bench/results/large-values-*.md: from here zero-copy never lost beyond the noise, and won
# (0.6x) when the node was idle between gets; below it, it lost back to back (64 KiB: 1.1x)
ZERO_COPY_MIN_BYTES = 256 << 10
ENVIRONMENT = "SHMKV_ZERO_COPY_MIN_BYTES"
# Values lent at once, of the PINS_PER_PROC (124) pin slots of the requests' handle: a client
# holds at most router.SEND_HWM replies queued, so this many are in flight only with several
# slow readers of large values; past it the node copies, as it did.
MAX_OUTSTANDING = 64
# The key of a request's fields under which the door hands the get handler its ZeroCopy: an
# object, not a string, so that no header read off the wire can hold it.
LEND = object()
LENDING_OPS = frozenset({"get", "get_with_version", "get_array"})


class _Dropped:
    """The tracker of a value whose reply was dropped: libzmq never had it."""

    done = True


class Lent:
    """A reply frame that is a pinned value: router.send_or_drop sends `mv` without a copy
    and gives back the tracker (sent()), or drops its reply (dropped()); the ZeroCopy that
    lent it closes it once the tracker is done. Until then (no tracker yet: its reply is not
    sent yet, maybe waiting for the other requests retried with it, waits.py) it stays."""

    __slots__ = ("value", "mv", "tracker")

    def __init__(self, value: PinnedValue) -> None:
        self.value = value
        self.mv = value.mv
        self.tracker: zmq.MessageTracker | _Dropped | None = None

    def sent(self, tracker: zmq.MessageTracker) -> None:
        self.tracker = tracker

    def dropped(self) -> None:
        self.tracker = _DROPPED


_DROPPED = _Dropped()


class ZeroCopy:
    """The values lent by one node process (see the module's docstring)."""

    def __init__(self, min_bytes: int = ZERO_COPY_MIN_BYTES,
                 max_outstanding: int = MAX_OUTSTANDING) -> None:
        self.min_bytes = min_bytes  # 0: off
        # the ops whose requests the door hands to get() (none while off)
        self.ops = LENDING_OPS if min_bytes else frozenset()
        self.max_outstanding = max_outstanding
        self._lent: list[Lent] = []  # pending and in flight, in the order lent
        self._unreleased: list[PinnedValue] = []  # closes refused (BufferError): again later
        self.sends = 0  # values sent from a pin, for the curious (tests, benches)
        self._hits = 0  # hits not added to the region's counter yet (its lock was busy)

    @property
    def outstanding(self) -> int:
        return len(self._lent) + len(self._unreleased)

    def get(self, c: Cache, key: Any, versioned: bool) -> tuple[Any, list[Any]]:
        """dispatch.py's result for get (versioned: get_with_version) of key (bytes or a
        buffer): read lock-free and copied, as always, unless the value is large; then lent
        from a pin if it can be (it is copied otherwise)."""
        found = c._reader.get_below(key, self.min_bytes, versioned)  # counts the hit or miss
        if type(found) is int:  # large: its length, not a copy
            value = self._pin(c, key if type(key) is bytes else bytes(key), versioned)
            if value is not None:
                if value.kind & L.KIND_MASK == L.KIND_BYTES:  # type: ignore[operator]
                    lent = self._lend(c, value, count_hit=False)
                    return (value.version, [lent]) if versioned else (True, [lent])
                self._close(value)  # an array: get answers it as before
            # changed since, or no pin to be had: a copy, as before (a second read, counted)
            found = c.get_with_version(key) if versioned else c.get(key)
        if versioned:
            return (None, []) if found is None else (found[1], [found[0]])
        return (True, [found]) if found is not None else (False, [])

    def get_array(self, c: Cache, key: bytes) -> tuple[Any, list[Any]] | None:
        """dispatch.py's result for get_array of key if its data is lent; None: as before."""
        value = self._pin(c, key, False)
        if value is None:
            return None
        try:
            if value.kind & L.KIND_MASK != L.KIND_ARRAY:  # type: ignore[operator]
                raise TypeError("not an array")
            dtype, shape, data_offset = arrays.decode(value.mv)  # type: ignore[arg-type]
        except TypeError:  # get_array's error, as before
            self._close(value)
            return None
        # the data alone: the pin's view narrowed (close() releases the narrower one)
        whole, value.mv = value.mv, value.mv[data_offset:]  # type: ignore[index]
        whole.release()  # type: ignore[union-attr]
        fields = {"dtype": npy_format.dtype_to_descr(dtype), "shape": list(shape)}
        return fields, [self._lend(c, value)]

    def _pin(self, c: Cache, key: bytes, versioned: bool) -> PinnedValue | None:
        """key's value pinned, if it is large and the node may lend one more."""
        if self._lent or self._unreleased:
            self.drain()
        if len(self._lent) + len(self._unreleased) >= self.max_outstanding:
            return None
        try:
            return pin_value(c, key, self.min_bytes, versioned)
        except KeyError:
            return None  # read lock-free as before: counted as a miss
        except (LockTimeout, TooManyViews):
            return None  # a stopped holder of the stripe lock: gets never wait for one

    def _lend(self, c: Cache, value: PinnedValue, count_hit: bool = True) -> Lent:
        lent = Lent(value)
        self._lent.append(lent)
        self.sends += 1
        if not count_hit:  # get_below counted it, as a handle counts its reads
            return lent
        self._hits += 1
        try:  # a hit, as the region counts a handle's reads (upkeep.py), under the arena lock
            with c._locks.arena_held:
                c._q[L.H_HITS >> 3] += self._hits
            self._hits = 0
        except ShmKVError:  # held by a stopped process: added with the next one
            pass
        return lent

    def drain(self) -> int:
        """Close what libzmq is done with, and what it was never handed (its reply was
        dropped); returns how many are still lent."""
        kept: list[Lent] = []
        for lent in self._lent:
            tracker = lent.tracker
            if tracker is not None and tracker.done:
                self._close(lent.value)
            else:
                kept.append(lent)
        self._lent = kept
        if self._unreleased:
            self._unreleased = [v for v in self._unreleased if not v.close()]
        return self.outstanding

    def close(self) -> None:
        """Close every value lent: only once libzmq has let go of them all (the node's
        ZeroMQ context is destroyed)."""
        lent, self._lent = self._lent, []
        for one in lent:
            self._close(one.value)
        self._unreleased = [v for v in self._unreleased if not v.close()]

    def _close(self, value: PinnedValue) -> None:
        try:
            if not value.close():
                self._unreleased.append(value)
        except ShmKVError:  # a sweep that found the arena lock busy: the pin is gone anyway
            pass


    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> ZeroCopy:
        """The node's, as SHMKV_ZERO_COPY_MIN_BYTES says (unset: ZERO_COPY_MIN_BYTES)."""
        text = environ.get(ENVIRONMENT, "").strip()
        try:
            min_bytes = int(text) if text else ZERO_COPY_MIN_BYTES
        except ValueError:
            min_bytes = -1
        if min_bytes < 0:
            raise ShmKVError(f"{ENVIRONMENT}={text!r} is not a number of bytes: give the "
                             "smallest value to send without a copy, or 0 to copy every value")
        return cls(min_bytes)
