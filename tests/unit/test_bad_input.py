"""Bad input at the region level: files that are not regions, regions cut short or grown,
headers from elsewhere, a file system too small, bad names and parameters, locks left held by
processes the kernel never saw die, and region bodies overwritten with garbage.

Each test expects a clear error (a ShmKVError, or TypeError/ValueError for a bad argument) and
checks that nothing already stored was lost or changed. Where today's behaviour is a bug, the
test states the behaviour we want and carries a strict xfail saying what happens instead, so
that it starts failing (and asks for the marker to go) the day the bug is fixed.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tests_support import ctx, new_region_name, region_objects

import shmkv
from shmkv import layout as L
from shmkv import region as R
from shmkv.check import check_region
from shmkv.hashing import xxh3_64

DATA = {f"key-{i}": bytes([i]) * (i * 37) for i in range(60)}
# The messages of a refused region say what to do about it.
WHAT_TO_DO = r"unlink|recreate|create it again|pick another name"
ATTACH_WAIT_S = getattr(R, "ATTACH_WAIT_S", 2.0)  # open() waits this long for a creator


def _fill(c: shmkv.Cache) -> None:
    for key, value in DATA.items():
        c.set(key, value)


def _assert_intact(c: shmkv.Cache) -> None:
    assert {key: c.get(key) for key in DATA} == DATA
    assert check_region(c) == []


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _patch_file(path: str, offset: int, data: bytes) -> bytes:
    """Write data at offset; return the bytes it replaced."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(len(data))
        f.seek(offset)
        f.write(data)
    return old


