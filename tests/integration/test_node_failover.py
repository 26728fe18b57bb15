"""Failover through etcd on loopback (broker/failover.py): three nodes of one cluster elect
their primary with an etcd lease. A replica takes over within the lease TTL plus one loop of a
primary's SIGKILL; a primary stopped past its lease refuses every write when it resumes, then
follows the new primary; no write is acknowledged by two nodes at once; and the replica that
had the writes is the one promoted. Each test starts its own etcd (tests/etcd_process.py) and
skips, saying why, without it."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
from etcd_process import running_etcd
from failover_nodes import (ETCD_EXPIRY_S, LEASE_TTL_S, LOOP_S, SLACK_S, Ack, Member,
                            check_one_node_per_epoch, eventually, member)

import shmkv
from shmkv import layout as L
from shmkv.clients import RemoteCache


@contextmanager
def cluster_of(n: int) -> Iterator[tuple[str, list[Member]]]:
    """etcd and n nodes: the first is the primary (the others start once it is)."""
    with running_etcd() as etcd, ExitStack() as stack:
        name = f"test-{uuid.uuid4().hex[:8]}"
        first = stack.enter_context(member(etcd, name))
        eventually(lambda: first.role() == "primary", "the first node is elected")
        nodes = [first] + [stack.enter_context(member(etcd, name)) for _ in range(n - 1)]
        yield etcd, nodes


def test_a_replica_accepts_writes_within_the_lease_ttl_and_a_loop_of_the_primarys_sigkill(
) -> None:
    with cluster_of(3) as (_, nodes):
        primary, replicas = nodes[0], nodes[1:]
        with RemoteCache([n.endpoint for n in nodes], timeout_s=0.5, retries=100) as client:
            client.set("before", b"1")
            for replica in replicas:
                with shmkv.Cache.open(replica.region) as copy:
                    eventually(lambda c=copy: c.get("before") == b"1", "the replicas have it")
            killed_ns = time.time_ns()
            primary.process.send_signal(signal.SIGKILL)
            # Dead, and its workers with it (the kernel kills them as it exits): until then a
            # worker could still acknowledge the write under the lease (asynchronous
            # replication: such a write is lost with its primary, as with one process)
            primary.process.wait()
            client.set("after", b"2")  # sent again until a new primary takes it
        promoted = [r for r in replicas if r.role() == "primary"]
        assert len(promoted) == 1
        took_s = (promoted[0].event("promoted")["at_ns"] - killed_ns) / 1e9  # type: ignore
        # TTL + one loop, + etcd's expiry period and the slack of a loaded machine
        assert took_s <= LEASE_TTL_S + LOOP_S + ETCD_EXPIRY_S + SLACK_S, took_s
        assert promoted[0].epoch() > primary.epoch() > 0
        with shmkv.Cache.open(promoted[0].region) as cache:
            assert cache.get("before") == b"1" and cache.get("after") == b"2"
        other = next(r for r in replicas if r is not promoted[0])
        with shmkv.Cache.open(other.region) as copy:
            eventually(lambda: copy.get("after") == b"2", "the other replica follows")


def test_a_primary_stopped_past_its_lease_refuses_every_write_then_follows_the_new_one(
) -> None:
    with cluster_of(2) as (_, (primary, replica)):
        local = shmkv.Cache.open(primary.region)
        try:
            local.set("mine", b"1")
            with shmkv.Cache.open(replica.region) as copy:
                eventually(lambda: copy.get("mine") == b"1", "the replica has the write")
            stopped_ns = time.time_ns()
            primary.process.send_signal(signal.SIGSTOP)
            fence_ns = int(local._region.q[L.H_WRITABLE_UNTIL >> 3])
            assert stopped_ns < fence_ns <= stopped_ns + LEASE_TTL_S * 10**9
            eventually(lambda: replica.role() == "primary", "the replica takes over")
            # the node is still stopped: only the fence in its region refuses local writers
            with pytest.raises(shmkv.ReadOnlyReplica, match="fenced"):
                local.set("mine", b"lost")
            primary.process.send_signal(signal.SIGCONT)
            with RemoteCache(primary.endpoint, timeout_s=5) as remote:
                with pytest.raises(shmkv.ReadOnlyReplica):
                    remote.set("mine", b"lost")
            eventually(lambda: primary.role() == "replica", "the old primary follows")
            with RemoteCache(replica.endpoint) as remote:
                remote.set("new", b"2")
            eventually(lambda: local.get("new") == b"2", "the old primary copies the new one")
            assert local.get("mine") == b"1"
            assert primary.event("leader_lost") is not None
        finally:
            local.close()


def test_no_write_is_acknowledged_by_two_nodes_in_overlapping_terms() -> None:
    """Writers hammer every node directly through a failover in which the old primary is
    stopped past its lease and resumed. Each acknowledged write is logged with its node and
    the epoch in that node's region before the send and after the reply (kept only if both
    agree). No epoch has two nodes, and no write of an older epoch was sent after one of a
    newer epoch was acknowledged (which would mean that both accepted writes at once)."""
    with cluster_of(3) as (_, nodes):
        acks: list[Ack] = []
        stop = threading.Event()

        def write(node: Member) -> None:
            handle = shmkv.Cache.open(node.region)
            with RemoteCache(node.endpoint, timeout_s=0.3, retries=0) as remote:
                i = 0
                while not stop.is_set():
                    i += 1
                    before = int(handle._region.q[L.H_REPL_EPOCH >> 3])
                    sent = time.monotonic()
                    try:
                        remote.set(f"w{i}", node.advertise)
                    except (shmkv.ReadOnlyReplica, shmkv.RemoteUnavailable,
                            shmkv.LockTimeout):  # not acknowledged: a node busy syncing
                        time.sleep(0.01)
                        continue
                    acked = time.monotonic()
                    if int(handle._region.q[L.H_REPL_EPOCH >> 3]) == before:
                        acks.append(Ack(node.advertise, before, sent=sent, acked=acked))
            handle.close()

        writers = [threading.Thread(target=write, args=(n,)) for n in nodes]
        for w in writers:
            w.start()
        def more_acks(n: int = 20) -> None:
            count = len(acks)
            eventually(lambda: len(acks) >= count + n, f"{n} more writes acknowledged")

        try:
            more_acks()
            nodes[0].process.send_signal(signal.SIGSTOP)
            eventually(lambda: any(n.role() == "primary" for n in nodes[1:]), "a new primary")
            more_acks()
            nodes[0].process.send_signal(signal.SIGCONT)
            eventually(lambda: nodes[0].role() == "replica", "the old primary follows")
            more_acks()
        finally:
            stop.set()
            for w in writers:
                w.join()
        check_one_node_per_epoch(acks)


def test_the_replica_that_has_the_acknowledged_writes_is_the_one_promoted() -> None:
    """wait(1) stands here for "a replica has the write": the test polls the up-to-date
    replica's region, while the other replica is stopped (so it has not). After the primary's
    SIGKILL, the one with the highest offset takes over and no acknowledged write is lost.

    Written in two rounds, the second once the fresh replica has the first: a stopped replica
    still receives into its socket the answer to the request it made before it was stopped
    (the primary answers every parked request in one pass as soon as something is written),
    and reads it once let go. Had all the writes fitted in that answer, the stale replica
    would have them too, and could rightly be promoted; the second round is in no answer it
    can have."""
    with cluster_of(3) as (_, (primary, fresh, stale)):
        stale.process.send_signal(signal.SIGSTOP)
        try:
            with RemoteCache(primary.endpoint) as remote, \
                    shmkv.Cache.open(fresh.region) as copy:
                for first, end in ((0, 250), (250, 500)):
                    remote.set_many({f"k{i}": b"v" * i for i in range(first, end)})
                    last = end - 1
                    eventually(lambda last=last: copy.get(f"k{last}") == b"v" * last,
                               "the fresh replica has it")
            primary.process.send_signal(signal.SIGKILL)
        finally:
            stale.process.send_signal(signal.SIGCONT)
        eventually(lambda: fresh.role() == "primary", "the fresh replica takes over")
        assert stale.role() != "primary"
        with shmkv.Cache.open(fresh.region) as cache:
            assert all(cache.get(f"k{i}") == b"v" * i for i in range(500))
        with shmkv.Cache.open(stale.region) as cache:
            eventually(lambda: cache.get("k499") == b"v" * 499, "the stale one catches up")


def test_a_primary_stopped_cleanly_gives_its_lease_back_so_a_replica_takes_over_at_once(
) -> None:
    with cluster_of(2) as (_, (primary, replica)):
        with RemoteCache(replica.endpoint) as remote:  # etcd decides, not a user
            with pytest.raises(shmkv.ShmKVError, match="elected through etcd"):
                remote.promote()
        stopped_ns = time.time_ns()
        primary.process.send_signal(signal.SIGTERM)
        assert primary.process.wait(timeout=30) == 0
        eventually(lambda: replica.role() == "primary", "the replica takes over")
        took_s = (replica.event("promoted")["at_ns"] - stopped_ns) / 1e9  # type: ignore
        assert took_s < LEASE_TTL_S, took_s  # no wait for the lease to expire
        with shmkv.Cache.open(primary.region) as local:
            with pytest.raises(shmkv.ReadOnlyReplica, match="fenced"):
                local.set("k", b"after its stop")
