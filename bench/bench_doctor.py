"""How long `shmkv doctor` holds the region's locks: the pause its writers see.

doctor checks under every lock (shmkv/check.py: a live writer's work in progress is not
damage), so every writer of the region waits for one whole check. This script fills regions of
a few sizes to three quarters with values of 100-1000 bytes, and times check_region with
hold_locks=True (what doctor runs) against the lock-free check of a quiescent region (what the
tests run) in the same run: the ratio is what taking the locks adds. The time grows with the
number of keys; writers give up after their lock_timeout_s (5 s by default), which bounds the
size of region doctor may check while it is written to.

    python bench/bench_doctor.py            # writes bench/results/doctor-*.md/.json
    python bench/bench_doctor.py --quick    # smoke run, writes nothing unless --out is given

Not a test module.
"""

from __future__ import annotations

import argparse
import os
import uuid
from typing import Any

import _report  # bench/ is sys.path[0] when this file is run as a script

import shmkv
from shmkv import backend
from shmkv.check import check_region

ARENAS_MIB = (4, 16, 64)
FILL = 0.75


def _filled(arena_mib: int) -> tuple[str, shmkv.Cache]:
    name = f"shmkvbench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    cache = shmkv.Cache.create(name, arena_mib << 20)
    i = 0
    while cache.stats()["arena_used_bytes"] < FILL * (arena_mib << 20):
        for _ in range(1000):
            cache.set(f"key-{i}", b"x" * (100 + i % 900))
            i += 1
    return name, cache


def run(arenas_mib: tuple[int, ...], reps: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for arena_mib in arenas_mib:
        name, cache = _filled(arena_mib)
        try:
            keys = len(cache)
            op = f"check, {arena_mib} MiB arena, {keys:,} keys"
            timed = {}
            for system, hold in (("doctor (every lock held)", True),
                                 ("check_region (no lock)", False)):
                def check(hold: bool = hold) -> None:
                    assert check_region(cache, hold_locks=hold) == []
                timed[system] = _report.percentiles(_report.time_each(check, reps))
            base = timed["doctor (every lock held)"]["median"]
            for system, p in timed.items():
                rows.append(_report.row(system, op, reps, p, base))
        finally:
            cache.close()
            shmkv.Cache.unlink(name)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="one small region, 2 reps")
    parser.add_argument("--out", default=None,
                        help="directory for the results (default: bench/results, not with "
                        "--quick)")
    args = parser.parse_args()
    arenas, reps = ((4,), 2) if args.quick else (ARENAS_MIB, args.reps)
    out = args.out if args.out or args.quick else str(_report.REPO / "bench" / "results")
    rows = run(arenas, reps)
    notes = [
        "the median of 'doctor' is how long every writer of the region waits while doctor "
        "checks it (readers never wait); ratio = median / doctor's median",
        f"regions filled to {FILL:.0%} of the arena with values of 100-1000 bytes; engine "
        f"{backend.ENGINE}",
    ]
    _report.print_and_save("doctor", "doctor: the pause of a check under every lock", rows,
                           notes, out)


if __name__ == "__main__":
    main()
