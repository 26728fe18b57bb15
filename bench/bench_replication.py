"""Replication (broker/replication.py) against Redis's (`replicaof`, two or three Debian
redis-server instances on loopback TCP) in the same run: how long a write takes to reach a
replica, what replicas cost the primary's writers, how long a full sync of ~1 GiB takes.

Lag: a writer process stores key i at a steady rate on the primary (shmkv: a local Cache.set;
Redis: SET through redis-py; the return is the acknowledgement, the value CLOCK_MONOTONIC
just before the call, the same clock in every process of the host), and this process polls
the replica (shmkv: its region; Redis: GET on the replica instance) for each key in turn and
takes the time it becomes visible there. Both systems start from --keys keys of 100 B.

Throughput: sets of 16 B keys and 100 B values to the primary, one at a time (shmkv through
the node with RemoteCache and straight in shared memory with Cache; Redis with redis-py), with
0, 1 and 2 replicas following, then 0 again.

Full sync: the time from starting a replica (shmkv: a replica node, until its "ready" line,
which it prints after its first sync; Redis: `replicaof`, until master_link_status is up and no
sync is in progress) of a primary holding --sync-bytes of 1 KiB values.

Every process shares the machine's cores (2 on the project's VM), as they would not on hosts
of their own.

    python bench/bench_replication.py                   # writes bench/results/replication-*
    python bench/bench_replication.py --quick           # smaller, prints only
    python bench/bench_replication.py --digests 1000000 # the range digests alone

Not a test module.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import _node  # bench/ is sys.path[0] when this file is run as a script
import _report

import shmkv
from shmkv.clients import RemoteCache

try:
    import redis
except ImportError:  # the Redis rows then say why they are missing
    redis = None

VALUE = os.urandom(100)
SYNC_VALUE_BYTES = 1024
START_TIMEOUT_S = 600.0


# --- shmkv ---------------------------------------------------------------------------------
@contextmanager
def node(region: str, arena_bytes: int, *options: str) -> Iterator[dict[str, Any]]:
    with _node.running_node(region, "--ipc-dir", "off", *options, arena_bytes=arena_bytes,
                            unlink=False, stderr=subprocess.DEVNULL,
                            stop_timeout_s=60) as ready:
        yield ready


def _shmkv_writer(region: str, prefix: str, n: int, rate: float) -> None:
    cache = shmkv.Cache.open(region)
    _paced(n, rate, lambda i: cache.set(f"{prefix}{i}",
                                        time.monotonic_ns().to_bytes(8, "little")))
    cache.close()


def _paced(n: int, rate: float, write: Callable[[int], object]) -> None:
    start = time.monotonic_ns() + 50_000_000
    step = 1e9 / rate
    for i in range(n):
        left = start + int(i * step) - time.monotonic_ns()
        if left > 0:  # sleep, not spin: the cores are shared with the nodes and the poller
            time.sleep(left / 1e9)
        write(i)


def lag(writer: multiprocessing.Process, visible: Callable[[str], bytes | None],
        prefix: str, n: int) -> list[int]:
    """ns from each write's acknowledgement to its visibility on the replica."""
    samples = []
    try:
        writer.start()
        for i in range(n):
            key = f"{prefix}{i}"
            while (value := visible(key)) is None:
                if writer.exitcode:  # it died: its keys will never come
                    raise RuntimeError(f"the writer exited with {writer.exitcode}")
                time.sleep(200e-6)  # the resolution of the figures
            samples.append(time.monotonic_ns() - int.from_bytes(value, "little"))
        writer.join()
    finally:
        if writer.is_alive():
            writer.kill()
            writer.join()
    return samples


def shmkv_sets(endpoint: str, region: str, n: int, tag: str) -> dict[str, float]:
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


def fill(cache: shmkv.Cache, n: int, value: bytes, prefix: bytes = b"f-") -> None:
    for start in range(0, n, 10_000):
        stop = min(n, start + 10_000)
        cache.set_many({prefix + b"%09d" % i: value for i in range(start, stop)})


