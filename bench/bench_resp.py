"""The node's Redis-protocol door against redis-server, same run, same clients.

Starts a node (`shmkv serve --resp-bind`, a fresh region) and a redis-server, both on
127.0.0.1, and measures:

  * redis-py GET (and MGET of --batch keys) from this process, single client, in alternating
    rounds against the door and redis-server (16 B keys, 100 B values);
  * `redis-benchmark -t get,set,incr -c 50 -n N` with -P 1 and -P 16 against each, the
    requests per second it reports.

Targets (issue 15): a RESP GET no slower than redis-server's (latency ratio <= 1.0);
redis-benchmark at least 1.0x redis-server's requests/s with -P 1 and 0.5x with -P 16.

    python bench/bench_resp.py           # writes bench/results/resp-<host>-<date>.md/.json
    python bench/bench_resp.py --workers 1   # the single-process node
    python bench/bench_resp.py --door base=127.0.0.1:6400   # and a node started apart
    python bench/bench_resp.py --quick   # smoke run, writes nothing unless --out is given
    python bench/bench_resp.py --profile set -P 16   # where the node's time goes (cProfile)

Peers: Debian's redis-server and redis-benchmark, and `pip install redis hiredis`; without
them only the door's rows are printed. Not a test module.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import _node  # bench/ is sys.path[0] when this file is run as a script
import _report
from bench_node import running_redis

import shmkv

try:
    import redis
except ImportError:  # a peer, not a dependency
    redis = None

DOOR = "shmkv RESP door"


@contextlib.contextmanager
def running_door(arena_bytes: int, workers: int | None = None
                 ) -> Iterator[tuple[str, int, int]]:
    """A node with the RESP door on an ephemeral loopback port: (host, port, pid). workers:
    `shmkv serve --workers`; None: the node's default (one per CPU)."""
    options = ["--resp-bind", "127.0.0.1:0"]
    if workers is not None:
        options += ["--workers", str(workers)]
    with _node.running_node(f"shmkv-bench-resp-{uuid.uuid4().hex[:8]}", *options,
                            arena_bytes=arena_bytes) as ready:
        host, port = ready["resp"].rsplit(":", 1)
        yield host, int(port), ready["pid"]


def redis_benchmark(port: int, pipeline: int, requests: int, clients: int,
                    tests: str = "get,set,incr") -> dict[str, float]:
    """requests/s of each test that redis-benchmark reports (its --csv output)."""
    done = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", tests,
         "-c", str(clients), "-n", str(requests), "-P", str(pipeline), "-r", "10000", "--csv"],
        capture_output=True, text=True, timeout=900, check=True)
    found = {}
    for row in csv.DictReader(io.StringIO(done.stdout)):
        found[row["test"].lower()] = float(row["rps"])
    return found


