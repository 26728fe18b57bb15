"""Zero-copy views from another process: shmkv `view()` and `view_array()` against py-lmdb
`buffers=True` (and `np.frombuffer` over it, for arrays), and against a copy (`get`), at 1 KiB,
1 MiB and 64 MiB.

The parent process creates a region and an LMDB environment (both on /dev/shm) and stores one
random value (and one float64 array) of each size in both. A second process (this script with
--worker) opens them and times each view with three clock readings:

    t0; with cache.view(key) as mv:   # open: t1 - t0 (the view() call and entering the block)
            t1; mv[0], mv[-1]; t2      # untimed: the two bytes' page faults
    t3                                 # close: t3 - t2 (leaving the block); open+close: both

and the same around py-lmdb's `with env.begin(buffers=True) as txn: buf = txn.get(key)`. So
a view's cost includes what makes it safe (the pin under the stripe lock, dropped at the end).
Each figure includes one clock reading (perf_counter_ns, printed as "clock" in the notes).

Targets: opening a view (view and view_array) costs at most 1 us at any size (the compiled
core's); a view costs the same at 64 MiB as at 1 KiB (O(1)); under 2x py-lmdb's 1 MiB
zero-copy get.

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
import time
import uuid
from collections.abc import Callable
from typing import Any

import _report  # bench/ is sys.path[0] when this file is run as a script
import numpy as np

import shmkv

try:
    import lmdb
except ImportError:  # a peer, not a dependency
    lmdb = None

SIZES = {"1 KiB": 1 << 10, "1 MiB": 1 << 20, "64 MiB": 64 << 20}
COPY_REPS_MAX = 200  # a 64 MiB copy costs ~10 ms: fewer of them
Samples = dict[str, list[int]]


def time_open_close(enter: Callable[[], Any], reps: int) -> tuple[list[int], list[int]]:
    """(open ns, open+close ns) of reps views made by enter(), a context manager factory."""
    clock = time.perf_counter_ns
    opens, both = [], []
    for _ in range(reps):
        t0 = clock()
        with enter() as buf:
            t1 = clock()
            buf[0], buf[-1]  # noqa: B018  (touch both ends, as a reader would; untimed)
            t2 = clock()
        t3 = clock()
        opens.append(t1 - t0)
        both.append(t1 - t0 + t3 - t2)
    return opens, both


def clock_cost(reps: int) -> list[int]:
    clock = time.perf_counter_ns
    out = []
    for _ in range(reps):
        t0 = clock()
        out.append(clock() - t0)
    return out


class _LmdbView:
    """`with env.begin(buffers=True) as txn: buf = txn.get(key)` as one context manager, so
    that both systems are timed by the same loop (as_array: np.frombuffer over the buffer)."""

    __slots__ = ("env", "key", "as_array", "txn")

    def __init__(self, env: Any, key: bytes, as_array: bool) -> None:
        self.env, self.key, self.as_array = env, key, as_array

    def __enter__(self) -> Any:
        self.txn = self.env.begin(buffers=True)
        self.txn.__enter__()
        buf = self.txn.get(self.key)
        return np.frombuffer(buf, np.float64) if self.as_array else buf

    def __exit__(self, *exc: object) -> None:
        self.txn.__exit__(None, None, None)


def worker(region: str, lmdb_dir: str | None, reps: int) -> dict[str, list[int]]:
    """Run in the second process: every timing, by "system|op|size"."""
    out: dict[str, list[int]] = {"clock": clock_cost(reps)}
    with shmkv.Cache.open(region) as c:
        for label in SIZES:
            for kind, make in (("view", c.view), ("view_array", c.view_array)):
                key = label if kind == "view" else f"array {label}"
                with make(key):  # warm: the first view of a process claims its record
                    pass
                opens, both = time_open_close(lambda: make(key), reps)  # noqa: B023
                out[f"shmkv|{kind} open|{label}"] = opens
                out[f"shmkv|{kind} open+close|{label}"] = both
            out[f"shmkv|get (copy)|{label}"] = _report.time_each(lambda: c.get(label),  # noqa
                                                                 min(reps, COPY_REPS_MAX))
    if lmdb_dir is not None:
        env = lmdb.open(lmdb_dir, readonly=True, lock=True, map_size=1 << 30)
        for label in SIZES:
            for kind, as_array in (("view", False), ("view_array", True)):
                key = (label if kind == "view" else f"array {label}").encode()
                with _LmdbView(env, key, as_array):
                    pass
                opens, both = time_open_close(
                    lambda: _LmdbView(env, key, as_array), reps)  # noqa: B023
                peer = "py-lmdb buffers=True" + (" + np.frombuffer" if as_array else "")
                out[f"{peer}|{kind} open|{label}"] = opens
                out[f"{peer}|{kind} open+close|{label}"] = both
        env.close()
    return out


def run(reps: int) -> tuple[dict[str, list[int]], list[str]]:
    notes = []
    region = f"shmkv-bench-{uuid.uuid4().hex[:8]}"
    lmdb_dir = tempfile.mkdtemp(prefix="shmkv-bench-lmdb-", dir="/dev/shm")
    total = 2 * sum(SIZES.values())
    try:
        with shmkv.Cache.create(region, arena_bytes=total + (16 << 20)) as c:
            values = {label: os.urandom(n) for label, n in SIZES.items()}
            arrays = {f"array {label}": np.frombuffer(os.urandom(n), np.float64)
                      for label, n in SIZES.items()}
            for label, value in values.items():
                c.set(label, value)
            for key, arr in arrays.items():
                c.set_array(key, arr)
            if lmdb is not None:
                env = lmdb.open(lmdb_dir, map_size=total * 2 + (64 << 20))
                with env.begin(write=True) as txn:
                    for label, value in values.items():
                        txn.put(label.encode(), value)
                    for key, arr in arrays.items():
                        txn.put(key.encode(), arr.tobytes())
                env.close()
            else:
                notes.append("py-lmdb not installed (`pip install lmdb`): its rows are missing")
            del values, arrays
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", region,
                 lmdb_dir if lmdb is not None else "-", str(reps)],
                capture_output=True, text=True, check=True)
            return json.loads(proc.stdout), notes
    finally:
        shmkv.Cache.unlink(region)
        shutil.rmtree(lmdb_dir, ignore_errors=True)


def rows_and_checks(samples: dict[str, list[int]]) -> tuple[list[dict], list[str]]:
    clock = _report.percentiles(samples.pop("clock"))["median"]
    medians = {name: _report.percentiles(s)["median"] for name, s in samples.items()}
    rows = []
    for name, s in samples.items():
        system, op, label = name.split("|")
        p = _report.percentiles(s)
        base = medians.get(f"shmkv|{op}|{label}")
        rows.append({"system": system, "op": f"{op}, {label}", "n": len(s),
                     "median_ns": p["median"], "p99_ns": p["p99"],
                     "ops_per_s": 1e9 / p["median"], "ratio": p["median"] / base if base else None})
    checks = []
    for kind in ("view", "view_array"):
        worst = max(medians[f"shmkv|{kind} open|{label}"] for label in SIZES)
        checks.append(f"opening a {kind} costs at most 1 us at any size: slowest median "
                      f"{worst:,.0f} ns ({'met' if worst <= 1000 else 'NOT met'})")
        closes = [medians[f"shmkv|{kind} open+close|{label}"]
                  - medians[f"shmkv|{kind} open|{label}"] for label in SIZES]
        checks.append(f"closing a {kind} (open+close - open, medians): "
                      + ", ".join(f"{x:,.0f} ns" for x in closes))
        small, large = (medians[f"shmkv|{kind} open+close|{label}"]
                        for label in ("1 KiB", "64 MiB"))
        checks.append(f"O(1): shmkv {kind} open+close of 64 MiB / of 1 KiB = {large / small:.2f} "
                      f"({'met' if large < 2 * small else 'NOT met'}: target about 1)")
    lmdb_1m = medians.get("py-lmdb buffers=True|view open+close|1 MiB")
    if lmdb_1m:
        ratio = medians["shmkv|view open+close|1 MiB"] / lmdb_1m
        checks.append(f"shmkv view open+close of 1 MiB / py-lmdb buffers=True get of 1 MiB = "
                      f"{ratio:.2f} ({'met' if ratio < 2 else 'NOT met'}: target under 2)")
    checks.append(f"clock: one perf_counter_ns reading costs {clock:,.0f} ns (median), included "
                  "in every figure once")
    return rows, checks


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        _, _, region, lmdb_dir, reps = sys.argv
        json.dump(worker(region, None if lmdb_dir == "-" else lmdb_dir, int(reps)), sys.stdout)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=20_000,
                        help="views per size, kind and system")
    parser.add_argument("--quick", action="store_true", help="2,000 reps, no results file")
    parser.add_argument("--out", help="directory for the results (default: bench/results, "
                        "none with --quick)")
    args = parser.parse_args()
    reps = 2_000 if args.quick else args.reps
    samples, notes = run(reps)
    rows, checks = rows_and_checks(samples)
    notes = [*checks, "ratio = median / shmkv's median of the same op and size",
             "open = the view() call and entering the with block; open+close = that plus "
             "leaving it (the touch of the first and last byte between them is not timed); "
             "timed per operation in a second process", *notes]
    out = args.out or (None if args.quick else str(_report.REPO / "bench" / "results"))
    _report.print_and_save("views", "Zero-copy views from another process", rows, notes, out)


if __name__ == "__main__":
    main()
