"""The ZeroMQ door's compiled plain gets (broker/compiled_door.py) against the Python path
(SHMKV_COMPILED_ZMQ=0 in the node's environment): two nodes side by side, their rounds
alternating, with redis-server in the same run (bench_cpus.py's measure and report). The client
(this process) makes its round trips in C either way, unless SHMKV_COMPILED_ZMQ=0 is set here.

    python bench/bench_compiled_door.py --rounds 4     # writes bench/results/compiled-door-*.md
    python bench/bench_compiled_door.py --quick

Per round, for each node over tcp and over ipc: single gets from one RemoteCache, get_many(100)
(a batch: Python's either way) and the throughput of --clients client processes; redis-py GET,
MGET and as many redis-py processes on redis-server. Not a test module.
"""

from __future__ import annotations

import bench_cpus

VARIANTS: bench_cpus.Variants = {"compiled": ([], {"SHMKV_COMPILED_ZMQ": "1"}),
                                 "python": ([], {"SHMKV_COMPILED_ZMQ": "0"})}


def main() -> None:
    bench_cpus.run(bench_cpus.arguments(__doc__), VARIANTS, "compiled-door",
                   "The ZeroMQ door's plain gets in C against the Python path")


if __name__ == "__main__":
    main()
