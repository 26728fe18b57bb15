"""Cache.unlink (and `shmkv unlink`) removes only what is provably a region: never an empty
lock file, a zero-filled or sparse file, a device node, a FIFO, a directory, or another
program's /dev/shm object; a symbolic link goes, its target stays a whole region."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import posix_ipc
import pytest
from tests_support import new_region_name

import shmkv
from shmkv import layout as L


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _zeros(p: Path) -> None:
    p.write_bytes(bytes(4096))


def _sparse(p: Path) -> None:
    with open(p, "wb") as f:
        f.truncate(1 << 30)  # a disk image nobody wrote yet: zeros, and no blocks


def _fifo(p: Path) -> None:
    os.mkfifo(p)


def _directory_inside(p: Path) -> None:
    p.mkdir()
    (p / "x").write_text("x")


def _device(p: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    os.mknod(p, 0o600 | 0o020000, os.makedev(1, 3))  # a character device: /dev/null's numbers


@pytest.mark.parametrize("make", [_empty, _zeros, _sparse, _fifo, _device],
                         ids=lambda f: f.__name__.strip("_"))
def test_unlink_leaves_a_file_that_is_not_a_region_alone(tmp_path: Path,
                                                         make: Callable[[Path], None]) -> None:
    decoy = tmp_path / "decoy.shmkv"
    make(decoy)
    before = os.lstat(decoy)
    with pytest.raises(shmkv.IncompatibleLayout, match="refusing to remove"):
        shmkv.Cache.unlink(str(decoy))
    after = os.lstat(decoy)
    assert (after.st_ino, after.st_size, after.st_mode) == \
        (before.st_ino, before.st_size, before.st_mode)


def test_unlink_refuses_a_directory(tmp_path: Path) -> None:
    _directory_inside(tmp_path / "d")
    with pytest.raises(ValueError, match="directory"):
        shmkv.Cache.unlink(str(tmp_path / "d"))
    assert (tmp_path / "d" / "x").exists()


def test_unlink_leaves_another_programs_shm_object_alone() -> None:
    name = new_region_name()
    shm = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, size=4096)
    try:
        with pytest.raises(shmkv.IncompatibleLayout, match="refusing to remove"):
            shmkv.Cache.unlink(name)
        assert os.path.exists(f"/dev/shm/{name}")
    finally:
        shm.close_fd()
        shm.unlink()


def test_unlink_of_a_symlink_removes_the_link_and_leaves_the_region_whole(
        tmp_path: Path) -> None:
    target = str(tmp_path / "region.shmkv")
    with shmkv.Cache.create(target, arena_bytes=1 << 20) as c:
        c.set("k", b"v")
    link = tmp_path / "link.shmkv"
    link.symlink_to(target)
    try:
        assert shmkv.Cache.unlink(str(link)) is True
        assert not link.exists() and not link.is_symlink()
        with shmkv.Cache.open(target) as c:
            assert c.get("k") == b"v"
    finally:
        shmkv.Cache.unlink(target)


def test_unlink_removes_a_region_whose_creator_died_before_writing_the_magic(
        tmp_path: Path) -> None:
    path = tmp_path / "half.shmkv"
    with shmkv.Cache.create(str(path), arena_bytes=1 << 20):
        pass
    with open(path, "r+b") as f:
        f.write(bytes(len(L.MAGIC)))
    assert shmkv.Cache.unlink(str(path)) is True
    assert not path.exists()
