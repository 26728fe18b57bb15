"""What the node does so that its region outlives it: flushes, snapshots, and a restore at
start. The README's "Persistence" section says what each kind of stop loses.

  * Flush (file regions only): Cache.flush() (fsync) every flush_interval_s, in a thread of
    its own: fsync releases the GIL, so requests are served while the disk works. A power loss
    takes at most the changes of the last interval or so; the first opener afterwards rebuilds
    the region from what reached the disk (shmkv/recovery.py). A /dev/shm region has no disk.
  * Snapshots (with snapshot_path): every snapshot_interval_s, if some key changed since the
    last one (the stripes' change counters say so), a child process writes one (`python -m
    shmkv snapshot`), as Redis's BGSAVE forks a child: the copying runs on another core, not in
    the node's loop, and the node reaps the child from its loop. When the node stops (SIGTERM),
    after the last request is answered, it waits for a running child and writes a last one
    itself if anything changed since.
  * Restore: at start, a region that does not exist (a /dev/shm region after a reboot) while
    snapshot_path does is created from the snapshot before the node reports ready; STATUS=
    shows the progress to systemd, and EXTEND_TIMEOUT_USEC= keeps a long restore or last
    snapshot from being killed by the unit's start or stop timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import shmkv
from shmkv import layout as L
from shmkv.errors import RegionNotFound, ShmKVError
from shmkv.region import is_path

from .config import NodeConfig
from .signals import held

# How far each EXTEND_TIMEOUT_USEC= pushes systemd's timeout, and how often progress is told:
# a restore or snapshot that keeps making progress is never killed, one that hangs still is.
EXTEND_TIMEOUT_S = 30.0
PROGRESS_EVERY_S = 5.0
CHILD_POLL_S = 0.1  # how often the loop looks whether the snapshot child has finished


class Supervisor(Protocol):
    """What persistence tells systemd (broker/notify.py's Notifier)."""

    def status(self, text: str) -> object: ...
    def extend_timeout(self, seconds: float) -> object: ...


Emit = Callable[..., None]


def changes(cache: shmkv.Cache) -> int:
    """Every change ever made to the region's keys: the sum of the stripes' counters."""
    q, lay = cache._q, cache._region.layout
    first = (lay.stripes_offset + L.S_CHANGES) >> 3
    return sum(q[first:first + lay.n_stripes * L.STRIPE_Q:L.STRIPE_Q])


class _Progress:
    """A progress callback that tells systemd, at most every PROGRESS_EVERY_S."""

    def __init__(self, what: str, supervisor: Supervisor | None) -> None:
        self.what, self.supervisor = what, supervisor
        self.next_at = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.supervisor is not None and now >= self.next_at:
            self.next_at = now + PROGRESS_EVERY_S
            self.supervisor.status(f"{self.what}: {done} of {total} keys")
            self.supervisor.extend_timeout(EXTEND_TIMEOUT_S)


def open_or_restore(config: NodeConfig, supervisor: Supervisor | None,
                    emit: Emit) -> shmkv.Cache:
    """The node's region: opened if it exists; else, with a snapshot at snapshot_path,
    created from it (sized for it, at least arena_bytes); else created empty."""
    owner = config.region_owner or None
    try:
        return shmkv.Cache.open(config.region, owner=owner)
    except RegionNotFound:
        pass
    path = config.snapshot_path
    if not path or not os.path.exists(path):
        return shmkv.Cache.create(config.region, config.arena_bytes, exist_ok=True, owner=owner)
    sizes = shmkv.Cache.sizes_for_snapshot(path)  # CorruptSnapshot before anything is made
    sizes["arena_bytes"] = max(sizes["arena_bytes"], config.arena_bytes)
    cache = shmkv.Cache.create(config.region, **sizes)
    try:
        started = time.monotonic()
        report = cache.restore(path, progress=_Progress("restoring", supervisor))
    except BaseException:
        cache.close()
        shmkv.Cache.unlink(config.region)  # half a restore is no region to serve
        raise
    emit("restored", **{"path": path, "elapsed_s": round(time.monotonic() - started, 3),
                        **report})
    return cache


class Persistence:
    """The node's flusher thread and snapshot child; the loop calls tick() when due()."""

    def __init__(self, config: NodeConfig, cache: shmkv.Cache,
                 supervisor: Supervisor | None, emit: Emit) -> None:
        self.config, self.cache, self.supervisor, self.emit = config, cache, supervisor, emit
        self._child: subprocess.Popen[bytes] | None = None
        self._next_poll = float("inf")
        self._child_changes = 0
        # The state the last snapshot captured: at start, the region's (it was restored from
        # the snapshot, or the snapshot is as old as the node's last stop); none yet: take one.
        self._saved_changes = changes(cache) if os.path.exists(config.snapshot_path) else -1
        self._next_snapshot = (time.monotonic() + config.snapshot_interval_s
                               if config.snapshot_path and config.snapshot_interval_s
                               else float("inf"))
        self._stop_flushing = threading.Event()
        self._flusher: threading.Thread | None = None
        if is_path(config.region) and config.flush_interval_s:
            self._flusher = threading.Thread(target=self._flush_loop, name="shmkv-flush",
                                             daemon=True)
            self._flusher.start()

    def due(self) -> float:
        """When tick() has something to do (monotonic seconds)."""
        return self._next_poll if self._child is not None else self._next_snapshot

    def tick(self) -> None:
        now = time.monotonic()
        if self._child is not None:
            if self._child.poll() is None:
                self._next_poll = now + CHILD_POLL_S
                return
            self._reap()
        if now >= self._next_snapshot:
            self._next_snapshot = now + self.config.snapshot_interval_s
            if changes(self.cache) != self._saved_changes:
                self._start_child()
                self._next_poll = now + CHILD_POLL_S

    def stop(self) -> None:
        """At the node's stop, after the last request: finish the running snapshot, write a
        last one if anything changed since, stop flushing and flush once more."""
        if self._child is not None:
            while self._child.poll() is None:  # a bounded wait: the child makes progress
                if self.supervisor is not None:
                    self.supervisor.extend_timeout(EXTEND_TIMEOUT_S)
                try:
                    self._child.wait(PROGRESS_EVERY_S)
                except subprocess.TimeoutExpired:
                    pass
            self._reap()
        if self.config.snapshot_path and changes(self.cache) != self._saved_changes:
            self._saved_changes = changes(self.cache)
            try:
                report = self.cache.snapshot(self.config.snapshot_path,
                                             progress=_Progress("last snapshot", self.supervisor))
                self.emit("snapshot", **report)
            except (ShmKVError, OSError) as exc:
                self.emit("snapshot_failed", error=type(exc).__name__, message=str(exc))
        if self.close():
            self.cache.flush()

    def close(self) -> bool:
        """Stop the flusher thread (before the cache closes); True if there was one."""
        if self._flusher is None:
            return False
        self._stop_flushing.set()
        self._flusher.join()
        self._flusher = None
        return True

    # --- internals -----------------------------------------------------------------------
    def _flush_loop(self) -> None:
        while not self._stop_flushing.wait(self.config.flush_interval_s):
            try:
                self.cache.flush()
            except OSError as exc:  # a disk error: say so, keep serving, try again
                self.emit("flush_failed", error=type(exc).__name__, message=str(exc))

    def _start_child(self) -> None:
        self._child_changes = changes(self.cache)  # what it will capture, at least
        with held():
            self._child = subprocess.Popen(
                [sys.executable, "-m", "shmkv", "--region", self.config.region, "snapshot",
                 self.config.snapshot_path],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def _reap(self) -> None:
        child, self._child = self._child, None
        assert child is not None
        out, err = child.communicate()
        report: dict[str, Any] = {}
        try:
            report = json.loads(out or err or b"{}")
        except ValueError:
            report = {"message": (err or out).decode(errors="replace")[-500:]}
        if child.returncode == 0:
            self._saved_changes = self._child_changes
            self.emit("snapshot", **report)
        else:
            self.emit("snapshot_failed", exit_code=child.returncode, **report)


def arena_bytes_to_serve(config: NodeConfig) -> int:
    """The arena size of the region the node is about to serve (open_or_restore's choice)."""
    try:
        with shmkv.Cache.open(config.region, owner=config.region_owner or None) as cache:
            return int(cache.stats()["arena_bytes"])
    except RegionNotFound:
        pass
    if config.snapshot_path and os.path.exists(config.snapshot_path):
        try:
            sizes = shmkv.Cache.sizes_for_snapshot(config.snapshot_path)
        except ShmKVError:  # open_or_restore says what is wrong with it
            return config.arena_bytes
        return max(sizes["arena_bytes"], config.arena_bytes)
    return config.arena_bytes
