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
the critical section, and calls the region's repair hook before going on. A stripe whose seq is
odd when its lock is taken is repaired too: no live writer is between its two seq bumps then, so
the last one stopped there (it died, or raised CorruptRegion half-way); so is one whose count
says it holds more entries than it has slots (garbage).

The pid only says *that* the holder left without releasing, never whether it is alive: the
semaphore being free is the proof of death (SEM_UNDO). So a recorded pid that now belongs to
another live process (pids are reused) is repaired after all the same, and a live holder
excludes others whatever pid its record shows. If the repair hook itself fails, the lock is
given back with the stale pid still recorded, so that the next acquirer tries the repair again
instead of finding the lock wedged.

Every wait for a lock ends after lock_timeout_s with LockTimeout, naming the recorded pid.
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import time
from collections.abc import Callable

import sysv_ipc

from . import layout as L
from .errors import LockTimeout, RegionNotFound

DEFAULT_LOCK_TIMEOUT_S = 5.0
KEY_MIN, KEY_MAX = 0x10000, 0x7FFF0000
# Fields of a stripe record, as u32 indexes from its owner_pid (a u64's low half comes first)
_SEQ_LOW = (L.S_SEQ - L.S_OWNER_PID) >> 2  # holds seq's odd bit
_COUNT = (L.S_COUNT - L.S_OWNER_PID) >> 2
_SEMAPHORES_GONE = ("the region's semaphores are gone (removed by hand, or by systemd-logind's "
                    "RemoveIPC): unlink the region and create it again")


class RegionLocks:
    """The semaphores of one region, opened by one process (one per region handle)."""

    def __init__(self, key_base: int, u32: memoryview, layout: L.Layout, timeout_s: float,
                 on_dead_stripe_holder: Callable[[int], None],
                 on_dead_arena_holder: Callable[[], None]) -> None:
        self.timeout_s = timeout_s
        self._u32 = u32
        self._owner_at = (layout.stripes_offset + L.S_OWNER_PID) >> 2  # + stripe * L.STRIPE_U32
        self._max_count = layout.slots_per_stripe
        self._arena_owner_at = L.H_ARENA_OWNER_PID >> 2
        try:
            self._sems = [_open(key_base + i) for i in range(layout.n_stripes)]
            # A second handle per stripe for try-acquires: sysv_ipc treats acquire(0) as "no
            # timeout" and blocks; a handle with block=False fails at once instead.
            self._try_sems = [_open(key_base + i, block=False) for i in range(layout.n_stripes)]
            self._arena = _open(key_base + layout.n_stripes)
            self._try_arena = _open(key_base + layout.n_stripes, block=False)
        except sysv_ipc.ExistentialError:
            raise RegionNotFound(_SEMAPHORES_GONE) from None
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

    @staticmethod
    def probe(key: int) -> tuple[int, int, int] | None:
        """(id, value, processes waiting) of the semaphore set under key, or None if there is
        none (for gc.py, which judges sets by what they are, never by waiting on them)."""
        try:
            sem = sysv_ipc.Semaphore(key)
        except sysv_ipc.ExistentialError:
            return None
        return sem.id, sem.value, sem.waiting_for_nonzero + sem.waiting_for_zero

    @staticmethod
    def remove_by_id(sem_id: int) -> None:
        """Remove a semaphore set by id: unlike a key, an id is not given to the next set made
        under the same key, so what gc judged is what goes. Gone already is fine."""
        try:
            sysv_ipc.remove_semaphore(sem_id)
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
            self._try_sems[stripe].acquire()  # a free lock: one semop, like any acquire
        except sysv_ipc.BusyError:
            if not _wait(self._sems[stripe].id, self.timeout_s):
                raise self._timeout(f"stripe {stripe}",
                                    self._u32[self._owner_at + stripe * L.STRIPE_U32]) from None
        self._claim_stripe(stripe)

    def try_acquire_stripe(self, stripe: int) -> bool:
        try:
            self._try_sems[stripe].acquire()
        except sysv_ipc.BusyError:
            return False
        self._claim_stripe(stripe)
        return True

    def _claim_stripe(self, stripe: int) -> None:
        u32, at = self._u32, self._owner_at + stripe * L.STRIPE_U32
        # The previous holder left without releasing (the kernel released it for the dead), or
        # left the stripe's seq odd (died or raised between its two bumps), or the record says
        # the stripe holds more entries than it has slots (garbage). One u32 read each: every
        # write pays them, so the record's other counters are checked where they are used
        # (writes, where a version is made) or recomputed by the repair.
        if u32[at] or u32[at + _SEQ_LOW] & 1 or u32[at + _COUNT] > self._max_count:
            self._repair_or_release(self._sems[stripe], self._on_dead_stripe_holder, stripe)
        u32[at] = self.pid

    def release_stripe(self, stripe: int) -> None:
        self._u32[self._owner_at + stripe * L.STRIPE_U32] = 0
        self._sems[stripe].release()

    # --- arena -----------------------------------------------------------------------
    def acquire_arena(self) -> None:
        try:
            self._try_arena.acquire()
        except sysv_ipc.BusyError:
            if not _wait(self._arena.id, self.timeout_s):
                raise self._timeout("arena", self._u32[self._arena_owner_at]) from None
        if self._u32[self._arena_owner_at]:
            self._repair_or_release(self._arena, self._on_dead_arena_holder)
        self._u32[self._arena_owner_at] = self.pid

    def release_arena(self) -> None:
        self._u32[self._arena_owner_at] = 0
        self._arena.release()

    @staticmethod
    def _repair_or_release(sem: sysv_ipc.Semaphore, repair: Callable[..., object],
                           *args: int) -> None:
        """Run a repair hook with the lock just taken; if it fails (a region too damaged to
        repair), give the lock back before the error goes up, the stale owner pid left in place
        so that the next acquirer repairs again."""
        try:
            repair(*args)
        except BaseException:
            sem.release()
            raise

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


