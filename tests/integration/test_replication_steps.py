"""A replica started at run time (`shmkv replicaof`, broker/roles.py) makes its first sync in
steps from its node's loop, a few stripes a round, so that the node keeps answering meanwhile;
its round counts as done only once every stripe is synced."""

from __future__ import annotations

import time

import pytest
from node_process import running_node
from replication_support import fill, fixed_clock, wait_equal
from tests_support import new_region_name

import shmkv
from shmkv.broker.replication import MAX_COMPARED_PER_STEP
from shmkv.clients import RemoteCache


def test_a_demoted_node_syncs_in_steps_while_it_answers(region_name: str) -> None:
    other = new_region_name()
    with shmkv.Cache.create(region_name, 64 << 20, clock=fixed_clock) as a:
        fill(a, 20_000)
        assert a._region.layout.n_stripes > MAX_COMPARED_PER_STEP
        with running_node(region_name, "--repl-bind", "tcp://127.0.0.1:*") as first, \
                running_node(other, "--repl-bind", "tcp://127.0.0.1:*", "--replica-of",
                             first.ready["replication"]["endpoint"]) as second, \
                shmkv.Cache.open(other, clock=fixed_clock) as b, \
                RemoteCache(first.endpoint) as demoted, RemoteCache(second.endpoint) as new:
            promoted = new.promote()
            b.set("after the switch", b"1")
            demoted.replicaof(promoted["endpoint"])  # every stripe compared: its old history
            assert demoted.ping()["role"]["role"] == "replica"  # answered during the sync
            wait_equal(b, a)
            deadline = time.monotonic() + 30
            while (state := demoted.stats()["replication"])["rounds"] == 0:
                if time.monotonic() > deadline:
                    pytest.fail(f"the demoted node completed no round: {state}")
                time.sleep(0.05)
            assert state["steps"] > 0 and state["stripes_behind"] == 0