@contextmanager
def stored_file_region(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    """A closed file-backed region holding DATA: (path, its bytes). However the test mangles
    the file, its bytes are put back at the end, so that unlink knows it for a region."""
    path = str(tmp_path / "region.shmkv")
    with shmkv.Cache.create(path, arena_bytes=1 << 20) as c:
        _fill(c)
    original = Path(path).read_bytes()
    try:
        yield path, original
    finally:
        Path(path).write_bytes(original)
        shmkv.Cache.unlink(path)


# --- files that are not regions ----------------------------------------------------------
@pytest.mark.parametrize("size", [0, 100, 4096, 1 << 20])
def test_open_of_a_file_of_random_bytes_raises_incompatiblelayout_and_leaves_it_alone(
        tmp_path: Path, size: int) -> None:
    path = tmp_path / "garbage.shmkv"
    garbage = random.Random(size).randbytes(size)
    path.write_bytes(garbage)
    fds = _open_fds()
    start = time.monotonic()
    with pytest.raises((shmkv.IncompatibleLayout, shmkv.CorruptRegion), match=WHAT_TO_DO):
        shmkv.Cache.open(str(path))
    # Without the magic, open waits for a creator that might still be writing it, then stops.
    assert time.monotonic() - start < ATTACH_WAIT_S + 3
    assert path.read_bytes() == garbage and _open_fds() == fds


@pytest.mark.parametrize("size", [4096, 1 << 20])
def test_open_of_a_file_with_the_magic_then_garbage_is_refused_at_once(tmp_path: Path,
                                                                       size: int) -> None:
    path = tmp_path / "garbage.shmkv"
    garbage = L.MAGIC + random.Random(size).randbytes(size - len(L.MAGIC))
    path.write_bytes(garbage)
    start = time.monotonic()
    with pytest.raises((shmkv.IncompatibleLayout, shmkv.CorruptRegion), match=WHAT_TO_DO):
        shmkv.Cache.open(str(path))
    assert time.monotonic() - start < 1
    assert path.read_bytes() == garbage


# --- regions cut short, grown, or with a foreign header --------------------------------
@pytest.mark.parametrize("change", ["truncated to half", "truncated to its header",
                                    "extended"])
def test_a_region_file_of_the_wrong_size_is_refused_and_not_touched(tmp_path: Path,
                                                                    change: str) -> None:
    with stored_file_region(tmp_path) as (path, original):
        if change == "extended":
            with open(path, "ab") as f:
                f.write(random.Random(1).randbytes(5000))
        else:
            os.truncate(path, len(original) // 2 if change == "truncated to half"
                        else L.HEADER_BYTES)
        mangled = Path(path).read_bytes()
        with pytest.raises(shmkv.IncompatibleLayout, match="truncated"):
            shmkv.Cache.open(path)
        assert Path(path).read_bytes() == mangled  # refused without writing
        if change == "extended":  # cut the extra bytes off: everything is still there
            os.truncate(path, len(original))
            with shmkv.Cache.open(path) as c:
                _assert_intact(c)


@pytest.mark.parametrize("offset,new,match", [
    pytest.param(8, bytes([L.LAYOUT_VERSION ^ 0xFF]), "layout version", id="layout_version^0xff"),
    pytest.param(8, bytes([L.LAYOUT_VERSION + 1]), "layout version", id="layout_version+1"),
    pytest.param(8, bytes([L.LAYOUT_VERSION - 1]), "layout version", id="layout_version-1"),
    pytest.param(32, (L.HASH_XXH3_64 + 1).to_bytes(4, "little"), "hashing", id="hash_id+1"),
    pytest.param(32, (0).to_bytes(4, "little"), "hashing", id="hash_id=0"),
])
def test_a_header_from_another_version_or_hash_is_refused_and_the_data_kept(
        tmp_path: Path, offset: int, new: bytes, match: str) -> None:
    with stored_file_region(tmp_path) as (path, _):
        old = _patch_file(path, offset, new)
        with pytest.raises(shmkv.IncompatibleLayout, match=match):
            shmkv.Cache.open(path)
        _patch_file(path, offset, old)
        with shmkv.Cache.open(path) as c:
            _assert_intact(c)


# Header fields that describe the region's geometry (offsets from the table in layout.py).
@pytest.mark.parametrize("offset,value", [
    pytest.param(36, (0).to_bytes(4, "little"), id="n_stripes=0"),
    pytest.param(36, (3).to_bytes(4, "little"), id="n_stripes=3"),
    pytest.param(36, (512).to_bytes(4, "little"), id="n_stripes=512"),
    pytest.param(44, (0).to_bytes(4, "little"), id="max_collections=0"),
    pytest.param(48, (0).to_bytes(4, "little"), id="max_procs=0"),
    pytest.param(104, (1 << 60).to_bytes(8, "little"), id="arena_bytes=2**60"),
])
def test_a_header_with_impossible_geometry_is_refused_as_corrupt(tmp_path: Path, offset: int,
                                                                value: bytes) -> None:
    with stored_file_region(tmp_path) as (path, _):
        _patch_file(path, offset, value)
        with pytest.raises((shmkv.IncompatibleLayout, shmkv.CorruptRegion)):
            shmkv.Cache.open(path)


# --- a file system too small ------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for this test (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a 1 MiB tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot run mount: {exc}")
    if done.returncode:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_create_on_a_file_system_too_small_raises_outofspace_and_leaves_nothing(
        small_fs: Path, cache: shmkv.Cache) -> None:
    _fill(cache)
    with pytest.raises(shmkv.OutOfSpace, match="arena_bytes"):
        shmkv.Cache.create(str(small_fs / "big.shmkv"), arena_bytes=8 << 20)
    assert os.listdir(small_fs) == []
    # The failed reservation was given back: a region that fits is made there at once.
    fits = str(small_fs / "fits.shmkv")
    try:
        with shmkv.Cache.create(fits, arena_bytes=256 << 10) as c:
            c.set("k", b"v")
            assert c.get("k") == b"v"
    finally:
        shmkv.Cache.unlink(fits)
    assert os.listdir(small_fs) == []
    _assert_intact(cache)


def _write_through_the_arena(path: str) -> None:
    with shmkv.Cache.open(path) as c:
        for i in range(300):  # 1.2 MiB through a 256 KiB arena: every page gets written
            c.set(f"k{i}", bytes([i % 256]) * 4096)
        assert c.get("k299") == bytes([299 % 256]) * 4096
        assert check_region(c) == []


def test_a_region_keeps_working_when_its_file_system_fills_up(small_fs: Path) -> None:
    path = str(small_fs / "region.shmkv")
    try:
        shmkv.Cache.create(path, arena_bytes=256 << 10).close()
        with open(small_fs / "filler", "wb", buffering=0) as f:  # take every page still free
            with pytest.raises(OSError) as full:
                while True:
                    f.write(b"\0" * 4096)
            assert full.value.errno == errno.ENOSPC
        # In a child: if the region's pages were not reserved, writing them raises SIGBUS.
        writer = ctx.Process(target=_write_through_the_arena, args=(path,))
        writer.start()
        writer.join(60)
        if writer.is_alive():
            writer.kill()
            writer.join()
        assert writer.exitcode == 0, (
            f"writer ended with {writer.exitcode} (-{signal.SIGBUS.value} is SIGBUS: the "
            "region's pages were not reserved at create)")
    finally:
        shmkv.Cache.unlink(path)


# --- names -----------------------------------------------------------------------------
CALLS: dict[str, Callable[[object], object]] = {
    "create": lambda name: shmkv.Cache.create(name, arena_bytes=1 << 20),  # type: ignore
    "open": lambda name: shmkv.Cache.open(name),  # type: ignore[arg-type]
    "unlink": lambda name: shmkv.Cache.unlink(name),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("name,error", [
    ("", ValueError), ("\0", ValueError), ("a\0b", ValueError), ("/tmp/a\0b", ValueError),
    ("x" * 201, ValueError), (".hidden", ValueError), ("-dash", ValueError),
    ("a b", ValueError), ("é", ValueError), ("a:b", ValueError), ("\ud800", ValueError),
    (5, TypeError), (None, TypeError), (b"name", TypeError), (["a"], TypeError),
], ids=lambda v: v.__name__ if isinstance(v, type) else repr(v))
def test_bad_region_names_are_refused_by_create_open_and_unlink(
        cache: shmkv.Cache, call: str, name: object, error: type[Exception]) -> None:
    _fill(cache)
    with pytest.raises(error, match="region name"):
        CALLS[call](name)
    _assert_intact(cache)


def _xfail(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=reason)


# Paths with '/' where no region file can be. What a test wants: ValueError for a name that can
# never name a region file; for a directory, ValueError or a ShmKVError; never a bare OSError.
ODD_PATHS: dict[str, tuple[Callable[[Path], str], tuple[type[Exception], ...]]] = {
    "trailing slash on a directory": (lambda d: f"{d}/", (ValueError,)),
    "trailing slash on a missing directory": (lambda d: f"{d}/missing/", (ValueError,)),
    "an existing directory": (lambda d: str(d), (ValueError, shmkv.ShmKVError)),
    "a file name too long for the file system": (lambda d: f"{d}/{'x' * 300}.shmkv",
                                                 (ValueError,)),
    "a name the file system cannot encode": (lambda d: f"{d}/\ud800.shmkv", (ValueError,)),
}
ODD_CASES = [pytest.param(kind, call) for kind in ODD_PATHS
             for call in ("create", "open", "unlink")]


@pytest.mark.parametrize("kind,call", ODD_CASES)
def test_paths_where_no_region_file_can_be_are_refused_clearly(
        tmp_path: Path, cache: shmkv.Cache, kind: str, call: str) -> None:
    _fill(cache)
    make, errors = ODD_PATHS[kind]
    with pytest.raises(errors) as info:
        CALLS[call](make(tmp_path))
    assert not isinstance(info.value, UnicodeError), f"bare codec error: {info.value}"
    assert tmp_path.is_dir()
    _assert_intact(cache)


def test_create_in_a_missing_directory_raises_a_shmkverror(tmp_path: Path) -> None:
    with pytest.raises(shmkv.ShmKVError):
        shmkv.Cache.create(str(tmp_path / "missing" / "region.shmkv"), arena_bytes=1 << 20)


# --- a region body overwritten with garbage --------------------------------------------
AREAS = {  # area -> (first byte, end) as Layout attributes
    "index": ("index_offset", "arena_offset"),
    "arena": ("arena_offset", "region_bytes"),
    "stripe records": ("stripes_offset", "procs_offset"),
    "collection table": ("collections_offset", "counts_offset"),
    "item counts": ("counts_offset", "access_offset"),
}
STEP_S = 1  # a step that takes longer than this is taken to hang


class _Hung(Exception):
    pass


def _on_alarm(signum: int, frame: object) -> None:
    raise _Hung()


def _use_a_garbled_region(path: str, conn) -> None:
    """In a child: every call on the region must return, or raise a ShmKVError or a plain
    TypeError/ValueError. Sends back what went wrong."""
    signal.signal(signal.SIGALRM, _on_alarm)
    problems: list[str] = []
    try:
        c = shmkv.Cache.open(path, lock_timeout_s=0.5)
    except shmkv.ShmKVError:
        conn.send(problems)  # refused at open: that is fine too
        return
    steps = [
        ("get", lambda key: c.get(key)), ("set", lambda key: c.set(key, b"new")),
        ("delete", lambda key: c.delete(key)), ("incr", lambda key: c.incr(key)),
        ("len", lambda key: len(c)), ("iter", lambda key: list(c)),
        ("stats", lambda key: c.stats()), ("maintain", lambda key: c.maintain()),
        ("collection", lambda key: c.collection("c").set(key, b"v")),
        ("clear", lambda key: c.clear()),
    ]
    for label, step in steps:
        for key in list(DATA)[::10]:
            signal.alarm(STEP_S)
            try:
                step(key)
            except shmkv.ShmKVError:
                pass
            except _Hung:
                problems.append(f"{label} hung")
                break
            except Exception as exc:  # noqa: BLE001
                if type(exc) not in (TypeError, ValueError):
                    problems.append(f"{label} raised {type(exc).__name__}: {exc}")
                    break
            finally:
                signal.alarm(0)
    conn.send(problems)


def _garble(path: str, area: str) -> None:
    with shmkv.Cache.open(path) as c:
        lay = c._region.layout
    start, end = (getattr(lay, attr) for attr in AREAS[area])
    _patch_file(path, start, random.Random(area).randbytes(end - start))


@pytest.mark.parametrize("area", sorted(AREAS))
def test_a_region_body_overwritten_with_garbage_fails_with_shmkverrors_not_crashes_or_hangs(
        tmp_path: Path, area: str) -> None:
    with stored_file_region(tmp_path) as (path, _):
        _garble(path, area)
        receive, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_use_a_garbled_region, args=(path, send))
        child.start()
        child.join(60)
        if child.is_alive():
            child.kill()
            child.join()
            problems = ["the child hung"]
        elif receive.poll():
            problems = receive.recv()
        else:
            problems = [f"the child died with exit code {child.exitcode}"]
        assert problems == [], problems


@pytest.mark.parametrize("area", ["index", "stripe records", "collection table"])
def test_repair_mends_a_region_body_overwritten_with_garbage(tmp_path: Path, area: str) -> None:
    with stored_file_region(tmp_path) as (path, _):
        _garble(path, area)
        with shmkv.Cache.open(path) as c:
            c.repair()
            assert check_region(c) == []
            if area != "index":  # the entries themselves were not touched
                assert {key: c.get(key) for key in DATA} == DATA
            c.set("after", b"repair")
            assert c.get("after") == b"repair"
            assert check_region(c) == []


def test_repair_of_an_arena_overwritten_with_garbage_says_to_recreate_the_region(
        tmp_path: Path) -> None:
    with stored_file_region(tmp_path) as (path, _):
        _garble(path, "arena")
        with shmkv.Cache.open(path, lock_timeout_s=0.5) as c:
            for _ in range(2):  # and the failed repair left no lock taken (else LockTimeout)
                with pytest.raises(shmkv.CorruptRegion, match="create it again"):
                    c.repair()


def _stripe_of(c: shmkv.Cache, key: bytes) -> int:
    return xxh3_64(key, c._region.seed) & (c._region.layout.n_stripes - 1)


def test_a_slot_whose_ref_leaves_the_arena_raises_corruptregion_until_repaired(
        cache: shmkv.Cache) -> None:
    _fill(cache)
    region, lay = cache._region, cache._region.layout
    key = b"victim"
    h = xxh3_64(key, region.seed)
    base, pos = lay.index_offset // 8 + _stripe_of(cache, key) * lay.slots_per_stripe, \
        (h >> 32) % lay.slots_per_stripe
    while region.q[base + pos]:  # where an insert of key would go: in its probe run
        pos = (pos + 1) % lay.slots_per_stripe
    region.q[base + pos] = (h >> 32) << 32 | 0xFFFFFFFF  # key's tag, a ref past the mapping
    for call in (lambda: cache.get(key), lambda: cache.set(key, b"v"),
                 lambda: cache.delete(key), lambda: key in cache, lambda: list(cache)):
        with pytest.raises(shmkv.CorruptRegion, match="doctor --repair"):
            call()
    assert cache.repair()["slots_dropped"] == 1
    cache.set(key, b"v")
    assert cache.get(key) == b"v"
    _assert_intact(cache)


def test_a_stripe_left_odd_without_an_owner_is_repaired_by_the_next_reader_at_once(
        cache: shmkv.Cache) -> None:
    """What a writer that raised CorruptRegion between its two seq bumps leaves: the stripe
    changing, and nobody holding it."""
    _fill(cache)
    key = "key-7"
    seq_at = (cache._region.layout.stripes_offset
              + _stripe_of(cache, key.encode()) * L.STRIPE_BYTES + L.S_SEQ) >> 3
    cache._region.q[seq_at] += 1
    started = time.monotonic()
    assert cache.get(key) == DATA[key]
    assert time.monotonic() - started < 1, "the reader waited for a writer that is not there"
    assert not cache._region.q[seq_at] & 1
    _assert_intact(cache)


# --- locks left held by processes the kernel never saw die ----------------------------------
def _stale_lock_words(path: str) -> list[int]:
    """Offsets of the first u32 (glibc's lock word: the owner's thread id) of every mutex."""
    with shmkv.Cache.open(path) as c:
        from shmkv.locks import mutex_offsets
        return mutex_offsets(c._region.layout)


@pytest.mark.parametrize("how", ["open", "create(exist_ok=True)"])
def test_a_region_whose_locks_were_left_held_opens_and_writes_at_once(tmp_path: Path,
                                                                      how: str) -> None:
    """After a reboot (or a power loss) a file region's mutexes can say "held by thread N"
    for a thread that no longer exists and that the kernel never saw die (no EOWNERDEAD):
    the first opener, finding nobody else attached, re-initialises them."""
    with stored_file_region(tmp_path) as (path, _):
        for off in _stale_lock_words(path):  # "locked by thread 0x3FFFFFF0", for ever
            _patch_file(path, off, (0x3FFFFFF0).to_bytes(4, "little"))
        started = time.monotonic()
        if how == "open":
            c = shmkv.Cache.open(path, lock_timeout_s=1)
        else:
            c = shmkv.Cache.create(path, exist_ok=True, lock_timeout_s=1)
        with c:
            for i in range(64):  # a write in every stripe, and the arena lock
                c.set(f"new{i}", b"v" * 100)
            assert time.monotonic() - started < 1, "the opener waited for a dead holder"
            _assert_intact(c)


def test_an_opener_does_not_reinitialise_locks_that_live_processes_hold(
        cache: shmkv.Cache, region_name: str) -> None:
    cache._locks.acquire_stripe(0)
    try:
        with shmkv.Cache.open(region_name, lock_timeout_s=0.2) as other:
            with pytest.raises(shmkv.LockTimeout):
                other._locks.acquire_stripe(0)  # still ours: not reset under us
    finally:
        cache._locks.release_stripe(0)


# --- parameters --------------------------------------------------------------------------
def _refused_create(name: str, kwargs: dict) -> Exception:
    """Create with kwargs; return the error. An accepted create is closed, then fails."""
    kwargs = {"arena_bytes": 1 << 20, **kwargs}
    try:
        c = shmkv.Cache.create(name, **kwargs)
    except (TypeError, ValueError) as exc:
        return exc
    c.close()
    pytest.fail(f"Cache.create({name!r}, **{kwargs!r}) was accepted")


@pytest.mark.parametrize("kwargs", [
    {"lock_timeout_s": -1}, {"lock_timeout_s": "5"}, {"lock_timeout_s": float("nan")},
    {"max_keys": 1.5},
], ids=repr)
def test_bad_lock_timeout_and_max_keys_are_refused_at_create(region_name: str,
                                                             kwargs: dict) -> None:
    _refused_create(region_name, kwargs)
    assert region_objects(region_name) == []


# Kept last: pytest reports a failure of a session fixture's teardown (the check that no
# region was left behind) as one more xfail when the last test of a run is a strict xfail.
@pytest.mark.parametrize("kwargs", [
    {"arena_bytes": 0}, {"arena_bytes": -1}, {"arena_bytes": 4095},
    {"arena_bytes": L.MAX_ARENA_BYTES + 8}, {"arena_bytes": 2**64}, {"arena_bytes": 10**100},
    {"arena_bytes": 1.5e6}, {"arena_bytes": "64m"}, {"arena_bytes": None},
    {"arena_bytes": True},
    {"n_stripes": 0}, {"n_stripes": 3}, {"n_stripes": 1024}, {"n_stripes": -16},
    {"n_stripes": 2.0}, {"n_stripes": "16"}, {"n_stripes": None},
    {"max_keys": 0}, {"max_keys": -1}, {"max_keys": 10**12}, {"max_keys": "5"},
    {"protected_pct": 200}, {"protected_pct": -1}, {"protected_pct": 50.0},
    {"protected_pct": "80"},
    {"max_collections": 0}, {"max_collections": 70_000}, {"max_collections": 1.0},
], ids=repr)
def test_absurd_create_parameters_are_refused_and_leave_nothing(
        cache: shmkv.Cache, kwargs: dict) -> None:
    _fill(cache)
    name = new_region_name()
    try:
        _refused_create(name, kwargs)
        assert region_objects(name) == []
    finally:
        shmkv.Cache.unlink(name)
    _assert_intact(cache)


def test_unlink_refuses_to_remove_a_file_that_is_not_a_region(tmp_path: Path) -> None:
    precious = tmp_path / "notes.txt"
    precious.write_text("not a region")
    with pytest.raises(shmkv.IncompatibleLayout, match="not a shmkv region"):
        shmkv.Cache.unlink(str(precious))
    assert precious.read_text() == "not a region"
