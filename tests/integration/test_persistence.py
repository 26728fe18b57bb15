"""Regions that outlive their processes, with real processes: every holder SIGKILLed, and
copies of a region file taken while a writer runs (what a power loss leaves on the disk: pages
from different moments).

Each region holds 10k keys that nobody touches during the test (a TTL on some, a collection
for others), and a writer process rewrites and deletes other keys of the same stripes, so that
slots move around the untouched ones (backward shifts) and blocks are freed and reused.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests_support import FakeClock, ctx, is_whole, patterned

import shmkv
from shmkv import layout as L
from shmkv.check import check_region

pytestmark = pytest.mark.multiprocess
UNTOUCHED = 10_000
CHURN_KEYS = 2_000


def _fill_untouched(c: shmkv.Cache) -> dict[tuple[str, str], bytes]:
    data = {}
    jobs = c.collection("jobs")
    for i in range(UNTOUCHED):
        handle, coll = (jobs, "jobs") if i % 5 == 0 else (c, "")
        value = patterned(f"u{i}", 0, 0, 20 + i % 300)
        handle.set(f"u{i}", value, ttl_s=1000 if i % 3 == 0 else None)
        data[coll, f"u{i}"] = value
    return data


def _churn(name: str, seed: int, acked, clock_ns: int) -> None:
    """Rewrite (in place and relocating) and delete the churn keys until killed."""
    rng = random.Random(seed)
    with shmkv.Cache.open(name, clock=FakeClock(clock_ns)) as c:
        for n in range(10**9):
            key = f"w{rng.randrange(CHURN_KEYS)}"
            if rng.random() < 0.3:
                c.delete(key)
            else:
                c.set(key, patterned(key, seed, n, rng.choice((10, 200, 3000))))
            acked.value = n + 1


def _assert_region_serves(c: shmkv.Cache, data: dict[tuple[str, str], bytes],
                          clock: FakeClock, rebuilt: bool) -> None:
    """Every untouched key exact with its TTL, every churn key whole or absent, counts agree,
    the structures consistent, and writes work in every stripe. A region the locks' repair
    alone brought back (not rebuilt) may hold a block its killed writer allocated and never
    published, which eviction frees like any unreferenced block: repair() first, then check."""
    jobs = c.collection("jobs")
    for (coll, key), value in data.items():
        assert (jobs if coll else c).get(key) == value, f"lost or changed {coll}/{key}"
    assert c.ttl("u3") == pytest.approx(1000 - (clock() - START_NS) / 1e9)
    for key in c:
        if key.startswith(b"w"):
            assert is_whole(key.decode(), c.get(key)), f"torn {key!r}"
    assert c.stats()["items"] == len(c) + len(jobs) == len(list(c)) + len(list(jobs))
    if not rebuilt:
        c.repair()
    assert check_region(c) == []
    for i in range(256):
        c.set(f"after{i}", b"x" * i)
        assert c.get(f"after{i}") == b"x" * i


START_NS = FakeClock().now_ns


@pytest.fixture
def file_region(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "r.shmkv")
    yield path
    shmkv.Cache.unlink(path)


def _start_churn(name: str, seed: int):
    acked = ctx.Value("q", 0, lock=False)
    proc = ctx.Process(target=_churn, args=(name, seed, acked, START_NS), daemon=True)
    proc.start()
    return proc, acked


def _wait_for_progress(acked, at_least: int, proc) -> None:
    """Until the writer acknowledged at_least operations (it runs freely meanwhile)."""
    while acked.value < at_least:
        assert proc.is_alive(), "the writer died"
        os.sched_yield()


def _kill(*procs) -> None:
    """SIGKILL every process (all of them, whatever happens), then check each was running."""
    for proc in procs:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
    for proc in procs:
        proc.join(30)
    assert [proc.exitcode for proc in procs] == [-signal.SIGKILL] * len(procs)


def test_copies_of_a_region_file_taken_while_a_writer_runs_are_regions_of_their_own(
        file_region: str, tmp_path: Path) -> None:
    clock = FakeClock()
    with shmkv.Cache.create(file_region, arena_bytes=16 << 20, clock=clock) as c:
        data = _fill_untouched(c)
        original_id = c._q[L.H_REGION_ID >> 3]
        proc, acked = _start_churn(file_region, 1)
        copies = []
        try:
            for n in range(4):
                _wait_for_progress(acked, 2000 * (n + 1), proc)
                copies.append(str(tmp_path / f"copy{n}.shmkv"))
                shutil.copyfile(file_region, copies[-1])  # cp, while the writer writes
        finally:
            _kill(proc)
        # a power loss's file: pages of two moments, mixed
        rng = random.Random(7)
        first, last = Path(copies[0]).read_bytes(), Path(copies[-1]).read_bytes()
        mixed = bytearray(last)
        for page in range(0, len(mixed), 4096):
            if rng.random() < 0.5:
                mixed[page:page + 4096] = first[page:page + 4096]
        copies.append(str(tmp_path / "mixed.shmkv"))
        Path(copies[-1]).write_bytes(mixed)
        clock.advance(10)
        try:
            for copy in copies:
                with shmkv.Cache.open(copy, clock=clock) as cc:
                    assert cc._region.recovery is not None, f"{copy} was not recovered"
                    assert cc._q[L.H_REGION_ID >> 3] != original_id, "a copy has its own region id"
                    _assert_region_serves(cc, data, clock, rebuilt=True)
                    cc.set("u1", b"written in the copy")
            assert c.get("u1") == data["", "u1"], "a copy's writes reached the original"
            assert c._q[L.H_REGION_ID >> 3] == original_id
        finally:
            for copy in copies:
                shmkv.Cache.unlink(copy)


def _hold_a_stripe_lock_and_wait(name: str, ready) -> None:
    with shmkv.Cache.open(name) as c:
        c._locks.acquire_stripe(3)
        ready.set()
        signal.pause()


@pytest.mark.parametrize("where", ["shm", "file"])
def test_a_region_whose_every_holder_was_sigkilled_opens_with_everything(
        where: str, region_name: str, file_region: str) -> None:
    name = region_name if where == "shm" else file_region
    clock = FakeClock()
    with shmkv.Cache.create(name, arena_bytes=16 << 20, clock=clock) as c:
        data = _fill_untouched(c)
    proc, acked = _start_churn(name, 2)
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_a_stripe_lock_and_wait, args=(name, ready), daemon=True)
    try:
        _wait_for_progress(acked, 3000, proc)
        holder.start()  # the writer may wait for its lock now: both die holding or waiting
        assert ready.wait(30)
    finally:
        _kill(proc, *([holder] if holder.pid else []))
    clock.advance(10)
    with shmkv.Cache.open(name, clock=clock, lock_timeout_s=1) as c:
        assert c._region.recovery is None  # same boot, same file: the locks' repair suffices
        _assert_region_serves(c, data, clock, rebuilt=False)
