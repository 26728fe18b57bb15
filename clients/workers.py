"""Which worker of a node a client talks to (a node started with --workers N, whose workers
each serve on their own endpoint: broker/supervisor.py).

A node's ping reply lists its workers' endpoints as each bound them; choose_worker() picks one
for a client that reached the node at `endpoint`: over the same transport, and for tcp:// at
the same host name the client used (a worker bound to 0.0.0.0 or * reports that address,
which is no address to connect to) with the worker's port. A client sticks to the worker it
picked, so its requests are answered in the order it sent them.

Picks are spread by the node: its ping reply says which worker to use (`worker_hint`, each in
turn, counted by the worker that answers: worker 0 for every client's first ping, which goes
to the configured endpoint). A node that does not say so (one before this field) is spread
from the client's side: a process's first handle takes worker pid % N, its next ones the
following workers. That alone can put every client on one worker: processes started one after
another, each with its threads (libzmq's, a BLAS pool's), may all have pids of one parity.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from typing import Any

_handles = itertools.count()  # handles of this process that have picked a worker


def choose_worker(endpoint: str, ping: Mapping[str, Any]) -> str:
    """The endpoint a client that reached a node at endpoint should use from now on: one of
    the workers' that the node's ping reply lists, or endpoint itself (a node without
    workers, or no worker reachable the same way)."""
    workers = ping.get("workers") if isinstance(ping, Mapping) else None
    if not isinstance(workers, list) or len(workers) < 2:
        return endpoint
    reachable = [found for found in (_as_reached(endpoint, worker) for worker in workers)
                 if found is not None]
    if len(reachable) != len(workers):  # cannot tell which entry is the one reached
        return endpoint
    hint = ping.get("worker_hint")
    if type(hint) is int and 0 <= hint < len(reachable):
        return reachable[hint]
    return reachable[(os.getpid() + next(_handles)) % len(reachable)]


def _as_reached(endpoint: str, worker: Any) -> str | None:
    """worker's endpoint, reached as the client reached endpoint; None if it cannot be."""
    if not isinstance(worker, Mapping):
        return None
    transport = endpoint.partition("://")[0]
    if transport == "ipc":
        found = worker.get("ipc_endpoint")
        return found if isinstance(found, str) and found.startswith("ipc://") else None
    bound = worker.get("endpoint")
    if transport != "tcp" or not isinstance(bound, str) or not bound.startswith("tcp://"):
        return None
    host = endpoint.removeprefix("tcp://").rpartition(":")[0]
    port = bound.rpartition(":")[2]
    return f"tcp://{host}:{port}" if host and port.isdigit() else None
