"""The node keeps its region across a stop and a reboot (broker/persistence.py): a snapshot on
SIGTERM and on a schedule, and a restore before it reports ready when its region is gone (a
/dev/shm region after a reboot), with the progress told to systemd."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_process import STOP_TIMEOUT_S, running_node

import shmkv

pytestmark = pytest.mark.multiprocess


@pytest.fixture
def snapshot_path(tmp_path: Path) -> str:
    return str(tmp_path / "node.snapshot")


def _fill(region: str, n: int = 2000) -> dict[str, bytes]:
    data = {f"k{i}": f"value {i}".encode() * (1 + i % 5) for i in range(n)}
    with shmkv.Cache.open(region) as c:
        for key, value in data.items():
            c.set(key, value, ttl_s=3600 if key.endswith("7") else None)
        c.collection("jobs").set("j", b"in a collection")
    return data


def _read_event(node, name: str) -> dict:
    """The node's next JSON event line; it must be `name`."""
    line = node.process.stdout.readline()
    assert line, f"the node ended before its {name!r} event"
    event = json.loads(line)
    assert event["event"] == name, event
    return event


def test_a_node_stopped_with_sigterm_comes_back_with_its_data_after_its_region_is_gone(
        region_name: str, snapshot_path: str) -> None:
    options = ("--snapshot-path", snapshot_path, "--snapshot-interval-s", "0")
    with running_node(region_name, *options) as node:
        data = _fill(region_name)
        stopping, code = node.stop()
        assert stopping["event"] == "stopping" and code == 0
    assert os.path.exists(snapshot_path)
    assert not os.path.exists(f"/dev/shm/{region_name}"), "running_node unlinked it"
    with running_node(region_name, *options) as node:
        # running_node yields at the first event line: restored comes before ready
        assert node.ready["event"] == "restored"
        assert node.ready["keys"] == len(data) + 1
        assert _read_event(node, "ready")
        with shmkv.Cache.open(region_name) as c:
            assert {k: c.get(k) for k in data} == data
            assert 3500 < c.ttl("k7") <= 3600
            assert c.collection("jobs").get("j") == b"in a collection"


def test_a_node_takes_a_snapshot_on_its_schedule_only_when_something_changed(
        region_name: str, snapshot_path: str) -> None:
    shmkv.Cache.create(region_name, 4 << 20).close()
    _fill(region_name, 10)
    with running_node(region_name, "--snapshot-path", snapshot_path,
                      "--snapshot-interval-s", "0.05") as node:
        first = _read_event(node, "snapshot")  # none yet: one at once, by a child process
        assert first["keys"] == 11
        with shmkv.Cache.open(region_name) as c:
            c.set("one more", b"1")
        second = _read_event(node, "snapshot")
        assert second["keys"] == 12
        # nothing changed since: the next event is the stop, not another snapshot
        stopping, code = node.stop()
        assert stopping["event"] == "stopping" and code == 0
        assert node.process.stdout.read() == "", "no snapshot at stop: nothing changed"


def test_a_restoring_node_tells_systemd_its_progress_before_it_is_ready(
        region_name: str, snapshot_path: str) -> None:
    with shmkv.Cache.create(region_name, 4 << 20) as c:
        for i in range(1000):
            c.set(f"k{i}", b"v" * 100)
        c.snapshot(snapshot_path)
    shmkv.Cache.unlink(region_name)
    directory = tempfile.mkdtemp(prefix="shmkv-notify-")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    proc = None
    try:
        sock.bind(os.path.join(directory, "notify"))
        sock.settimeout(30)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHMKV_")}
        env.update(PYTHONUNBUFFERED="1", NOTIFY_SOCKET=os.path.join(directory, "notify"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "shmkv", "--region", region_name, "serve",
             "--snapshot-path", snapshot_path, "--bind", "tcp://127.0.0.1:*",
             "--pub-bind", "tcp://127.0.0.1:*", "--metrics-bind", "off", "--ipc-dir", "off"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            cwd=tempfile.gettempdir(), env=env)
        told = []
        while not any("READY=1" in m for m in told):
            told.append(sock.recv(4096).decode())
        ready_at = next(i for i, m in enumerate(told) if "READY=1" in m)
        before = "\n".join(told[:ready_at])
        assert "EXTEND_TIMEOUT_USEC=" in before and "STATUS=restoring" in before
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(STOP_TIMEOUT_S)
            proc.stdout.close()
        sock.close()
        shutil.rmtree(directory)
        shmkv.Cache.unlink(region_name)
