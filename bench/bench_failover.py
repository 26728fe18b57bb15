"""Failover through etcd: how long a cluster takes to accept writes again after its primary's
SIGKILL, and what a primary's lease fence costs each write.

Take-over: a 3-node cluster on loopback (the tests' helpers: tests/failover_nodes.py, with a
3 s lease, a 0.5 s loop and a 0.5 s retry timeout) and its own etcd; the primary is killed;
"promoted" is the time from the kill to the new primary's promoted event (it accepts writes
from then on), "client" the time to the first write a RemoteCache of every node got
acknowledged (it polls with 0.5 s requests). The floor is the lease: TTL plus up to one loop,
plus up to 500 ms of etcd's expiry period. Redis has no equivalent without Sentinel (a
separate quorum of processes): there is no peer in this run.

Fence: Cache.set over 10,000 keys (100 B values) with no fence (a node without etcd) and with
a lease fence ahead of the clock (a primary under etcd), in the same process; the ratio is
what the fence adds.

    python bench/bench_failover.py            # writes bench/results/failover-*.md/.json
    python bench/bench_failover.py --quick    # 2 take-overs, writes nothing unless --out

Needs etcd and the failover extra (pip install 'shmkv[failover]'). Not a test module.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import uuid
from contextlib import ExitStack
from typing import Any

import _report  # bench/ is sys.path[0] when this file is run as a script

sys.path.insert(0, str(_report.REPO / "tests"))

from etcd_process import running_etcd  # noqa: E402  (the tests' helpers, after the path)
from failover_nodes import LEASE_TTL_S, LOOP_S, eventually, member  # noqa: E402

import shmkv  # noqa: E402
from shmkv import backend  # noqa: E402
from shmkv import layout as L  # noqa: E402
from shmkv.clients import RemoteCache  # noqa: E402

KEYS = 10_000


def take_over() -> tuple[float, float]:
    """(s from the kill to the promoted event, s to the first acknowledged write)."""
    with running_etcd() as etcd, ExitStack() as stack:
        name = f"bench-{uuid.uuid4().hex[:8]}"
        first = stack.enter_context(member(etcd, name))
        eventually(lambda: first.role() == "primary", "the first node is elected")
        nodes = [first] + [stack.enter_context(member(etcd, name)) for _ in range(2)]
        with RemoteCache([n.endpoint for n in nodes], timeout_s=0.5, retries=1000) as client:
            client.set("before", b"1")
            killed_ns = time.time_ns()
            first.process.send_signal(signal.SIGKILL)
            client.set("after", b"2")
            client_s = (time.time_ns() - killed_ns) / 1e9
        promoted = eventually(lambda: next((e for n in nodes[1:] if (e := n.event("promoted"))),
                                           None), "a promoted event")
        return (promoted["at_ns"] - killed_ns) / 1e9, client_s


def fence_cost(reps: int) -> list[dict[str, Any]]:
    name = f"shmkvbench-fence-{uuid.uuid4().hex[:8]}"
    cache = shmkv.Cache.create(name, 16 << 20)
    rows = []
    try:
        keys = [f"k{i}" for i in range(KEYS)]
        for k in keys:
            cache.set(k, b"x" * 100)
        q = cache._region.q
        systems = (("no fence (no etcd)", 0),
                   ("lease fence ahead (under etcd)", time.time_ns() + 3600 * 10**9))
        samples: dict[str, list[float]] = {system: [] for system, _ in systems}
        for _ in range(reps):  # interleaved: a shared machine's load drifts
            for system, until in systems:
                q[L.H_WRITABLE_UNTIL >> 3] = until
                t0 = time.perf_counter_ns()
                for k in keys:
                    cache.set(k, b"y" * 100)
                samples[system].append((time.perf_counter_ns() - t0) / KEYS)
        base = _report.percentiles(samples[systems[0][0]])["median"]
        for system, _ in systems:
            p = _report.percentiles(samples[system])
            rows.append(_report.row(system, f"set, {KEYS:,} keys, 100 B (per op)", reps, p,
                                    base))
        q[L.H_WRITABLE_UNTIL >> 3] = 0
    finally:
        cache.close()
        shmkv.Cache.unlink(name)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="take-overs to time")
    parser.add_argument("--quick", action="store_true", help="2 take-overs, 3 fence reps")
    parser.add_argument("--out", default=None,
                        help="directory for the results (default: bench/results, not with "
                        "--quick)")
    args = parser.parse_args()
    runs, reps = (2, 3) if args.quick else (args.runs, 15)
    out = args.out if args.out or args.quick else str(_report.REPO / "bench" / "results")
    promoted, client = [], []
    for _ in range(runs):
        p_s, c_s = take_over()
        promoted.append(p_s * 1e9)
        client.append(c_s * 1e9)
    rows = []
    for system, samples in (("promoted event", promoted), ("client's first write", client)):
        p = _report.percentiles(samples)
        rows.append({"system": system, "op": "SIGKILL of the primary -> writes accepted",
                     "n": runs, "median_ns": p["median"], "p99_ns": p["p99"],
                     "ops_per_s": None, "ratio": p["median"] / _report.percentiles(promoted)[
                         "median"]})
    rows += fence_cost(reps)
    notes = [
        f"take-over: 3 nodes and etcd on loopback, lease {LEASE_TTL_S} s, loop {LOOP_S} s; "
        "each figure is one take-over; max "
        f"{max(promoted) / 1e9:.2f} s (promoted), {max(client) / 1e9:.2f} s (client)",
        "fence: ratio = median / the median without a fence; engine " + backend.ENGINE,
        "no peer: Redis fails over only with Sentinel, a separate quorum of processes",
    ]
    _report.print_and_save("failover", "failover: take-over time and the fence's cost", rows,
                           notes, out)


if __name__ == "__main__":
    main()
