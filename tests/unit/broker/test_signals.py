"""The node's signals (broker/signals.py): recorded whenever they come, ending the loop's
poll; a process the node starts inherits them blocked until it handles them itself."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import threading

import pytest
import zmq

from shmkv.broker.signals import HANDLED_SIGNALS, StopSignals, held


def blocked_signals(pid: int) -> set[int]:
    """The signals pid blocks, from /proc/<pid>/status's SigBlk mask."""
    with open(f"/proc/{pid}/status") as status:
        mask = next(int(line.split()[1], 16) for line in status if line.startswith("SigBlk:"))
    return {sig for sig in range(1, 65) if mask >> (sig - 1) & 1}


def test_a_stop_signal_is_recorded_when_it_comes_and_ends_the_next_poll() -> None:
    with StopSignals() as stop:
        poller = zmq.Poller()
        poller.register(stop.wakeup_fd, zmq.POLLIN)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == signal.SIGTERM  # before any poll: nothing holds it back
        assert stop.wakeup_fd in stop.poll(poller, math.inf)  # at once, though told to wait
        assert not stop.poll(poller, 0)  # the wake-up socket was drained


def test_a_reload_is_taken_once_however_many_came() -> None:
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGHUP)
        assert stop.received is None
        assert stop.take_reload() and not stop.take_reload()


def test_the_handlers_before_are_back_after() -> None:
    before = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}
    with StopSignals():
        assert all(signal.getsignal(sig) != before[sig] for sig in HANDLED_SIGNALS)
    assert {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS} == before


def test_a_process_started_under_held_inherits_the_handled_signals_blocked() -> None:
    with held():
        child = subprocess.Popen(["sleep", "30"])
    try:
        assert {int(sig) for sig in HANDLED_SIGNALS} <= blocked_signals(child.pid)
        assert not {int(sig) for sig in HANDLED_SIGNALS} & blocked_signals(os.getpid())
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("sig", HANDLED_SIGNALS, ids=lambda s: s.name)
def test_signals_that_came_while_held_are_recorded_once_handled(sig) -> None:
    with StopSignals() as stop:
        with held():
            # to this thread, the one that holds it: one sent to the process goes to any
            # thread that does not block it (an earlier test's libzmq threads), and its
            # handler runs at once
            signal.pthread_kill(threading.get_ident(), sig)
            assert stop.received is None and not stop.take_reload()  # pending, not lost
        assert (stop.received == sig) if sig != signal.SIGHUP else stop.take_reload()