def shmkv_runs(args: argparse.Namespace, tag: str) -> tuple[list[dict], dict[str, Any]]:
    """Lag rows, and the set rates by number of replicas."""
    primary = f"bench-repl-p-{tag}"
    copies = [f"bench-repl-r{i}-{tag}" for i in range(2)]
    rows: list[dict] = []
    rates: dict[str, Any] = {}
    arena = 256 << 20
    try:
        # room for every key of the run: an index that fills up evicts on every set
        max_keys = args.keys + 30 * args.sets + 3 * args.writes
        with shmkv.Cache.create(primary, arena_bytes=arena, max_keys=max_keys) as c:
            fill(c, args.keys, VALUE)
        with node(primary, arena, "--repl-bind", "tcp://127.0.0.1:*") as ready:
            endpoint, repl = ready["endpoint"], ready["replication"]["endpoint"]
            rates["0 (before)"] = shmkv_sets(endpoint, primary, args.sets, "alone-1")
            with ExitStack() as replicas:
                replicas.enter_context(node(copies[0], arena, "--replica-of", repl))
                for rate in args.rates:
                    prefix = f"lag-{rate:.0f}-"
                    writer = multiprocessing.get_context("spawn").Process(
                        target=_shmkv_writer, args=(primary, prefix, args.writes, rate))
                    with shmkv.Cache.open(copies[0]) as replica:
                        samples = lag(writer, replica.get, prefix, args.writes)
                    rows.append(_lag_row("shmkv", rate, samples, args))
                rates["1"] = shmkv_sets(endpoint, primary, args.sets, "one")
                replicas.enter_context(node(copies[1], arena, "--replica-of", repl))
                rates["2"] = shmkv_sets(endpoint, primary, args.sets, "two")
            rates["0 (after)"] = shmkv_sets(endpoint, primary, args.sets, "alone-2")
    finally:
        for name in (primary, *copies):
            shmkv.Cache.unlink(name)
    return rows, rates


def shmkv_full_sync(total_bytes: int, tag: str) -> float:
    """Seconds from a replica node's start to its ready line, for a primary of total_bytes."""
    primary, copy = f"bench-sync-p-{tag}", f"bench-sync-r-{tag}"
    n = total_bytes // SYNC_VALUE_BYTES
    arena = int(total_bytes * 1.5)
    value = os.urandom(SYNC_VALUE_BYTES)
    try:
        with shmkv.Cache.create(primary, arena_bytes=arena, max_keys=n + 1000) as c:
            fill(c, n, value)
        with node(primary, arena, "--repl-bind", "tcp://127.0.0.1:*") as ready:
            t0 = time.perf_counter()
            with node(copy, arena, "--replica-of", ready["replication"]["endpoint"]):
                return time.perf_counter() - t0
    finally:
        shmkv.Cache.unlink(primary)
        shmkv.Cache.unlink(copy)


# --- Redis ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def redis_server(work: Path, name: str, *extra: str) -> Iterator[Any]:
    port = _free_port()
    argv = [shutil.which("redis-server") or "redis-server", "--port", str(port),
            "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(work), "--dbfilename", f"{name}.rdb", "--daemonize", "no",
            "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0", *extra]
    log = open(work / f"{name}.log", "w")  # noqa: SIM115  (closed below)
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"redis-server {name} did not start") from None
                time.sleep(0.05)
        client.port = port  # type: ignore[attr-defined]
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=30)
        log.close()


def follow(replica: Any, master: Any, timeout_s: float = START_TIMEOUT_S) -> float:
    """replicaof master; seconds until the link is up and no sync is in progress."""
    t0 = time.perf_counter()
    replica.replicaof("127.0.0.1", master.port)
    deadline = time.monotonic() + timeout_s
    while True:
        info = replica.info("replication")
        if info.get("master_link_status") == "up" and not info.get("master_sync_in_progress"):
            return time.perf_counter() - t0
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Redis replica did not sync within {timeout_s} s")
        time.sleep(0.005)


def _redis_writer(port: int, prefix: str, n: int, rate: float) -> None:
    client = redis.Redis(host="127.0.0.1", port=port)
    _paced(n, rate, lambda i: client.set(f"{prefix}{i}",
                                         time.monotonic_ns().to_bytes(8, "little")))
    client.close()


def redis_sets(client: Any, n: int, tag: str) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        client.set(b"r-%s-%09d" % (tag.encode(), i), VALUE)
    return n / (time.perf_counter() - t0)


def _redis_fill(client: Any, n: int, value: bytes) -> None:
    for start in range(0, n, 10_000):
        client.mset({b"f-%09d" % i: value for i in range(start, min(n, start + 10_000))})


def redis_runs(args: argparse.Namespace, work: Path) -> tuple[list[dict], dict[str, float]]:
    rows: list[dict] = []
    rates: dict[str, float] = {}
    with redis_server(work, "master") as master:
        _redis_fill(master, args.keys, VALUE)
        rates["0 (before)"] = redis_sets(master, args.sets, "alone-1")
        with redis_server(work, "replica-1") as one:
            follow(one, master)
            for rate in args.rates:
                prefix = f"lag-{rate:.0f}-"
                writer = multiprocessing.get_context("spawn").Process(
                    target=_redis_writer, args=(master.port, prefix, args.writes, rate))
                rows.append(_lag_row("Redis", rate, lag(writer, one.get, prefix, args.writes),
                                     args))
            rates["1"] = redis_sets(master, args.sets, "one")
            with redis_server(work, "replica-2") as two:
                follow(two, master)
                rates["2"] = redis_sets(master, args.sets, "two")
        rates["0 (after)"] = redis_sets(master, args.sets, "alone-2")
    return rows, rates