def measure(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    rng = random.Random(args.seed)
    keys = [os.urandom(8).hex().encode() for _ in range(args.keys)]
    values = {k: os.urandom(args.value_bytes) for k in keys}
    samples: dict[str, list[int]] = {}
    throughput: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="shmkv-bench-resp-") as tmp, \
            running_door(256 << 20, args.workers) as (host, port, _), \
            running_redis(Path(tmp)) as redis_port:
        door = redis.Redis(host=host, port=port, protocol=2)
        peers_ = {DOOR: (door, port)}
        if redis_port is not None:
            peers_["redis-server"] = (redis.Redis(host="127.0.0.1", port=redis_port),
                                      redis_port)
        else:
            notes.append("redis-server missing: its rows are absent")
        for name, address in args.door:  # more doors, measured in the same rounds
            other_host, other_port = address.rsplit(":", 1)
            peers_[name] = (redis.Redis(host=other_host, port=int(other_port), protocol=2),
                            int(other_port))
        for client, _ in peers_.values():
            client.mset(values)
        for _ in range(args.rounds):  # alternate, so that both see the same machine weather
            for name, (client, _) in peers_.items():
                it = iter(rng.sample(keys, args.gets))
                samples.setdefault(f"{name}|GET", []).extend(
                    _report.time_each(lambda: client.get(next(it)), args.gets))
                bit = iter([rng.sample(keys, args.batch) for _ in range(args.batches)])
                samples.setdefault(f"{name}|MGET {args.batch}", []).extend(
                    _report.time_each(lambda: client.mget(next(bit)), args.batches))
        assert door.get(keys[0]) == values[keys[0]]
        door.close()
        if shutil.which("redis-benchmark") is None:
            notes.append("redis-benchmark missing: no throughput rows")
        else:
            # Rounds alternate the two servers, as the GET rounds do: the 2 cores are
            # shared, and one run of each can see very different machine weather.
            runs: dict[str, list[dict[str, float]]] = {}
            for _ in range(args.bench_rounds):
                for pipeline in (1, 16):
                    for name, (_, p) in peers_.items():
                        runs.setdefault(f"{name}|-P {pipeline}", []).append(redis_benchmark(
                            p, pipeline, args.bench_requests, args.clients))
            for key, found in runs.items():
                throughput[key] = {test: statistics.median(r[test] for r in found)
                                   for test in found[0]}
            for name in peers_:
                if name == "redis-server":
                    continue
                notes.append(f"redis-benchmark: median of {args.bench_rounds} rounds; {name}/"
                             "redis ratio by round: " + "; ".join(
                                 f"{test} {pipe}: " + ", ".join(
                                     f"{d[test] / r[test]:.2f}" for d, r in
                                     zip(runs[f"{name}|{pipe}"], runs[f"redis-server|{pipe}"]))
                                 for pipe in ("-P 1", "-P 16") for test in ("get", "set", "incr")
                                 if f"redis-server|{pipe}" in runs))
    return report(samples, throughput, args), notes


def report(samples: dict[str, list[int]], throughput: dict[str, dict[str, float]],
           args: argparse.Namespace) -> list[dict]:
    rows = []
    med = {name: _report.percentiles(s)["median"] for name, s in samples.items()}
    for name, s in samples.items():
        system, op = name.split("|")
        p = _report.percentiles(s)
        per_op = args.batch if op.startswith("MGET") else 1
        rows.append({"system": system, "op": op, "n": len(s), "median_ns": p["median"],
                     "p99_ns": p["p99"], "ops_per_s": 1e9 * per_op / p["median"],
                     "ratio": p["median"] / med[f"{DOOR}|{op}"]})
    for name, rps in throughput.items():
        system, pipe = name.split("|")
        for test, value in rps.items():
            base = throughput[f"{DOOR}|{pipe}"].get(test)
            rows.append({"system": system, "op": f"redis-benchmark {test} -c {args.clients} "
                         f"{pipe}", "n": args.bench_requests, "median_ns": None, "p99_ns": None,
                         "ops_per_s": value, "ratio": base / value if base else None})
    return rows


def checks(rows: list[dict]) -> list[str]:
    """The issue's targets, as door/redis ratios of this run (each door's)."""
    by = {(r["system"], r["op"]): r for r in rows}
    doors = list(dict.fromkeys(r["system"] for r in rows if r["system"] != "redis-server"))
    out = []
    for door in doors:
        shown = "door" if door == DOOR else door
        if ("redis-server", "GET") in by and (door, "GET") in by:
            ratio = by[(door, "GET")]["median_ns"] / by[("redis-server", "GET")]["median_ns"]
            out.append(f"redis-py GET latency, {shown}/redis-server = {ratio:.2f} "
                       f"({'met' if ratio <= 1.0 else 'NOT met'}: target <= 1.0)")
        for pipe, target in (("-P 1", 1.0), ("-P 16", 0.5)):
            for (system, op), row in by.items():
                if system == door and op.endswith(pipe) and ("redis-server", op) in by:
                    ratio = row["ops_per_s"] / by[("redis-server", op)]["ops_per_s"]
                    out.append(f"{op}: {shown}/redis-server requests/s = {ratio:.2f} ("
                               f"{'met' if ratio >= target else 'NOT met'}: target >= {target})")
    return out


