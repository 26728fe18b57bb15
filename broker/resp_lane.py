"""The RESP door's read lane: the connections that only read, served by a thread in C
(shmkv/_core_src/resp_lane.c) instead of the node's poll loop.

A GET through the loop cost the node ~25 us of CPU in user space on the test VM, Redis ~3:
the loop's Python and zmq_poll's passes over the ZeroMQ sockets, for every request. In the
lane it costs ~5-8: an epoll_wait, a recv, the answer in C with the GIL (taken once for all
the connections of a round) and a send (bench/README.md, "The Redis-protocol door").

The door hands a connection over (adopt) once LANE_AFTER_READS reads in a row were plain GETs
and MGETs answered in C (resp_door.py's compiled path) and its state is the plainest: db 0,
authenticated, no subscription, nothing parked or queued, not TLS, no partial request. It
comes back (take_back, when the loop sees back_fd readable) with the bytes the lane did not
answer and the replies the socket did not take, in order, when it sends anything else, when
anything of the node is parked on a lock, when its socket is full, or when it closes; the door
then runs those bytes as if it had read them. Handing over costs system calls both ways
(epoll_ctl, an eventfd, the poller's registration), so a connection that mixes writes in
stays with the door: its count starts again at every other read. SHMKV_RESP_LANE=0 in the
node's environment turns the lane off (the door answers every connection itself, as
bench/bench_resp.py compares).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import shmkv
from shmkv import backend
from shmkv.arrays import ARRAY_MAGIC
from shmkv.errors import LockTimeout

from .waits import TRY_LOCK_S

if TYPE_CHECKING:
    from .resp_door import Session

ENVIRONMENT = "SHMKV_RESP_LANE"
# Reads in a row answered in C before a connection moves to the lane: a client that only reads
# gets there at once, one that writes now and then is not moved back and forth.
LANE_AFTER_READS = 8
# How often the lane's hits and misses are added to the region's counters (a handle's reach it
# when it writes, asks for stats or closes: the lane's does none of those while it serves)
COUNTS_EVERY_S = 1.0


class ReadLane:
    """The lane's thread, on a handle of its own (nothing else uses its reader)."""

    def __init__(self, region: str, owner: str | None, max_value_bytes: int,
                 parked: list[Any]) -> None:
        # the arena lock it takes to add its counts is only tried (count()): a local process
        # stopped while holding it must not stall the node's loop
        self._handle = shmkv.Cache.open(region, owner=owner, lock_timeout_s=TRY_LOCK_S)
        try:
            pair = self._handle.compiled_pair()
            assert pair is not None and backend.RespLane is not None  # lane_for checked
            self._lane = backend.RespLane(reader=pair[0], max_value_bytes=max_value_bytes,
                                          array_magic=ARRAY_MAGIC, parked=parked)
            self._lane.start()
        except BaseException:
            self._handle.close()
            raise
        self.fd: int = self._lane.back_fd
        self.sessions = 0  # connections in the lane now
        self._counted_s = time.monotonic()

    @property
    def commands(self) -> int:
        return self._lane.commands  # type: ignore[no-any-return]

    def adopt(self, s: Session) -> None:
        """Serve s here until it comes back (the caller has stopped polling it)."""
        self._lane.adopt(s.fd, s.resp3)
        s.in_lane = True
        self.sessions += 1

    def count(self, now_s: float | None = None) -> None:
        """Add the lane's hits and misses to the region's counters: now (now_s None), or if
        COUNTS_EVERY_S have passed since the last time."""
        if now_s is None or now_s - self._counted_s >= COUNTS_EVERY_S:
            self._counted_s = time.monotonic()
            try:
                self._handle.stats()  # which adds them
            except LockTimeout:  # the arena lock is busy: they wait in the reader till next time
                pass

    def take_back(self) -> list[tuple[int, bytes, bytes, bool]]:
        """(fd, unread bytes, unsent replies, closed) of each connection handed back."""
        back = self._lane.take_back()
        self.sessions -= len(back)
        return back  # type: ignore[no-any-return]

    def close(self) -> list[tuple[int, bytes, bytes, bool]]:
        """Stop the thread; every connection it had, as take_back gives them."""
        self._lane.stop()
        back = self.take_back()
        self._handle.close()
        return back


def lane_for(region: str, owner: str | None, max_value_bytes: int,
             parked: list[Any]) -> ReadLane | None:
    """The door's read lane, or None with SHMKV_RESP_LANE=0 or the pure engine. The door asks
    only where its compiled path runs (not over TLS, nor with --min-replicas-to-write)."""
    if backend.RespLane is None or os.environ.get(ENVIRONMENT, "1") == "0":
        return None
    return ReadLane(region, owner, max_value_bytes, parked)