def redis_full_sync(total_bytes: int, work: Path) -> float:
    value = os.urandom(SYNC_VALUE_BYTES)
    with redis_server(work, "sync-master") as master, redis_server(work, "sync-replica") as rep:
        _redis_fill(master, total_bytes // SYNC_VALUE_BYTES, value)
        return follow(rep, master)


# --- the digests alone ---------------------------------------------------------------------
def digest_speed(n_keys: int) -> list[dict[str, Any]]:
    """ms to compute every stripe's range digests of a region of n_keys (both engines)."""
    from shmkv import repl_digest as D
    name = f"bench-digest-{uuid.uuid4().hex[:8]}"
    cache = shmkv.Cache.create(name, arena_bytes=max(256 << 20, n_keys * 400), max_keys=n_keys)
    rows = []
    try:
        fill(cache, n_keys, VALUE)
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


# --- the report ----------------------------------------------------------------------------
def _lag_row(system: str, rate: float, samples: list[int], args: argparse.Namespace) -> dict:
    p = _report.percentiles(samples)
    return {"system": f"{system} replica", "op": f"lag at {rate:,.0f} writes/s ({args.keys:,} "
            "keys before)", "n": len(samples), "median_ns": p["median"], "p99_ns": p["p99"],
            "ops_per_s": None, "ratio": None}


def _rate_rows(system: str, op: str, rates: dict[str, float]) -> list[dict]:
    base = (rates["0 (before)"] + rates["0 (after)"]) / 2
    return [{"system": f"{system} primary, {label} replica(s)", "op": op, "n": None,
             "median_ns": None, "p99_ns": None, "ops_per_s": rate, "ratio": rate / base}
            for label, rate in rates.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writes", type=int, default=10_000, help="writes per lag run")
    parser.add_argument("--rates", default="1000,10000", help="writes/s of the lag runs")
    parser.add_argument("--keys", type=int, default=100_000, help="keys before the lag runs")
    parser.add_argument("--sets", type=int, default=20_000, help="sets per throughput run")
    parser.add_argument("--sync-bytes", type=int, default=1 << 30,
                        help="value bytes on the primary for the full sync")
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
        args.writes, args.sets, args.keys, args.sync_bytes = 2_000, 2_000, 10_000, 64 << 20
    args.rates = [float(r) for r in args.rates.split(",")]
    tag = uuid.uuid4().hex[:8]
    lag_rows, rates = shmkv_runs(args, tag)
    rows = list(lag_rows)
    sync_s = {"shmkv": shmkv_full_sync(args.sync_bytes, tag)}
    redis_rates: dict[str, float] = {}
    if redis is not None and shutil.which("redis-server"):
        with tempfile.TemporaryDirectory(prefix="bench-repl-redis-") as work:
            redis_lag, redis_rates = redis_runs(args, Path(work))
            sync_s["Redis"] = redis_full_sync(args.sync_bytes, Path(work))
        for ours, theirs in zip(lag_rows, redis_lag):
            theirs["ratio"] = theirs["median_ns"] / ours["median_ns"]
        rows += redis_lag
    else:
        rows.append({"system": "Redis", "op": "all", "na": "n/a (redis-server or redis-py "
                     "missing: apt-get install redis-server; pip install redis)"})
    rows += _rate_rows("shmkv", "set (RemoteCache)", {k: v["remote"] for k, v in rates.items()})
    rows += _rate_rows("shmkv", "set (Cache)", {k: v["local"] for k, v in rates.items()})
    if redis_rates:
        rows += _rate_rows("Redis", "SET (redis-py)", redis_rates)
    for system, seconds in sync_s.items():
        rows.append({"system": f"{system} replica", "op": f"full sync of "
                     f"{args.sync_bytes / (1 << 30):.2f} GiB ({SYNC_VALUE_BYTES} B values)",
                     "n": 1, "median_ns": seconds * 1e9, "p99_ns": None, "ops_per_s": None,
                     "ratio": seconds / sync_s["shmkv"]})
    notes = [
        "lag: from the return of the primary's write (shmkv: Cache.set in shared memory; "
        "Redis: SET) to the key's visibility on the replica (shmkv: its region; Redis: GET on "
        "it); ratio: Redis's median over shmkv's at the same rate",
        "set rates: ratio over the mean of the two runs with no replica (before and after), "
        "same system, same run",
        "full sync: ratio over shmkv's time (shmkv: replica node start to its ready line; "
        "Redis: replicaof to link up, diskless sync)",
        "2 cores shared by the writer, the poller, every node and server (and other users)",
    ]
    _report.print_and_save("replication", "Replication: lag, the primary's write rate, full "
                           "sync; Redis replicaof as the peer", rows, notes,
                           None if args.quick else args.out)


if __name__ == "__main__":
    main()
