"""WAIT and --min-replicas-to-write (broker/dispatch.py, broker/repl_source.py): wait(1) is 1
only once the replica's region has the write, 0 within its timeout once the replica is gone;
a node refuses writes while too few replicas are in sync, and takes them again when one is."""

from __future__ import annotations

import signal
import time

import pytest
from node_process import running_node
from replication_support import CONVERGE_S, accepted_within, primary_region, replica_node

import shmkv
from shmkv.clients import RemoteCache


def test_wait_counts_a_replica_once_its_region_has_the_write_and_none_once_it_is_gone(
        region_name: str) -> None:
    with primary_region(region_name), \
            running_node(region_name, "--repl-bind", "tcp://127.0.0.1:*") as node, \
            replica_node(node, f"{region_name}-copy") as (replica, copy), \
            RemoteCache(node.endpoint) as remote:
        for i in range(20):
            remote.set(f"k{i}", b"x" * i)
            assert remote.wait(1, CONVERGE_S) == 1
            assert copy.get(f"k{i}") == b"x" * i  # applied before it was counted
        with RemoteCache(replica.endpoint) as remote_copy:
            lag = remote_copy.stats()["replication"]
        assert lag["role"] == "replica" and lag["changes_behind"] >= 0
        assert lag["last_sync_age_s"] is not None
        assert remote.stats()["replication"]["replicas"] == 1
        replica.process.send_signal(signal.SIGKILL)
        replica.process.wait()
        remote.set("after", b"the replica is gone")
        started = time.monotonic()
        assert remote.wait(1, 0.5) == 0
        assert time.monotonic() - started < 0.5 + 5.0  # within its timeout (and a slow reply)
        assert copy.get("after") is None


def test_min_replicas_to_write_refuses_writes_until_a_replica_is_in_sync(
        region_name: str) -> None:
    with primary_region(region_name) as primary, \
            running_node(region_name, "--repl-bind", "tcp://127.0.0.1:*",
                         "--min-replicas-to-write", "1",
                         "--min-replicas-max-lag-s", "5") as node, \
            RemoteCache(node.endpoint) as remote:
        primary.set("read", b"still served")
        with pytest.raises(shmkv.NotEnoughReplicas, match="min-replicas-to-write 1"):
            remote.set("refused", b"1")
        with pytest.raises(shmkv.NotEnoughReplicas):
            remote.incr("n")
        assert remote.get("read") == b"still served" and primary.get("refused") is None
        with replica_node(node, f"{region_name}-copy"):
            accepted_within(lambda: remote.set("accepted", b"2"))
            assert primary.get("accepted") == b"2"


def test_wait_through_the_workers_of_a_node_with_several_counts_the_replica(
        region_name: str) -> None:
    """With --workers 2 the Source runs in the supervisor: each worker learns the replicas'
    positions over its link and notes each client's offset after its writes."""
    with primary_region(region_name), \
            running_node(region_name, "--repl-bind", "tcp://127.0.0.1:*",
                         "--workers", "2") as node, \
            replica_node(node, f"{region_name}-copy") as (replica, copy):
        served_by = set()
        for i in range(4):  # a process's handles take the workers in turn
            with RemoteCache(node.endpoint) as remote:
                remote.set(f"k{i}", b"x" * i)
                assert remote.wait(1, CONVERGE_S) == 1
                assert copy.get(f"k{i}") == b"x" * i  # applied before it was counted
                served_by.add(remote._link.endpoint)
        assert len(served_by) == 2
        replica.process.send_signal(signal.SIGKILL)
        replica.process.wait()
        with RemoteCache(node.endpoint) as remote:
            remote.set("after", b"the replica is gone")
            assert remote.wait(1, 0.5) == 0
        assert copy.get("after") is None


def test_min_replicas_to_write_through_the_workers_refuses_writes_without_the_replica(
        region_name: str) -> None:
    with primary_region(region_name) as primary, \
            running_node(region_name, "--repl-bind", "tcp://127.0.0.1:*", "--workers", "2",
                         "--min-replicas-to-write", "1",
                         "--min-replicas-max-lag-s", "1") as node, \
            RemoteCache(node.endpoint) as one, RemoteCache(node.endpoint) as other:
        handles = (one, other)  # a process's handles take the workers in turn
        for remote in handles:
            with pytest.raises(shmkv.NotEnoughReplicas, match="min-replicas-to-write 1"):
                remote.set("refused", b"1")
        assert {remote._link.endpoint for remote in handles} == \
            {w["endpoint"] for w in node.ready["workers"]}
        assert primary.get("refused") is None
        with replica_node(node, f"{region_name}-copy") as (replica, _):
            for i, remote in enumerate(handles):
                accepted_within(lambda: remote.set(f"accepted {i}", b"2"))
                assert primary.get(f"accepted {i}") == b"2"
            replica.process.send_signal(signal.SIGKILL)
            replica.process.wait()
            for remote in handles:  # refused again once its last report is over 1 s old
                refused_within(remote)
        with replica_node(node, f"{region_name}-again"):
            for i, remote in enumerate(handles):
                accepted_within(lambda: remote.set(f"back {i}", b"2"))


def refused_within(remote: RemoteCache) -> None:
    deadline = time.monotonic() + CONVERGE_S
    while True:
        try:
            remote.set("maybe", b"3")
        except shmkv.NotEnoughReplicas:
            return
        if time.monotonic() > deadline:
            pytest.fail("writes still accepted without the replica")
        time.sleep(0.05)
