"""The Redis door's WAIT (broker/resp_server_commands.py) through redis-py, against a primary
with one replica: it answers 1 only once the replica's region has the connection's writes, how
many have them at its timeout, 0 once the replica is gone; a WAIT that waits parks its
connection only, the node serves the others meanwhile; a node's workers count the replicas
too."""

from __future__ import annotations

import select
import signal

import pytest
import redis

from node_process import running_node
from replication_support import CONVERGE_S, accepted_within, primary_region, replica_node
from integration.test_resp_support import RawConnection, client, resp_address

CONVERGE_MS = int(CONVERGE_S * 1000)


def primary_options() -> tuple[str, ...]:
    return ("--repl-bind", "tcp://127.0.0.1:*", "--resp-bind", "127.0.0.1:0")


def test_wait_answers_a_replica_once_its_region_has_the_write_and_none_once_it_is_gone(
        region_name: str) -> None:
    with primary_region(region_name), running_node(region_name, *primary_options()) as node, \
            replica_node(node, f"{region_name}-copy") as (replica, copy), \
            client(node, socket_timeout=CONVERGE_S + 10) as r:
        for i in range(20):
            r.set(f"k{i}", b"x" * i)
            assert r.wait(1, CONVERGE_MS) == 1
            assert copy.get(f"k{i}") == b"x" * i  # applied before it was counted
        r.incr("n")
        assert r.wait(2, 200) == 1  # one replica has it: answered at the timeout
        replica.process.send_signal(signal.SIGKILL)
        replica.process.wait()
        r.set("after", b"the replica is gone")
        assert r.wait(1, 300) == 0
        assert copy.get("after") is None


def test_a_waiting_wait_parks_only_its_connection_and_answers_when_the_replica_has_the_write(
        region_name: str) -> None:
    with primary_region(region_name), running_node(region_name, *primary_options()) as node, \
            replica_node(node, f"{region_name}-copy") as (replica, copy), \
            client(node) as other:
        waiting = RawConnection(*resp_address(node))
        try:
            replica.process.send_signal(signal.SIGSTOP)
            try:
                # timeout 0: for ever; the SET and the PING after the WAIT wait behind it
                waiting.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"
                             b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$1\r\n0\r\n*1\r\n$4\r\nPING\r\n")
                assert waiting.reply() == b"+OK\r\n"
                assert other.set("other", b"served") and other.get("other") == b"served"
                assert other.ping()
                assert not waiting.buf and not select.select([waiting.sock], [], [], 0)[0]
                assert copy.get("k") is None
            finally:
                replica.process.send_signal(signal.SIGCONT)
            waiting.sock.settimeout(CONVERGE_S)
            assert waiting.reply() == b":1\r\n"
            assert copy.get("k") == b"v"
            assert waiting.reply() == b"+PONG\r\n"
        finally:
            waiting.close()


def test_wait_counts_the_replica_through_the_workers_of_a_node_with_several(
        region_name: str) -> None:
    with primary_region(region_name), \
            running_node(region_name, *primary_options(), "--workers", "2") as node, \
            replica_node(node, f"{region_name}-copy") as (_, copy):
        for i in range(4):  # connections land on either worker
            with client(node, socket_timeout=CONVERGE_S + 10) as r:
                r.set(f"k{i}", b"v")
                assert r.wait(1, CONVERGE_MS) == 1
                assert copy.get(f"k{i}") == b"v"


def test_wait_on_a_node_without_replicas_answers_zero_at_once(region_name: str) -> None:
    with running_node(region_name, "--resp-bind", "127.0.0.1:0") as node, client(node) as r:
        r.set("k", b"v")
        assert r.wait(1, 0) == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_min_replicas_to_write_refuses_resp_writes_with_noreplicas_until_a_replica_is_in_sync(
        region_name: str, workers: str) -> None:
    """Both doors run one executor, so the RESP door refuses writes as the ZeroMQ door does,
    in Redis's words; reads are served meanwhile."""
    with primary_region(region_name) as primary, \
            running_node(region_name, *primary_options(), "--workers", workers,
                         "--min-replicas-to-write", "1",
                         "--min-replicas-max-lag-s", "5") as node, \
            client(node) as r:
        primary.set("read", b"still served")
        for write in (lambda: r.set("refused", b"1"), lambda: r.incr("n"),
                      lambda: r.delete("read")):
            with pytest.raises(redis.ResponseError, match="NOREPLICAS"):
                write()
        assert r.get("read") == b"still served" and primary.get("refused") is None
        with replica_node(node, f"{region_name}-copy"):
            accepted_within(lambda: r.set("accepted", b"2"), redis.ResponseError)
            assert primary.get("accepted") == b"2"
