"""Coming back to a primary (broker/repl_source.py, broker/replication.py): a replica restarted
within the backlog resyncs partially, one past it exactly once fully; a write made while the
primary's node was down still reaches the replica; a replica refuses a primary of an older
epoch and follows one of a newer epoch. Real node processes (tests/node_process.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from node_process import STOP_TIMEOUT_S, start_node
from replication_support import (CONVERGE_S, changes, fill, fixed_clock, free_port,
                                 primary_node, primary_region, replica_node, wait_equal)
from tests_support import new_region_name, scrape

import shmkv
from shmkv import layout as L


@contextmanager
def started(region: str, *options: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """A node and its "ready" event; killed at the end, its region left in place."""
    process = start_node(region, *options)
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        assert line, process.communicate(timeout=STOP_TIMEOUT_S)[1]
        yield process, json.loads(line)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]


def poll(what: Callable[[], Any], timeout_s: float = CONVERGE_S) -> Any:
    """what()'s first true result, polled until the deadline."""
    deadline = time.monotonic() + timeout_s
    while not (found := what()):
        if time.monotonic() > deadline:
            pytest.fail(f"still {found!r} after {timeout_s} s")
        time.sleep(0.05)
    return found


def _restart_after_changes(region_name: str, *primary_options: str) -> dict[str, Any]:
    """The replication state a replica reports when it comes back after 5,000 changes (it is
    checked to converge exactly)."""
    copy_name = new_region_name()
    try:
        with primary_region(region_name) as primary, \
                started(region_name, "--repl-bind", "tcp://127.0.0.1:*",
                        *primary_options) as (_, ready):
            fill(primary, 5_000)
            endpoint = ready["replication"]["endpoint"]
            with started(copy_name, "--replica-of", endpoint) as (process, first):
                assert first["replication"]["full_resyncs"] == 1  # a new replica: all of it
                process.send_signal(signal.SIGKILL)
            changes(primary, 5_000)
            with replica_node_at(endpoint, copy_name) as (again, copy):
                wait_equal(primary, copy)
                state = again["replication"]
                assert state["ranges_sent"] < state["ranges_compared"]
                return state
    finally:
        shmkv.Cache.unlink(copy_name)


@contextmanager
def replica_node_at(endpoint: str, region: str) -> Iterator[tuple[dict[str, Any], shmkv.Cache]]:
    with started(region, "--replica-of", endpoint) as (_, ready):
        cache = shmkv.Cache.open(region, clock=fixed_clock)
        try:
            yield ready, cache
        finally:
            cache.close()


def test_a_replica_restarted_after_5000_changes_resyncs_partially(region_name: str) -> None:
    state = _restart_after_changes(region_name)
    assert (state["partial_resyncs"], state["full_resyncs"]) == (1, 0)


def test_a_replica_back_past_the_backlog_resyncs_fully_once(region_name: str) -> None:
    state = _restart_after_changes(region_name, "--repl-backlog-changes", "1000")
    assert (state["partial_resyncs"], state["full_resyncs"]) == (0, 1)


def test_a_write_made_while_the_primarys_node_was_down_reaches_the_replica(
        region_name: str) -> None:
    repl = f"tcp://127.0.0.1:{free_port()}"
    copy_name = new_region_name()
    try:
        with primary_region(region_name) as primary:
            fill(primary, 1_000)
            with started(region_name, "--repl-bind", repl) as (node, _), \
                    replica_node_at(repl, copy_name) as (_, copy):
                wait_equal(primary, copy)
                node.send_signal(signal.SIGTERM)
                node.wait(timeout=STOP_TIMEOUT_S)
                primary.set("while-down", b"written with no node running")
                primary.delete("k7")
                with started(region_name, "--repl-bind", repl):
                    wait_equal(primary, copy)
                assert copy.get("while-down") == b"written with no node running"
    finally:
        shmkv.Cache.unlink(copy_name)


def test_a_replica_refuses_a_primary_of_an_older_epoch_and_follows_a_newer_one(
        region_name: str) -> None:
    with primary_region(region_name) as primary, primary_node(region_name) as node, \
            replica_node(node, new_region_name()) as (replica, copy):
        primary.set("before", b"1")
        wait_equal(primary, copy)
        port = int(replica.ready["metrics"].rsplit(":", 1)[1])
        copy._region.q[L.H_REPL_EPOCH >> 3] = 5  # as a promotion elsewhere would leave it
        primary.set("from-a-deposed-primary", b"2")
        poll(lambda: scrape(port).get(("shmkv_replication_epoch_refusals_total", ()), 0) >= 1)
        assert copy.get("from-a-deposed-primary") is None
        primary._region.q[L.H_REPL_EPOCH >> 3] = 7  # its term now: newer than the replica's
        wait_equal(primary, copy)
        assert copy._region.q[L.H_REPL_EPOCH >> 3] == 7
