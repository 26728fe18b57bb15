"""The node's ipc:// doors: Unix sockets for clients on the same host, in a directory that only
the node's user may write, next to the tcp endpoints.

A tcp port on loopback is open to every local user; a Unix socket only to whoever may reach
its file and write to it, so the directory and the node's umask decide who connects: with the
default ipc_dir, the node's own user (under systemd, the unit's group as well only if both
RuntimeDirectoryMode= and UMask= let it in).

    ipc_dir           directory
    "auto" (default)  $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=), else
                      $XDG_RUNTIME_DIR/shmkv, else /tmp/shmkv-<uid>
    a path            that directory
    "" ("off")        no ipc:// endpoints

    socket                       serves
    <dir>/<region>.sock          requests (RemoteCache("ipc://<dir>/<region>.sock"))
    <dir>/<region>.pub.sock      published messages (Subscriber)

The node creates a missing directory with mode 0700. It refuses one it did not make unless it
is a real directory (not a symlink), owned by the node's user, and writable by nobody else: in
/tmp anyone may create /tmp/shmkv-<uid> first and wait for the sockets. Binding over an existing
socket file is refused while another process listens on it (ZeroMQ would silently take the name
from a running node); a file left by a node that was killed is replaced. ZeroMQ removes the
socket files when the node closes its sockets.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shmkv.errors import ShmKVError

AUTO = "auto"


@dataclass(frozen=True)
class IpcEndpoints:
    request: str
    publish: str

    def remove(self) -> None:
        """Remove the socket files; call once the sockets are closed."""
        for endpoint in (self.request, self.publish):
            try:
                os.unlink(endpoint.removeprefix("ipc://"))
            except FileNotFoundError:
                pass


def ipc_directory(setting: str, env: Mapping[str, str] = os.environ) -> Path | None:
    """The directory ipc_dir names (see the module doc), or None when it is off."""
    if not setting:
        return None
    if setting != AUTO:
        return Path(setting)
    if env.get("RUNTIME_DIRECTORY"):  # systemd may list several, separated by ":"
        return Path(env["RUNTIME_DIRECTORY"].split(":")[0])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "shmkv"
    return Path(f"/tmp/shmkv-{os.geteuid()}")


def prepare(setting: str, region: str,
            env: Mapping[str, str] = os.environ) -> IpcEndpoints | None:
    """Make or check the directory and the socket names of region; None when ipc_dir is off.
    Raises ShmKVError saying what is wrong with the directory or a socket file."""
    directory = ipc_directory(setting, env)
    if directory is None:
        return None
    _make_private_dir(directory)
    request, publish = directory / f"{region}.sock", directory / f"{region}.pub.sock"
    for path in (request, publish):
        _check_free(path)
    return IpcEndpoints(f"ipc://{request}", f"ipc://{publish}")


def _make_private_dir(directory: Path) -> None:
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ShmKVError(f"cannot create the ipc directory {directory}: {exc.strerror}; give "
                         "another one with --ipc-dir, or turn ipc:// off with --ipc-dir off") \
            from None
    found = os.lstat(directory)
    problem = "is not a directory (a symlink or a file)" if not stat.S_ISDIR(found.st_mode) \
        else f"belongs to uid {found.st_uid}, not to the node's user ({os.geteuid()})" \
        if found.st_uid != os.geteuid() \
        else f"is writable by other users (mode {stat.S_IMODE(found.st_mode):04o})" \
        if found.st_mode & (stat.S_IWGRP | stat.S_IWOTH) else None
    if problem:
        raise ShmKVError(f"the ipc directory {directory} {problem}: another user could take "
                         "the node's sockets; remove it, or give another one with --ipc-dir")


def _check_free(path: Path) -> None:
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(found.st_mode):
        raise ShmKVError(f"{path} exists and is not a socket: the node will not replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return  # left by a node that is gone: ZeroMQ replaces it
        raise ShmKVError(f"cannot check the socket {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise ShmKVError(f"another process listens on {path} (a node of the same region?); stop "
                     "it, or give another directory with --ipc-dir")
