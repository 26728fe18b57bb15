"""Create, attach and unlink the memory that a region lives in.

A region is named either by a POSIX shm name (`"demo"` -> /dev/shm/demo, made with posix_ipc)
or by a file path (any name containing "/", e.g. `"./data/main.shmkv"`): a file region
survives a reboot and is what persistence maps. Both are mapped MAP_SHARED, whole.

Pages are reserved with posix_fallocate at creation, so a full /dev/shm (or disk) fails
`create` with `OutOfSpace` instead of killing a later writer with SIGBUS when it first touches
a page. The header's magic is written last: a region whose creator died half-way never looks
valid. Objects are created with mode 0600 unless the caller passes another `mode`.

We never use multiprocessing.shared_memory, so the stdlib resource tracker cannot unlink a
live region behind our back when some process that touched it exits.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import stat
import time
from dataclasses import dataclass

import posix_ipc

from . import layout as L
from .errors import IncompatibleLayout, OutOfSpace, RegionExists, RegionNotFound

_SHM_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")
SHM_DIR = "/dev/shm"
ATTACH_WAIT_S = 2.0  # how long open() waits for a region that is still being created


def is_path(name: str) -> bool:
    return "/" in name


def check_name(name: object) -> str:
    """Return the name if it is a usable region name, else raise TypeError/ValueError."""
    if not isinstance(name, str):
        raise TypeError(f"region name must be a str, not {type(name).__name__}")
    if "\0" in name:
        raise ValueError("region name must not contain NUL")
    if not is_path(name):
        if not _SHM_NAME.match(name):
            raise ValueError(
                f"bad region name {name!r}: use 1-200 characters from A-Z a-z 0-9 _ . - "
                "(or a path containing '/' for a file-backed region)"
            )
        return name
    try:
        leaf = os.fsencode(os.path.basename(name))
    except UnicodeEncodeError:
        raise ValueError(f"region path {name!r} cannot be encoded for the file system") from None
    if not leaf or os.path.isdir(name):
        raise ValueError(f"region path {name!r} names a directory; name a file in it")
    if len(leaf) > 255:
        raise ValueError(f"region path {name!r}: its file name is longer than 255 bytes")
    return name


@dataclass
class Mapping:
    """An open, mapped region: the fd (kept for file locks) and the mmap."""

    name: str
    fd: int
    mm: mmap.mmap

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)


def create_mapping(name: str, region_bytes: int, mode: int) -> Mapping:
    """Create a new zero-filled object of region_bytes with every page reserved."""
    if is_path(name):
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except FileExistsError:
            raise RegionExists(f"region file {name!r} already exists; pass exist_ok=True to "
                               "attach, or Cache.unlink it first") from None
        except FileNotFoundError:
            raise RegionNotFound(f"cannot create region file {name!r}: its directory does "
                                 "not exist; create the directory first") from None
        os.fchmod(fd, mode)  # umask must not widen or narrow what the caller asked for
    else:
        try:
            shm = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, mode=mode)
        except posix_ipc.ExistentialError:
            raise RegionExists(f"region {name!r} already exists in /dev/shm; pass exist_ok=True"
                               " to attach, or Cache.unlink it first") from None
        fd = os.dup(shm.fd)
        shm.close_fd()
    try:
        try:
            os.posix_fallocate(fd, 0, region_bytes)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EFBIG):
                where = "the file system" if is_path(name) else "/dev/shm"
                raise OutOfSpace(
                    f"cannot reserve {region_bytes} bytes for region {name!r}: {where} is too "
                    "small; free space there or choose a smaller arena_bytes"
                ) from None
            raise
        mm = mmap.mmap(fd, region_bytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        remove_object(name)
        raise
    return Mapping(name, fd, mm)


def open_mapping(name: str) -> Mapping:
    """Attach to an existing region object and map all of it."""
    try:
        if is_path(name):
            fd = os.open(name, os.O_RDWR | os.O_CLOEXEC)
        else:
            shm = posix_ipc.SharedMemory("/" + name)
            fd = os.dup(shm.fd)
            shm.close_fd()
    except (FileNotFoundError, posix_ipc.ExistentialError):
        raise RegionNotFound(f"no region {name!r}; create it with shmkv.Cache.create({name!r})"
                             " or `shmkv init`") from None
    try:
        deadline = time.monotonic() + ATTACH_WAIT_S
        while True:
            size = os.fstat(fd).st_size
            if size >= L.HEADER_BYTES:
                mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                if mm[0:8] == L.MAGIC or time.monotonic() > deadline:
                    return Mapping(name, fd, mm)
                mm.close()  # still being created: its creator writes the magic last
            elif time.monotonic() > deadline:
                raise IncompatibleLayout(
                    f"region {name!r} is {size} bytes, smaller than a shmkv header: it is not a "
                    "shmkv region or its creator died; unlink it and create it again"
                )
            time.sleep(0.01)
    except BaseException:
        os.close(fd)
        raise


def unlink_mapping(name: str) -> bool:
    """Remove the region object's name; True if it existed. Mapped handles keep working.
    Only what is provably a region is removed (`_check_is_region`): Cache.unlink must never
    delete some other file a path (or a /dev/shm name) points at. A symbolic link is removed,
    not its target (which stays a whole region: nothing of a region lives outside it)."""
    try:
        _check_is_region(name)
    except FileNotFoundError:
        return False
    return remove_object(name)


def remove_object(name: str) -> bool:
    """Remove the name, whatever it holds: for a creator removing the object it just made."""
    try:
        if is_path(name):
            os.unlink(name)
        else:
            posix_ipc.unlink_shared_memory("/" + name)
        return True
    except (FileNotFoundError, posix_ipc.ExistentialError):
        return False


def _check_is_region(name: str) -> None:
    """Raise IncompatibleLayout unless name is a regular file holding a region's header: a
    ready region (its magic, of any layout version: an older one must stay removable), or one
    whose creator died before writing the magic (the rest of a header this release writes,
    consistent with the file's size). An empty or zero-filled file, a device, a directory or
    a file of some other format is left alone."""
    where = name if is_path(name) else os.path.join(SHM_DIR, name)
    st = os.stat(where)
    if not stat.S_ISREG(st.st_mode):
        raise IncompatibleLayout(f"{name!r} is not a regular file, so not a shmkv region; "
                                 "refusing to remove it")
    with open(where, "rb") as f:
        head = f.read(L.HEADER_BYTES)
    if head[:8] == L.MAGIC:
        return
    try:
        L.unpack_header(L.MAGIC + head[8:], st.st_size)
    except IncompatibleLayout:
        raise IncompatibleLayout(f"{name!r} is not a shmkv region; refusing to remove it "
                                 "(delete it yourself if you mean to)") from None
