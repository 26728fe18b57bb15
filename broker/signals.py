"""The node's signals (used by the node's loop, server.py, and by each worker, worker.py).

SIGTERM and SIGINT stop the node, SIGHUP asks it to reload; their handlers only record the
signal, and signal.set_wakeup_fd() makes a socket the loop's poller watches readable, which
ends its sleep. The loop acts on what was recorded between two requests, so a request the
node has received is always answered before it stops, and a reload never interrupts one.

The signals stay deliverable all the time: a handler runs in the main thread between two
bytecodes and does nothing else, and the system call a signal interrupts is retried (by
Python since PEP 475, by pyzmq for libzmq's calls; a region lock is a pthread mutex, whose
waits never fail with EINTR). Blocking them outside the poll, as the node once did for locks
that were semaphores (semop(2) fails with EINTR after a handler), cost two sigprocmask calls
and ~3k instructions a wake-up (bench/README.md).
"""

from __future__ import annotations

import math
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import zmq
from zmq.backend import zmq_poll

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# SIGHUP: read the CurveZMQ allow-list again (auth.py). Handled as the stop signals are.
RELOAD_SIGNAL = signal.SIGHUP
HANDLED_SIGNALS = (*STOP_SIGNALS, RELOAD_SIGNAL)


class StopSignals:
    """SIGTERM/SIGINT as a flag and a readable socket; SIGHUP the same way, as a request to
    reload (take_reload())."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._reloads = 0  # SIGHUPs recorded and not yet taken
        self.wakeup, self._wakeup_w = socket.socketpair()
        self.wakeup_fd = self.wakeup.fileno()

    def __enter__(self) -> StopSignals:
        for sock in (self.wakeup, self._wakeup_w):
            sock.setblocking(False)  # set_wakeup_fd needs it; drain() relies on it
        self._previous = {sig: signal.signal(sig, self._record) for sig in HANDLED_SIGNALS}
        self._previous_fd = signal.set_wakeup_fd(self._wakeup_w.fileno(),
                                                 warn_on_full_buffer=False)
        # A process the node starts inherits them blocked (held()): recorded from here on,
        # with any that came while it started.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self.wakeup.close()
        self._wakeup_w.close()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if signum == RELOAD_SIGNAL:
            self._reloads += 1
        elif self.received is None:  # the first one names the stop
            self.received = signum

    def take_reload(self) -> bool:
        """True once per burst of SIGHUPs since the last call (one reload reads it all)."""
        asked, self._reloads = bool(self._reloads), 0
        return asked

    def poll(self, poller: zmq.Poller, wake_at_s: float) -> dict[object, int]:
        """Poll until wake_at_s (time.monotonic(); inf: until something comes); what is
        ready, the wake-up socket drained."""
        ready = zmq_poll(poller.sockets, self.timeout_ms(wake_at_s))  # Poller.poll's step
        return self.polled(ready)

    @staticmethod
    def timeout_ms(wake_at_s: float) -> int:
        """A poll's timeout until wake_at_s: -1 for inf."""
        return -1 if math.isinf(wake_at_s) else \
            max(0, math.ceil((wake_at_s - time.monotonic()) * 1000))

    def polled(self, ready: list[tuple[Any, int]]) -> dict[object, int]:
        """What a poll found ready ([(socket or fd, events)]), the wake-up socket drained."""
        found = dict(ready)
        if self.wakeup_fd in found:
            self.drain()
        return found

    def wait(self, poller: zmq.Poller, timeout_ms: int) -> bool:
        """Poll (for a step that waits on its own sockets); False once a stop signal has
        arrived."""
        poller.poll(timeout_ms)
        return self.received is None

    def drain(self) -> None:
        try:
            while self.wakeup.recv(512):
                pass
        except BlockingIOError:
            pass


@contextmanager
def held() -> Iterator[None]:
    """The handled signals blocked meanwhile, for starting a process: it inherits them
    blocked, so one that comes while it starts waits for its StopSignals (a worker) or is
    never taken (a snapshot's child, which its node waits for or kills), rather than killing
    it half-way (the terminal's Ctrl-C reaches the whole process group)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
