"""Views across real processes: a reader's view never changes while another process writes,
and a reader SIGKILLed with views open does not hold their memory forever."""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterator

import pytest
from tests_support import JOIN_TIMEOUT_S, ctx, patterned

import shmkv
from shmkv import layout as L
from shmkv.check import check_region

pytestmark = pytest.mark.multiprocess


def view_checker(name: str, key: str, expected_sha: str, ready, writer_done, results) -> None:
    """Hold a view of key, and check all of its bytes again and again until the writer is
    done; report how many checks ran and whether any saw a byte that was not the original."""
    with shmkv.Cache.open(name) as c:
        with c.view(key):  # the first view of a process claims its record; the next one is
            pass  # pinned in C on the compiled engine
        with c.view(key) as mv:
            ready.set()
            checks = bad = 0
            while True:
                done = writer_done.is_set()  # read before the check: the last one is after it
                checks += 1
                bad += hashlib.sha256(mv).hexdigest() != expected_sha
                if done:
                    break
        results.put({"checks": checks, "bad": bad,
                     "pinned_in_c": getattr(c._cw, "pins_fast", 0)})


def overwriter(name: str, key: str, length: int, rounds: int, ready, writer_done) -> None:
    with shmkv.Cache.open(name) as c:
        assert ready.wait(JOIN_TIMEOUT_S)
        for n in range(rounds):
            c.set(key, patterned(key, 1, n, length))
            if n % 10 == 4:
                c.delete(key)  # deletes retire the pinned block as overwrites do
    writer_done.set()


def hold_view_until_killed(name: str, key: str, ready) -> None:
    c = shmkv.Cache.open(name)
    view = c.view(key)
    view.__enter__()
    ready.set()
    signal.pause()  # until SIGKILL


@pytest.fixture
def started() -> Iterator[list]:
    """Processes a test starts; killed and reaped at the end, whatever happened."""
    procs: list = []
    yield procs
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(JOIN_TIMEOUT_S)


def start(started: list, target, *args):
    p = ctx.Process(target=target, args=args)
    p.start()
    started.append(p)
    return p


# 1000 B would be rewritten in place if it were not pinned; 8 MiB is always relocated
@pytest.mark.parametrize("length", [1000, 8 << 20], ids=["1000B", "8MiB"])
def test_a_view_in_one_process_never_changes_while_another_overwrites_100_times(
        region_name, started, length, engine) -> None:
    original = patterned("big", 0, 0, length)
    with shmkv.Cache.create(region_name, arena_bytes=64 << 20) as c:
        c.set("big", original)
        used_alone = c.stats()["arena_used_bytes"]
        ready, writer_done, results = ctx.Event(), ctx.Event(), ctx.Queue()
        reader = start(started, view_checker, region_name, "big",
                       hashlib.sha256(original).hexdigest(), ready, writer_done, results)
        writer = start(started, overwriter, region_name, "big", length, 100, ready, writer_done)
        report = results.get(timeout=JOIN_TIMEOUT_S)
        for p in (writer, reader):
            p.join(JOIN_TIMEOUT_S)
            assert p.exitcode == 0
        assert report["bad"] == 0 and report["checks"] >= 1
        assert report["pinned_in_c"] == (1 if engine == "c" else 0)
        # the view is closed: the original block is free again, only the last value is stored
        stats = c.stats()
        assert stats["retired_blocks"] == 0 and stats["retired_bytes"] == 0
        assert stats["arena_used_bytes"] == used_alone
        assert c.get("big") == patterned("big", 1, 99, length)
        assert check_region(c) == []


