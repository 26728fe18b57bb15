"""Who has a region open, as the kernel knows it: open-file-description (OFD) locks on the
region's file or /dev/shm object.

A lock in the region (locks.py) belongs to a thread and says nothing about the process, and a
pid means nothing once the process is gone (pids are reused, and differ across pid
namespaces). An OFD lock belongs to an open file description: the kernel drops it when the last
descriptor of it closes, however the process ends (SIGKILL included). So:

  * every handle (every Mapping) holds a shared lock on HOLDERS for its whole life: an opener
    that can take HOLDERS exclusively knows that nobody else has the region open (after a
    reboot, or once every process that had it died), and it alone re-initialises the region's
    mutexes (a mutex whose owner vanished without the kernel seeing it die, as at a power
    loss, would otherwise stay locked for good);
  * the owner of process record p holds RECORD(p) exclusively: "can I take it?" is an exact
    test of "is its owner gone?" (pins.py). It holds it through a descriptor of its own
    (`own_fd`), so that a forked child, which inherits its parent's descriptors and thereby
    its parent's locks, does not pass for its parent.
  * every handle that wants keyspace events (Cache.enable_events, the node while it runs)
    holds a shared lock on EVENTS, through a description of its own: the header's
    events_enabled word is "does anyone hold EVENTS?", recomputed by whoever starts or stops
    wanting them and by maintain(), so a SIGKILLed holder's share goes with it (events.py).

Byte ranges locked (nothing else locks these bytes; the data is never locked):

    offset   lock       who
    0        INIT       exclusive, briefly: an opener deciding whether it is alone and, if
                        so, initialising the mutexes (and recovering the region, recovery.py)
                        before anyone else attaches; or the last handle closing, while it
                        marks the region clean
    1        HOLDERS    shared, by every handle for as long as it has the region mapped
    2 + p    RECORD(p)  exclusive, by the owner of process record p (p < max_procs <= 65535)
    2**24    EVENTS     shared, by every handle that wants keyspace events; far past the
                        RECORD range so that no max_procs can reach it

Locks of one open file description never conflict with each other (a second lock on the same
bytes replaces the first), so every probe of another's lock is made from a different
description than the one that would hold it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time

from .errors import LockTimeout

INIT, HOLDERS, RECORD0 = 0, 1, 2
EVENTS = 1 << 24
# struct flock (x86_64 and aarch64): l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks)
_FLOCK = struct.Struct("hhqqi4x")
_BUSY = (errno.EAGAIN, errno.EACCES)
_INIT_POLL_S = 0.001


def _set(fd: int, kind: int, start: int) -> bool:
    """Take (or, with F_UNLCK, drop) a lock on one byte; False if another holds it."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, start, 1, 0))
    except OSError as exc:
        if exc.errno in _BUSY:
            return False
        raise
    return True


def _held_by_another(fd: int, kind: int, start: int) -> bool:
    got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _FLOCK.pack(kind, os.SEEK_SET, start, 1, 0))
    return _FLOCK.unpack(got)[0] != fcntl.F_UNLCK


def attach(fd: int, timeout_s: float) -> bool:
    """Register the handle of fd as a holder. True if it is the only one: the caller then
    holds INIT and HOLDERS exclusively, must initialise what a first opener initialises, and
    must call `attached(fd)`; nobody else can attach meanwhile. False: others have the
    region open, and this handle holds its shared lock already."""
    deadline = time.monotonic() + timeout_s
    while not _set(fd, fcntl.F_WRLCK, INIT):
        if time.monotonic() > deadline:
            raise LockTimeout(f"another process kept the region's INIT lock for {timeout_s:g} s"
                              " (it is initialising the region, or is stopped there)")
        time.sleep(_INIT_POLL_S)
    try:
        if _set(fd, fcntl.F_WRLCK, HOLDERS):
            return True
        if not _set(fd, fcntl.F_RDLCK, HOLDERS):  # only an INIT holder holds it exclusively
            raise OSError(errno.EDEADLK, "the region's HOLDERS lock is held exclusively by a "
                                         "process that does not hold INIT")
    except BaseException:
        _set(fd, fcntl.F_UNLCK, INIT)
        raise
    _set(fd, fcntl.F_UNLCK, INIT)
    return False


def attached(fd: int) -> None:
    """The first opener is done initialising: share HOLDERS, let others attach."""
    _set(fd, fcntl.F_RDLCK, HOLDERS)  # replaces our exclusive lock in one step
    _set(fd, fcntl.F_UNLCK, INIT)


def hold_in_child(fd: int) -> int:
    """For a forked child that inherited a handle: a description of its own holding HOLDERS
    shared, returned (close it when the handle closes). The inherited description's lock is
    the parent's too, so without this neither could tell that the other still has the region
    open. It cannot fail: the parent's shared lock keeps anyone from holding it exclusively."""
    mine = own_fd(fd)
    _set(mine, fcntl.F_RDLCK, HOLDERS)
    return mine


def try_last(fd: int) -> bool:
    """For a handle about to close: True if it is the last one anywhere, and then nobody can
    attach until `release_last(fd)` (or the close of fd): it holds INIT and HOLDERS
    exclusively. False, holding nothing more, if others have the region open or are opening
    it. Never waits."""
    if not _set(fd, fcntl.F_WRLCK, INIT):
        return False
    if _set(fd, fcntl.F_WRLCK, HOLDERS):
        return True
    _set(fd, fcntl.F_UNLCK, INIT)
    return False


release_last = attached  # the same two steps: share HOLDERS again, let openers in


def others_attached(fd: int) -> bool:
    """Whether any handle but those of fd's description has the region open."""
    return _held_by_another(fd, fcntl.F_WRLCK, HOLDERS)


def own_fd(fd: int) -> int:
    """A new open file description of the same file, for locks that must be this process's
    alone (not shared with a parent or a child through inherited descriptors)."""
    return os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)


def try_hold_record(fd: int, rec: int) -> bool:
    """Take record rec's lock if nobody holds it (its owner is gone, or it was free)."""
    return _set(fd, fcntl.F_WRLCK, RECORD0 + rec)


def release_record(fd: int, rec: int) -> None:
    _set(fd, fcntl.F_UNLCK, RECORD0 + rec)


def record_held_by_another(fd: int, rec: int) -> bool:
    """Whether some other description (a live owner) holds record rec; no side effect."""
    return _held_by_another(fd, fcntl.F_WRLCK, RECORD0 + rec)


def hold_events(fd: int) -> None:
    """Register fd's description as wanting keyspace events (shared: never refused)."""
    if not _set(fd, fcntl.F_RDLCK, EVENTS):
        raise OSError(errno.EDEADLK, "the region's EVENTS lock is held exclusively")


def events_wanted(fd: int) -> bool:
    """Whether any description other than fd's holds EVENTS: a live handle wants events."""
    return _held_by_another(fd, fcntl.F_WRLCK, EVENTS)
