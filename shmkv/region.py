"""Create, attach and unlink the memory that a region lives in.

A region is named either by a POSIX shm name (`"demo"` -> /dev/shm/demo, made with posix_ipc)
or by a file path (any name containing "/", e.g. `"./data/main.shmkv"`): a file region
survives a reboot and is what persistence maps. Both are mapped MAP_SHARED, whole.

Pages are reserved with posix_fallocate at creation, so a full /dev/shm (or disk) fails
`create` with `OutOfSpace` instead of killing a later writer with SIGBUS when it first touches
a page. The header's magic is written last: a region whose creator died half-way never looks
valid.

Who may use a region (the same rule for shm objects and files, checked on the opened
descriptor with fstat, so nothing can swap the object between the check and the mapping):

  * mode: an object is created with exactly the caller's `mode` (0600 unless given): it is
    fchmod-ed after creation, so the umask neither narrows nor widens it. A world-writable
    mode is refused: every opener would refuse the region.
  * owner: /dev/shm is writable by every user, so anyone can create a region under a name a
    service will use and wait for it to attach. An opener therefore accepts a region only if
    it is owned by the opener's own user or by the `owner` it names (a user name or uid):
    sharing a 0660 region with a group, or running a client as another user, is said
    explicitly. A world-writable region is refused whoever owns it: anyone could rewrite it.
  * EACCES/EPERM from the system (opening root's 0600 region as another user, ...) is
    `PermissionDenied`, never a raw OSError or posix_ipc error.

A mapping cannot survive its object shrinking: if a region file is truncated while mapped, a
process touching a page past the new end is killed by SIGBUS (mmap(2)); nothing in user space
can catch that safely. Openers refuse a file whose size is not the header's region_bytes
(`size_problem`), and `shmkv doctor` reports it.

We never use multiprocessing.shared_memory, so the stdlib resource tracker cannot unlink a
live region behind our back when some process that touched it exits.
"""

from __future__ import annotations

import errno
import mmap
import os
import pwd
import re
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import posix_ipc

from . import layout as L
from .errors import IncompatibleLayout, OutOfSpace, PermissionDenied, RegionExists, RegionNotFound

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


Owner = str | int | None  # a user name or uid that may own a region besides the caller


def owner_uid(owner: Owner) -> int | None:
    """The uid an `owner` argument names (None: only the caller's own regions)."""
    if owner is None:
        return None
    if isinstance(owner, bool) or not isinstance(owner, int | str):
        raise TypeError(f"owner must be a user name or a uid, not {type(owner).__name__}")
    if isinstance(owner, int):
        if owner < 0:
            raise ValueError(f"owner uid must be >= 0, got {owner}")
        return owner
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        if owner.isdigit():
            return int(owner)
        raise ValueError(
            f"owner {owner!r} is no user of this host (give a user name or a uid)") from None


def _user(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _where(name: str) -> str:
    return name if is_path(name) else f"/dev/shm/{name}"


@contextmanager
def permission_errors(name: str, action: str) -> Iterator[None]:
    """Turn the system's EACCES/EPERM while action-ing region name into PermissionDenied."""
    try:
        yield
    except (PermissionError, posix_ipc.PermissionsError):
        raise PermissionDenied(
            f"cannot {action} region {name!r} ({_where(name)}): permission denied to "
            f"{_user(os.geteuid())}; run as its owner, or have it created with a mode that "
            "lets your group in (mode=0o660) and open it with owner=<its owner>") from None


def check_owner(name: str, fd: int, owner: Owner) -> None:
    """Refuse an object the caller should not trust: owned by a user other than the caller
    and owner, or writable by everyone (see the module docstring)."""
    st = os.fstat(fd)
    if st.st_mode & stat.S_IWOTH:
        raise PermissionDenied(
            f"region {name!r} ({_where(name)}) is writable by every user (mode "
            f"{stat.S_IMODE(st.st_mode):04o}), so anyone could rewrite it; shmkv refuses it "
            f"whoever owns it. Remove it (shmkv unlink) and create it again with mode 0600 or "
            f"0660, or have its owner run chmod o-w {_where(name)}")
    me = os.geteuid()
    if st.st_uid != me and st.st_uid != owner_uid(owner):
        raise PermissionDenied(
            f"region {name!r} ({_where(name)}) belongs to {_user(st.st_uid)}, not to "
            f"{_user(me)}: another user may have created it first to take over the name. If "
            "that user is meant to own it, say so: owner=<user> (CLI and node: --region-owner "
            "<user>); if not, remove it and create it again")


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
    """Create a new zero-filled object of region_bytes with every page reserved, with exactly
    the given mode."""
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be permission bits such as 0o600, got {mode!r}")
    if mode & stat.S_IWOTH:
        raise ValueError(f"mode {mode:04o} lets every user write the region, and every opener "
                         "would refuse it; use 0o600, or 0o660 to share it with a group")
    if mode & 0o600 != 0o600:
        raise ValueError(f"mode {mode:04o} does not let its owner read and write the region")
    if is_path(name):
        try:
            with permission_errors(name, "create"):
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except FileExistsError:
            raise RegionExists(f"region file {name!r} already exists; pass exist_ok=True to "
                               "attach, or Cache.unlink it first") from None
        except FileNotFoundError:
            raise RegionNotFound(f"cannot create region file {name!r}: its directory does "
                                 "not exist; create the directory first") from None
    else:
        try:
            with permission_errors(name, "create"):
                shm = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, mode=mode)
        except posix_ipc.ExistentialError:
            raise RegionExists(f"region {name!r} already exists in /dev/shm; pass exist_ok=True"
                               " to attach, or Cache.unlink it first") from None
        fd = os.dup(shm.fd)
        shm.close_fd()
    try:
        # shm_open applies the umask as open does: fchmod gives both kinds the mode asked for
        os.fchmod(fd, mode)
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


def open_mapping(name: str, owner: Owner = None) -> Mapping:
    """Attach to an existing region object, if the caller may trust it (check_owner), and map
    all of it."""
    owner_uid(owner)  # a bad owner argument fails before anything is opened
    try:
        with permission_errors(name, "open"):
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
        check_owner(name, fd, owner)
        deadline = time.monotonic() + ATTACH_WAIT_S
        while True:
            size = os.fstat(fd).st_size
            if size >= L.HEADER_BYTES:
                mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                if mm[0:8] == L.MAGIC:
                    problem = size_problem(name, mm[:L.HEADER.size], size)
                    if problem:
                        mm.close()
                        raise IncompatibleLayout(problem)
                    return Mapping(name, fd, mm)
                if time.monotonic() > deadline:
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


def size_problem(name: str, head: bytes, object_bytes: int) -> str | None:
    """What happened to a region whose object is no longer the size its header (head, the
    first HEADER.size bytes) gives, or None if the sizes agree. Only a file can be resized
    behind shmkv's back (truncate, cp over it, a full disk on restore): a process that has it
    mapped gets SIGBUS when it touches a page past the new end, which no check can prevent,
    so an opener refuses it rather than map what it cannot use."""
    region_bytes = L.HEADER.unpack_from(head, 0)[3]
    if region_bytes == object_bytes:
        return None
    how = "truncated" if object_bytes < region_bytes else "extended"
    return (f"region {name!r} ({_where(name)}) is {object_bytes} bytes but its header says "
            f"{region_bytes}: it was {how} after it was created (processes that had it mapped "
            "die with SIGBUS when they touch a page past the end of a truncated file); restore "
            "it from a copy, or unlink it and create it again")


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
