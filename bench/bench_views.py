"""Zero-copy views from another process: shmkv `view()` against py-lmdb `buffers=True`, and
against a copy (`get`), at 1 KiB, 1 MiB and 64 MiB.

The parent process creates a region and an LMDB environment (both on /dev/shm) and stores one
random value of each size in both. A second process (this script with --worker) opens them and
times, per operation: opening a view, reading its first and last byte, closing it. So a view's
cost includes what makes it safe (the pin under the stripe lock, released at the end) and the
page faults of the two bytes it reads, as py-lmdb's does.

Targets (issue 4): a view costs the same at 64 MiB as at 1 KiB (O(1)), and under 2x py-lmdb's
1 MiB zero-copy get.

    python bench/bench_views.py            # writes bench/results/views-*.md/.json
    python bench/bench_views.py --quick    # smoke run, writes nothing unless --out is given

Peers: `pip install lmdb` (skipped with a note when missing). Not a test module.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import _report  # bench/ is sys.path[0] when this file is run as a script

import shmkv

try:
    import lmdb
except ImportError:  # a peer, not a dependency
    lmdb = None

SIZES = {"1 KiB": 1 << 10, "1 MiB": 1 << 20, "64 MiB": 64 << 20}
COPY_REPS_MAX = 200  # a 64 MiB copy costs ~10 ms: fewer of them


def worker(region: str, lmdb_dir: str | None, reps: int) -> dict[str, dict[str, list[int]]]:
    """Run in the second process: every timing, by system and size."""
    out: dict[str, dict[str, list[int]]] = {}
    with shmkv.Cache.open(region) as c:
        def view_ends(key: str) -> None:
            with c.view(key) as mv:
                mv[0], mv[-1]  # noqa: B018  (touch both ends, as a reader would)

        for label in SIZES:
            view_ends(label)  # warm: the first view of a process claims its record
            out[f"shmkv view|{label}"] = _report.time_each(lambda: view_ends(label), reps)
            out[f"shmkv get (copy)|{label}"] = _report.time_each(lambda: c.get(label),
                                                        min(reps, COPY_REPS_MAX))
    if lmdb_dir is not None:
        env = lmdb.open(lmdb_dir, readonly=True, lock=True, map_size=1 << 30)

        def lmdb_view(key: bytes) -> None:
            with env.begin(buffers=True) as txn:
                buf = txn.get(key)
                buf[0], buf[-1]  # noqa: B018

        for label in SIZES:
            key = label.encode()
            lmdb_view(key)
            out[f"py-lmdb get, buffers=True|{label}"] = _report.time_each(lambda: lmdb_view(key), reps)
        env.close()
    return out


def run(reps: int) -> tuple[dict[str, dict[str, list[int]]], list[str]]:
    notes = []
    region = f"shmkv-bench-{uuid.uuid4().hex[:8]}"
    lmdb_dir = tempfile.mkdtemp(prefix="shmkv-bench-lmdb-", dir="/dev/shm")
    total = sum(SIZES.values())
    try:
        with shmkv.Cache.create(region, arena_bytes=total + (8 << 20)) as c:
            values = {label: os.urandom(n) for label, n in SIZES.items()}
            for label, value in values.items():
                c.set(label, value)
            if lmdb is not None:
                env = lmdb.open(lmdb_dir, map_size=total * 2 + (64 << 20))
                with env.begin(write=True) as txn:
                    for label, value in values.items():
                        txn.put(label.encode(), value)
                env.close()
            else:
                notes.append("py-lmdb not installed (`pip install lmdb`): its rows are missing")
            del values
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", region,
                 lmdb_dir if lmdb is not None else "-", str(reps)],
                capture_output=True, text=True, check=True)
            return json.loads(proc.stdout), notes
    finally:
        shmkv.Cache.unlink(region)
        shutil.rmtree(lmdb_dir, ignore_errors=True)


def rows_and_checks(samples: dict[str, dict[str, list[int]]]) -> tuple[list[dict], list[str]]:
    medians = {name: _report.percentiles(s)["median"] for name, s in samples.items()}
    rows = []
    for name, s in samples.items():
        system, label = name.split("|")
        p = _report.percentiles(s)
        base = medians.get(f"shmkv view|{label}")
        rows.append({"system": system, "op": label, "n": len(s), "median_ns": p["median"],
                     "p99_ns": p["p99"], "ops_per_s": 1e9 / p["median"],
                     "ratio": p["median"] / base if base else None})
    checks = []
    small, large = medians["shmkv view|1 KiB"], medians["shmkv view|64 MiB"]
    checks.append(f"O(1): shmkv view of 64 MiB / view of 1 KiB = {large / small:.2f} "
                  f"({'met' if large < 2 * small else 'NOT met'}: target about 1)")
    lmdb_1m = medians.get("py-lmdb get, buffers=True|1 MiB")
    if lmdb_1m:
        ratio = medians["shmkv view|1 MiB"] / lmdb_1m
        checks.append(f"shmkv view of 1 MiB / py-lmdb buffers=True get of 1 MiB = {ratio:.2f} "
                      f"({'met' if ratio < 2 else 'NOT met'}: target under 2)")
    return rows, checks


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        _, _, region, lmdb_dir, reps = sys.argv
        json.dump(worker(region, None if lmdb_dir == "-" else lmdb_dir, int(reps)), sys.stdout)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=20_000, help="views per size and system")
    parser.add_argument("--quick", action="store_true", help="2,000 reps, no results file")
    parser.add_argument("--out", help="directory for the results (default: bench/results, "
                        "none with --quick)")
    args = parser.parse_args()
    reps = 2_000 if args.quick else args.reps
    samples, notes = run(reps)
    rows, checks = rows_and_checks(samples)
    notes = [*checks, "ratio = median / shmkv view median of the same size",
             "view = open, read first and last byte, close; timed per operation in a second "
             "process", *notes]
    out = args.out or (None if args.quick else str(_report.REPO / "bench" / "results"))
    _report.print_and_save("views", "Zero-copy views from another process", rows, notes, out)


if __name__ == "__main__":
    main()
