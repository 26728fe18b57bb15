"""TLS on the RESP door, with a real node and a self-signed certificate made by openssl: redis-py
(ssl=True) and redis-cli --tls are served; client certificates are required with
--resp-tls-ca; plaintext, garbage and a handshake never finished each close that connection
only, in bounded time, while a TLS client is served throughout; --allow-remote serves a
non-loopback door with requirepass and TLS."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
from integration.test_resp_support import REDIS_CLI, client, redis, resp_address, resp_node
from node_process import Node, failed_start, running_node
from tests_support import new_region_name

import shmkv
from shmkv.broker import resp_door
from shmkv.broker.config import NodeConfig
from shmkv.broker.resp import encode_request
from shmkv.broker.resp_tls import HANDSHAKE_TIMEOUT_S
from shmkv.broker.waits import LockWaits
from shmkv.cli import EXIT_USAGE

pytestmark = pytest.mark.multiprocess
OPENSSL = shutil.which("openssl")
CLOSE_WAIT_S = HANDSHAKE_TIMEOUT_S + 10  # the node's bound, and ample for a loaded machine


@dataclass
class Certs:
    cert: Path  # the door's certificate (CN localhost, for 127.0.0.1 and localhost)
    key: Path
    client_cert: Path  # a client's, self-signed: its own CA
    client_key: Path

    def door(self) -> tuple[str, ...]:
        return ("--resp-tls-cert", str(self.cert), "--resp-tls-key", str(self.key))


def make_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj",
         f"/CN={name}", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed: no certificate to test with")
    directory = tmp_path_factory.mktemp("tls")
    return Certs(*make_certificate(directory, "localhost"),
                 *make_certificate(directory, "client"))


@pytest.fixture(scope="module")
def node(certs: Certs) -> Iterator[Node]:
    with resp_node(*certs.door()) as (found, _):
        yield found


def tls_client(node: Node, certs: Certs, **kwargs: object) -> redis.Redis:
    return client(node, ssl=True, ssl_ca_certs=str(certs.cert), **kwargs)


def test_redis_py_over_tls_reads_and_writes_large_values_and_pipelines(
        node: Node, certs: Certs) -> None:
    with tls_client(node, certs) as c:
        big = bytes(range(256)) * 8192  # 2 MiB: many TLS records each way
        assert c.set("big", big)
        assert c.get("big") == big
        pipe = c.pipeline(transaction=False)
        for i in range(2000):  # replies and requests far past one record, read in one go
            pipe.set(f"k{i}", i)
            pipe.get(f"k{i}")
        replies = pipe.execute()
        assert replies[1::2] == [str(i).encode() for i in range(2000)]
        assert c.delete("big") == 1


def test_redis_cli_over_tls(node: Node, certs: Certs) -> None:
    if REDIS_CLI is None:
        pytest.skip("redis-cli is not installed")
    host, port = resp_address(node)
    base = [REDIS_CLI, "--tls", "--cacert", str(certs.cert), "-h", host, "-p", str(port)]
    if subprocess.run([REDIS_CLI, "--tls", "--help"], capture_output=True,
                      text=True).stdout.find("--cacert") < 0:
        pytest.skip("this redis-cli has no TLS")
    assert subprocess.run([*base, "SET", "cli", "tls"], capture_output=True, text=True,
                          timeout=30, check=True).stdout.strip() == "OK"
    assert subprocess.run([*base, "GET", "cli"], capture_output=True, text=True,
                          timeout=30, check=True).stdout.strip() == "tls"


def closed_within(sock: socket.socket, timeout_s: float) -> bool:
    """True if the node closes sock within timeout_s (reads and drops what it sends)."""
    sock.settimeout(timeout_s)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        return False
    return True


def client_hello() -> bytes:
    """The first bytes of a TLS handshake (the ClientHello), made without a socket."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing,
                                                server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("sent", [
    pytest.param(encode_request("SET", "plain", "text"), id="plaintext RESP"),
    pytest.param(b"\x16\x03\x01\x00\x05garbage" + bytes(range(256)) * 4, id="garbage"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),
])
def test_anything_but_tls_closes_that_connection_only(node: Node, certs: Certs,
                                                      sent: bytes) -> None:
    with tls_client(node, certs) as canary, \
            socket.create_connection(resp_address(node), timeout=10) as hostile:
        canary.set("canary", "alive")
        hostile.sendall(sent)
        assert closed_within(hostile, CLOSE_WAIT_S)
        assert canary.get("canary") == b"alive"
    with tls_client(node, certs) as c:
        assert c.get("plain") is None  # the plaintext SET was never run


