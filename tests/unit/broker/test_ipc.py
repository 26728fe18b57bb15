"""broker.ipc: where the node's ipc:// endpoints go, the private directory it makes for them,
and the directories and socket files it refuses (someone else's, a symlink, a live socket)."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from shmkv.broker.ipc import ipc_directory, prepare
from shmkv.errors import ShmKVError


@pytest.fixture
def base() -> Iterator[Path]:
    # Unix socket paths are short (108 bytes): a short directory of our own under /tmp
    short = Path(f"/tmp/shmkv-test-ipc-{os.getpid()}")
    short.mkdir(mode=0o700)
    try:
        yield short
    finally:
        for path in sorted(short.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
        short.rmdir()


@pytest.mark.parametrize(("env", "expected"), [
    ({"RUNTIME_DIRECTORY": "/run/shmkv:/run/other", "XDG_RUNTIME_DIR": "/run/user/7"},
     "/run/shmkv"),
    ({"XDG_RUNTIME_DIR": "/run/user/7"}, "/run/user/7/shmkv"),
    ({}, f"/tmp/shmkv-{os.geteuid()}"),
])
def test_auto_picks_the_service_runtime_directory_then_the_users_then_tmp(
        env: dict[str, str], expected: str) -> None:
    assert ipc_directory("auto", env) == Path(expected)


def test_off_means_no_ipc_endpoints_and_a_path_means_that_directory() -> None:
    assert ipc_directory("", {}) is None and prepare("", "r", {}) is None
    assert ipc_directory("/srv/sockets", {}) == Path("/srv/sockets")


def test_a_missing_directory_is_made_private_and_holds_the_regions_sockets(base: Path) -> None:
    old_umask = os.umask(0)
    try:
        endpoints = prepare(str(base / "d"), "orders", {})
    finally:
        os.umask(old_umask)
    assert endpoints is not None
    assert stat.S_IMODE(os.stat(base / "d").st_mode) == 0o700
    assert (endpoints.request, endpoints.publish) == \
        (f"ipc://{base}/d/orders.sock", f"ipc://{base}/d/orders.pub.sock")


def test_a_directory_others_may_write_is_refused(base: Path) -> None:
    (base / "d").mkdir(mode=0o700)
    os.chmod(base / "d", 0o1777)
    with pytest.raises(ShmKVError, match="writable by other users"):
        prepare(str(base / "d"), "r", {})


def test_a_group_readable_runtime_directory_is_accepted(base: Path) -> None:
    (base / "d").mkdir(mode=0o750)  # systemd's RuntimeDirectoryMode=0750
    assert prepare("auto", "r", {"RUNTIME_DIRECTORY": str(base / "d")}) is not None


def test_a_symlink_in_place_of_the_directory_is_refused(base: Path) -> None:
    (base / "real").mkdir(mode=0o700)
    (base / "d").symlink_to(base / "real")
    with pytest.raises(ShmKVError, match="not a directory"):
        prepare(str(base / "d"), "r", {})


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away needs root")
def test_a_directory_of_another_user_is_refused(base: Path) -> None:
    (base / "d").mkdir(mode=0o700)
    os.chown(base / "d", 12345, -1)
    with pytest.raises(ShmKVError, match="belongs to uid 12345"):
        prepare(str(base / "d"), "r", {})


def test_a_file_that_is_not_a_socket_is_never_replaced(base: Path) -> None:
    (base / "r.sock").write_text("data")
    with pytest.raises(ShmKVError, match="is not a socket"):
        prepare(str(base), "r", {})
    assert (base / "r.sock").read_text() == "data"


def test_a_socket_someone_listens_on_is_refused_and_a_stale_one_is_not(base: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(base / "r.pub.sock"))
        listener.listen()
        with pytest.raises(ShmKVError, match="another process listens on"):
            prepare(str(base), "r", {})
    finally:
        listener.close()  # the file stays: what a killed node leaves
    assert (base / "r.pub.sock").exists()
    assert prepare(str(base), "r", {}) is not None
