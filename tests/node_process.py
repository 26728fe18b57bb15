"""A real node process (`shmkv serve`) for tests: started on an ephemeral port, stopped and its
region unlinked whatever happens in the test (importable by name: pytest puts tests/ on
sys.path)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import zmq

import shmkv
from shmkv.clients import RemoteCache

STOP_TIMEOUT_S = 30


@dataclass
class Node:
    process: subprocess.Popen[str]
    ready: dict[str, Any]  # the node's "ready" event

    @property
    def endpoint(self) -> str:
        return self.ready["endpoint"]

    def stop(self, sig: int = signal.SIGTERM) -> tuple[dict[str, Any], int]:
        """Send sig; return the node's "stopping" event and its exit status."""
        self.process.send_signal(sig)
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        return (json.loads(line) if line else {}), self.process.wait(timeout=STOP_TIMEOUT_S)


@contextmanager
def paused(node: Node) -> Iterator[None]:
    """The node's process stopped (SIGSTOP) inside the block, continued after it."""
    node.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        node.process.send_signal(signal.SIGCONT)


def start_node(region: str, *options: str, stderr: Any = subprocess.PIPE,
               env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """A node on ephemeral ports, without ipc:// endpoints (a node killed by a test would
    leave its socket files behind), and in one process (--workers 1); options may say
    otherwise: a later flag wins."""
    # cwd is a neutral directory: `python -m` puts cwd first on sys.path, and in a source
    # checkout ./shmkv would shadow the installed package (where shmkv.broker lives).
    return subprocess.Popen(
        [sys.executable, "-m", "shmkv.cli", "--region", region, "serve",
         "--bind", "tcp://127.0.0.1:*", "--pub-bind", "tcp://127.0.0.1:*",
         "--metrics-bind", "127.0.0.1:0", "--ipc-dir", "off", "--workers", "1", *options],
        stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=tempfile.gettempdir(),
        env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
    )


def next_event(process: subprocess.Popen[str], name: str, timeout_s: float,
               skip: str = "") -> dict[str, Any]:
    """The node's next event called name, but for those whose error is skip. Reads block:
    select() on the pipe would miss lines its text layer has already read ahead, so a node
    silent for timeout_s is killed instead, which ends the read."""
    timer = threading.Timer(timeout_s, process.kill)
    timer.start()
    try:
        for line in iter(process.stdout.readline, ""):  # type: ignore[union-attr]
            event = json.loads(line)
            if event["event"] == name and event.get("error") != skip:
                return event
    finally:
        timer.cancel()
    pytest.fail(f"no {name} event from the node within {timeout_s} s (it was killed)")


def failed_start(region: str, *options: str,
                 timeout_s: float = STOP_TIMEOUT_S) -> tuple[int, str, str]:
    """Start a node that must not start: (exit status, stdout, stderr). One that runs after
    all is killed, and its status then says so."""
    process = start_node(region, *options)
    try:
        out, err = process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out, err


def node_ping(endpoint: str) -> dict:
    """A node's (or one worker's) ping reply, through a RemoteCache that retries while it
    starts."""
    with RemoteCache(endpoint, timeout_s=2.0, retries=5) as remote:
        return remote.ping()  # type: ignore[no-any-return]


@contextmanager
def dealer(endpoint: str) -> Iterator[zmq.Socket]:
    """A raw DEALER socket connected to a node, for tests that speak the wire protocol."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close()


@contextmanager
def running_node(region: str, *options: str,
                 env: Mapping[str, str] | None = None) -> Iterator[Node]:
    """A node serving region (created by the node if absent), ready when this yields; at the
    end it is stopped (SIGTERM, then SIGKILL if it must) and the region is unlinked."""
    # stderr goes to a file: a pipe nobody reads would block a node that writes much to it
    errors = tempfile.TemporaryFile("w+")
    process = start_node(region, *options, stderr=errors, env=env)
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]  # blocks until ready
        if not line:
            process.wait(timeout=STOP_TIMEOUT_S)
            errors.seek(0)
            raise RuntimeError(f"the node exited with {process.returncode} before it was "
                               f"ready: {errors.read()}")
        yield Node(process, json.loads(line))
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stdout.close()  # type: ignore[union-attr]
        errors.close()
        shmkv.Cache.unlink(region)
