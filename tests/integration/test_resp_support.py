"""Helpers of the RESP door's tests (no tests here): a node with the door on, a real
redis-server to compare with, and a raw connection that reads one reply at a time."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import pytest
from node_process import Node, running_node
from tests_support import new_region_name

redis = pytest.importorskip("redis", reason="redis-py is not installed")

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
START_TIMEOUT_S = 10


def resp_address(node: Node) -> tuple[str, int]:
    host, port = node.ready["resp"].rsplit(":", 1)
    return host, int(port)


@contextmanager
def resp_node(*options: str, env: Mapping[str, str] | None = None
              ) -> Iterator[tuple[Node, str]]:
    """A node with the RESP door on a free loopback port: (node, region name)."""
    region = new_region_name()
    with running_node(region, "--resp-bind", "127.0.0.1:0", *options, env=env) as node:
        yield node, region


def client(node: Node, **kwargs: object) -> redis.Redis:
    host, port = resp_address(node)
    return redis.Redis(host=host, port=port, single_connection_client=True,
                       **{"socket_timeout": 10, **kwargs})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    """A real redis-server on a free loopback port, in a temporary directory, no persistence:
    (host, port). Skips the test if it is not installed."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp, "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:  # ready when it answers: no other signal to wait on
                try:
                    redis.Redis(port=port, socket_timeout=1).ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.02)
            yield "127.0.0.1", port
        finally:
            process.terminate()
            process.wait(timeout=30)


class RawConnection:
    """A plain socket that sends bytes and reads replies as bytes, to compare the wire."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def reply(self) -> bytes:
        """One whole reply, as its bytes on the wire."""
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"$", b"=", b"!") and int(rest) >= 0:
            return line + b"\r\n" + self._exactly(int(rest) + 2)
        if kind in (b"*", b"%", b">", b"~") and int(rest) > 0:
            n = int(rest) * (2 if kind == b"%" else 1)
            return line + b"\r\n" + b"".join(self.reply() for _ in range(n))
        return line + b"\r\n"

    def is_closed(self) -> bool:
        """True once the peer has closed the connection (reads what is left to know)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
