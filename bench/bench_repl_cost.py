"""What one replica costs the primary's local writers, and who spends the cores meanwhile.

A primary node (--repl-bind) and one replica node of it; a writer (this process) stores
--sets local Cache.set of 100 B values over --keys keys, straight in shared memory. Runs
alternate between the replica following and the replica node SIGSTOPped (then nothing asks
the primary for anything: the same processes, none of them working for replication), --pairs
times, so that a drift of the shared machine's load hits both alike. Before each following run
the replica is let catch up (the primary's state says it is 0 changes behind).

For each run: the writer's rate, the writer's CPU time over its wall time (below 1: it waited
for a core, or slept on a stripe lock), and the CPU seconds each node spent per million sets
(utime + stime from /proc/PID/stat).

    python bench/bench_repl_cost.py                # writes bench/results/repl-cost-*
    python bench/bench_repl_cost.py --quick        # smaller, prints only

Not a test module.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
import _node  # bench/ is sys.path[0] when this file is run as a script
import _report

import shmkv
from shmkv import replica as RP

VALUE = os.urandom(100)
CATCH_UP_S = 120.0
TICK_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK_S


def caught_up(primary: shmkv.Cache, replica: shmkv.Cache) -> None:
    """Until the replica's last complete round covers every change the primary made."""
    deadline = time.monotonic() + CATCH_UP_S
    while RP.replication_offset(replica._region) != sum(RP.stripe_counters(primary._region)[0]):
        if time.monotonic() > deadline:
            raise RuntimeError("the replica did not catch up")
        time.sleep(0.05)


def run(cache: shmkv.Cache, keys: list[bytes], n: int, pids: dict[str, int]
        ) -> dict[str, float]:
    before = {name: cpu_s(pid) for name, pid in pids.items()}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    n_keys = len(keys)
    for i in range(n):
        cache.set(keys[i % n_keys], VALUE)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    found = {"rate": n / wall, "writer_cpu": cpu / wall}
    for name, pid in pids.items():
        found[f"{name}_cpu_s_per_m"] = (cpu_s(pid) - before[name]) / n * 1e6
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", type=int, default=2_000_000, help="sets per run")
    parser.add_argument("--keys", type=int, default=50_000, help="keys the sets cycle over")
    parser.add_argument("--pairs", type=int, default=5, help="runs with and without replica")
    parser.add_argument("--quick", action="store_true", help="small runs, no results file")
    parser.add_argument("--out", default=str(_report.REPO / "bench" / "results"))
    args = parser.parse_args()
    if args.quick:
        args.sets, args.pairs = 100_000, 2
    tag = uuid.uuid4().hex[:8]
    primary, copy = f"bench-cost-p-{tag}", f"bench-cost-r-{tag}"
    arena = 128 << 20
    keys = [b"cost-%09d" % i for i in range(args.keys)]
    results: dict[str, list[dict[str, float]]] = {"following": [], "stopped": []}
    try:
        with shmkv.Cache.create(primary, arena_bytes=arena, max_keys=args.keys * 2) as c:
            c.set_many({k: VALUE for k in keys})
        with _node.running_node(primary, "--ipc-dir", "off", "--repl-bind",
                                "tcp://127.0.0.1:*", arena_bytes=arena, unlink=False,
                                stderr=subprocess.DEVNULL) as ready, \
                _node.running_node(copy, "--ipc-dir", "off", "--replica-of",
                                   ready["replication"]["endpoint"], arena_bytes=arena,
                                   unlink=False, stderr=subprocess.DEVNULL) as replica, \
                shmkv.Cache.open(primary) as cache, shmkv.Cache.open(copy) as mirror:
            pids = {"primary": ready["pid"], "replica": replica["pid"]}
            stopped = False
            try:
                for _ in range(args.pairs):
                    caught_up(cache, mirror)
                    results["following"].append(run(cache, keys, args.sets, pids))
                    os.kill(replica["pid"], signal.SIGSTOP)
                    stopped = True
                    time.sleep(0.2)  # the parked request answered, nothing else asked
                    results["stopped"].append(run(cache, keys, args.sets, pids))
                    os.kill(replica["pid"], signal.SIGCONT)
                    stopped = False
            finally:
                if stopped:
                    os.kill(replica["pid"], signal.SIGCONT)
    finally:
        for name in (primary, copy):
            shmkv.Cache.unlink(name)
    base = statistics.median(r["rate"] for r in results["stopped"])
    lines = ["| replica | sets/s (median run) | ratio | writer CPU/wall | primary node CPU s "
             "per 1M sets | replica node CPU s per 1M sets | each run (sets/s) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for label, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        lines.append(f"| {label} | {med['rate']:,.0f} | {med['rate'] / base:.2f} | "
                     f"{med['writer_cpu']:.2f} | {med['primary_cpu_s_per_m']:.2f} | "
                     f"{med['replica_cpu_s_per_m']:.2f} | "
                     + ", ".join(f"{r['rate']:,.0f}" for r in runs) + " |")
    table = "\n".join(lines)
    notes = [
        f"{args.pairs} pairs of runs of {args.sets:,} local Cache.set (100 B values over "
        f"{args.keys:,} keys), alternating: the replica following (caught up first), then "
        "its node SIGSTOPped; ratio over the median stopped run",
        "writer CPU/wall below 1: the writer waited for a core or on a stripe lock",
        "2 cores shared by the writer, both nodes (and other users)",
    ]
    print(table)
    print("\n".join(f"- {n}" for n in notes))
    if not args.quick:
        command = "python bench/bench_repl_cost.py " + " ".join(sys.argv[1:])
        md, js = _report.write_results(args.out, "repl-cost", "What a replica costs the "
                                       "primary's local writers", command.strip(), table,
                                       notes, {"runs": results})
        print(f"wrote {md} and {js}")

if __name__ == "__main__":
    main()
