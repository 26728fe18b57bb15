"""A snapshot taken while writer processes overwrite and delete keys: every key they never
touch is in it, exact, with its TTL, although their deletes shift slots around it; the keys
they do touch come back whole (each at one of its values) or not at all."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests_support import JOIN_TIMEOUT_S, FakeClock, ctx, is_whole, new_region_name, patterned

import shmkv
from shmkv import snapshot
from shmkv.check import check_region

pytestmark = pytest.mark.multiprocess

UNTOUCHED = 4000
WRITER_KEYS = 3000
WRITERS = 2
MAX_KEYS = 10_000  # 4000 + 2 x 3000 live keys at most: the index runs ~75% full, so probe
#                    runs are long and each delete shifts the slots after it back
OPS_BEFORE_SNAPSHOT = 3000
OPS_BETWEEN_PROGRESS = 200  # each writer's ops between two progress calls of the snapshot
WAIT_S = 60.0


def writer(name: str, wid: int, seed: int, ops, stop) -> None:
    """Overwrite (values of varied sizes: most writes relocate) and delete keys of its own
    range until told to stop, counting ops in ops.value."""
    rng = random.Random(seed)
    with shmkv.Cache.open(name) as c:
        n = 0
        while not stop.is_set():
            key = f"w{wid}-{rng.randrange(WRITER_KEYS)}"
            op = rng.random()
            if op < 0.35:
                c.delete(key)
            else:
                c.set(key, patterned(key, wid, n, rng.choice((20, 100, 400))),
                      ttl_s=3600 if op < 0.6 else None)
            n += 1
            ops.value = n


@pytest.fixture
def clock() -> FakeClock:
    # Frozen near the real time: the writers use the real clock for their TTLs.
    return FakeClock(time.time_ns())


@pytest.fixture
def source(region_name: str, clock: FakeClock) -> Iterator[shmkv.Cache]:
    c = shmkv.Cache.create(region_name, arena_bytes=32 << 20, max_keys=MAX_KEYS, clock=clock)
    try:
        yield c
    finally:
        c.close()


def _positions(c: shmkv.Cache, keys: list[str]) -> dict[str, int]:
    out = {}
    for key in keys:
        _, _, stripe, pos, _ = c._lock_and_find(key)
        c._locks.release_stripe(stripe)
        out[key] = stripe * c._region.layout.slots_per_stripe + pos
    return out


def _wait_for(ops, at_least: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while any(o.value < at_least for o in ops):
        assert time.monotonic() < deadline, "the writers stopped making progress"
        time.sleep(0.001)


def test_a_snapshot_taken_while_two_writers_run_holds_every_untouched_key_exactly(
        source: shmkv.Cache, clock: FakeClock, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The writers' keys go in first, so that untouched keys sit after them in probe runs:
    # deleting one shifts the untouched keys behind it back.
    for w in range(WRITERS):
        for i in range(WRITER_KEYS):
            source.set(f"w{w}-{i}", patterned(f"w{w}-{i}", w, 0, 100))
    untouched = {f"u{i}": patterned(f"u{i}", 9, i, 30 + i % 200) for i in range(UNTOUCHED)}
    for i, (key, value) in enumerate(untouched.items()):
        source.set(key, value, ttl_s=3600 + i if i % 3 == 0 else None)
    expected = {key: (value, source.ttl(key)) for key, value in untouched.items()}
    stripes = {position // source._region.layout.slots_per_stripe
               for position in _positions(source, list(untouched)).values()}
    assert len(stripes) == source._region.layout.n_stripes  # spread over every stripe

    ops = [ctx.RawValue("q", 0) for _ in range(WRITERS)]
    stop = ctx.Event()
    procs = [ctx.Process(target=writer, args=(source._region.name, w, 100 + w, ops[w], stop))
             for w in range(WRITERS)]
    seen_during: list[int] = []

    def progress(done: int, total: int) -> None:
        # Let each writer get OPS_BETWEEN_PROGRESS ops in before the next stripes are read.
        _wait_for(ops, min(o.value for o in ops) + OPS_BETWEEN_PROGRESS)
        seen_during.append(done)

    monkeypatch.setattr(snapshot, "PROGRESS_EVERY", 250)
    try:
        for p in procs:
            p.start()
        _wait_for(ops, OPS_BEFORE_SNAPSHOT)
        before = _positions(source, list(untouched))
        ops_before = [o.value for o in ops]
        report = source.snapshot(str(tmp_path / "s.snp"), progress=progress)
        after = _positions(source, list(untouched))
        ops_after = [o.value for o in ops]
    finally:
        stop.set()
        for p in procs:
            p.join(JOIN_TIMEOUT_S)
            if p.exitcode is None:
                p.kill()
                p.join()
    assert all(p.exitcode == 0 for p in procs)
    assert len(seen_during) >= 10
    assert all(b - a >= 10 * OPS_BETWEEN_PROGRESS for a, b in zip(ops_before, ops_after))
    moved = sum(before[k] != after[k] for k in untouched)
    assert moved >= 20, "deletes did not shift untouched keys' slots during the snapshot"
    assert report["keys"] >= UNTOUCHED

    name = new_region_name()
    try:
        with shmkv.Cache.create(name, arena_bytes=32 << 20, max_keys=MAX_KEYS,
                                clock=clock) as fresh:
            fresh.restore(str(tmp_path / "s.snp"))
            got = {key: (fresh.get(key), fresh.ttl(key)) for key in untouched}
            assert got == expected
            for key in fresh.keys():
                if key.startswith(b"w"):  # a touched key: whole, at one of its values
                    assert is_whole(key.decode(), fresh.get(key))
            assert check_region(fresh) == []
    finally:
        shmkv.Cache.unlink(name)
