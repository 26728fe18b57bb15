"""Cross-process writer locks: one per index stripe, plus the arena lock, as robust
process-shared pthread mutexes inside the region (LMDB's MDB_ROBUST design).

Why robust mutexes in the region: an uncontended lock is one atomic instruction, no syscall
(the compiled engine takes them directly; this module takes the same mutexes through ctypes,
for the pure-Python engine); a contended one sleeps in the kernel (futex) with a deadline. When
a holder dies, the kernel marks the mutex and the next locker gets EOWNERDEAD: it makes the
mutex consistent at once (unlocking it unrecovered would leave it ENOTRECOVERABLE for good)
and repairs what the dead holder left. Nothing lives outside the mapping, so nothing leaks,
can be squatted by another user, or vanishes at a reboot (SysV semaphores did all three). A
mutex whose owner vanished without the kernel seeing it die (a power loss, a reboot of a file
region) is re-initialised by the first opener once nobody has the region open (holders.py).

Lock rules, written once:
  * Readers never take a lock. They validate what they read with the stripe's seq (seqlock).
    Only a reader that finds a seq odd for long takes the stripe lock, to repair it.
  * Stripe lock i protects index sub-table i, its stripe record, the stripe's row of item
    counts, and the `expires_at_ns` of the entries whose keys hash to stripe i.
  * The arena lock protects the allocator (bins, block words), the segment lists, the header
    counters and the collection table.
  * Order: stripe -> arena. A thread holding the arena lock never waits for a stripe lock
    (it may only try one, without blocking). A thread that holds several stripe locks took
    them in increasing stripe order and waits for none lower than one it holds: rename (two
    stripes, commands.py), repair and check (every stripe, 0 up). Everyone else holds at most
    one stripe lock at a time, except by a try-acquire. So no cycle of waits can form: a
    wait for a stripe is only ever for a higher stripe than any held, and a wait for the arena
    lock comes only with no arena lock held.
  * Functions whose name ends in `_locked` expect the caller to hold the lock they need.
  * A lock belongs to the thread that took it: the same thread releases it.

A holder records its pid next to the lock right after acquiring it and clears it right before
releasing, so an acquirer that finds a pid still recorded knows that the previous holder died
inside the critical section (EOWNERDEAD says it too, but not if it died just after taking the
mutex or just before letting it go, when there is nothing to repair) and calls the region's
repair hook before going on. The recorded pid is the needs-repair mark: a compiled writer that
meets it leaves it in place and hands the call to this module, which repairs. A stripe whose
seq is odd when its lock is taken is repaired too (no live writer is between its two seq bumps
then), and so is one whose count says it holds more entries than it has slots (garbage). If
the repair hook itself fails, the lock is given back with the stale pid still recorded, so that
the next acquirer tries the repair again.

Every wait for a lock ends after lock_timeout_s with LockTimeout, naming the recorded pid; the
wait is made in slices, so that signal handlers (Ctrl-C) run meanwhile.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Callable

from . import holders
from . import layout as L
from .errors import CorruptRegion, LockTimeout

DEFAULT_LOCK_TIMEOUT_S = 5.0
WAIT_SLICE_S = 0.05  # a contended wait returns to the interpreter this often (signals)
# Fields of a stripe record, as u32 indexes from its owner_pid (a u64's low half comes first)
_SEQ_LOW = (L.S_SEQ - L.S_OWNER_PID) >> 2  # holds seq's odd bit
_COUNT = (L.S_COUNT - L.S_OWNER_PID) >> 2


# --- the pthread calls -----------------------------------------------------------------------
class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc = ctypes.CDLL(None)  # glibc >= 2.34 has the pthread functions in libc itself
_trylock = _libc.pthread_mutex_trylock
_clocklock = _libc.pthread_mutex_clocklock  # glibc >= 2.30: waits on CLOCK_MONOTONIC
_unlock = _libc.pthread_mutex_unlock
_consistent = _libc.pthread_mutex_consistent
_init = _libc.pthread_mutex_init
for _fn in (_trylock, _unlock, _consistent):
    _fn.argtypes, _fn.restype = [ctypes.c_void_p], ctypes.c_int
_clocklock.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_Timespec)]
_clocklock.restype = ctypes.c_int
_init.argtypes, _init.restype = [ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int
_CLOCK_MONOTONIC = time.CLOCK_MONOTONIC
_PTHREAD_PROCESS_SHARED = 1  # <pthread.h>
_PTHREAD_MUTEX_ROBUST = 1


def _robust_shared_attr() -> ctypes.Array:
    attr = ctypes.create_string_buffer(64)  # pthread_mutexattr_t is 4 (x86_64) to 8 bytes
    for call, arg in ((_libc.pthread_mutexattr_init, None),
                      (_libc.pthread_mutexattr_setpshared, _PTHREAD_PROCESS_SHARED),
                      (_libc.pthread_mutexattr_setrobust, _PTHREAD_MUTEX_ROBUST)):
        rc = call(attr) if arg is None else call(attr, ctypes.c_int(arg))
        if rc:
            raise OSError(rc, f"{call.__name__}: {os.strerror(rc)}")
    return attr


_ATTR = _robust_shared_attr()


def mutex_offsets(layout: L.Layout) -> list[int]:
    """Where each mutex lives: stripe 0 .. n-1, then the arena's."""
    return [layout.stripes_offset + s * L.STRIPE_BYTES + L.S_MUTEX
            for s in range(layout.n_stripes)] + [L.H_ARENA_MUTEX]


