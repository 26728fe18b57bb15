"""Hinted rounds (broker/repl_hints.py, broker/repl_source.py): a stripe whose counter moved by
exactly the events its ring named sends those keys' records; anything else (a ring overrun, a
change without an event) falls back to the digest comparison, and the replica still converges
exactly. The primary's replication state counts the stripes sent each way."""

from __future__ import annotations

import time
from typing import Any

import pytest
from node_process import paused, running_node
from replication_support import (TTL_S, dump, fill, fixed_clock, primary_node, primary_region,
                                 replica_node, wait_equal)
from tests_support import new_region_name, scrape

import shmkv
from shmkv.clients import RemoteCache


def source_state(node: Any) -> dict[str, Any]:
    with RemoteCache(node.endpoint) as remote:
        return remote.stats()["replication"]


def sent(node: Any) -> tuple[float, float]:
    """(stripes hinted, stripes compared) so far, from the node's metrics (the supervisor's
    with workers: its Source answers the replicas)."""
    found = scrape(int(node.ready["metrics"].rsplit(":", 1)[1]))
    return (found[("shmkv_replication_stripes_hinted_total", ())],
            found[("shmkv_replication_stripes_compared_total", ())])


def wait_until_visible(copy: shmkv.Cache, key: str, value: bytes | None,
                       timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while copy.get(key) != value:
        if time.monotonic() > deadline:
            pytest.fail(f"{key!r} did not become {value!r} on the replica")
        time.sleep(0.01)


def test_a_write_reaches_the_replica_through_a_hint(region_name: str) -> None:
    with primary_region(region_name) as primary, primary_node(region_name) as node, \
            replica_node(node, new_region_name()) as (_, copy):
        fill(primary, 2_000)
        wait_equal(primary, copy)
        before = source_state(node)
        primary.set("hinted", b"1")
        primary.collection("users").set("alice", b"2")
        wait_until_visible(copy, "hinted", b"1")
        wait_equal(primary, copy)
        after = source_state(node)
        assert after["stripes_hinted"] > before["stripes_hinted"]
        assert after["stripes_compared"] == before["stripes_compared"]


def test_keys_deleted_evicted_and_expired_between_rounds_converge_through_hints(
        region_name: str) -> None:
    # few slots: the writes below fill index stripes, which evict; rings of 16 KiB hold all
    # their events (no overrun while the replica waits); "brief" expires by the real clock
    with shmkv.Cache.create(region_name, 16 << 20, max_keys=500, clock=fixed_clock) \
            as primary, primary_node(region_name) as node, \
            replica_node(node, new_region_name()) as (replica, copy), \
            shmkv.Cache.open(region_name) as real_clock:
        fill(primary, 300)
        wait_equal(primary, copy)
        before = source_state(node)
        evictions = primary.stats()["evictions"]
        with paused(replica):
            primary.set("gone", b"x")
            primary.delete("gone")
            real_clock.set("brief", b"y", ttl_s=0.001)
            for i in range(1_000):
                primary.set(f"more{i}", b"v" * 50)
            time.sleep(0.01)  # "brief" expires by the primary's clock
            real_clock.delete("brief")  # gone by now: the delete finds it expired
        assert primary.stats()["evictions"] > evictions
        wait_equal(primary, copy)
        assert copy.get("gone") is None and copy.get("brief") is None
        after = source_state(node)
        assert after["stripes_hinted"] > before["stripes_hinted"]
        assert after["stripes_compared"] == before["stripes_compared"]


def test_a_burst_that_overruns_the_rings_falls_back_to_digests_and_converges(
        region_name: str) -> None:
    with primary_region(region_name) as primary, primary_node(region_name) as node, \
            replica_node(node, new_region_name()) as (_, copy):
        fill(primary, 1_000)
        wait_equal(primary, copy)
        before = source_state(node)
        layout = primary._region.layout
        # twice what every ring holds of these events (a 16-byte header and a key of <= 16)
        n = 2 * layout.n_stripes * (layout.event_ring_bytes // 32)
        with paused(node):  # the node's reader falls a ring behind
            for start in range(0, n, 5_000):
                primary.set_many({f"burst{i:07d}": b"v" for i in range(start,
                                                                        min(n, start + 5_000))})
        wait_equal(primary, copy)
        after = source_state(node)
        assert after["stripes_compared"] > before["stripes_compared"]
        assert after["hints_reset"] > before["hints_reset"]
        assert dump(copy) == dump(primary)


def test_a_ttl_change_which_names_no_key_is_compared_by_digests(region_name: str) -> None:
    with primary_region(region_name) as primary, primary_node(region_name) as node, \
            replica_node(node, new_region_name()) as (_, copy):
        fill(primary, 1_000)
        wait_equal(primary, copy)
        before = source_state(node)
        primary.expire("k1", TTL_S * 3)  # a change without an event
        wait_equal(primary, copy)
        after = source_state(node)
        assert after["stripes_compared"] > before["stripes_compared"]


def test_a_primary_with_two_workers_sends_hints(region_name: str) -> None:
    with primary_region(region_name) as primary, \
            running_node(region_name, "--repl-bind", "tcp://127.0.0.1:*",
                         "--workers", "2") as node, \
            replica_node(node, new_region_name()) as (_, copy), \
            RemoteCache(node.endpoint) as remote:
        fill(primary, 1_000)
        wait_equal(primary, copy)
        hinted, compared = sent(node)
        remote.set("through-a-worker", b"1")
        primary.set("local", b"2")
        remote.delete("k2")
        wait_equal(primary, copy)
        assert sent(node)[0] > hinted and sent(node)[1] == compared


def test_an_idle_replicas_request_waits_at_the_primary_while_its_node_answers(
        region_name: str) -> None:
    with primary_region(region_name) as primary, primary_node(region_name) as node, \
            replica_node(node, new_region_name()) as (replica, copy), \
            RemoteCache(replica.endpoint) as remote:
        fill(primary, 100)
        wait_equal(primary, copy)
        rounds = source_state(replica)["rounds"]
        for _ in range(20):  # its node answers while its request is parked upstream
            assert remote.get("k1") == primary.get("k1")
            time.sleep(0.05)
        # a polling replica would have made ~100 rounds in this second; a parked request
        # is answered once nothing moved for LONG_POLL_S
        assert source_state(replica)["rounds"] - rounds <= 3
        primary.set("after the wait", b"1")
        wait_until_visible(copy, "after the wait", b"1")
