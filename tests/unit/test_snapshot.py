"""Snapshots of a region and their restore: round trips (bytes, arrays, collections, absolute
TTLs), damaged files refused before anything changes, the fit checks, replace, and the atomic
write (the file at the path is the old one or the new one, whole; no temp file is left)."""

from __future__ import annotations

import errno
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests_support import FakeClock, new_region_name

import shmkv
from shmkv import snapshot
from shmkv.hashing import xxh3_64
from shmkv import snapshot_format as F


@pytest.fixture
def target(fake_clock: FakeClock) -> Iterator[shmkv.Cache]:
    """A second region (4 MiB arena) on the same fake clock, to restore into."""
    name = new_region_name()
    c = shmkv.Cache.create(name, arena_bytes=4 << 20, clock=fake_clock)
    try:
        yield c
    finally:
        c.close()
        shmkv.Cache.unlink(name)


def contents(c: shmkv.Cache) -> dict[tuple[str, bytes], tuple[Any, float | None]]:
    """{(collection, key): (value or array, ttl)} of every collection of c's region."""
    out: dict[tuple[str, bytes], tuple[Any, float | None]] = {}
    for name in ["", *c.collections()]:
        handle = c.collection(name) if name else c
        for key in handle.keys():
            try:
                value: Any = handle.get_array(key).tobytes()
            except TypeError:
                value = handle.get(key)
            out[(name, bytes(key))] = (value, handle.ttl(key))
    return out


def fill(c: shmkv.Cache) -> None:
    c.set("plain", b"value")
    c.set(b"\x00binary\xff", bytes(range(256)))
    c.set("empty", b"")
    c.set("big", os.urandom(100_000))
    c.set_array("matrix", np.arange(12, dtype=np.float32).reshape(3, 4))
    c.set_array("records", np.array([(1, 2.5)], dtype=[("a", "<i4"), ("b", "<f8")]))
    users = c.collection("users")
    users.set("plain", b"the users' plain")
    users.set_array("vec", np.arange(5, dtype=np.int64))
    c.collection("empty collection")


def test_a_restored_region_holds_the_values_arrays_and_collections_of_the_snapshot(
        cache: shmkv.Cache, target: shmkv.Cache, tmp_path: Path) -> None:
    fill(cache)
    report = cache.snapshot(str(tmp_path / "s.snp"))
    assert report["keys"] == 8
    assert report["collections"] == ["empty collection", "users"]
    assert report["bytes"] == (tmp_path / "s.snp").stat().st_size
    restored = target.restore(str(tmp_path / "s.snp"))
    assert restored["keys"] == 8 and restored["skipped_expired"] == 0
    assert contents(target) == contents(cache)
    assert target.collections() == ["empty collection", "users"]
    matrix = target.get_array("matrix")  # an array comes back as an array
    assert matrix.dtype == np.float32 and matrix.shape == (3, 4)
    assert target.collection("users").get_array("vec").tolist() == [0, 1, 2, 3, 4]
    assert target.get("plain") == b"value"


def test_a_snapshot_taken_from_a_collection_handle_covers_the_whole_region(
        cache: shmkv.Cache, target: shmkv.Cache, tmp_path: Path) -> None:
    fill(cache)
    users = cache.collection("users")
    users.snapshot(str(tmp_path / "s.snp"))
    target.collection("users").restore(str(tmp_path / "s.snp"))
    assert contents(target) == contents(cache)


def test_a_ttl_of_100s_restored_30s_later_has_70s_left_and_what_expired_meanwhile_is_skipped(
        cache: shmkv.Cache, target: shmkv.Cache, fake_clock: FakeClock, tmp_path: Path) -> None:
    cache.set("long", b"1", ttl_s=100)
    cache.set("short", b"2", ttl_s=20)
    cache.set("forever", b"3")
    cache.collection("c").set("short", b"4", ttl_s=10)
    cache.snapshot(str(tmp_path / "s.snp"))
    fake_clock.advance(30)
    report = target.restore(str(tmp_path / "s.snp"))
    assert report["keys"] == 2 and report["skipped_expired"] == 2
    assert target.ttl("long") == pytest.approx(70)
    assert target.get("short") is None and "short" not in target
    assert target.get("forever") == b"3" and target.ttl("forever") is None
    assert len(target.collection("c")) == 0


