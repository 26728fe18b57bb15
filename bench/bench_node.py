"""The node over TCP loopback: RemoteCache against redis-py, per get and batched.

Starts a node (`shmkv serve`, a fresh region) and a redis-server, both on 127.0.0.1, fills both
with the same keys (16 B keys, 100 B values), and times from this process, in alternating
rounds: single gets (RemoteCache.get vs redis GET) and batches of --batch keys
(RemoteCache.get_many vs MGET). Both servers are stopped and the region unlinked on every exit.

Targets (issue 7): a remote get no slower than redis-py's; get_many ahead of MGET.

    python bench/bench_node.py           # writes bench/results/node-<host>-<date>.md/.json
    python bench/bench_node.py --quick   # smoke run, writes nothing unless --out is given

Peers: Debian's redis-server (`apt-get install redis-server`) and `pip install redis hiredis`;
without them only shmkv's rows are printed. Not a test module.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import _report  # bench/ is sys.path[0] when this file is run as a script
import peers

import shmkv
from shmkv.clients import RemoteCache

try:
    import redis
except ImportError:  # a peer, not a dependency
    redis = None


@contextlib.contextmanager
def running_node(arena_bytes: int) -> Iterator[str]:
    """A node on an ephemeral loopback port; yields its endpoint."""
    region = f"shmkv-bench-node-{uuid.uuid4().hex[:8]}"
    # a neutral cwd: in a checkout, ./shmkv would shadow the installed package
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmkv.cli", "--region", region, "serve", "--arena-bytes",
         str(arena_bytes), "--bind", "tcp://127.0.0.1:*", "--pub-bind", "tcp://127.0.0.1:*",
         "--metrics-bind", "off"],
        stdout=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())
    try:
        yield json.loads(proc.stdout.readline())["endpoint"]  # type: ignore[union-attr]
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()  # type: ignore[union-attr]
        shmkv.Cache.unlink(region)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_redis(dir_path: Path) -> Iterator[redis.Redis | None]:
    if redis is None or shutil.which("redis-server") is None:
        yield None
        return
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(dir_path), "--daemonize", "no"]
    client = redis.Redis(host="127.0.0.1", port=port)
    server = peers.Server("redis-server", argv, dir_path / "redis.log", client.ping)
    try:
        yield client
    finally:
        client.close()
        server.stop()


def measure(args: argparse.Namespace) -> tuple[dict[str, list[int]], list[str]]:
    rng = random.Random(args.seed)
    keys = [os.urandom(8).hex().encode() for _ in range(args.keys)]
    values = {k: os.urandom(args.value_bytes) for k in keys}
    samples: dict[str, list[int]] = {}
    notes = []
    with tempfile.TemporaryDirectory(prefix="shmkv-bench-node-") as tmp, \
            running_node(256 << 20) as endpoint, running_redis(Path(tmp)) as rds, \
            RemoteCache(endpoint, timeout_s=10) as remote:
        for i in range(0, len(keys), 500):
            remote.set_many({k: values[k] for k in keys[i:i + 500]})
        systems: dict[str, tuple[Callable, Callable]] = {
            "shmkv RemoteCache": (remote.get, remote.get_many)}
        if rds is not None:
            rds.mset(values)
            systems["redis-py (hiredis)" if redis.utils.HIREDIS_AVAILABLE else "redis-py"] = \
                (rds.get, rds.mget)
        else:
            notes.append("redis missing (apt-get install redis-server; pip install redis "
                         "hiredis): its rows are absent")
        for _ in range(args.rounds):  # alternate, so that both see the same machine weather
            for name, (get, get_many) in systems.items():
                order = rng.sample(keys, args.gets)
                it = iter(order)
                samples.setdefault(f"{name}|get", []).extend(_report.time_each(lambda: get(next(it)),
                                                                   len(order)))
                batches = [rng.sample(keys, args.batch) for _ in range(args.batches)]
                bit = iter(batches)
                samples.setdefault(f"{name}|batch of {args.batch}", []).extend(
                    _report.time_each(lambda: get_many(next(bit)), len(batches)))
        assert remote.get(keys[0]) == values[keys[0]]
    return samples, notes


def report(samples: dict[str, list[int]], batch: int) -> tuple[list[dict], list[str]]:
    med = {name: _report.percentiles(s)["median"] for name, s in samples.items()}
    rows = []
    for name, s in samples.items():
        system, op = name.split("|")
        p = _report.percentiles(s)
        per_op = batch if op.startswith("batch") else 1
        base = med[f"shmkv RemoteCache|{op}"]
        rows.append({"system": system, "op": op, "n": len(s), "median_ns": p["median"],
                     "p99_ns": p["p99"], "ops_per_s": 1e9 * per_op / p["median"],
                     "ratio": p["median"] / base})
    checks = []
    redis_name = next((n.split("|")[0] for n in med if not n.startswith("shmkv")), None)
    if redis_name:
        get_ratio = med[f"{redis_name}|get"] / med["shmkv RemoteCache|get"]
        batch_ratio = med[f"{redis_name}|batch of {batch}"] / \
            med[f"shmkv RemoteCache|batch of {batch}"]
        checks += [f"remote get vs redis GET: redis/shmkv = {get_ratio:.2f} "
                   f"({'met' if get_ratio >= 1 else 'NOT met'}: target >= 1)",
                   f"get_many({batch}) vs MGET: redis/shmkv = {batch_ratio:.2f} "
                   f"({'met' if batch_ratio > 1 else 'NOT met'}: target > 1)"]
    return rows, checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--gets", type=int, default=5_000, help="single gets per round")
    parser.add_argument("--batch", type=int, default=100, help="keys per get_many / MGET")
    parser.add_argument("--batches", type=int, default=500, help="batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="one short round, no files")
    parser.add_argument("--out", help="results directory (default bench/results; none with "
                        "--quick)")
    args = parser.parse_args()
    if args.quick:
        args.keys, args.gets, args.batches, args.rounds = 2_000, 500, 50, 1
    samples, notes = measure(args)
    rows, checks = report(samples, args.batch)
    notes = [*checks, "ratio = median / shmkv RemoteCache median of the same op; ops/s "
             "counts keys", "TCP loopback; client and servers share the 2 cores", *notes]
    out = args.out or (None if args.quick else str(_report.REPO / "bench" / "results"))
    _report.print_and_save("node", "The node over TCP loopback vs redis-py", rows, notes, out)


if __name__ == "__main__":
    main()