@pytest.mark.parametrize("sent", [b"", client_hello()], ids=["nothing", "a client hello"])
def test_a_handshake_never_finished_is_closed_in_bounded_time_while_others_are_served(
        node: Node, certs: Certs, sent: bytes) -> None:
    with tls_client(node, certs) as canary, \
            socket.create_connection(resp_address(node), timeout=10) as stalled:
        stalled.sendall(sent)
        started = time.monotonic()
        served = 0
        stalled.setblocking(False)
        while True:  # the node serves the canary while the stalled handshake waits
            assert canary.set("canary", served) and canary.get("canary") == b"%d" % served
            served += 1
            try:
                if not stalled.recv(65536):
                    break
            except BlockingIOError:
                pass
            except ConnectionResetError:
                break
            assert time.monotonic() - started < CLOSE_WAIT_S, "the handshake was not cut off"
        assert time.monotonic() - started >= HANDSHAKE_TIMEOUT_S * 0.9
        assert served > 10


def test_client_certificates_are_required_with_resp_tls_ca(certs: Certs) -> None:
    with resp_node(*certs.door(), "--resp-tls-ca", str(certs.client_cert)) as (node, _):
        with pytest.raises(redis.ConnectionError):  # no certificate: refused in the handshake
            with tls_client(node, certs) as anonymous:
                anonymous.ping()
        with tls_client(node, certs, ssl_certfile=str(certs.client_cert),
                        ssl_keyfile=str(certs.client_key)) as known:
            assert known.ping()


def test_allow_remote_serves_a_door_on_all_interfaces_with_requirepass_and_tls(
        certs: Certs) -> None:
    region = new_region_name()
    with running_node(region, "--allow-remote", "--resp-bind", "0.0.0.0:0",
                      "--requirepass", "s3cret", *certs.door()) as node:
        port = int(node.ready["resp"].rsplit(":", 1)[1])
        with redis.Redis(host="127.0.0.1", port=port, password="s3cret", ssl=True,
                         ssl_ca_certs=str(certs.cert), socket_timeout=10) as c:
            assert c.set("k", "v") and c.get("k") == b"v"


@pytest.mark.parametrize("options, named", [
    (("--requirepass", "s3cret"), "resp_bind"),  # no TLS: the password in the clear
    (("--resp-tls-cert", "{cert}", "--resp-tls-key", "{key}"), "resp_bind"),  # no password
])
def test_allow_remote_refuses_a_door_on_all_interfaces_without_requirepass_and_tls(
        certs: Certs, options: tuple[str, ...], named: str) -> None:
    region = new_region_name()
    given = [o.format(cert=certs.cert, key=certs.key) for o in options]
    code, out, err = failed_start(region, "--allow-remote", "--resp-bind", "0.0.0.0:0", *given)
    assert code == EXIT_USAGE, (out, err)
    error = json.loads(err)
    assert error["error"] == "ConfigError" and named in error["message"]


@pytest.mark.parametrize("options, named", [
    (("--resp-tls-cert", "{cert}"), "resp_tls_key"),
    (("--resp-tls-cert", "{key}", "--resp-tls-key", "{key}"), "resp_tls_cert"),  # not a cert
])
def test_a_tls_setting_the_door_cannot_use_stops_the_start(
        certs: Certs, options: tuple[str, ...], named: str) -> None:
    region = new_region_name()
    given = [o.format(cert=certs.cert, key=certs.key) for o in options]
    code, out, err = failed_start(region, "--resp-bind", "127.0.0.1:0", *given)
    assert code == EXIT_USAGE, (out, err)
    error = json.loads(err)
    assert error["error"] == "ConfigError" and named in error["message"]


def test_bytes_tls_holds_decrypted_are_served_without_waiting_for_a_poll(
        certs: Certs, cache: shmkv.Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    """A readable poll does not show what the SSL object has decrypted and not yet handed
    out. With one small read per wake-up, a pipeline of PINGs in one record leaves most of it
    there, and the client sends nothing more until it has every reply: the door must read
    the rest without a poll (an in-process door, so that its read sizes can be made small)."""
    monkeypatch.setattr(resp_door, "READ_BYTES", 64)
    monkeypatch.setattr(resp_door, "TLS_READS_PER_WAKE", 1)
    config = NodeConfig(resp_tls_cert=str(certs.cert), resp_tls_key=str(certs.key))
    door = resp_door.RespDoor(cache, config, "127.0.0.1", 0, LockWaits(5.0))
    poller = zmq.Poller()
    door.attach(poller)
    replies: list[bytes] = []

    def pipeline() -> None:
        context = ssl.create_default_context(cafile=str(certs.cert))
        with socket.create_connection(("127.0.0.1", door.ctx.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"".join(encode_request("PING", b"%d" % i) for i in range(50)))
            received = b""
            while received.count(b"\r\n") < 100:  # $<n>\r\n<i>\r\n each
                chunk = tls.recv(65536)
                if not chunk:
                    break
                received += chunk
            replies.append(received)

    thread = threading.Thread(target=pipeline)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while thread.is_alive() and time.monotonic() < deadline:
            wait_s = min(0.1, max(0.0, door.due() - time.monotonic()))
            door.service(dict(poller.poll(int(wait_s * 1000))))
    finally:
        thread.join(timeout=15)
        door.close()
    assert replies == [b"".join(b"$%d\r\n%d\r\n" % (len(str(i)), i) for i in range(50))]
