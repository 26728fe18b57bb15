"""The node's CPU time per request, against redis-server's, one client at a time.

Latency on this kind of machine moves 2x with the weather; CPU time per request moves less,
and it is what bounds a node's throughput. For each server in turn, in rounds that alternate
the order, one client sends --requests single GETs, then single SETs of 100 B values, then
--requests / 10 reads of BATCH_KEYS keys at once (get_many, MGET), and the server's utime +
stime (from /proc, its worker processes included) is divided by the count:

    shmkv      RemoteCache.get/set/get_many against `shmkv serve` run by this checkout
    base       the same client against a node run by another checkout's interpreter
               (--base-python PATH/.venv/bin/python): the before of a change
    redis      redis-py GET/SET/MGET against redis-server (Debian's), if installed

The client's own CPU per request is reported too. Every node runs with its metrics endpoint
on (the default of `shmkv serve`), ZeroMQ over tcp on loopback.

    python bench/bench_node_cpu.py --base-python ../base/.venv/bin/python
    python bench/bench_node_cpu.py --quick      # fewer requests, prints only

Not a test module.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import _report
from shmkv.clients import RemoteCache

import shmkv

TICK_S = os.sysconf("SC_CLK_TCK")
VALUE = b"v" * 100
BATCH_KEYS = 100
START_TIMEOUT_S = 30.0


def cpu_s(pid: int) -> float:
    """utime + stime of a process and its children (a node's workers), in seconds."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK_S
    return total


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


@contextmanager
def shmkv_node(python: str, workers: int) -> Iterator[tuple[int, Callable[[], Any]]]:
    """(node pid, a function making a connected client with get/set)."""
    region = "bench-cpu-" + uuid.uuid4().hex[:8]
    proc = subprocess.Popen(
        [python, "-m", "shmkv.cli", "--region", region, "serve", "--bind", "tcp://127.0.0.1:*",
         "--pub-bind", "tcp://127.0.0.1:*", "--metrics-bind", "127.0.0.1:0",
         "--workers", str(workers)],
        stdout=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())
    try:
        ready = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        yield ready["pid"], lambda: RemoteCache(ready["endpoint"])
    finally:
        proc.terminate()
        proc.wait(START_TIMEOUT_S)
        proc.stdout.close()  # type: ignore[union-attr]
        shmkv.Cache.unlink(region)


@contextmanager
def redis_node() -> Iterator[tuple[int, Callable[[], Any]]]:
    import redis  # a test dependency

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield proc.pid, lambda: redis.Redis(port=port)
    finally:
        proc.terminate()
        proc.wait(START_TIMEOUT_S)


def measure(server: Any, requests: int) -> dict[str, dict[str, float]]:
    """us of server CPU, client CPU and wall time per request, for get and for set."""
    with server as (pid, connect):
        client = connect()
        try:
            client.set("k", VALUE)
            keys = [b"k%d" % i for i in range(BATCH_KEYS)]
            for key in keys:
                client.set(key, VALUE)
            for _ in range(min(1000, requests)):
                client.get("k")
            read_many = getattr(client, "get_many", None) or client.mget
            out = {}
            for op, call, n in (("get", lambda: client.get("k"), requests),
                                ("set", lambda: client.set("k", VALUE), requests),
                                (f"get {BATCH_KEYS} keys", lambda: read_many(keys),
                                 requests // 10)):
                server0, client0, wall0 = cpu_s(pid), time.process_time(), time.perf_counter()
                for _ in range(n):
                    call()
                wall1, client1, server1 = time.perf_counter(), time.process_time(), cpu_s(pid)
                out[op] = {"server_us": (server1 - server0) / n * 1e6,
                           "client_us": (client1 - client0) / n * 1e6,
                           "wall_us": (wall1 - wall0) / n * 1e6}
            return out
        finally:
            client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--base-python", help="another checkout's interpreter, for its node")
    _report.add_run_arguments(parser, seed=False)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 2_000, 1
    servers: dict[str, Callable[[], Any]] = {
        "shmkv": lambda: shmkv_node(sys.executable, args.workers)}
    if args.base_python:
        servers["base"] = lambda: shmkv_node(args.base_python, args.workers)
    if shutil.which("redis-server"):
        servers["redis"] = redis_node
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in range(args.rounds):
        order = list(servers) if r % 2 == 0 else list(reversed(servers))
        for name in order:
            for op, figures in measure(servers[name](), args.requests).items():
                runs.setdefault((name, op), []).append(figures)
    lines = ["| server | op | server CPU us/request | client CPU us/request | wall us/request "
             "| server CPU x redis |", "|---|---|---:|---:|---:|---:|"]
    summary = {}
    for name in servers:
        for op in ("get", "set", f"get {BATCH_KEYS} keys"):
            figures = runs[(name, op)]
            med = {k: statistics.median(f[k] for f in figures) for k in figures[0]}
            summary[f"{name} {op}"] = {**med, "rounds": figures}
    for key, med in summary.items():
        name, op = key.split(" ", 1)
        redis = summary.get("redis " + op)
        ratio = f"{med['server_us'] / redis['server_us']:.1f}" if redis else "-"
        lines.append(f"| {name} | {op} | {med['server_us']:.1f} | "
                     f"{med['client_us']:.1f} | {med['wall_us']:.1f} | {ratio} |")
    table = "\n".join(lines)
    notes = [f"medians of {args.rounds} rounds of {args.requests:,} requests each per server "
             f"and op ({args.requests // 10:,} of get {BATCH_KEYS} keys: get_many, MGET); the "
             f"node with --workers {args.workers}; 100 B values",
             "server CPU: utime + stime of the server process and its children, from /proc "
             f"(a tick is {1e6 / TICK_S:.0f} us: {args.requests:,} requests resolve "
             f"{1e6 / TICK_S / args.requests:.2f} us)"]
    if args.base_python:
        notes.append(f"base: the node run by {args.base_python}")
    print(table)
    print("\n".join(f"- {n}" for n in notes))
    if not args.quick:
        out = args.out or str(_report.REPO / "bench" / "results")
        command = "python bench/bench_node_cpu.py " + " ".join(sys.argv[1:])
        md, js = _report.write_results(out, "node-cpu", "The node's CPU per request against "
                                       "redis-server's", command, table, notes, summary)
        print(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
