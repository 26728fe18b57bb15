"""A client process for tests/integration/test_node_workers.py: writes keys through a node
until a stop file appears, and logs every write the node acknowledged, so the test can check
that none of them was lost.

    python acked_writer.py ENDPOINT NAME LOG STOP_FILE

LOG gets one line per event, flushed at once (the process may be killed): "endpoint E" (the
worker it talks to), "ack I" (NAME:I was stored), "fail I ERROR" (not acknowledged),
"wrong I" (read back something else), and "done" at the end.
"""

from __future__ import annotations

import os
import sys

from shmkv.clients import RemoteCache
from shmkv.errors import ShmKVError

TIMEOUT_S = 1.0
RETRIES = 5  # a restarted worker is back well within TIMEOUT_S * RETRIES
MAX_WRITES = 1_000_000


def value_of(name: str, i: int) -> bytes:
    return f"{name}:{i}:".encode() * 8


def main(endpoint: str, name: str, log_path: str, stop_path: str) -> None:
    with open(log_path, "a", buffering=1) as log, \
            RemoteCache(endpoint, timeout_s=TIMEOUT_S, retries=RETRIES) as cache:
        cache.ping()
        log.write(f"endpoint {cache._link.endpoint}\n")
        for i in range(MAX_WRITES):
            if os.path.exists(stop_path):
                break
            try:
                cache.set(f"{name}:{i}", value_of(name, i))
            except ShmKVError as exc:
                log.write(f"fail {i} {type(exc).__name__}\n")
                continue
            log.write(f"ack {i}\n")
            try:
                if cache.get(f"{name}:{i}") != value_of(name, i):
                    log.write(f"wrong {i}\n")
            except ShmKVError as exc:
                log.write(f"fail {i} {type(exc).__name__}\n")
        log.write("done\n")


if __name__ == "__main__":
    main(*sys.argv[1:5])
