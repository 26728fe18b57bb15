"""The node process under a fake systemd: READY=1 once it serves, WATCHDOG=1 pings at half of
WATCHDOG_USEC, STOPPING=1 on SIGTERM, then exit 0."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

pytestmark = [
    pytest.mark.multiprocess,
]

# The node reports ready on stdout; by then READY=1 is due. Watchdog pings every 0.25 s.
RECV_TIMEOUT_S = 10.0
WATCHDOG_USEC = 500_000


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    directory = tempfile.mkdtemp(prefix="shmkv-notify-")  # short: sun_path holds 108 bytes
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        sock.settimeout(RECV_TIMEOUT_S)
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(directory)


@pytest.fixture
def node(region_name: str, notify_socket: tuple[socket.socket, str]
         ) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": notify_socket[1],
           "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    env.pop("WATCHDOG_PID", None)
    for name in [k for k in env if k.startswith("SHMKV_")]:
        del env[name]
    # Ephemeral ports everywhere, so that parallel runs do not collide; cwd is neutral so that
    # ./shmkv of a checkout does not shadow the installed package (see test_node.py).
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmkv.cli", "--region", region_name, "serve",
         "--arena-bytes", "2M", "--bind", "tcp://127.0.0.1:*", "--pub-bind", "tcp://127.0.0.1:*",
         "--metrics-bind", "127.0.0.1:0", "--ipc-dir", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir(),
        env=env,
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def wait_for(sock: socket.socket, variable: str) -> dict[str, str]:
    """The next datagram that sets variable, as {VARIABLE: value}, skipping others (watchdog
    pings, status updates); socket.timeout if none comes."""
    while True:
        fields = dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())
        if variable in fields:
            return fields


def test_node_notifies_ready_pings_the_watchdog_and_notifies_stopping(
        node: subprocess.Popen[str], notify_socket: tuple[socket.socket, str]) -> None:
    sock = notify_socket[0]
    ready_line = node.stdout.readline()  # type: ignore[union-attr]  # blocks until ready or dead
    assert ready_line, node.stderr.read()  # type: ignore[union-attr]
    assert json.loads(ready_line)["event"] == "ready"

    assert wait_for(sock, "READY")["READY"] == "1"
    assert wait_for(sock, "WATCHDOG") == {"WATCHDOG": "1"}
    assert wait_for(sock, "WATCHDOG") == {"WATCHDOG": "1"}  # again: pings keep coming

    node.send_signal(signal.SIGTERM)
    assert wait_for(sock, "STOPPING")["STOPPING"] == "1"
    assert node.wait(timeout=30) == 0
