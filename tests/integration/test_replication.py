"""Replication on loopback (broker/replication.py): a replica node keeps its own region equal to
its primary's, whoever writes to the primary (local processes or the node's clients), through
its own restart and a pause; its region refuses every write, naming the primary. "Equal" is
replication_support.wait_equal's."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
from node_process import STOP_TIMEOUT_S, next_event, running_node, start_node
from replication_support import (CONVERGE_S, TTL_S, changes, dump, fill, free_port, primary_node,
                                 primary_region, repl_endpoint, replica_node, wait_equal)
from tests_support import new_region_name, scrape

import shmkv
from shmkv.clients import RemoteCache


def test_a_replica_starts_with_a_copy_of_the_primarys_existing_data(region_name: str) -> None:
    with primary_region(region_name) as primary:
        fill(primary, 10_000)
        with primary.collection("users") as users:
            users.set("alice", b"1", ttl_s=TTL_S)
            users.set("bob", b"2")
        primary.set_array("matrix", np.arange(1000, dtype=np.float64).reshape(10, 100))
        primary.set("big", bytes(range(256)) * (2 * 4096))  # 2 MiB
        with primary_node(region_name) as node, \
                replica_node(node, new_region_name()) as (replica, copy):
            assert replica.ready["replication"]["role"] == "replica"
            assert replica.ready["replication"]["stripes_behind"] == 0
            assert dump(copy) == dump(primary)  # ready means copied: no polling here
            assert copy.get("big") == primary.get("big")
            assert np.array_equal(copy.get_array("matrix"), primary.get_array("matrix"))
            assert copy.stats()["replica_of"] == repl_endpoint(node)
            port = int(replica.ready["metrics"].rsplit(":", 1)[1])
            assert scrape(port)[("shmkv_replication_stripes_behind", ())] == 0


def test_local_and_remote_changes_reach_the_replicas_region(region_name: str) -> None:
    with primary_region(region_name) as primary, primary_node(region_name) as node, \
            replica_node(node, new_region_name()) as (_, copy), \
            RemoteCache(node.endpoint) as remote:
        fill(primary, 500)
        primary.collection("doomed").set("x", b"1")
        wait_equal(primary, copy)
        primary.set("local", b"written in shared memory")
        remote.set("remote", b"written through the node", ttl_s=TTL_S)
        primary.delete("k1")
        remote.delete("k2")
        primary.expire("k4", TTL_S * 2)
        primary.persist("k3")
        remote.incr("counter", 5)
        primary.incr("counter")
        primary.collection("fresh").set("y", b"2")
        primary.drop_collection("doomed")
        primary.set("k5", b"rewritten")
        wait_equal(primary, copy)
        assert copy.get("counter") == b"6"
        assert copy.collections() == ["fresh"]


def test_writes_to_a_replica_are_refused_naming_its_primary(region_name: str) -> None:
    with primary_region(region_name) as primary, primary_node(region_name) as node, \
            replica_node(node, new_region_name()) as (replica, copy), \
            RemoteCache(replica.endpoint) as remote:
        primary.set("a", b"1")
        primary.collection("c").set("b", b"2")
        wait_equal(primary, copy)
        where = repl_endpoint(node)
        refused = [lambda: copy.set("a", b"x"), lambda: copy.delete("a"),
                   lambda: copy.incr("n"), lambda: copy.expire("a", 5),
                   lambda: copy.persist("a"), lambda: copy.clear(),
                   lambda: copy.set_many({"z": b"1"}), lambda: copy.cas("a", b"y", 1),
                   lambda: copy.set_array("arr", np.zeros(3)),
                   lambda: copy.collection("new"), lambda: copy.drop_collection("c"),
                   lambda: copy.rename_collection("c", "d"),
                   lambda: remote.set("a", b"x"), lambda: remote.delete("a"),
                   lambda: remote.incr("n")]
        for write in refused:
            with pytest.raises(shmkv.ReadOnlyReplica, match=where):
                write()
        assert copy.get("a") == b"1" and remote.get("a") == b"1"
        with copy.collection("c") as c:
            assert c.get("b") == b"2"
        wait_equal(primary, copy)  # nothing the refused writes did reached either region


def test_a_replica_killed_and_restarted_converges_exactly(region_name: str) -> None:
    copy_name = new_region_name()
    with primary_region(region_name) as primary, primary_node(region_name) as node:
        fill(primary, 5_000)
        process = start_node(copy_name, "--replica-of", repl_endpoint(node))
        try:
            assert json.loads(process.stdout.readline())["event"] == "ready"  # type: ignore
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)
            changes(primary, 5_000)  # 5,000 changes of every kind while it is down
            with replica_node(node, copy_name) as (_, copy):
                wait_equal(primary, copy)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stdout.close()  # type: ignore[union-attr]
            if process.stderr is not None:
                process.stderr.close()
            shmkv.Cache.unlink(copy_name)


def test_a_replica_paused_through_a_burst_of_writes_converges(region_name: str) -> None:
    with primary_region(region_name) as primary, primary_node(region_name) as node, \
            replica_node(node, new_region_name()) as (replica, copy):
        fill(primary, 1_000)
        wait_equal(primary, copy)
        replica.process.send_signal(signal.SIGSTOP)
        try:
            for i in range(50_000):
                primary.set(f"burst{i % 20_000}", i.to_bytes(8, "little") * (i % 5 + 1))
        finally:
            replica.process.send_signal(signal.SIGCONT)
        wait_equal(primary, copy)


def test_a_replica_refuses_a_region_that_is_not_a_copy_of_its_primary(region_name: str) -> None:
    other = new_region_name()
    shmkv.Cache.create(other, 1 << 20).close()
    try:
        with primary_region(region_name), primary_node(region_name) as node:
            process = start_node(other, "--replica-of", repl_endpoint(node))
            try:
                out, err = process.communicate(timeout=STOP_TIMEOUT_S)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            assert process.returncode != 0
            assert "not a copy of the primary" in err
    finally:
        shmkv.Cache.unlink(other)


def test_a_primary_restarted_with_an_empty_region_never_wipes_its_replica(
        region_name: str) -> None:
    repl = f"tcp://127.0.0.1:{free_port()}"
    with primary_region(region_name) as primary:
        fill(primary, 1_000)
        with running_node(region_name, "--repl-bind", repl) as node, \
                replica_node(node, new_region_name()) as (replica, copy):
            wait_equal(primary, copy)
            before = dump(copy)
            node.stop()
            primary.close()
            shmkv.Cache.unlink(region_name)
            with primary_region(region_name), running_node(region_name, "--repl-bind", repl):
                # a request the stopped node never answered times out first, at times
                event = next_event(replica.process, "replication_failed", CONVERGE_S,
                                   skip="RemoteUnavailable")
                assert "another region" in event["message"]
                assert dump(copy) == before
