"""Crash torture: a writer SIGKILLed at random moments, over and over.

Each round starts a writer process that replays a seeded sequence of sets, overwrites (in place
and relocating), deletes and incrs, and records in shared memory the number of operations that
returned. The parent kills it with SIGKILL after a random delay, so kills land anywhere: inside
a stripe lock between the seq bumps, inside the arena lock mid-allocation, between allocation
and publish. Then the survivor (the parent) must:
  * carry on within 1 s: its handle has lock_timeout_s=1, so a lock wedged by the dead writer
    fails the test with LockTimeout instead of hanging;
  * never read a torn value;
  * after `repair()`, find the region consistent (`check_region`);
  * read every write that returned before the kill; only the key of the operation in flight
    may hold its old value, its new value, or be gone (a torn in-place rewrite is dropped).
The region is large enough that nothing is evicted, so no other loss is allowed.

SHMKV_CRASH_KILLS sets the number of rounds (CI runs 200; run 1000 by hand).

Then PID reuse, at the lock level: a lock's recorded owner pid says only that its holder left
without releasing, never whether that holder is alive (pids are reused). A free lock with a
live process's pid recorded is repaired at once, not waited for; a live holder whose record
shows a bogus pid still excludes everyone (ownership is the mutex's, which the kernel hands on
with EOWNERDEAD when its holder dies).
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
from tests_support import ctx, is_whole, patterned

import shmkv
from shmkv import layout as L
from shmkv.check import check_region
from shmkv.hashing import xxh3_64
from shmkv.writer import Writer

pytestmark = pytest.mark.multiprocess
KILLS = int(os.environ.get("SHMKV_CRASH_KILLS", "200"))
KEYS = 300


def operations(seed: int, count: int):
    """The writer's deterministic operation sequence: (op, key, value-or-delta)."""
    rng = random.Random(seed)
    for n in range(count):
        key = f"k{rng.randrange(KEYS)}"
        r = rng.random()
        if r < 0.6:
            yield "set", key, patterned(key, seed, n, rng.choice((10, 200, 3000, 40_000)))
        elif r < 0.8:
            yield "delete", key, None
        else:
            yield "incr", f"n{rng.randrange(20)}", rng.randrange(1, 5)


def writer(name: str, seed: int, acked) -> None:
    with shmkv.Cache.open(name) as c:
        for done, (op, key, arg) in enumerate(operations(seed, 10**9)):
            if op == "set":
                c.set(key, arg)
            elif op == "delete":
                c.delete(key)
            else:
                c.incr(key, arg)
            acked.value = done + 1


def apply(model: dict, op: str, key: str, arg) -> None:
    if op == "set":
        model[key] = arg
    elif op == "delete":
        model.pop(key, None)
    else:
        model[key] = str(int(model.get(key, b"0")) + arg).encode()


@pytest.mark.slow
def test_writer_killed_at_random_moments_loses_nothing_acknowledged(region_name) -> None:
    rng = random.Random(12345)
    model: dict[str, bytes] = {}
    with shmkv.Cache.create(region_name, arena_bytes=48 << 20, lock_timeout_s=1.0) as c:
        for round_no in range(KILLS):
            acked = ctx.Value("q", 0, lock=False)
            proc = ctx.Process(target=writer, args=(region_name, round_no, acked))
            proc.start()
            time.sleep(rng.uniform(0.002, 0.05))  # where the kill lands, not a wait for state
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(30)
            assert proc.exitcode == -signal.SIGKILL, f"round {round_no}: writer ended early"

            ops = operations(round_no, acked.value + 1)
            for _ in range(acked.value):
                apply(model, *next(ops))
            in_flight = next(ops)

            # The survivor carries on at once: one write and one read in every stripe.
            for i in range(64):
                c.set(f"survivor{i}", b"alive")
                assert c.get(f"survivor{i}") == b"alive"
            for key in list(c):
                value = c.get(key)
                if key.startswith(b"k") and value is not None:
                    assert is_whole(key.decode(), value), f"round {round_no}: torn {key!r}"

            # counts follow the slots through any crash, before any full repair
            assert len(c) == len(list(c)) == c.stats()["items"], f"round {round_no}"
            c.repair()
            assert check_region(c) == [], f"round {round_no}"
            for key, value in model.items():
                if key != in_flight[1]:
                    assert c.get(key) == value, f"round {round_no}: lost {key}"
            # the in-flight key is whatever the region says now: old, new or gone
            if c.get(in_flight[1]) is None:
                model.pop(in_flight[1], None)
            else:
                model[in_flight[1]] = c.get(in_flight[1])
        assert c.stats()["evictions"] == 0


def _overwrite_and_die_before_publishing(name: str, collection: str, key: str,
                                         value: bytes) -> None:
    """Overwrite key, and SIGKILL this process once the new block is allocated and its key
    written (what allocate_locked does under the arena lock), before the value goes in and
    the slot is switched to it."""
    real_fill = Writer.fill_entry

    def fill_then_die(self, off, k, v, version, exp, kind, new):
        if not new:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_fill(self, off, k, v, version, exp, kind, new)

    with shmkv.Cache.open(name) as c:
        handle = c.collection(collection) if collection else c
        Writer.fill_entry = fill_then_die  # type: ignore[method-assign]
        handle.set(key, value)


