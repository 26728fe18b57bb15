"""Who may use a region: the mode it is created with, and which owners an opener accepts
(region.py's rule). A region owned by another user is made here by chown-ing one (root can);
tests/integration/test_second_user.py has a real second user create it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import shmkv

OTHER_UID = 54321  # no user of this host needs to exist for a uid to own a file


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(params=["shm", "file"])
def where(request: pytest.FixtureRequest, region_name: str, tmp_path: Path) -> tuple[str, str]:
    """(region name, path of its object): a /dev/shm region or a file region."""
    if request.param == "shm":
        return region_name, f"/dev/shm/{region_name}"
    path = str(tmp_path / "region.shmkv")
    return path, path


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o640])
def test_a_region_gets_exactly_the_mode_asked_for_whatever_the_umask(
        where: tuple[str, str], umask_022: None, mode: int) -> None:
    name, path = where
    with shmkv.Cache.create(name, 1 << 20, mode=mode):
        assert _mode(path) == mode


@pytest.mark.parametrize("mode", [0o666, 0o602, 0o400, 0o1600, -1, "0600"])
def test_create_refuses_a_world_writable_or_unusable_mode_and_leaves_nothing(
        where: tuple[str, str], mode: object) -> None:
    name, path = where
    with pytest.raises(ValueError, match="mode"):
        shmkv.Cache.create(name, 1 << 20, mode=mode)  # type: ignore[arg-type]
    assert not os.path.exists(path)


def test_a_region_of_another_user_is_refused_unless_the_opener_names_that_owner(
        where: tuple[str, str]) -> None:
    name, path = where
    with shmkv.Cache.create(name, 1 << 20, mode=0o660) as c:
        c.set("k", b"v")
        os.chown(path, OTHER_UID, -1)
        with pytest.raises(shmkv.PermissionDenied, match=r"owner=.*--region-owner"):
            shmkv.Cache.open(name)
        with pytest.raises(shmkv.PermissionDenied, match=str(OTHER_UID)):
            shmkv.Cache.create(name, 1 << 20, exist_ok=True)
        with pytest.raises(shmkv.PermissionDenied):
            shmkv.Cache.open(name, owner=OTHER_UID + 1)
        for owner in (OTHER_UID, str(OTHER_UID)):
            with shmkv.Cache.open(name, owner=owner) as d:
                assert d.get("k") == b"v"
        with shmkv.Cache.create(name, 1 << 20, exist_ok=True, owner=OTHER_UID) as d:
            assert d.get("k") == b"v"
        assert c.get("k") == b"v"  # the refusals changed nothing


def test_the_callers_own_region_opens_whatever_owner_it_names(where: tuple[str, str]) -> None:
    name, _ = where
    with shmkv.Cache.create(name, 1 << 20) as c:
        c.set("k", b"v")
        with shmkv.Cache.open(name, owner=OTHER_UID) as d:
            assert d.get("k") == b"v"


def test_a_world_writable_region_is_refused_even_when_its_owner_is_named(
        where: tuple[str, str]) -> None:
    name, path = where
    with shmkv.Cache.create(name, 1 << 20) as c:
        c.set("k", b"v")
        os.chmod(path, 0o666)
        for owner in (None, OTHER_UID, os.geteuid()):
            with pytest.raises(shmkv.PermissionDenied, match="writable by every user"):
                shmkv.Cache.open(name, owner=owner)
        os.chmod(path, 0o600)
        with shmkv.Cache.open(name) as d:
            assert d.get("k") == b"v"


@pytest.mark.parametrize("owner", ["no-such-user-of-this-host", -1, 1.5, True])
def test_a_bad_owner_is_refused_before_the_region_is_opened(region_name: str,
                                                            owner: object) -> None:
    with shmkv.Cache.create(region_name, 1 << 20):
        with pytest.raises((ValueError, TypeError), match="owner"):
            shmkv.Cache.open(region_name, owner=owner)  # type: ignore[arg-type]


def test_permission_denied_is_a_shmkverror_and_a_permissionerror() -> None:
    assert issubclass(shmkv.PermissionDenied, shmkv.ShmKVError)
    assert issubclass(shmkv.PermissionDenied, PermissionError)
    assert "PermissionDenied" in shmkv.__all__


def _nested_dtype(depth: int) -> np.dtype:
    dt = np.dtype("u1")
    for _ in range(depth):
        dt = np.dtype([("a", dt)])
    return dt


@pytest.mark.parametrize("depth", [110, 300])
def test_set_array_refuses_a_dtype_that_get_array_could_not_read(cache: shmkv.Cache,
                                                                 depth: int) -> None:
    cache.set("k", b"kept")
    with pytest.raises(ValueError, match="nested too deeply"):
        cache.set_array("k", np.zeros(2, dtype=_nested_dtype(depth)))
    assert cache.get("k") == b"kept"


def test_set_array_takes_a_nested_dtype_that_reads_back(cache: shmkv.Cache) -> None:
    arr = np.zeros(2, dtype=_nested_dtype(20))
    cache.set_array("k", arr)
    np.testing.assert_array_equal(cache.get_array("k"), arr)
