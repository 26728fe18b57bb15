"""Real nodes on one region: keyspace events stay on while any node runs, whatever another
node did (started and stopped, or failed to start)."""

from __future__ import annotations

import json
import socket

from node_process import failed_start, running_node

import shmkv

FAILED_START_TIMEOUT_S = 60


def test_a_second_node_started_and_stopped_leaves_events_on_for_the_first(
        region_name: str) -> None:
    with running_node(region_name), shmkv.Cache.open(region_name) as cache:
        assert cache.events_enabled
        with running_node(region_name) as second:
            assert second.stop()[1] == 0
        assert cache.events_enabled


def test_a_node_that_fails_to_start_leaves_events_as_they_were(region_name: str) -> None:
    busy = socket.socket()
    try:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with shmkv.Cache.create(region_name, 1 << 20) as cache:
            # the node attaches and wants events, then cannot serve its metrics
            code, out, err = failed_start(region_name, "--metrics-bind", f"127.0.0.1:{port}",
                                          timeout_s=FAILED_START_TIMEOUT_S)
            assert code == 1 and out == ""
            assert "cannot serve metrics" in json.loads(err)["message"]
            assert not cache.events_enabled
    finally:
        busy.close()