def test_a_snapshot_skips_keys_already_expired_when_it_is_taken(
        cache: shmkv.Cache, target: shmkv.Cache, fake_clock: FakeClock, tmp_path: Path) -> None:
    cache.set("gone", b"1", ttl_s=1)
    cache.set("kept", b"2", ttl_s=100)
    fake_clock.advance(2)
    report = cache.snapshot(str(tmp_path / "s.snp"))
    assert report["keys"] == 1 and report["skipped_expired"] == 1
    target.restore(str(tmp_path / "s.snp"))
    assert target.keys() == [b"kept"]


def test_an_empty_region_snapshots_and_restores_to_an_empty_region(
        cache: shmkv.Cache, target: shmkv.Cache, tmp_path: Path) -> None:
    report = cache.snapshot(str(tmp_path / "s.snp"))
    assert report["keys"] == 0 and report["collections"] == []
    assert report["bytes"] == F.HEADER_BYTES + F.CHUNK_HEADER_BYTES + F.TRAILER_BYTES
    assert target.restore(str(tmp_path / "s.snp"))["keys"] == 0
    assert contents(target) == {} and target.collections() == []


def test_the_header_names_the_source_region_and_what_a_target_needs(
        cache: shmkv.Cache, tmp_path: Path) -> None:
    fill(cache)
    cache.snapshot(str(tmp_path / "s.snp"))
    head = F.read_header((tmp_path / "s.snp").read_bytes(), "s.snp")
    region = cache._region
    assert head.region_id == region.q[shmkv.layout.H_REGION_ID >> 3] != 0
    assert head.arena_bytes == region.layout.arena_bytes
    assert head.created_at_ns == region.clock()
    assert head.record_count == 8 and head.live_bytes > 100_000


def test_a_region_sized_from_a_snapshot_holds_a_snapshot_bigger_than_the_default(
        region_name: str, fake_clock: FakeClock, tmp_path: Path) -> None:
    with shmkv.Cache.create(region_name, arena_bytes=32 << 20, clock=fake_clock) as big:
        for i in range(200):
            big.set(f"k{i}", bytes([i % 256]) * 100_000)
        big.snapshot(str(tmp_path / "s.snp"))
    sizes = shmkv.Cache.sizes_for_snapshot(str(tmp_path / "s.snp"))
    assert sizes["arena_bytes"] >= 32 << 20
    name = new_region_name()
    try:
        with shmkv.Cache.create(name, **sizes, clock=fake_clock) as fresh:
            assert fresh.restore(str(tmp_path / "s.snp"))["keys"] == 200
            assert fresh.get("k199") == bytes([199]) * 100_000
    finally:
        shmkv.Cache.unlink(name)


# --- damaged files ------------------------------------------------------------------------
@pytest.fixture
def good_file(cache: shmkv.Cache, tmp_path: Path) -> bytes:
    """A snapshot of several chunks: keys in two collections, values of a few sizes."""
    rng = random.Random(7)
    users = cache.collection("users")
    for i in range(300):
        (users if i % 3 else cache).set(f"k{i}", rng.randbytes(rng.choice((10, 9000))),
                                        ttl_s=1000 if i % 5 == 0 else None)
    cache.snapshot(str(tmp_path / "good.snp"))
    data = (tmp_path / "good.snp").read_bytes()
    assert len(F.validate(data, "good").record_chunks) >= 2
    return data


@pytest.fixture
def populated_target(target: shmkv.Cache) -> shmkv.Cache:
    """The target with keys of its own (some with TTLs, some in a collection)."""
    target.set("mine", b"target's own", ttl_s=500)
    target.set("k1", b"target's k1")
    target.collection("users").set("k2", b"target's users k2")
    target.collection("own").set("x", b"y")
    return target


def _chunk_offsets(data: bytes) -> list[int]:
    snap = F.validate(data, "good")
    return [start - F.CHUNK_HEADER_BYTES for start, _ in snap.record_chunks]


