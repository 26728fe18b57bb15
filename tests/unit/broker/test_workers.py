"""The pure parts of --workers: which worker a client picks, where each worker binds, and how
long a dead worker waits before it is started again."""

from __future__ import annotations

import itertools
import os
import time

import pytest

from shmkv.broker.config import NodeConfig, load_config, worker_count
from shmkv.broker.supervisor import (
    MAX_RESTART_S,
    RESTART_S,
    SILENT_S,
    WorkerCounts,
    WorkerPool,
    _endpoints,
    restart_delay_s,
)
from shmkv.clients import workers as client_workers
from shmkv.clients.workers import choose_worker
from shmkv.errors import ConfigError

PING = {"protocol_version": 1, "workers": [
    {"endpoint": "tcp://0.0.0.0:7370", "ipc_endpoint": "ipc:///run/shmkv/r.sock", "pid": 10},
    {"endpoint": "tcp://0.0.0.0:40001", "ipc_endpoint": "ipc:///run/shmkv/r.1.sock", "pid": 11},
    {"endpoint": "tcp://0.0.0.0:40002", "ipc_endpoint": "ipc:///run/shmkv/r.2.sock", "pid": 12},
]}


def test_clients_pick_every_worker_in_turn_at_the_host_they_used() -> None:
    picks = [choose_worker("tcp://cache.example:7370", PING) for _ in range(3)]
    assert sorted(picks) == ["tcp://cache.example:40001", "tcp://cache.example:40002",
                             "tcp://cache.example:7370"]


def test_a_client_takes_the_worker_the_nodes_ping_names(monkeypatch) -> None:
    monkeypatch.setattr(client_workers, "_handles", itertools.repeat(0))  # its own pick: one
    picks = [choose_worker("tcp://cache.example:7370", {**PING, "worker_hint": hint})
             for hint in (2, 0, 1)]
    assert picks == ["tcp://cache.example:40002", "tcp://cache.example:7370",
                     "tcp://cache.example:40001"]


@pytest.mark.parametrize("hint", [3, -1, "1", 1.0, True, None])
def test_a_client_picks_for_itself_when_the_hint_names_no_worker(hint) -> None:
    picks = {choose_worker("tcp://cache.example:7370", {**PING, "worker_hint": hint})
             for _ in range(3)}
    assert len(picks) == 3


def test_a_client_over_ipc_picks_a_workers_ipc_endpoint() -> None:
    picks = {choose_worker("ipc:///run/shmkv/r.sock", PING) for _ in range(3)}
    assert picks == {w["ipc_endpoint"] for w in PING["workers"]}


@pytest.mark.parametrize("ping", [
    {"protocol_version": 1},  # a node without workers
    {"workers": [{"endpoint": "tcp://127.0.0.1:7370"}]},  # one
    {"workers": "garbage"},
    {"workers": [{"endpoint": "tcp://127.0.0.1:7370"}, {"endpoint": "udp://x"}]},
    {"workers": [{"endpoint": "tcp://127.0.0.1:7370"}, 5]},
])
def test_a_client_stays_where_it_is_when_it_cannot_tell_where_to_go(ping: dict) -> None:
    assert choose_worker("tcp://127.0.0.1:7370", ping) == "tcp://127.0.0.1:7370"


def test_a_client_over_ipc_stays_when_the_workers_have_no_ipc_endpoints() -> None:
    ping = {"workers": [{"endpoint": "tcp://127.0.0.1:1", "ipc_endpoint": None},
                        {"endpoint": "tcp://127.0.0.1:2", "ipc_endpoint": None}]}
    assert choose_worker("ipc:///run/x.sock", ping) == "ipc:///run/x.sock"


def test_worker_zero_binds_the_configured_endpoint_and_the_others_a_free_port() -> None:
    config = NodeConfig(bind="tcp://127.0.0.1:7370", ipc_dir="")
    assert _endpoints(config, 0) == ("tcp://127.0.0.1:7370", None)
    assert _endpoints(config, 3) == ("tcp://127.0.0.1:*", None)
    assert _endpoints(NodeConfig(bind="ipc:///run/n.sock", ipc_dir=""), 2)[0] == \
        "ipc:///run/n.sock.2"


def test_each_worker_has_its_own_ipc_socket_in_the_nodes_directory(tmp_path) -> None:
    config = NodeConfig(region="r", ipc_dir=str(tmp_path / "ipc"))
    assert _endpoints(config, 0)[1] == f"ipc://{tmp_path}/ipc/r.sock"
    assert _endpoints(config, 1)[1] == f"ipc://{tmp_path}/ipc/r.1.sock"


def test_workers_need_a_bind_endpoint_each_can_be_given() -> None:
    with pytest.raises(ConfigError, match="--workers 2: each worker needs its own endpoint"):
        _endpoints(NodeConfig(bind="inproc://node", workers=2, ipc_dir=""), 1)


def test_the_restart_delay_doubles_with_each_quick_death_up_to_its_cap() -> None:
    delays = [restart_delay_s(n) for n in range(12)]
    assert delays[:4] == [RESTART_S, RESTART_S, 2 * RESTART_S, 4 * RESTART_S]
    assert delays[-1] == MAX_RESTART_S and delays == sorted(delays)


def test_workers_default_to_one_per_cpu_and_refuse_absurd_counts() -> None:
    assert load_config({}, env={}).workers == 0  # 0: one per CPU
    assert load_config({"workers": "3"}, env={}).workers == 3
    with pytest.raises(ConfigError, match="workers"):
        load_config({"workers": "257"}, env={})
    assert worker_count(NodeConfig()) == len(os.sched_getaffinity(0))
    assert worker_count(NodeConfig(workers=3)) == 3


def test_the_watchdog_counts_the_workers_alive_only_while_each_serves_and_reports() -> None:
    pool = WorkerPool(NodeConfig(ipc_dir=""), 2)
    now = time.monotonic()
    for slot in pool.slots:
        slot.serving, slot.heard_s = True, now
    assert pool.alive()
    pool.slots[1].heard_s = now - SILENT_S - 1  # stuck: no report for too long
    assert not pool.alive()
    pool.slots[1].heard_s, pool.slots[1].serving = now, False  # dead, waiting to restart
    assert not pool.alive()


def _report(gets: int) -> list:
    """A worker's report (worker.py's "counts") of gets get requests, 20 µs each."""
    labels = {"command": "get"}
    return [["shmkv_requests", "Requests", "counter",
             [["shmkv_requests_total", {**labels, "outcome": "ok"}, gets]]],
            ["shmkv_request_duration_seconds", "Latency", "histogram",
             [["shmkv_request_duration_seconds_bucket", {**labels, "le": le}, gets]
              for le in ("+Inf", "2e-05")] +
             [["shmkv_request_duration_seconds_count", labels, gets],
              ["shmkv_request_duration_seconds_sum", labels, gets * 20e-6]]]]


def test_the_metrics_sum_the_workers_reports_and_keep_those_of_dead_workers() -> None:
    pool = WorkerPool(NodeConfig(ipc_dir=""), 2)
    pool.slots[0].counts = _report(3)
    pool.slots[1].counts = _report(4)
    pool._retire(_report(5))  # a worker that died after reporting 5
    families = {f.name: f for f in WorkerCounts(pool).collect()}
    assert [s.value for s in families["shmkv_requests"].samples] == [12]
    histogram = families["shmkv_request_duration_seconds"].samples
    assert [(s.name.rpartition("_")[2], s.labels.get("le")) for s in histogram] == \
        [("bucket", "2e-05"), ("bucket", "+Inf"), ("count", None), ("sum", None)]
    assert histogram[2].value == 12
