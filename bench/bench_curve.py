"""What CurveZMQ costs a client of the node, and what the ipc:// endpoint saves.

Starts two nodes on fresh regions: one plain (tcp on loopback, and ipc:// in a temporary
directory), one with CurveZMQ (keys from broker.auth, one allowed client). Fills each with the
same keys (16 B keys, 100 B values) and times, from this process, in alternating rounds:
  * get: RemoteCache.get of one key;
  * batch: RemoteCache.get_many of --batch keys (CURVE encrypts every frame);
  * connect: a new RemoteCache and its first ping (the handshake; with CURVE, the key exchange
    and the ZAP request to the node's authenticator thread).
Both nodes are stopped, their regions unlinked and the keys removed on every exit.

    python bench/bench_curve.py           # writes bench/results/curve-<host>-<date>.md/.json
    python bench/bench_curve.py --quick   # smoke run, writes nothing unless --out is given

Not a test module.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _node  # bench/ is sys.path[0] when this file is run as a script
import _report

from shmkv.broker.auth import create_key_files
from shmkv.clients import RemoteCache

BASE = "tcp"


@contextlib.contextmanager
def running_node(*options: str) -> Iterator[dict[str, Any]]:
    """A node on ephemeral loopback ports; yields its ready event."""
    with _node.running_node(f"shmkv-bench-curve-{uuid.uuid4().hex[:8]}", *options) as ready:
        yield ready


def measure(args: argparse.Namespace) -> dict[str, list[int]]:
    rng = random.Random(args.seed)
    keys = [os.urandom(8).hex().encode() for _ in range(args.keys)]
    values = {k: os.urandom(args.value_bytes) for k in keys}
    samples: dict[str, list[int]] = {}
    # a short directory: Unix socket paths are limited to 108 bytes
    with tempfile.TemporaryDirectory(prefix="shmkv-bench-curve-", dir="/tmp") as tmp:
        allow = Path(tmp, "allow")
        allow.mkdir()
        node_public, node_secret = create_key_files(Path(tmp, "node"))
        _, client_secret = create_key_files(allow / "client")
        curve = {"curve_server_key": node_public, "curve_client_cert": client_secret}
        with running_node("--ipc-dir", str(Path(tmp, "ipc"))) as plain, \
                running_node("--ipc-dir", "off", "--curve-secret-key", str(node_secret),
                             "--curve-allow", str(allow)) as secured:
            clients: dict[str, tuple[str, dict[str, Any]]] = {
                BASE: (plain["endpoint"], {}),
                "tcp + CurveZMQ": (secured["endpoint"], curve),
                "ipc": (plain["ipc_endpoint"], {}),
            }
            with contextlib.ExitStack() as stack:
                remotes = {name: stack.enter_context(RemoteCache(url, timeout_s=10, **kw))
                           for name, (url, kw) in clients.items()}
                for remote in (remotes[BASE], remotes["tcp + CurveZMQ"]):
                    for i in range(0, len(keys), 500):
                        remote.set_many({k: values[k] for k in keys[i:i + 500]})
                for _ in range(args.rounds):  # alternate: the same machine weather for all
                    for name, remote in remotes.items():
                        it = iter(rng.sample(keys, args.gets))
                        samples.setdefault(f"{name}|get", []).extend(_report.time_each(
                            lambda r=remote, i=it: r.get(next(i)), args.gets))
                        batches = iter([rng.sample(keys, args.batch)
                                        for _ in range(args.batches)])
                        samples.setdefault(f"{name}|batch of {args.batch}", []).extend(
                            _report.time_each(lambda r=remote, b=batches: r.get_many(next(b)),
                                              args.batches))
                        samples.setdefault(f"{name}|connect + ping", []).extend(
                            _report.time_each(lambda c=clients[name]: _connect(*c),
                                              args.connects))
                assert remotes["tcp + CurveZMQ"].get(keys[0]) == values[keys[0]]
    return samples


def _connect(url: str, options: dict[str, Any]) -> None:
    with RemoteCache(url, timeout_s=10, **options) as remote:
        remote.ping()


def report(samples: dict[str, list[int]], batch: int) -> list[dict[str, Any]]:
    med = {name: _report.percentiles(s)["median"] for name, s in samples.items()}
    rows = []
    for name, s in samples.items():
        system, op = name.split("|")
        p = _report.percentiles(s)
        per_op = batch if op.startswith("batch") else 1
        rows.append({"system": system, "op": op, "n": len(s), "median_ns": p["median"],
                     "p99_ns": p["p99"], "ops_per_s": 1e9 * per_op / p["median"],
                     "ratio": p["median"] / med[f"{BASE}|{op}"]})
    return sorted(rows, key=lambda r: (r["op"], r["system"] != BASE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--gets", type=int, default=3_000, help="single gets per round")
    parser.add_argument("--batch", type=int, default=100, help="keys per get_many")
    parser.add_argument("--batches", type=int, default=300, help="batches per round")
    parser.add_argument("--connects", type=int, default=100, help="connections per round")
    _report.add_run_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.keys, args.gets, args.batches, args.connects, args.rounds = 2_000, 300, 30, 20, 1
    rows = report(measure(args), args.batch)
    notes = [(f"ratio = median / the median of plain {BASE} (no CurveZMQ) for the same op; "
              "ops/s counts keys"),
             "loopback and ipc:// on one host; the client and both nodes share the 2 cores",
             "connect + ping: a new RemoteCache, its handshake and one round trip"]
    out = args.out or (None if args.quick else str(_report.REPO / "bench" / "results"))
    _report.print_and_save("curve", "CurveZMQ and ipc:// vs plain tcp, for a node's client",
                           rows, notes, out)


if __name__ == "__main__":
    main()