DAMAGES = {
    "header magic": lambda d: 0,
    "header field": lambda d: 40,
    "header checksum": lambda d: F.H_CHECKSUM + 3,
    "collections chunk": lambda d: F.HEADER_BYTES + F.CHUNK_HEADER_BYTES + 2,
    "chunk header": lambda d: _chunk_offsets(d)[1] + 9,
    "inside a chunk": lambda d: _chunk_offsets(d)[0] + F.CHUNK_HEADER_BYTES + 100,
    "last chunk's end": lambda d: len(d) - F.TRAILER_BYTES - 1,
    "trailer count": lambda d: len(d) - F.TRAILER_BYTES + 8,
    "trailer checksum": lambda d: len(d) - 1,
}


def _refused(target: shmkv.Cache, data: bytes, tmp_path: Path) -> shmkv.CorruptSnapshot:
    before = contents(target)
    collections = target.collections()
    path = tmp_path / "bad.snp"
    path.write_bytes(data)
    with pytest.raises(shmkv.CorruptSnapshot, match="byte offset [0-9]+") as caught:
        target.restore(str(path), replace=True)
    assert contents(target) == before and target.collections() == collections
    assert 0 <= caught.value.offset <= len(data)
    return caught.value


@pytest.mark.parametrize("where", sorted(DAMAGES))
def test_a_flipped_byte_is_refused_naming_its_offset_and_the_target_is_untouched(
        good_file: bytes, populated_target: shmkv.Cache, tmp_path: Path, where: str) -> None:
    at = DAMAGES[where](good_file)
    damaged = bytearray(good_file)
    damaged[at] ^= 0x40
    error = _refused(populated_target, bytes(damaged), tmp_path)
    # the offset named is the damaged part's: at or before the flipped byte, never after it
    assert error.offset <= at


@pytest.mark.parametrize("keep", [0, 1, 7, 64, F.HEADER_BYTES - 1, F.HEADER_BYTES,
                                  F.HEADER_BYTES + 40, "first chunk", "mid", "no trailer",
                                  "trailer-1"])
def test_a_truncated_file_is_refused_and_the_target_is_untouched(
        good_file: bytes, populated_target: shmkv.Cache, tmp_path: Path, keep: Any) -> None:
    n = {"first chunk": _chunk_offsets(good_file)[0], "mid": len(good_file) // 2,
         "no trailer": len(good_file) - F.TRAILER_BYTES, "trailer-1": len(good_file) - 1}.get(
        keep, keep)
    error = _refused(populated_target, good_file[:n], tmp_path)
    if n == 0:
        assert "empty" in str(error)


@pytest.mark.parametrize("data", [
    random.Random(1).randbytes(4096),
    b"\x89PNG\r\n\x1a\n" + bytes(200),
    b"SHMKVSNP" + random.Random(2).randbytes(300),  # right magic, garbage after it
    b"SHMKV\x00r\x01" + bytes(5000),  # a region's magic, not a snapshot's
], ids=["garbage", "png", "magic-then-garbage", "region-file"])
def test_garbage_and_foreign_files_are_refused_and_the_target_is_untouched(
        populated_target: shmkv.Cache, tmp_path: Path, data: bytes) -> None:
    _refused(populated_target, data, tmp_path)


def test_bytes_after_the_trailer_are_refused(good_file: bytes, populated_target: shmkv.Cache,
                                             tmp_path: Path) -> None:
    _refused(populated_target, good_file + b"\0", tmp_path)


def test_a_snapshot_with_a_key_longer_than_the_targets_limit_is_refused(
        good_file: bytes, tmp_path: Path) -> None:
    with pytest.raises(shmkv.CorruptSnapshot, match="longer than the target"):
        F.validate(good_file, "good", max_key_bytes=2)


