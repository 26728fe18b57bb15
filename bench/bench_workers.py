"""Throughput of a node with 1 and with 2 worker processes (`shmkv serve --workers N`) under
many client processes, against redis-server in the same run.

For each system and each number of client processes (--clients, default 8 and 32), starts
that many client processes; each connects, warms up, waits until all are ready, then runs one
operation (GET, or SET of the same value) on random keys for --duration-s seconds, timing
each call. Keys are 16 hex bytes, values 100 bytes, all keys stored before the clients start.

    system                        client (one per process)
    shmkv ZeroMQ, workers N       RemoteCache (sticks to one worker: clients/workers.py)
    shmkv RESP, workers N         redis-py on the node's RESP door (--resp-bind)
    redis-server                  redis-py (hiredis parser when installed), TCP loopback

    python bench/bench_workers.py          # writes bench/results/workers-<host>-<date>.md/.json
    python bench/bench_workers.py --quick  # smoke run, writes nothing unless --out is given

Clients and servers share the machine's cores: on a 2-core VM, 8 or 32 Python client
processes take most of the CPU, so the numbers say how the node shares the machine with its
clients, not what it could serve alone. Peers: Debian's redis-server and `pip install redis
hiredis`; without them only shmkv's rows are printed. Not a test module.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import _node  # bench/ is sys.path[0] when this file is run as a script
import _report
from bench_node import running_redis

import shmkv

KEYS = 10_000
VALUE_BYTES = 100
WARMUP_OPS = 200
START_TIMEOUT_S = 120.0
REDIS = "redis-server (redis-py)"


# --- one client process ---------------------------------------------------------------------
def client_main(kind: str, address: str, op: str, duration_s: float, seed: int) -> None:
    """Connect, warm up, print "ready", wait for a line on stdin, run op for duration_s,
    print {"ns": [latency of each call]}."""
    rng = random.Random(seed)
    keys = [_key(i) for i in range(KEYS)]
    value = b"v" * VALUE_BYTES
    if kind == "zmq":
        from shmkv.clients import RemoteCache
        client = RemoteCache(address, timeout_s=30.0)
    else:
        import redis
        host, _, port = address.rpartition(":")
        client = redis.Redis(host=host, port=int(port))
    call = (lambda k: client.get(k)) if op == "get" else (lambda k: client.set(k, value))
    for _ in range(WARMUP_OPS):
        call(rng.choice(keys))
    print("ready", flush=True)
    sys.stdin.readline()
    clock, samples = time.perf_counter_ns, []
    until = clock() + int(duration_s * 1e9)
    now = clock()
    while now < until:
        key = rng.choice(keys)
        started = now
        call(key)
        now = clock()
        samples.append(now - started)
    print(json.dumps({"ns": samples}), flush=True)
    client.close()


def _key(i: int) -> bytes:
    return f"{i:016x}".encode()


# --- the parent ----------------------------------------------------------------------------
@contextlib.contextmanager
def running_node(workers: int) -> Iterator[dict]:
    """A node with its ZeroMQ and RESP doors on ephemeral loopback ports; yields its ready
    event."""
    region = f"shmkv-bench-workers-{uuid.uuid4().hex[:8]}"
    with _node.running_node(region, "--ipc-dir", "off", "--resp-bind", "127.0.0.1:0",
                            "--workers", str(workers), stop_timeout_s=60) as ready:
        with shmkv.Cache.open(region) as cache:
            for i in range(KEYS):
                cache.set(_key(i), b"v" * VALUE_BYTES)
        yield ready


def run_clients(kind: str, address: str, op: str, clients: int,
                duration_s: float) -> list[int]:
    """Every call's latency (ns) of `clients` processes running op together."""
    procs = [subprocess.Popen([sys.executable, __file__, "--client", kind, address, op,
                               str(duration_s), str(seed)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for seed in range(clients)]
    try:
        for proc in procs:
            if proc.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
                raise RuntimeError(f"a {kind} client failed to start against {address}")
        for proc in procs:  # go
            proc.stdin.write("go\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        samples: list[int] = []
        for proc in procs:
            samples += json.loads(proc.stdout.readline())["ns"]  # type: ignore[union-attr]
        return samples
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


def measure(args: argparse.Namespace) -> dict[tuple[str, str, int], list[list[int]]]:
    """{(system, op, clients): the latencies of each round}. Every server runs throughout
    and the systems take turns within each round, so that a change in the machine's load
    (it is shared) falls on all of them alike."""
    found: dict[tuple[str, str, int], list[list[int]]] = {}
    with contextlib.ExitStack() as stack:
        systems: list[tuple[str, str, str]] = []  # (name, client kind, address)
        for workers in args.workers:
            ready = stack.enter_context(running_node(workers))
            systems += [(f"shmkv ZeroMQ, workers {workers}", "zmq", ready["endpoint"]),
                        (f"shmkv RESP, workers {workers}", "resp", ready["resp"])]
        redis_port = stack.enter_context(running_redis(Path(stack.enter_context(
            tempfile.TemporaryDirectory()))))
        if redis_port is not None:
            systems.append((REDIS, "resp", f"127.0.0.1:{redis_port}"))
        for round_ in range(args.rounds):
            for op in args.ops:
                for clients in args.clients:
                    for system, kind, address in systems:
                        print(f"round {round_ + 1}: {system}, {op} x {clients} processes",
                              file=sys.stderr, flush=True)
                        found.setdefault((system, op, clients), []).append(
                            run_clients(kind, address, op, clients, args.duration_s))
    return found


def report(found: dict[tuple[str, str, int], list[list[int]]], args: argparse.Namespace
           ) -> tuple[list[dict], list[str]]:
    rows, checks = [], []
    base = f"shmkv ZeroMQ, workers {args.workers[0]}"
    # the median round's calls per second
    ops_per_s = {key: sorted(len(ns) for ns in rounds)[len(rounds) // 2] / args.duration_s
                 for key, rounds in found.items()}
    for (system, op, clients), rounds in sorted(found.items(), key=lambda kv: kv[0][1:]):
        ns = [x for one in rounds for x in one]
        p = _report.percentiles(ns)
        reference = ops_per_s.get((base, op, clients))
        rows.append({"system": system, "op": f"{op}, {clients} processes", "n": len(ns),
                     "median_ns": p["median"], "p99_ns": p["p99"],
                     "ops_per_s": ops_per_s[(system, op, clients)],
                     "ratio": ops_per_s[(system, op, clients)] / reference if reference
                     else None})
    redis_name = REDIS
    for op in args.ops:
        for clients in args.clients:
            peer = ops_per_s.get((redis_name, op, clients))
            if not peer:
                continue
            for workers in args.workers:
                for door in ("ZeroMQ", "RESP"):
                    mine = ops_per_s.get((f"shmkv {door}, workers {workers}", op, clients))
                    if mine:
                        checks.append(f"{op}, {clients} processes, {door} workers {workers} "
                                      f"vs redis-server: {mine / peer:.2f}x "
                                      f"({'met' if mine >= peer else 'NOT met'}: target "
                                      ">= 1.0x, stretch 1.5x)")
    return rows, checks


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        kind, address, op, duration_s, seed = sys.argv[2:7]
        client_main(kind, address, op, float(duration_s), int(seed))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ops", nargs="+", default=["get", "set"], choices=["get", "set"])
    parser.add_argument("--duration-s", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="short runs, no files")
    parser.add_argument("--out", help="results directory (default bench/results; none with "
                        "--quick)")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.duration_s, args.ops, args.rounds = [4], 0.5, ["get"], 1
    load_before = os.getloadavg()[0]
    found = measure(args)
    rows, checks = report(found, args)
    notes = [*checks,
             f"ratio = ops/s / the ops/s of shmkv ZeroMQ, workers {args.workers[0]} (same op "
             "and clients); ops/s = calls completed by all processes / duration",
             f"each process runs its op for {args.duration_s} s, {args.rounds} rounds (the "
             "systems take turns in each); ops/s is the median round's, latencies are per "
             "call, all processes and rounds together",
             f"{os.cpu_count()} CPUs shared by the servers and every client process; load "
             f"average {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after (the "
             "machine is shared: other work running meanwhile shows here)"]
    out = args.out or (None if args.quick else str(_report.REPO / "bench" / "results"))
    _report.print_and_save("workers", "Throughput with worker processes vs redis-server",
                           rows, notes, out)


if __name__ == "__main__":
    main()
