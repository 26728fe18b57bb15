"""Failover across hosts (network namespaces, tests/netns.py): three node hosts and etcd in
the root namespace, on one bridge. SIGKILL of the primary: a replica accepts writes within
the lease TTL plus one loop; a replica cut off for 10 s under writes converges after healing
through one partial resync, one cut off past the backlog through exactly one full resync; a
primary cut off past its lease refuses every write, local processes too, and follows the new
primary once healed, discarding (counting) what it alone had. Skips, saying why, without
root, `ip` or etcd."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import pytest
from etcd_process import running_etcd
from failover_nodes import (ETCD_EXPIRY_S, LEASE_TTL_S, LOOP_S, SLACK_S, Member, eventually,
                            member)
from netns import network, skip_without_netns

import shmkv
from shmkv import repl_digest as D
from shmkv.broker.replication import REQUEST_TIMEOUT_S
from shmkv.clients import RemoteCache

PARTITION_S = 10.0
BACKLOG_CHANGES = 500  # --repl-backlog-changes of the test of a cut past the backlog


@contextmanager
def hosts_cluster(options: Sequence[str] = ()) -> Iterator[tuple[list[Member], list]]:
    """etcd on the bridge, and a node on each of three hosts (with more `shmkv serve`
    options); the first is the primary."""
    skip_without_netns()
    with network(3) as (bridge, hosts), running_etcd(bridge) as etcd, ExitStack() as stack:
        name = f"netns-{uuid.uuid4().hex[:8]}"
        first = stack.enter_context(member(etcd, name, hosts[0], options))
        eventually(lambda: first.role() == "primary", "the first node is elected")
        nodes = [first] + [stack.enter_context(member(etcd, name, h, options))
                           for h in hosts[1:]]
        yield nodes, hosts


def dump(region: str) -> dict[bytes, tuple[bytes, int]]:
    with shmkv.Cache.open(region) as cache:
        return {k: v for k in cache.keys() if (v := cache.get_with_version(k)) is not None}


def digests(region: str) -> list[bytes]:
    """Every stripe's range digests (shmkv/repl_digest.py): equal digests, equal regions."""
    with shmkv.Cache.open(region) as cache:
        return [D.stripe_digests(cache._region, s)
                for s in range(cache._region.layout.n_stripes)]


def replication(node: Member) -> dict:
    with RemoteCache(node.endpoint, timeout_s=5) as remote:
        return remote.stats()["replication"]


def test_a_replica_host_accepts_writes_within_the_lease_ttl_and_a_loop_of_the_primarys_sigkill(
) -> None:
    with hosts_cluster() as (nodes, _):
        with RemoteCache([n.endpoint for n in nodes], timeout_s=0.5, retries=100) as client:
            client.set("before", b"1")
            eventually(lambda: all(dump(n.region).get(b"before", (0,))[0] == b"1"
                                   for n in nodes[1:]), "the replicas have the write")
            killed_ns = time.time_ns()
            nodes[0].process.send_signal(signal.SIGKILL)
            client.set("after", b"2")
        promoted = [n for n in nodes[1:] if n.role() == "primary"]
        assert len(promoted) == 1
        took_s = (promoted[0].event("promoted")["at_ns"] - killed_ns) / 1e9  # type: ignore
        assert took_s <= LEASE_TTL_S + LOOP_S + ETCD_EXPIRY_S + SLACK_S, took_s


