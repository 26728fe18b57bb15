"""--cpu-affinity on live nodes (broker/cpus.py): where each worker's threads run, libzmq's I/O
thread included, across a worker's restart; off and a list; the single-process node."""

from __future__ import annotations

import os
import signal

import pytest
from node_process import node_ping, running_node
from shmkv.clients import RemoteCache
from tests_support import until

pytestmark = [pytest.mark.multiprocess,
              pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                                 reason="needs 2 CPUs to tell pinned from free")]

ALLOWED = sorted(os.sched_getaffinity(0))


def on_cpus(pid: int) -> list[tuple[int, ...]]:
    """The distinct CPU sets of the process's threads; it must have libzmq's I/O thread, the
    one the pin is for."""
    names, sets = [], set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as comm:
            names.append(comm.read().strip())
        sets.add(tuple(sorted(os.sched_getaffinity(int(tid)))))
    assert "ZMQbg/IO/0" in names, names
    return sorted(sets)


def test_each_worker_runs_with_its_zeromq_threads_on_one_cpu_of_its_own(
        region_name: str) -> None:
    with running_node(region_name, "--workers", str(len(ALLOWED))) as node:
        workers = node.ready["workers"]
        assert [w["cpu"] for w in workers] == ALLOWED
        for worker in workers:
            assert on_cpus(worker["pid"]) == [(worker["cpu"],)]
        assert on_cpus(node.process.pid) == [tuple(ALLOWED)]  # the supervisor stays free
        assert [w["cpu"] for w in node_ping(node.endpoint)["workers"]] == ALLOWED


def test_a_worker_restarted_after_sigkill_runs_on_the_cpu_of_the_one_it_replaces(
        region_name: str) -> None:
    with running_node(region_name, "--workers", "2") as node:
        victim = node.ready["workers"][1]
        os.kill(victim["pid"], signal.SIGKILL)
        until(lambda: node_ping(node.endpoint)["worker_restarts"] == 1 and
              node_ping(node.endpoint)["workers"][1]["pid"] not in (None, victim["pid"]),
              "the supervisor restarts the worker")
        replaced = node_ping(node.endpoint)["workers"][1]
        node_ping(replaced["endpoint"])  # answered there first: the new worker serves
        assert replaced["cpu"] == victim["cpu"] == ALLOWED[1]
        assert on_cpus(replaced["pid"]) == [(victim["cpu"],)]


@pytest.mark.parametrize("options", [("--cpu-affinity", "off"),
                                     ("--resp-bind", "127.0.0.1:0")],  # auto, a RESP door
                         ids=["off", "auto with a RESP door"])
def test_workers_left_to_the_scheduler(region_name: str, options: tuple[str, str]) -> None:
    with running_node(region_name, "--workers", "2", *options) as node:
        for worker in node.ready["workers"]:
            assert worker["cpu"] is None
            assert on_cpus(worker["pid"]) == [tuple(ALLOWED)]


def test_a_list_spreads_the_workers_over_its_cpus_in_turn(region_name: str) -> None:
    last = ALLOWED[-1]
    with running_node(region_name, "--workers", "3", "--cpu-affinity",
                      f"{ALLOWED[0]},{last}") as node:
        workers = node.ready["workers"]
        assert [w["cpu"] for w in workers] == [ALLOWED[0], last, ALLOWED[0]]
        for worker in workers:
            assert on_cpus(worker["pid"]) == [(worker["cpu"],)]


def test_the_single_process_node_is_free_by_default_and_runs_on_a_list_given(
        region_name: str) -> None:
    with running_node(region_name, "--workers", "1") as node:
        assert on_cpus(node.process.pid) == [tuple(ALLOWED)]
    last = ALLOWED[-1]
    with running_node(region_name, "--workers", "1", "--cpu-affinity", str(last)) as node:
        assert on_cpus(node.process.pid) == [(last,)]
        with RemoteCache(node.endpoint) as remote:  # it serves from there
            remote.set("k", b"v")
            assert remote.get("k") == b"v"
