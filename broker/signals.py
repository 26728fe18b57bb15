"""The node's signals (used by the node's loop, server.py, and by each worker, worker.py).

A handler runs in the main thread between two bytecodes, and the signal itself makes a
blocking system call fail with EINTR; semop(2) is never restarted after a handler (signal(7)),
so a stop signal arriving while a request waits for a region lock would fail that request. So
the stop signals stay blocked except while the loop sleeps in poll(); their handlers only
record the signal, and signal.set_wakeup_fd() makes a socket the poller watches readable, which
ends the poll. A request the node has received is therefore always answered before it stops.
SIGHUP is handled the same way (blocked outside poll, recorded, acted on by the loop between
requests), so a reload never interrupts a request either.
"""

from __future__ import annotations

import _signal
import math
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import zmq

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# SIGHUP: read the CurveZMQ allow-list again (auth.py). Handled as the stop signals are.
RELOAD_SIGNAL = signal.SIGHUP
HANDLED_SIGNALS = (*STOP_SIGNALS, RELOAD_SIGNAL)
# signal.pthread_sigmask turns the previous mask it returns into a set of Signals enums, ~2 us
# a call; the loop sets the mask twice a wake-up, so it calls the C function underneath.
_sigmask = _signal.pthread_sigmask
_BLOCK, _UNBLOCK = int(signal.SIG_BLOCK), int(signal.SIG_UNBLOCK)
_HANDLED = tuple(int(sig) for sig in HANDLED_SIGNALS)


class StopSignals:
    """SIGTERM/SIGINT as a flag and a readable socket, delivered only inside deliverable();
    SIGHUP the same way, as a request to reload (take_reload())."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._reloads = 0  # SIGHUPs recorded and not yet taken
        self.wakeup, self._wakeup_w = socket.socketpair()
        self.wakeup_fd = self.wakeup.fileno()

    def __enter__(self) -> StopSignals:
        for sock in (self.wakeup, self._wakeup_w):
            sock.setblocking(False)  # set_wakeup_fd needs it; drain() relies on it
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        self._previous = {sig: signal.signal(sig, self._record) for sig in HANDLED_SIGNALS}
        self._previous_fd = signal.set_wakeup_fd(self._wakeup_w.fileno(),
                                                 warn_on_full_buffer=False)
        return self

    def __exit__(self, *exc: object) -> None:
        # Unblock first: a signal that came during the shutdown goes to _record, not to the
        # default action (which would kill the node before it exits 0).
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
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
        """Poll until wake_at_s (time.monotonic(); inf: until something comes) with the
        signals deliverable; what is ready, the wake-up socket drained."""
        timeout_ms = -1 if math.isinf(wake_at_s) else \
            max(0, math.ceil((wake_at_s - time.monotonic()) * 1000))
        # the loop's hot path: the mask set by hand rather than by deliverable() (~1 us)
        _sigmask(_UNBLOCK, _HANDLED)
        try:
            ready = dict(poller.poll(timeout_ms))
        finally:
            _sigmask(_BLOCK, _HANDLED)
        if self.wakeup_fd in ready:
            self.drain()
        return ready

    def wait(self, poller: zmq.Poller, timeout_ms: int) -> bool:
        """Poll with the stop signals deliverable; False once one has arrived."""
        with self.deliverable():
            poller.poll(timeout_ms)
        return self.received is None

    @contextmanager
    def deliverable(self) -> Iterator[None]:
        _sigmask(_UNBLOCK, _HANDLED)
        try:
            yield
        finally:
            _sigmask(_BLOCK, _HANDLED)

    def drain(self) -> None:
        try:
            while self.wakeup.recv(512):
                pass
        except BlockingIOError:
            pass
