"""Recovery of a region file that a kernel stop (power loss) or a copy in use left torn
(recovery.py), and the clean marker that tells the first opener it need not recover.

A power loss is simulated by what it leaves in the file: no clean marker, a boot id of another
boot, and whatever damage the test makes (pages that never reached the disk are zeros; a page
that did not get its last store holds the older bytes).
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests_support import FakeClock

import shmkv
from shmkv import layout as L
from shmkv import recovery
from shmkv.check import check_region

ARENA_BYTES = 4 << 20


def _u64(path: str, off: int) -> int:
    with open(path, "rb") as f:
        f.seek(off)
        return struct.unpack("<Q", f.read(8))[0]


def _patch(path: str, off: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def _read(path: str, off: int, nbytes: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(nbytes)


def _power_lost(path: str) -> None:
    """What a kernel stop leaves: the file was open (no marker), in another boot."""
    _patch(path, L.H_CLEAN_MARKER, bytes(8))
    _patch(path, L.H_BOOT_ID, struct.pack("<Q", recovery.boot_id() ^ 0x5A5A))


@pytest.fixture
def path(tmp_path: Path) -> Iterator[str]:
    p = str(tmp_path / "r.shmkv")
    yield p
    shmkv.Cache.unlink(p)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _fill(path: str, clock: FakeClock, n: int = 2000) -> dict[tuple[str, bytes], bytes]:
    """n keys in the default collection (every 4th with a TTL) and n/4 in "jobs"."""
    data = {}
    with shmkv.Cache.create(path, arena_bytes=ARENA_BYTES, clock=clock) as c:
        jobs = c.collection("jobs")
        for i in range(n):
            key, value = f"k{i}".encode(), f"value-{i}-".encode() * (1 + i % 7)
            c.set(key, value, ttl_s=100 if i % 4 == 0 else None)
            data["", key] = value
        for i in range(n // 4):
            jobs.set(f"j{i}", b"job" * i)
            data["jobs", f"j{i}".encode()] = b"job" * i
    return data


def _read_all(c: shmkv.Cache) -> dict[tuple[str, bytes], bytes]:
    out = {("", k): c.get(k) for k in c}
    jobs = c.collection("jobs")
    out.update({("jobs", k): jobs.get(k) for k in jobs})
    return out


def _assert_consistent(c: shmkv.Cache) -> None:
    assert check_region(c) == []
    assert len(c) == len(list(c))
    jobs = c.collection("jobs")
    assert c.stats()["items"] == len(c) + len(jobs) == len(list(c)) + len(list(jobs))


def _entry_of(c: shmkv.Cache, key: bytes) -> int:
    k, _, stripe, _, off = c._lock_and_find(key)
    c._locks.release_stripe(stripe)
    return off


def test_the_last_handle_to_close_marks_the_region_clean_and_the_first_opener_unmarks_it(
        path: str, clock: FakeClock) -> None:
    _fill(path, clock, 10)
    marker = _u64(path, L.H_CLEAN_MARKER)
    assert marker, "closed by its last handle, the region carries the marker"
    first = shmkv.Cache.open(path, clock=clock)
    assert first._region.recovery is None  # clean: used as it is
    assert _u64(path, L.H_CLEAN_MARKER) == 0, "a region in use must not look clean"
    second = shmkv.Cache.open(path, clock=clock)
    first.close()
    assert _u64(path, L.H_CLEAN_MARKER) == 0, "another handle is still open"
    second.close()
    assert _u64(path, L.H_CLEAN_MARKER) not in (0, marker), "marked anew (a new generation)"


def test_a_cleanly_closed_region_reopens_in_another_boot_as_it_was(path: str,
                                                                   clock: FakeClock) -> None:
    data = _fill(path, clock)
    _patch(path, L.H_BOOT_ID, struct.pack("<Q", recovery.boot_id() ^ 1))  # marker kept
    clock.advance(30)
    with shmkv.Cache.open(path, clock=clock) as c:
        assert c._region.recovery is None
        assert _read_all(c) == data
        assert c.ttl("k0") == pytest.approx(70)


def test_a_region_torn_by_a_power_loss_is_rebuilt_from_its_arena(path: str,
                                                                  clock: FakeClock) -> None:
    data = _fill(path, clock)
    with shmkv.Cache.open(path, clock=clock) as c:
        lay = c._region.layout
    _power_lost(path)
    # the index pages never reached the disk: every slot reads as empty
    _patch(path, lay.index_offset, bytes(lay.index_slots * 8))
    clock.advance(30)
    with shmkv.Cache.open(path, clock=clock) as c:
        assert c._region.recovery["entries"] == len(data)
        assert _read_all(c) == data
        assert c.ttl("k0") == pytest.approx(70)
        assert c.ttl("k1") is None
        _assert_consistent(c)
        for i in range(3000):  # writes work: in place, new keys, eviction
            c.set(f"new{i}", b"x" * (i % 900))
        _assert_consistent(c)
    with shmkv.Cache.open(path, clock=clock) as c:  # closed cleanly this time
        assert c._region.recovery is None


def test_recovery_drops_what_does_not_validate_and_keeps_every_other_entry(
        path: str, clock: FakeClock) -> None:
    data = _fill(path, clock)
    with shmkv.Cache.open(path, clock=clock) as c:
        torn_word = _entry_of(c, b"k10")  # its block word is garbage
        torn_value = _entry_of(c, b"k20")  # its value bytes are not the checksummed ones
        zeroed = _entry_of(c, b"k30")  # a page of zeros over it
        zeroed_span = (zeroed & ~4095, (zeroed & ~4095) + 4096)
    _power_lost(path)
    _patch(path, torn_word, b"\xff\xff\xff\x7f")
    _patch(path, torn_value + L.ENTRY_HEADER_BYTES + 3, b"?")
    _patch(path, zeroed_span[0], bytes(4096))
    with shmkv.Cache.open(path, clock=clock) as c:
        got = _read_all(c)
        _assert_consistent(c)
    lost = {key for key in data if key not in got}
    assert ("", b"k10") in lost and ("", b"k20") in lost and ("", b"k30") in lost
    for key, value in got.items():
        assert data[key] == value, "only whole values, as they were written"
    assert len(lost) <= 2 + 4096 // L.MIN_BLOCK_BYTES + 1, "only entries on the zeroed page"


def test_of_two_copies_of_a_key_the_newest_is_kept(path: str, clock: FakeClock) -> None:
    with shmkv.Cache.create(path, arena_bytes=ARENA_BYTES, clock=clock) as c:
        c.set("k", b"o" * 21)  # 58 bytes in a block of 64: its footer leaves the value whole
        old = _entry_of(c, b"k")
        c.set("k", b"new" * 500)  # relocates: the old block is freed
        assert _entry_of(c, b"k") != old
        old_word = _u64_of(c, old)
    _power_lost(path)
    _patch(path, old, struct.pack("<I", old_word & ~L.FREE_BIT & 0xFFFFFFFF))  # free lost
    with shmkv.Cache.open(path, clock=clock) as c:
        assert c.get("k") == b"new" * 500
        assert c._region.recovery["stale_copies"] == 1
        _assert_consistent(c)


def _u64_of(c: shmkv.Cache, off: int) -> int:
    return c._u32[off >> 2]


def test_an_expired_newest_copy_does_not_bring_back_the_older_value(path: str,
                                                                     clock: FakeClock) -> None:
    with shmkv.Cache.create(path, arena_bytes=ARENA_BYTES, clock=clock) as c:
        c.set("k", b"o" * 21)
        old = _entry_of(c, b"k")
        c.set("k", b"new" * 500, ttl_s=10)
        old_word = _u64_of(c, old)
    _power_lost(path)
    _patch(path, old, struct.pack("<I", old_word & ~L.FREE_BIT & 0xFFFFFFFF))
    clock.advance(11)
    with shmkv.Cache.open(path, clock=clock) as c:
        assert c._region.recovery["stale_copies"] == 1  # the old copy was found, and lost
        assert c.get("k") is None
        _assert_consistent(c)


def test_entries_never_published_or_held_only_for_views_are_not_brought_back(
        path: str, clock: FakeClock) -> None:
    with shmkv.Cache.create(path, arena_bytes=ARENA_BYTES, clock=clock) as c:
        c.set("unpublished", b"u" * 100)
        c.set("retired", b"r" * 100)
        c.set("kept", b"k" * 100)
        unpublished, retired = _entry_of(c, b"unpublished"), _entry_of(c, b"retired")
    _power_lost(path)
    # as if its writer died between filling it and the slot store: PUBLISHED never set
    _patch(path, unpublished + L.E_KIND, bytes([_read(path, unpublished + L.E_KIND, 1)[0]
                                                & ~L.PUBLISHED]))
    word = struct.unpack("<I", _read(path, retired, 4))[0]
    _patch(path, retired, struct.pack("<I", word & ~L.SEG_BITS | L.SEG_RETIRED_WORD))
    with shmkv.Cache.open(path, clock=clock) as c:
        assert c.get("unpublished") is None and c.get("retired") is None
        assert c.get("kept") == b"k" * 100
        _assert_consistent(c)


def test_a_recovery_cut_short_runs_again_at_the_next_open(path: str, clock: FakeClock,
                                                          monkeypatch) -> None:
    data = _fill(path, clock, 200)
    _power_lost(path)

    def crash(*_):
        raise RuntimeError("stopped mid-recovery")

    monkeypatch.setattr(recovery, "rebuild_allocator_locked", crash)
    with pytest.raises(RuntimeError):
        shmkv.Cache.open(path, clock=clock)
    monkeypatch.undo()
    with shmkv.Cache.open(path, clock=clock) as c:
        assert c._region.recovery is not None
        assert _read_all(c) == data
        _assert_consistent(c)


def test_a_copy_of_a_cleanly_closed_region_is_a_region_of_its_own(path: str, tmp_path: Path,
                                                                   clock: FakeClock) -> None:
    data = _fill(path, clock, 100)
    copy = str(tmp_path / "copy.shmkv")
    shutil.copyfile(path, copy)
    try:
        with shmkv.Cache.open(path, clock=clock) as original, \
                shmkv.Cache.open(copy, clock=clock) as c:
            assert c._region.recovery is None  # it was whole: nothing to rebuild
            assert _read_all(c) == data
            assert c._q[L.H_REGION_ID >> 3] != original._q[L.H_REGION_ID >> 3]
            c.set("only-in-copy", b"1")
            assert original.get("only-in-copy") is None
    finally:
        shmkv.Cache.unlink(copy)


def test_a_close_whose_flush_fails_gives_the_mapping_back_and_leaves_no_marker(
        path: str, clock: FakeClock, monkeypatch) -> None:
    c = shmkv.Cache.create(path, arena_bytes=ARENA_BYTES, clock=clock)
    c.set("k", b"v")

    def disk_error(fd: int) -> None:
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patched:
        patched.setattr(recovery.os, "fsync", disk_error)
        c.close()
    assert c.closed and _u64(path, L.H_CLEAN_MARKER) == 0
    with shmkv.Cache.open(path, clock=clock) as again:
        assert again.get("k") == b"v"


def _keep_open_until_told(c: shmkv.Cache, ready, go) -> None:
    c.set("from the child", b"1")
    ready.set()
    go.wait(30)
    c.close()


def test_a_parent_closing_while_a_forked_child_still_uses_the_region_leaves_it_unmarked(
        path: str, clock: FakeClock) -> None:
    from tests_support import ctx
    c = shmkv.Cache.create(path, arena_bytes=ARENA_BYTES, clock=clock)
    ready, go = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_keep_open_until_told, args=(c, ready, go))
    child.start()
    try:
        assert ready.wait(30)
        c.close()  # the child still has the region (through the handle it inherited)
        assert _u64(path, L.H_CLEAN_MARKER) == 0
    finally:
        go.set()
        child.join(30)
    assert child.exitcode == 0
    assert _u64(path, L.H_CLEAN_MARKER) == 0, "a child never marks its parent's region clean"
    with shmkv.Cache.open(path, clock=clock) as again:
        assert again.get("from the child") == b"1"
    assert _u64(path, L.H_CLEAN_MARKER) != 0
