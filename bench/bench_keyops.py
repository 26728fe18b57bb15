"""The ZeroMQ door's exists, delete_many and scan against redis-server's EXISTS, DEL and SCAN,
same run, one client.

Starts a node (`shmkv serve --workers 1`, tcp on 127.0.0.1) and a redis-server on 127.0.0.1,
fills both with the same --keys keys (16 B keys, 100 B values), and measures, in alternating
rounds so that both see the same machine weather:
  * exists of --batch keys (half of them absent): RemoteCache.exists vs EXISTS; and, for
    scale, get_many of the same keys vs MGET;
  * delete_many of --batch keys (half absent; the present ones written back, untimed, after
    each call): RemoteCache.delete_many vs DEL;
  * a whole scan of every key, --count per step: RemoteCache.scan_iter vs redis-py's
    scan_iter (SCAN with COUNT).
Both servers are stopped and the region unlinked on every exit.

    python bench/bench_keyops.py           # writes bench/results/keyops-<host>-<date>.md/.json
    python bench/bench_keyops.py --quick   # smoke run, writes nothing unless --out is given

Peers: Debian's redis-server and `pip install redis hiredis`; without them only shmkv's rows
are printed. Not a test module.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import _node  # bench/ is sys.path[0] when this file is run as a script
import _report
from bench_node import REDIS, redis, running_redis

from shmkv.clients import RemoteCache

TCP = "shmkv tcp"


def measure(args: argparse.Namespace) -> dict[str, list[int]]:
    rng = random.Random(args.seed)
    keys = [os.urandom(8).hex().encode() for _ in range(args.keys)]
    values = {k: os.urandom(100) for k in keys}
    absent = [os.urandom(8).hex().encode() for _ in range(args.batch)]
    samples: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory(prefix="shmkv-bench-keyops-") as tmp, ExitStack() as stack:
        node = stack.enter_context(_node.running_node(
            f"shmkv-bench-keyops-{uuid.uuid4().hex[:8]}", "--workers", "1",
            arena_bytes=256 << 20))
        remote = stack.enter_context(RemoteCache(node["endpoint"], timeout_s=30))
        remote.set_many(values)
        systems: dict[str, dict[str, Callable]] = {TCP: {
            "exists": lambda ks: remote.exists(*ks),
            "get_many": remote.get_many,
            "delete_many": remote.delete_many,
            "restore": lambda ks: remote.set_many({k: values[k] for k in ks}),
            "scan": lambda ks: sum(1 for _ in remote.scan_iter(count=args.count)),
        }}
        redis_port = stack.enter_context(running_redis(Path(tmp)))
        if redis_port is not None:
            client = redis.Redis(host="127.0.0.1", port=redis_port)
            stack.callback(client.close)
            for i in range(0, len(keys), 1000):
                client.mset({k: values[k] for k in keys[i:i + 1000]})
            systems[REDIS] = {
                "exists": lambda ks: client.exists(*ks),
                "get_many": client.mget,
                "delete_many": lambda ks: client.delete(*ks),
                "restore": lambda ks: client.mset({k: values[k] for k in ks}),
                "scan": lambda ks: sum(1 for _ in client.scan_iter(count=args.count)),
            }
        for _ in range(args.rounds):
            for name, ops in systems.items():
                for op, count in (("exists", args.calls), ("get_many", args.calls),
                                  ("delete_many", args.calls),
                                  ("scan", args.scans)):
                    timed = samples.setdefault(f"{name}|{op}", [])
                    for _ in range(count):
                        batch = rng.sample(keys, args.batch // 2) + absent[:args.batch // 2]
                        timed += _report.time_each(lambda: ops[op](batch), 1)
                        if op == "delete_many":
                            ops["restore"](batch[:args.batch // 2])
        assert systems[TCP]["scan"](None) == args.keys
    return samples


def report(samples: dict[str, list[int]], args: argparse.Namespace) -> list[dict]:
    med = {name: _report.percentiles(s)["median"] for name, s in samples.items()}
    rows = []
    for name, s in samples.items():
        system, op = name.split("|")
        label = f"scan of {args.keys}, count {args.count}" if op == "scan" else \
            f"{op} of {args.batch}"
        peer = med.get(f"{REDIS}|{op}")
        rows.append(_report.row(system, label, len(s), _report.percentiles(s),
                                peer or med[name]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100, help="keys per exists/delete_many")
    parser.add_argument("--calls", type=int, default=300, help="exists/delete_many per round")
    parser.add_argument("--count", type=int, default=100, help="scan's count per step")
    parser.add_argument("--scans", type=int, default=10, help="whole scans per round")
    _report.add_run_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.keys, args.calls, args.scans, args.rounds = 2_000, 30, 2, 1
    load = os.getloadavg()
    rows = report(measure(args), args)
    notes = ["ratio (the column is against redis here, not shmkv) = median / redis-py's "
             "median of the same op (below 1: faster than Redis); ops/s counts calls; "
             "get_many's peer is MGET",
             "scan's cost is mostly the engine's listing of a stripe (Cache._stripe_keys: its "
             "occupied slots found with numpy, then each key read in Python): it grows with "
             "the region's index size (a 256 MiB arena here) as well as with the keys found",
             "loopback; client and servers share the machine's cores",
             "load average before / after the run: " + " / ".join(
                 ", ".join(f"{x:.2f}" for x in avg) for avg in (load, os.getloadavg()))]
    out = args.out or (None if args.quick else str(_report.REPO / "bench" / "results"))
    _report.print_and_save("keyops", "exists, delete_many and scan: ZeroMQ door vs redis-server",
                           rows, notes, out)


if __name__ == "__main__":
    main()
