"""broker.notify: the exact sd_notify datagrams, received on a real AF_UNIX datagram socket that
plays systemd (a file system path, and an abstract "@name"), and the watchdog interval."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator

import pytest

from shmkv.broker.notify import Notifier

RECV_TIMEOUT_S = 5.0


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket, notify_socket: str) -> None:
        self.sock = sock
        self.notify_socket = notify_socket  # the value for $NOTIFY_SOCKET

    def recv(self) -> bytes:
        return self.sock.recv(4096)  # times out (socket.timeout) rather than hang

    def nothing_queued(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(RECV_TIMEOUT_S)
        return False


@pytest.fixture
def path_systemd() -> Iterator[FakeSystemd]:
    # A short directory of our own: sun_path holds 108 bytes, and pytest's tmp_path can be longer.
    directory = tempfile.mkdtemp(prefix="shmkv-notify-")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        sock.settimeout(RECV_TIMEOUT_S)
        yield FakeSystemd(sock, path)
    finally:
        sock.close()
        shutil.rmtree(directory)


@pytest.fixture
def abstract_systemd() -> Iterator[FakeSystemd]:
    name = f"shmkv-test-notify-{os.getpid()}-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind("\0" + name)  # abstract names vanish with the socket: nothing to unlink
        sock.settimeout(RECV_TIMEOUT_S)
        yield FakeSystemd(sock, "@" + name)
    finally:
        sock.close()


@pytest.fixture(params=["path", "abstract"])
def systemd(request: pytest.FixtureRequest) -> FakeSystemd:
    return request.getfixturevalue(f"{request.param}_systemd")


@pytest.fixture
def notifier(systemd: FakeSystemd) -> Iterator[Notifier]:
    with Notifier({"NOTIFY_SOCKET": systemd.notify_socket}) as n:
        yield n


def test_ready_sends_ready_and_status(notifier: Notifier, systemd: FakeSystemd) -> None:
    assert notifier.enabled
    assert notifier.ready("serving region shmkv")
    assert systemd.recv() == b"READY=1\nSTATUS=serving region shmkv"


def test_ready_without_status_sends_only_ready(notifier: Notifier, systemd: FakeSystemd) -> None:
    assert notifier.ready()
    assert systemd.recv() == b"READY=1"


def test_status_watchdog_and_stopping_send_one_datagram_each(notifier: Notifier,
                                                             systemd: FakeSystemd) -> None:
    assert notifier.status("12 keys")
    assert notifier.watchdog()
    assert notifier.stopping()
    assert notifier.stopping("SIGTERM")
    assert [systemd.recv() for _ in range(4)] == [
        b"STATUS=12 keys", b"WATCHDOG=1", b"STOPPING=1", b"STOPPING=1\nSTATUS=SIGTERM"]
    assert systemd.nothing_queued()


def test_status_is_kept_on_one_line(notifier: Notifier, systemd: FakeSystemd) -> None:
    notifier.status("two\nlines\r\nREADY=1")  # must not smuggle in an assignment
    assert systemd.recv() == b"STATUS=two lines READY=1"


def test_status_is_sent_as_utf8(notifier: Notifier, systemd: FakeSystemd) -> None:
    notifier.status("région prête")
    assert systemd.recv() == "STATUS=région prête".encode()


def test_status_with_unencodable_text_is_sent_not_raised(notifier: Notifier,
                                                        systemd: FakeSystemd) -> None:
    assert notifier.status("bad \udcff byte")
    assert systemd.recv() == b"STATUS=bad ? byte"


def test_notifier_is_a_no_op_without_notify_socket(capsys: pytest.CaptureFixture[str]) -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x") and not notifier.watchdog() and not notifier.stopping()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("value", ["relative/notify", "@", "vsock:2:1234"])
def test_unusable_notify_socket_is_reported_once_and_ignored(
        value: str, capsys: pytest.CaptureFixture[str]) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": value})
    assert not notifier.enabled
    assert not notifier.ready() and not notifier.watchdog()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"NOTIFY_SOCKET={value!r}" in err


def test_send_error_is_reported_once_and_never_raised(
        path_systemd: FakeSystemd, capsys: pytest.CaptureFixture[str]) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": path_systemd.notify_socket + ".gone"})
    try:
        assert notifier.enabled
        assert not notifier.ready()
        assert not notifier.watchdog()
        assert notifier.failures == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot notify systemd" in err
    finally:
        notifier.close()


def test_notifier_recovers_when_the_socket_comes_back(
        path_systemd: FakeSystemd, capsys: pytest.CaptureFixture[str]) -> None:
    """systemd re-creates its socket when it re-executes: a later ping must get through."""
    path = path_systemd.notify_socket
    with Notifier({"NOTIFY_SOCKET": path}) as notifier:
        os.rename(path, path + ".away")
        assert not notifier.watchdog()
        os.rename(path + ".away", path)
        assert notifier.watchdog()
        assert path_systemd.recv() == b"WATCHDOG=1"
    assert "cannot notify systemd" in capsys.readouterr().err


@pytest.mark.parametrize(("env", "interval_s"), [
    ({"WATCHDOG_USEC": "10000000"}, 5.0),
    ({"WATCHDOG_USEC": "300000", "WATCHDOG_PID": str(os.getpid())}, 0.15),
    ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_PID": str(os.getpid())}, None),
    ({}, None),
])
def test_watchdog_interval_is_half_the_timeout_when_meant_for_us(
        env: dict[str, str], interval_s: float | None) -> None:
    assert Notifier(env).watchdog_interval_s() == interval_s
