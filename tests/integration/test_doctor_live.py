"""`shmkv doctor` on a region that live writers are changing: their work in progress is not
corruption (the doctor checks under the region's locks), and real damage is still reported."""

from __future__ import annotations

import json
import random

import pytest
from tests_support import ctx
from typer.testing import CliRunner

import shmkv
from shmkv.cli import app

DOCTOR_RUNS = 8
WRITERS = 2


def _write_until_stopped(name: str, seed: int, ready, stop) -> None:
    rng = random.Random(seed)
    with shmkv.Cache.open(name) as c:
        ready.release()
        while not stop.is_set():
            key = f"k{rng.randrange(500)}"
            op = rng.random()
            if op < 0.7:  # inserts, in-place rewrites and relocations, some with a TTL
                c.set(key, bytes([seed]) * rng.choice([1, 30, 200, 3000]),
                      ttl_s=rng.choice([None, 1000.0]))
            elif op < 0.9:
                c.delete(key)
            else:
                c.incr(f"n{rng.randrange(20)}")


def _doctor(name: str) -> dict:
    result = CliRunner().invoke(app, ["--region", name, "doctor"])
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def test_doctor_reports_a_region_under_live_writes_consistent_every_time(
        region_name: str) -> None:
    with shmkv.Cache.create(region_name, 1 << 20, max_keys=4096):
        ready, stop = ctx.Semaphore(0), ctx.Event()
        writers = [ctx.Process(target=_write_until_stopped, args=(region_name, i, ready, stop))
                   for i in range(WRITERS)]
        for p in writers:
            p.start()
        try:
            for _ in writers:
                assert ready.acquire(timeout=60)
            reports = [_doctor(region_name) for _ in range(DOCTOR_RUNS)]
        finally:
            stop.set()
            for p in writers:
                p.join(60)
                if p.exitcode is None:
                    p.kill()
                    p.join()
        assert [p.exitcode for p in writers] == [0] * WRITERS
        assert [r["problems"] for r in reports] == [[]] * DOCTOR_RUNS
        assert all(r["consistent"] for r in reports)


@pytest.mark.parametrize("garbage", [0xDEAD_BEEF_0000_0040, 0xFFFF_FFFF_FFFF_FFFF])
def test_doctor_still_reports_a_garbage_slot_written_into_a_stripe(region_name: str,
                                                                    garbage: int) -> None:
    with shmkv.Cache.create(region_name, 1 << 20) as c:
        for i in range(100):
            c.set(f"k{i}", b"v" * i)
        assert _doctor(region_name)["consistent"]
        region = c._region
        index = region.index
        empty = next(i for i in range(index.per) if not region.q[index.slot0 + i])
        region.q[index.slot0 + empty] = garbage  # in stripe 0
        report = _doctor(region_name)
        assert not report["consistent"]
        assert any("stripe 0" in problem for problem in report["problems"]), report
        region.q[index.slot0 + empty] = 0
