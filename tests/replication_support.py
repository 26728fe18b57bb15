"""Helpers of the replication tests (tests/integration/test_replication*.py): dumps of a region
compared until they match, a primary and a replica node, a filled region, a stripe copied as a
replica's round copies it.

"Equal" is checked by polling both regions until their dumps match (every collection's keys,
values, kinds, versions and absolute expiry), with a deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from node_process import Node, running_node

import shmkv
from shmkv import replica as RP

ARENA_BYTES = 64 << 20
CONVERGE_S = 60.0
NOW_NS = time.time_ns()  # the clock both dumps read TTLs by: expiry compares exactly
TTL_S = 3600.0


def fixed_clock() -> int:
    return NOW_NS


def dump(cache: shmkv.Cache) -> dict[str | None, dict[bytes, tuple[Any, ...]]]:
    """Every collection's entries: key -> (value, kind, version, ttl by the fixed clock)."""
    out: dict[str | None, dict[bytes, tuple[Any, ...]]] = {}
    for name in [None, *cache.collections()]:
        try:
            handle = cache if name is None else cache.collection(name)
        except shmkv.ReadOnlyReplica:  # dropped by the replicator since collections() listed
            out[name] = {}  # it: making it again is a write (the next poll looks again)
            continue
        entries = {}
        for key in handle.keys():
            found = handle.get_with_version(key)
            if found is not None:
                entries[key] = (found[0], handle.type(key), found[1], handle.ttl(key))
        out[name] = entries
        if handle is not cache:
            handle.close()
    return out


def wait_equal(primary: shmkv.Cache, replica: shmkv.Cache, timeout_s: float = CONVERGE_S) -> None:
    """Poll until the replica's region equals the primary's (the primary is not written
    meanwhile), or fail with how they differ at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        want, got = dump(primary), dump(replica)
        if want == got:
            return
        if time.monotonic() > deadline:
            missing = {c: len(set(want.get(c, {})) - set(got.get(c, {}))) for c in want}
            extra = {c: len(set(got.get(c, {})) - set(want.get(c, {}))) for c in got}
            differ = {c: sum(1 for k in want[c] if k in got.get(c, {}) and want[c][k] !=
                             got[c][k]) for c in want}
            pytest.fail(f"the replica did not converge in {timeout_s} s: missing {missing}, "
                        f"extra {extra}, different {differ}")
        time.sleep(0.05)


@contextmanager
def primary_region(name: str) -> Iterator[shmkv.Cache]:
    cache = shmkv.Cache.create(name, ARENA_BYTES, clock=fixed_clock)
    try:
        yield cache
    finally:
        cache.close()


@contextmanager
def primary_node(region: str) -> Iterator[Node]:
    with running_node(region, "--repl-bind", "tcp://127.0.0.1:*") as node:
        yield node


def repl_endpoint(node: Node) -> str:
    return node.ready["replication"]["endpoint"]


@contextmanager
def replica_node(primary: Node, region: str) -> Iterator[tuple[Node, shmkv.Cache]]:
    """A replica node of primary on region, ready (first sync done), and a local handle on
    its region."""
    with running_node(region, "--replica-of", repl_endpoint(primary)) as node:
        cache = shmkv.Cache.open(region, clock=fixed_clock)
        try:
            yield node, cache
        finally:
            cache.close()


def fill(cache: shmkv.Cache, n: int, prefix: str = "k") -> None:
    cache.set_many({f"{prefix}{i}": f"value-{i}".encode() * (i % 7 + 1) for i in range(n)})
    for i in range(0, n, 3):
        cache.expire(f"{prefix}{i}", TTL_S + i)


def changes(primary: shmkv.Cache, n: int) -> None:
    """n changes of every kind."""
    for i in range(n):
        key = f"k{i}"
        if i % 5 == 0:
            primary.delete(key)
        elif i % 5 == 1:
            primary.expire(key, TTL_S / 2)
        elif i % 5 == 2:
            primary.incr(f"n{i % 50}")
        else:
            primary.set(f"new{i}", str(i).encode())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepted_within(write: Any, refused: type[Exception] = shmkv.NotEnoughReplicas) -> None:
    """Call write until the node takes it (refused: what it raises meanwhile): a replica
    counts toward --min-replicas-to-write once it has reported a round."""
    deadline = time.monotonic() + CONVERGE_S
    while True:
        try:
            write()
            return
        except refused:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def copy_stripe(source: shmkv.Cache, target: shmkv.Cache, stripe: int, writes: int,
                keep_expired: bool = False) -> None:
    """One stripe read from source and applied to target, as a replica's round does, with
    writes as the source's counter at the round's start."""
    applier = RP.Applier(target)
    reader = RP.StripeReader(source._region, stripe, keep_expired=keep_expired)
    seen: dict[tuple[int, bytes], int] = {}
    while True:
        data, done = reader.chunk()
        applier.apply_chunk(stripe, data, seen)
        if done:
            break
    applier.end_stripe(stripe, seen, writes)