def profile(test: str, pipeline: int, requests: int, clients: int) -> None:
    """Run a node in this process under cProfile while redis-benchmark drives one test
    against its door; print the functions that took the most time."""
    import cProfile
    import pstats
    import signal
    import threading

    from shmkv.broker.config import load_config
    from shmkv.broker.server import serve

    region = f"shmkv-bench-resp-{uuid.uuid4().hex[:8]}"
    config = load_config({"region": region, "bind": "tcp://127.0.0.1:*",
                          "pub_bind": "tcp://127.0.0.1:*", "metrics_bind": "off",
                          "resp_bind": "127.0.0.1:0", "arena_bytes": 256 << 20}, env={})

    class Events(io.StringIO):
        """The node's event lines: at "ready", start redis-benchmark, then stop the node."""

        def write(self, line: str) -> int:
            event = json.loads(line)
            if event["event"] == "ready":
                port = int(event["resp"].rsplit(":", 1)[1])

                def drive() -> None:
                    try:
                        print(redis_benchmark(port, pipeline, requests, clients, test))
                    finally:
                        os.kill(os.getpid(), signal.SIGTERM)
                threading.Thread(target=drive).start()
            return len(line)

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        serve(config, Events())
    finally:
        profiler.disable()
        shmkv.Cache.unlink(region)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--gets", type=int, default=5_000, help="single GETs per round")
    parser.add_argument("--batch", type=int, default=100, help="keys per MGET")
    parser.add_argument("--batches", type=int, default=500, help="MGETs per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bench-requests", type=int, default=100_000,
                        help="redis-benchmark -n")
    parser.add_argument("--clients", type=int, default=50, help="redis-benchmark -c")
    parser.add_argument("--bench-rounds", type=int, default=3,
                        help="redis-benchmark runs of each server, alternating")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--door", action="append", default=[], metavar="NAME=HOST:PORT",
                        type=lambda v: tuple(v.split("=", 1)),
                        help="another RESP door to measure in the same rounds (a node of "
                        "another commit, say); repeatable")
    parser.add_argument("--workers", type=int, help="the node's --workers (default: the "
                        "node's own default, one per CPU)")
    parser.add_argument("--profile", metavar="TEST", help="profile the node under "
                        "redis-benchmark -t TEST (get, set or incr) instead; with -P")
    parser.add_argument("-P", dest="pipeline", type=int, default=1, help="with --profile")
    _report.add_run_arguments(parser, rounds=False, seed=False)
    args = parser.parse_args()
    if redis is None:
        sys.exit("bench_resp.py needs redis-py (pip install redis hiredis)")
    if args.profile:
        profile(args.profile, args.pipeline, args.bench_requests // 2, args.clients)
        return
    if args.quick:
        args.keys, args.gets, args.batches, args.rounds, args.bench_requests = \
            2_000, 500, 50, 1, 10_000
        args.bench_rounds = 1
    rows, notes = measure(args)
    notes = [*checks(rows), "latency ratio = median / the door's median of the same op; "
             "redis-benchmark ratio = the door's requests/s / this row's (so the door's rows "
             "are 1.00 and a redis-server row under 1 means redis-server did more requests/s)",
             "TCP loopback; the client, the node and redis-server share the 2 cores",
             f"node: --workers {args.workers if args.workers is not None else 'default'}",
             *notes]
    out = args.out or (None if args.quick else str(_report.REPO / "bench" / "results"))
    _report.print_and_save("resp", "The RESP door vs redis-server", rows, notes, out)


if __name__ == "__main__":
    main()
