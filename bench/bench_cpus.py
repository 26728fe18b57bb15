"""--cpu-affinity auto (each worker on a CPU of its own) against off (the workers left to the
scheduler): two nodes of 2+ workers side by side, their rounds alternating, with redis-server
in the same run (broker/cpus.py says why the pin can matter). bench_compiled_door.py compares
two other nodes the same way (measure() and report() take the two variants).

    python bench/bench_cpus.py --rounds 4                 # writes bench/results/cpus-*.md
    python bench/bench_cpus.py --quick

Per round, for each node over tcp and over ipc: single gets from one RemoteCache (this process,
left to the scheduler like any client), get_many(100), and the throughput of --clients client
processes (bench_node.py's); redis-py GET, MGET and as many redis-py processes on redis-server.
Not a test module.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

import _report
import bench_node
from bench_node import REDIS, running_redis

from shmkv.clients import RemoteCache

try:
    import redis
except ImportError:  # a peer, not a dependency
    redis = None

# name: (the node's options, what its environment adds); the first is compared with the second
Variants = dict[str, tuple[list[str], dict[str, str]]]
VARIANTS: Variants = {"auto": (["--cpu-affinity", "auto"], {}),
                      "off": (["--cpu-affinity", "off"], {})}


def measure(args: argparse.Namespace, variants: Variants = VARIANTS
            ) -> tuple[dict[str, list[int]], dict[str, list[float]], dict[str, object]]:
    rng = random.Random(args.seed)
    keys = [os.urandom(8).hex().encode() for _ in range(args.keys)]
    values = {k: os.urandom(100) for k in keys}
    samples: dict[str, list[int]] = {}
    throughput: dict[str, list[float]] = {}
    placed: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="shmkv-bench-cpus-") as tmp, \
            contextlib.ExitStack() as stack:
        gets: dict[str, Callable[[bytes], object]] = {}
        batches: dict[str, Callable[[list[bytes]], object]] = {}
        targets: dict[str, str] = {}
        for setting, (options, env) in variants.items():
            node = stack.enter_context(bench_node.running_node(
                64 << 20, os.path.join(tmp, setting), options, env))
            placed[setting] = [w.get("cpu") for w in node["workers"]]
            for transport, endpoint in (("tcp", node["endpoint"]),
                                        ("ipc", node["ipc_endpoint"])):
                cache = stack.enter_context(RemoteCache(endpoint, timeout_s=30))
                cache.set_many(values)
                name = f"shmkv {transport}, {setting}"
                gets[name], batches[name], targets[name] = cache.get, cache.get_many, endpoint
        redis_port = stack.enter_context(running_redis(Path(tmp)))
        if redis_port is not None:
            client = redis.Redis(host="127.0.0.1", port=redis_port)
            stack.callback(client.close)
            client.mset(values)
            gets[REDIS], batches[REDIS] = client.get, client.mget
            targets[REDIS] = f"redis://127.0.0.1:{redis_port}"
        for _ in range(args.rounds):  # alternate, so that all see the same machine weather
            for name in gets:
                it = iter(rng.choices(keys, k=args.gets))
                samples.setdefault(f"{name}|get", []).extend(
                    _report.time_each(lambda f=gets[name]: f(next(it)), args.gets))
                calls = iter([rng.sample(keys, 100) for _ in range(args.batches)])
                samples.setdefault(f"{name}|get_many(100)", []).extend(
                    _report.time_each(lambda f=batches[name]: f(next(calls)), args.batches))
            for name, target in targets.items():
                throughput.setdefault(name, []).append(bench_node.run_clients(
                    target, args.clients, args.seconds, keys[:1000]))
    return samples, throughput, placed


def report(samples: dict[str, list[int]], throughput: dict[str, list[float]],
           clients: int, variants: Variants = VARIANTS) -> tuple[list[dict], list[str]]:
    med = {name: _report.percentiles(s)["median"] for name, s in samples.items()}
    best = {name: max(runs) for name, runs in throughput.items()}
    rows = []
    for name, s in samples.items():
        system, op = name.split("|")
        p = _report.percentiles(s)
        peer = med.get(f"{REDIS}|{op}")
        rows.append({"system": system, "op": op, "n": len(s), "median_ns": p["median"],
                     "p99_ns": p["p99"], "ops_per_s": 1e9 / p["median"],
                     "ratio": p["median"] / peer if peer else None})
    for name, ops_per_s in best.items():
        peer = best.get(REDIS)
        rows.append({"system": name, "op": f"throughput, {clients} clients", "n": None,
                     "median_ns": None, "p99_ns": None, "ops_per_s": ops_per_s,
                     "ratio": peer / ops_per_s if peer else None})
    notes = []
    first, second = variants
    for transport in ("tcp", "ipc"):
        a, b = f"shmkv {transport}, {first}", f"shmkv {transport}, {second}"
        for op in ("get", "get_many(100)"):
            notes.append(f"{transport} {op}: {first}'s median {med[f'{a}|{op}'] / 1000:.1f} us, "
                         f"{med[f'{a}|{op}'] / med[f'{b}|{op}']:.2f}x {second}'s")
        each = ", ".join(f"{x / y:.2f}" for x, y in zip(throughput[a], throughput[b]))
        notes.append(f"{transport}, {clients} clients: {first}'s best {best[a]:,.0f} gets/s, "
                     f"{best[a] / best[b]:.2f}x {second}'s (round by round: {each})")
    return rows, notes


def arguments(doc: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--gets", type=int, default=5_000, help="single gets per round")
    parser.add_argument("--batches", type=int, default=500, help="get_many(100) per round")
    parser.add_argument("--clients", type=int, default=8, help="client processes")
    parser.add_argument("--seconds", type=float, default=2.0, help="per throughput run")
    _report.add_run_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.keys, args.gets, args.batches, args.rounds, args.seconds = 2_000, 500, 50, 1, 0.5
    return args


def run(args: argparse.Namespace, variants: Variants, name: str, title: str) -> None:
    """Measure the two variants and redis-server; print and save the table (name-*.md)."""
    load = os.getloadavg()
    samples, throughput, placed = measure(args, variants)
    rows, notes = report(samples, throughput, args.clients, variants)
    notes += [f"workers' CPUs: {placed}; each node has one worker per CPU (the default); "
              "ratio = median / redis-py's of the same op (latency rows), redis-server's "
              "ops/s / this row's (throughput rows): below 1 is faster than Redis",
              f"throughput: best of {args.rounds} runs of {args.seconds} s each; loopback, "
              "clients and servers share the machine's cores",
              "load average before / after the run: " + " / ".join(
                  ", ".join(f"{x:.2f}" for x in avg) for avg in (load, os.getloadavg()))]
    out = args.out or (None if args.quick else str(_report.REPO / "bench" / "results"))
    _report.print_and_save(name, title, rows, notes, out)


def main() -> None:
    args = arguments(__doc__)
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs 2 CPUs: with one, auto and off place the workers alike")
    run(args, VARIANTS, "cpus", "Workers on a CPU each (--cpu-affinity auto) against off")


if __name__ == "__main__":
    main()