def test_the_pins_of_a_reader_killed_with_a_view_open_are_reclaimed(region_name,
                                                                     started) -> None:
    value = patterned("k", 0, 0, 1 << 20)
    with shmkv.Cache.create(region_name, arena_bytes=2 << 20) as c:
        c.set("k", value)
        ready = ctx.Event()
        reader = start(started, hold_view_until_killed, region_name, "k", ready)
        assert ready.wait(JOIN_TIMEOUT_S)
        c.delete("k")
        assert c.stats()["retired_blocks"] == 1
        # while the reader lives, its pin holds the block: 1.5 MiB does not fit beside it
        with pytest.raises(shmkv.RegionFull):
            c.set("other", bytes(3 << 19))
        reader.kill()
        reader.join(JOIN_TIMEOUT_S)
        # a writer short of room notices the dead reader and frees its block: no maintain()
        c.set("other", bytes(3 << 19))
        stats = c.stats()
        assert stats["retired_blocks"] == 0 and stats["items"] == 1
        assert check_region(c) == []


def test_a_dead_readers_pins_are_reclaimed_by_maintain(region_name, started) -> None:
    with shmkv.Cache.create(region_name, arena_bytes=4 << 20) as c:
        c.set("k", b"x" * 10_000)
        ready = ctx.Event()
        reader = start(started, hold_view_until_killed, region_name, "k", ready)
        assert ready.wait(JOIN_TIMEOUT_S)
        c.set("k", b"y" * 10_000)
        c.maintain()
        assert c.stats()["retired_blocks"] == 1  # alive: kept
        reader.kill()
        reader.join(JOIN_TIMEOUT_S)
        assert c.maintain()["unpinned_bytes"] > 10_000
        assert c.stats()["retired_blocks"] == 0 and check_region(c) == []


def test_liveness_is_the_records_lock_not_the_pid_it_shows(region_name,
                                                                started) -> None:
    """PID reuse: a dead owner whose recorded pid now belongs to a live process is still
    reclaimed, and a live owner whose recorded pid is stale is not."""
    with shmkv.Cache.create(region_name, arena_bytes=4 << 20) as c:
        lay, u32 = c._region.layout, c._region.u32
        owner_at = [(lay.procs_offset + rec * L.PROC_BYTES + L.P_OWNER_PID) >> 2
                    for rec in range(lay.max_procs)]
        c.set("live", b"l" * 5000)
        c.set("dead", b"d" * 5000)
        live_ready, dead_ready = ctx.Event(), ctx.Event()
        start(started, hold_view_until_killed, region_name, "live", live_ready)
        assert live_ready.wait(JOIN_TIMEOUT_S)
        dead = start(started, hold_view_until_killed, region_name, "dead", dead_ready)
        assert dead_ready.wait(JOIN_TIMEOUT_S)
        live_rec, dead_rec = [rec for rec in range(lay.max_procs) if u32[owner_at[rec]]]
        c.delete("live")
        c.delete("dead")
        dead.kill()
        dead.join(JOIN_TIMEOUT_S)
        u32[owner_at[dead_rec]] = os.getpid()  # the dead owner's pid, "reused" by a live one
        u32[owner_at[live_rec]] = 0x7FFFFFFF  # a live owner's pid that no process has
        c.maintain()
        stats = c.stats()
        assert stats["retired_blocks"] == 1  # the live reader's block only
        assert u32[owner_at[dead_rec]] == 0 and u32[owner_at[live_rec]] == 0x7FFFFFFF


def test_doctor_lists_view_records_and_repair_drops_a_dead_owners_pins(region_name,
                                                                        started) -> None:
    with shmkv.Cache.create(region_name, arena_bytes=4 << 20) as c:
        c.set("k", b"x" * 5000)
        ready = ctx.Event()
        reader = start(started, hold_view_until_killed, region_name, "k", ready)
        assert ready.wait(JOIN_TIMEOUT_S)
        c.delete("k")
        [rec] = c._region.pins.records()
        assert rec["pid"] == reader.pid and rec["pins"] == 1 and rec["owner_alive"]
        reader.kill()
        reader.join(JOIN_TIMEOUT_S)
        assert c._region.pins.records()[0]["owner_alive"] is False
        c.repair()
        assert c._region.pins.records() == [] and c.stats()["retired_blocks"] == 0
        assert check_region(c) == []
