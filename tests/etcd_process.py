"""A real etcd server for the failover tests: on free ports, its data on tmpfs (/dev/shm: an
fsync that stalls on a busy disk must not cost a lease), stopped and its data removed whatever
happens in the test. Tests that need it skip, saying why, when etcd or its Python client
(the `failover` extra: etcd3gw) is missing."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
START_TIMEOUT_S = 30.0


def skip_without_etcd() -> None:
    if not shutil.which("etcd"):
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")
    try:
        import etcd3gw  # noqa: F401
    except ImportError:
        pytest.skip("the etcd client is not installed: pip install 'shmkv[failover]'")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_etcd(host: str = "127.0.0.1", command: tuple[str, ...] = ()) -> Iterator[str]:
    """An etcd server listening on host; yields its client URL. command prefixes etcd's
    command line (e.g. to run it in a network namespace)."""
    skip_without_etcd()
    data = tempfile.mkdtemp(prefix="shmkv-test-etcd-", dir="/dev/shm")
    client, peer = free_port(host), free_port(host)
    url = f"http://{host}:{client}"
    log = tempfile.TemporaryFile("w+")
    process = subprocess.Popen(
        [*command, ETCD, "--name", "default", "--data-dir", data,
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", f"http://{host}:{peer}",
         "--initial-advertise-peer-urls", f"http://{host}:{peer}",
         "--initial-cluster", f"default=http://{host}:{peer}"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as reply:
                    if b'"true"' in reply.read():
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"etcd did not start: {log.read()[-2000:]}")
            time.sleep(0.05)
        yield url
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()
        shutil.rmtree(data, ignore_errors=True)
