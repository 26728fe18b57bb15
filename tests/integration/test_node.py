"""The node process (`shmkv serve`): a real process, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile

import pytest

import shmkv

pytestmark = pytest.mark.multiprocess


def start_node(region: str) -> subprocess.Popen[str]:
    # cwd is a neutral directory: `python -m` puts cwd first on sys.path, and in a source
    # checkout ./shmkv would shadow the installed package (where shmkv.broker lives).
    return subprocess.Popen(
        [sys.executable, "-m", "shmkv.cli", "--region", region, "serve", "--arena-bytes", "2M",
         "--bind", "tcp://127.0.0.1:*", "--pub-bind", "tcp://127.0.0.1:*",
         "--metrics-bind", "127.0.0.1:0", "--ipc-dir", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir(),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_serve_creates_the_region_and_leaves_it_intact_on_stop(region_name, stop) -> None:
    node = start_node(region_name)
    try:
        ready = json.loads(node.stdout.readline())  # blocks until the node says ready
        assert ready["event"] == "ready" and ready["pid"] == node.pid
        with shmkv.Cache.open(region_name) as c:
            c.set("k", b"written while the node runs")
        node.send_signal(stop)
        assert json.loads(node.stdout.readline()) == {"event": "stopping",
                                                      "signal": signal.Signals(stop).name}
        assert node.wait(timeout=30) == 0
        with shmkv.Cache.open(region_name) as c:
            assert c.get("k") == b"written while the node runs"
    finally:
        node.kill()
        node.wait()
        node.stdout.close()
        node.stderr.close()


def test_serve_attaches_to_an_existing_region(region_name) -> None:
    with shmkv.Cache.create(region_name, arena_bytes=1 << 20) as c:
        c.set("k", b"kept")
    node = start_node(region_name)
    try:
        assert json.loads(node.stdout.readline())["stats"]["items"] == 1
        node.terminate()
        assert node.wait(timeout=30) == 0
    finally:
        node.kill()
        node.wait()
        node.stdout.close()
        node.stderr.close()
