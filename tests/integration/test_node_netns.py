"""Failover across hosts (network namespaces, tests/netns.py): three node hosts and etcd in
the root namespace, on one bridge. SIGKILL of the primary: a replica accepts writes within
the lease TTL plus one loop; a replica cut off for 10 s under writes converges after healing
through one partial resync, one cut off past the backlog through exactly one full resync; a
primary cut off past its lease refuses every write, local processes too, and follows the new
primary once healed, discarding (counting) what it alone had; through a SIGKILL or a cut of
the primary, every write acknowledged with wait(1) is on the new primary, and no two nodes
acknowledge writes in the same epoch. Skips, saying why, without root, `ip` or etcd."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import pytest
from etcd_process import running_etcd
from failover_nodes import (ETCD_EXPIRY_S, LEASE_TTL_S, LOOP_S, SLACK_S, Ack, Member,
                            check_one_node_per_epoch, eventually, member)
from netns import network, skip_without_netns

import shmkv
from shmkv import layout as L
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
    """What it then discards is counted exactly: the writes and deletes it made that the new
    primary never had, not what the new primary changed since it took over."""
    with hosts_cluster() as (nodes, hosts):
        old = nodes[0]
        local = shmkv.Cache.open(old.region)  # a local process of the old primary's host
        try:
            local.set_many({"mine": b"1", **{f"k{i}": b"before" for i in range(10)}})
            eventually(lambda: all(dump(n.region).get(b"k9", (0,))[0] == b"before"
                                   for n in nodes[1:]), "the replicas have the writes")
            hosts[0].cut()
            try:
                # its lease still runs (renewed < 1 loop ago): changes nobody else will see
                local.set("lost", b"acknowledged by the cut-off primary")
                local.set_many({"k0": b"old's", "k1": b"old's"})
                local.delete("k2")
                local.delete("k3")
                new = eventually(lambda: next((n for n in nodes[1:] if n.role() == "primary"),
                                              None), "a replica takes over")
                # the old primary still runs, and cannot reach etcd: its fence has passed
                with pytest.raises(shmkv.ReadOnlyReplica, match="fenced"):
                    local.set("mine", b"lost")
                with RemoteCache(new.endpoint, timeout_s=5) as client:  # not discarded
                    client.set_many({key: b"new's" for key in ("k0", "k4", "k5", "k6", "k7")})
                    client.delete("k8")
                    client.delete("k9")
            finally:
                hosts[0].heal()
            assert new.epoch() > old.epoch()
            eventually(lambda: old.role() == "replica", "the old primary follows")
            with RemoteCache(new.endpoint, timeout_s=5) as client:
                client.set("new", b"2")
            # said after its first complete round: a node following at run time syncs in
            # steps, so a key of one stripe ("new") may arrive before another stripe is done
            discarded = eventually(lambda: old.event("discarded"), "the discarded event")
            eventually(lambda: local.get("new") == b"2", "the old primary copies the new one")
            assert local.get("lost") is None and local.get("k2") == b"before"
            assert local.get("k0") == b"new's" and local.get("k1") == b"before"
            assert discarded["primary"] == new.advertise
            # lost, k0, k1 set; k2, k3 deleted
            assert (discarded["count"], discarded["sets"], discarded["deletes"],
                    discarded["exact"]) == (5, 3, 2, True), discarded
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


class Writers:
    """Writers through a failover, each acknowledged write logged with its node and epoch
    (kept only if the node's region had the same epoch before the write and after its
    acknowledgement): on every node a local process (straight in its region, which its
    fence guards) and a client of that node alone; and a client of the cluster that
    follows the primary and logs what set then wait(1) >= 1 acknowledged."""

    def __init__(self, nodes: list[Member]) -> None:
        self.nodes = nodes
        self.acks: list[Ack] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._local, args=(n,)) for n in nodes]
        self.threads += [threading.Thread(target=self._remote, args=(n,)) for n in nodes]
        self.threads.append(threading.Thread(target=self._waited))
        self.regions = {n.endpoint: shmkv.Cache.open(n.region) for n in nodes}

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()
        for region in self.regions.values():
            region.close()

    def epoch(self, node: Member) -> int:
        return int(self.regions[node.endpoint]._region.q[L.H_REPL_EPOCH >> 3])

    def more(self, n: int = 20, replicated: bool = False) -> None:
        count = sum(a.replicated >= replicated for a in self.acks)
        eventually(lambda: sum(a.replicated >= replicated for a in self.acks) >= count + n,
                   f"{n} more writes acknowledged")

    def _log(self, node: Member, key: str, epoch: int, sent: float,
             replicated: bool = False) -> None:
        if self.epoch(node) == epoch:
            self.acks.append(Ack(node.advertise, epoch, key, sent, time.monotonic(),
                                 replicated))

    def _local(self, node: Member) -> None:
        with shmkv.Cache.open(node.region) as local:
            i = 0
            while not self.stop.is_set():
                i += 1
                key, epoch, sent = f"local-{node.advertise}-{i}", self.epoch(node), \
                    time.monotonic()
                try:
                    local.set(key, key)
                except shmkv.ReadOnlyReplica:
                    time.sleep(0.01)
                    continue
                self._log(node, key, epoch, sent)
                time.sleep(0.002)  # a pace the replicas follow

    def _remote(self, node: Member) -> None:
        with RemoteCache(node.endpoint, timeout_s=0.3, retries=0) as remote:
            i = 0
            while not self.stop.is_set():
                i += 1
                key, epoch, sent = f"remote-{node.advertise}-{i}", self.epoch(node), \
                    time.monotonic()
                try:
                    remote.set(key, key)
                except (shmkv.ReadOnlyReplica, shmkv.RemoteUnavailable,
                        shmkv.LockTimeout):  # not acknowledged: a node busy syncing
                    time.sleep(0.01)
                    continue
                self._log(node, key, epoch, sent)

    def _waited(self) -> None:
        by_endpoint = {n.endpoint: n for n in self.nodes}
        with RemoteCache(list(by_endpoint), timeout_s=0.5, retries=30) as remote:
            i = 0
            while not self.stop.is_set():
                i += 1
                key, sent = f"waited-{i}", time.monotonic()
                try:
                    remote.set(key, key)
                    node = by_endpoint[remote._link.endpoint]
                    epoch = self.epoch(node)
                    if remote.wait(1, 5.0) < 1:
                        continue
                except (shmkv.RemoteUnavailable,  # OutcomeUnknown: wait is not sent again
                        shmkv.LockTimeout):
                    continue
                if by_endpoint[remote._link.endpoint] is node:
                    self._log(node, key, epoch, sent, replicated=True)


@pytest.mark.parametrize("failure", ["sigkill", "partition"])
def test_writes_acknowledged_with_wait_1_before_a_failover_are_on_the_new_primary(
        failure: str) -> None:
    with hosts_cluster() as (nodes, hosts):
        old = nodes[0]
        with Writers(nodes) as writers:
            writers.more(20, replicated=True)
            if failure == "sigkill":
                old.process.send_signal(signal.SIGKILL)
            else:
                hosts[0].cut()
            try:
                new = eventually(lambda: next((n for n in nodes[1:] if n.role() == "primary"),
                                              None), "a replica takes over")
                writers.more(20, replicated=True)
            finally:
                hosts[0].heal()
            if failure == "partition":
                eventually(lambda: old.role() == "replica", "the old primary follows")
            writers.more(20)
        acks = writers.acks
        check_one_node_per_epoch(acks)
        waited = [a for a in acks if a.replicated]
        assert {a.node for a in waited} == {old.advertise, new.advertise}
        with shmkv.Cache.open(new.region) as region:
            lost = [a for a in waited if region.get(a.key) != a.key.encode()]
        assert not lost, lost
