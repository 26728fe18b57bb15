"""The node process: owns one region for the lifetime of a service.

`shmkv serve` creates the region if it does not exist (or attaches to it), reports that it is
ready, and runs until SIGTERM or SIGINT. Meanwhile it is the region's maintainer: every
maintain_interval_s it runs one bounded `Cache.maintain()` pass (active expiry, segment
balance), so expired memory is reclaimed even when nobody writes. On the way out it closes its
handle and leaves the region in place, so local processes keep their data across a restart.

This is the node's first increment: it hosts the region for local processes. Remote access
over ZeroMQ, pub/sub, persistence and systemd notification are added on top of this loop.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import asdict
from typing import TextIO

import shmkv

from .config import NodeConfig


def serve(config: NodeConfig, out: TextIO = sys.stdout) -> int:
    """Run the node until SIGTERM/SIGINT; returns the process exit status."""
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Block the signals before anything else, then wait for them synchronously: no handler
    # runs in the middle of a region operation.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    cache = shmkv.Cache.create(config.region, config.arena_bytes, exist_ok=True)
    try:
        _emit(out, "ready", pid=os.getpid(), config=asdict(config), stats=cache.stats())
        while True:
            received = signal.sigtimedwait(stop_signals, config.maintain_interval_s)
            if received is not None:
                break
            cache.maintain()
        _emit(out, "stopping", signal=signal.Signals(received.si_signo).name)
    finally:
        cache.close()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
    return 0


def _emit(out: TextIO, event: str, **fields: object) -> None:
    out.write(json.dumps({"event": event, **fields}) + "\n")
    out.flush()