# --- fit and replace ----------------------------------------------------------------------
def test_a_snapshot_bigger_than_the_arena_is_refused_before_anything_is_written(
        region_name: str, populated_target: shmkv.Cache, fake_clock: FakeClock,
        tmp_path: Path) -> None:
    with shmkv.Cache.create(region_name, arena_bytes=16 << 20, clock=fake_clock) as big:
        for i in range(100):
            big.set(f"k{i}", b"v" * 100_000)  # 10 MB of entries; the target's arena is 4 MiB
        big.snapshot(str(tmp_path / "big.snp"))
    before = contents(populated_target)
    with pytest.raises(shmkv.RegionFull, match="arena"):
        populated_target.restore(str(tmp_path / "big.snp"))
    assert contents(populated_target) == before


def test_restore_keeps_keys_only_in_the_region_unless_replace(
        cache: shmkv.Cache, populated_target: shmkv.Cache, tmp_path: Path) -> None:
    cache.set("k1", b"snapshot's k1")
    cache.collection("users").set("u", b"snapshot's u")
    cache.snapshot(str(tmp_path / "s.snp"))
    populated_target.restore(str(tmp_path / "s.snp"))
    merged = contents(populated_target)
    assert merged[("", b"k1")] == (b"snapshot's k1", None)  # the snapshot's value wins
    assert merged[("", b"mine")][0] == b"target's own"
    assert merged[("users", b"k2")][0] == b"target's users k2"
    assert merged[("users", b"u")][0] == b"snapshot's u"
    populated_target.restore(str(tmp_path / "s.snp"), replace=True)
    assert contents(populated_target) == contents(cache)


def test_a_key_twice_in_a_snapshot_is_restored_at_its_later_record(
        cache: shmkv.Cache, target: shmkv.Cache, tmp_path: Path) -> None:
    # What a key rewritten during a snapshot can produce: restore applies records in order.
    records = [F.RECORD.pack(0, 3, 1, 0, 0) + b"kold", F.RECORD.pack(0, 3, 1, 0, 0) + b"knew"]
    payload = b"".join(records)
    colls_head, c1 = F.pack_chunk(F.CHUNK_COLLECTIONS, 0, b"")
    recs_head, c2 = F.pack_chunk(F.CHUNK_RECORDS, 2, payload)
    header = F.Header(0, 0, 4 << 20, 1024, 16, 1024, live_bytes=2 * F.entry_bytes(1, 3),
                      max_key_bytes=1, record_count=2).pack()
    data = header + colls_head + recs_head + payload + F.pack_trailer(2, 2, 8, [c1, c2])
    (tmp_path / "twice.snp").write_bytes(data)
    assert target.restore(str(tmp_path / "twice.snp"))["keys"] == 2
    assert target.get("k") == b"new" and len(target) == 1


# --- atomic write -------------------------------------------------------------------------
def _temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


def test_a_snapshot_to_an_existing_path_replaces_it_whole(
        cache: shmkv.Cache, tmp_path: Path) -> None:
    path = tmp_path / "s.snp"
    cache.set("a", b"1")
    cache.snapshot(str(path))
    old = path.read_bytes()
    seen: list[bytes] = []
    for i in range(2000):
        cache.set(f"k{i}", b"x" * 100)
    # While the new file is being written, the path still holds the old one, whole.
    cache.snapshot(str(path), progress=lambda done, total: seen.append(path.read_bytes()))
    assert seen and all(data == old for data in seen[:-1])
    new = path.read_bytes()
    assert new != old and F.validate(new, "s").header.record_count == 2001
    assert _temp_files(tmp_path) == []