def test_a_replica_host_cut_off_for_10_s_under_writes_converges_after_healing() -> None:
    with hosts_cluster() as (nodes, hosts):
        primary, cut = nodes[0], nodes[2]
        with RemoteCache(primary.endpoint, timeout_s=5) as client:
            client.set_many({f"k{i}": b"before" for i in range(200)})
            eventually(lambda: dump(cut.region) == dump(primary.region), "first copy")
            before = replication(cut)
            hosts[2].cut()
            try:
                deadline = time.monotonic() + PARTITION_S
                i = 0
                while time.monotonic() < deadline:  # writes all through the partition
                    client.set(f"k{i % 300}", f"during {i}")
                    client.delete(f"k{(i * 7) % 300}")
                    i += 1
                assert cut.role() == "unreachable"
            finally:
                hosts[2].heal()
        assert primary.role() == "primary"  # a cut replica never takes over
        eventually(lambda: dump(cut.region) == dump(primary.region), "converged after healing")
        assert digests(cut.region) == digests(primary.region)
        assert cut.role() == "replica"
        after = replication(cut)  # it noticed the cut (10 s > REQUEST_TIMEOUT_S) and came back
        assert (after["full_resyncs"] - before["full_resyncs"],
                after["partial_resyncs"] - before["partial_resyncs"]) == (0, 1)


def test_a_primary_host_cut_off_past_its_lease_refuses_every_write_and_follows_once_healed(
) -> None:
    with hosts_cluster() as (nodes, hosts):
        old = nodes[0]
        local = shmkv.Cache.open(old.region)  # a local process of the old primary's host
        try:
            local.set("mine", b"1")
            eventually(lambda: all(dump(n.region).get(b"mine", (0,))[0] == b"1"
                                   for n in nodes[1:]), "the replicas have the write")
            hosts[0].cut()
            try:
                # its lease still runs (renewed < 1 loop ago): a write nobody else will see
                local.set("lost", b"acknowledged by the cut-off primary")
                new = eventually(lambda: next((n for n in nodes[1:] if n.role() == "primary"),
                                              None), "a replica takes over")
                # the old primary still runs, and cannot reach etcd: its fence has passed
                with pytest.raises(shmkv.ReadOnlyReplica, match="fenced"):
                    local.set("mine", b"lost")
            finally:
                hosts[0].heal()
            assert new.epoch() > old.epoch()
            eventually(lambda: old.role() == "replica", "the old primary follows")
            with RemoteCache(new.endpoint, timeout_s=5) as client:
                client.set("new", b"2")
            eventually(lambda: local.get("new") == b"2", "the old primary copies the new one")
            assert local.get("lost") is None
            discarded = eventually(lambda: old.event("discarded"), "the discarded event")
            assert discarded["count"] == 1 and discarded["primary"] == new.advertise
        finally:
            local.close()


def test_a_replica_host_cut_off_past_the_backlog_resyncs_fully_exactly_once() -> None:
    """Cut off long enough to notice (REQUEST_TIMEOUT_S without a reply) while the primary
    makes more changes than its backlog keeps: once healed, the replica asks psync once and
    gets one full resync (every stripe compared), then converges."""
    options = ("--repl-backlog-changes", str(BACKLOG_CHANGES))
    with hosts_cluster(options) as (nodes, hosts):
        primary, cut = nodes[0], nodes[2]
        with RemoteCache(primary.endpoint, timeout_s=5) as client:
            client.set_many({f"k{i}": b"before" for i in range(200)})
            eventually(lambda: digests(cut.region) == digests(primary.region), "first copy")
            before = replication(cut)
            hosts[2].cut()
            try:
                until = time.monotonic() + REQUEST_TIMEOUT_S + 2
                i = 0
                while i < 4 * BACKLOG_CHANGES or time.monotonic() < until:
                    client.set(f"k{i % 300}", f"during {i}")
                    i += 1
                assert cut.role() == "unreachable"
            finally:
                hosts[2].heal()
            assert replication(primary)["offset"] - before["offset"] > BACKLOG_CHANGES
        eventually(lambda: digests(cut.region) == digests(primary.region), "converged")
        after = replication(cut)
        assert (after["full_resyncs"] - before["full_resyncs"],
                after["partial_resyncs"] - before["partial_resyncs"]) == (1, 0)
        assert cut.role() == "replica" and after["primary"] == primary.advertise