class RegionLocks:
    """The locks of one region, as one mapped handle (SharedRegion) uses them."""

    def __init__(self, mm, fd: int, u32: memoryview, layout: L.Layout, timeout_s: float,
                 on_dead_stripe_holder: Callable[[int], None],
                 on_dead_arena_holder: Callable[[], None]) -> None:
        self.timeout_s = timeout_s
        self._u32 = u32
        self._fd = fd
        self._anchor = ctypes.c_char.from_buffer(mm)  # the mapping's address (an export)
        base = ctypes.addressof(self._anchor)
        offsets = mutex_offsets(layout)
        at = [base + off for off in offsets]
        self._stripes, self._arena = at[:-1], at[-1]
        self._lock_words = [off >> 2 for off in offsets]
        self._owner_at = (layout.stripes_offset + L.S_OWNER_PID) >> 2  # + stripe * STRIPE_U32
        self._max_count = layout.slots_per_stripe
        self._arena_owner_at = L.H_ARENA_OWNER_PID >> 2
        self._record_fd = -1  # this process's own description, for record locks (holders.py)
        self._record_fd_pid = 0
        self.pid = os.getpid()
        self.arena_held = _ArenaHeld(self)  # `with locks.arena_held:` holds the arena lock
        self._on_dead_stripe_holder = on_dead_stripe_holder
        self._on_dead_arena_holder = on_dead_arena_holder

    @staticmethod
    def init_all(mm, layout: L.Layout) -> None:
        """Initialise every mutex of the region: by its creator, or by the first opener when
        nobody has it open (holders.attach returned True). Recorded owner pids are left as
        they are: the next holder of each lock repairs what a dead holder left."""
        anchor = ctypes.c_char.from_buffer(mm)
        try:
            base = ctypes.addressof(anchor)
            for off in mutex_offsets(layout):
                ctypes.memset(base + off, 0, 48)
                rc = _init(base + off, _ATTR)
                if rc:
                    raise OSError(rc, f"pthread_mutex_init: {os.strerror(rc)}")
        finally:
            del anchor

    def close(self) -> None:
        self._stripes = []
        self._anchor = None  # type: ignore[assignment]  # lets the mapping close
        if self._record_fd >= 0 and self._record_fd_pid == os.getpid():
            os.close(self._record_fd)
        self._record_fd = -1

    # --- process records (holders.py) ---------------------------------------------------
    def _records_fd(self) -> int:
        if self._record_fd_pid != os.getpid():  # first use, or a child forked from its user
            self._record_fd, self._record_fd_pid = holders.own_fd(self._fd), os.getpid()
        return self._record_fd

    def try_hold_record(self, rec: int) -> bool:
        """Take record rec's liveness lock if nobody holds it: its record is free, or its
        owner died and the kernel dropped the lock. Never waits."""
        return holders.try_hold_record(self._records_fd(), rec)

    def release_record(self, rec: int) -> None:
        holders.release_record(self._records_fd(), rec)

    def record_owner_alive(self, rec: int) -> bool:
        """Whether another process holds record rec's liveness lock (no side effect)."""
        return holders.record_held_by_another(self._records_fd(), rec)

    # --- stripes ---------------------------------------------------------------------
    def acquire_stripe(self, stripe: int) -> None:
        m = self._stripes[stripe]
        rc = _trylock(m)
        if rc == errno.EBUSY:
            rc = self._wait(m)
            if rc == errno.ETIMEDOUT:
                raise self._timeout(f"stripe {stripe}",
                                    self._u32[self._owner_at + stripe * L.STRIPE_U32])
        if rc:
            self._recover(rc, m, f"stripe {stripe}")
        self._claim_stripe(stripe)

    def try_acquire_stripe(self, stripe: int) -> bool:
        m = self._stripes[stripe]
        rc = _trylock(m)
        if rc == errno.EBUSY:
            return False
        if rc:
            self._recover(rc, m, f"stripe {stripe}")
        self._claim_stripe(stripe)
        return True

    def _claim_stripe(self, stripe: int) -> None:
        u32, at = self._u32, self._owner_at + stripe * L.STRIPE_U32
        # The previous holder left without releasing (it died), or left the stripe's seq odd
        # (died or raised between its two bumps), or the record says the stripe holds more
        # entries than it has slots (garbage). One u32 read each: every write pays them, so
        # the record's other counters are checked where they are used (writes, where a
        # version is made) or recomputed by the repair.
        if u32[at] or u32[at + _SEQ_LOW] & 1 or u32[at + _COUNT] > self._max_count:
            self._repair_or_release(self._stripes[stripe], self._on_dead_stripe_holder, stripe)
        u32[at] = self.pid

    def release_stripe(self, stripe: int) -> None:
        self._u32[self._owner_at + stripe * L.STRIPE_U32] = 0
        _unlock(self._stripes[stripe])

    def stripe_has_waiters(self, stripe: int) -> bool:
        """Whether some thread sleeps on the stripe's mutex (for tests and diagnostics: the
        FUTEX_WAITERS bit of glibc's lock word, the mutex's first u32)."""
        return bool(self._u32[self._lock_words[stripe]] & 0x80000000)

    # --- arena -----------------------------------------------------------------------
    def acquire_arena(self) -> None:
        rc = _trylock(self._arena)
        if rc == errno.EBUSY:
            rc = self._wait(self._arena)
            if rc == errno.ETIMEDOUT:
                raise self._timeout("arena", self._u32[self._arena_owner_at])
        if rc:
            self._recover(rc, self._arena, "arena")
        if self._u32[self._arena_owner_at]:
            self._repair_or_release(self._arena, self._on_dead_arena_holder)
        self._u32[self._arena_owner_at] = self.pid

    def release_arena(self) -> None:
        self._u32[self._arena_owner_at] = 0
        _unlock(self._arena)

    # --- waiting and recovering ------------------------------------------------------
    def _wait(self, m: int) -> int:
        """Wait for a busy mutex, at most timeout_s, in slices (ctypes lets other threads
        run meanwhile; between slices, signal handlers run). Returns pthread's code."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            now = time.monotonic()
            if now >= deadline:
                return errno.ETIMEDOUT
            until = min(deadline, now + WAIT_SLICE_S)
            rc = _clocklock(m, _CLOCK_MONOTONIC, _Timespec(int(until), int(until % 1 * 1e9)))
            if rc != errno.ETIMEDOUT:
                return rc

    @staticmethod
    def _recover(rc: int, m: int, what: str) -> None:
        """The lock was taken with an error code: EOWNERDEAD (its holder died; make the
        mutex consistent now, the caller repairs), or something that cannot be."""
        if rc == errno.EOWNERDEAD:
            _consistent(m)
            return
        if rc == errno.EDEADLK:
            raise LockTimeout(f"{what} lock: this thread holds it already (a lock is not "
                              "re-entrant: a bug in the caller)")
        raise CorruptRegion(f"{what} lock: pthread says {os.strerror(rc)} (error {rc}); "
                            "close every process using the region and open it again, which "
                            "re-initialises its locks")

    @staticmethod
    def _repair_or_release(m: int, repair: Callable[..., object], *args: int) -> None:
        """Run a repair hook with the lock just taken; if it fails (a region too damaged to
        repair), give the lock back before the error goes up, the stale owner pid left in place
        so that the next acquirer repairs again."""
        try:
            repair(*args)
        except BaseException:
            _unlock(m)
            raise

    def _timeout(self, what: str, owner_pid: int) -> LockTimeout:
        return LockTimeout(
            f"{what} lock not acquired within {self.timeout_s:g} s; held by pid {owner_pid or '?'}"
            ", which is alive (a dead holder's lock passes to the next locker). If it is stopped"
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
