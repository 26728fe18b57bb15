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
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
from tests_support import ctx, is_whole, patterned

import shmkv
from shmkv.check import check_region

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]
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
