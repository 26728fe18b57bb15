"""Hosts on network namespaces for the failover tests: `ip netns` hosts joined by veth pairs
to one bridge in the root namespace (which has the bridge's address, so the test process and
an etcd started there reach every host). A host's link can be cut and healed (its veth set
down and up: a partition). Everything is removed at the end, even on failure; the tests that
use it skip, saying why, when not root or when `ip` is missing.

Namespaces share /dev/shm (no mount namespace here): each host's node gets its own region
name. The node binds its doors on the host's loopback (a non-loopback door must be
CURVE-protected, and a replica does not connect to a CURVE-protected primary yet), and a
forwarder in the host (`python netns.py forward HOST PORT...`) carries HOST:PORT to
127.0.0.1:PORT: a cut link cuts it like any other traffic."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

IP = shutil.which("ip") or "/usr/sbin/ip"


def skip_without_netns() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add)")
    if not shutil.which("ip"):
        pytest.skip("the ip command (iproute2) is not installed")


def _ip(*args: str) -> None:
    subprocess.run([IP, *args], check=True, capture_output=True, timeout=30)


@dataclass
class Host:
    name: str  # the namespace
    address: str  # its address on the bridge
    veth: str  # the root namespace's end of its link
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def command(self, *args: str) -> list[str]:
        return [IP, "netns", "exec", self.name, *args]

    def start(self, args: Sequence[str], **popen: object) -> subprocess.Popen[str]:
        """A process in the host, killed when the network is removed."""
        process = subprocess.Popen(self.command(*args), **{"text": True, **popen})  # type: ignore
        self.processes.append(process)
        return process

    def forward(self, *ports: int) -> None:
        """Carry address:port to the host's 127.0.0.1:port, for each port."""
        self.start([sys.executable, __file__, "forward", self.address, *map(str, ports)])

    def cut(self) -> None:
        _ip("link", "set", self.veth, "down")

    def heal(self) -> None:
        _ip("link", "set", self.veth, "up")


@contextmanager
def network(n_hosts: int) -> Iterator[tuple[str, list[Host]]]:
    """(the bridge's address in the root namespace, the hosts)."""
    skip_without_netns()
    tag = secrets.token_hex(3)  # interface names are at most 15 bytes
    subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
    bridge = f"skb{tag}"
    hosts: list[Host] = []
    made: list[tuple[str, str]] = []  # ("link" | "netns", name), to remove
    try:
        _ip("link", "add", bridge, "type", "bridge")
        made.append(("link", bridge))
        _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i in range(n_hosts):
            host = Host(f"skn{tag}{i}", f"{subnet}.{10 + i}", f"skv{tag}{i}")
            _ip("netns", "add", host.name)
            made.append(("netns", host.name))
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", f"skp{tag}{i}")
            made.append(("link", host.veth))
            _ip("link", "set", f"skp{tag}{i}", "netns", host.name)
            _ip("link", "set", host.veth, "master", bridge)
            _ip("link", "set", host.veth, "up")
            inside = ["netns", "exec", host.name, IP]
            _ip(*inside, "link", "set", "lo", "up")
            _ip(*inside, "link", "set", f"skp{tag}{i}", "name", "eth0")
            _ip(*inside, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip(*inside, "link", "set", "eth0", "up")
            hosts.append(host)
        yield f"{subnet}.1", hosts
    finally:
        for host in hosts:
            for process in host.processes:
                if process.poll() is None:
                    process.kill()
                process.wait()
        for kind, name in reversed(made):
            subprocess.run([IP, kind, "del", name] if kind == "netns" else
                           [IP, "link", "del", name], capture_output=True, timeout=30)


# --- the forwarder (run inside a host) ---------------------------------------------------
def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def _serve(address: str, port: int) -> None:
    listener = socket.create_server((address, port), reuse_port=False)
    while True:
        client, _ = listener.accept()
        try:
            inner = socket.create_connection(("127.0.0.1", port))
        except OSError:
            client.close()
            continue
        for a, b in ((client, inner), (inner, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


if __name__ == "__main__" and sys.argv[1:2] == ["forward"]:
    for forwarded in sys.argv[3:]:
        threading.Thread(target=_serve, args=(sys.argv[2], int(forwarded)),
                         daemon=True).start()
    threading.Event().wait()