# --- waiting with a timeout ------------------------------------------------------------------
# sysv_ipc's wheels are built without semtimedop (SEMAPHORE_TIMEOUT_SUPPORTED is False): their
# acquire(timeout) ignores the timeout and waits forever, so a holder that is stopped or stuck
# would hang every writer. A lock that is busy is waited for here instead, with semtimedop
# through ctypes (which lets other threads run meanwhile); a free one costs one semop as before.
class _SemBuf(ctypes.Structure):
    _fields_ = [("sem_num", ctypes.c_ushort), ("sem_op", ctypes.c_short),
                ("sem_flg", ctypes.c_short)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_SEM_UNDO = 0x1000  # <sys/sem.h>: the kernel gives it back if we die holding it
_TAKE = _SemBuf(0, -1, _SEM_UNDO)
_semtimedop = ctypes.CDLL(None, use_errno=True).semtimedop
_semtimedop.argtypes = [ctypes.c_int, ctypes.POINTER(_SemBuf), ctypes.c_size_t,
                        ctypes.POINTER(_Timespec)]
_semtimedop.restype = ctypes.c_int


def _wait(sem_id: int, timeout_s: float) -> bool:
    """Take the semaphore sem_id, waiting at most timeout_s; False if that was not enough."""
    deadline = time.monotonic() + timeout_s
    while (left_s := deadline - time.monotonic()) > 0:
        timeout = _Timespec(int(left_s), int(left_s % 1 * 1e9))
        if not _semtimedop(sem_id, ctypes.byref(_TAKE), 1, ctypes.byref(timeout)):
            return True
        code = ctypes.get_errno()
        if code == errno.EAGAIN:
            return False
        if code != errno.EINTR:  # EIDRM, EINVAL: removed while we waited
            raise RegionNotFound(_SEMAPHORES_GONE)
        # EINTR: a signal; its Python handler runs when we get back to the interpreter loop
    return False


def _open(key: int, block: bool = True) -> sysv_ipc.Semaphore:
    sem = sysv_ipc.Semaphore(key)
    sem.undo = True  # the kernel reverts our operations if we die holding it
    sem.block = block
    return sem
