"""Nodes of a failover cluster for tests (`shmkv serve --etcd ...`): on loopback, or in a
network-namespace host (tests/netns.py). Each is killed at the end if it still runs (SIGCONT
first: a stopped process cannot die), and its region unlinked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from etcd_process import free_port
from netns import Host
from node_process import STOP_TIMEOUT_S
from tests_support import new_region_name

import shmkv
from shmkv import layout as L
from shmkv.clients import RemoteCache

LEASE_TTL_S = 3
LOOP_S = 0.5
RETRY_S = 0.5
ETCD_EXPIRY_S = 0.5  # etcd revokes expired leases in a loop of this period (lessor.go)
# What a take-over may take beyond TTL + one loop + ETCD_EXPIRY_S: the etcd requests, the
# promotion, and the scheduling of three nodes and etcd on 2 shared cores (up to 0.8 s seen
# at a load average of 30)
SLACK_S = 1.0
SETTLE_S = 60.0  # the most a state the tests wait for may take on a loaded machine


@dataclass
class Member:
    region: str
    advertise: str
    endpoint: str  # its request socket, as the test process reaches it
    process: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)

    def role(self) -> str:
        try:
            with RemoteCache(self.endpoint, timeout_s=0.5, retries=0) as remote:
                return str(remote.ping()["role"]["role"])
        except shmkv.RemoteUnavailable:
            return "unreachable"

    def epoch(self) -> int:
        with shmkv.Cache.open(self.region) as cache:
            return int(cache._region.q[L.H_REPL_EPOCH >> 3])

    def read_events(self) -> None:
        """Keep the node's events (a thread: a pipe nobody reads would block the node)."""
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.events.append(json.loads(line))

    def event(self, name: str) -> dict[str, Any] | None:
        return next((e for e in list(self.events) if e.get("event") == name), None)


def eventually(check: Any, what: str, timeout_s: float = SETTLE_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}")
        time.sleep(0.05)


@contextmanager
def member(etcd: str, cluster: str, host: Host | None = None,
           options: Sequence[str] = ()) -> Iterator[Member]:
    """A node of cluster, ready when this yields (a replica: after its first sync); options
    are more `shmkv serve` flags."""
    region = new_region_name()
    if host is None:
        port, repl_port = free_port(), free_port()
        endpoint = advertise = ""
        reach = "127.0.0.1"
    else:  # doors on the host's loopback, reached through its forwarder
        port, repl_port = 7400, 7401
        reach = host.address
        host.forward(port, repl_port)
    endpoint, advertise = f"tcp://{reach}:{port}", f"tcp://{reach}:{repl_port}"
    args = [sys.executable, "-m", "shmkv.cli", "--region", region, "serve",
            "--bind", f"tcp://127.0.0.1:{port}", "--pub-bind", "tcp://127.0.0.1:*",
            "--metrics-bind", "127.0.0.1:0", "--ipc-dir", "off", "--arena-bytes", "8M",
            "--etcd", etcd, "--cluster", cluster, "--advertise", advertise,
            "--repl-bind", f"tcp://127.0.0.1:{repl_port}", "--lease-ttl-s", str(LEASE_TTL_S),
            "--loop-interval-s", str(LOOP_S), "--retry-timeout-s", str(RETRY_S)]
    if host is not None:  # one worker: the forwarder passes one port (each worker has its own)
        args += ["--workers", "1"]
    args += options
    errors = tempfile.TemporaryFile("w+")
    popen: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": errors, "text": True,
                             "cwd": tempfile.gettempdir(),
                             "env": {**os.environ, "PYTHONUNBUFFERED": "1"}}
    try:
        process = subprocess.Popen(args, **popen) if host is None else host.start(args, **popen)
    except BaseException:
        errors.close()
        raise
    node = Member(region, advertise, endpoint, process)
    reader = threading.Thread(target=node.read_events, daemon=True)
    try:
        reader.start()
        eventually(lambda: node.event("ready") or process.poll() is not None, "ready")
        if process.poll() is not None:
            errors.seek(0)
            pytest.fail(f"the node exited with {process.returncode}: {errors.read()}")
        yield node
    finally:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            if process.poll() is None:
                process.send_signal(sig)
        process.wait(timeout=STOP_TIMEOUT_S)
        reader.join(timeout=STOP_TIMEOUT_S)
        process.stdout.close()  # type: ignore[union-attr]
        errors.close()
        shmkv.Cache.unlink(region)


@dataclass
class Ack:
    node: str  # its advertised replication endpoint
    epoch: int  # the epoch in the node's region before the write and after its ack
    key: str = ""
    sent: float = 0.0  # time.monotonic()
    acked: float = 0.0
    replicated: bool = False  # acknowledged by set, then by wait(1) >= 1


def check_one_node_per_epoch(acks: list[Ack]) -> None:
    """No epoch has two nodes acknowledging writes, and no write of an older epoch was sent
    after one of a newer epoch was acknowledged (both would have accepted writes at once)."""
    epochs = {a.epoch for a in acks}
    assert len(epochs) >= 2, "the test saw no failover"
    for epoch in epochs:
        assert len({a.node for a in acks if a.epoch == epoch}) == 1, epoch
    for older in acks:
        newer = [a.acked for a in acks if a.epoch > older.epoch]
        assert not newer or older.sent < min(newer), (older, min(newer))
