"""broker/failover.py's loop against a fake etcd and a fake clock, without processes: how the
fence moves, who runs for leader, and what a node that lost the key does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import shmkv
from shmkv import layout as L
from shmkv.broker.config import NodeConfig
from shmkv import replica as RP
from shmkv.broker.failover import EtcdUnavailable, Failover
from shmkv.broker.roles import Takeover

TTL_S, RETRY_S = 3, 0.5
T0 = 1_700_000_000 * 10**9
CONFIG = NodeConfig(etcd="http://127.0.0.1:2379", cluster="c", advertise="tcp://me:1",
                    repl_bind="tcp://127.0.0.1:1", lease_ttl_s=TTL_S, loop_interval_s=0.5,
                    retry_timeout_s=RETRY_S)


class FakeEtcd:
    def __init__(self) -> None:
        self.keys: dict[str, tuple[dict[str, Any], int, int]] = {}
        self.revision = 10
        self.leases: dict[int, bool] = {}
        self.down = False

    def _up(self) -> None:
        if self.down:
            raise EtcdUnavailable("down")

    def grant(self, ttl_s: int) -> tuple[int, int]:
        self._up()
        lease = len(self.leases) + 100
        self.leases[lease] = True
        return lease, ttl_s

    def keepalive(self, lease: int) -> int:
        self._up()
        return TTL_S if self.leases.get(lease) else -1

    def expire(self, lease: int) -> None:
        self.leases[lease] = False
        self.keys = {k: v for k, v in self.keys.items() if v[2] != lease}

    def put(self, key: str, value: dict[str, Any], lease: int = 0) -> None:
        self._up()
        self.revision += 1
        self.keys[key] = (value, self.keys.get(key, (None, self.revision))[1], lease)

    def get(self, key: str) -> tuple[dict[str, Any], int, int] | None:
        self._up()
        return self.keys.get(key)

    def get_prefix(self, prefix: str) -> list[dict[str, Any]]:
        self._up()
        return [v[0] for k, v in sorted(self.keys.items()) if k.startswith(prefix)]

    def create(self, key: str, value: dict[str, Any], lease: int = 0) -> int | None:
        self._up()
        if key in self.keys:
            return None
        self.revision += 1
        self.keys[key] = (value, self.revision, lease)
        return self.revision


class FakeRoles:
    def __init__(self, cache: shmkv.Cache, role: str = "candidate") -> None:
        self.cache, self.role, self.primary = cache, role, ""
        self.calls: list[tuple[Any, ...]] = []

    def _cache(self) -> shmkv.Cache:
        return self.cache

    def promote(self, epoch: int | None = None, writable_until_ns: int = 0) -> None:
        self.calls.append(("promote", epoch, writable_until_ns))
        self.role = "primary"

    def follow(self, primary: str, takeover: Takeover | None = None) -> None:
        self.calls.append(("follow", primary))
        self.takeover = takeover
        self.role, self.primary = "replica", primary

    def fence(self) -> None:
        self.calls.append(("fence",))
        self.role = "candidate"

    def fence_until(self, ns: int) -> None:
        self.calls.append(("fence_until", ns))


@pytest.fixture
def etcd() -> FakeEtcd:
    return FakeEtcd()


@pytest.fixture
def loop(cache: shmkv.Cache, etcd: FakeEtcd) -> Iterator[Failover]:
    clock = iter(range(T0, T0 + 10**12, 10**9))  # one second later at each look
    yield Failover(CONFIG, FakeRoles(cache), lambda *a, **k: None,  # type: ignore[arg-type]
                   wait=lambda *a: True, clock=lambda: next(clock), etcd=etcd)  # type: ignore


def other_member(etcd: FakeEtcd, advertise: str, offset: int, epoch: int = 0) -> None:
    etcd.keys[f"/shmkv/c/members/{advertise}"] = (
        {"advertise": advertise, "role": "replica", "epoch": epoch, "offset": offset}, 1, 7)


def test_the_candidate_with_the_most_takes_the_leader_key_and_its_fence_runs_to_the_lease(
        loop: Failover, etcd: FakeEtcd, cache: shmkv.Cache) -> None:
    cache.set("k", b"v")  # offset 1: more than the other's 0
    other_member(etcd, "tcp://other:1", offset=0)
    loop.tick()
    epoch = etcd.keys["/shmkv/c/leader"][1]
    until = T0 + TTL_S * 10**9 - int(RETRY_S * 1e9)  # t0: before the lease was renewed
    assert loop.roles.calls == [("promote", epoch, until)]  # type: ignore[attr-defined]
    assert etcd.keys["/shmkv/c/leader"][0]["advertise"] == "tcp://me:1"


def test_the_leader_key_says_each_stripes_writes_counter_and_the_epoch_copied_at_takeover(
        loop: Failover, etcd: FakeEtcd, cache: shmkv.Cache) -> None:
    cache._region.q[L.H_REPL_EPOCH >> 3] = 7  # the epoch of the primary it copied
    cache.set_many({f"k{i}": b"v" for i in range(40)})
    writes = RP.stripe_counters(cache._region)[1]
    loop.tick()
    leader = etcd.keys["/shmkv/c/leader"][0]
    assert leader["writes"] == writes and sum(writes) == 40 and leader["epoch_before"] == 7


def test_a_node_that_follows_a_leader_is_told_how_it_took_over(
        loop: Failover, etcd: FakeEtcd) -> None:
    etcd.create("/shmkv/c/leader", {"advertise": "tcp://p:1", "writes": [3, 4],
                                    "epoch_before": 5}, 999)
    loop.tick()
    assert loop.roles.takeover == Takeover([3, 4], 5)  # type: ignore[attr-defined]


def test_a_candidate_behind_another_does_not_run(loop: Failover, etcd: FakeEtcd) -> None:
    other_member(etcd, "tcp://other:1", offset=5)
    loop.tick()
    assert "/shmkv/c/leader" not in etcd.keys and loop.roles.calls == []  # type: ignore


def test_a_higher_epoch_outranks_a_higher_offset(loop: Failover, etcd: FakeEtcd,
                                                  cache: shmkv.Cache) -> None:
    cache.set_many({f"k{i}": b"v" for i in range(10)})
    other_member(etcd, "tcp://other:1", offset=0, epoch=3)
    loop.tick()
    assert loop.roles.calls == []  # type: ignore[attr-defined]


def test_each_renewal_moves_a_primarys_fence_and_a_failed_one_does_not(
        loop: Failover, etcd: FakeEtcd) -> None:
    loop.tick()  # elected at T0
    loop.tick()  # renewed at T0 + 1 s
    assert loop.roles.calls[-1] == ("fence_until", T0 + 10**9 + TTL_S * 10**9  # type: ignore
                                    - int(RETRY_S * 1e9))
    etcd.down = True
    loop.tick()
    assert len(loop.roles.calls) == 2  # type: ignore[attr-defined]  # the fence stays put


def test_a_primary_that_lost_its_key_fences_and_follows_the_new_leader(
        loop: Failover, etcd: FakeEtcd) -> None:
    loop.tick()
    etcd.expire(loop.lease)  # stopped past its lease; another took over
    etcd.create("/shmkv/c/leader", {"advertise": "tcp://new:1"}, 999)
    loop.tick()
    assert loop.roles.calls[1:] == [("fence",), ("follow", "tcp://new:1")]  # type: ignore
    assert loop.lease != 100  # a new lease for its member key


def test_a_replica_follows_the_leader_named_in_the_key_once(loop: Failover,
                                                           etcd: FakeEtcd) -> None:
    etcd.create("/shmkv/c/leader", {"advertise": "tcp://p:1"}, 999)
    loop.tick()
    loop.tick()
    assert loop.roles.calls == [("follow", "tcp://p:1")]  # type: ignore[attr-defined]


def test_the_member_key_says_role_epoch_and_offset(loop: Failover, etcd: FakeEtcd,
                                                   cache: shmkv.Cache) -> None:
    cache._region.q[L.H_REPL_EPOCH >> 3] = 7
    cache.set("k", b"v")
    other_member(etcd, "tcp://other:1", offset=0, epoch=9)
    loop.tick()
    assert etcd.keys["/shmkv/c/members/tcp://me:1"][0] == {
        "advertise": "tcp://me:1", "role": "candidate", "epoch": 7, "offset": 1}


def test_a_replica_that_copied_from_the_leader_ranks_by_the_leaders_epoch(
        loop: Failover, etcd: FakeEtcd) -> None:
    """Its region's repl_epoch is 0 (only a promotion writes it here); a node demoted from an
    older term, which has not copied from this leader yet, must rank below it."""
    epoch = etcd.create("/shmkv/c/leader", {"advertise": "tcp://p:1"}, 999)
    loop.tick()  # follows; no round done yet
    roles = loop.roles
    roles.replica = type("R", (), {"primary": "tcp://p:1", "rounds": 0})()  # type: ignore
    loop.tick()
    loop.tick()
    assert etcd.keys["/shmkv/c/members/tcp://me:1"][0]["epoch"] == 0
    roles.replica.rounds = 1  # type: ignore[attr-defined]
    loop.tick()
    loop.tick()
    assert etcd.keys["/shmkv/c/members/tcp://me:1"][0]["epoch"] == epoch
