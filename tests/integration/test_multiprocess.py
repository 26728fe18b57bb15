"""Real processes sharing one region: races, atomicity, and values never seen torn.

Workers are forked processes that open the region by name, as unrelated processes would.
Values written to shared keys validate themselves (a prefix naming key, writer and sequence,
then bytes derived from that prefix), so a reader can tell a whole value from a torn one.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from tests_support import JOIN_TIMEOUT_S, ctx, is_whole, patterned, run_workers

import shmkv
from shmkv.check import check_region

pytestmark = pytest.mark.multiprocess


@pytest.fixture
def region(region_name: str) -> Iterator[shmkv.Cache]:
    c = shmkv.Cache.create(region_name, arena_bytes=32 << 20)
    try:
        yield c
    finally:
        c.close()


# --- mixed workload checked against a model ---------------------------------------------
SHARED_KEYS = 64
COUNTERS = 4


def mixed_worker(name: str, wid: int, n_ops: int, seed: int) -> dict:
    """Private keys follow an exact model; shared keys must always read whole; counters are
    tallied so the parent can check the totals."""
    rng = random.Random(seed)
    model: dict[str, bytes | None] = {}
    tallies = [0] * COUNTERS
    torn = 0
    with shmkv.Cache.open(name) as c:
        for n in range(n_ops):
            op = rng.random()
            if op < 0.25:
                key = f"p{wid}-{rng.randrange(200)}"
                value = patterned(key, wid, n, rng.choice((0, 10, 100, 3000)))
                c.set(key, value)
                model[key] = value
            elif op < 0.35:
                key = f"p{wid}-{rng.randrange(200)}"
                c.delete(key)
                model[key] = None
            elif op < 0.5:
                key = f"p{wid}-{rng.randrange(200)}"
                if c.get(key) != model.get(key):
                    return {"error": f"private {key} disagrees with the model"}
            elif op < 0.65:
                key = f"s{rng.randrange(SHARED_KEYS)}"
                c.set(key, patterned(key, wid, n, rng.choice((20, 500, 5000))))
            elif op < 0.7:
                c.delete(f"s{rng.randrange(SHARED_KEYS)}")
            elif op < 0.9:
                key = f"s{rng.randrange(SHARED_KEYS)}"
                value = c.get(key)
                if value is not None and not is_whole(key, value):
                    torn += 1
            else:
                j = rng.randrange(COUNTERS)
                delta = rng.randrange(-5, 10)
                c.incr(f"c{j}", delta)
                tallies[j] += delta
    return {"model": model, "tallies": tallies, "torn": torn}


def test_four_processes_mixed_ops_agree_with_the_model(region, region_name) -> None:
    results = run_workers(mixed_worker, [(region_name, w, 30_000, w) for w in range(4)])
    assert all(isinstance(r, dict) and "error" not in r for r in results), results
    assert sum(r["torn"] for r in results) == 0
    for r in results:
        for key, value in r["model"].items():
            assert region.get(key) == value, key
    for j in range(COUNTERS):
        assert int(region.get(f"c{j}", b"0")) == sum(r["tallies"][j] for r in results)
    for i in range(SHARED_KEYS):
        value = region.get(f"s{i}")
        assert value is None or is_whole(f"s{i}", value)
    assert len(region) == len(list(region))
    assert check_region(region) == []


# --- incr is atomic -------------------------------------------------------------------
def incr_worker(name: str, n: int) -> int:
    with shmkv.Cache.open(name) as c:
        for _ in range(n):
            c.incr("counter")
    return n


def test_incr_from_four_processes_loses_no_update(region, region_name) -> None:
    run_workers(incr_worker, [(region_name, 5000)] * 4)
    assert region.get("counter") == b"20000"
    assert check_region(region) == []


# --- exactly one cas wins -------------------------------------------------------------
def cas_worker(name: str, wid: int, barrier) -> bool:
    with shmkv.Cache.open(name) as c:
        _, version = c.get_with_version("prize")
        barrier.wait(JOIN_TIMEOUT_S)  # everyone holds the same version before anyone writes
        return c.cas("prize", f"won by {wid}".encode(), version)


@pytest.mark.parametrize("rounds", [5])
def test_cas_lets_exactly_one_racing_process_win(region, region_name, rounds) -> None:
    n = 6
    for _ in range(rounds):
        region.set("prize", b"unclaimed")
        barrier = ctx.Barrier(n)
        wins = run_workers(cas_worker, [(region_name, w, barrier) for w in range(n)])
        assert wins.count(True) == 1, wins
        winner = wins.index(True)
        assert region.get("prize") == f"won by {winner}".encode()


# --- readers never see a torn value ---------------------------------------------------
def overwrite_worker(name: str, keys: int, rounds: int, length: int, done) -> int:
    with shmkv.Cache.open(name) as c:
        for n in range(rounds):
            for k in range(keys):
                key = f"big{k}"
                c.set(key, patterned(key, 0, n, length + n % 7))
    done.set()
    return rounds


def reader_worker(name: str, keys: int, done) -> dict:
    reads = torn = 0
    with shmkv.Cache.open(name) as c:
        while not done.is_set() or reads == 0:
            for k in range(keys):
                key = f"big{k}"
                value = c.get(key)
                if value is not None:
                    reads += 1
                    torn += not is_whole(key, value)
    return {"reads": reads, "torn": torn}


def test_readers_never_observe_a_torn_value(region, region_name) -> None:
    done = ctx.Event()
    keys = 4
    for k in range(keys):
        region.set(f"big{k}", patterned(f"big{k}", 0, 0, 64 << 10))
    results = run_workers(
        lambda *a: reader_worker(*a) if len(a) == 3 else overwrite_worker(*a),
        [(region_name, keys, 400, 64 << 10, done), (region_name, keys, done),
         (region_name, keys, done)],
    )
    readers = results[1:]
    assert all(r["torn"] == 0 for r in readers), readers
    assert all(r["reads"] > 0 for r in readers)
    assert check_region(region) == []


def test_a_value_written_in_one_process_is_read_in_another(region, region_name) -> None:
    def reader(name: str) -> bytes | None:
        with shmkv.Cache.open(name) as c:
            return c.get("hello")

    region.set("hello", b"world")
    assert run_workers(reader, [(region_name,)]) == [b"world"]
