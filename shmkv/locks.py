"""Cross-process writer locks: one per index stripe, plus the arena lock.

Why SysV semaphores with SEM_UNDO: the kernel reverts the semaphore operations of a process
when it dies, so a writer SIGKILLed while holding a lock never wedges anyone: the next waiter
gets the lock at once. posix_ipc semaphores are faster (a pair costs ~300 ns here against
~1,050 ns; measured in one run on this project's VM) but stay taken forever when their holder
dies, and a waiter cannot take one over safely: a holder killed between sem_wait and recording
itself is indistinguishable from a live one in that window. fcntl record locks are released too,
but cost more still and do not exclude threads of one process.

Lock rules, written once:
  * Readers never take a lock. They validate what they read with the stripe's seq (seqlock).
    Only a reader that finds a seq odd for long takes the stripe lock, to repair it.
  * Stripe lock i protects index sub-table i, its stripe record, and the `expires_at_ns` of the
    entries whose keys hash to stripe i.
  * The arena lock protects the allocator (bins, block words), the segment lists, the header
    counters and the collection table.
  * Order: stripe -> arena. A thread holding the arena lock never waits for a stripe lock
    (it may only try one, without blocking). At most one stripe lock is held at a time, except
    by a try-acquire.
  * Functions whose name ends in `_locked` expect the caller to hold the lock they need.

Besides the locks, each process record (layout.py) has a semaphore that its owner holds for as
long as it has the region open: a liveness token, never waited for (see pins.py).

A holder records its pid next to the lock right after acquiring it and clears it right before
releasing. So an acquirer that finds a pid still recorded knows the previous holder died inside
the critical section, and calls the region's repair hook before going on.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import sysv_ipc

from . import layout as L
from .errors import LockTimeout, RegionNotFound

DEFAULT_LOCK_TIMEOUT_S = 5.0
KEY_MIN, KEY_MAX = 0x10000, 0x7FFF0000


class RegionLocks:
    """The semaphores of one region, opened by one process (one per region handle)."""

    def __init__(self, key_base: int, u32: memoryview, layout: L.Layout, timeout_s: float,
                 on_dead_stripe_holder: Callable[[int], None],
                 on_dead_arena_holder: Callable[[], None]) -> None:
        self.timeout_s = timeout_s
        self._u32 = u32
        self._owner_at = (layout.stripes_offset + L.S_OWNER_PID) >> 2  # + stripe * 16
        self._arena_owner_at = L.H_ARENA_OWNER_PID >> 2
        try:
            self._sems = [_open(key_base + i) for i in range(layout.n_stripes)]
            # A second handle per stripe for try-acquires: sysv_ipc treats acquire(0) as "no
            # timeout" and blocks; a handle with block=False fails at once instead.
            self._try_sems = [_open(key_base + i, block=False) for i in range(layout.n_stripes)]
            self._arena = _open(key_base + layout.n_stripes)
        except sysv_ipc.ExistentialError:
            raise RegionNotFound(
                "the region's semaphores are gone (removed by hand, or by systemd-logind's "
                "RemoveIPC): unlink the region and create it again"
            ) from None
        self._record_key0 = key_base + layout.n_stripes + 1
        self._record_sems: dict[int, sysv_ipc.Semaphore] = {}
        self.pid = os.getpid()
        self.arena_held = _ArenaHeld(self)  # `with locks.arena_held:` holds the arena lock
        self._on_dead_stripe_holder = on_dead_stripe_holder
        self._on_dead_arena_holder = on_dead_arena_holder

    @staticmethod
    def count(layout: L.Layout) -> int:
        """How many semaphores a region has: one per stripe, the arena's, one per record."""
        return layout.n_stripes + 1 + layout.max_procs

    @staticmethod
    def create_all(count: int, mode: int) -> int:
        """Make `count` fresh semaphores under consecutive keys; returns the first key."""
        for _ in range(100):
            base = random.randrange(KEY_MIN, KEY_MAX - count)
            made = []
            try:
                for i in range(count):
                    made.append(sysv_ipc.Semaphore(base + i, sysv_ipc.IPC_CREX, mode=mode,
                                                   initial_value=1))
                return base
            except sysv_ipc.ExistentialError:  # a key in use: give them back, try elsewhere
                for sem in made:
                    sem.remove()
        raise RuntimeError("no free run of SysV semaphore keys found")

    @staticmethod
    def remove_all(key_base: int, count: int) -> None:
        for key in range(key_base, key_base + count):
            try:
                sysv_ipc.Semaphore(key).remove()
            except sysv_ipc.ExistentialError:
                pass

    def close(self) -> None:
        self._sems = self._try_sems = []
        self._record_sems = {}

    # --- process records -------------------------------------------------------------
    def try_hold_record(self, rec: int) -> bool:
        """Take record rec's liveness semaphore if nobody holds it: its record is free, or
        its owner died and the kernel gave the semaphore back. Never waits."""
        sem = self._record_sems.get(rec)
        if sem is None:
            sem = self._record_sems[rec] = _open(self._record_key0 + rec, block=False)
        try:
            sem.acquire()
        except sysv_ipc.BusyError:
            return False
        return True

    def release_record(self, rec: int) -> None:
        self._record_sems[rec].release()

    # --- stripes ---------------------------------------------------------------------
    def acquire_stripe(self, stripe: int) -> None:
        try:
            self._sems[stripe].acquire(self.timeout_s)
        except sysv_ipc.BusyError:
            raise self._timeout(f"stripe {stripe}", self._u32[self._owner_at + stripe * 16]) \
                from None
        self._claim_stripe(stripe)

    def try_acquire_stripe(self, stripe: int) -> bool:
        try:
            self._try_sems[stripe].acquire()
        except sysv_ipc.BusyError:
            return False
        self._claim_stripe(stripe)
        return True

    def _claim_stripe(self, stripe: int) -> None:
        at = self._owner_at + stripe * 16
        if self._u32[at]:  # the previous holder died holding it (the kernel released it)
            self._on_dead_stripe_holder(stripe)
        self._u32[at] = self.pid

    def release_stripe(self, stripe: int) -> None:
        self._u32[self._owner_at + stripe * 16] = 0
        self._sems[stripe].release()

    # --- arena -----------------------------------------------------------------------
    def acquire_arena(self) -> None:
        try:
            self._arena.acquire(self.timeout_s)
        except sysv_ipc.BusyError:
            raise self._timeout("arena", self._u32[self._arena_owner_at]) from None
        if self._u32[self._arena_owner_at]:
            self._on_dead_arena_holder()
        self._u32[self._arena_owner_at] = self.pid

    def release_arena(self) -> None:
        self._u32[self._arena_owner_at] = 0
        self._arena.release()

    def _timeout(self, what: str, owner_pid: int) -> LockTimeout:
        return LockTimeout(
            f"{what} lock not acquired within {self.timeout_s:g} s; held by pid {owner_pid or '?'}"
            ", which is alive (a dead holder's lock is released by the kernel). If it is stopped"
            " or stuck, stop it; if it is just busy, raise lock_timeout_s"
        )


class _ArenaHeld:
    """A reusable context manager for the arena lock; it keeps no state, so threads can share
    it."""

    __slots__ = ("_locks",)

    def __init__(self, locks: RegionLocks) -> None:
        self._locks = locks

    def __enter__(self) -> None:
        self._locks.acquire_arena()

    def __exit__(self, *exc: object) -> None:
        self._locks.release_arena()


def _open(key: int, block: bool = True) -> sysv_ipc.Semaphore:
    sem = sysv_ipc.Semaphore(key)
    sem.undo = True  # the kernel reverts our operations if we die holding it
    sem.block = block
    return sem
