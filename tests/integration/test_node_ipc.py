"""The node's ipc:// endpoints, through a real node: clients of the host reach it through the
sockets in its private directory, the sockets go when the node stops, and a second node does
not take the sockets of a running one."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_process import failed_start, running_node

from shmkv.cli import EXIT_ERROR
from shmkv.clients import RemoteCache, Subscriber

WAIT_S = 10.0


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    """A directory for the node to create (short: Unix socket paths are limited to 108
    bytes); removed after the test with anything left in it."""
    path = Path(f"/tmp/shmkv-test-node-ipc-{os.getpid()}")
    try:
        yield path
    finally:
        for left in path.glob("*"):
            left.unlink()
        if path.exists():
            path.rmdir()


def test_clients_reach_the_node_through_its_private_ipc_directory(region_name: str,
                                                                 ipc_dir: Path) -> None:
    with running_node(region_name, "--ipc-dir", str(ipc_dir)) as node:
        assert stat.S_IMODE(os.stat(ipc_dir).st_mode) == 0o700
        assert node.ready["ipc_endpoint"] == f"ipc://{ipc_dir}/{region_name}.sock"
        with RemoteCache(node.ready["ipc_endpoint"]) as remote, \
                Subscriber(node.ready["ipc_pub_endpoint"]) as sub:
            remote.set("k", b"over ipc")
            assert remote.get("k") == b"over ipc"
            sub.subscribe("news")
            deadline = time.monotonic() + WAIT_S
            while (message := sub.get_message(0.05)) is None:
                assert time.monotonic() < deadline, "the subscriber received nothing"
                remote.publish("news", b"hello")
            assert message.data == b"hello"
        _, status = node.stop()
        assert status == 0
    assert list(ipc_dir.iterdir()) == []  # ZeroMQ removed the sockets


def test_a_second_node_does_not_take_the_sockets_of_a_running_one(region_name: str,
                                                                 ipc_dir: Path) -> None:
    with running_node(region_name, "--ipc-dir", str(ipc_dir)) as node:
        code, out, err = failed_start(region_name, "--ipc-dir", str(ipc_dir))
        assert code == EXIT_ERROR and out == ""
        assert "another process listens on" in json.loads(err)["message"]
        with RemoteCache(node.ready["ipc_endpoint"]) as remote:  # still the first node's
            assert remote.ping()