def test_a_snapshot_that_fails_leaves_the_old_file_and_no_temp_file(
        cache: shmkv.Cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.snp"
    cache.set("a", b"1")
    cache.snapshot(str(path))
    old = path.read_bytes()
    cache.set("b", b"2")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched, pytest.raises(OSError) as caught:
        patched.setattr(snapshot.os, "fsync", no_space)
        cache.snapshot(str(path))
    assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == old and _temp_files(tmp_path) == []


def test_a_snapshot_whose_directory_vanishes_midway_raises_and_leaves_nothing(
        cache: shmkv.Cache, tmp_path: Path) -> None:
    directory = tmp_path / "gone"
    directory.mkdir()
    for i in range(5000):
        cache.set(f"k{i}", b"x" * 10)
    with pytest.raises(FileNotFoundError):
        cache.snapshot(str(directory / "s.snp"),
                       progress=lambda done, total: shutil.rmtree(directory, True))
    assert not directory.exists() and _temp_files(tmp_path) == []


def test_a_snapshot_into_a_missing_directory_raises_and_creates_nothing(
        cache: shmkv.Cache, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        cache.snapshot(str(tmp_path / "missing" / "s.snp"))
    assert list(tmp_path.iterdir()) == []


# --- keys moved by a delete during the snapshot ----------------------------------------------
def _colliding_keys(c: shmkv.Cache) -> tuple[bytes, bytes]:
    """Two keys of stripe 0 with the same home slot (not the sub-table's last one): the second
    one stored sits right after the first in the probe run."""
    lay = c._region.layout
    homes: dict[int, bytes] = {}
    for i in range(1_000_000):
        key = b"k%d" % i
        h = xxh3_64(key, c._region.seed)
        home = (h >> 32) % lay.slots_per_stripe
        if h & (lay.n_stripes - 1) == 0 and home < lay.slots_per_stripe - 1:
            if home in homes:
                return homes[home], key
            homes[home] = key
    raise AssertionError("no two keys share a home slot")


def test_a_key_a_delete_shifts_behind_the_reader_mid_snapshot_is_still_in_it(
        cache: shmkv.Cache, target: shmkv.Cache, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A cursor over the live index would miss it: the delete of the key just read pulls the
    # next key of the probe run back into the slot the cursor has passed.
    first, untouched = _colliding_keys(cache)
    cache.set(first, b"deleted during the snapshot")
    cache.set(untouched, b"never touched")
    monkeypatch.setattr(snapshot, "PROGRESS_EVERY", 1)
    deleted: list[bool] = []

    def delete_the_first(done: int, total: int) -> None:
        if not deleted:
            deleted.append(cache.delete(first))

    cache.snapshot(str(tmp_path / "s.snp"), progress=delete_the_first)
    assert deleted == [True]
    target.restore(str(tmp_path / "s.snp"))
    assert target.get(untouched) == b"never touched"


def test_an_entry_whose_checksum_fails_is_left_out_of_the_snapshot(
        cache: shmkv.Cache, target: shmkv.Cache, tmp_path: Path) -> None:
    # What a reader sees of an entry rewritten or reused while it copies it (here: scribbled).
    cache.set("good", b"whole value")
    cache.set("bad", b"scribbled value")
    _, _, stripe, _, off = cache._lock_and_find("bad")
    cache._locks.release_stripe(stripe)
    cache._region.mm[off + shmkv.layout.ENTRY_HEADER_BYTES + 3 + 2] ^= 0xFF
    assert cache.snapshot(str(tmp_path / "s.snp"))["keys"] == 1
    target.restore(str(tmp_path / "s.snp"))
    assert target.keys() == [b"good"]


def test_a_key_rewritten_elsewhere_before_the_reader_gets_to_it_is_still_in_the_snapshot(
        cache: shmkv.Cache, target: shmkv.Cache, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The slots were copied; then the second key gets a larger value, in a new block, and its
    # old block is freed before the reader reaches it.
    first, second = _colliding_keys(cache)
    cache.set(first, b"first")
    cache.set(second, b"old")
    monkeypatch.setattr(snapshot, "PROGRESS_EVERY", 1)
    rewritten: list[bool] = []

    def rewrite_the_second(done: int, total: int) -> None:
        if not rewritten:
            cache.set(second, b"new" * 100)
            rewritten.append(True)

    report = cache.snapshot(str(tmp_path / "s.snp"), progress=rewrite_the_second)
    assert rewritten and report["keys"] == 2
    target.restore(str(tmp_path / "s.snp"))
    assert target.get(first) == b"first" and target.get(second) == b"new" * 100


def test_corrupt_snapshot_keeps_its_offset_through_pickling() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(shmkv.CorruptSnapshot("damaged at byte offset 7", 7)))
    assert error.offset == 7 and str(error) == "damaged at byte offset 7"
