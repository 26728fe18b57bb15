"""Replication (broker/replication.py): how long a write takes to reach a replica's region, and
what a replica costs the primary's writers.

Lag: a writer process stores key i at a steady rate in the primary's region (a local Cache.set,
whose return is the acknowledgement; the value is CLOCK_MONOTONIC just before the call, which
is the same clock in every process of the host), and this process polls the replica's region
for each key in turn and takes the time it becomes visible there. Both nodes and both
processes share the machine's cores, as they would not on two hosts.

Throughput: sets of 16 B keys and 100 B values to the primary, through the node
(RemoteCache.set, one at a time) and straight in shared memory (Cache.set), with no replica and
with no replica, with one replica following, and with none again (the replica's node stopped).

    python bench/bench_replication.py                   # writes bench/results/replication-*
    python bench/bench_replication.py --quick           # smaller, prints only

Not a test module.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import _report  # bench/ is sys.path[0] when this file is run as a script

import shmkv
from shmkv.clients import RemoteCache

ARENA_BYTES = 256 << 20
VALUE = os.urandom(100)


@contextmanager
def node(region: str, *options: str) -> Iterator[dict[str, Any]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "shmkv.cli", "--region", region, "serve",
         "--bind", "tcp://127.0.0.1:*", "--pub-bind", "tcp://127.0.0.1:*",
         "--metrics-bind", "off", "--ipc-dir", "off", "--arena-bytes", str(ARENA_BYTES),
         *options],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        cwd=tempfile.gettempdir())
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"the node for {region} did not start")
        yield json.loads(line)
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()  # type: ignore[union-attr]


def _writer(region: str, prefix: str, n: int, rate: float) -> None:
    cache = shmkv.Cache.open(region)
    start = time.monotonic_ns() + 50_000_000
    step = 1e9 / rate
    for i in range(n):
        due = start + int(i * step)
        left = due - time.monotonic_ns()
        if left > 0:  # sleep, not spin: the cores are shared with both nodes and the poller
            time.sleep(left / 1e9)
        cache.set(f"{prefix}{i}", time.monotonic_ns().to_bytes(8, "little"))
    cache.close()


def lag(primary_region: str, replica_region: str, n: int, rate: float) -> list[int]:
    """ns from each write's acknowledgement to its visibility in the replica's region."""
    prefix = f"lag-{rate:.0f}-"
    writer = multiprocessing.get_context("spawn").Process(
        target=_writer, args=(primary_region, prefix, n, rate))
    replica = shmkv.Cache.open(replica_region)
    samples = []
    try:
        writer.start()
        for i in range(n):
            key = f"{prefix}{i}"
            while (value := replica.get(key)) is None:
                time.sleep(200e-6)  # the resolution of the figures
            samples.append(time.monotonic_ns() - int.from_bytes(value, "little"))
        writer.join()
    finally:
        if writer.is_alive():
            writer.kill()
            writer.join()
        replica.close()
    return samples


def throughput(endpoint: str, region: str, n: int, tag: str) -> dict[str, float]:
    with RemoteCache(endpoint) as remote:
        t0 = time.perf_counter()
        for i in range(n):
            remote.set(b"r-%s-%09d" % (tag.encode(), i), VALUE)
        remote_s = time.perf_counter() - t0
    with shmkv.Cache.open(region) as local:
        t0 = time.perf_counter()
        for i in range(n * 5):
            local.set(b"l-%s-%09d" % (tag.encode(), i), VALUE)
        local_s = time.perf_counter() - t0
    return {"remote": n / remote_s, "local": n * 5 / local_s}


def digest_speed(n_keys: int) -> list[dict[str, Any]]:
    """ms to compute every stripe's range digests of a region of n_keys (both engines)."""
    from shmkv import repl_digest as D
    name = f"bench-digest-{uuid.uuid4().hex[:8]}"
    cache = shmkv.Cache.create(name, arena_bytes=max(ARENA_BYTES, n_keys * 400),
                               max_keys=n_keys)
    rows = []
    try:
        for start in range(0, n_keys, 10_000):
            stop = min(n_keys, start + 10_000)
            cache.set_many({b"d-%09d" % i: VALUE for i in range(start, stop)})
        region = cache._region
        for pure in (False, True):
            samples = []
            for _ in range(5):
                t0 = time.perf_counter_ns()
                for stripe in range(region.layout.n_stripes):
                    region.locks.acquire_stripe(stripe)
                    try:
                        D.stripe_digests_locked(region, stripe, pure=pure)
                    finally:
                        region.locks.release_stripe(stripe)
                samples.append(time.perf_counter_ns() - t0)
            p = _report.percentiles(samples)
            rows.append({"system": f"shmkv ({'numpy' if pure else 'compiled'} digests)",
                         "op": f"digest every stripe of {n_keys:,} keys", "n": len(samples),
                         "median_ns": p["median"], "p99_ns": p["p99"], "ops_per_s": None,
                         "ratio": None})
    finally:
        cache.close()
        shmkv.Cache.unlink(name)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writes", type=int, default=10_000, help="writes per lag run")
    parser.add_argument("--rates", default="1000,10000", help="writes/s of the lag runs")
    parser.add_argument("--sets", type=int, default=20_000, help="remote sets per run")
    parser.add_argument("--quick", action="store_true", help="small runs, no results file")
    parser.add_argument("--digests", type=int, default=0, metavar="KEYS",
                        help="only time the range digests of a region of KEYS keys, and print")
    parser.add_argument("--out", default=str(_report.REPO / "bench" / "results"))
    args = parser.parse_args()
    if args.digests:
        _report.print_and_save("replication-digests", "Range digests of a whole region",
                               digest_speed(args.digests), [], None)
        return
    if args.quick:
        args.writes, args.sets = 2_000, 2_000
    tag = uuid.uuid4().hex[:8]
    primary, copy = f"bench-repl-p-{tag}", f"bench-repl-r-{tag}"
    rows, notes = [], []
    try:
        with node(primary, "--repl-bind", "tcp://127.0.0.1:*") as ready:
            # alone, followed, alone: the machine's other load drifts; both "alone" runs show
            alone = [throughput(ready["endpoint"], primary, args.sets, "alone-1")]
            with node(copy, "--replica-of", ready["replication"]["endpoint"]):
                for rate in (float(r) for r in args.rates.split(",")):
                    p = _report.percentiles(lag(primary, copy, args.writes, rate))
                    with shmkv.Cache.open(primary) as c:
                        keys = len(c)
                    rows.append({"system": "shmkv replica",
                                 "op": f"lag at {rate:,.0f} writes/s ({keys:,} keys after)",
                                 "n": args.writes, "median_ns": p["median"],
                                 "p99_ns": p["p99"], "ops_per_s": None, "ratio": None})
                followed = throughput(ready["endpoint"], primary, args.sets, "followed")
            alone.append(throughput(ready["endpoint"], primary, args.sets, "alone-2"))
        for where in ("remote", "local"):
            base = sum(a[where] for a in alone) / len(alone)
            for label, figures in (("0 replicas (before)", alone[0]), ("1 replica", followed),
                                   ("0 replicas (after)", alone[1])):
                rows.append({"system": f"shmkv primary, {label}",
                             "op": f"set ({'RemoteCache' if where == 'remote' else 'Cache'})",
                             "n": args.sets * (5 if where == "local" else 1),
                             "median_ns": None, "p99_ns": None, "ops_per_s": figures[where],
                             "ratio": figures[where] / base})
    finally:
        shmkv.Cache.unlink(primary)
        shmkv.Cache.unlink(copy)
    notes.append("lag: from the return of the primary's Cache.set to the key's visibility in "
                 "the replica's region; the replica asks for the change counters every 10 ms "
                 "and re-reads each changed stripe whole (16 stripes), so lag grows with the "
                 "keys per stripe")
    notes.append("ratio: each set rate over the mean of the two runs without a replica (before "
                 "the replica started, after it stopped), same run; "
                 "2 cores shared by the writer, the poller, both nodes (and other users)")
    _report.print_and_save("replication", "Replication lag and the primary's write rate",
                           rows, notes, None if args.quick else args.out)


if __name__ == "__main__":
    main()
