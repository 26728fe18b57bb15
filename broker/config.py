"""The node's configuration: one frozen dataclass, `NodeConfig`.

Every field has a default that works on a fresh machine with no config file: the node creates the
default region and listens on loopback only. Where a value comes from (CLI flag > SHMKV_*
environment variable > config file > default) is decided in this module, and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import shmkv


@dataclass(frozen=True)
class NodeConfig:
    region: str = shmkv.DEFAULT_REGION
    arena_bytes: int = shmkv.DEFAULT_ARENA_BYTES
    # How often the node runs one bounded Cache.maintain() pass (active expiry, segment balance).
    maintain_interval_s: float = 0.1
    # ZeroMQ endpoints. Loopback by default: exposing a region to the network is a choice.
    # A port of "*" (tcp://127.0.0.1:*) binds an ephemeral port; the "ready" event reports it.
    bind: str = "tcp://127.0.0.1:7370"  # ROUTER: request/reply for the Cache API
    pub_bind: str = "tcp://127.0.0.1:7371"  # PUB: channels and keyspace events
    # Messages queued per slow subscriber before the node drops (and counts) the rest.
    pub_hwm: int = 10_000
    # host:port of the Prometheus text endpoint; "" turns it off. Port 0 picks a free one.
    metrics_bind: str = "127.0.0.1:9370"