def test_a_writer_killed_between_allocating_an_overwrite_and_publishing_it_leaves_counts_exact(
        region_name) -> None:
    big = 100 << 10  # beyond INPLACE_MAX_BYTES: an overwrite relocates
    with shmkv.Cache.create(region_name, arena_bytes=4 << 20, lock_timeout_s=1.0) as c:
        users = c.collection("users")
        users.set("victim", b"a" * big)
        c.set("victim", b"c" * big)
        for collection in ("users", ""):
            proc = ctx.Process(target=_overwrite_and_die_before_publishing,
                               args=(region_name, collection, "victim", b"b" * big))
            proc.start()
            proc.join(30)
            assert proc.exitcode == -signal.SIGKILL
        assert users.get("victim") == b"a" * big  # the old values stay published
        assert c.get("victim") == b"c" * big
        # Fill the region so that eviction reaches the leaked blocks and frees them.
        for i in range(200):
            c.set(f"fill{i}", bytes([i]) * (40 << 10))
        assert c.stats()["evictions"] > 0
        assert len(c) == len(list(c))
        assert len(users) == len(list(users))
        assert c.stats()["items"] == len(c) + len(users)
        c.repair()
        assert check_region(c) == []


# --- PID reuse at the lock level -------------------------------------------------------------
def _key_in_stripe(c: shmkv.Cache, stripe: int) -> str:
    region = c._region
    mask = region.layout.n_stripes - 1
    return next(key for key in (f"k{i}" for i in range(10**6))
                if xxh3_64(key.encode(), region.seed) & mask == stripe)


def _stripe_word(c: shmkv.Cache, stripe: int, field: int) -> int:
    """u32 index of a field of a stripe record."""
    return (c._region.layout.stripes_offset + stripe * L.STRIPE_BYTES + field) >> 2


def _dead_pid() -> int:
    proc = ctx.Process(target=os._exit, args=(0,))
    proc.start()
    proc.join(30)
    return proc.pid


@pytest.mark.parametrize("lock", ["stripe", "arena"])
@pytest.mark.parametrize("recorded", ["our own pid", "pid 1"])
def test_a_lock_left_by_a_dead_holder_whose_pid_now_belongs_to_a_live_process_is_repaired_at_once(
        region_name: str, lock: str, recorded: str) -> None:
    pid = os.getpid() if recorded == "our own pid" else 1
    with shmkv.Cache.create(region_name, arena_bytes=1 << 20, lock_timeout_s=5.0) as c:
        stripe = 3
        key, neighbour = _key_in_stripe(c, stripe), f"{_key_in_stripe(c, stripe)}-2"
        c.set(key, b"old")
        u32, q = c._region.u32, c._region.q
        # What a holder that died mid-change leaves: its pid recorded, the lock free (the kernel
        # gave it back), and the structures it protects half-changed.
        if lock == "stripe":
            u32[_stripe_word(c, stripe, L.S_OWNER_PID)] = pid
            q[_stripe_word(c, stripe, L.S_SEQ) >> 1] += 1  # odd: readers of the stripe wait
            u32[_stripe_word(c, stripe, L.S_COUNT)] += 3
        else:
            u32[L.H_ARENA_OWNER_PID >> 2] = pid
            q[L.H_ARENA_USED >> 3] += 8
        assert check_region(c) != []
        started = time.monotonic()
        assert c.get(key) == b"old"  # a reader of an odd stripe repairs it, not waits
        c.set(neighbour, b"new")  # a new key: takes the stripe lock, then the arena lock
        assert time.monotonic() - started < 1.0, "the next holder waited for a dead one"
        assert check_region(c) == []
        assert (c.get(key), c.get(neighbour)) == (b"old", b"new")


def _hold_stripe(name: str, stripe: int, recorded: int, holding, release) -> None:
    with shmkv.Cache.open(name) as c:
        c._locks.acquire_stripe(stripe)
        c._region.u32[_stripe_word(c, stripe, L.S_OWNER_PID)] = recorded  # a bogus record
        holding.set()
        release.wait(30)
        c._locks.release_stripe(stripe)


@pytest.mark.parametrize("recorded", ["no pid", "a dead pid"])
def test_a_live_holder_excludes_others_whatever_pid_its_lock_records(region_name: str,
                                                                    recorded: str) -> None:
    pid = 0 if recorded == "no pid" else _dead_pid()
    with shmkv.Cache.create(region_name, arena_bytes=1 << 20, lock_timeout_s=0.5) as c:
        stripe = 5
        key = _key_in_stripe(c, stripe)
        c.set(key, b"old")
        holding, release = ctx.Event(), ctx.Event()
        holder = ctx.Process(target=_hold_stripe,
                             args=(region_name, stripe, pid, holding, release))
        holder.start()
        try:
            assert holding.wait(30), "the holder never took the lock"
            with pytest.raises(shmkv.LockTimeout):
                c.set(key, b"taken over")
            assert not c._locks.try_acquire_stripe(stripe)
            assert c.get(key) == b"old"  # readers go on; nothing was repaired under the holder
        finally:
            release.set()
            holder.join(30)
        assert holder.exitcode == 0
        c.set(key, b"after")
        assert c.get(key) == b"after"
        assert check_region(c) == []
